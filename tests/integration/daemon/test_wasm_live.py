"""WASM workloads on a real node: programs built from C and WAT at test time (tests/fixtures/wasm.py), pushed with
``zlayer wasm push`` to Debian's docker-registry inside the node's namespace, pulled by the daemon, recognised as WASM
artifacts with no setting, and run by the WASM driver.

What a user sees: the pushed artifact as other registry clients read it; a WASIp1 job's exit code, output (in
``zlayer logs``/the execution), arguments, environment and preopened storage; a cron of a WASM module firing; a
long-running WASM service listed by ``ps``, adopted by a restarted daemon and stopped at once; a WASIp2 ``wasi:cli/run``
component's exit code; a ``wasi:http/incoming-handler`` component served on two replicas behind the proxy (curl
through it, HTTP health checks against it, a trap failing its one request, per-replica call counts in its stats); and
bad programs (corrupt, a missing import, an infinite loop past its deadline, a memory grab past its limit, a trap) each
ending in a clear error while the daemon and its other workloads go on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon_node import Node, processes_with, unique
from tests.fixtures.wasm import WasmPrograms

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]


def push(node: Node, tmp: Path, file: Path, ref: str) -> None:
    """``zlayer wasm push`` from a client data dir of its own, inside the node's namespace (where the registry is)."""
    r = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.ns}", sys.executable, "-m", "zlayer", "--data-dir", str(tmp / "client"),
         "wasm", "push", str(file), ref],
        env=node.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "Pushed" in r.stdout, r.stderr


def execution(node: Node, name: str, dep: str) -> dict[str, Any]:
    exec_id = node.api("POST", f"/api/v1/jobs/{name}/trigger?deployment={dep}")["execution_id"]
    return node.wait_for(
        lambda: (
            (e := dict(node.api("GET", f"/api/v1/jobs/{exec_id}/status")))["status"]
            not in ("pending", "initializing", "running")
            and e
        ),
        60,
        f"execution of {name}",
    )


def job(name: str, image: str, extra: str = "") -> str:
    return f"  {name}:\n    rtype: job\n    image: {{name: '{image}'}}\n    stop_grace_period: 1s\n{extra}"


