"""A client command that finds no daemon starts one (issue 11, item 3): on its unix socket only — not on every
interface, whatever serve's variables say in the user's environment — or, after a crash, where ``zlayer serve`` was
last started for that data dir; and the command says so on stderr. Daemons here run host-process "containers"."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import free_port, kill_host_containers
from zlayer.config import DaemonConfig
from zlayer.paths import Paths

ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
    "ZLAYER_RUNTIME_FACTORY": "tests.fixtures.daemon:host_runtime_factory",
    "ZLAYER_NODE_NETWORK": "off",
}


def zl(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(data), *args], env={**ENV, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def daemon_pid(data: Path) -> int:
    return int(json.loads((data / "daemon.json").read_text())["pid"])


def tcp_listeners(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets found in /proc/net/tcp and tcp6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    yield data
    with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
        pid = daemon_pid(data)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    kill_host_containers(tmp_path)


def test_a_daemon_started_for_a_command_listens_on_its_unix_socket_only_and_says_so(data: Path) -> None:
    r = zl(data, "ps", ZLAYER_API_BIND=f"0.0.0.0:{free_port()}", ZLAYER_METRICS_BIND=f"127.0.0.1:{free_port()}")
    assert r.returncode == 0, r.stderr
    assert "started one, listening on its unix socket" in r.stderr and " only" in r.stderr, r.stderr
    assert str(data / "run" / "zlayer.sock") in r.stderr and str(data / "logs" / "daemon.log") in r.stderr
    pid = daemon_pid(data)
    assert tcp_listeners(pid) == set()
    assert json.loads((data / "daemon.json").read_text())["api_bind"] is None
    again = zl(data, "ps")
    assert again.returncode == 0 and again.stderr == "", again.stderr  # it runs now: nothing started, nothing said
    assert daemon_pid(data) == pid


def test_after_a_crash_a_command_starts_the_daemon_as_zlayer_serve_was_last_started(data: Path) -> None:
    port = free_port()
    r = zl(data, "serve", "--daemon", "--bind", f"127.0.0.1:{port}", "--deployment-name", "prod")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((data / "serve.json").stat().st_mode) == 0o600
    refused = zl(data, "serve", "--bind", f"127.0.0.1:{free_port()}")  # one runs already: this one never listens
    assert refused.returncode != 0 and "already uses" in refused.stderr, refused.stderr
    assert json.loads((data / "serve.json").read_text())["bind"] == f"127.0.0.1:{port}"
    crashed = daemon_pid(data)
    os.kill(crashed, signal.SIGKILL)
    while Path(f"/proc/{crashed}").exists() and Path(f"/proc/{crashed}/stat").read_text().split()[2] != "Z":
        time.sleep(0.05)

    r = zl(data, "ps")
    assert r.returncode == 0, r.stderr
    assert f"TCP (API on 127.0.0.1:{port}), as `zlayer serve` was last started for this data dir" in r.stderr
    pid = daemon_pid(data)
    assert pid != crashed and tcp_listeners(pid) == {port}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health/live")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert DaemonConfig.remembered(Paths.resolve(data)).deployment_name == "prod"


def test_a_remembered_configuration_that_is_not_what_serve_wrote_starts_the_socket_only(tmp_path: Path) -> None:
    paths = Paths.resolve(tmp_path)
    (tmp_path / "serve.json").write_text('{"bind": 3669, "dns_port": "x", "swagger": false, "host_network": 1}')
    cfg = DaemonConfig.remembered(paths)
    got = (cfg.bind, cfg.dns_port, cfg.swagger, cfg.host_network, cfg.metrics_bind)
    assert got == (None, 15353, False, False, None)
    (tmp_path / "serve.json").write_text("[1, 2")
    assert DaemonConfig.remembered(paths).bind is None
    assert "--bind none" in " ".join(DaemonConfig.remembered(paths).serve_argv())


def test_a_socket_of_another_user_is_not_talked_to(tmp_path: Path) -> None:
    """A data dir with a long path puts the socket in /tmp, where another user could make it first."""
    import asyncio
    import socket

    import zlayer
    from zlayer.errors import DaemonError

    if os.geteuid() != 0:
        pytest.skip("needs root (a socket owned by nobody)")
    path = tmp_path / "zlayer.sock"
    trap = socket.socket(socket.AF_UNIX)
    trap.bind(str(path))
    trap.listen(4)
    os.chown(path, 65534, 65534)

    async def go() -> None:
        async with zlayer.Client(socket=path) as client:
            await client.deploy("version: v1\ndeployment: x\nservices: {}\n")

    try:
        with pytest.raises(DaemonError, match="belongs to uid 65534, neither root nor you"):
            asyncio.run(go())
        trap.settimeout(0.5)
        with pytest.raises(TimeoutError):
            trap.accept()  # nothing connected
    finally:
        trap.close()
