"""The leader's scheduler over the real SQLite store: it places on each change, writes only what changed, and tells
the user which service cannot be placed and why — then stops saying so once it fits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import pytest

from zlayer.cluster.placement import ServiceKey
from zlayer.cluster.scheduler import Scheduler
from zlayer.cluster.view import Assignment, Node, NodeResources
from zlayer.spec.loader import parse_spec
from zlayer.state import ServiceRecord, SqliteStore

GI = 1 << 30


class MemoryCluster:
    """The cluster's state held in memory: the ClusterState protocol as etcd would answer it."""

    def __init__(self, nodes: list[Node]) -> None:
        self._nodes = {n.id: n for n in nodes}
        self._assigned: dict[ServiceKey, list[Assignment]] = {}
        self.writes: list[dict[ServiceKey, list[Assignment]]] = []
        self.fail: Exception | None = None
        self.written = asyncio.Event()

    async def nodes(self) -> Sequence[Node]:
        if self.fail is not None:
            raise self.fail
        return list(self._nodes.values())

    async def assignments(self) -> Sequence[Assignment]:
        return [a for v in self._assigned.values() for a in v]

    async def put_assignments(self, changes: Mapping[ServiceKey, Sequence[Assignment]]) -> None:
        for k, v in changes.items():
            if v:
                self._assigned[k] = list(v)
            else:
                self._assigned.pop(k, None)
        self.writes.append({k: list(v) for k, v in changes.items()})
        self.written.set()

    def set_node(self, node: Node) -> None:
        self._nodes[node.id] = node

    def where(self, deployment: str, service: str) -> dict[int, str]:
        return {a.replica: a.node_id for a in self._assigned.get((deployment, service), [])}


def node(nid: str, status: str = "ready", cpu: float = 2) -> Node:
    return Node(
        id=nid,
        advertise_addr="127.0.0.1",
        status=status,  # type: ignore[arg-type]
        resources=NodeResources(cpu_cores=cpu, memory_bytes=4 * GI),
    )


SPEC = """
version: v1
deployment: {name}
services:
  web:
    image: {{name: busybox}}
    resources: {{cpu: 0.5}}
    scale: {{mode: fixed, replicas: {web}}}
  db:
    image: {{name: busybox}}
    node_mode: dedicated
    scale: {{mode: fixed, replicas: {db}}}
"""


async def deploy(store: SqliteStore, name: str, web: int = 3, db: int = 1) -> None:
    spec = parse_spec(SPEC.format(name=name, web=web, db=db))
    data = spec.model_dump(mode="json", exclude_none=True)
    services = [ServiceRecord(name, s, data["services"][s], svc.initial_replicas) for s, svc in spec.services.items()]
    await store.put_deployment(name, SPEC, data, services)


def run(tmp_path: Path, body: Callable[[SqliteStore], Awaitable[None]]) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "state.db")
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())


