"""The autoscaler in a cluster: every node's share of a service's figures added up (CPU and memory averaged over
replicas wherever they run, requests summed over the nodes' proxies), and only the leader deciding on them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import pytest

from zlayer.agent.autoscale import FOLLOWER, Autoscaler, Decision, NodeSample, Sample, ScalableService, aggregate
from zlayer.spec.models import ServiceSpec


def test_cpu_and_memory_are_means_over_replicas_and_requests_add_up_over_nodes() -> None:
    # node a: 3 replicas at 10/20/30 % CPU, 300 req/s through its proxy; node b: 1 replica at 80 %, 20 req/s
    a = NodeSample(cpu_sum=60.0, cpu_n=3, memory_sum=90.0, memory_n=3, rps=300.0)
    b = NodeSample(cpu_sum=80.0, cpu_n=1, memory_sum=10.0, memory_n=1, rps=20.0)
    got = aggregate([a, b])
    assert got.cpu == pytest.approx(35.0)  # (10+20+30+80)/4, not the mean of the nodes' means (50)
    assert got.memory == pytest.approx(25.0)
    assert got.rps == pytest.approx(320.0)
    # a node without replicas still counts the requests its proxy took; one not measured yet adds nothing
    c = NodeSample(rps=None)
    d = NodeSample(rps=40.0)
    assert aggregate([c, d]) == Sample(cpu=None, memory=None, rps=40.0)
    assert aggregate([c]) == Sample()
    assert aggregate([a]) == Sample(cpu=20.0, memory=30.0, rps=300.0)  # one node: its own means


SPEC = ServiceSpec.model_validate(
    {
        "image": {"name": "x"},
        "scale": {"mode": "adaptive", "min": 1, "max": 3, "cooldown": "0s", "targets": {"rps": 10}},
    }
)


class Board:
    """What the nodes publish (etcd's role here) and which node leads."""

    def __init__(self) -> None:
        self.published: dict[str, Mapping[tuple[str, str], NodeSample]] = {}
        self.leader = "a"


class Node:
    def __init__(self, board: Board, name: str, rps: float) -> None:
        self.board, self.name, self.rps = board, name, rps
        self.scaled: list[Decision] = []
        self.replicas = 1
        self.autoscaler = Autoscaler(self._services, self, self._scale, self._event, 1.0, self)

    async def _services(self) -> list[ScalableService]:
        return [ScalableService("d", "web", SPEC, self.replicas)]

    async def measure(self, deployment: str, service: str, spec: ServiceSpec, metrics: Iterable[str]) -> NodeSample:
        return NodeSample(rps=self.rps)

    async def _scale(self, svc: ScalableService, d: Decision) -> None:
        self.scaled.append(d)

    async def _event(self, deployment: str, kind: str, message: str) -> None:
        pass

    def clustered(self) -> bool:
        return True

    async def share(
        self, samples: Mapping[tuple[str, str], NodeSample], max_age: float
    ) -> dict[tuple[str, str], list[NodeSample]] | None:
        self.board.published[self.name] = dict(samples)
        if self.board.leader != self.name:
            return None
        out: dict[tuple[str, str], list[NodeSample]] = {}
        for node, shares in self.board.published.items():
            for key, s in shares.items():
                if node != self.name:
                    out.setdefault(key, []).append(s)
        return out


def test_only_the_leader_decides_on_every_nodes_requests() -> None:
    async def go() -> None:
        board = Board()
        a, b = Node(board, "a", 6.0), Node(board, "b", 6.0)  # 6 req/s each: 12 in all, over the target of 10
        await b.autoscaler.evaluate()
        await a.autoscaler.evaluate()
        await asyncio.sleep(0)
        assert not b.scaled and b.autoscaler.status("d", "web", SPEC.scale)["reason"] == FOLLOWER  # type: ignore[arg-type]
        assert [d.target for d in a.scaled] == [2] and a.scaled[0].value == pytest.approx(12.0)
        board.leader = "b"  # leadership moves: b decides now, a only publishes
        await a.autoscaler.evaluate()
        await b.autoscaler.evaluate()
        await asyncio.sleep(0)
        assert [d.target for d in a.scaled] == [2] and [d.target for d in b.scaled] == [2]

    asyncio.run(go())


def test_a_count_set_through_another_node_restarts_the_leaders_cooldown() -> None:
    async def go() -> None:
        board = Board()
        a = Node(board, "a", 18.0)  # over the target at 1 replica (1 -> 2), within it at 2 and 3
        await a.autoscaler.evaluate()
        await asyncio.sleep(0)
        a.replicas = 2  # its own step: nothing said
        await a.autoscaler.evaluate()
        assert (a.autoscaler.state[("d", "web")].last_step or "").startswith("1 -> 2 (rps 18.0")
        a.replicas = 3  # `zlayer scale web 3` through another node
        await a.autoscaler.evaluate()
        assert a.autoscaler.state[("d", "web")].last_step == "-> 3 (set by hand)"

    asyncio.run(go())
