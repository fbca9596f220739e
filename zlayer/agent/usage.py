"""What this node measures of a service for the autoscaler: each local replica's CPU and memory from its driver's
stats (the cgroups, v1, v2 or hybrid, as the runtime reads them) and the service's requests per second from the
proxy's counters (:class:`~zlayer.agent.hooks.TrafficHook`). Rates are differences between two samples, so a
replica or a service is measured from its second sample on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from zlayer.agent.autoscale import NodeSample, node_cpus, node_memory
from zlayer.agent.hooks import TrafficHook
from zlayer.agent.replica import Replica
from zlayer.errors import ZLayerError

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

COUNTS_FRESH = 0.5  # seconds: one round's services share one read of the proxy's counters


def cpu_percent(used_ns: int, seconds: float, cpus: int) -> float:
    """ZLayer's CPU figure: CPU time used over ``seconds`` of wall time as a share of the whole node (all its
    ``cpus``), in percent — a replica busy on one core of four reads 25. A counter that went back (a restarted
    container) reads 0."""
    return max(0.0, 100.0 * used_ns / (seconds * 1e9 * max(cpus, 1))) if seconds > 0 else 0.0


def memory_percent(used: int, limit: int | None, node: int | None) -> float:
    """Memory in use as a share of the replica's limit, in percent; without a limit, of the node's memory (ZLayer
    divides by 2^64 there, which reads 0 whatever the replica holds)."""
    total = limit or node
    return 100.0 * used / total if total else 0.0


class LocalUsage:
    """The :class:`~zlayer.agent.autoscale.MetricsSource` of one node."""

    def __init__(self, replicas: Mapping[str, Replica], traffic: TrafficHook | None) -> None:
        self.replicas = replicas
        self.traffic = traffic
        self.cpus = node_cpus()
        self.memory = node_memory()
        self._cpu: dict[str, tuple[int, float]] = {}  # container -> (CPU ns used, when)
        self._requests: dict[tuple[str, str], tuple[int, float]] = {}  # service -> (requests so far, when)
        self._counts: tuple[float, Mapping[tuple[str, str], int]] | None = None
        self._counting: asyncio.Lock = asyncio.Lock()
        self._index: tuple[float, dict[tuple[str, str], list[Replica]]] | None = None

    async def measure(self, deployment: str, service: str, spec: ServiceSpec, metrics: Iterable[str]) -> NodeSample:
        wanted = set(metrics)
        reps = [r for r in self._by_service().get((deployment, service), []) if not r.stopping]
        cpu: list[float] = []
        mem: list[float] = []
        if wanted & {"cpu", "memory"}:
            for rep in reps:
                c, m = await self._replica(rep)
                if c is not None:
                    cpu.append(c)
                mem.append(m)
        rps = await self._rps(deployment, service) if "rps" in wanted else None
        return NodeSample(
            cpu_sum=sum(cpu) if "cpu" in wanted else 0.0,
            cpu_n=len(cpu) if "cpu" in wanted else 0,
            memory_sum=sum(mem) if "memory" in wanted else 0.0,
            memory_n=len(mem) if "memory" in wanted else 0,
            rps=rps,
        )

    def _by_service(self) -> dict[tuple[str, str], list[Replica]]:
        """The running replicas by service, indexed once per round (a round samples every service)."""
        now = time.monotonic()
        if self._index is None or now - self._index[0] > COUNTS_FRESH:
            index: dict[tuple[str, str], list[Replica]] = {}
            for r in self.replicas.values():
                if r.record.state == "running":
                    index.setdefault((r.deployment, r.service), []).append(r)
            self._index = (now, index)
            for gone in [k for k in self._cpu if k not in self.replicas]:
                del self._cpu[gone]
        return self._index[1]

    async def _replica(self, rep: Replica) -> tuple[float | None, float]:
        """(CPU % of the node since the last sample — None on the first —, memory % of its limit or the node)."""
        try:
            st = await rep.driver.usage(rep.cid)
        except ZLayerError as e:
            raise e.add_context(rep.key) from None
        now = time.monotonic()
        prev = self._cpu.get(rep.key)
        self._cpu[rep.key] = (st.cpu_usage_ns, now)
        cpu = None
        if prev is not None and now > prev[1]:
            cpu = cpu_percent(st.cpu_usage_ns - prev[0], now - prev[1], self.cpus)
        return cpu, memory_percent(st.memory_usage_bytes, st.memory_limit_bytes, self.memory)

    async def _rps(self, deployment: str, service: str) -> float | None:
        if self.traffic is None:
            return None
        counts = await self._request_counts()
        total = counts.get((deployment, service), 0)
        now = time.monotonic()
        prev = self._requests.get((deployment, service))
        self._requests[(deployment, service)] = (total, now)
        if prev is None or now <= prev[1]:
            return None
        return max(0, total - prev[0]) / (now - prev[1])  # a counter that restarted reads as a quiet second

    async def _request_counts(self) -> Mapping[tuple[str, str], int]:
        assert self.traffic is not None
        async with self._counting:
            now = time.monotonic()
            if self._counts is None or now - self._counts[0] > COUNTS_FRESH:
                self._counts = (now, await self.traffic.request_counts())
            return self._counts[1]


__all__ = ["LocalUsage", "cpu_percent", "memory_percent"]
