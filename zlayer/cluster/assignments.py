"""Where each replica runs, in etcd: the assignments the leader's scheduler writes and every node reads.

One key per service, ``<prefix><deployment>/<service>``, holding the JSON list of its assignments (replica number,
node, GPUs), so a service's replicas change together and a node finds its own work with one range read. This is the
assignments half of the scheduler's :class:`~zlayer.cluster.scheduler.ClusterState`; membership supplies the nodes.

A pass's changes go in as few transactions as etcd takes (``--max-txn-ops``, 128 by default): each service's key is
written whole, and a pass cut short is finished by the next, since placement is idempotent. ``guard`` gives the
comparisons every write must pass — the leader's election key at the revision it won — so a node that lost the
leadership cannot overwrite its successor's assignments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from zlayer.cluster.placement import ServiceKey
from zlayer.cluster.view import Assignment
from zlayer.state.etcd import EtcdClient, EtcdError, delete_op, put_op

PREFIX = "/zlayer/cluster/assignments/"  # beside membership's nodes/ and config under /zlayer/cluster/
TXN_OPS = 100  # below etcd's default --max-txn-ops (128), leaving room for the guard's comparisons


class EtcdAssignments:
    def __init__(
        self,
        client: EtcdClient,
        prefix: str = PREFIX,
        guard: Callable[[], Sequence[dict[str, Any]]] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.guard = guard

    def key(self, deployment: str, service: str) -> str:
        return f"{self.prefix}{deployment}/{service}"

    async def assignments(self) -> list[Assignment]:
        out: list[Assignment] = []
        for kv in await self.client.range(self.prefix):
            try:
                out.extend(Assignment.model_validate(a) for a in kv.json())
            except ValueError as e:  # written by something else than this module: say where, place it again
                raise EtcdError(f"assignments at {kv.key} do not read back: {e}", where=kv.key) from None
        return out

    async def on_node(self, node_id: str) -> list[Assignment]:
        """What ``node_id`` should run."""
        return [a for a in await self.assignments() if a.node_id == node_id]

    async def put_assignments(self, changes: Mapping[ServiceKey, Sequence[Assignment]]) -> None:
        ops = [
            put_op(self.key(d, s), [a.model_dump(mode="json") for a in v]) if v else delete_op(self.key(d, s))
            for (d, s), v in sorted(changes.items())
        ]
        for i in range(0, len(ops), TXN_OPS):
            compare = list(self.guard()) if self.guard is not None else []
            if not await self.client.txn(compare, ops[i : i + TXN_OPS]):
                raise EtcdError("assignments not written: this node no longer leads the cluster", where=self.prefix)


__all__ = ["PREFIX", "EtcdAssignments"]
