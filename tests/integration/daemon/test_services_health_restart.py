"""Health checks, restart policies and failures a user must be able to see, on a real node.

Health: tcp, http (exact expected status) and command (run inside the replica) checks with ZLayer's start_grace,
interval, timeout and retries; an unhealthy replica leaves the proxy and comes back when it passes again. Restarts:
crashed replicas come back with exponential backoff visible in the API and ``zlayer status`` (state, delay, restart
count, last exit code, last log lines); ``restart_policy`` no / on_failure with max_attempts; a clean exit is not a
crash. A missing image shows its pull error.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import pytest

from tests.fixtures.daemon_node import Node, processes_with, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

HTTPD = "exec /bin/busybox httpd -f -p 8080 -h /www"


def svc(name: str, health: str, extra: str = "", *, cmd: str = HTTPD, timing: str = "") -> str:
    timing = timing or "start_grace: 0s, interval: 500ms, timeout: 1s, retries: 2"
    return f"""  {name}:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{cmd!r}]}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 1}}
    health: {{{timing}, check: {health}}}
{extra}"""


def spec(name: str, *services: str) -> str:
    return f"version: v1\ndeployment: {name}\nservices:\n" + "".join(services)


def one(node: Node, name: str, service: str) -> dict[str, Any]:
    (c,) = node.containers(name, service)
    return c


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_health_checks_tcp_http_command_with_grace_interval_timeout(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    bad, good, port = unique("hbad"), unique("hgood"), node.free_port()
    daemon_deployments += [bad, good]
    # never healthy: the deploy fails saying why (runs while the good one is checked)
    node.deploy(
        spec(
            bad,
            svc("wrongport", "{type: tcp, port: 9999}"),
            svc("hang", '{type: command, command: "sleep 29"}'),  # always outlives its 1s timeout
            svc("wrongstatus", '{type: http, url: "http://localhost:8080/"}'),
        ).replace('url: "http://localhost:8080/"}', 'url: "http://localhost:8080/", expect_status: 204}')
    )
    ep = f"    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]\n"
    t0 = time.monotonic()
    node.deploy(
        spec(
            good,
            svc("tcpok", "{type: tcp, port: 8080}"),
            svc("httpexp", '{type: http, url: "http://localhost:8080/missing.html", expect_status: 404}'),
            svc("cmd", '{type: command, command: "echo x >> /tmp/checks; test ! -f /tmp/down"}', ep),
            svc("grace", "{type: tcp, port: 0}", timing="start_grace: 3s, interval: 1s"),
            svc("counted", '{type: command, command: "echo x >> /tmp/checks"}', timing="start_grace: 0s, interval: 1s"),
        )
    )
    g = node.wait_for(lambda: [c for c in node.containers(good, "grace") if c["state"] == "running"], 20, "grace up")[0]
    assert g["health"]["status"] == "starting", g  # inside its start_grace: not checked yet
    time.sleep(1.0)
    assert one(node, good, "grace")["health"]["status"] == "starting"
    assert not [e for e in node.events(good) if e["kind"] == "health" and e["message"].startswith("grace-")]
    node.expect(good)
    assert time.monotonic() - t0 >= 3.0
    ev = node.events(good)
    started = next(e for e in ev if e["kind"] == "replica_started" and e["message"].startswith("grace-rep-1"))
    first = next(e for e in ev if e["kind"] == "health" and e["message"].startswith("grace-rep-1"))
    assert ts(first["timestamp"]) - ts(started["timestamp"]) >= 2.9, (started, first)
    assert "tcp " in first["message"] and ":8080 open" in first["message"]  # port 0 -> the 8080 default

    assert one(node, good, "tcpok")["health"]["status"] == "healthy"
    h = one(node, good, "httpexp")["health"]
    assert h["status"] == "healthy" and h["last_output"].endswith("/missing.html: 404"), h

    # interval: a passing check runs once per interval (1s); counted inside the replica
    n0 = int(node.exec_in(good, "counted", "wc -l < /tmp/checks")["stdout"])
    time.sleep(4.0)
    n1 = int(node.exec_in(good, "counted", "wc -l < /tmp/checks")["stdout"])
    assert 3 <= n1 - n0 <= 6, (n0, n1)

    # command check inside the replica: failing takes it out of the proxy, passing again brings it back
    assert node.get(port)[0] == 200
    node.exec_in(good, "cmd", "touch /tmp/down")
    node.wait_for(lambda: one(node, good, "cmd")["health"]["status"] == "unhealthy", 10, "cmd unhealthy")
    c0 = int(node.exec_in(good, "cmd", "wc -l < /tmp/checks")["stdout"])
    node.wait_for(lambda: one(node, good, "cmd")["health"]["failing_streak"] >= 2, 10, "two failed checks")
    h = one(node, good, "cmd")["health"]
    assert h["last_output"].startswith("exit 1"), h
    # retries: 2 — after two failures in a row the 500ms interval doubles with each further failure
    # (checks ~0.5, 1.5, 3.5, 7.5 s after the first failure instead of every 0.5 s)
    time.sleep(5.0)
    c1 = int(node.exec_in(good, "cmd", "wc -l < /tmp/checks")["stdout"])
    assert 2 <= c1 - c0 <= 5, (c0, c1)
    node.wait_for(lambda: node.get(port, timeout=2)[0] != 200, 5, "the proxy drops the unhealthy replica")
    d = node.deployment(good)
    assert {x["name"]: x["health"] for x in d["service_health"]}["cmd"] == "unhealthy"
    node.exec_in(good, "cmd", "rm /tmp/down")
    node.wait_for(lambda: node.get(port)[0] == 200, 10, "the replica back in the proxy")
    assert one(node, good, "cmd")["health"]["status"] == "healthy"

    d = node.expect(bad, "failed")
    # a check that timed out is ended, not left running inside the replica (one in flight: its shim + itself)
    assert len(processes_with("sleep 29")) <= 2, processes_with("sleep 29")
    msg = d["status_message"]
    assert re.search(r"wrongport: replica wrongport-rep-1 not healthy after \d+s: tcp [\d.]+:9999: .*refused", msg), msg
    assert re.search(r"hang: replica hang-rep-1 not healthy after \d+s: command timed out after 1s", msg), msg
    wrong = r"wrongstatus: replica wrongstatus-rep-1 not healthy after \d+s: GET http://[\d.]+:8080/: 200"
    assert re.search(wrong, msg), msg


def test_crashes_restart_with_backoff_visible_in_status(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name = unique("crash")
    daemon_deployments.append(name)
    ok = "{type: command, command: 'true'}"
    node.deploy(
        spec(
            name,
            # dies at once, every time: restarted with backoff 1s, 2s, 4s...; the rollout reports the crash loop
            svc("crashy", ok, cmd='echo "connecting to db"; echo "cannot connect to db" >&2; exit 3'),
            # runs a while, then crashes: restarted, and healthy again in between
            svc("flaky", ok, cmd="echo up; sleep 1; echo bye >&2; exit 7"),
            svc("once", ok, "    restart_policy: {kind: no}\n", cmd="sleep 1; exit 5"),
            svc("limited", ok, "    restart_policy: {kind: on_failure, max_attempts: 2}\n", cmd="sleep 0.3; exit 6"),
            svc("done", ok, cmd="sleep 1; exit 0"),
        )
    )
    d = node.expect(name, "failed", timeout=60)
    assert "crashy: replica crashy-rep-1 is crash-looping: exited with code 3" in d["status_message"], d
    for other in ("flaky", "once", "limited", "done"):
        assert f"{other}:" not in d["status_message"]

    def crashy() -> dict[str, Any]:
        return node.api("GET", "/api/v1/containers/crashy-rep-1")

    node.wait_for(lambda: crashy()["restarts"] >= 3, 20, "three restarts of crashy")
    c = crashy()
    assert c["state"] in ("backoff", "running") and c["exit_code"] == 3, c
    assert "cannot connect to db" in c["last_error"] and "connecting to db" in c["last_error"], c
    delays = [
        float(m[1])
        for e in node.events(name)
        if e["kind"] == "replica_crashed" and e["message"].startswith("crashy-rep-1")
        for m in [re.search(r"exited with code 3; backoff ([\d.]+)s", e["message"])]
        if m
    ]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0][: len(delays[:4])] and len(delays) >= 3, delays
    c = node.wait_for(lambda: (x := crashy())["state"] == "backoff" and x, 20, "crashy in backoff")
    assert re.search(r"exited with code 3; restart \d+ in [\d.]+s", c["last_error"]), c

    r = node.zl("status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"crashy-rep-1: (backoff|running), restarts \d+, last exit code 3", r.stdout), r.stdout
    assert "[stderr] cannot connect to db" in r.stdout, r.stdout

    node.wait_for(lambda: node.api("GET", "/api/v1/containers/flaky-rep-1")["restarts"] >= 2, 20, "flaky restarts")
    f = node.api("GET", "/api/v1/containers/flaky-rep-1")
    assert f["exit_code"] == 7 and "bye" in (f["last_error"] or ""), f

    o = node.wait_for(lambda: (x := one(node, name, "once"))["state"] == "failed" and x, 10, "once failed")
    assert o["exit_code"] == 5 and o["restarts"] == 0, o
    lim = node.wait_for(lambda: (x := one(node, name, "limited"))["state"] == "failed" and x, 20, "limited failed")
    assert lim["exit_code"] == 6 and lim["restarts"] == 2, lim
    done = node.wait_for(lambda: (x := one(node, name, "done"))["state"] == "exited" and x, 10, "done exited")
    assert done["exit_code"] == 0 and done["restarts"] == 0, done


def test_images_come_from_their_registry_and_a_missing_one_shows_the_pull_error(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    name, reg, closed = unique("noimg"), daemon_node.registry(), daemon_node.free_port()
    daemon_deployments.append(name)
    base = svc("web", "{type: tcp, port: 8080}")
    images = {
        "fromreg": f"{reg}/svc/httpd:v1",  # pulled from the registry, then runs
        "absent": f"{reg}/svc/absent:v9",  # the registry has no such manifest
        "deadreg": f"127.0.0.1:{closed}/svc/httpd:v1",  # nothing listens there
        "noreg": "zlayer-svc/absent:v9",  # not local, and no registry named (nor ZLAYER_DEFAULT_REGISTRY)
    }
    services = [
        base.replace("  web:", f"  {s}:").replace('"zlayer-svc/httpd:v1", pull_policy: never', f'"{ref}"')
        for s, ref in images.items()
    ]
    node.deploy(spec(name, *services))
    d = node.expect(name, "failed")
    msg = d["status_message"]
    assert "fromreg" not in msg, msg
    assert (one(node, name, "fromreg"))["state"] == "running"
    assert re.search(rf"absent: pull {reg}/svc/absent:v9: .*(404|manifest unknown)", msg), msg
    assert re.search(rf"deadreg: pull 127.0.0.1:{closed}/svc/httpd:v1: .*(refused|connect)", msg, re.I), msg
    assert "noreg: image zlayer-svc/absent:v9 is not in the local store, and its name has " in msg
    for s in ("absent", "deadreg", "noreg"):
        detail = node.api("GET", f"/api/v1/deployments/{name}/services/{s}")
        assert detail["status"] == "failed" and images[s] in detail["status_message"], detail
        assert node.containers(name, s) == []
    assert len([e for e in node.events(name) if e["kind"] == "pull_failed"]) == 3
    r = node.zl("status")
    assert f"Deployment {name}: failed" in r.stdout and f"{reg}/svc/absent:v9" in r.stdout, r.stdout
