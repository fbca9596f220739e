"""``depends`` and init actions on a real node.

depends: a service waits for its own dependencies' condition (``started``: a replica runs; ``healthy``: one passed
its health check; ``ready``: one is a healthy backend behind the proxy), and a timeout fails it, warns or continues as
``on_timeout`` says. Init actions: ``init.wait_tcp`` and ``init.wait_http`` hold the replica back until the address
answers, ``init.run`` steps run inside the replica in spec order, and a failing, timed-out or hanging step fails the
replica with a message naming the step and why.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.fixtures.daemon_node import Node, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

HTTPD = "exec /bin/busybox httpd -f -p 8080 -h /www"


def svc(name: str, extra: str = "", *, health: str = "{type: tcp, port: 8080}", scale: str = "") -> str:
    return f"""  {name}:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{HTTPD!r}]}}
    stop_grace_period: 1s
    scale: {scale or "{mode: fixed, replicas: 1}"}
    health: {{start_grace: 0s, interval: 500ms, timeout: 1s, retries: 2, check: {health}}}
{extra}"""


def spec(name: str, *services: str) -> str:
    return f"version: v1\ndeployment: {name}\nservices:\n" + "".join(services)


def seq_of(events: list[dict[str, Any]], kind: str, prefix: str) -> int:
    hits = [e["seq"] for e in events if e["kind"] == kind and e["message"].startswith(prefix)]
    assert hits, f"no {kind} event for {prefix}: {events}"
    return hits[0]


def containers(node: Node, name: str, service: str) -> list[dict[str, Any]]:
    return node.containers(name, service)


def test_depends_conditions_wait_for_each_own_dependency(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name, port = unique("deps"), node.free_port()
    daemon_deployments.append(name)
    api_ep = f"    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]\n"
    node.deploy(
        spec(
            name,
            # healthy only once the test creates /tmp/ok inside it
            svc("db", health='{type: command, command: "test -f /tmp/ok"}'),
            svc("api", api_ep + "    depends: [{service: db, condition: healthy, timeout: 60s}]\n"),
            svc("side", "    depends: [{service: db, condition: started, timeout: 60s}]\n"),
            svc("front", "    depends: [{service: api, condition: ready, timeout: 60s}]\n"),
        )
    )
    # `side` only needs db started: it comes up although db is not healthy
    node.wait_for(lambda: [c for c in containers(node, name, "side") if c["state"] == "running"], 30, "side running")
    time.sleep(1.5)
    assert containers(node, name, "api") == [] and containers(node, name, "front") == []
    assert node.deployment(name)["status"] == "deploying"
    (db,) = containers(node, name, "db")
    assert db["state"] == "running" and db["health"]["status"] != "healthy"

    touch = {"command": ["/bin/sh", "-c", "touch /tmp/ok"]}
    r = node.api("POST", f"/api/v1/deployments/{name}/services/db/exec", touch)
    assert r["exit_code"] == 0
    node.expect(name)
    ev = node.events(name)
    db_healthy = seq_of(ev, "health", "db-rep-1: healthy")
    assert seq_of(ev, "replica_started", "side-rep-1") < db_healthy < seq_of(ev, "replica_started", "api-rep-1")
    assert seq_of(ev, "health", "api-rep-1: healthy") < seq_of(ev, "replica_started", "front-rep-1")
    assert node.get(port)[0] == 200


def test_depends_timeouts_fail_warn_or_continue(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name = unique("deptmo")
    daemon_deployments.append(name)
    t0 = time.monotonic()
    node.deploy(
        spec(
            name,
            svc("gone", scale="{mode: manual}"),  # never has a replica
            svc("strict", "    depends: [{service: gone, condition: healthy, timeout: 2s}]\n"),
            svc("loose", "    depends: [{service: gone, condition: started, timeout: 2s, on_timeout: warn}]\n"),
            svc("quiet", "    depends: [{service: gone, condition: ready, timeout: 2s, on_timeout: continue}]\n"),
            # a dependency whose own deploy failed (its image is missing) fails its dependents at once
            svc("broken").replace('"zlayer-svc/httpd:v1"', '"zlayer-svc/absent:v9"'),
            svc("needy", "    depends: [{service: broken, condition: healthy, timeout: 120s}]\n"),
            svc("tolerant", "    depends: [{service: broken, timeout: 120s, on_timeout: continue}]\n"),
        )
    )
    d = node.expect(name, "failed")
    assert 2.0 <= time.monotonic() - t0 < 60
    assert "needy: services.needy.depends: dependency 'broken' failed: " in d["status_message"], d
    assert "tolerant" not in d["status_message"] and len(node.containers(name, "tolerant")) == 1
    assert "strict: services.strict.depends: dependency 'gone' not healthy after 2s" in d["status_message"], d
    assert "loose:" not in d["status_message"] and "quiet:" not in d["status_message"]
    health = {h["name"]: h for h in d["service_health"]}
    assert health["strict"]["health"] == "failed" and health["strict"]["replicas_running"] == 0
    assert containers(node, name, "strict") == []
    for s in ("loose", "quiet"):
        assert health[s]["replicas_running"] == 1, d
    warned = [e["message"] for e in node.events(name) if e["kind"] == "depends_timeout"]
    assert warned == ["loose: dependency 'gone' not started after 2s (continuing)"], warned


@contextmanager
def listen_later(node: Node, port: int, delay: float) -> Iterator[dict[str, float]]:
    """Open a TCP listener on 127.0.0.1:port inside the node after ``delay`` seconds (accepting until the end)."""
    info: dict[str, float] = {}
    stop = threading.Event()

    def serve() -> None:
        from tests.fixtures.daemon_node import _enter_netns

        _enter_netns(node.ns)
        stop.wait(delay)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(16)
            s.settimeout(0.2)
            info["at"] = time.time()
            while not stop.is_set():
                try:
                    s.accept()[0].close()
                except TimeoutError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield info
    finally:
        stop.set()
        t.join(5)


def test_init_actions_wait_then_run_in_order(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name, tport, lport = unique("init"), node.free_port(), node.free_port()
    daemon_deployments.append(name)
    target_ep = f"    endpoints: [{{name: http, protocol: http, port: {tport}, target_port: 8080, expose: public}}]\n"
    steps = f"""    init:
      steps:
        - {{id: wait-port, uses: init.wait_tcp, with: {{host: 127.0.0.1, port: {lport}, timeout: 30}}}}
        - {{id: wait-page, uses: init.wait_http, with: {{url: "http://127.0.0.1:{tport}/", timeout: 30}}}}
        - {{id: first, uses: init.run, with: {{command: "echo first >> /tmp/init.log"}}}}
        - {{id: second, uses: init.run, with: {{command: "echo second >> /tmp/init.log"}}}}
        - {{id: optional, uses: init.run, with: {{command: "exit 9"}}, on_failure: warn}}
        - {{id: silent, uses: init.run, with: {{command: "exit 8"}}, on_failure: continue}}
