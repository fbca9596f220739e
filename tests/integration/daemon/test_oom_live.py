"""OOM kills are reported as OOMKilled (issue 11, item 10): a busybox replica that allocates past its memory limit,
and a command run with ``zlayer exec`` that does, are killed by the kernel's OOM killer in the container's memory
cgroup; ``zlayer ps``, ``status``, ``container inspect``, the API and the deployment's events say OOMKilled, as
Docker's State.OOMKilled does, from the cgroup's own counter (this host's hierarchy, for real)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.daemon_live import HTTPD, LiveNode
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

IMAGE = "{name: 'zlayer-svc/httpd:v1', pull_policy: never}"
# the shell builds a string of 100 MB in its own memory: far past a 16 MiB limit (this host has no swap to spill to)
HOG = "x=$(/bin/busybox head -c 100000000 /dev/zero | /bin/busybox tr '\\0' a); echo survived"


def spec(name: str, service: str, script: str, extra: str = "") -> str:
    return (
        f"version: v1\ndeployment: {name}\nservices:\n  {service}:\n    image: {IMAGE}\n"
        f"    command: {{entrypoint: ['/bin/sh', '-c'], args: [{script!r}]}}\n    stop_grace_period: 1s\n"
        f"    resources: {{memory: 16Mi}}\n    scale: {{mode: fixed, replicas: 1}}\n{extra}"
    )


def ok(r: Any) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return str(r.stdout)


def test_replica_killed_at_its_memory_limit_shows_oomkilled(
    daemon_live: LiveNode, daemon_live_names: list[str]
) -> None:
    node, name = daemon_live, unique("oom")
    daemon_live_names.append(name)
    node.deploy(spec(name, "hog", f"sleep 1; {HOG}", "    restart_policy: {kind: 'no'}\n"))
    c = node.wait_for(
        lambda: next((c for c in node.containers(name, "hog") if c["state"] == "failed"), None), 60, "the OOM kill"
    )
    assert c["oom_killed"] is True and c["exit_code"] == 137, c
    assert "OOMKilled" in c["last_error"], c

    inspect = json.loads(ok(node.zl("container", "inspect", c["id"])))
    assert inspect["oom_killed"] is True and inspect["exit_code"] == 137
    ps_c = ok(node.zl("ps", "-c", "--deployment", name))
    assert "failed (OOMKilled)" in ps_c, ps_c
    ps = ok(node.zl("ps", "--deployment", name))
    assert "1 OOMKilled" in ps, ps
    status = node.zl("status", name)
    assert f"{c['id']}: failed, OOMKilled, restarts 0, last exit code 137" in status.stdout, status.stdout
    kinds = {e["kind"]: e["message"] for e in node.events(name)}
    assert "OOMKilled" in kinds.get("replica_oom_killed", ""), node.describe(name)
    assert "exited with code 137 (OOMKilled" in kinds.get("replica_exited", ""), node.describe(name)


def test_a_replica_that_exits_on_its_own_is_not_oomkilled(daemon_live: LiveNode, daemon_live_names: list[str]) -> None:
    node, name = daemon_live, unique("nooom")
    daemon_live_names.append(name)
    # killed with SIGKILL, as the OOM killer kills (pid 1 of its namespace cannot be: a child is, and the shell
    # exits 137 as after an OOM kill), but with memory to spare
    node.deploy(spec(name, "quit", "sleep 1; /bin/sh -c 'kill -9 $$'; exit $?", "    restart_policy: {kind: 'no'}\n"))
    c = node.wait_for(
        lambda: next((c for c in node.containers(name, "quit") if c["state"] == "failed"), None), 60, "the exit"
    )
    assert c["exit_code"] == 137 and c["oom_killed"] is False and "OOMKilled" not in c["last_error"], c
    assert "OOMKilled" not in ok(node.zl("ps", "-c", "--deployment", name))
    assert not [e for e in node.events(name) if "oom" in e["kind"]], node.describe(name)


def test_exec_killed_at_the_memory_limit_shows_oomkilled(daemon_live: LiveNode, daemon_live_names: list[str]) -> None:
    node, name = daemon_live, unique("execoom")
    daemon_live_names.append(name)
    node.deploy(spec(name, "web", HTTPD))
    node.expect(name)
    before = node.containers(name, "web")[0]
    assert before["oom_killed"] is False

    r = node.zl("exec", "--deployment", name, "web", "--", "/bin/sh", "-c", HOG)
    assert r.returncode == 137, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout and "OOMKilled" in r.stderr and "Traceback" not in r.stderr, r.stderr

    after = node.containers(name, "web")[0]
    assert after["id"] == before["id"] and after["state"] == "running" and after["oom_killed"] is True, after
    assert json.loads(ok(node.zl("container", "inspect", after["id"])))["oom_killed"] is True
    assert "running (OOMKilled)" in ok(node.zl("ps", "-c", "--deployment", name))
    status = ok(node.zl("status", name))
    assert f"{after['id']}: running, OOMKilled, restarts 0\n" in status, status
    events = [e for e in node.events(name) if e["kind"] == "exec_oom_killed"]
    assert len(events) == 1 and after["id"] in events[0]["message"] and "OOMKilled" in events[0]["message"], events

    body = {"command": ["/bin/sh", "-c", HOG]}
    res = node.api("POST", f"/api/v1/containers/{after['id']}/exec", body)
    assert res["exit_code"] == 137 and res["oom_killed"] is True, res
    fine = node.api("POST", f"/api/v1/containers/{after['id']}/exec", {"command": ["echo", "fine"]})
    assert fine == {"exit_code": 0, "stdout": "fine\n", "stderr": "", "oom_killed": False}
