"""Placement: which node runs each replica — a pure, deterministic function of the cluster and the specs.

``place(view, deployments, desired, started)`` takes the cluster view (nodes and current assignments), every
deployment's typed spec, the wanted replica counts and which deployments ran before, and answers the whole new set
of assignments and, per service that does not fit, an ``unschedulable: <why>`` a user can act on (which constraint
ruled out how many nodes). The same input gives the same answer (ties go to the lower node id), and placing again
what it answered changes nothing.

The rules (ZLayer's ``placement.rs``, with its gaps closed):
- only ``ready`` nodes run replicas: a ``draining`` node's replicas move to ready nodes as a ``dead`` node's do
  (ZLayer's drain only stops new ones: its draining node kept what it ran; here it empties, as Kubernetes' and
  Nomad's drains do);
- an existing assignment stays where it is while its node is ready and still meets the service's constraints
  (minimal movement); replicas past the wanted count go, the highest numbers first, as the agent scales down;
- replica numbers are unique per service *name* in the whole cluster: a replica's id is ZLayer's
  ``{service}-rep-{n}``, without its deployment, so a new replica takes the lowest number no deployment's service of
  that name holds (on one node the agent skips them the same way), and of two that clash (placed before this rule)
  the replica of the deployment first by name keeps it, the other is placed again under a free number;
- hard constraints: ``node_selector.labels`` (all equal), ``platform`` (os/arch where the node reports them),
  ``affinity: {pin: "id=N" | "key=value"}``, GPUs (``gpu.count`` free GPUs of ``gpu.vendor``, ``gpu.model`` a
  case-insensitive part of the node's model; ``sharing: mps`` lets 8 replicas share a GPU, ``time-slice`` 4);
- ``node_mode``: ``shared`` bin-packs by requested CPU and memory (a node is never committed past its cores or
  memory; a node that reports none is not limited); ``dedicated`` puts at most one replica of the service on a node;
  ``exclusive`` gives the replica a node of its own — nothing else is placed beside it, whatever its mode (ZLayer
  let a shared replica join an exclusive one later);
- ranking, best first: more ``prefer_labels`` matched; fewer replicas of this service already there (spread, unless
  ``affinity: pack``); for GPU requests fewer free GPUs left (``gpu.scheduling: spread``: more); the least loaded
  node (the sum of its CPU and memory shares requested), then the one with fewer replicas — so replicas that request
  nothing spread too; ``affinity: pack`` takes the most loaded node that fits instead (best fit); the lower node id.
- ``gpu.scheduling: gang``: all of a service's new replicas are placed or none is;
- a deployment that never ran (``started``) starts whole or not at all: it stays pending with the reason and nothing
  of it starts half-way; one that ran places what fits (a scale-up, a failover) and says why the rest waits.

Cost: keeping the current assignments is linear in replicas. Each distinct constraint set gets its candidates once
per pass (a label index) and one heap of them by load, kept current as replicas land (stale entries skipped by
version); a service without GPUs or pack takes its first replica per node from that heap (one per preference set),
O(log nodes) each. The others (and replicas beyond one per node) rank every candidate once, O(nodes + replicas·log
nodes) per service. ``perf/placement.py`` measures it.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from zlayer.cluster.view import Assignment, ClusterView, Node
from zlayer.spec.models import AffinityPin, DeploymentSpec, ServiceSpec
from zlayer.spec.scalars import parse_memory

_memory_bytes = functools.lru_cache(maxsize=256)(parse_memory)  # thousands of services, a handful of sizes

GPU_SHARERS = {"exclusive": 1, "mps": 8, "time-slice": 4}
"""How many replicas may share one GPU, by ``gpu.sharing`` (ZLayer's limits)."""
_MODE_ORDER = {"exclusive": 0, "dedicated": 1, "shared": 2}

ServiceKey = tuple[str, str]


@dataclass(frozen=True, slots=True, order=True)
class Unschedulable:
    """Replicas of one service that no node can take, and why."""

    deployment: str
    service: str
    missing: int
    desired: int
    reason: str

    def __str__(self) -> str:
        return f"unschedulable: {self.reason}"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where every wanted replica runs (sorted by deployment, service, replica) and what could not be placed."""

    assignments: tuple[Assignment, ...]
    unschedulable: tuple[Unschedulable, ...] = ()
    _by_service: dict[ServiceKey, list[Assignment]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for a in self.assignments:
            self._by_service.setdefault((a.deployment, a.service), []).append(a)

    def of(self, deployment: str, service: str) -> list[Assignment]:
        return list(self._by_service.get((deployment, service), ()))

    def reason(self, deployment: str, service: str) -> Unschedulable | None:
        for u in self.unschedulable:
            if u.deployment == deployment and u.service == service:
                return u
        return None


class _Need:
    """What one service asks of a node, read once from its spec."""

    __slots__ = (
        "cpu",
        "desired",
        "gang",
        "gpu_count",
        "gpu_kind",
        "gpu_model",
        "gpu_share",
        "gpu_spread",
        "gpu_vendor",
        "key",
        "labels",
        "mem",
        "mem_text",
        "mode",
        "order",
        "pack",
        "pin",
        "platform",
        "prefer",
        "static",
    )

    def __init__(self, key: ServiceKey, spec: ServiceSpec, desired: int) -> None:
        self.key = key
        self.desired = desired
        r = spec.resources
        self.cpu = round((r.cpu or 0.0) * 1000)  # millicores: no float drift in the sums
        self.mem = _memory_bytes(r.memory) if r.memory else 0
        self.mem_text = r.memory or ""
        g = r.gpu
        self.gpu_count = g.count if g is not None else 0
        self.gpu_vendor = g.vendor.lower() if g is not None else ""
        self.gpu_model = (g.model or "").lower() if g is not None else ""
        self.gpu_kind = (g.sharing or "exclusive") if g is not None else "exclusive"
        self.gpu_share = GPU_SHARERS[self.gpu_kind]
        self.gpu_spread = g is not None and g.scheduling == "spread"
        self.gang = g is not None and g.scheduling == "gang"
        self.mode: str = spec.node_mode
        sel = spec.node_selector
        self.labels = tuple(sorted(sel.labels.items())) if sel is not None else ()
        self.prefer = tuple(sorted(sel.prefer_labels.items())) if sel is not None else ()
        aff = spec.affinity
        self.pack = aff == "pack"
        self.pin: tuple[str, str] | None = None
        if isinstance(aff, AffinityPin):
            k, _, v = aff.pin.partition("=")
            self.pin = (k.strip(), v.strip())
        p = spec.platform
        self.platform = (p.os, p.arch) if p is not None else None
        # what decides the candidate nodes, before anything is placed: services alike share one candidate list
        self.static = (self.labels, self.platform, self.pin, self.gpu_count, self.gpu_vendor, self.gpu_model)
        self.order = (_MODE_ORDER[self.mode], -self.gpu_count, -self.cpu, -self.mem, key)


class _Gpu:
    __slots__ = ("index", "kind", "model", "users", "vendor")

    def __init__(self, index: int, vendor: str, model: str) -> None:
        self.index = index
        self.vendor = vendor
        self.model = model
        self.users = 0
        self.kind = "exclusive"


class _Slot:
    """One node during a placement pass: what is left of it and who runs there."""

    __slots__ = (
        "cpu_cap",
        "cpu_free",
        "exclusive",
        "gpus",
        "heaps",
        "idx",
        "mem_cap",
        "mem_free",
        "node",
        "per_service",
        "replicas",
        "version",
    )

    def __init__(self, node: Node, idx: int) -> None:
        self.node = node
        self.idx = idx
        r = node.resources
        self.cpu_cap = self.cpu_free = round(r.cpu_cores * 1000)
        self.mem_cap = self.mem_free = r.memory_bytes
        self.gpus = [_Gpu(g.index, g.vendor, g.model.lower()) for g in r.gpus]
        self.exclusive = False
        self.replicas = 0
        self.per_service: dict[ServiceKey, int] = {}
        self.version = 0  # bumped on every change: older entries of it in the shared heaps are stale
        self.heaps: list[tuple[list[_Entry], int]] = []  # the shared heaps it is in, with its preference rank there

    def util(self) -> float:
        """The share of its CPU and of its memory that replicas requested, summed (0 where it reports none)."""
        return ((self.cpu_cap - self.cpu_free) / self.cpu_cap if self.cpu_cap else 0.0) + (
            (self.mem_cap - self.mem_free) / self.mem_cap if self.mem_cap else 0.0
        )

    def changed(self) -> None:
        """Re-enter the shared heaps with the new load (an exclusive node leaves them: nothing joins it)."""
        self.version += 1
        if self.heaps and not self.exclusive:
            util = self.util()
            for h, prefer in self.heaps:
                heapq.heappush(h, (prefer, util, self.replicas, self.idx, self.version))


_Entry = tuple[int, float, int, int, int]
"""(-preferred labels matched, util, replicas, node index, slot version): the most preferred, least loaded first."""


def _gpu_usable(g: _Gpu, need: _Need) -> bool:
    if g.vendor != need.gpu_vendor or (need.gpu_model and need.gpu_model not in g.model):
        return False
    return g.users == 0 or (g.kind == need.gpu_kind and g.users < need.gpu_share)


def _free_gpus(slot: _Slot, need: _Need) -> list[_Gpu]:
    return [g for g in slot.gpus if _gpu_usable(g, need)]


def _static_blocker(slot: _Slot, need: _Need) -> str | None:
    """Why ``slot`` can never take the service as the cluster stands (None: it could)."""
    node = slot.node
    if node.status != "ready":
        return node.status
    if (
        need.platform is not None
        and node.os is not None
        and node.arch is not None
        and (node.os, node.arch) != need.platform
    ):
        return f"are not {need.platform[0]}/{need.platform[1]}"
    if need.pin is not None:
        k, v = need.pin
        if not (node.id == v if k == "id" else node.labels.get(k) == v):
            return f"are not the pinned node ({k}={v})"
    for k, v in need.labels:
        if node.labels.get(k) != v:
            return "lack labels " + ",".join(f"{k}={v}" for k, v in need.labels)
    if need.gpu_count:
        what = f"{need.gpu_vendor} GPU" + (f" model {need.gpu_model!r}" if need.gpu_model else "")
        n = sum(1 for g in slot.gpus if g.vendor == need.gpu_vendor and need.gpu_model in g.model)
        if n == 0:
            return f"have no {what}"
        if n < need.gpu_count:
            return f"have fewer than {need.gpu_count} {what}s"
    return None


def _blocker(slot: _Slot, need: _Need) -> str | None:
    """Why ``slot`` cannot take one more replica of the service now (None: it can)."""
    if slot.exclusive:
        return "run an exclusive replica"
    if need.mode == "exclusive" and slot.replicas:
        return "already run replicas (node_mode exclusive wants an empty node)"
    if need.mode == "dedicated" and need.key in slot.per_service:
        return f"already run a replica of {need.key[1]} (node_mode dedicated)"
    if need.gpu_count and len(_free_gpus(slot, need)) < need.gpu_count:
        if need.gpu_count == 1:
            return f"have no free {need.gpu_vendor} GPU"
        return f"have fewer than {need.gpu_count} free {need.gpu_vendor} GPUs"
    if need.cpu and slot.cpu_cap and slot.cpu_free < need.cpu:
        return f"have too little free CPU (wants {need.cpu / 1000:g})"
    if need.mem and slot.mem_cap and slot.mem_free < need.mem:
        return f"have too little free memory (wants {need.mem_text})"
    return None


def _take(slot: _Slot, need: _Need, gpus: Iterable[int] | None = None) -> tuple[int, ...]:
    """Commit one replica of the service to ``slot``; its GPUs are ``gpus`` when given, else the lowest free."""
    slot.cpu_free -= need.cpu
    slot.mem_free -= need.mem
    slot.replicas += 1
    slot.per_service[need.key] = slot.per_service.get(need.key, 0) + 1
    if need.mode == "exclusive":
        slot.exclusive = True
    slot.changed()
    if not need.gpu_count:
        return ()
    free = _free_gpus(slot, need)
    if gpus is not None:
        wanted = set(gpus)
        free = [g for g in free if g.index in wanted]
    chosen = sorted(free, key=lambda g: (g.users == 0, g.index))[: need.gpu_count]  # fill shared GPUs first
    for g in chosen:
        g.users += 1
        g.kind = need.gpu_kind
    return tuple(sorted(g.index for g in chosen))


def _release(slot: _Slot, need: _Need, gpus: tuple[int, ...]) -> None:
    slot.cpu_free += need.cpu
    slot.mem_free += need.mem
    slot.replicas -= 1
    left = slot.per_service[need.key] - 1
    if left:
        slot.per_service[need.key] = left
    else:
        del slot.per_service[need.key]
    if need.mode == "exclusive":
        slot.exclusive = False
    slot.changed()
    for g in slot.gpus:
        if g.index in gpus and g.vendor == need.gpu_vendor:
            g.users -= 1
            if not g.users:
                g.kind = "exclusive"


def _rank(slot: _Slot, need: _Need) -> tuple[int, int, int, float, int, int]:
    """Smaller is better: more preferred labels; fewer replicas of this service there (spread); the GPU fit; the
    least loaded node, then the one with fewer replicas (``affinity: pack``: the most loaded, that is the best fit);
    the node id."""
    labels = slot.node.labels
    prefer = -sum(1 for k, v in need.prefer if labels.get(k) == v) if need.prefer else 0
    spread = 0 if need.pack else slot.per_service.get(need.key, 0)
    gpu_fit = 0
    if need.gpu_count:
        left = len(_free_gpus(slot, need)) - need.gpu_count
        gpu_fit = -left if need.gpu_spread else left
    if need.pack:
        return (prefer, spread, gpu_fit, -slot.util(), -slot.replicas, slot.idx)
    return (prefer, spread, gpu_fit, slot.util(), slot.replicas, slot.idx)


FAST_SCAN = 32
"""How many nodes the shared-heap path may set aside (full, or already holding the service) before it leaves the
rest of a service to the full ranking."""


def _fast(need: _Need) -> bool:
    """Whether the shared heaps rank the service as :func:`_rank` would: one without GPUs or pack, whose first
    round (one replica per node) orders nodes by preference and load alone."""
    return not need.gpu_count and not need.pack


def _place_fast(
    heap: list[_Entry], slots: list[_Slot], need: _Need, count: int
) -> tuple[list[tuple[_Slot, tuple[int, ...]]], bool]:
    """Up to ``count`` replicas, one per node, on the least loaded candidates that fit — what :func:`_rank` picks
    first — popping the candidate set's shared heap instead of ranking every candidate. Stops early (the caller
    ranks the rest fully) when the next node already holds the service or when too many do not fit. The flag says
    the rest cannot be placed at all: every candidate was looked at, and none that does not hold the service yet
    has room."""
    placed: list[tuple[_Slot, tuple[int, ...]]] = []
    aside: list[_Entry] = []
    holding = False
    while len(placed) < count and heap and len(aside) <= FAST_SCAN:
        entry = heapq.heappop(heap)
        s = slots[entry[3]]
        if entry[4] != s.version:
            continue  # stale: the node changed since, and its newer entry is in the heap
        if need.key in s.per_service:
            aside.append(entry)
            holding = True
            if need.prefer:  # a preferred node may take a second replica before a plain one its first: rank fully
                break
            continue
        if _blocker(s, need) is not None:
            aside.append(entry)
            continue
        placed.append((s, _take(s, need)))
    exhausted = len(placed) < count and not heap and not holding
    for entry in aside:
        heapq.heappush(heap, entry)
    return placed, exhausted


def _heap(candidates: list[_Slot], need: _Need) -> list[tuple[tuple[int, int, int, float, int, int], int]]:
    """The candidates that can take a replica now, as a heap by :func:`_rank`."""
    heap = [(_rank(s, need), s.idx) for s in candidates if _blocker(s, need) is None]
    heapq.heapify(heap)
    return heap


class _Index:
    """The nodes by label, and each distinct constraint set's candidates (ready nodes that could take it)."""

    def __init__(self, slots: list[_Slot]) -> None:
        self.slots = slots
        self.by_label: dict[tuple[str, str], list[int]] = {}
        for s in slots:
            for kv in s.node.labels.items():
                self.by_label.setdefault(kv, []).append(s.idx)
        self.cache: dict[object, list[_Slot]] = {}
        self.shared: dict[object, list[_Entry]] = {}

    def candidates(self, need: _Need) -> list[_Slot]:
        hit = self.cache.get(need.static)
        if hit is not None:
            return hit
        if need.labels:
            lists = sorted((self.by_label.get(kv, []) for kv in need.labels), key=len)
            pool: Iterable[_Slot] = (self.slots[i] for i in lists[0])
        else:
            pool = self.slots
        out = [s for s in pool if _static_blocker(s, need) is None]
        self.cache[need.static] = out
        return out

    def shared_heap(self, need: _Need) -> list[_Entry]:
        """The candidates of the service's constraint set by load, kept current as replicas land (lazily: a node's
        older entries are skipped by version)."""
        heap = self.shared.get((need.static, need.prefer))
        if heap is None:
            cands = self.candidates(need)
            heap = []
            for s in cands:
                prefer = -sum(1 for k, v in need.prefer if s.node.labels.get(k) == v)
                s.heaps.append((heap, prefer))
                if not s.exclusive:
                    heap.append((prefer, s.util(), s.replicas, s.idx, s.version))
            heapq.heapify(heap)
            self.shared[(need.static, need.prefer)] = heap
        return heap