def test_reconcile_places_writes_changes_only_and_explains(tmp_path: Path) -> None:
    async def body(store: SqliteStore) -> None:
        cluster = MemoryCluster([node("a"), node("b")])
        sched = Scheduler(store, cluster)
        await deploy(store, "shop", web=3, db=3)
        p = await sched.reconcile()
        # db wants 3 dedicated replicas on 2 nodes: shop stays pending with nothing of it started half-way, and
        # the reason in each service's status and in the events
        assert await cluster.assignments() == [] and cluster.writes == []
        db, web = await store.get_service("shop", "db"), await store.get_service("shop", "web")
        assert db is not None and web is not None and db.status == web.status == "pending"
        assert db.status_message == (
            "unschedulable: 1 of 3 replicas of db fit no node; of 2 nodes: 2 already run a replica of db "
            "(node_mode dedicated) (deployment shop starts whole or not at all)"
        )
        assert web.status_message == (
            "unschedulable: 3 of 3 replicas of web wait for db: deployment shop starts whole or not at all"
        )
        assert p.reason("shop", "db") is not None
        events = [(e.kind, e.message) for e in await store.list_events("shop")]
        assert ("unschedulable", f"db: {db.status_message}") in events
        # nothing changed: nothing written, no second event
        await sched.reconcile()
        assert cluster.writes == []
        assert [e.kind for e in await store.list_events("shop")].count("unschedulable") == 2  # db's and web's
        # a third node: all of shop fits, the messages go
        cluster.set_node(node("c"))
        await sched.reconcile()
        assert sorted(cluster.writes[-1]) == [("shop", "db"), ("shop", "web")]
        assert sorted(cluster.where("shop", "db").values()) == ["a", "b", "c"]
        assert sorted(cluster.where("shop", "web").values()) == ["a", "b", "c"]
        db = await store.get_service("shop", "db")
        assert db is not None and db.status_message == ""
        assert ("scheduled", "db: every replica has a node") in [
            (e.kind, e.message) for e in await store.list_events("shop")
        ]
        # it runs now: a node gone moves only what ran there, and what does not fit waits alone
        web_before = cluster.where("shop", "web")
        cluster.set_node(node("c", status="dead"))
        await sched.reconcile()
        assert list(cluster.writes[-1]) == [("shop", "db"), ("shop", "web")]
        web_after = cluster.where("shop", "web")
        assert all(web_after[r] == n for r, n in web_before.items() if n != "c")
        assert sorted(cluster.where("shop", "db").values()) == ["a", "b"]  # the third has nowhere to go
        db = await store.get_service("shop", "db")
        assert db is not None and db.status_message.startswith("unschedulable: 1 of 3 replicas of db fit no node")
        web = await store.get_service("shop", "web")
        assert web is not None and web.status_message == ""
        cluster.set_node(node("c"))
        await sched.reconcile()
        # scale down drops the highest replica; a deleted deployment loses its assignments
        await store.set_service_desired("shop", "web", 1)
        await sched.reconcile()
        assert cluster.where("shop", "web") == {1: web_before[1]}
        await store.delete_deployment("shop")
        await sched.reconcile()
        assert await cluster.assignments() == []

    run(tmp_path, body)


def test_loop_follows_changes_only_as_leader_and_survives_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(store: SqliteStore) -> None:
        cluster = MemoryCluster([node("a"), node("b"), node("c")])
        leader = False

        async def is_leader() -> bool:  # membership asks etcd who leads
            return leader

        sched = Scheduler(store, cluster, is_leader=is_leader, settle=0.01)
        task = asyncio.create_task(sched.run())
        try:
            await deploy(store, "shop", web=3, db=1)
            sched.changed()
            await asyncio.sleep(0.1)
            assert cluster.writes == []  # a follower does not place
            leader = True
            sched.changed()
            await asyncio.wait_for(cluster.written.wait(), 5)
            assert sorted(cluster.where("shop", "web").values()) == ["a", "b", "c"]
            # the node under web's replica 1 dies: that replica moves, the others stay
            before = cluster.where("shop", "web")
            dead = before[1]
            cluster.written.clear()
            cluster.set_node(node(dead, status="dead"))
            sched.changed()
            await asyncio.wait_for(cluster.written.wait(), 5)
            after = cluster.where("shop", "web")
            assert after[1] != dead and after[2] == before[2] and after[3] == before[3]
            # the cluster's state unreachable: one line in the log, and the loop goes on
            cluster.fail = OSError("etcd: connection refused")
            with caplog.at_level(logging.WARNING, logger="zlayer.cluster"):
                sched.changed()
                while "etcd: connection refused" not in caplog.text:
                    await asyncio.sleep(0.01)
            cluster.fail = None
            cluster.written.clear()
            await store.set_service_desired("shop", "web", 4)
            sched.changed()
            await asyncio.wait_for(cluster.written.wait(), 5)
            assert len(cluster.where("shop", "web")) == 4
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(tmp_path, body)
