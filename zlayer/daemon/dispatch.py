"""Dispatch: how a node in a cluster takes part in running the cluster's deployments.

Wired by the daemon between its :class:`~zlayer.cluster.membership.ClusterNode` and its agent (which knows nothing of
the cluster, only the hooks it is given):

- **Placement** — every node runs the :class:`~zlayer.cluster.scheduler.Scheduler` loop; only the leader (its etcd
  member leads, and it holds the fencing key) places, on every change of deployments, services or nodes and every
  few seconds, writing the assignments under ``/zlayer/cluster/assignments/``. A node's death (the leader's monitor
  marks it ``dead``) is such a change: its replicas are placed again on the ready nodes.
- **Assignments** (:class:`~zlayer.agent.hooks.AssignmentHook`) — a node runs exactly the replicas assigned to it;
  a service not placed yet keeps what it runs here; a service scaled to 0, or that no node may take any more (it
  says ``unschedulable``), runs nothing. A replica moved to another node (its node drained, its labels changed)
  stops here once its replacement runs healthy there, so the service keeps answering while it moves.
- **Convergence** — one watch of ``/zlayer/cluster/`` converges this node on each change: a deployment's new
  revision (deployed through any node), a service's new assignments, a deployment removed elsewhere.
- **Down** — a deployment removed through this node is gone once every other live node said its share is down
  (``/zlayer/cluster/down/<deployment>/<node>``, with what could not be removed); each node says so for its own.
- **Traffic** (:class:`~zlayer.agent.hooks.ClusterTrafficHook`) — each node reports its healthy replicas of each
  fronted service under ``/zlayer/cluster/endpoints/<deployment>/<service>/<node>``: its node address and the host
  port, and the replica's overlay address and its own port. Every node's proxy balances over its own replicas and
  those of the other nodes that are alive, reaching those by overlay address (inside WireGuard: between machines
  only the WireGuard port need be open) when both nodes have the overlay, else by node address and host port; a
  node whose overlay peer is unhealthy (no handshake for ``serve --overlay-peer-timeout`` s) gets nothing until it
  handshakes again.
- **Autoscaling** (:class:`~zlayer.agent.autoscale.ClusterMetrics`) — each node's autoscaler publishes its share of
  every adaptive service's figures (its replicas' CPU and memory, its proxy's requests per second) in one key,
  ``/zlayer/autoscale/<node>``, each round (deleted when it has none); only the leader reads the live nodes' fresh
  shares, decides and writes the new count to the cluster's state, which the scheduler then places.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from zlayer.agent.autoscale import NodeSample
from zlayer.agent.hooks import Backend
from zlayer.cluster.assignments import PREFIX as ASSIGNMENTS
from zlayer.cluster.membership import ROOT, STATE, ClusterNode
from zlayer.cluster.placement import ServiceKey
from zlayer.cluster.scheduler import UNSCHEDULABLE, Scheduler
from zlayer.cluster.view import Assignment, Node
from zlayer.errors import ZLayerError
from zlayer.state.etcd import EtcdClient, exists, put_op

if TYPE_CHECKING:
    from zlayer.agent import ServiceManager
    from zlayer.overlay.cluster import OverlayNode
    from zlayer.spec.models import DeploymentSpec
    from zlayer.state import Store

log = logging.getLogger("zlayer.cluster")

ENDPOINTS = ROOT + "endpoints/"
DOWN = ROOT + "down/"  # <deployment>/<node>: that node's share of the deployment being removed is down (or why not)
NODES = ROOT + "nodes/"
ALIVE = ROOT + "alive/"
# Outside ROOT: the nodes' watch of ROOT would otherwise wake every node for every node's autoscaler round.
METRICS = "/zlayer/autoscale/"
SETTLE_TIMEOUT = 300.0  # a deploy through this node waits this long at most for the other nodes' replicas
SETTLE_POLL = 2.0  # ... looking again at least this often (a change its watches missed)
CONTAINERS = "/zlayer/nodes/"  # every node's own state: its containers' records under <id>/state/c/
RESYNC = 5.0  # the leader places again at least this often (a change missed while leadership moved)


class _ClusterState:
    """The scheduler's :class:`~zlayer.cluster.scheduler.ClusterState` over this node's membership."""

    def __init__(self, cluster: ClusterNode) -> None:
        self.cluster = cluster

    async def nodes(self) -> Sequence[Node]:
        return await self.cluster.nodes()

    async def assignments(self) -> Sequence[Assignment]:
        return await self.cluster.assignments().assignments()

    async def put_assignments(self, changes: Mapping[ServiceKey, Sequence[Assignment]]) -> None:
        await self.cluster.assignments().put_assignments(changes)


@dataclass(frozen=True)
class _Endpoint:
    """A replica on another node as that node reported it: its node address and host port, and its overlay
    ``address:port`` ('' when it has none)."""

    container: str
    address: str
    port: int
    overlay: str

    def backend(self, over_overlay: bool) -> Backend:
        if over_overlay and self.overlay:
            host, _, port = self.overlay.rpartition(":")
            return Backend(self.container, host, int(port))
        return Backend(self.container, self.address, self.port)


class Dispatch:
    def __init__(self, cluster: ClusterNode, store: Store, overlay: OverlayNode | None = None) -> None:
        self.cluster = cluster
        self.store = store
        self.overlay = overlay  # this node's WireGuard overlay: other nodes' replicas are reached through it
        if overlay is not None:
            overlay.listeners.append(self._overlay_changed)
        self.manager: ServiceManager | None = None
        self.scheduler = Scheduler(store, _ClusterState(cluster), self._leads, resync=RESYNC)
        self._tasks: list[asyncio.Task[None]] = []
        self._remote: dict[tuple[str, str], dict[str, list[_Endpoint]]] = {}
        self._reported: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._alive: set[str] = set()
        self._kicks: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self._again: set[tuple[str, ...]] = set()
        self._shared = False  # this node's autoscaling figures are published
        self._settling: set[asyncio.Event] = set()  # each deploy waiting in settled(): woken by a change it awaits

    async def _leads(self) -> bool:
        """This node places: its etcd member leads and it holds the fencing key of this term."""
        return await self.cluster.is_leader() and await self.cluster.claim_leadership() > 0

    # ------------------------------------------------------------------------------------------- AssignmentHook

    async def replicas(self, deployment: str, service: str) -> set[int] | None:
        if not self.cluster.in_cluster:
            return None
        local, client = self.cluster.need()
        svc = await self.store.get_service(deployment, service)
        if svc is not None and svc.desired_replicas == 0:
            return set()
        kv = await client.get(f"{ASSIGNMENTS}{deployment}/{service}")
        if kv is None:
            if svc is not None and svc.status_message.startswith(UNSCHEDULABLE):
                return set()  # placed before, now no node may take it (the scheduler said so before it unassigned)
            return {c.replica for c in await self.store.list_containers(deployment, service)}  # not placed yet
        return {int(a["replica"]) for a in kv.json() if str(a.get("node_id")) == local.node_id}

    def clustered(self) -> bool:
        return self.cluster.in_cluster

    async def handed_over(self, deployment: str, service: str, replicas: set[int]) -> set[int]:
        if not self.cluster.in_cluster:
            return set(replicas)
        local, client = self.cluster.need()
        kv = await client.get(f"{ASSIGNMENTS}{deployment}/{service}")
        where = {int(a["replica"]): str(a.get("node_id")) for a in kv.json()} if kv is not None else {}
        elsewhere = {r: where[r] for r in replicas if r in where and where[r] != local.node_id}
        out = {r for r in replicas if r not in where}
        if elsewhere:
            # a fronted service's replacement also counts once its node reports it to the proxies (they learn of it
            # as this node does, through the watch of endpoints/): then the one here may leave theirs
            reported = self._remote.get((deployment, service))
            every = await getattr(self.store, "all_containers")()  # noqa: B009 - the cluster's EtcdStore
            out |= {
                c.replica
                for node, c in every
                if c.deployment == deployment and c.service == service and elsewhere.get(c.replica) == node
                and c.state == "running" and c.health == "healthy"
                and (not reported or any(b.container == c.id for b in reported.get(node, ())))
            }  # fmt: skip
        return out

    async def settled(self, spec: DeploymentSpec) -> list[str]:
        """Wait until every service of ``spec`` runs its desired replicas healthy over the live nodes, or one node's
        share failed (its failures). Looks again on each change of the nodes' containers (a watch of their records
        for as long as it waits), of the services, the nodes and the events (this node's watch of the cluster), and
        at least every ``SETTLE_POLL`` s; it polled every 0.25 s, each time reading every node and every event of
        the cluster, so the last replica's health reached ``zlayer deploy`` up to a poll and a slow read late."""
        if not self.cluster.in_cluster:
            return []
        _, client = self.cluster.need()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        waiting = {name for name, svc in spec.services.items() if svc.rtype == "service"}
        failures: list[str] = []
        revision = await client.revision()  # the watch starts here: no change after the first look is missed
        seen = [e.seq for e in await self.store.list_events(spec.deployment, limit=1_000_000)]
        after = max(seen, default=0)
        wake = asyncio.Event()
        self._settling.add(wake)
        watch = asyncio.create_task(self._wake_on_containers(client, revision + 1, wake), name="zlayer-cluster-settle")
        try:
            while waiting and time.monotonic() < deadline:
                wake.clear()
                try:
                    names = sorted(waiting)
                    events, dead, every, *services = await asyncio.gather(
                        self.store.list_events(spec.deployment, after), self.cluster.dead(),
                        getattr(self.store, "all_containers")(),  # noqa: B009 - the cluster's EtcdStore
                        *(self.store.get_service(spec.deployment, name) for name in names),
                    )  # fmt: skip
                    for e in events:
                        after = max(after, e.seq)
                        if e.kind in ("service_failed", "deploy_failed"):  # another node's share failed: said as is
                            failures.append(e.message)
                    if failures:
                        return sorted(set(failures))
                    for name, rec in zip(names, services, strict=True):
                        if rec is None or rec.desired_replicas == 0 or rec.status_message.startswith(UNSCHEDULABLE):
                            waiting.discard(name)  # nothing to wait for, or `status` says why it waits
                        elif sum(1 for node, c in every if c.deployment == spec.deployment and c.service == name
                                 and node not in dead and c.state == "running" and c.health == "healthy"
                                 ) >= rec.desired_replicas:  # fmt: skip
                            waiting.discard(name)
                except (ZLayerError, AttributeError) as e:
                    log.debug("cluster: waiting for %s: %s", spec.deployment, e)
                if waiting:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), min(SETTLE_POLL, max(0.0, deadline - time.monotonic())))
        finally:
            self._settling.discard(wake)
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        return sorted(failures)

    async def _wake_on_containers(self, client: EtcdClient, revision: int, wake: asyncio.Event) -> None:
        """Set ``wake`` on every change of any node's containers from ``revision`` on (their records are outside
        this node's watch of the cluster's own keys); a broken watch leaves the waiter to its slow poll."""
        try:
            async for _, kv in client.watch(CONTAINERS, revision):
                if "/state/c/" in kv.key:
                    wake.set()
        except (ZLayerError, OSError) as e:
            log.debug("cluster: the watch of the nodes' containers broke: %s", e)

    async def down_begins(self, deployment: str) -> None:
        if self.cluster.in_cluster:
            _, client = self.cluster.need()
            await client.delete(f"{DOWN}{deployment}/", prefix=True)

    async def share_down(self, deployment: str, error: str) -> None:
        if not self.cluster.in_cluster:
            return
        local, client = self.cluster.need()
        # only while the deployment is still there: an answer after its removal would outlive it
        await client.txn([exists(f"{STATE}d/{deployment}")],
                         [put_op(f"{DOWN}{deployment}/{local.node_id}", {"error": error})])  # fmt: skip

    async def shares_down(self, deployment: str, timeout: float) -> tuple[list[str], list[str]]:
        if not self.cluster.in_cluster:
            return [], []
        local, client = self.cluster.need()
        deadline = time.monotonic() + timeout
        while True:
            nodes = {n.id: n for n in await self.cluster.nodes()}
            alive = {kv.key.removeprefix(ALIVE) for kv in await client.range(ALIVE)} & set(nodes)
            said = {kv.key.rsplit("/", 1)[1]: kv.json() for kv in await client.range(f"{DOWN}{deployment}/")}
            waiting = sorted(n for n in alive if n != local.node_id and n not in said)
            if not waiting or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        held: dict[str, list[str]] = {}
        for node, c in await getattr(self.store, "all_containers")():  # noqa: B009 - the cluster's EtcdStore
            if c.deployment == deployment and node != local.node_id:
                held.setdefault(node, []).append(c.id)

        def name(node: str) -> str:
            return f"node {node} ({nodes[node].advertise_addr})" if node in nodes else f"node {node}"

        failures = [f"{name(n)}: {said[n]['error']}" for n in sorted(said) if n != local.node_id
                    and isinstance(said[n], dict) and said[n].get("error")]  # fmt: skip
        failures += [f"{name(n)} did not stop its share within {timeout:g}s"
                     + (f" (it still runs {', '.join(held[n])})" if held.get(n) else "") for n in waiting]  # fmt: skip
        notes = [f"{name(n)} is dead: its replicas {', '.join(held[n])} are removed when it returns"
                 for n in sorted(held) if n not in alive]  # fmt: skip
        return failures, notes

    # ------------------------------------------------------------------------------------------- ClusterMetrics

    async def share(
        self, samples: Mapping[tuple[str, str], NodeSample], max_age: float
    ) -> dict[tuple[str, str], list[NodeSample]] | None:
        local, client = self.cluster.need()
        key = METRICS + local.node_id
        if samples:
            value = {"at": time.time(), "services": {f"{d}/{s}": asdict(v) for (d, s), v in samples.items()}}
            await client.put(key, value)
        elif self._shared:
            await client.delete(key)
        self._shared = bool(samples)
        if not samples or not await self._leads():
            return None
        out: dict[tuple[str, str], list[NodeSample]] = {}
        for kv in await client.range(METRICS):
            node = kv.key.removeprefix(METRICS)
            if node == local.node_id or node not in self._alive:
                continue
            try:
                data = kv.json()
                if time.time() - float(data["at"]) > max_age:
                    continue  # a node that stopped measuring (its daemon hung, its clock far off)
                for name, v in data["services"].items():
                    dep, _, svc = str(name).partition("/")
                    out.setdefault((dep, svc), []).append(NodeSample(**v))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.warning("cluster: node %s's autoscaling figures do not read: %s", node, e)
        return out

    # --------------------------------------------------------------------------------------- ClusterTrafficHook

    def exposed(self) -> bool:
        return self.cluster.in_cluster

    def remote(self, deployment: str, service: str) -> list[Backend]:
        me = self.cluster.local.node_id if self.cluster.local is not None else ""
        out = []
        for node, endpoints in sorted(self._remote.get((deployment, service), {}).items()):
            if node == me or node not in self._alive:
                continue
            via = self.overlay.reachable(node) if self.overlay is not None else None
            if via is False:
                continue  # its overlay peer is unhealthy: nothing sent to its replicas until it handshakes again
            out += [e.backend(via is True) for e in endpoints]
        return out

    async def report(self, deployment: str, service: str, backends: list[Backend], port: int) -> None:
        if not self.cluster.in_cluster:
            return
        local, client = self.cluster.need()
        ov = self.overlay
        leases = ov.leases if ov is not None and ov.up else {}
        value = [
            {"container": b.container, "address": local.advertise, "port": b.port,
             "overlay": f"{leases[b.container]}:{port}" if b.container in leases else ""}
            for b in backends
        ]  # fmt: skip
        if self._reported.get((deployment, service)) == value:
            return
        key = f"{ENDPOINTS}{deployment}/{service}/{local.node_id}"
        if value:
            await client.put(key, value)
        else:
            await client.delete(key)
        self._reported[(deployment, service)] = value

    # ------------------------------------------------------------------------------------------------ loops

    def start(self) -> None:
        """Once the node is in a cluster (at daemon start, or when it inits or joins one) and its agent is up."""
        if self._tasks or self.manager is None or not self.cluster.in_cluster:
            return
        self._tasks = [asyncio.create_task(self.scheduler.run(), name="zlayer-cluster-scheduler"),
                       asyncio.create_task(self._watch(), name="zlayer-cluster-dispatch"),
                       asyncio.create_task(self._audit(), name="zlayer-cluster-audit")]  # fmt: skip

    async def close(self) -> None:
        tasks = self._tasks + list(self._kicks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    async def _watch(self) -> None:
        said = False
        while True:
            try:
                _, client = self.cluster.need()
                revision = await client.revision()
                await self._resync(client)
                said = False
                async for kind, kv in client.watch(ROOT, revision + 1):
                    self._event(kind, kv.key, kv)
                    revision = max(revision, kv.mod_revision)
            except asyncio.CancelledError:
                raise
            except (ZLayerError, OSError) as e:
                if not said:
                    log.warning("cluster: the watch of the cluster's state broke, resuming: %s", e)
                    said = True
            await asyncio.sleep(1.0)

    async def _audit(self) -> None:
        """Every few seconds, converge each service whose replicas here are not what this node is assigned: a
        change the watch did not bring (a node cut off from the others gets the assignments made meanwhile with the
        link back, and stops what runs elsewhere now)."""
        while True:
            await asyncio.sleep(RESYNC)
            try:
                local, client = self.cluster.need()
                have: dict[tuple[str, str], set[int]] = {}
                for c in await self.store.list_containers():
                    if c.state != "failed":
                        have.setdefault((c.deployment, c.service), set()).add(c.replica)
                for kv in await client.range(ASSIGNMENTS):
                    dep, _, svc = kv.key.removeprefix(ASSIGNMENTS).partition("/")
                    mine = {int(a["replica"]) for a in kv.json() if str(a.get("node_id")) == local.node_id}
                    if mine != have.get((dep, svc), set()):
                        self._kick(("a", dep, svc), partial(self._manager().converge_service, dep, svc))
            except (ZLayerError, OSError, ValueError, KeyError, TypeError) as e:
                log.debug("cluster: audit of this node's replicas: %s", e)

    async def _resync(self, client: EtcdClient) -> None:
        """The whole picture again (at start and after a broken watch): who is alive, every node's endpoints, and
        a converge of every deployment and placed service."""
        self._alive = {kv.key.removeprefix(ALIVE) for kv in await client.range(ALIVE)}
        self._remote.clear()
        for kv in await client.range(ENDPOINTS):
            self._endpoints(kv.key, kv)
        self.scheduler.changed()
        for kv in await client.range(STATE + "d/"):
            name = kv.key.removeprefix(STATE + "d/")
            self._kick(("d", name), partial(self._manager().refresh, name))
        for kv in await client.range(ASSIGNMENTS):
            self._event("PUT", kv.key, kv)
        for dep, svc in list(self._remote):
            self._kick(("p", dep, svc), partial(self._republish, dep, svc))

    def _manager(self) -> ServiceManager:
        assert self.manager is not None
        return self.manager

    def _event(self, kind: str, key: str, kv: Any) -> None:
        if self._settling and (key.startswith((STATE + "e/", STATE + "s/", NODES))):
            for wake in self._settling:  # a deploy waiting for its replicas: an event, a service or a node changed
                wake.set()
        if key.startswith(STATE + "d/"):
            name = key.removeprefix(STATE + "d/")
            self.scheduler.changed()
            self._kick(("d", name), partial(self._manager().refresh, name))
        elif key.startswith(STATE + "s/") or key.startswith(NODES):
            self.scheduler.changed()
        elif key.startswith(ASSIGNMENTS):
            dep, _, svc = key.removeprefix(ASSIGNMENTS).partition("/")
            self._kick(("a", dep, svc), partial(self._manager().converge_service, dep, svc))
        elif key.startswith(ALIVE):
            node = key.removeprefix(ALIVE)
            (self._alive.add if kind == "PUT" else self._alive.discard)(node)
            self.scheduler.changed()
            for dep, svc in list(self._remote):
                if node in self._remote[(dep, svc)]:
                    self._kick(("p", dep, svc), partial(self._republish, dep, svc))
        elif key.startswith(ENDPOINTS):
            got = self._endpoints(key, kv if kind == "PUT" else None)
            if got is not None:
                self._kick(("p", *got), partial(self._republish, *got))

    def _endpoints(self, key: str, kv: Any) -> tuple[str, str] | None:
        parts = key.removeprefix(ENDPOINTS).split("/")
        if len(parts) != 3:
            return None
        dep, svc, node = parts
        entry = self._remote.setdefault((dep, svc), {})
        if kv is None:
            entry.pop(node, None)
        else:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry[node] = [_Endpoint(str(b["container"]), str(b["address"]), int(b["port"]),
                                         str(b.get("overlay") or "")) for b in kv.json()]  # fmt: skip
        return dep, svc

    def _overlay_changed(self, node: str) -> None:
        """The overlay to ``node`` came or went: the proxy reaches its replicas another way now."""
        for dep, svc in list(self._remote):
            if node in self._remote[(dep, svc)]:
                self._kick(("p", dep, svc), partial(self._republish, dep, svc))

    async def _republish(self, deployment: str, service: str) -> None:
        """The proxy of this node gets the service's backends again (another node's changed)."""
        await self._manager().republish(deployment, service)

    def _kick(self, key: tuple[str, ...], work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` for ``key`` now, or once more after the run in progress (a burst is at most two runs)."""
        running = self._kicks.get(key)
        if running is not None and not running.done():
            self._again.add(key)
            return

        async def go() -> None:
            while True:
                self._again.discard(key)
                try:
                    await work()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # one failed converge is logged; the next change or resync retries
                    log.warning("cluster: %s %s: %s", key[0], "/".join(key[1:]), e)
                if key not in self._again:
                    return

        self._kicks[key] = asyncio.create_task(go(), name=f"zlayer-cluster-{'-'.join(key)}")


__all__ = ["Dispatch"]