"""
    with listen_later(node, lport, 2.5) as opened:
        node.deploy(spec(name, svc("target", target_ep), svc("worker", steps)))
        time.sleep(1.5)
        held = containers(node, name, "worker")  # held back by wait_tcp: recorded, not started
        assert all(c["state"] == "pending" and not c["pid"] for c in held), held
        node.expect(name)
    ev = node.events(name)
    started = next(e for e in ev if e["kind"] == "replica_started" and e["message"].startswith("worker-rep-1"))
    assert started["timestamp"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(opened["at"]))
    assert seq_of(ev, "health", "target-rep-1: healthy") < started["seq"]  # wait_http needed target behind the proxy
    r = node.api("POST", f"/api/v1/deployments/{name}/services/worker/exec", {"command": ["cat", "/tmp/init.log"]})
    assert r["stdout"] == "first\nsecond\n"  # run steps ran inside the replica, in spec order
    warnings = [e["message"] for e in ev if e["kind"] == "init_warning"]
    assert len(warnings) == 1 and "init step 'optional' (init.run): exited 9" in warnings[0], warnings
    (worker,) = containers(node, name, "worker")
    assert worker["state"] == "running" and worker["health"]["status"] == "healthy"


def test_failing_init_steps_fail_the_replica_with_the_step_and_reason(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    name, dead = unique("initbad"), node.free_port()
    daemon_deployments.append(name)
    node.deploy(
        spec(
            name,
            svc(
                "late",
                f"""    init:
      steps:
        - {{id: db-port, uses: init.wait_tcp, with: {{host: 127.0.0.1, port: {dead}, timeout: 2}}}}
""",
            ),
            svc(
                "broken",
                """    init:
      steps:
        - {id: migrate, uses: init.run, with: {command: "echo migration failed >&2; exit 4"}}
""",
            ),
            svc(
                "slow",
                """    init:
      steps:
        - {id: warmup, uses: init.run, with: {command: "sleep 30"}, timeout: 1s}
""",
            ),
            svc(
                "typo",
                """    init:
      steps:
        - {id: nope, uses: init.exec, with: {command: "true"}}
""",
            ),
        )
    )
    d = node.expect(name, "failed")
    msg = d["status_message"]
    expected = {
        "late": f"init step 'db-port' (init.wait_tcp): 127.0.0.1:{dead} not ready after 2s: tcp 127.0.0.1:{dead}:",
        "broken": "init step 'migrate' (init.run): exited 4: migration failed",
        "slow": "init step 'warmup' (init.run) timed out after 1s",
        "typo": "init step 'nope' (init.exec): unknown action 'init.exec'",
    }
    for service, text in expected.items():
        assert f"{service}: services.{service}.init: {text}" in msg, (service, msg)
        (rec,) = containers(node, name, service)
        assert rec["state"] == "failed" and text in rec["last_error"], rec
    # nothing of the failed replicas keeps running
    ps = node.api("GET", "/api/v1/containers")
    assert not [c for c in ps if c["deployment"] == name and c["state"] == "running"]
    r = node.zl("status")
    assert r.returncode == 0 and "init step 'migrate' (init.run): exited 4: migration failed" in r.stdout, r.stdout
