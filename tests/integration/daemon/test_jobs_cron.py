"""Jobs and cron jobs on a real node.

Jobs (``rtype: job``): triggered through the API and the CLI, each run an execution with its status, exit code and
output; a running one can be cancelled (its process is killed and its container removed); jobs reach services by
name. Cron jobs (``rtype: cron``, seconds-first schedules in UTC) fire on their schedule, never overlap a run still
going, can be disabled, enabled and triggered by hand.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from datetime import datetime
from typing import Any

import pytest

from tests.fixtures.daemon_node import Node, processes_with, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

IMAGE = '{name: "zlayer-svc/httpd:v1", pull_policy: never}'


def job(name: str, script: str, rtype: str = "job", extra: str = "") -> str:
    return f"""  {name}:
    rtype: {rtype}
    image: {IMAGE}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{script!r}]}}
    stop_grace_period: 1s
{extra}"""


def web() -> str:
    return f"""  web:
    image: {IMAGE}
    command: {{entrypoint: ["/bin/busybox"], args: ["httpd", "-f", "-p", "8080", "-h", "/www"]}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 1}}
    health: {{start_grace: 0s, interval: 500ms, check: {{type: tcp, port: 8080}}}}
"""


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def execution(node: Node, exec_id: str) -> dict[str, Any]:
    return dict(node.api("GET", f"/api/v1/jobs/{exec_id}/status"))


def finished(node: Node, exec_id: str, timeout: float = 30) -> dict[str, Any]:
    return node.wait_for(
        lambda: (e := execution(node, exec_id))["status"] not in ("pending", "initializing", "running") and e,
        timeout,
        f"execution {exec_id} to finish",
    )


def test_jobs_trigger_status_executions_cancel(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name = unique("jobs")
    daemon_deployments.append(name)
    sleep_for = str(3000 + int.from_bytes(os.urandom(2), "big") % 600)  # a marker no other test's process has
    node.deploy(
        f"version: v1\ndeployment: {name}\nservices:\n"
        + web()
        + job("hello", 'echo "hello from $(/bin/busybox hostname)"; echo oops >&2; exit 0')
        + job("fails", "echo failing; exit 5")
        + job("long", f"echo started; exec sleep {sleep_for}")
        + job("caller", "wget -q -O- http://web:8080/")
    )
    node.expect(name)
    assert node.containers(name, "hello") == []  # a job has no replicas until triggered

    # API trigger -> completed with exit code 0 and its output
    status, body = node.request("POST", f"/api/v1/jobs/hello/trigger?deployment={name}")
    assert status == 202, body
    hello = finished(node, body["execution_id"])
    assert hello["status"] == "completed" and hello["exit_code"] == 0 and hello["trigger"] == "endpoint", hello
    assert re.search(r"\[stdout\] hello from job-hello-rep-\d+", hello["logs"]) and "[stderr] oops" in hello["logs"]
    assert hello["duration_ms"] > 0 and ts(hello["completed_at"]) >= ts(hello["started_at"])

    # CLI trigger -> failed with the exit code
    r = node.zl("job", "trigger", "fails", "--deployment", name)
    assert r.returncode == 0, r.stderr
    fail_id = re.search(r"execution (\S+)", r.stdout)[1]  # type: ignore[index]
    failed = finished(node, fail_id)
    assert failed["status"] == "failed" and failed["exit_code"] == 5, failed
    assert failed["error"] == "exited with code 5" and "[stdout] failing" in failed["logs"]

    # a job reaches a service by name over the node network
    caller = finished(node, node.api("POST", f"/api/v1/jobs/caller/trigger?deployment={name}")["execution_id"])
    assert caller["status"] == "completed" and caller["logs"] == "[stdout] v1", caller

    # cancel: the running process is killed and its container removed
    long_id = node.api("POST", f"/api/v1/jobs/long/trigger?deployment={name}")["execution_id"]
    node.wait_for(lambda: execution(node, long_id)["status"] == "running", 20, "long running")
    node.wait_for(lambda: processes_with(f"sleep {sleep_for}"), 10, "the job's process")
    assert node.request("POST", f"/api/v1/jobs/{long_id}/cancel")[0] == 200
    cancelled = execution(node, long_id)
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"], cancelled
    node.wait_for(lambda: not processes_with(f"sleep {sleep_for}"), 10, "the job's process killed")
    assert not [d for d in (node.data / "containers").iterdir() if d.name.startswith("job-long-")]
    status, err = node.request("POST", f"/api/v1/jobs/{long_id}/cancel")
    assert status == 409 and "already cancelled" in json.dumps(err), (status, err)

    # executions are listed per job, newest first, and through the CLI
    second = finished(node, node.api("POST", f"/api/v1/jobs/hello/trigger?deployment={name}")["execution_id"])
    listed = node.api("GET", "/api/v1/jobs/hello/executions")
    assert [e["id"] for e in listed][:2] == [second["id"], hello["id"]], listed
    assert [e["id"] for e in node.api("GET", "/api/v1/jobs/fails/executions?status=failed")] == [fail_id]
    r = node.zl("job", "status", "hello")
    assert r.returncode == 0 and hello["id"] in r.stdout and "completed" in r.stdout, r.stdout
    r = node.zl("job", "status", fail_id)
    assert r.returncode == 0 and json.loads(r.stdout)["exit_code"] == 5, r.stdout
    r = node.zl("job", "ls")
    assert r.returncode == 0 and all(j in r.stdout for j in ("hello", "fails", "long", "caller")), r.stdout

    # bad input: an unknown job, an unknown execution, a service is not a job
    assert node.request("POST", f"/api/v1/jobs/nope/trigger?deployment={name}")[0] == 404
    assert node.request("GET", "/api/v1/jobs/00000000-0000-0000-0000-000000000000/status")[0] == 404
    assert node.request("POST", f"/api/v1/jobs/web/trigger?deployment={name}")[0] == 404


def test_cron_fires_never_overlaps_and_can_be_switched(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name = unique("cron")
    daemon_deployments.append(name)
    # every 2 s, each run takes 3 s: a run still going when the next one is due makes it skip
    node.deploy(
        f"version: v1\ndeployment: {name}\nservices:\n"
        + job("tick", "echo tick; sleep 3", rtype="cron", extra='    schedule: "*/2 * * * * *"\n')
    )
    node.expect(name)

    def runs() -> list[dict[str, Any]]:
        return sorted(node.api("GET", "/api/v1/jobs/tick/executions"), key=lambda e: e["started_at"])

    node.wait_for(lambda: len([e for e in runs() if e["status"] == "completed"]) >= 2, 20, "two completed runs")
    done = [e for e in runs() if e["trigger"] == "scheduler"]
    for a, b in itertools.pairwise(done):
        assert ts(b["started_at"]) >= ts(a["completed_at"]) - 0.05, (a, b)  # never overlapping
        assert ts(b["started_at"]) - ts(a["started_at"]) >= 3.5, (a, b)  # the due time inside a run was skipped
    first = done[0]
    assert first["exit_code"] == 0 and "[stdout] tick" in first["logs"]
    info = node.api("GET", "/api/v1/cron/tick")
    assert info["enabled"] and info["schedule"] == "*/2 * * * * *" and info["last_run"] and info["next_run"], info
    assert int(ts(info["next_run"])) % 2 == 0 and ts(info["next_run"]) > time.time() - 1

    # disable: no run starts any more
    r = node.api("PUT", "/api/v1/cron/tick/disable")
    assert r["enabled"] is False
    node.wait_for(lambda: all(e["status"] != "running" for e in runs()), 10, "the last run to end")
    count = len(runs())
    time.sleep(4.5)
    assert len(runs()) == count
    assert node.api("GET", "/api/v1/cron/tick")["next_run"] is None

    # trigger by hand while disabled
    status, body = node.request("POST", "/api/v1/cron/tick/trigger")
    assert status == 202, body
    manual = finished(node, body["execution_id"], 15)
    assert manual["trigger"] == "cli" and manual["status"] == "completed"
    assert len(runs()) == count + 1

    # enable again: it fires on schedule
    assert node.api("PUT", "/api/v1/cron/tick/enable")["enabled"] is True
    node.wait_for(lambda: len(runs()) > count + 1, 8, "a scheduled run after enable")
    r = node.zl("job", "cron", "ls")
    assert r.returncode == 0 and "tick" in r.stdout and "*/2 * * * * *" in r.stdout, r.stdout
    r = node.zl("job", "cron", "status", "tick")
    assert r.returncode == 0 and "schedule '*/2 * * * * *', enabled" in r.stdout, r.stdout
    assert manual["id"] in r.stdout  # its latest runs are listed

    # redeploying the same spec keeps the switch; bad schedules are refused with their field
    node.api("PUT", "/api/v1/cron/tick/disable")
    node.deploy(
        f"version: v1\ndeployment: {name}\nservices:\n"
        + job("tick", "echo tick; sleep 3", rtype="cron", extra='    schedule: "*/2 * * * * *"\n')
    )
    node.expect(name)
    assert node.api("GET", "/api/v1/cron/tick")["enabled"] is False
    bad = f"version: v1\ndeployment: {name}\nservices:\n" + job(
        "tick", "true", rtype="cron", extra='    schedule: "0 3 * * *"\n'
    )
    status, err = node.request("POST", "/api/v1/deployments", {"spec": bad})
    assert 400 <= status < 500 and "schedule" in json.dumps(err), (status, err)
