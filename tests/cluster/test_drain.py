"""Draining a node and losing all but one, on a cluster of three hosts (network namespaces on a bridge,
tests/fixtures/netns_cluster.py), as a user sees it: ``zlayer node drain 2`` moves node 2's replicas to nodes 1 and
3 while the service goes on answering, says what it moved, and leaves a replica only node 2 may run pending with the
reason; ``--undo`` makes node 2 ready again. Then the two other hosts lose power and ``force-leader`` on the survivor
keeps its replicas running and places the dead nodes' share on it. Timings: heartbeat 0.5 s, dead after 4 s."""

from __future__ import annotations

import collections
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.netns_cluster import (
    Host,
    NetnsCluster,
    answers,
    healthy,
    kill9,
    netns_hosts,
    placed,
    wait_for,
    who_spec,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

PORT = 8090  # the port of the spread deployment's 6 replicas
SOLO = 8092  # the port of a service with one replica


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    with netns_hosts(tmp_path_factory) as c:
        c.form()
        yield c


def _on(host: Host, deployment: str) -> dict[str, str]:
    """``{container: node}`` of a deployment's running replicas, as ``zlayer ps`` on ``host`` says."""
    cts = host.json("ps", "--deployment", deployment)["containers"]
    return {c["id"]: str(c.get("node")) for c in cts if c["state"] == "running"}


def _pids(host: Host) -> dict[str, int]:
    """``{container: pid}`` of the deployment's replicas on ``host``'s own node."""
    me = str(host.index)
    return {c["id"]: c["pid"] for c in host.json("ps", "-c", "--deployment", "spread")["containers"]
            if str(c.get("node")) == me and c["state"] == "running"}  # fmt: skip


class _Traffic:
    """Requests sent one after another through some nodes' proxies to some ports while something happens; what
    failed."""

    def __init__(self, hosts: list[Host], ports: list[int]) -> None:
        self.hosts = hosts
        self.ports = ports
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for h in self.hosts:
                for port in self.ports:
                    r = subprocess.run(["ip", "netns", "exec", h.ns, "curl", "-sSf", "--max-time", "5",
                                        f"http://{h.addr}:{port}/who"], capture_output=True, text=True)  # fmt: skip
                    self.sent += 1
                    if r.returncode != 0:
                        at = time.monotonic() - self.t0
                        self.failed.append(f"{at:.2f}s host {h.index} port {port}: {r.stderr.strip()}")

    def __enter__(self) -> _Traffic:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_drain_moves_the_replicas_away_while_the_service_answers_and_undo_makes_it_ready(
    cluster: NetnsCluster,
) -> None:
    h1, h2, h3 = cluster.hosts
    spec = h1.root / "spread.zlayer.yml"
    spec.write_text(who_spec("spread", 6, PORT))
    assert "6/6" in h1.ok("deploy", str(spec), timeout=180)
    before = wait_for(lambda: placed(h3, "spread", 6, {"1", "2", "3"}), 60, "6 healthy replicas on the three nodes")
    assert sorted(collections.Counter(before.values()).values()) == [2, 2, 2], before
    # a service only node 2 may run: drained, it can go nowhere else; one whose only replica prefers node 2: it
    # moves, and answers all along only if the old replica waits for the new one
    h1.ok("node", "label", "2", "disk=two")
    for name, port, selector in (("pinned", 8091, "labels"), ("solo", SOLO, "prefer_labels")):
        # a service name of its own: a replica's container id is its service's name and number
        text = who_spec(name, 1, port).replace("  web:\n", f"  {name}:\n")
        (h1.root / f"{name}.zlayer.yml").write_text(text + f"    node_selector: {{{selector}: {{disk: two}}}}\n")
        h1.ok("deploy", str(h1.root / f"{name}.zlayer.yml"), timeout=120)
        assert set(_on(h1, name).values()) == {"2"}
    for h in (h1, h3):  # the other nodes' proxies heard of it
        wait_for(lambda h=h: set(answers(h, SOLO, 2)) <= set(_on(h, "solo")), 30, f"solo through host {h.index}")

    with _Traffic([h1, h3], [PORT, SOLO]) as traffic:
        time.sleep(1)
        out = h3.ok("node", "drain", "2", timeout=60)
        got = wait_for(lambda: placed(h2, "spread", 6, {"1", "3"}), 90, "6 healthy replicas on nodes 1 and 3")
        wait_for(lambda: (n := set(_on(h2, "solo").values())) in ({"1"}, {"3"}) and n, 60, "solo moved")
    assert "node 2: draining, 3 replicas moved, 1 pending" in out, out
    assert out.count("moved   spread/web replica") == 2 and "moved   solo/solo replica 1 to node" in out, out
    assert "pending pinned/pinned replica 1: unschedulable:" in out and "disk=two" in out, out

    assert traffic.sent and not traffic.failed, (traffic.sent, traffic.failed)  # it answered all along
    assert sorted(collections.Counter(got.values()).values()) == [3, 3], got
    assert {c: n for c, n in before.items() if n != "2"}.items() <= got.items()  # theirs never moved
    assert healthy(h1, "spread") == got and healthy(h3, "spread") == got
    status = h1.ok("status", "pinned")
    assert "unschedulable" in status and "draining" in status and "disk=two" in status, status
    assert not _on(h3, "pinned")  # node 2 stopped what no other node may run: pending, as kubectl drain leaves it
    for host in cluster.hosts:
        seen = answers(host, PORT, 12)
        assert set(seen) <= set(got), (host.index, seen)

    assert "ready" in h2.ok("node", "drain", "2", "--undo")
    assert {n["id"]: n["status"] for n in h3.json("node", "ls")}["2"] == "ready"
    # a new replica may go there again: the pinned one starts; what moved away stays where it runs
    wait_for(lambda: set(_on(h2, "pinned").values()) == {"2"}, 60, "the pinned replica back on node 2")
    assert healthy(h1, "spread") == got
    for name in ("pinned", "solo"):
        h1.ok("down", name, timeout=120)


def test_force_leader_keeps_the_survivors_replicas_and_places_the_dead_nodes_share_on_it(
    cluster: NetnsCluster,
) -> None:
    """Last in the module: it leaves a cluster of one."""
    h1, h2, h3 = cluster.hosts
    h1.ok("scale", "web", "8", "-d", "spread", timeout=120)  # node 2, ready again, takes the two new ones
    spread = wait_for(lambda: placed(h1, "spread", 8, {"1", "2", "3"}), 60, "8 healthy replicas")
    assert sorted(collections.Counter(spread.values()).values()) == [2, 3, 3], spread
    mine = _pids(h1)
    assert len(mine) == 3, mine
    kill9(h2, h3)  # both lose power at once
    out = h1.ok("node", "force-leader", "-y", timeout=120)
    assert "cluster of one" in out, out
    got = wait_for(lambda: placed(h1, "spread", 8, {"1"}), 90, "the 8 replicas healthy on node 1")
    now = _pids(h1)
    assert {c: now.get(c) for c in mine} == mine  # its own went on: the same containers, the same processes
    assert len(got) == 8
    seen = wait_for(lambda: (s := answers(h1, PORT, 16)) and set(s) <= set(got) and s, 30, "answers from node 1's 8")
    assert seen
