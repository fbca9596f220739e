"""A full disk under the data dir (a small tmpfs, filled up) against a live daemon: deploy and down answer what
happened in one clear message (what could not be written, that the disk is full, where), the daemon logs no
traceback and keeps serving, and the state stays what the answers said. Before: "OperationalError: database or disk
is full", two tracebacks in the log, a down that reported failure after it had removed the deployment, and a replica
that died on a full disk was never restarted (its supervision ended on the failed write)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import HTTPD, DaemonProcess, free_port, httpd_service, kill_host_containers

pytestmark = [pytest.mark.root]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        kill_host_containers(disk)
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def daemon_on(small_disk: Path) -> Iterator[DaemonProcess]:
    env = {"ZLAYER_RUNTIME_FACTORY": "tests.fixtures.daemon:host_runtime_factory",
           "PYTHONPATH": str(Path(__file__).resolve().parents[3]), "ZLAYER_NODE_NETWORK": "off"}  # fmt: skip
    d = DaemonProcess(small_disk / "data", env)
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.terminate(signal.SIGKILL)


def zl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(d.data_dir), *args], env=d.env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def api(d: DaemonProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    headers = {"Authorization": f"Bearer {d.token}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def deployments(d: DaemonProcess) -> dict[str, Any]:
    status, answer = api(d, "GET", "/api/v1/deployments")
    assert status == 200
    return {x["name"]: x for x in answer}


def replica_answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    return False


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_a_full_disk_is_a_clear_answer_and_the_state_matches_it(
    daemon_on: DaemonProcess, small_disk: Path, tmp_path: Path
) -> None:
    d = daemon_on
    port, port2 = free_port(), free_port()
    first, second = tmp_path / "first.zlayer.yml", tmp_path / "second.zlayer.yml"  # specs off the small disk
    first.write_text(f"version: v1\ndeployment: first\nservices:\n  web:\n{httpd_service(port)}")
    second.write_text(f"version: v1\ndeployment: second\nservices:\n  web:\n{httpd_service(port2)}")
    r = zl(d, "-b", "deploy", str(first))
    assert r.returncode == 0 and replica_answers(port), r.stdout + r.stderr
    filler = fill(small_disk)

    r = zl(d, "-b", "deploy", str(second))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "the disk is full" in out and str(d.data_dir / "state.db") in out and "df -h" in out, out
    assert "OperationalError" not in out and "internal error" not in out, out
    assert set(deployments(d)) == {"first"}  # the refused deployment left nothing behind
    assert not replica_answers(port2)

    r = zl(d, "down", "first")
    out = r.stdout + r.stderr
    if r.returncode == 0:  # whatever down says must be what happened
        assert "first" not in deployments(d) and not replica_answers(port), out
    else:
        assert "the disk is full" in out and "OperationalError" not in out, out
        assert deployments(d)["first"]["status"] == "running" and replica_answers(port), out

    # the replica dies while nothing can be written: its supervision goes on and brings it back once there is room
    pid = int((d.data_dir / "host-containers" / "web-rep-1" / "pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert d.proc.poll() is None, d.read_log()
        time.sleep(0.2)
    filler.unlink()
    deadline = time.monotonic() + 60
    while not replica_answers(port):
        assert time.monotonic() < deadline, d.read_log()
        time.sleep(0.2)

    r = zl(d, "down", "first")
    assert r.returncode == 0, r.stdout + r.stderr
    assert deployments(d) == {} and not replica_answers(port)
    r = zl(d, "-b", "deploy", str(second))
    assert r.returncode == 0 and replica_answers(port2), r.stdout + r.stderr

    assert d.proc is not None and d.proc.poll() is None
    log = d.read_log()
    assert "Traceback" not in log and "OperationalError" not in log, log


def test_a_deploy_the_disk_fills_under_ends_with_an_answer(daemon_on: DaemonProcess, small_disk: Path) -> None:
    """The spec is stored, then the disk fills while the replica starts: the deploy still ends (running, or failed
    saying the disk is full) instead of showing "deploying" for ever, and down then removes all of it."""
    d, port = daemon_on, free_port()
    slow = httpd_service(port).replace(json.dumps(HTTPD), json.dumps("import time;time.sleep(2);" + HTTPD))
    spec = f"version: v1\ndeployment: slow\nservices:\n  web:\n{slow}"
    assert api(d, "POST", "/api/v1/deployments", {"spec": spec})[0] == 201
    filler = fill(small_disk)
    deadline = time.monotonic() + 60
    while (answer := api(d, "GET", "/api/v1/deployments/slow")[1])["status"] == "deploying":
        assert time.monotonic() < deadline, d.read_log()
        time.sleep(0.2)
    assert answer["status"] in ("running", "failed"), answer
    if answer["status"] == "failed":
        assert "the disk is full" in answer["status_message"], answer
    filler.unlink()
    r = zl(d, "down", "slow")
    assert r.returncode == 0, r.stdout + r.stderr
    assert deployments(d) == {} and not replica_answers(port)
    assert d.proc is not None and d.proc.poll() is None
    log = d.read_log()
    assert "Traceback" not in log and "OperationalError" not in log, log
