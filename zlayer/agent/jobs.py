"""Jobs (``rtype: job``) and cron jobs (``rtype: cron``): triggered runs to completion, each recorded as an execution.

An execution runs in its own container ``job-{name}-rep-{n}``, goes ``pending → initializing → running →
completed|failed`` (or ``cancelled``), keeps its output, and the container is removed afterwards. Cron jobs fire on
their schedule (UTC, checked every second); a cron run that is still going when the next one is due makes the next
one skip, so runs never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from zlayer.agent.hooks import NetworkHook
from zlayer.errors import ConflictError, NotFoundError, ZLayerError
from zlayer.runtime.drivers import Drivers
from zlayer.runtime.protocol import ContainerId, Runtime
from zlayer.spec.scalars import CronSchedule
from zlayer.state import CronRecord, JobExecutionRecord, Store, now_rfc3339

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

log = logging.getLogger("zlayer.agent.jobs")

ACTIVE = ("pending", "initializing", "running")
CANCEL_STOP_TIMEOUT = 10.0


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class JobManager:
    """Runs job executions and the cron loop on the node's drivers (each job's by its spec and image, as a
    service's), recording everything in the Store."""

    def __init__(self, store: Store, runtime: Runtime | Drivers, network: NetworkHook | None = None) -> None:
        self.store = store
        self.drivers = runtime if isinstance(runtime, Drivers) else Drivers({"linux": runtime})
        self.runtime = self.drivers.default
        self.network = network  # the node network (NetworkHook): job containers get an eth0 and the service DNS
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cids: dict[str, ContainerId] = {}
        self._cron_task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------------------------------- registration

    async def register(self, deployment: str, service: str, spec: ServiceSpec) -> None:
        """Called when a deployment with a job or cron service converges (the agent's JobHook)."""
        if spec.rtype != "cron" or spec.schedule is None:
            return
        sched = CronSchedule.parse(spec.schedule)
        prev = {c.name: c for c in await self.store.list_cron(deployment)}.get(service)
        enabled = prev.enabled if prev else True
        nxt = sched.next_after(datetime.now(UTC))
        await self.store.put_cron(
            CronRecord(
                deployment,
                service,
                spec.schedule,
                enabled,
                prev.last_run if prev else "",
                _iso(nxt) if nxt and enabled else "",
            )
        )

    async def _find(self, name: str, deployment: str | None) -> tuple[str, ServiceSpec]:
        from zlayer.spec.models import ServiceSpec

        hits = []
        for dep in await self.store.list_deployments():
            if deployment and dep.name != deployment:
                continue
            svc = await self.store.get_service(dep.name, name)
            if svc is not None:
                spec = ServiceSpec.model_validate(svc.spec)  # the stored form of the deployed spec
                if spec.rtype in ("job", "cron"):
                    hits.append((dep.name, spec))
        if not hits:
            raise NotFoundError(f"job {name!r} not found" + (f" in deployment {deployment!r}" if deployment else ""))
        if len(hits) > 1:
            raise ConflictError(f"job {name!r} exists in several deployments; pass --deployment")
        return hits[0]

    # ----------------------------------------------------------------------------------------- executions

    async def trigger(self, name: str, deployment: str | None = None, trigger: str = "cli") -> str:
        """Start an execution of job ``name`` and return its id at once."""
        dep, spec = await self._find(name, deployment)
        exec_id = str(uuid.uuid4())
        rec = JobExecutionRecord(exec_id, dep, name, status="pending", trigger=trigger, started_at=now_rfc3339())
        await self.store.put_job_execution(rec)
        self._tasks[exec_id] = asyncio.create_task(self._run(rec, spec), name=f"job {name} {exec_id}")
        return exec_id

    async def _run(self, rec: JobExecutionRecord, spec: ServiceSpec) -> None:
        name = rec.job_name
        cid = ContainerId(f"job-{name}", int(rec.id.replace("-", "")[:8], 16) % 10000)
        self._cids[rec.id] = cid
        started = time.monotonic()
        runtime = self.drivers.for_service(spec)
        attached = False
        try:
            rec.status = "initializing"
            await self.store.put_job_execution(rec)
            await runtime.pull(spec.image.name, policy=spec.image.pull_policy)
            runtime = self.drivers.for_service(spec)  # the pulled image says which (a WASM artifact: wasm)
            with contextlib.suppress(ZLayerError):
                await runtime.remove(cid, force=True)
            await runtime.create(cid, spec, dns=self._dns(spec))
            if self.network is not None and not spec.uses_host_network and not runtime.host_network:
                created = await runtime.state(cid)
                if created.pid > 0:  # before its process runs, so it has its network from the start
                    await self.network.attach(rec.deployment, name, str(cid), created.pid)
                    attached = True
            try:
                await runtime.start(cid)
            except ZLayerError:
                # A job quick enough to end inside the runtime's start window has run, not failed to start:
                # its exit code decides.
                ended = await runtime.state(cid)
                if ended.status not in ("exited", "failed") or ended.exit_code is None:
                    raise
            rec.status = "running"
            await self.store.put_job_execution(rec)
            final = await runtime.wait(cid)
            rec.exit_code = final.exit_code
            rec.logs = await self._logs(runtime, cid)
            if final.exit_code == 0:
                rec.status = "completed"
            else:
                rec.status = "failed"
                rec.error = f"exited with code {final.exit_code}" + (
                    f" ({final.reason})" if final.reason and final.reason != "exited" else ""
                )
        except asyncio.CancelledError:
            rec.status = "cancelled"
            rec.logs = await self._logs(runtime, cid)
            raise
        except ZLayerError as e:
            rec.status, rec.error = "failed", str(e)
        finally:
            rec.completed_at = now_rfc3339()
            rec.duration_ms = int((time.monotonic() - started) * 1000)
            grace = spec.stop_grace_period if spec.stop_grace_period is not None else CANCEL_STOP_TIMEOUT
            with contextlib.suppress(ZLayerError):
                await runtime.stop(cid, timeout=grace)
            if attached and self.network is not None:
                with contextlib.suppress(ZLayerError, OSError):
                    await self.network.detach(rec.deployment, name, str(cid))
            with contextlib.suppress(ZLayerError):
                await runtime.remove(cid, force=True)
            await self.store.put_job_execution(rec)
            self._tasks.pop(rec.id, None)
            self._cids.pop(rec.id, None)

    def _dns(self, spec: ServiceSpec) -> list[str]:
        """The node DNS server, first in the job's resolv.conf, so service names resolve inside it."""
        if self.network is None or spec.uses_host_network:
            return []
        return list(self.network.dns_servers())

    async def _logs(self, runtime: Runtime, cid: ContainerId) -> str:
        lines: list[str] = []
        with contextlib.suppress(ZLayerError):
            async for line in runtime.logs(cid):
                lines.append(f"[{line.stream}] {line.message}")
        text = "\n".join(lines)
        return text[-1024 * 1024 :]

    async def cancel(self, execution_id: str) -> JobExecutionRecord:
        rec = await self.store.get_job_execution(execution_id)
        if rec is None:
            raise NotFoundError(f"job execution {execution_id!r} not found")
        if rec.status not in ACTIVE:
            raise ConflictError(f"job execution {execution_id} is already {rec.status}")
        task = self._tasks.get(execution_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        latest = await self.store.get_job_execution(execution_id)
        if latest is not None and latest.status in ACTIVE:  # cancelled before it started, or an earlier daemon's
            latest.status, latest.completed_at = "cancelled", now_rfc3339()
            await self.store.put_job_execution(latest)
        got = await self.store.get_job_execution(execution_id)
        assert got is not None
        return got

    async def wait(self, execution_id: str) -> None:
        task = self._tasks.get(execution_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    # ----------------------------------------------------------------------------------------- cron

    async def set_cron_enabled(self, name: str, enabled: bool, deployment: str | None = None) -> CronRecord:
        rec = await self.get_cron(name, deployment)
        rec.enabled = enabled
        if enabled:
            nxt = CronSchedule.parse(rec.schedule).next_after(datetime.now(UTC))
            rec.next_run = _iso(nxt) if nxt else ""
        else:
            rec.next_run = ""
        await self.store.put_cron(rec)
        return rec

    async def get_cron(self, name: str, deployment: str | None = None) -> CronRecord:
        hits = [c for c in await self.store.list_cron(deployment) if c.name == name]
        if not hits:
            raise NotFoundError(f"cron job {name!r} not found")
        if len(hits) > 1:
            raise ConflictError(f"cron job {name!r} exists in several deployments; pass --deployment")
        return hits[0]

    def _running(self, deployment: str, name: str) -> bool:
        return any(t.get_name().startswith(f"job {name} ") for t in self._tasks.values() if not t.done())

    async def tick(self, now: datetime | None = None) -> list[str]:
        """Fire every enabled cron job that is due; returns the execution ids started."""
        now = now or datetime.now(UTC)
        started: list[str] = []
        for rec in await self.store.list_cron():
            due = _parse_iso(rec.next_run)
            if not rec.enabled or due is None or due > now:
                continue
            nxt = CronSchedule.parse(rec.schedule).next_after(now)
            rec.next_run = _iso(nxt) if nxt else ""
            if self._running(rec.deployment, rec.name):
                log.info("cron %s: previous run still going, skipping %s", rec.name, _iso(due))
                await self.store.put_cron(rec)
                continue
            rec.last_run = _iso(now)
            await self.store.put_cron(rec)
            try:
                started.append(await self.trigger(rec.name, rec.deployment, trigger="scheduler"))
            except ZLayerError as e:
                log.warning("cron %s: %s", rec.name, e)
        return started

    async def restore(self) -> None:
        """Executions an earlier daemon left running cannot be followed any more: record them as failed and remove
        their containers (job containers are not re-adopted)."""
        for rec in await self.store.list_job_executions(limit=10_000):
            if rec.status in ACTIVE and rec.id not in self._tasks:
                rec.status, rec.completed_at = "failed", now_rfc3339()
                rec.error = "the daemon restarted while this execution was running"
                await self.store.put_job_execution(rec)
        for runtime in self.drivers:
            with contextlib.suppress(ZLayerError):
                for info in await runtime.list():
                    if info.id.startswith("job-"):
                        with contextlib.suppress(ZLayerError):
                            await runtime.remove(ContainerId.parse(info.id), force=True)

    def start(self) -> None:
        if self._cron_task is None:
            self._cron_task = asyncio.create_task(self._cron_loop(), name="cron")

    async def _cron_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except ZLayerError as e:  # the state cannot be written (a full disk): one line, and the next tick
                log.warning("cron tick failed: %s", e)
            except Exception:  # the loop must survive one bad record
                log.exception("cron tick failed")
            await asyncio.sleep(1.0 - (time.time() % 1.0) + 0.01)

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = list(self._tasks.values())
        if self._cron_task is not None:
            tasks.append(self._cron_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["JobManager"]
