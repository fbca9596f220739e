"""``zlayer serve`` under systemd's notify protocol, and ``zlayer daemon install|start|status|stop|uninstall`` on a
host where systemd is not the init system (this one, and CI): what an operator runs to make zlayer a service."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    return {**env, "ZLAYER_NODE_NETWORK": "off", "ZLAYER_NO_SYSTEMD": "1", **extra}


def _zl(data: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(data), *args], env=_env(),
                          capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]  # fmt: skip


def _answers(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(60)
    yield sock
    sock.close()


def test_serve_tells_systemd_ready_once_it_answers_pings_the_watchdog_and_says_stopping(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    data = tmp_path / "data"
    env = _env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    proc = subprocess.Popen([sys.executable, "-m", "zlayer", "--data-dir", str(data), "serve", "--bind", "none",
                             "--dns-port", str(_free_port())], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        first = notify_socket.recv(4096).decode()
        # READY comes once the API answers on its socket (systemd then starts what is ordered after zlayer)
        assert "READY=1" in first.splitlines(), first
        assert f"MAINPID={proc.pid}" in first
        assert _answers(data / "run" / "zlayer.sock") or _answers(Path(json.loads((data / "daemon.json").read_text())
                                                                           ["socket_path"]))  # fmt: skip
        pings = 0
        deadline = time.monotonic() + 10
        while pings < 3 and time.monotonic() < deadline:  # every WATCHDOG_USEC/2 while the loop turns
            pings += notify_socket.recv(4096).decode() == "WATCHDOG=1"
        assert pings == 3
        proc.send_signal(signal.SIGTERM)
        said = ""
        while "STOPPING=1" not in said:
            said = notify_socket.recv(4096).decode()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = proc.stdout.read() if proc.stdout else ""
    assert "Traceback" not in out, out
    # not a terminal: the daemon's records come as JSON lines, as they do in DATA/logs/daemon.log (0600)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(r["msg"].startswith("zlayer daemon ready") and r["level"] == "INFO" for r in records), out
    logged = (data / "logs" / "daemon.log").read_text().splitlines()
    assert any(json.loads(line)["msg"].startswith("zlayer daemon ready") for line in logged)
    assert (data / "logs" / "daemon.log").stat().st_mode & 0o777 == 0o600


def test_daemon_install_start_status_stop_uninstall(tmp_path: Path) -> None:
    data, units = tmp_path / "data", tmp_path / "units"
    r = _zl(data, "daemon", "install", "--no-start", "--bind", "none", "--unit-dir", str(units))
    assert r.returncode == 0, r.stderr
    unit = units / "zlayer.service"
    assert f"Installed systemd unit: {unit}" in r.stdout
    text = unit.read_text()
    assert "Type=notify" in text and f"--data-dir {data} serve --bind none" in text
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr

    status = _zl(data, "daemon", "status", "--unit-dir", str(units), "-o", "json")
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
    assert json.loads(status.stdout)["installed"] is True

    started = _zl(data, "daemon", "start", "--unit-dir", str(units))
    try:
        assert started.returncode == 0, started.stderr
        status = _zl(data, "daemon", "status", "--unit-dir", str(units), "-o", "json")
        state = json.loads(status.stdout)
        assert status.returncode == 0 and state["running"] is True and state["pid"] > 0
        again = _zl(data, "daemon", "start", "--unit-dir", str(units))
        assert "already running" in again.stdout and json.loads(
            _zl(data, "daemon", "status", "-o", "json").stdout)["pid"] == state["pid"]  # fmt: skip
        assert _zl(data, "ps").returncode == 0  # a client reaches it
        restarted = _zl(data, "daemon", "restart", "--unit-dir", str(units))
        assert restarted.returncode == 0, restarted.stderr
        new = json.loads(_zl(data, "daemon", "status", "-o", "json").stdout)
        assert new["running"] and new["pid"] != state["pid"]
        stopped = _zl(data, "daemon", "stop", "--unit-dir", str(units))
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert json.loads(_zl(data, "daemon", "status", "-o", "json").stdout)["running"] is False
        assert "not running" in _zl(data, "daemon", "stop").stdout
    finally:
        _zl(data, "daemon", "stop")

    gone = _zl(data, "daemon", "uninstall", "--unit-dir", str(units))
    assert gone.returncode == 0 and not unit.exists() and data.exists()
    assert _zl(data, "daemon", "uninstall", "--unit-dir", str(units), "--purge-data").returncode == 0
    assert not data.exists()


def test_install_keeps_the_secret_in_a_private_dropin(tmp_path: Path) -> None:
    units = tmp_path / "units"
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(tmp_path / "d"), "daemon", "install",
                        "--no-start", "--unit-dir", str(units)], env=_env(ZLAYER_JWT_SECRET="s3cret-value"),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    dropin = units / "zlayer.service.d" / "env.conf"
    assert "s3cret-value" not in (units / "zlayer.service").read_text()
    assert 'Environment="ZLAYER_JWT_SECRET=s3cret-value"' in dropin.read_text()
    assert oct(dropin.stat().st_mode & 0o777) == "0o600"
    bad = subprocess.run([sys.executable, "-m", "zlayer", "daemon", "install", "--no-start", "--bind", "nonsense",
                          "--unit-dir", str(units)], env=_env(), capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "--bind 'nonsense'" in bad.stderr and "Traceback" not in bad.stderr


def test_reset_forgets_cluster_state_only_when_stopped_and_forced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    started = _zl(data, "daemon", "start")
    try:
        assert started.returncode == 0, started.stderr
        (data / "cluster" / "etcd").mkdir(parents=True)  # what `zlayer node init` leaves (its etcd and identity)
        (data / "cluster" / "node.json").write_text("{}")
        running = _zl(data, "daemon", "reset", "--force")
        assert running.returncode != 0 and "stop it first" in running.stderr and (data / "cluster").exists()
    finally:
        _zl(data, "daemon", "stop")
    refused = _zl(data, "daemon", "reset")
    assert refused.returncode != 0 and "pass --force" in refused.stderr and (data / "cluster").exists()
    done = _zl(data, "daemon", "reset", "--force")
    assert done.returncode == 0 and not (data / "cluster").exists() and (data / "state.db").exists()
    assert "Traceback" not in refused.stderr + running.stderr + done.stderr
