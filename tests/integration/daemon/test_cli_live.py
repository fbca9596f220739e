"""The CLI against a real node (issue 5, item 6): every command a user runs, with the output the user checks, on
busybox containers the daemon really runs. One daemon for the module."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon_live import HTTPD, LiveNode
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

IMAGE = "{name: 'zlayer-svc/httpd:v1', pull_policy: never}"


def chatty_spec(name: str, replicas: int = 2) -> str:
    """``web`` prints a line naming its replica at start, then serves; health is tcp."""
    script = f"echo started-$(/bin/busybox hostname); {HTTPD}"
    return (
        f"version: v1\ndeployment: {name}\nservices:\n  web:\n    image: {IMAGE}\n"
        f"    command: {{entrypoint: ['/bin/sh', '-c'], args: [{script!r}]}}\n    stop_grace_period: 1s\n"
        f"    scale: {{mode: fixed, replicas: {replicas}}}\n"
        "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
    )


def zl(node: LiveNode, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), *args], cwd=cwd,
                          env={**node.env, "ZLAYER_NO_AUTOSTART": "1"}, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def fails(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and r.stderr.strip(), r.stderr
    return r.stderr


def test_deploy_dry_run_ps_status_logs_exec_stop_down(
    daemon_live: LiveNode, daemon_live_names: list[str], tmp_path: Path
) -> None:
    node, name = daemon_live, unique("cli")
    daemon_live_names.append(name)
    (tmp_path / f"{name}.zlayer.yml").write_text(chatty_spec(name))  # found by auto-discovery

    # an invalid spec: every problem with the user's file:line:col and field path, locally and from the daemon
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = bad_dir / "broken.zlayer.yml"
    bad.write_text(chatty_spec(name).replace("replicas: 2", "replicas: -2").replace("zlayer-svc/httpd:v1", ""))
    for args in (("deploy", "--dry-run"), ("-b", "deploy")):
        err = fails(zl(node, *args, cwd=bad_dir))
        assert f"{bad}: invalid spec (2 problems)" in err and "<string>" not in err, err
        assert (
            f"{bad}:5:19:" in err
            and f"{bad}:8:36:" in err
            and "services.web.image" in err
            and "services.web.scale.replicas" in err
        ), err
    assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404

    plan = ok(zl(node, "deploy", "--dry-run", cwd=tmp_path))
    assert f"Deployment: {name}" in plan and "fixed (2 replicas)" in plan and "zlayer-svc/httpd:v1" in plan
    assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404  # a dry run changes nothing

    out = ok(zl(node, "-b", "deploy", cwd=tmp_path))
    assert f"Deployment {name} is running" in out and "web: healthy (2/2 replicas)" in out, out

    ps = json.loads(ok(zl(node, "ps", "--deployment", name, "--format", "json")))
    assert [(s["name"], s["replicas"], s["desired_replicas"]) for s in ps["services"]] == [("web", 2, 2)]
    assert sorted(c["id"] for c in ps["containers"]) == ["web-rep-1", "web-rep-2"]
    assert all(c["deployment"] == name and c["state"] == "running" for c in ps["containers"])
    table = ok(zl(node, "ps", "--deployment", name))
    assert re.search(rf"{name}\s+web\s+2/2\s+", table), table
    ctable = ok(zl(node, "ps", "--deployment", name, "--containers"))
    row = rf"{name}\s+web\s+web-rep-\d\s+\d\s+zlayer-svc/httpd:v1\s+linux\s+running"
    assert len(re.findall(row, ctable)) == 2, ctable

    status = ok(zl(node, "status"))
    assert "Daemon: running (pid" in status and re.search(rf"Deployment {name}: running", status), status
    assert re.search(r"web\s+healthy\s+2/2", status), status

    logs = ok(zl(node, "logs", "-s", "web", "--deployment", name, "-n", "5"))
    assert "started-web-rep-1" in logs and "started-web-rep-2" in logs, logs
    one = ok(zl(node, "logs", "web", "--deployment", name, "-n", "1", "-i", "2"))
    assert "started-web-rep-2" in one and "web-rep-1" not in one, one
    # -f keeps printing: a line written by the replica after the follow began shows up
    follow = subprocess.Popen([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), "logs", "-s", "web",
                               "--deployment", name, "-f", "-n", "0", "-i", "1"], env=node.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1.5)
        ok(zl(node, "exec", "web", "--deployment", name, "--replica", "1", "--", "/bin/sh", "-c",
              "echo followed-line > /proc/1/fd/1"))  # fmt: skip
        line = _readline_within(follow, "followed-line", 15)
        assert "followed-line" in line
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)

    assert ok(zl(node, "exec", "web", "--deployment", name, "--replica", "2", "--", "/bin/busybox", "hostname")) == (
        "web-rep-2\n"
    )
    r = zl(node, "exec", "web", "--deployment", name, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert "no command" in fails(zl(node, "exec", "web", "--deployment", name))
    assert "replica" in fails(zl(node, "exec", "web", "--deployment", name, "--replica", "9", "--", "true")).lower()

    # stop --service --timeout: graceful, replicas gone, deployment kept (scale back with deploy)
    pids = [c["pid"] for c in ps["containers"]]
    t0 = time.monotonic()
    out = ok(zl(node, "stop", name, "--service", "web", "--timeout", "2", cwd=tmp_path))
    assert f"Stopped {name}/web" in out and time.monotonic() - t0 < 60
    assert json.loads(ok(zl(node, "ps", "--deployment", name, "--format", "json")))["containers"] == []
    assert all(not Path(f"/proc/{p}").exists() for p in pids)
    assert node.runtime_containers() == [] or not any(c.startswith("web-rep") for c in node.runtime_containers())
    ok(zl(node, "-b", "deploy", cwd=tmp_path))
    assert len(json.loads(ok(zl(node, "ps", "--deployment", name, "--format", "json")))["containers"]) == 2
    # stop --force (auto-discovered name): killed at once
    out = ok(zl(node, "stop", "--force", cwd=tmp_path))
    assert f"Stopped {name}/web" in out
    assert json.loads(ok(zl(node, "ps", "--deployment", name, "--format", "json")))["containers"] == []

    out = ok(zl(node, "down", cwd=tmp_path))
    assert f"Deployment {name} removed" in out
    assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404
    assert f"deployment '{name}' not found" in fails(zl(node, "down", name))


def _readline_within(proc: subprocess.Popen[str], want: str, timeout: float) -> str:
    """Read ``proc``'s stdout lines (in a thread: a select() on a buffered pipe misses lines already read ahead)
    until one contains ``want``."""
    import queue
    import threading

    assert proc.stdout is not None
    stream = proc.stdout
    lines: queue.Queue[str] = getattr(proc, "_lines", None) or queue.Queue()
    if not hasattr(proc, "_lines"):
        proc._lines = lines  # type: ignore[attr-defined]
        threading.Thread(target=lambda: [lines.put(ln) for ln in iter(stream.readline, "")], daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if want in line:
            return line
    raise AssertionError(f"{want!r} not printed within {timeout}s; got {seen!r}")


def test_up_in_the_foreground_tears_down_on_ctrl_c_deploy_returns_and_b_detaches(
    daemon_live: LiveNode, daemon_live_names: list[str], tmp_path: Path
) -> None:
    node, name = daemon_live, unique("up")
    daemon_live_names.append(name)
    (tmp_path / "zlayer.yml").write_text(chatty_spec(name, 1))
    up = subprocess.Popen([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), "up"], cwd=tmp_path,
                          env=node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _readline_within(up, "Running in the foreground", 90)
        [rep] = node.containers(name, "web")
        assert rep["state"] == "running"
        up.send_signal(signal.SIGINT)  # Ctrl+C
        _readline_within(up, f"Stopping {name}", 30)
        assert up.wait(60) == 0
        assert up.stderr is not None and "Traceback" not in up.stderr.read()
    finally:
        if up.poll() is None:
            up.kill()
    assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404
    assert not Path(f"/proc/{rep['pid']}").exists()
    assert "web-rep-1" not in node.runtime_containers()

    # `deploy` returns by itself once the deployment runs (ZLayer's README: it does not stay in the foreground), so a
    # CI job that runs it ends; the daemon printed what happened on the way
    out = ok(zl(node, "deploy", cwd=tmp_path))
    assert f"Deployment {name} is running" in out and "replica_started: web-rep-1 running" in out, out
    assert "deploy_done" in out and "Running in the foreground" not in out, out
    assert node.deployment(name)["status"] == "running"
    # a second deploy prints its own events, not the first one's again
    again = ok(zl(node, "deploy", cwd=tmp_path))
    assert again.count("deploy: revision") == 1 and "revision 2 submitted" in again, again
    ok(zl(node, "down", name))

    for args in (("-b", "up"), ("up", "-b"), ("up", "--detach")):  # README forms; -b/-d after the command too
        out = ok(zl(node, *args, cwd=tmp_path))  # returns once it runs, leaves it running
        assert f"Deployment {name} is running" in out, (args, out)
        assert node.deployment(name)["status"] == "running"
        # `logs -d NAME` (README form): -d names the deployment
        assert "started-web-rep-1" in ok(zl(node, "logs", "-d", name, "-s", "web", "-n", "5"))
        ok(zl(node, "down", name))


def test_deploy_of_a_failing_spec_exits_non_zero_with_the_reason(
    daemon_live: LiveNode, daemon_live_names: list[str], tmp_path: Path
) -> None:
    node, name = daemon_live, unique("dfail")
    daemon_live_names.append(name)
    spec = tmp_path / "zlayer.yml"
    spec.write_text(chatty_spec(name, 1).replace("zlayer-svc/httpd:v1", "zlayer-svc/no-such-image:v1"))
    err = fails(zl(node, "deploy", cwd=tmp_path, timeout=120))
    assert f"deployment {name} failed" in err and "no-such-image" in err, err
    assert node.deployment(name)["status"] == "failed"
    ok(zl(node, "down", name))


def test_container_ls_inspect_logs_stats_rm(
    daemon_live: LiveNode, daemon_live_names: list[str], tmp_path: Path
) -> None:
    node, name = daemon_live, unique("ctr")
    daemon_live_names.append(name)
    node.deploy(chatty_spec(name, 1))
    node.expect(name)
    [rep] = node.containers(name, "web")
    cid = rep["id"]
    listed: list[dict[str, Any]] = json.loads(ok(zl(node, "container", "ls", "--output", "json")))
    mine = [c for c in listed if c.get("deployment") == name]
    assert [(c["id"], c["state"], c["pid"]) for c in mine] == [(cid, "running", rep["pid"])]
    table = ok(zl(node, "container", "ls"))
    assert re.search(rf"{cid}\s+{name}\s+web\s+zlayer-svc/httpd:v1\s+running\s+{rep['pid']}", table), table
    info = json.loads(ok(zl(node, "container", "inspect", cid)))
    assert info["id"] == cid and info["state"] == "running" and info["ipv4"] == rep["ipv4"]
    assert info["labels"] == {"zlayer.deployment": name, "zlayer.service": "web", "zlayer.replica": "1"}
    assert "started-web-rep-1" in ok(zl(node, "container", "logs", cid, "--tail", "5"))
    stats = ok(zl(node, "container", "stats", cid))
    m = re.search(rf"{cid}\s+(\d+\.\d\d)s\s+(\d+)\s+", stats)
    assert m and int(m.group(2)) > 0, stats  # a real cgroup's memory use
    assert "not found" in fails(zl(node, "container", "inspect", "nosuch-rep-1"))
    # rm: the container goes; the service replaces it with a new process
    assert f"Removed {cid}" in ok(zl(node, "container", "rm", cid, "--force"))
    new = node.wait_for(
        lambda: [c for c in node.containers(name, "web") if c["state"] == "running" and c["pid"] != rep["pid"]],
        60,
        "the service to replace the removed replica",
    )
    assert len(new) == 1 and not Path(f"/proc/{rep['pid']}").exists()


def test_job_ls_trigger_status_and_cron_ls_status(
    daemon_live: LiveNode, daemon_live_names: list[str], tmp_path: Path
) -> None:
    node, name = daemon_live, unique("jobcli")
    daemon_live_names.append(name)
    node.deploy(
        f"version: v1\ndeployment: {name}\nservices:\n"
        f"  once:\n    rtype: job\n    image: {IMAGE}\n"
        f"    command: {{entrypoint: ['/bin/sh', '-c'], args: ['echo job-ran; exit 3']}}\n"
        f"  tick:\n    rtype: cron\n    schedule: '0 0 0 1 1 * *'\n    image: {IMAGE}\n"
        f"    command: {{entrypoint: ['/bin/sh', '-c'], args: ['echo tick']}}\n"
    )
    node.expect(name)
    rows = json.loads(ok(zl(node, "job", "ls", "--output", "json")))
    mine = {r["name"]: r for r in rows if r["deployment"] == name}
    assert {k: v["type"] for k, v in mine.items()} == {"once": "job", "tick": "cron"}
    assert mine["tick"]["schedule"] == "0 0 0 1 1 * *" and mine["once"]["last"] is None
    out = ok(zl(node, "job", "trigger", "once", "--deployment", name))
    exec_id = re.search(r"execution (\S+)", out).group(1)  # type: ignore[union-attr]
    done = node.wait_for(
        lambda: (e := json.loads(ok(zl(node, "job", "status", exec_id))))["status"] in ("completed", "failed") and e,
        60,
        "the job execution to finish",
    )
    assert done["status"] == "failed" and done["exit_code"] == 3 and "job-ran" in (done.get("logs") or ""), done
    table = ok(zl(node, "job", "status", "once", "--deployment", name))
    assert re.search(rf"{re.escape(exec_id)}\s+failed\s+\S+\s+3\s+", table), table
    assert re.search(rf"{name}\s+once\s+job\s+\s*failed", ok(zl(node, "job", "ls")))

    cron = ok(zl(node, "job", "cron", "ls"))
    assert re.search(r"tick\s+0 0 0 1 1 \* \*\s+True", cron), cron
    st = ok(zl(node, "job", "cron", "status", "tick", "--deployment", name))
    assert "tick: schedule '0 0 0 1 1 * *', enabled" in st and "next run: " in st and "next run: -" not in st, st
    assert "not found" in fails(zl(node, "job", "trigger", "nosuch", "--deployment", name))
