"""The leader's scheduler writing assignments to a real etcd (Debian's etcd-server, run as the daemon runs it):
what it places is what every node reads back, changes go in whole per service however many there are, and a node
that no longer leads cannot overwrite them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from zlayer.cluster.assignments import EtcdAssignments
from zlayer.cluster.etcd import EtcdProcess
from zlayer.cluster.scheduler import Scheduler
from zlayer.cluster.view import Node, NodeResources
from zlayer.spec.loader import parse_spec
from zlayer.state import ServiceRecord, SqliteStore
from zlayer.state.etcd import EtcdClient, EtcdError, mod_is, put_op

pytestmark = pytest.mark.peer


class EtcdCluster(EtcdAssignments):
    """ClusterState: these nodes (membership's part) and the assignments in etcd."""

    def __init__(self, client: EtcdClient, prefix: str, nodes: list[Node], **kw: object) -> None:
        super().__init__(client, prefix, **kw)  # type: ignore[arg-type]
        self._nodes = nodes

    async def nodes(self) -> Sequence[Node]:
        return self._nodes


def _nodes(n: int) -> list[Node]:
    return [
        Node(id=f"n{i}", advertise_addr="127.0.0.1", resources=NodeResources(cpu_cores=4, memory_bytes=8 << 30))
        for i in range(n)
    ]


async def _deploy(store: SqliteStore, name: str, services: int, replicas: int) -> None:
    body = "".join(
        f"  s{i}:\n    image: {{name: busybox}}\n    scale: {{mode: fixed, replicas: {replicas}}}\n"
        for i in range(services)
    )
    text = f"version: v1\ndeployment: {name}\nservices:\n{body}"
    spec = parse_spec(text)
    data = spec.model_dump(mode="json", exclude_none=True)
    recs = [ServiceRecord(name, s, data["services"][s], replicas) for s in spec.services]
    await store.put_deployment(name, text, data, recs)


def test_scheduler_writes_assignments_every_node_reads(etcd: EtcdProcess, tmp_path: Path) -> None:
    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        store = SqliteStore(tmp_path / "state.db")
        try:
            cluster = EtcdCluster(client, "/test/placement/", _nodes(3))
            sched = Scheduler(store, cluster)
            # 150 services of 2 replicas: more changes than one etcd transaction may hold (128 ops)
            await _deploy(store, "big", 150, 2)
            p = await sched.reconcile()
            assert len(p.assignments) == 300
            reader = EtcdAssignments(EtcdClient([etcd.member.client_url]), "/test/placement/")
            assert sorted(await reader.assignments(), key=lambda a: a.key) == list(p.assignments)
            mine = await reader.on_node("n1")
            assert mine and all(a.node_id == "n1" for a in mine)
            assert {a.service for a in mine} <= {f"s{i}" for i in range(150)}
            # the deployment goes: its keys go
            await store.delete_deployment("big")
            await sched.reconcile()
            assert await reader.assignments() == []
            await reader.client.close()
        finally:
            await store.close()
            await client.close()

    asyncio.run(go())


def test_a_node_that_no_longer_leads_cannot_write(etcd: EtcdProcess, tmp_path: Path) -> None:
    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        store = SqliteStore(tmp_path / "state.db")
        try:
            # won the election at the leader key's current revision; another node then takes the key over
            won = await client.put("/test/leader", "n0")
            cluster = EtcdCluster(client, "/test/guarded/", _nodes(2), guard=lambda: [mod_is("/test/leader", won)])
            sched = Scheduler(store, cluster)
            await _deploy(store, "app", 1, 2)
            await sched.reconcile()
            assert len(await cluster.assignments()) == 2
            await client.put("/test/leader", "n1")
            await store.set_service_desired("app", "s0", 3)
            with pytest.raises(EtcdError, match="no longer leads"):
                await sched.reconcile()
            assert len(await cluster.assignments()) == 2  # the successor's state stands
            # something not written by this module under the prefix: a clear error naming the key
            await client.txn([], [put_op("/test/guarded/app/s1", "not json")])
            with pytest.raises(EtcdError, match="/test/guarded/app/s1 do not read back"):
                await cluster.assignments()
        finally:
            await store.close()
            await client.close()

    asyncio.run(go())
