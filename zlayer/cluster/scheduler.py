"""The leader's scheduler: on every change of deployments or nodes, place again and record what changed.

It reads the deployments and their wanted replica counts from the :class:`~zlayer.state.Store`, the nodes and the
current assignments from the cluster's state (:class:`ClusterState`: etcd in a cluster), calls the pure
:func:`~zlayer.cluster.placement.place`, and writes back only the services whose assignments changed, in one call.
A service that cannot be placed whole stays ``pending`` with ``unschedulable: <why>`` as its status message (shown
by ``zlayer status``) and one ``unschedulable`` event per new reason; the message goes once it fits again. It is
written before the assignments change, so a node that finds a service placed nowhere knows why.

Changes arrive through :meth:`Scheduler.changed` (the cluster's watches call it); a burst of them is one pass, and a
pass also runs every ``resync`` seconds in case a change was missed. Only the leader places: on a follower the
loop waits. A pass that fails (the store or etcd unreachable) is logged in one line and retried with the next change
or resync; the loop never dies from it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from pydantic import ValidationError

from zlayer.cluster.placement import Placement, ServiceKey, place
from zlayer.cluster.view import Assignment, ClusterView, Node
from zlayer.errors import ZLayerError
from zlayer.spec.models import DeploymentSpec
from zlayer.state import Store

log = logging.getLogger("zlayer.cluster")

UNSCHEDULABLE = "unschedulable: "


class ClusterState(Protocol):
    """What the scheduler reads and writes of the cluster's replicated state."""

    async def nodes(self) -> Sequence[Node]: ...

    async def assignments(self) -> Sequence[Assignment]: ...

    async def put_assignments(self, changes: Mapping[ServiceKey, Sequence[Assignment]]) -> None:
        """Replace the assignments of each service in ``changes`` (an empty sequence removes them), all at once."""
        ...


class Scheduler:
    def __init__(
        self,
        store: Store,
        cluster: ClusterState,
        is_leader: Callable[[], bool | Awaitable[bool]] = lambda: True,
        settle: float = 0.05,
        resync: float = 30.0,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.is_leader = is_leader
        self.settle = settle
        self.resync = resync
        self.last: Placement | None = None
        self._wake = asyncio.Event()
        self._specs: dict[str, tuple[int, DeploymentSpec]] = {}  # parsed once per revision

    def changed(self) -> None:
        """Something placement depends on changed (a deployment, a scale, a node's status, labels or resources)."""
        self._wake.set()

    async def run(self) -> None:
        """Place on every change (and every ``resync`` seconds) while this node leads, until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.resync)
            except TimeoutError:
                pass
            await asyncio.sleep(self.settle)  # a burst of changes (a node's death moves many things) is one pass
            self._wake.clear()
            try:
                leads = self.is_leader()
                if inspect.isawaitable(leads):
                    leads = await leads
                if not leads:
                    continue
                await self.reconcile()
            except (ZLayerError, OSError) as e:
                log.warning("placement pass failed, retried with the next change: %s", e)

    async def _deployments(self) -> tuple[dict[str, DeploymentSpec], dict[ServiceKey, int], set[str], set[str]]:
        specs: dict[str, DeploymentSpec] = {}
        desired: dict[ServiceKey, int] = {}
        unreadable: set[str] = set()
        started: set[str] = set()
        for rec in await self.store.list_deployments():
            if rec.status == "stopped":  # on its way out: its replicas are being removed
                continue
            if rec.revision > 1 or rec.status not in ("pending", "deploying"):
                started.add(rec.name)  # it has run: what fits of it is placed, never held back whole
            cached = self._specs.get(rec.name)
            if cached is not None and cached[0] == rec.revision:
                spec = cached[1]
            else:
                try:
                    spec = DeploymentSpec.model_validate(rec.spec)
                except ValidationError as e:
                    # never expected (the API stored it validated); its replicas stay where they are
                    log.warning("deployment %s: its stored spec does not read back, not placed: %s", rec.name, e)
                    unreadable.add(rec.name)
                    continue
                self._specs[rec.name] = (rec.revision, spec)
            specs[rec.name] = spec
            for svc in await self.store.list_services(rec.name):
                desired[(rec.name, svc.name)] = svc.desired_replicas
        for gone in set(self._specs) - set(specs) - unreadable:
            del self._specs[gone]
        return specs, desired, unreadable, started

    async def reconcile(self) -> Placement:
        """One pass: place, write the services whose assignments changed, and say which cannot be placed."""
        # side by side: a deploy waits for this pass, and each read is a round trip to etcd's quorum
        (specs, desired, unreadable, started), nodes, assigned = await asyncio.gather(
            self._deployments(), self.cluster.nodes(), self.cluster.assignments()
        )
        current = [a for a in assigned if a.deployment not in unreadable]
        started |= {a.deployment for a in current}
        result = place(ClusterView(nodes=tuple(nodes), assignments=tuple(current)), specs, desired, started)

        before: dict[ServiceKey, list[Assignment]] = {}
        for a in sorted(current, key=lambda a: a.key):
            before.setdefault((a.deployment, a.service), []).append(a)
        after: dict[ServiceKey, list[Assignment]] = {}
        for a in result.assignments:
            after.setdefault((a.deployment, a.service), []).append(a)
        changes = {
            k: after.get(k, []) for k in sorted(set(before) | set(after)) if before.get(k, []) != after.get(k, [])
        }
        # why a service waits is said before its assignments change: a node that finds a service it runs placed
        # nowhere any more reads there that no node may take it (it stops its replicas) rather than "not placed yet"
        problems = {(u.deployment, u.service): u for u in result.unschedulable}
        for dname in specs:
            for svc in await self.store.list_services(dname):
                u = problems.get((dname, svc.name))
                if u is not None:
                    message = str(u)
                    if svc.status_message != message:
                        await self.store.set_service_status(dname, svc.name, "pending", message)
                        await self.store.add_event(dname, "unschedulable", f"{svc.name}: {message}")
                elif svc.status_message.startswith(UNSCHEDULABLE):
                    await self.store.set_service_status(dname, svc.name, svc.status, "")
                    await self.store.add_event(dname, "scheduled", f"{svc.name}: every replica has a node")
        if changes:
            await self.cluster.put_assignments(changes)
            log.info("placement: %d services changed", len(changes))
        self.last = result
        return result


__all__ = ["UNSCHEDULABLE", "ClusterState", "Scheduler"]
