"""Every listing of the CLI takes ``--output json`` (and ``-o``, and yaml), as the README promises (issue 11): on a
live node with a service, a job and a cron job, each listing prints one JSON document a program can parse, with
whole values (ids, digests, times and sizes as the API has them, never cut to fit a table). ``ps`` keeps
``--format``, the name ZLayer's CLI gives it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.fixtures.daemon_live import HTTPD, LiveNode
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

IMAGE = "{name: 'zlayer-svc/httpd:v1', pull_policy: never}"


def spec(name: str) -> str:
    return (
        f"version: v1\ndeployment: {name}\nservices:\n"
        f"  web:\n    image: {IMAGE}\n    command: {{entrypoint: ['/bin/sh', '-c'], args: [{HTTPD!r}]}}\n"
        "    stop_grace_period: 1s\n    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
        f"  once:\n    rtype: job\n    image: {IMAGE}\n"
        "    command: {entrypoint: ['/bin/sh', '-c'], args: ['echo ran']}\n"
        f"  tick:\n    rtype: cron\n    schedule: '0 0 0 1 1 *'\n    image: {IMAGE}\n"
        "    command: {entrypoint: ['/bin/sh', '-c'], args: ['echo tick']}\n"
    )


def zl(node: LiveNode, *args: str) -> Any:
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), *args],
                       env={**node.env, "ZLAYER_NO_AUTOSTART": "1"}, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def test_every_listing_prints_whole_json(daemon_live: LiveNode, daemon_live_names: list[str]) -> None:
    node, name = daemon_live, unique("out")
    daemon_live_names.append(name)
    node.deploy(spec(name))
    node.expect(name)
    run = node.api("POST", "/api/v1/jobs/once/trigger", {"deployment": name})
    node.wait_for(lambda: node.api("GET", f"/api/v1/jobs/{run['execution_id']}/status")["status"] == "completed",
                  30, "the job")  # fmt: skip
    web = node.containers(name, "web")[0]

    for flag in ("--output", "-o", "--format"):
        ps = zl(node, "ps", "--deployment", name, flag, "json")
        services = {s["name"]: s for s in ps["services"]}
        assert set(services) == {"web", "once", "tick"} and services["web"]["created_at"]
        assert [c["id"] for c in ps["containers"]] == [web["id"]]
    assert zl(node, "ps", "-c", "--deployment", name, "-o", "json")["containers"][0] == web

    st = zl(node, "status", name, "--output", "json")
    assert st["daemon"]["running"] is True and st["daemon"]["pid"] == node.proc.pid  # type: ignore[union-attr]
    [dep] = st["deployments"]
    assert dep["name"] == name and [c["id"] for c in dep["containers"]] == [web["id"]]

    listed = {c["id"]: c for c in zl(node, "container", "ls", "--output", "json")}
    assert listed[web["id"]] == web
    stats = zl(node, "container", "stats", web["id"], "--output", "json")
    assert stats["id"] == web["id"] and isinstance(stats["memory_bytes"], int) and stats["memory_bytes"] > 0

    images = {i["reference"]: i for i in zl(node, "image", "ls", "--output", "json")}
    img = images["docker.io/zlayer-svc/httpd:v1"]
    assert img["id"].startswith("sha256:") and len(img["id"]) == 71  # the whole id; the table shows 12 hex digits
    assert isinstance(img["size"], int) and img["size"] > 0  # bytes, not "1.2MB"

    jobs = {j["name"]: j for j in zl(node, "job", "ls", "--output", "json") if j["deployment"] == name}
    assert jobs["once"]["type"] == "job" and jobs["once"]["last"]["id"] == run["execution_id"]
    assert jobs["tick"]["schedule"] == "0 0 0 1 1 *"
    execs = zl(node, "job", "status", "once", "--output", "json")
    assert [e["id"] for e in execs] == [run["execution_id"]] and execs[0]["exit_code"] == 0
    one = zl(node, "job", "status", run["execution_id"], "--output", "json")
    assert one["id"] == run["execution_id"] and one["status"] == "completed"
    crons = {c["name"]: c for c in zl(node, "job", "cron", "ls", "--output", "json")}
    assert crons["tick"]["schedule"] == "0 0 0 1 1 *" and crons["tick"]["next_run"]
    cron = zl(node, "job", "cron", "status", "tick", "--deployment", name, "--output", "json")
    assert cron["name"] == "tick" and cron["executions"] == []

    minted = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), "token", "create",
                             "--quiet", "-s", "ci", "-r", "reader"], env=node.env, capture_output=True, text=True,
                            timeout=60).stdout.strip()  # fmt: skip
    claims = zl(node, "token", "decode", minted, "--output", "json")
    assert claims["sub"] == "ci" and claims["roles"] == ["reader"] and isinstance(claims["exp"], int)
    assert zl(node, "token", "decode", minted, "--json") == claims  # ZLayer's flag stays

    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), "ps", "--deployment", name,
                        "-o", "yaml"], env=node.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert yaml.safe_load(r.stdout)["containers"][0]["id"] == web["id"]
