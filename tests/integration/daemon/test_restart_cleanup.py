"""A daemon killed (SIGKILL) while a replica dies behind its back: the restarted daemon re-adopts the live replica
(same process), replaces the dead one, and holds exactly one address lease per running replica afterwards."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_node import Node, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

HTTPD = "exec /bin/busybox httpd -f -p 8080 -h /www"


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path)
    try:
        node.setup()
        yield node
    finally:
        node.teardown()


def leases(node: Node) -> dict[str, str]:
    return dict(json.loads((node.data / "agent_ipam.json").read_text())["leases"])


def test_a_replica_that_died_while_the_daemon_was_down_is_replaced_and_released(own_node: Node) -> None:
    node = own_node
    name = unique("rst")
    node.deploy(f"""version: v1
deployment: {name}
services:
  web:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{HTTPD!r}]}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 2}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {{type: tcp, port: 8080}}}}
""")
    node.expect(name)
    before = {c["id"]: c for c in node.containers(name, "web")}
    assert len(before) == 2 and len(leases(node)) == 2
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    victim = before["web-rep-2"]
    os.kill(victim["pid"], signal.SIGKILL)  # the replica dies while nobody watches
    node.wait_for(lambda: not Path(f"/proc/{victim['pid']}").exists(), 10, "the replica's process gone")
    (node.data / "daemon.json").unlink()  # left behind by the killed daemon; start() waits for the new one's
    node.start()
    after = node.wait_for(
        lambda: (
            (cs := node.containers(name, "web"))
            and sum(c["state"] == "running" and c["health"]["status"] == "healthy" for c in cs) == 2
            and victim["pid"] not in [c["pid"] for c in cs]
            and cs
        ),
        60,
        "two healthy replicas after the restart",
    )
    survivor = next(c for c in after if c["id"] == "web-rep-1")
    assert survivor["pid"] == before["web-rep-1"]["pid"], "the live replica was re-adopted, not restarted"
    assert len(after) == 2 and all(c["pid"] != victim["pid"] for c in after), after
    held = leases(node)
    assert sorted(held) == sorted(c["id"] for c in after), held  # no lease kept for the dead replica
    assert len(set(held.values())) == 2
