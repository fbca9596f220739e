"""The supervisor: wait for each replica to exit, and restart it as its restart policy says, with backoff.

``restart_policy.kind`` decides when it says anything (``no``, ``always``, ``unless_stopped``, ``on_failure`` with
``max_attempts``); otherwise ``errors.on_panic: restart`` restarts what exits non-zero. Restarts back off
exponentially (1 s doubling to 30 s, counting crashes in the last 5 minutes).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from zlayer.agent.events import Events
from zlayer.agent.hooks import AgentMetrics
from zlayer.agent.publish import Publisher
from zlayer.agent.replica import Replica, save, tail
from zlayer.errors import NotFoundError, ZLayerError, from_os_error
from zlayer.state import Store

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

if TYPE_CHECKING:
    from zlayer.agent.health import HealthMonitor
    from zlayer.agent.lifecycle import Lifecycle

CRASH_WINDOW = 300.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
LOG_TAIL_ON_EXIT = 40


def should_restart(spec: ServiceSpec, restarts: int, exit_code: int) -> bool:
    """Whether a replica of ``spec`` that exited with ``exit_code`` after ``restarts`` restarts is started again."""
    kind = spec.restart_kind
    if kind == "no":
        return False
    if kind in ("always", "unless_stopped"):
        return True
    if kind == "on_failure":
        limit = spec.restart_policy.max_attempts if spec.restart_policy is not None else None
        return exit_code != 0 and (limit is None or restarts < limit)
    return exit_code != 0 and spec.errors.on_panic.action == "restart"


def exit_text(code: int, oom_killed: bool) -> str:
    """How a replica ended, in the words of status and events: OOMKilled as Docker says it."""
    return f"exited with code {code}" + (" (OOMKilled: out of memory at its memory limit)" if oom_killed else "")


def backoff(crashes: int, scale: float) -> float:
    """Seconds before restart number ``crashes`` (of the crash window)."""
    return min(BACKOFF_BASE * 2 ** (crashes - 1), BACKOFF_CAP) * min(scale * 10, 1.0)


class Supervisor:
    """Watches replicas: one supervising task and one health task each."""

    def __init__(
        self,
        store: Store,
        events: Events,
        publisher: Publisher,
        lifecycle: Lifecycle,
        health: HealthMonitor,
        metrics: AgentMetrics | None,
        scale: float,
    ) -> None:
        self.store = store
        self.events = events
        self.publisher = publisher
        self.lifecycle = lifecycle
        self.health = health
        self.metrics = metrics
        self.scale = scale

    def watch(self, rep: Replica) -> None:
        rep.tasks = [
            asyncio.create_task(self._supervise(rep), name=f"supervise {rep.key}"),
            asyncio.create_task(self.health.watch(rep), name=f"health {rep.key}"),
        ]

    async def _supervise(self, rep: Replica) -> None:
        while not rep.stopping:
            try:
                final = await rep.driver.wait(rep.cid)
            except NotFoundError:
                final = None
            if rep.stopping:
                return
            code = final.exit_code if final and final.exit_code is not None else -1
            oom = bool(final and final.oom_killed)
            lines = await tail(rep.driver, rep.cid, LOG_TAIL_ON_EXIT)
            rep.healthy = False
            await self.publisher.publish(rep.deployment, rep.service, rep.spec)
            rep.record.exit_code = code
            rep.record.oom_killed = oom
            rep.record.health = "unknown"
            if oom:
                await self.events.add(
                    rep.deployment,
                    "replica_oom_killed",
                    f"{rep.key} OOMKilled: the kernel's OOM killer ended it at its memory limit (exit code {code})",
                )
            ended = exit_text(code, oom)
            last = "\n".join(lines[-10:])
            last = f"; last lines:\n{last}" if last else ""
            if not should_restart(rep.spec, rep.record.restarts, code):
                await self._exited(rep, code, ended, last)
                return
            await self._restart(rep, ended, last)

    async def _exited(self, rep: Replica, code: int, ended: str, last: str) -> None:
        rep.record.state = "exited" if code == 0 else "failed"
        rep.record.last_error = f"{ended}{last}"
        await save(self.store, rep.record)
        if self.metrics is not None:
            self.metrics.container_state(rep.key, rep.record.state)
        await self.events.add(rep.deployment, "replica_exited", f"{rep.key} {ended}")

    async def _restart(self, rep: Replica, ended: str, last: str) -> None:
        now = time.monotonic()
        rep.crashes = [t for t in rep.crashes if now - t < CRASH_WINDOW] + [now]
        delay = backoff(len(rep.crashes), self.scale)
        rep.record.state = "backoff"
        rep.record.last_error = f"{ended}; restart {rep.record.restarts + 1} in {delay:.1f}s{last}"
        await save(self.store, rep.record)
        await self.events.add(rep.deployment, "replica_crashed", f"{rep.key} {ended}; backoff {delay:.1f}s")
        if self.metrics is not None:
            self.metrics.container_state(rep.key, "backoff")
        await asyncio.sleep(delay)
        if rep.stopping:
            return
        try:
            await self.lifecycle.create_and_start(rep)
            await self.lifecycle.run_init(rep, phase="after")
            rep.record.restarts += 1
            await save(self.store, rep.record)
            if self.metrics is not None:
                self.metrics.restart(rep.service)
            await self.events.add(rep.deployment, "replica_restarted", f"{rep.key} restarted")
        except (ZLayerError, OSError) as exc:  # a full disk too: said, and tried again after the backoff
            e = exc if isinstance(exc, ZLayerError) else from_os_error(exc, f"restarting {rep.key}") or exc
            rep.record.restarts += 1
            rep.record.last_error = f"restart failed: {e}"
            await save(self.store, rep.record)
            # wait() on a container that never started returns at once; the backoff above paces retries


__all__ = ["Supervisor", "backoff", "exit_text", "should_restart"]
