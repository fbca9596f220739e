"""Adaptive scaling: ZLayer's autoscaler (reference §A11) over CPU, memory and requests per second.

Two halves. :func:`decide` is pure: given a service's ``scale`` block, its current replica count, the moving
averages of its metrics and when it last scaled, it says the replica count to go to and why — it does not care where
the replicas run, so a cluster's leader can call it with figures gathered from every node. :class:`Autoscaler` is
the node's loop: every ``interval`` it samples each adaptive service (:class:`MetricsSource`), feeds the averages,
decides, and hands a changed count to the service manager's converge (new replicas join the proxy once healthy,
removed ones are drained first).

ZLayer's rules, kept: an exponential moving average per metric (α 0.3, the first sample starts it); scale up by one
when any configured metric's average reaches its target (requests per second compared per replica); down by one
only when every configured metric's average is at most half its target; never within ``cooldown`` of the last
scale (the spec's, else 30 s); bounded by ``min``/``max``; an adaptive block with no targets settles at ``min``.
Where zlayer differs: averages are fed on every evaluation, cooldown included (ZLayer skips sampling while cooling
down, so the first average after it still carries the load from before the last step and steps again); a replica
measured for the first time is left out of the mean instead of counted as 0 % CPU; requests per second are real
(ZLayer's proxy counts nothing); memory in use is the cgroup's less its inactive page cache (what ``docker stats``
shows; ZLayer takes ``memory.current`` whole, so a replica that reads files climbs toward its limit on cache alone);
memory of a replica without a limit is a share of the node's memory (ZLayer divides by 2^64). A metric that cannot
be read (a replica's cgroup gone) stops decisions for the service, with the reason shown, until it can be read
again: the service keeps its replicas.

In a cluster (a :class:`ClusterMetrics` hook that says so) every node measures its own share of each adaptive
service — its replicas' CPU and memory, its proxy's requests — and publishes it (:class:`NodeSample`); only the
leader adds the other nodes' shares to its own (:func:`aggregate`) and decides. Followers measure, publish and
leave the count alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from zlayer.errors import ZLayerError

if TYPE_CHECKING:
    from zlayer.spec.models import AdaptiveScale, ServiceSpec

log = logging.getLogger("zlayer.agent")

DEFAULT_INTERVAL = 10.0  # ZLayer's DEFAULT_AUTOSCALE_INTERVAL
DEFAULT_COOLDOWN = 30.0
EMA_ALPHA = 0.3
DOWN_FRACTION = 0.5  # scale down only when every metric is at most this share of its target
METRICS = ("cpu", "memory", "rps")
FOLLOWER = "decided by the cluster's leader (this node measures and shares its figures)"
UNITS = {"cpu": "%", "memory": "%", "rps": " req/s per replica"}


@dataclass(frozen=True)
class Sample:
    """One evaluation's measurements of a service over all its replicas (wherever they run). ``cpu`` and ``memory``:
    the mean per replica, in percent (CPU of the whole node, memory of the replica's limit); ``rps``: the service's
    total requests per second. ``None``: not measured this time (no replica measured yet)."""

    cpu: float | None = None
    memory: float | None = None
    rps: float | None = None

    def get(self, metric: str) -> float | None:
        value: float | None = getattr(self, metric)
        return value


@dataclass(frozen=True)
class Decision:
    """Where a service goes: ``target`` replicas (the current count when nothing changes), and why — the metric and
    its average that made the step, or what held it."""

    target: int
    reason: str
    metric: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class NodeSample:
    """One node's share of a service's measurements: the sums and counts of its measured replicas' CPU and memory
    percentages (so that a mean over the cluster is a mean over replicas, not over nodes), its proxy's requests per
    second (None: not measured yet) and what could not be read there (None: nothing)."""

    cpu_sum: float = 0.0
    cpu_n: int = 0
    memory_sum: float = 0.0
    memory_n: int = 0
    rps: float | None = None
    problem: str | None = None


def aggregate(parts: Iterable[NodeSample]) -> Sample:
    """A service's sample from every node's share: CPU and memory averaged over all measured replicas wherever they
    run, requests per second summed over the nodes' proxies (each request enters the cluster through one)."""
    parts = list(parts)
    cpu_n = sum(p.cpu_n for p in parts)
    memory_n = sum(p.memory_n for p in parts)
    rps = [p.rps for p in parts if p.rps is not None]
    return Sample(
        cpu=sum(p.cpu_sum for p in parts) / cpu_n if cpu_n else None,
        memory=sum(p.memory_sum for p in parts) / memory_n if memory_n else None,
        rps=sum(rps) if rps else None,
    )


def targets_of(scale: AdaptiveScale) -> dict[str, float]:
    """The configured targets: metric → target."""
    t = scale.targets
    return {m: float(v) for m, v in (("cpu", t.cpu), ("memory", t.memory), ("rps", t.rps)) if v is not None}


def cooldown_of(scale: AdaptiveScale) -> float:
    return scale.cooldown if scale.cooldown is not None else DEFAULT_COOLDOWN


def smooth(averages: Mapping[str, float], sample: Sample, alpha: float = EMA_ALPHA) -> dict[str, float]:
    """The moving averages after ``sample``: each measured metric moves ``alpha`` of the way to its new value (the
    first value starts it); an unmeasured one keeps its average."""
    alpha = min(0.99, max(0.01, alpha))
    out = dict(averages)
    for m in METRICS:
        v = sample.get(m)
        if v is not None:
            out[m] = v if m not in out else alpha * v + (1 - alpha) * out[m]
    return out


def _per_replica(metric: str, value: float, current: int) -> float:
    return value / max(current, 1) if metric == "rps" else value


def decide(
    scale: AdaptiveScale, current: int, averages: Mapping[str, float], last_scale: float | None, now: float
) -> Decision:
    """ZLayer's decision for an adaptive service with ``current`` replicas (pure: same inputs, same answer).
    ``last_scale`` and ``now`` are seconds on one clock (``None``: never scaled)."""
    lo, hi = scale.min, scale.max
    if current < lo:
        return Decision(lo, f"below min {lo}")
    if current > hi:
        return Decision(hi, f"above max {hi}")
    cooldown = cooldown_of(scale)
    if last_scale is not None and now - last_scale < cooldown:
        return Decision(current, f"cooling down ({cooldown - (now - last_scale):.0f}s left)")
    targets = targets_of(scale)
    missing = [m for m in targets if m not in averages]
    if missing:
        return Decision(current, f"waiting for a first {', '.join(missing)} measurement")
    for m, target in targets.items():
        v = _per_replica(m, averages[m], current)
        if v >= target:
            if current >= hi:
                return Decision(current, f"at max {hi} ({_fmt(m, v)} >= target {_fmt(m, target, False)})", m, v)
            return Decision(current + 1, f"{_fmt(m, v)} >= target {_fmt(m, target, False)}", m, v)
    if all(_per_replica(m, averages[m], current) <= DOWN_FRACTION * t for m, t in targets.items()):
        if current > lo:
            if not targets:
                return Decision(current - 1, "no targets: settling at min")
            m = max(targets, key=lambda k: _per_replica(k, averages[k], current) / targets[k])
            v = _per_replica(m, averages[m], current)
            return Decision(current - 1, f"every metric at most half its target ({_fmt(m, v)})", m, v)
        return Decision(current, f"at min {lo}")
    return Decision(current, "within targets")


def _fmt(metric: str, value: float, named: bool = True) -> str:
    return f"{metric + ' ' if named else ''}{value:.1f}{UNITS[metric]}"


# -------------------------------------------------------------------------------------------------------- the loop


class MetricsSource(Protocol):
    async def measure(self, deployment: str, service: str, spec: ServiceSpec, metrics: Iterable[str]) -> NodeSample:
        """Measure ``metrics`` of the service's replicas and requests on this node now; raises ZLayerError naming
        what could not be read."""
        ...


class ClusterMetrics(Protocol):
    """How the autoscaler of a node in a cluster shares its measurements and learns whether it decides."""

    def clustered(self) -> bool:
        """Whether the node is in a cluster now (else the autoscaler decides alone, on this node's figures)."""
        ...

    async def share(
        self, samples: Mapping[tuple[str, str], NodeSample], max_age: float
    ) -> Mapping[tuple[str, str], list[NodeSample]] | None:
        """Publish this node's ``samples`` (by deployment and service; none: nothing is left published) and, when
        this node leads the cluster, return the other live nodes' samples published within ``max_age`` seconds;
        None when another node decides."""
        ...


@dataclass(frozen=True)
class ScalableService:
    """An adaptive service: its deployment, name, spec and replica count now; ``converging``: a deploy or a scale
    of it is under way (it is measured, not moved)."""

    deployment: str
    name: str
    spec: ServiceSpec
    replicas: int
    converging: bool = False


@dataclass
class ServiceScaling:
    """What the loop knows of one service: its averages, its last scale and the last word on it."""

    averages: dict[str, float] = field(default_factory=dict)
    last_scale: float | None = None  # monotonic
    last_scale_at: float | None = None  # wall clock, for status
    reason: str = "not evaluated yet"
    problem: str | None = None  # a metric that could not be read
    last_step: str | None = None  # the last scale: "1 -> 2 (cpu 83.0% >= target 50.0%)"
    seen: int | None = None  # in a cluster, on the leader: the desired count of the last round
    stepped_to: int | None = None  # the count this loop last set

    def view(self, scale: AdaptiveScale) -> dict[str, object]:
        return {
            "reason": self.problem or self.reason,
            "metrics": {m: round(v, 2) for m, v in self.averages.items()},
            "targets": targets_of(scale),
            "cooldown_seconds": cooldown_of(scale),
            "last_scale_at": self.last_scale_at,
            "last_scale": self.last_step,
        }


ScaleFn = Callable[[ScalableService, Decision], Awaitable[None]]


class Autoscaler:
    """Evaluates every adaptive service every ``interval`` seconds and scales through ``scale``; one scale per
    service at a time (a service still converging is evaluated again next round)."""

    def __init__(
        self,
        services: Callable[[], Awaitable[list[ScalableService]]],
        source: MetricsSource,
        scale: ScaleFn,
        events: Callable[[str, str, str], Awaitable[None]],
        interval: float = DEFAULT_INTERVAL,
        cluster: ClusterMetrics | None = None,
    ) -> None:
        self.services = services
        self.cluster = cluster
        self.source = source
        self.scale = scale
        self.events = events
        self.interval = interval
        self.state: dict[tuple[str, str], ServiceScaling] = {}
        self._busy: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="zlayer-autoscale")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._busy.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def scaled(self, deployment: str, service: str, replicas: int) -> None:
        """A scale from outside (``zlayer scale``): the cooldown starts again from now."""
        st = self.state.setdefault((deployment, service), ServiceScaling())
        st.last_scale, st.last_scale_at = time.monotonic(), time.time()
        st.last_step = f"-> {replicas} (set by hand)"

    def status(self, deployment: str, service: str, scale: AdaptiveScale) -> dict[str, object]:
        st = self.state.get((deployment, service)) or ServiceScaling()
        return st.view(scale)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.interval
            try:
                await self.evaluate()
            except Exception:  # the loop outlives anything one round meets
                log.exception("autoscaler round failed")
            now = loop.time()
            if due < now:
                due = now + self.interval  # a round that overran: the next one a whole interval from now
            await asyncio.sleep(due - now)

    async def evaluate(self) -> None:
        """One round: every adaptive service measured side by side, then decided (in a cluster, by its leader only,
        on every node's figures)."""
        services = await self.services()
        keys = [(s.deployment, s.name) for s in services]
        for gone in [k for k in self.state if k not in set(keys)]:
            del self.state[gone]
        measured = await asyncio.gather(*(self._measure(s) for s in services), return_exceptions=True)
        got: dict[tuple[str, str], NodeSample | BaseException | None] = dict(zip(keys, measured, strict=True))
        samples: dict[tuple[str, str], Sample | BaseException | None]
        if self.cluster is not None and self.cluster.clustered():
            try:
                shared, reason = await self._share(got), FOLLOWER
            except (ZLayerError, OSError) as e:  # the cluster's store out of reach: nobody here decides this round
                log.warning("autoscaler: cannot share this node's figures with the cluster: %s", e)
                shared, reason = None, f"holding: the cluster's state is out of reach ({e})"
            if shared is None:
                for key in keys:
                    st = self.state.setdefault(key, ServiceScaling())
                    st.averages.clear()  # a node that comes to lead starts from its own first figures
                    st.problem, st.reason, st.seen = None, reason, None
                return
            samples = shared
            for svc, key in zip(services, keys, strict=True):
                st = self.state.setdefault(key, ServiceScaling())
                if st.seen is not None and svc.replicas not in (st.seen, st.stepped_to):
                    # set through another node (`zlayer scale` there): the cooldown starts again, as it would here
                    self.scaled(svc.deployment, svc.name, svc.replicas)
                st.seen = svc.replicas
        else:
            samples = {k: aggregate([v]) if isinstance(v, NodeSample) else v for k, v in got.items()}
        results = await asyncio.gather(*(self._one(s, samples[k]) for s, k in zip(services, keys, strict=True)),
                                       return_exceptions=True)  # fmt: skip
        for svc, r in zip(services, results, strict=True):
            if isinstance(r, Exception):  # one service's trouble is not the others'
                log.error("autoscaler: %s/%s: %s", svc.deployment, svc.name, r, exc_info=r)

    async def _measure(self, svc: ScalableService) -> NodeSample | None:
        """This node's share of the service now (None: nothing to measure: no targets, or no replica)."""
        wanted = list(targets_of(self._scale(svc)))
        if not wanted or svc.replicas <= 0:
            return None
        return await self.source.measure(svc.deployment, svc.name, svc.spec, wanted)

    async def _share(
        self, got: Mapping[tuple[str, str], NodeSample | BaseException | None]
    ) -> dict[tuple[str, str], Sample | BaseException | None] | None:
        """This node's shares published; on the leader, each service's sample over every node (a share that could
        not be read on any node holds the service, as on one node); None on a follower."""
        assert self.cluster is not None
        mine: dict[tuple[str, str], NodeSample] = {}
        for key, v in got.items():
            if isinstance(v, ZLayerError):
                mine[key] = NodeSample(problem=str(v))
            elif isinstance(v, BaseException):
                log.error("autoscaler: %s/%s: %s", *key, v, exc_info=v)
                mine[key] = NodeSample(problem=f"internal error: {v}")
            elif v is not None:
                mine[key] = v
        others = await self.cluster.share(mine, max(3 * self.interval, 5.0))
        if others is None:
            return None
        out: dict[tuple[str, str], Sample | BaseException | None] = {k: None for k in got}
        for key, own in mine.items():
            parts = [own, *others.get(key, [])]
            problems = [p.problem for p in parts if p.problem]
            out[key] = ZLayerError(problems[0]) if problems else aggregate(parts)
        return out

    @staticmethod
    def _scale(svc: ScalableService) -> AdaptiveScale:
        from zlayer.spec.models import AdaptiveScale

        scale = svc.spec.scale
        assert isinstance(scale, AdaptiveScale)
        return scale

    async def _one(self, svc: ScalableService, sample: Sample | BaseException | None) -> None:
        scale = self._scale(svc)
        key = (svc.deployment, svc.name)
        st = self.state.setdefault(key, ServiceScaling())
        if isinstance(sample, ZLayerError):
            problem = f"metrics unavailable, keeping {svc.replicas} replicas: {sample}"
            if st.problem != problem:
                await self.events(svc.deployment, "autoscale_blocked", f"{svc.name}: {problem}")
            st.problem = problem
            return
        if isinstance(sample, BaseException):
            raise sample
        if sample is not None:
            if st.problem is not None:
                st.problem = None
                await self.events(svc.deployment, "autoscale_resumed", f"{svc.name}: metrics readable again")
            st.averages = smooth(st.averages, sample)
        busy = self._busy.get(key)
        if svc.converging or (busy is not None and not busy.done()):
            st.reason = "converging"
            return
        d = decide(scale, svc.replicas, st.averages, st.last_scale, time.monotonic())
        st.reason = d.reason
        if d.target == svc.replicas:
            return
        st.last_scale, st.last_scale_at = time.monotonic(), time.time()
        st.last_step = f"{svc.replicas} -> {d.target} ({d.reason})"
        st.stepped_to = d.target
        task = asyncio.create_task(self._scale_to(svc, d), name=f"zlayer-autoscale {svc.deployment}/{svc.name}")
        self._busy[key] = task
        task.add_done_callback(lambda t: self._done(key, t))

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._busy.get(key) is task:
            del self._busy[key]

    async def _scale_to(self, svc: ScalableService, d: Decision) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await self.scale(svc, d)
            except Exception as e:  # reported; the next round decides again
                msg = str(e) if isinstance(e, ZLayerError) else f"internal error: {e}"
                if not isinstance(e, ZLayerError):
                    log.exception("autoscaling %s/%s failed", svc.deployment, svc.name)
                await self.events(svc.deployment, "autoscale_failed", f"{svc.name}: {msg}")


def node_cpus() -> int:
    """CPUs of the node: what CPU percentages are shares of (ZLayer's normalisation)."""
    return os.cpu_count() or 1


def node_memory() -> int | None:
    """The node's memory in bytes (what an unlimited replica's memory is a share of)."""
    with contextlib.suppress(OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


__all__ = [
    "DEFAULT_COOLDOWN",
    "DEFAULT_INTERVAL",
    "Autoscaler",
    "ClusterMetrics",
    "Decision",
    "MetricsSource",
    "NodeSample",
    "Sample",
    "ScalableService",
    "ServiceScaling",
    "aggregate",
    "cooldown_of",
    "decide",
    "node_cpus",
    "node_memory",
    "smooth",
    "targets_of",
]
