"""`zlayer serve` as a process: listeners, permissions, token, side-by-side daemons, SIGTERM, re-adoption."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import free_port, httpd_service


def zl(d: Any, *args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(d.data_dir), *args],
        env=d.env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def http(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_two_daemons_run_side_by_side_with_root_only_sockets_and_token_auth(daemon_process: Any) -> None:
    a, b = daemon_process("a"), daemon_process("b")
    for d in (a, b):
        mode = stat.S_IMODE(os.stat(d.socket).st_mode)
        assert stat.S_ISSOCK(os.stat(d.socket).st_mode) and mode == 0o660
        assert http(f"http://127.0.0.1:{d.port}/health/live")[0] == 200
        status, body = http(f"http://127.0.0.1:{d.port}/api/v1/deployments", token="wrong")
        assert status == 401 and body["code"] == "unauthorized"
        assert http(f"http://127.0.0.1:{d.port}/api/v1/deployments")[0] == 401
        assert http(f"http://127.0.0.1:{d.port}/api/v1/deployments", token=d.token) == (200, [])
    assert a.token != b.token
    info = json.loads((a.data_dir / "daemon.json").read_text())
    assert info["pid"] == a.proc.pid and info["socket_path"] == str(a.socket)


def test_a_second_daemon_on_the_same_data_dir_is_refused(daemon_process: Any) -> None:
    a = daemon_process("a")
    r = zl(a, "serve", "--bind", f"127.0.0.1:{free_port()}")
    assert r.returncode != 0 and "another zlayer daemon already uses" in r.stderr


def test_sigterm_shuts_down_cleanly_and_removes_the_socket(daemon_process: Any) -> None:
    a = daemon_process("a")
    assert a.terminate(signal.SIGTERM) == 0
    assert not a.socket.exists() and not (a.data_dir / "daemon.json").exists()


def test_restart_readopts_running_replicas_without_duplicates(daemon_process: Any, tmp_path: Path) -> None:
    a = daemon_process("a")
    port = free_port()
    spec = tmp_path / "app.zlayer.yml"
    spec.write_text("version: v1\ndeployment: keep\nservices:\n  web:\n" + httpd_service(port, 1))
    r = zl(a, "-b", "deploy", str(spec))
    assert r.returncode == 0, r.stdout + r.stderr
    before = json.loads(zl(a, "ps", "--format", "json").stdout)["containers"]
    assert [(c["id"], c["state"]) for c in before] == [("web-rep-1", "running")]
    a.terminate(signal.SIGKILL)  # a crash: no clean shutdown at all
    a.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = json.loads(zl(a, "ps", "--format", "json").stdout)["containers"]
        if after and after[0].get("health", {}).get("status") == "healthy":
            break
        time.sleep(0.3)
    assert [(c["id"], c["pid"], c["restarts"]) for c in after] == [("web-rep-1", before[0]["pid"], 0)]
    ids = sorted(p.name for p in (a.data_dir / "host-containers").iterdir() if (p / "meta.json").exists())
    assert ids == ["web-rep-1"]


def test_cli_deploy_ps_logs_exec_stop_down(daemon_process: Any, tmp_path: Path) -> None:
    a = daemon_process("a")
    port = free_port()
    (tmp_path / "shop.zlayer.yml").write_text(
        "version: v1\ndeployment: shop\nservices:\n  web:\n" + httpd_service(port, 1)
    )
    plan = zl(a, "deploy", "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0 and "Deployment: shop" in plan.stdout and "fixed (1 replicas)" in plan.stdout
    r = zl(a, "-b", "deploy", cwd=tmp_path)
    assert r.returncode == 0 and "Deployment shop is running" in r.stdout, r.stdout + r.stderr
    ps = json.loads(zl(a, "ps", "--format", "json").stdout)
    assert [(c["id"], c["state"]) for c in ps["containers"]] == [("web-rep-1", "running")]
    assert ps["services"][0]["replicas"] == 1
    logs = zl(a, "logs", "-s", "web", "-n", "5", cwd=tmp_path)
    assert f"[stdout] serving {port}" in logs.stdout
    ex = zl(a, "exec", "web", "-r", "1", "--", "sh", "-c", "echo out; echo err >&2; exit 3", cwd=tmp_path)
    assert (ex.returncode, ex.stdout, ex.stderr) == (3, "out\n", "err\n")
    assert zl(a, "stop", "-s", "web", "-t", "1", cwd=tmp_path).returncode == 0
    assert json.loads(zl(a, "ps", "--format", "json").stdout)["containers"] == []
    assert zl(a, "down", cwd=tmp_path).returncode == 0
    assert json.loads(zl(a, "ps", "--format", "json").stdout) == {"services": [], "containers": []}
    gone = zl(a, "down", "shop")
    assert gone.returncode != 0 and "deployment 'shop' not found" in gone.stderr


def test_invalid_spec_from_the_cli_lists_every_problem_and_changes_nothing(daemon_process: Any, tmp_path: Path) -> None:
    a = daemon_process("a")
    bad = tmp_path / "bad.zlayer.yml"
    bad.write_text("version: v1\ndeployment: bad\nservices:\n  web:\n    image: nginx\n")
    r = zl(a, "-b", "deploy", str(bad))
    assert r.returncode != 0 and "invalid spec" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(zl(a, "ps", "--format", "json").stdout) == {"services": [], "containers": []}


def test_metrics_endpoint_reports_containers_health_deploys_and_api_latency(
    daemon_process: Any, tmp_path: Path
) -> None:
    mport = free_port()
    a = daemon_process("a", start=False)
    a.extra = ["--metrics-bind", f"127.0.0.1:{mport}"]
    a.start()
    spec = tmp_path / "m.zlayer.yml"
    spec.write_text("version: v1\ndeployment: metered\nservices:\n  web:\n" + httpd_service(free_port(), 1))
    assert zl(a, "-b", "deploy", str(spec)).returncode == 0
    time.sleep(1.5)
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'zlayer_containers{state="running"} 1.0' in text
    assert 'zlayer_health_checks_total{result="healthy",service="web"}' in text
    assert 'zlayer_deploy_duration_seconds_count{result="success"} 1.0' in text
    assert (
        'zlayer_api_request_duration_seconds_count{method="POST",route="/api/v1/deployments",status="201"} 1.0' in text
    )


def test_endpoint_port_reaches_the_service_through_the_proxy(daemon_process: Any, tmp_path: Path) -> None:
    a = daemon_process("a")
    target, front = free_port(), free_port()
    endpoint = (
        f"    endpoints: [{{name: http, protocol: http, port: {front}, target_port: {target}, expose: internal}}]\n"
    )
    spec = tmp_path / "p.zlayer.yml"
    spec.write_text("version: v1\ndeployment: proxied\nservices:\n  web:\n" + httpd_service(target, 1, extra=endpoint))
    assert zl(a, "-b", "deploy", str(spec)).returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{front}/", timeout=5) as r:
        assert r.read() == b"web-rep-1"
    svc = http(f"http://127.0.0.1:{a.port}/api/v1/deployments/proxied/services/web", token=a.token)[1]
    assert svc["endpoints"] == [
        {"name": "http", "protocol": "http", "port": front, "url": f"http://127.0.0.1:{front}/"}
    ]
    assert zl(a, "down", "proxied").returncode == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{front}/", timeout=2)


def test_up_runs_in_the_foreground_and_ctrl_c_tears_it_down(daemon_process: Any, tmp_path: Path) -> None:
    a = daemon_process("a")
    (tmp_path / "fg.zlayer.yml").write_text(
        "version: v1\ndeployment: fground\nservices:\n  web:\n" + httpd_service(free_port(), 1)
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "zlayer", "--data-dir", str(a.data_dir), "up"],
        cwd=tmp_path, env=a.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert up.stdout is not None
    seen = []
    for line in up.stdout:
        seen.append(line)
        if "Ctrl+C" in line:
            break
    assert any("Deployment fground is running" in s for s in seen), seen
    assert json.loads(zl(a, "ps", "--format", "json").stdout)["containers"][0]["state"] == "running"
    up.send_signal(signal.SIGINT)
    rest = up.communicate(timeout=30)[0]
    assert up.returncode == 0, rest
    assert "Stopping fground" in rest
    assert json.loads(zl(a, "ps", "--format", "json").stdout) == {"services": [], "containers": []}


def test_status_shows_a_crash_loop_with_backoff_exit_code_and_last_lines(daemon_process: Any, tmp_path: Path) -> None:
    a = daemon_process("a")
    spec = tmp_path / "crash.zlayer.yml"
    spec.write_text(
        "version: v1\ndeployment: crashy\nservices:\n  bad:\n    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, 'echo about to fail; exit 3']}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        # a check that never passes: the replica can only end its rollout by crash-looping (a passing check
        # that raced the first exit would let the deploy count it as up)
        "    health: {start_grace: 0s, interval: 1s, check: {type: command, command: 'false'}}\n"
    )
    r = zl(a, "-b", "deploy", str(spec))
    assert r.returncode != 0 and "bad-rep-1 is crash-looping: exited with code 3" in r.stderr, r.stderr
    out = zl(a, "status").stdout
    assert re.search(r"bad-rep-1: backoff, restarts \d+, last exit code 3", out), out
    assert "[stdout] about to fail" in out
    events = http(f"http://127.0.0.1:{a.port}/api/v1/deployments/crashy/events?follow=false", token=a.token)[1]
    assert any(e["kind"] == "replica_crashed" and "exited with code 3" in e["message"] for e in events)


def test_tcp_endpoint_goes_through_the_proxy_data_plane(daemon_process: Any, tmp_path: Path) -> None:
    a = daemon_process("a")
    target, front = free_port(), free_port()
    endpoint = f"    endpoints: [{{name: raw, protocol: tcp, port: {front}, target_port: {target}}}]\n"
    spec = tmp_path / "t.zlayer.yml"
    spec.write_text("version: v1\ndeployment: tcpsvc\nservices:\n  web:\n" + httpd_service(target, 1, extra=endpoint))
    assert zl(a, "-b", "deploy", str(spec)).returncode == 0
    deadline = time.monotonic() + 10
    body = b""
    while time.monotonic() < deadline and body != b"web-rep-1":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{front}/", timeout=2) as r:
                body = r.read()
        except OSError:
            time.sleep(0.2)
    assert body == b"web-rep-1"