def test_wasm_jobs_cron_and_service_from_a_registry(
    daemon_node: Node,
    daemon_deployments: list[str],
    wasm_programs: WasmPrograms,
    tmp_path: Path,
) -> None:
    node = daemon_node
    reg = node.registry()
    progs = wasm_programs
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(progs.hello.read_bytes()[:2000])  # a valid header, cut off mid-section
    for name, file in (
        ("hello", progs.hello),
        ("spin", progs.spin),
        ("grab", progs.grab),
        ("trap", progs.trap),
        ("missing", progs.missing_import),
        ("corrupt", corrupt),
        ("runerr", progs.run_err),
        ("http", progs.http_handler),
    ):
        push(node, tmp_path, file, f"{reg}/wasm/{name}:v1")
    # what `zlayer wasm push` wrote is an OCI 1.1 WASM artifact another registry client reads back (skopeo)
    raw = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.ns}", "skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{reg}/wasm/hello:v1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    manifest = json.loads(raw.stdout)
    assert manifest["artifactType"] == "application/vnd.wasm.module.v1+wasm", manifest
    assert manifest["config"]["mediaType"] == "application/vnd.wasm.config.v0+json"
    layers = [(x["mediaType"], x["size"]) for x in manifest["layers"]]
    assert layers == [("application/wasm", progs.hello.stat().st_size)], layers
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    dep = unique("wasm")
    port = node.free_port()
    daemon_deployments.append(dep)
    node.deploy(
        f"version: v1\ndeployment: {dep}\nservices:\n"
        + job(
            "hello",
            f"{reg}/wasm/hello:v1",
            "    command: {args: ['7', 'two words']}\n    env: {GREETING: hi-from-spec}\n"
            f"    storage: [{{type: bind, source: '{data}', target: /data}}]\n",
        )
        + job("spin", f"{reg}/wasm/spin:v1", "    service_type: wasm_plugin\n    wasm: {request_timeout: 1s}\n")
        + job("grab", f"{reg}/wasm/grab:v1", "    resources: {memory: 4Mi}\n")
        + job("trap", f"{reg}/wasm/trap:v1")
        + job("missing", f"{reg}/wasm/missing:v1")
        + job("corrupt", f"{reg}/wasm/corrupt:v1")
        + job("runerr", f"{reg}/wasm/runerr:v1")
        + f"  tick:\n    rtype: cron\n    schedule: '* * * * * *'\n    image: {{name: '{reg}/wasm/hello:v1'}}\n"
        + f"  forever:\n    image: {{name: '{reg}/wasm/spin:v1'}}\n    scale: {{mode: fixed, replicas: 1}}\n"
        + "    stop_grace_period: 5s\n"
        + f"  web:\n    service_type: wasm_http\n    image: {{name: '{reg}/wasm/http:v1'}}\n"
        + "    scale: {mode: fixed, replicas: 2}\n"
        + f"    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]\n"
        + "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2,"
        + " check: {type: http, url: 'http://localhost:8080/healthz', expect_status: 200}}\n"
        + "    wasm: {max_instances: 2}\n"
    )
    node.expect(dep)

    # a long-running WASM replica: listed with its state, its output in `zlayer logs`, stats from its worker
    (rep,) = node.containers(dep, "forever")
    assert rep["state"] == "running", rep
    node.wait_for(lambda: "spinning" in node.zl("logs", "forever", "-d", dep).stdout, 20, "forever's output")
    assert rep["runtime"] == "wasm", rep
    r = node.zl("ps", "-c", "--deployment", dep)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split()
    (row,) = [line.split() for line in r.stdout.splitlines() if rep["id"] in line]
    assert (row[header.index("RUNTIME")], row[header.index("STATE")]) == ("wasm", "running"), r.stdout
    r = node.zl("status", dep)
    assert r.returncode == 0, r.stderr
    header = next(x.split() for x in r.stdout.splitlines() if x.split()[:1] == ["SERVICE"])
    forever = next(x.split() for x in r.stdout.splitlines() if x.split()[:1] == ["forever"])
    assert forever[header.index("RUNTIME")] == "wasm", r.stdout
    stats = node.api("GET", f"/api/v1/containers/{rep['id']}/stats")
    assert stats["memory_bytes"] > 0, stats

    # a WASIp1 job: exit code, arguments, environment, preopened storage, stdout and stderr
    hello = execution(node, "hello", dep)
    assert hello["status"] == "failed" and hello["exit_code"] == 7, hello
    assert "[stdout] hello from wasm: 7 two words" in hello["logs"], hello["logs"]
    assert "[stdout] greeting=hi-from-spec" in hello["logs"] and "[stdout] read=from the host" in hello["logs"]
    assert "[stderr] to stderr" in hello["logs"]
    assert (data / "out.txt").read_text() == "written by wasm\n"

    # limits: the infinite loop ends at its deadline; the memory grab is capped at 4 MiB (64 pages)
    spin = execution(node, "spin", dep)
    assert spin["exit_code"] == 124 and "ran past its 1 s limit" in spin["error"] + spin["logs"], spin
    grab = execution(node, "grab", dep)
    assert grab["status"] == "completed" and "[stdout] pages=64" in grab["logs"], grab

    # bad programs: each a clear error, naming what is wrong
    trap = execution(node, "trap", dep)
    assert trap["exit_code"] == 134 and "trap: unreachable" in trap["error"] + trap["logs"], trap
    missing = execution(node, "missing", dep)
    assert missing["status"] == "failed" and "env.zlayer_no_such_function" in missing["error"], missing
    bad = execution(node, "corrupt", dep)
    assert bad["status"] == "failed" and "invalid WASM module" in bad["error"], bad
    assert "Traceback" not in json.dumps([trap, missing, bad])

    # WASIp2: a wasi:cli/run component (run's err is exit 1)
    assert execution(node, "runerr", dep)["exit_code"] == 1

    # a wasi:http/incoming-handler component on two replicas, healthy by its HTTP check, each on an address of its own
    webs = node.containers(dep, "web")
    assert len(webs) == 2 and all(w["runtime"] == "wasm" and w["state"] == "running" for w in webs), webs
    assert all(w["health"]["status"] == "healthy" for w in webs), [w["health"] for w in webs]
    assert len({w["ipv4"] for w in webs}) == 2, webs
    r = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.ns}", "curl", "-sS", "-i", f"http://127.0.0.1:{port}/hello"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("HTTP/1.1 200"), r.stdout + r.stderr
    assert "hello from wasm /hello #" in r.stdout, r.stdout
    for i in range(20):  # the proxy spreads them over both replicas; their instances are reused (#N counts on)
        status, body = node.get(port, f"/n{i}")
        assert status == 200 and body.startswith(f"hello from wasm /n{i} #"), body
    status, body = node.get(port, "/missing")
    assert status == 404, body
    # a trap mid-request: a 500 for that request only; the next requests are served
    status, body = node.get(port, "/trap")
    assert status == 500, body
    assert all(node.get(port, f"/after{i}")[0] == 200 for i in range(4))

    def counts() -> list[dict[str, Any]]:
        return [node.api("GET", f"/api/v1/containers/{w['id']}/stats") for w in webs]

    # each replica's worker rewrites its counts every 0.5 s: both served calls, one of them failed the trap
    node.wait_for(lambda: sum(c["call_errors"] or 0 for c in counts()) == 1, 10, "the trap in the call counts")
    got = counts()
    shown = json.dumps(got)
    assert all(c["calls"] > 0 for c in got), shown
    # an instance holds resident linear memory; a replica whose only instance trapped, and that the balancer sent
    # none of the later requests, holds none until its next request
    assert all((c["instances"] >= 1) == (c["memory_bytes"] > 0) for c in got), shown
    assert any(c["instances"] >= 1 and c["call_errors"] == 0 for c in got), shown
    assert "500: trap: `unreachable`" in node.zl("logs", "web", "-d", dep).stdout

    # the cron fires (seconds-first, every second) and its runs complete with the module's output
    node.wait_for(
        lambda: any(e["status"] == "completed" for e in node.api("GET", "/api/v1/jobs/tick/executions")),
        30,
        "a cron run of the WASM module",
    )

    # through all of that the daemon served, and the long-running replica never stopped
    assert node.api("GET", "/health/ready") is not None
    (again,) = node.containers(dep, "forever")
    assert again["id"] == rep["id"] and again["state"] == "running", again

    # a restarted daemon adopts the running WASM replica: the same worker, still running, still on wasm
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0
    (node.data / "daemon.json").unlink(missing_ok=True)
    node.start()
    (adopted,) = node.containers(dep, "forever")
    assert (adopted["pid"], adopted["state"], adopted["runtime"]) == (rep["pid"], "running", "wasm"), adopted

    # stop interrupts the running guest (which never returns to the host by itself): its worker is gone
    assert processes_with(f"instances/{rep['id']}")
    node.delete(dep)
    daemon_deployments.remove(dep)
    assert not processes_with(f"instances/{rep['id']}")
    assert not (node.data / "wasm" / "instances" / rep["id"]).exists(), "a WASM instance outlived its deployment"
