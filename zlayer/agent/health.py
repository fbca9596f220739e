"""Health: the periodic check of every replica (ZLayer's pacing) and the wait for a new replica to turn healthy."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from zlayer.agent.events import Events
from zlayer.agent.hooks import AgentMetrics
from zlayer.agent.probes import ExecFn, ProbeResult, run_health_check
from zlayer.agent.publish import Publisher
from zlayer.agent.replica import Replica, save
from zlayer.agent.spans import replica_attributes, tracer
from zlayer.errors import RuntimeFailure
from zlayer.state import Store

HEALTH_GRID = 0.1  # seconds: periodic health checks wake on multiples of this, so replicas share loop wake-ups


async def _sleep_on_grid(due: float, interval: float) -> float:
    """Sleep until the next check of a replica checked every ``interval``: ``due + interval`` on the event loop's
    clock, placed on the HEALTH_GRID so that replicas with the same interval wake together (fifty replicas checked
    every second wake the daemon a few times a second, not fifty). Returns that time, the base of the next call;
    no drift accumulates, and a check that overran starts the schedule again from now."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    target = due + interval
    if target <= now or due == 0.0:
        target = now + interval
    grid = min(HEALTH_GRID, interval / 10)  # short intervals (tests) keep their precision
    target = math.ceil(target / grid) * grid
    await asyncio.sleep(target - now)
    return target


class HealthMonitor:
    """Checks replicas, records and publishes their health, and tells a rollout when a new one is healthy."""

    def __init__(
        self,
        store: Store,
        events: Events,
        publisher: Publisher,
        execs: Callable[[Replica], ExecFn],
        metrics: AgentMetrics | None,
        scale: float,
    ) -> None:
        self.store = store
        self.execs = execs  # a command runner inside a replica (command checks)
        self.events = events
        self.publisher = publisher
        self.metrics = metrics
        self.scale = scale  # tests shrink intervals; production keeps ZLayer's numbers

    async def watch(self, rep: Replica) -> None:
        """Check ``rep`` until it stops: every ``interval``, sooner while it starts up."""
        h = rep.spec.health
        unchecked = rep.driver.host_network and "health" not in rep.spec.model_fields_set
        # a WASM replica with no check of its own is ready once its driver started it (an HTTP component: listening
        # with an instance made): the default grace, for a container's boot, would only hold it out of the proxy
        await asyncio.sleep(0 if unchecked else h.start_grace_seconds * self.scale)
        interval = h.interval_seconds * self.scale
        port = rep.spec.backend_port
        ever_healthy, startup_delay = False, 0.05
        due = 0.0
        while not rep.stopping:
            if rep.record.state != "running":
                await asyncio.sleep(min(interval, 1.0))
                continue
            if unchecked:
                # a WASM guest with no check of its own: the spec's default (tcp 8080) assumes a container that
                # listens; a running instance is what there is to check
                res = ProbeResult(True, "running (WASM instance; the spec sets no health check)")
            else:
                res = await run_health_check(h, rep.record.ip, port, self.execs(rep))
            if self.metrics is not None:
                self.metrics.health_result(rep.service, res.ok)
            rep.health_detail = res.detail
            was = rep.healthy
            if res.ok:
                rep.failing_streak = 0
                interval = h.interval_seconds * self.scale
            else:
                rep.failing_streak += 1
                if rep.failing_streak >= h.retries:
                    interval = min(interval * 2, 60.0)
            rep.healthy = res.ok
            if rep.healthy != was:
                rep.record.health = "healthy" if res.ok else "unhealthy"
                await save(self.store, rep.record)
                await self.publisher.publish(rep.deployment, rep.service, rep.spec)
                await self.events.add(rep.deployment, "health", f"{rep.key}: {rep.record.health} ({res.detail})")
            rep.health_changed.set()
            if res.ok:
                ever_healthy = True
            if not ever_healthy:
                # Starting up: look again soon (50 ms, doubling) so a replica is in service as soon as it answers.
                await asyncio.sleep(min(startup_delay, interval))
                startup_delay *= 2
                continue
            # ZLayer's pacing: every `interval`; after `retries` failures in a row the interval doubles with each
            # further failure (at most 60 s), and the first success brings it back.
            due = await _sleep_on_grid(due, interval)

    async def await_healthy(self, rep: Replica) -> None:
        """Wait until the replica passed a health check; a replica that keeps failing fails the rollout."""
        with tracer.start_as_current_span("container.health", attributes=replica_attributes(rep)):
            await self._await_healthy(rep)

    async def _await_healthy(self, rep: Replica) -> None:
        h = rep.spec.health
        limit = (h.start_grace_seconds + (h.interval_seconds + h.timeout_seconds) * (h.retries + 1) + 10.0) * self.scale
        deadline = time.monotonic() + limit
        while not rep.healthy:
            if rep.record.state == "failed" or rep.stopping:
                raise RuntimeFailure(f"replica {rep.key} failed: {rep.record.last_error}")
            if len(rep.crashes) >= 3:  # crash-looping: say so now rather than at the health deadline
                raise RuntimeFailure(f"replica {rep.key} is crash-looping: {rep.record.last_error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeFailure(
                    f"replica {rep.key} not healthy after {limit:.0f}s: {rep.health_detail or 'no check result yet'}"
                )
            rep.health_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rep.health_changed.wait(), min(remaining, 1.0))

    @staticmethod
    def status(rep: Replica | None) -> tuple[str, int, str]:
        """(healthy | unhealthy | starting | unknown, failures in a row, last check's detail)."""
        if rep is None:
            return "unknown", 0, ""
        state = "healthy" if rep.healthy else "unhealthy" if rep.failing_streak else "starting"
        return state, rep.failing_streak, rep.health_detail


__all__ = ["HEALTH_GRID", "HealthMonitor"]