def _explain(slots: list[_Slot], need: _Need, missing: int, cache: dict[object, str]) -> str:
    """Why ``missing`` replicas have no node, counting what rules out each node in the final state. Services that
    ask alike share the count (``cache``): a full cluster's many unplaceable services cost one count each kind."""
    name = need.key[1]
    if not slots:
        return f"{missing} of {need.desired} replicas of {name} have no node: the cluster has no nodes"
    alike = (need.static, need.mode, need.cpu, need.mem, need.mem_text, need.gpu_kind, need.gpu_share,
             need.key if need.mode == "dedicated" else None)  # fmt: skip
    parts = cache.get(alike)
    if parts is None:
        counts: dict[str, int] = {}
        for s in slots:
            why = _static_blocker(s, need) or _blocker(s, need) or "have room for only some of them"
            counts[why] = counts.get(why, 0) + 1
        parts = ", ".join(f"{n} {why}" for why, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))
        cache[alike] = parts
    gang = " (gpu scheduling gang: none of them was placed)" if need.gang else ""
    return f"{missing} of {need.desired} replicas of {name} fit no node{gang}; of {len(slots)} nodes: {parts}"


def _free_numbers(held: Mapping[int, str], count: int) -> list[int]:
    """The ``count`` lowest replica numbers (from 1) that no service of the name holds, in any deployment."""
    out: list[int] = []
    n = 0
    while len(out) < count:
        n += 1
        if n not in held:
            out.append(n)
    return out


