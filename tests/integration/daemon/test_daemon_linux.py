"""The whole node for real: a daemon with the Linux runtime, run inside a network namespace this test creates, deploys
busybox httpd replicas from an imported image, serves them through the proxy, execs into them, scales, survives its
own restart and tears down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import build_busybox_oci, free_port

pytestmark = [pytest.mark.root, pytest.mark.slow]


def innet(ns: str) -> list[str]:
    """Run in the node's network namespace only (``ip netns exec`` would also remount /sys and hide the cgroups)."""
    return ["nsenter", f"--net=/run/netns/{ns}"]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ns = f"zln-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    env.pop("ZLAYER_RUNTIME_FACTORY", None)
    state: dict[str, Any] = {"ns": ns, "data": data, "env": env, "proc": None}
    try:
        yield state
    finally:
        proc = state["proc"]
        try:
            if proc is not None and proc.poll() is None:
                down = [*innet(ns), sys.executable, "-m", "zlayer", "--data-dir", str(data), "down", "linuxapp"]
                no_autostart = {**env, "ZLAYER_NO_AUTOSTART": "1"}
                subprocess.run(down, env=no_autostart, capture_output=True, timeout=60)
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            subprocess.run(["ip", "netns", "del", ns], check=False)


def zl(node: dict[str, Any], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*innet(node["ns"]), sys.executable, "-m", "zlayer", "--data-dir", str(node["data"]), *args],
        env=node["env"], capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def start_daemon(node: dict[str, Any]) -> None:
    node["data"].mkdir(parents=True, exist_ok=True)
    log = open(node["data"] / "test-daemon.log", "ab")  # noqa: SIM115
    node["proc"] = subprocess.Popen(
        [*innet(node["ns"]), sys.executable, "-m", "zlayer", "--data-dir", str(node["data"]), "serve",
         "--bind", "none"],
        env=node["env"], stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (node["data"] / "daemon.json").exists():
        assert time.monotonic() < deadline and node["proc"].poll() is None, (
            node["data"] / "test-daemon.log"
        ).read_text()
        time.sleep(0.1)


def fetch(node: dict[str, Any], url: str) -> str:
    code = f"import sys,urllib.request;sys.stdout.write(urllib.request.urlopen({url!r},timeout=5).read().decode())"
    r = subprocess.run([*innet(node["ns"]), sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_deploy_serve_exec_scale_restart_and_down_with_real_containers(node: dict[str, Any], tmp_path: Path) -> None:
    tar = build_busybox_oci(tmp_path / "img", "hello from zlayer\n")
    r = zl(node, "import", str(tar), "-t", "zlayer-test/httpd:latest")
    assert r.returncode == 0, r.stderr
    start_daemon(node)
    port = free_port()
    spec = tmp_path / "linuxapp.zlayer.yml"
    spec.write_text(f"""version: v1
deployment: linuxapp
services:
  web:
    image: {{name: "zlayer-test/httpd:latest", pull_policy: never}}
    command: {{entrypoint: ["/bin/busybox"], args: ["httpd", "-f", "-p", "8080", "-h", "/www"]}}
    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]
    scale: {{mode: fixed, replicas: 2}}
    health: {{start_grace: 0s, interval: 1s, check: {{type: http, url: "http://localhost:8080/"}}}}
""")
    r = zl(node, "-b", "deploy", str(spec))
    assert r.returncode == 0, (r.stdout + r.stderr, node["proc"].poll(), (node["data"] / "test-daemon.log").read_text())
    assert fetch(node, f"http://127.0.0.1:{port}/") == "hello from zlayer\n"
    ps = json.loads(zl(node, "ps", "--format", "json").stdout)["containers"]
    assert sorted(c["id"] for c in ps) == ["web-rep-1", "web-rep-2"]
    assert all(c["ipv4"] and c["health"]["status"] == "healthy" for c in ps)
    ex = zl(node, "exec", "web", "-r", "2", "--", "/bin/busybox", "hostname")
    assert ex.returncode == 0 and ex.stdout.strip() == "web-rep-2"
    # the other replica is reachable by service name from inside a replica
    ex = zl(node, "exec", "web", "-r", "1", "--", "/bin/busybox", "nslookup", "web")
    assert any(c["ipv4"] in ex.stdout for c in ps), ex.stdout + ex.stderr
    # restart the daemon: the replicas are adopted, not recreated
    node["proc"].send_signal(signal.SIGTERM)
    assert node["proc"].wait(30) == 0
    start_daemon(node)
    time.sleep(2)
    again = json.loads(zl(node, "ps", "--format", "json").stdout)["containers"]
    assert sorted((c["id"], c["pid"]) for c in again) == sorted((c["id"], c["pid"]) for c in ps)
    assert fetch(node, f"http://127.0.0.1:{port}/") == "hello from zlayer\n"
    scaled = zl(node, "stop", "linuxapp", "-s", "web", "-t", "2")
    assert scaled.returncode == 0
    assert json.loads(zl(node, "ps", "--format", "json").stdout)["containers"] == []