def place(
    view: ClusterView,
    deployments: Mapping[str, DeploymentSpec],
    desired: Mapping[ServiceKey, int] | None = None,
    started: Collection[str] | None = None,
) -> Placement:
    """Assignments for every replica of every service in ``deployments`` (all the cluster's: an assignment of a
    deployment not there is dropped). ``desired[(deployment, service)]`` is the wanted count; a service not in it
    wants its spec's first count (fixed: n, adaptive: min, manual: 0). Jobs and crons are not placed.

    ``started``: the deployments that have run before (default: those with an assignment in the view). They place
    what fits and say why the rest waits; any other starts whole or not at all, so a deployment that cannot be placed
    stays pending with nothing of it started half-way. Give it from what outlives the assignments (the store), so
    that a deployment whose every node died comes back with what fits."""
    desired = desired or {}
    slots = [_Slot(n, i) for i, n in enumerate(sorted(view.nodes, key=lambda n: n.id))]
    by_id = {s.node.id: s for s in slots}
    needs: dict[ServiceKey, _Need] = {}
    for dname in sorted(deployments):
        for sname, spec in sorted(deployments[dname].services.items()):
            if spec.rtype != "service":
                continue
            key = (dname, sname)
            needs[key] = _Need(key, spec, max(0, desired.get(key, spec.initial_replicas)))

    # 1. keep what runs where it may stay
    placed: dict[ServiceKey, dict[int, Assignment]] = {k: {} for k in needs}
    # A replica's id is `{service}-rep-{n}`, without its deployment: a number is held by one deployment's service of
    # that name in the whole cluster (replicas move between nodes), so same-named services never share an id.
    holders: dict[str, dict[int, str]] = {}
    counted: dict[ServiceKey, set[int]] = {}
    for a in sorted(view.assignments, key=lambda a: (a.deployment, a.service, a.replica)):
        need = needs.get((a.deployment, a.service))
        if need is None:
            continue
        owners = holders.setdefault(a.service, {})
        if owners.get(a.replica, a.deployment) != a.deployment:
            continue  # an earlier deployment's same-named service holds the number: placed again under a free one
        numbers = counted.setdefault(need.key, set())
        numbers.add(a.replica)
        slot = by_id.get(a.node_id)
        if slot is None or len(numbers) > need.desired or a.replica in placed[need.key]:
            continue  # its node is gone, or it is scaled away (the highest numbers go)
        if _static_blocker(slot, need) is not None or _blocker(slot, need) is not None:
            continue
        if need.gpu_count:
            kept = {g.index for g in _free_gpus(slot, need)} & set(a.gpus)
            gpus = _take(slot, need, kept if len(kept) == need.gpu_count == len(a.gpus) else None)
            if gpus != a.gpus:
                a = a.model_copy(update={"gpus": gpus})
        else:
            _take(slot, need)
        placed[need.key][a.replica] = a
        owners[a.replica] = a.deployment

    # 2. place the rest, the hardest to fit first (isolation modes, GPUs, the largest requests)
    index = _Index(slots)

    def place_need(need: _Need) -> tuple[list[Assignment], int]:
        """Place the service's missing replicas; (the new assignments, how many found no node)."""
        have = placed[need.key]
        missing = _free_numbers(holders.setdefault(need.key[1], {}), need.desired - len(have))
        if not missing:
            return [], 0
        new: list[Assignment] = []
        dname, sname = need.key
        todo = iter(missing)
        exhausted = False
        if _fast(need):
            fast, exhausted = _place_fast(index.shared_heap(need), slots, need, len(missing))
            for (slot, gpus), replica in zip(fast, todo, strict=False):
                new.append(
                    Assignment(deployment=dname, service=sname, replica=replica, node_id=slot.node.id, gpus=gpus)
                )
        rest = [] if exhausted else list(todo)
        if rest:
            heap = _heap(index.candidates(need), need)
            for replica in rest:
                if not heap:
                    break
                slot = slots[heapq.heappop(heap)[1]]
                gpus = _take(slot, need)
                new.append(
                    Assignment(deployment=dname, service=sname, replica=replica, node_id=slot.node.id, gpus=gpus)
                )
                if _blocker(slot, need) is None:
                    heapq.heappush(heap, (_rank(slot, need), slot.idx))
        if len(new) < len(missing) and need.gang:
            for a in new:
                _release(by_id[a.node_id], need, a.gpus)
            new = []
        for a in new:
            have[a.replica] = a
            holders[sname][a.replica] = dname
        return new, len(missing) - len(new)

    def unplace(need: _Need, a: Assignment) -> None:
        _release(by_id[a.node_id], need, a.gpus)
        del placed[need.key][a.replica]
        del holders[a.service][a.replica]

    def place_whole(group: list[_Need]) -> dict[ServiceKey, tuple[int, str]]:
        """Place a deployment's services all or none; what found no node, and why (empty: all placed)."""
        new: list[tuple[_Need, Assignment]] = []
        short: dict[ServiceKey, tuple[int, str]] = {}
        for need in group:
            got, missing = place_need(need)
            new.extend((need, a) for a in got)
            if missing:  # said now, with its siblings placed: the nodes as they would be
                short[need.key] = (missing, _explain(slots, need, missing, {}))
        if short:
            for need, a in new:
                unplace(need, a)
        return short

    # What ran before places what fits. A deployment that never ran starts whole or not at all: all of them are
    # placed together, hardest first as the rest; one that falls short gives its room back, and those are then
    # tried alone, again while one more of them starts (the last try of each is its reason, against the end state).
    ever = set(started) if started is not None else {a.deployment for a in view.assignments}
    order = sorted(needs.values(), key=lambda n: n.order)
    short: dict[ServiceKey, int] = {}
    new_of: dict[str, list[tuple[_Need, Assignment]]] = {}
    held: set[str] = set()
    for need in order:
        d = need.key[0]
        got, missing = place_need(need)
        if d in ever:
            if missing:
                short[need.key] = missing
        else:
            new_of.setdefault(d, []).extend((need, a) for a in got)
            if missing:
                held.add(d)
    for d in sorted(held):
        for need, a in new_of.get(d, []):
            unplace(need, a)
    fresh = {d: [n for n in order if n.key[0] == d] for d in sorted(held)}
    waiting: dict[str, dict[ServiceKey, tuple[int, str]]] = {d: {} for d in sorted(held)}
    while waiting:
        tried = {d: place_whole(fresh[d]) for d in sorted(waiting)}
        if all(tried.values()):
            waiting = tried
            break
        waiting = {d: s for d, s in tried.items() if s}

    # why, against the final state (capacity only shrinks after a service failed, so what ruled a node out then
    # still does): the same placement placed again gives the same words
    said: dict[object, str] = {}
    problems = [
        Unschedulable(n.key[0], n.key[1], missing, n.desired, _explain(slots, n, missing, said))
        for n in order
        if (missing := short.get(n.key, 0))
    ]
    for d, failing in waiting.items():
        whole = f"deployment {d} starts whole or not at all"
        names = ", ".join(k[1] for k in sorted(failing))
        for n in fresh[d]:
            if n.key in failing:
                reason = f"{failing[n.key][1]} ({whole})"
            elif n.desired:
                reason = f"{n.desired} of {n.desired} replicas of {n.key[1]} wait for {names}: {whole}"
            else:
                continue
            problems.append(Unschedulable(d, n.key[1], n.desired, n.desired, reason))
    out = [a for key in sorted(placed) for _, a in sorted(placed[key].items())]
    return Placement(tuple(out), tuple(sorted(problems)))


__all__ = ["GPU_SHARERS", "Placement", "ServiceKey", "Unschedulable", "place"]
