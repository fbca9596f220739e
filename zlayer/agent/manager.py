"""The service manager: converge what runs to what the deployments ask for, and keep it running.

For every service it creates and removes replicas to reach the desired count, replaces replicas whose spec or image
changed one at a time (the new one healthy before the old one stops), waits for ``depends`` conditions, runs init
actions, watches health and restarts crashed replicas with exponential backoff. Everything it decides is written to
the :class:`zlayer.state.Store` before or as it happens, so a restarted daemon re-adopts what is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import shlex
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from zlayer.agent.externals import ExternalRoutes
from zlayer.agent.hooks import Backend, NetworkHook, ProxyHook
from zlayer.agent.ports import admit_ports
from zlayer.agent.probes import run_health_check, run_init_step
from zlayer.agent.specload import ParsedDeployment, parse_deployment
from zlayer.agent.specview import ServiceView, service_view
from zlayer.errors import (
    ConflictError,
    NotFoundError,
    RuntimeFailure,
    UsageError,
    ZLayerError,
    from_os_error,
    with_context,
)
from zlayer.runtime.protocol import ContainerId, ExecResult, Runtime
from zlayer.state import ContainerRecord, DeploymentRecord, ServiceRecord, Store

log = logging.getLogger("zlayer.agent")

CRASH_WINDOW = 300.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
SCALE_DOWN_STOP_TIMEOUT = 30.0
START_CONCURRENCY = 16  # replicas created/started at once
STOP_CONCURRENCY = 64  # replicas stopped at once (a stop mostly waits out its grace period)
LOG_TAIL_ON_EXIT = 40


def _exit_text(code: int, oom_killed: bool) -> str:
    """How a replica ended, in the words of status and events: OOMKilled as Docker says it."""
    return f"exited with code {code}" + (" (OOMKilled: out of memory at its memory limit)" if oom_killed else "")


def _stop_grace(view: ServiceView) -> float:
    """How long a replica being removed gets between SIGTERM and SIGKILL: the spec's ``stop_grace_period`` when
    it sets one, else ZLayer's 30 s scale-down stop."""
    return view.stop_grace if view.raw.get("stop_grace_period") is not None else SCALE_DOWN_STOP_TIMEOUT


def _warm_up() -> None:
    """Load, off the event loop and once the daemon is up, what the first deploy needs: the spec models (imported
    lazily by the spec package, their validators built at import: ~0.3 s, ~3 MB) that the first ``zlayer deploy``
    then no longer waits for. Parsing a minimal spec pulls in exactly what a real one uses."""
    with contextlib.suppress(Exception):
        parse_deployment(_WARM_SPEC)
    # What start-up allocated and dropped (import-time garbage, compile buffers) goes back to the system instead
    # of sitting in the heap of an idle daemon.
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_WARM_SPEC = "version: v1\ndeployment: warm-up\nservices:\n  web:\n    image: {name: warm/up}\n"


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


@dataclass
class Replica:
    """A running replica and the tasks that watch it."""

    deployment: str
    service: ServiceView
    cid: ContainerId
    record: ContainerRecord
    model: Any = None
    healthy: bool = False
    health_detail: str = ""
    failing_streak: int = 0
    stopping: bool = False
    crashes: list[float] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    health_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return self.record.id


class ServiceManager:
    """Deploy, scale, tear down and supervise services against one :class:`Runtime`."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        *,
        network: NetworkHook | None = None,
        proxy: ProxyHook | None = None,
        metrics: Any = None,
        health_scale: float = 1.0,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.network = network
        self.proxy = proxy
        self.externals = ExternalRoutes(proxy)
        self.metrics = metrics
        self.health_scale = health_scale  # tests shrink intervals; production keeps ZLayer's numbers
        self.replicas: dict[str, Replica] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._deploy_tasks: dict[str, asyncio.Task[None]] = {}
        self._unrecorded: dict[str, tuple[str, str]] = {}  # deployment → (status, message) the store could not take
        self._event_waiters = asyncio.Condition()
        self._closing = False
        self._warm: asyncio.Task[None] | None = None
        self._start_slots = asyncio.Semaphore(START_CONCURRENCY)
        self._stop_slots = asyncio.Semaphore(STOP_CONCURRENCY)
        self._claimed: set[str] = set()  # replica ids chosen by a converge whose replica is not yet registered
        self._in_proxy: dict[tuple[str, str], int] = {}  # backends the proxy last accepted, per service

    # ---------------------------------------------------------------------------------------------- deployments

    async def deploy(self, text: str) -> DeploymentRecord:
        """Validate and store a spec, then converge in the background. Invalid specs, and specs asking for a port
        something else holds, change nothing."""
        parsed = parse_deployment(text)
        await admit_ports(self.store, parsed, self.reserved_ports)
        services = [
            ServiceRecord(parsed.name, s.name, s.raw, s.replicas if s.rtype == "service" else 0)
            for s in parsed.services.values()
        ]
        old = await self.store.get_deployment(parsed.name)
        if old is not None:
            # A scale set through the API survives a redeploy of an unchanged manual service.
            for rec in services:
                prev = await self.store.get_service(parsed.name, rec.name)
                if prev is not None and parsed.services[rec.name].scale_mode == "manual":
                    rec.desired_replicas = prev.desired_replicas
        try:
            record = await self.store.put_deployment(parsed.name, text, parsed.spec, services, status="deploying")
        except ZLayerError as e:  # one transaction: nothing of it was stored
            raise e.add_context(f"deployment {parsed.name} was not stored") from None
        self._unrecorded.pop(parsed.name, None)  # the stored "deploying" is the status now
        await self._event(parsed.name, "deploy", f"revision {record.revision} submitted")
        self._spawn_converge(parsed)
        return record

    def _spawn_converge(self, parsed: ParsedDeployment) -> None:
        prev = self._deploy_tasks.get(parsed.name)
        if prev is not None and not prev.done():
            prev.cancel()
        self._deploy_tasks[parsed.name] = asyncio.create_task(self._converge_deployment(parsed))

    async def wait_deployed(self, name: str) -> None:
        task = self._deploy_tasks.get(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _converge_deployment(self, parsed: ParsedDeployment) -> None:
        name = parsed.name
        started = time.monotonic()
        record = await self.store.get_deployment(name)
        revision = record.revision if record else 1
        failures: list[str] = []
        try:
            await self._remove_dropped_services(name, set(parsed.services))
            failures += await self.externals.apply(name, parsed.spec.get("externals") or {})

            # Every service converges at once; one with `depends` first waits for its own dependencies' conditions
            # (not for services that merely come earlier in the order).
            failed_now: dict[str, str] = {}  # services whose converge failed in this deploy, and why

            async def one(svc_name: str) -> None:
                view = parsed.services[svc_name]
                try:
                    await self._wait_depends(name, view, failed_now)
                    await self._converge_service(name, view, parsed.models.get(svc_name), revision)
                except Exception as exc:
                    e = (from_os_error(exc, f"service {svc_name}") if isinstance(exc, OSError) else None) or exc
                    if not isinstance(e, ZLayerError):
                        log.exception("converging %s/%s failed", name, svc_name)
                    failed_now[svc_name] = str(e)
                    failures.append(with_context(svc_name, e))
                    await self.store.set_service_status(name, svc_name, "failed", str(e))
                    await self._event(name, "service_failed", with_context(svc_name, e))

            await asyncio.gather(*(one(s) for s in parsed.order))
            failures.sort()
            if failures:
                await self._set_status(name, "failed", "; ".join(failures))
                await self._event(name, "deploy_failed", "; ".join(failures))
            else:
                await self._set_status(name, "running")
                await self._event(name, "deploy_done", f"revision {revision} running")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the deploy task must always leave a status behind
            if isinstance(e, ZLayerError):  # the state itself may be what failed (a full disk): said in one line
                log.error("deploy of %s failed: %s", name, e)
            else:
                log.exception("deploy of %s failed", name)
            said = str(e) if isinstance(e, ZLayerError) else f"internal error: {e}"
            await self._set_status(name, "failed", said)
            await self._event(name, "deploy_failed", said)  # what `zlayer deploy` waits for
        finally:
            if self.metrics is not None:
                self.metrics.deploy_finished(time.monotonic() - started, not failures)

    async def _set_status(self, name: str, status: str, message: str = "") -> None:
        """Record how a deploy ended. A status the store cannot take (a full disk) is kept here and answered by
        :meth:`status_of` until one is written, so `zlayer deploy` learns the outcome instead of waiting for it."""
        try:
            await self.store.set_deployment_status(name, status, message)
        except ZLayerError as e:
            log.warning("deployment %s is %s, but that could not be recorded: %s", name, status, e)
            self._unrecorded[name] = (status, message)
        else:
            self._unrecorded.pop(name, None)

    def status_of(self, rec: DeploymentRecord) -> tuple[str, str]:
        """(status, message) of a deployment as it is: the stored one, or a newer one the store could not take."""
        return self._unrecorded.get(rec.name, (rec.status, rec.status_message))

    async def delete(self, name: str) -> None:
        """Stop and remove every replica of the deployment, close its listeners, forget it."""
        record = await self.store.get_deployment(name)
        if record is None:
            raise NotFoundError(f"deployment {name!r} not found")
        task = self._deploy_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.store.set_deployment_status(name, "stopped")
        except ZLayerError as e:  # the state cannot be written (a full disk): touch nothing, so it stays true
            raise e.add_context(f"deployment {name} was not removed") from None
        # Services go down side by side (each one's replicas in parallel too): a down costs one grace period, not
        # one per replica. A service that fails to go keeps the deployment (status failed) so a retry finds it.
        services = {s.name for s in await self.store.list_services(name)}
        services |= {c.service for c in await self.store.list_containers(name)}
        results = await asyncio.gather(
            *(self._remove_service(name, s) for s in sorted(services)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            msg = "; ".join(str(e) for e in errors)
            await self.store.set_deployment_status(name, "failed", f"teardown incomplete: {msg}")
            await self._event(name, "delete_failed", msg)
            err = errors[0]
            raise err if isinstance(err, ZLayerError) else RuntimeFailure(f"removing {name}: {err}")
        await self.externals.remove(name)
        await self.store.delete_deployment(name)
        self._unrecorded.pop(name, None)
        await self._event(name, "deleted", "deployment removed")

    async def _remove_dropped_services(self, name: str, keep: set[str]) -> None:
        running = {c.service for c in await self.store.list_containers(name)}
        for svc in running - keep:
            await self._remove_service(name, svc)

    async def _remove_service(self, name: str, service: str) -> None:
        async with self._lock(name, service):
            svc = await self.store.get_service(name, service)
            grace = _stop_grace(service_view(service, svc.spec)) if svc is not None else SCALE_DOWN_STOP_TIMEOUT
            recs = await self.store.list_containers(name, service)
            results = await asyncio.gather(
                *(self._stop_replica(rec, timeout=grace) for rec in recs), return_exceptions=True
            )
            if self.proxy is not None:
                await self.proxy.remove_service(name, service)
            for r in results:
                if isinstance(r, BaseException):
                    raise r

    # ---------------------------------------------------------------------------------------------- services

    def _lock(self, deployment: str, service: str) -> asyncio.Lock:
        return self._locks.setdefault((deployment, service), asyncio.Lock())

    async def scale(
        self, deployment: str, service: str, replicas: int, stop_timeout: float | None = None
    ) -> ServiceRecord:
        """Set a service's desired replica count and converge to it."""
        if replicas < 0:
            raise UsageError("replicas must be >= 0", where="replicas")
        svc = await self.store.get_service(deployment, service)
        if svc is None:
            raise NotFoundError(f"service {service!r} not found in deployment {deployment!r}")
        view = service_view(service, svc.spec)
        if view.rtype != "service":
            raise ConflictError(f"{service!r} is a {view.rtype}, it has no replicas to scale")
        await self.store.set_service_desired(deployment, service, replicas)
        dep = await self.store.get_deployment(deployment)
        await self._event(deployment, "scale", f"{service} -> {replicas} replicas")
        await self._converge_service(
            deployment, view, None, dep.revision if dep else 1, desired=replicas, stop_timeout=stop_timeout
        )
        got = await self.store.get_service(deployment, service)
        assert got is not None
        return got

    async def _converge_service(
        self,
        deployment: str,
        view: ServiceView,
        model: Any,
        revision: int,
        desired: int | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        if view.rtype != "service":
            await self.store.set_service_status(deployment, view.name, "registered")
            if self.on_job_registered is not None:
                await self.on_job_registered(deployment, view)
            return
        async with self._lock(deployment, view.name):
            if desired is None and view.pull_policy in ("always", "newer"):
                await self._pull(deployment, view)  # a deploy looks for a newer image under the same name first
            if desired is None:
                rec = await self.store.get_service(deployment, view.name)
                desired = rec.desired_replicas if rec else view.replicas
            await self.store.set_service_status(deployment, view.name, "deploying")
            current = await self.store.list_containers(deployment, view.name)
            # Watched replicas are the live ones; a record nobody watches was left half-made (a cancelled rollout)
            # or has failed, and is replaced.
            current_ok = [c for c in current if c.state != "failed" and c.id in self.replicas]
            for bad in [c for c in current if c not in current_ok]:
                await self._stop_replica(bad, timeout=1.0)
            want = await self._build_hash(view)
            outdated = [c for c in current_ok if c.spec_hash != want]
            fresh = [c for c in current_ok if c.spec_hash == want]
            used = {c.replica for c in current_ok}
            # Replica ids are ZLayer's `{service}-rep-{n}`, unique on the node: numbers another deployment's service
            # of the same name holds (running, starting or recorded) are skipped, never taken over.
            elsewhere = {c.id for c in await self.store.list_containers() if c.deployment != deployment}

            def next_index() -> int:
                i = 1
                while i in used or self._id_taken(str(ContainerId(view.name, i)), deployment, elsewhere):
                    i += 1
                used.add(i)
                self._claimed.add(str(ContainerId(view.name, i)))
                return i

            if outdated and len(fresh) < desired:
                await self._pull(deployment, view)
            # Rolling replacement: one new replica healthy, then one old replica stops.
            while outdated and len(fresh) < desired:
                old = outdated.pop(0)
                new = await self._start_replica(deployment, view, model, next_index(), revision)
                await self._await_healthy(new)
                fresh.append(new.record)
                await self._stop_replica(old, timeout=_stop_grace(view))
                used.discard(old.replica)
            for old in outdated:
                await self._stop_replica(old, timeout=_stop_grace(view))
                used.discard(old.replica)
            # Scale up in parallel, scale down from the highest replica number.
            if len(fresh) < desired:
                await self._pull(deployment, view)
                idxs = [next_index() for _ in range(desired - len(fresh))]
                results = await asyncio.gather(
                    *(self._start_replica(deployment, view, model, i, revision) for i in idxs), return_exceptions=True
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                started = [r for r in results if isinstance(r, Replica)]
                if errors:
                    await self._publish(deployment, view)
                    raise errors[0] if isinstance(errors[0], ZLayerError) else RuntimeFailure(str(errors[0]))
                await asyncio.gather(*(self._await_healthy(r) for r in started))
            elif len(fresh) > desired:
                extras = sorted(fresh, key=lambda c: c.replica, reverse=True)[: len(fresh) - desired]
                grace = _stop_grace(view) if stop_timeout is None else stop_timeout
                await asyncio.gather(*(self._stop_replica(extra, timeout=grace) for extra in extras))
            await self._publish(deployment, view)
            await self.store.set_service_status(deployment, view.name, "running")

    async def _build_hash(self, view: ServiceView) -> str:
        """What a replica is built from: the spec, and the content of its image when the node can tell (so a new
        image under the same name — re-imported, or pulled with ``always``/``newer`` — rolls the replicas too)."""
        store = getattr(getattr(self.runtime, "images", None), "store", None)
        if store is None or not hasattr(store, "get"):
            return view.spec_hash
        try:
            digest = str((await asyncio.to_thread(store.get, view.image)).digest)
        except (ZLayerError, OSError, AttributeError):
            return view.spec_hash
        return hashlib.sha256(f"{view.spec_hash} {digest}".encode()).hexdigest()[:16]

    def _id_taken(self, cid: str, deployment: str, elsewhere: set[str]) -> bool:
        rep = self.replicas.get(cid)
        return cid in elsewhere or cid in self._claimed or (rep is not None and rep.deployment != deployment)

    on_job_registered: Any = None  # set by the JobManager: async (deployment, view) -> None
    reserved_ports: tuple[Any, ...] = ()  # set by the daemon: PortClaims of its own listeners (API, metrics)

    async def _wait_depends(self, deployment: str, view: ServiceView, failed: dict[str, str] | None = None) -> None:
        """Wait for each dependency's condition in turn; at its timeout (or at once when the dependency's own
        converge failed in this deploy) fail, warn or continue as ``on_timeout`` says."""
        failed = failed if failed is not None else {}
        for dep in view.depends:
            deadline = time.monotonic() + dep.timeout
            while not await self._condition_met(deployment, dep.service, dep.condition):
                if time.monotonic() >= deadline or dep.service in failed:
                    msg = (
                        f"dependency {dep.service!r} failed: {failed[dep.service]}"
                        if dep.service in failed
                        else f"dependency {dep.service!r} not {dep.condition} after {dep.timeout:g}s"
                    )
                    if dep.on_timeout == "fail":
                        raise RuntimeFailure(msg, where=f"services.{view.name}.depends")
                    if dep.on_timeout == "warn":
                        await self._event(deployment, "depends_timeout", f"{view.name}: {msg} (continuing)")
                    break
                await asyncio.sleep(min(1.0, self.health_scale))

    async def _condition_met(self, deployment: str, service: str, condition: str) -> bool:
        reps = [r for r in self.replicas.values() if r.deployment == deployment and r.service.name == service]
        if condition == "started":
            return any(r.record.state == "running" for r in reps)
        healthy = any(r.healthy for r in reps)
        if condition == "ready" and healthy and self.proxy is not None and reps and reps[0].service.endpoints:
            # ready: the proxy already sends to it (as ZLayer: its route resolves to at least one backend)
            return self._in_proxy.get((deployment, service), 0) > 0
        return healthy  # healthy, and ready for a service the proxy does not front

    # ---------------------------------------------------------------------------------------------- replicas

    async def _start_replica(
        self, deployment: str, view: ServiceView, model: Any, index: int, revision: int
    ) -> Replica:
        cid = ContainerId(view.name, index)
        built = await self._build_hash(view)
        rec = ContainerRecord(
            str(cid), deployment, view.name, index, image=view.image, revision=revision, spec_hash=built
        )
        rep = Replica(deployment, view, cid, rec, model)
        self.replicas[rec.id] = rep
        self._claimed.discard(rec.id)
        await self.store.put_container(rec)
        try:
            await self._run_init(rep, phase="before")
            try:
                await self._create_and_start(rep)
            except ZLayerError as e:
                if await self._exited_at_start(rep, e):
                    # It ran and died at once: a crash like any other, restarted with backoff by the supervisor
                    # (a dependency it needs may come up later); the rollout sees it crash-loop.
                    self._watch(rep)
                    return rep
                raise
            await self._run_init(rep, phase="after")
        except ZLayerError as e:
            rec.state, rec.last_error = "failed", str(e)
            await self.store.put_container(rec)
            await self._event(deployment, "replica_failed", with_context(rec.id, e))
            self.replicas.pop(rec.id, None)
            if self.network is not None:  # also when attach failed half-way (its veth may exist without an address)
                with contextlib.suppress(ZLayerError, OSError):
                    await self.network.detach(deployment, view.name, rec.id)
            with contextlib.suppress(ZLayerError):
                await self.runtime.stop(cid, timeout=1.0)
            with contextlib.suppress(ZLayerError):
                await self.runtime.remove(cid, force=True)
            raise
        self._watch(rep)
        await self._event(deployment, "replica_started", f"{rec.id} running")
        return rep

    async def _exited_at_start(self, rep: Replica, err: ZLayerError) -> bool:
        """After a failed start: did the process run and exit (rather than never start), and does the restart
        policy restart it? Then the replica is left to the supervisor."""
        try:
            state = await self.runtime.state(rep.cid)
        except ZLayerError:
            return False
        if state.status not in ("exited", "failed") or state.exit_code is None:
            return False
        if not self._should_restart(rep, state.exit_code):
            return False
        rep.record.state, rep.record.exit_code, rep.record.last_error = "exited", state.exit_code, str(err)
        rep.record.oom_killed = state.oom_killed
        await self.store.put_container(rep.record)
        return True

    async def _pull(self, deployment: str, view: ServiceView) -> None:
        """Once per rollout, not per replica; a failure names the image and fails the service."""
        try:
            await self.runtime.pull(view.image, policy=view.pull_policy)
        except ZLayerError as e:
            await self._event(deployment, "pull_failed", with_context(view.name, e))
            raise

    async def _create_and_start(self, rep: Replica) -> None:
        # Bounded: a deploy of hundreds of replicas starts them side by side, but not all at once (each start is
        # a shim process, a mount and netlink work; beyond a few dozen they only queue up in the kernel).
        async with self._start_slots:
            await self._create_and_start_now(rep)

    async def _create_and_start_now(self, rep: Replica) -> None:
        with contextlib.suppress(ZLayerError):
            await self.runtime.remove(rep.cid, force=True)  # a stale container with the same id
        await self.runtime.create(rep.cid, self._container_spec(rep))
        wired = False
        if self.network is not None and not rep.service.host_network:
            # A created container already has its namespaces (its init waits before exec): plumb eth0 now, so
            # the process finds its network from its first instruction.
            created = await self.runtime.state(rep.cid)
            if created.pid > 0:
                rep.record.ip = await self.network.attach(rep.deployment, rep.service.name, rep.record.id, created.pid)
                wired = True
        await self.runtime.start(rep.cid)
        state = await self.runtime.state(rep.cid)
        rep.record.pid = state.pid
        rep.record.state = "running"
        rep.record.exit_code = None
        rep.record.oom_killed = False
        if self.network is not None and not rep.service.host_network:
            if not wired:
                rep.record.ip = await self.network.attach(rep.deployment, rep.service.name, rep.record.id, state.pid)
            mappings = rep.service.raw.get("port_mappings")
            if mappings and rep.record.ip and hasattr(self.network, "publish"):
                from zlayer.net import port_mappings

                await self.network.publish(rep.record.id, port_mappings(mappings))
        await self.store.put_container(rep.record)
        if self.metrics is not None:
            self.metrics.container_state(rep.record.id, "running")

    def _container_spec(self, rep: Replica) -> Any:
        """The spec handed to the runtime: the service's, with the node DNS server first when there is one."""
        dns = (
            list(self.network.dns_servers())
            if self.network is not None and hasattr(self.network, "dns_servers")
            else []
        )
        if rep.service.host_network or not dns:
            return rep.model if rep.model is not None else rep.service.raw
        if rep.model is not None and hasattr(rep.model, "model_copy"):
            return rep.model.model_copy(update={"dns": dns + list(getattr(rep.model, "dns", None) or [])})
        return {**rep.service.raw, "dns": dns + list(rep.service.raw.get("dns") or [])}

    async def _run_init(self, rep: Replica, phase: str) -> None:
        steps = [s for s in rep.service.init_steps if (s.uses == "init.run") == (phase == "after")]
        if not steps:
            return
        policy = rep.service.on_init_failure
        delays = [0.1] * 3 if policy == "restart" else [1.0, 2.0, 4.0] if policy == "backoff" else []
        for attempt in range(len(delays) + 1):
            try:
                for step in steps:
                    try:
                        await asyncio.wait_for(run_init_step(step, self._exec_fn(rep)), step.timeout)
                    except (ZLayerError, TimeoutError) as e:
                        why = (
                            f"init step {step.id!r} ({step.uses}) timed out after {step.timeout:g}s"
                            if isinstance(e, TimeoutError)
                            else str(e)
                        )
                        if step.on_failure == "fail":
                            raise RuntimeFailure(why, where=f"services.{rep.service.name}.init") from e
                        if step.on_failure == "warn":
                            await self._event(rep.deployment, "init_warning", f"{rep.record.id}: {why}")
                return
            except RuntimeFailure:
                if attempt >= len(delays):
                    raise
                await asyncio.sleep(delays[attempt])

    def _exec_fn(self, rep: Replica) -> Any:
        async def run(argv: list[str]) -> tuple[int, str]:
            res = await self.exec(rep.record, argv)
            return res.exit_code, (res.stdout + res.stderr).decode(errors="replace")

        return run

    async def exec(self, rec: ContainerRecord, argv: list[str]) -> ExecResult:
        """Run ``argv`` in a replica's container, then :meth:`exec_done`."""
        res = await self.runtime.exec(ContainerId.parse(rec.id), argv)
        await self.exec_done(rec, argv, res)
        return res

    async def exec_done(self, rec: ContainerRecord, argv: list[str], res: ExecResult) -> None:
        """What an ended exec tells about its replica: an OOM kill while it ran is recorded on the replica (its
        ``oom_killed``, as Docker's State.OOMKilled) and reported as an ``exec_oom_killed`` event."""
        if not res.oom_killed:
            return
        rep = self.replicas.get(rec.id)
        record = rep.record if rep is not None else rec  # the live record: the supervisor writes that one
        record.oom_killed = True
        await self.store.put_container(record)
        await self._event(
            record.deployment,
            "exec_oom_killed",
            f"{record.id} OOMKilled: the kernel's OOM killer ended a process at the memory limit while "
            f"`{shlex.join(argv)}` ran (its exit code {res.exit_code})",
        )

    def _watch(self, rep: Replica) -> None:
        rep.tasks = [
            asyncio.create_task(self._supervise(rep), name=f"supervise {rep.key}"),
            asyncio.create_task(self._health_loop(rep), name=f"health {rep.key}"),
        ]

    async def _stop_replica(self, rec: ContainerRecord, timeout: float) -> None:
        """Stop and remove one replica. Every step runs even when an earlier one failed (a container that will not
        stop is still removed by force, its veth and its record still go); the first failure is raised at the end
        and the record is kept, so a later ``down`` retries."""
        rep = self.replicas.pop(rec.id, None)
        cid = ContainerId.parse(rec.id)
        if rep is not None:
            rep.stopping = True
            for t in rep.tasks:
                t.cancel()
            # A supervisor cancelled inside a restart must finish unwinding (the runtime removes what it had half
            # made) before this stop looks at the container, or the two race and a container outlives its record.
            await asyncio.gather(*(t for t in rep.tasks if t is not asyncio.current_task()), return_exceptions=True)
            if rep.healthy and self.proxy is not None:
                rep.healthy = False
                await self._publish(rep.deployment, rep.service)
        async with self._stop_slots:
            errors = await self._teardown(rec, cid, timeout)
        if self.metrics is not None:
            self.metrics.container_gone(rec.id)
        if errors:
            log.warning("removing %s: %s", rec.id, "; ".join(map(str, errors)))
            rec.state, rec.last_error = "failed", f"could not be removed: {errors[0]}"
            with contextlib.suppress(ZLayerError):
                await self.store.put_container(rec)
            await self._event(rec.deployment, "replica_remove_failed", with_context(rec.id, errors[0]))
            err = errors[0]
            raise err if isinstance(err, ZLayerError) else RuntimeFailure(f"removing {rec.id}: {err}")
        await self.store.delete_container(rec.id)
        await self._event(rec.deployment, "replica_stopped", f"{rec.id} stopped")

    async def _teardown(self, rec: ContainerRecord, cid: ContainerId, timeout: float) -> list[BaseException]:
        errors: list[BaseException] = []
        # Out of the proxy first, then stopped while still on the network (requests it is serving finish, its
        # clients see it close), and only then detached: a veth removed under a live process leaves them hanging.
        try:
            await self.runtime.stop(cid, timeout=timeout)
        except (NotFoundError, ConflictError):
            pass
        except Exception as e:
            errors.append(e)
        if self.network is not None:
            try:
                await self.network.detach(rec.deployment, rec.service, rec.id)
            except Exception as e:
                errors.append(e)
        try:
            await self.runtime.remove(cid, force=True)
        except NotFoundError:
            pass
        except Exception as e:
            errors.append(e)
        return errors

    async def _await_healthy(self, rep: Replica) -> None:
        """Wait until the replica passed a health check; a replica that keeps failing fails the rollout."""
        h = rep.service.health
        limit = (h.start_grace + (h.interval + h.timeout) * (h.retries + 1) + 10.0) * self.health_scale
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

    # ---------------------------------------------------------------------------------------------- watching

    async def _health_loop(self, rep: Replica) -> None:
        h = rep.service.health
        await asyncio.sleep(h.start_grace * self.health_scale)
        interval = h.interval * self.health_scale
        port = rep.service.backend_port
        ever_healthy, startup_delay = False, 0.05
        due = 0.0
        while not rep.stopping:
            if rep.record.state != "running":
                await asyncio.sleep(min(interval, 1.0))
                continue
            res = await run_health_check(h, rep.record.ip, port, self._exec_fn(rep))
            if self.metrics is not None:
                self.metrics.health_result(rep.service.name, res.ok)
            rep.health_detail = res.detail
            was = rep.healthy
            if res.ok:
                rep.failing_streak = 0
                interval = h.interval * self.health_scale
            else:
                rep.failing_streak += 1
                if rep.failing_streak >= h.retries:
                    interval = min(interval * 2, 60.0)
            rep.healthy = res.ok
            if rep.healthy != was:
                rep.record.health = "healthy" if res.ok else "unhealthy"
                await self._save(rep.record)
                await self._publish(rep.deployment, rep.service)
                await self._event(rep.deployment, "health", f"{rep.key}: {rep.record.health} ({res.detail})")
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

    def _should_restart(self, rep: Replica, exit_code: int) -> bool:
        kind = rep.service.restart_kind
        if kind == "no":
            return False
        if kind == "always" or kind == "unless_stopped":
            return True
        if kind == "on_failure":
            limit = rep.service.restart_max_attempts
            return exit_code != 0 and (limit is None or rep.record.restarts < limit)
        return exit_code != 0 and rep.service.on_panic == "restart"

    async def _supervise(self, rep: Replica) -> None:
        while not rep.stopping:
            try:
                final = await self.runtime.wait(rep.cid)
            except NotFoundError:
                final = None
            if rep.stopping:
                return
            code = final.exit_code if final and final.exit_code is not None else -1
            oom = bool(final and final.oom_killed)
            lines = await self._tail(rep.cid, LOG_TAIL_ON_EXIT)
            rep.healthy = False
            await self._publish(rep.deployment, rep.service)
            rep.record.exit_code = code
            rep.record.oom_killed = oom
            rep.record.health = "unknown"
            if oom:
                await self._event(
                    rep.deployment,
                    "replica_oom_killed",
                    f"{rep.key} OOMKilled: the kernel's OOM killer ended it at its memory limit (exit code {code})",
                )
            tail = "\n".join(lines[-10:])
            if not self._should_restart(rep, code):
                rep.record.state = "exited" if code == 0 else "failed"
                rep.record.last_error = _exit_text(code, oom) + (f"; last lines:\n{tail}" if tail else "")
                await self._save(rep.record)
                if self.metrics is not None:
                    self.metrics.container_state(rep.key, rep.record.state)
                await self._event(rep.deployment, "replica_exited", f"{rep.key} {_exit_text(code, oom)}")
                return
            now = time.monotonic()
            rep.crashes = [t for t in rep.crashes if now - t < CRASH_WINDOW] + [now]
            delay = min(BACKOFF_BASE * 2 ** (len(rep.crashes) - 1), BACKOFF_CAP) * min(self.health_scale * 10, 1.0)
            rep.record.state = "backoff"
            rep.record.last_error = f"{_exit_text(code, oom)}; restart {rep.record.restarts + 1} in {delay:.1f}s" + (
                f"; last lines:\n{tail}" if tail else ""
            )
            await self._save(rep.record)
            await self._event(
                rep.deployment, "replica_crashed", f"{rep.key} {_exit_text(code, oom)}; backoff {delay:.1f}s"
            )
            if self.metrics is not None:
                self.metrics.container_state(rep.key, "backoff")
            await asyncio.sleep(delay)
            if rep.stopping:
                return
            try:
                await self._create_and_start(rep)
                await self._run_init(rep, phase="after")
                rep.record.restarts += 1
                await self._save(rep.record)
                if self.metrics is not None:
                    self.metrics.restart(rep.service.name)
                await self._event(rep.deployment, "replica_restarted", f"{rep.key} restarted")
            except (ZLayerError, OSError) as exc:  # a full disk too: said, and tried again after the backoff
                e = exc if isinstance(exc, ZLayerError) else from_os_error(exc, f"restarting {rep.key}") or exc
                rep.record.restarts += 1
                rep.record.last_error = f"restart failed: {e}"
                await self._save(rep.record)
                # wait() on a container that never started returns at once; the backoff above paces retries

    async def _save(self, rec: ContainerRecord) -> None:
        """Write a replica's record from the loops that watch it. A state that cannot be written (a full disk) is
        logged in one line and the loop goes on: the record in memory stays right and is written with the next
        change, where a raised error would have ended the replica's supervision."""
        try:
            await self.store.put_container(rec)
        except ZLayerError as e:
            log.warning("replica %s: its record was not written: %s", rec.id, e)

    async def _tail(self, cid: ContainerId, n: int) -> list[str]:
        out: list[str] = []
        try:
            async for line in self.runtime.logs(cid, tail=n):
                out.append(f"[{line.stream}] {line.message}")
        except ZLayerError:
            pass
        return out

    async def _publish(self, deployment: str, view: ServiceView) -> None:
        if self.proxy is None:
            return
        port = view.backend_port
        backends = [
            Backend(r.key, r.record.ip or "127.0.0.1", port)
            for r in self.replicas.values()
            if r.deployment == deployment and r.service.name == view.name and r.healthy and not r.stopping
        ]
        try:
            await self.proxy.update_service(deployment, view, backends)
            self._in_proxy[(deployment, view.name)] = len(backends)
        except ZLayerError as e:
            await self._event(deployment, "proxy_error", with_context(view.name, e))

    # ---------------------------------------------------------------------------------------------- restart

    async def restore(self) -> None:
        """Re-adopt running containers after a daemon restart, remove orphans, then converge every deployment."""
        known = {c.id: c for c in await self.store.list_containers()}
        try:
            infos = await self.runtime.list()
        except ZLayerError as e:
            log.warning("cannot list containers: %s", e)
            infos = []
        live = {i.id: i for i in infos}
        deployments = {d.name: d for d in await self.store.list_deployments()}
        for cid_text, info in live.items():
            if cid_text.startswith("job-"):
                continue  # job containers belong to the JobManager
            rec = known.get(cid_text)
            # "pending": the old daemon stopped between starting it and recording it running (its after-start init,
            # address and port mappings unrecorded): it is replaced, not adopted half-known.
            if rec is None or rec.deployment not in deployments or rec.state in ("failed", "exited", "pending"):
                await self._forget(cid_text, live=True)
                continue
            if not info.state.running:
                continue
            svc = await self.store.get_service(rec.deployment, rec.service)
            if svc is None:
                continue
            view = service_view(rec.service, svc.spec)
            rec.pid = info.state.pid
            rep = Replica(rec.deployment, view, ContainerId.parse(rec.id), rec)
            # Its last known health stands until its first check: a healthy replica stays behind the proxy meanwhile.
            rep.healthy = rec.health == "healthy"
            self.replicas[rec.id] = rep
            self._watch(rep)
        for rec in known.values():
            if rec.id not in self.replicas:  # died while no daemon watched, or never started
                await self._forget(rec.id, live=rec.id in live)
        for dep in deployments.values():
            if dep.status == "stopped":
                continue
            try:
                parsed = parse_deployment(dep.spec_yaml)
            except ZLayerError as e:
                await self.store.set_deployment_status(dep.name, "failed", f"stored spec no longer parses: {e}")
                continue
            self._spawn_converge(parsed)
        if self._warm is None:
            self._warm = asyncio.create_task(asyncio.to_thread(_warm_up), name="warm up")

    async def _forget(self, container: str, live: bool) -> None:
        """A container the restarted daemon does not adopt: removed from the runtime, its address, veth, service
        DNS entry and port mappings released (they would leak one lease per restart), its record dropped."""
        if live:
            with contextlib.suppress(ZLayerError):
                await self.runtime.remove(ContainerId.parse(container), force=True)
        if self.network is not None:
            with contextlib.suppress(ZLayerError, OSError):
                await self.network.detach("", "", container)
        await self.store.delete_container(container)

    async def close(self) -> None:
        """Stop watching (containers keep running, the next daemon re-adopts them)."""
        self._closing = True
        tasks = [t for t in self._deploy_tasks.values() if not t.done()]
        for rep in self.replicas.values():
            tasks.extend(rep.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------------------------------------- views

    async def _event(self, deployment: str, kind: str, message: str) -> None:
        try:
            await self.store.add_event(deployment, kind, message)
        except ZLayerError as e:  # the journal loses a line; what happened stands (a full disk must not undo a down)
            log.warning("event %s of %s not recorded: %s", kind, deployment, e)
            return
        async with self._event_waiters:
            self._event_waiters.notify_all()

    async def follow_events(self, deployment: str, after: int = 0) -> AsyncIterator[Any]:
        """Events of a deployment from ``after`` on, waiting for new ones (ends when the deployment is deleted)."""
        while True:
            events = await self.store.list_events(deployment, after)
            for ev in events:
                after = ev.seq
                yield ev
            if await self.store.get_deployment(deployment) is None:
                return
            async with self._event_waiters:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event_waiters.wait(), 15.0)

    def replica_health(self, container_id: str) -> tuple[str, int, str]:
        rep = self.replicas.get(container_id)
        if rep is None:
            return "unknown", 0, ""
        return (
            ("healthy" if rep.healthy else "unhealthy" if rep.failing_streak else "starting"),
            (rep.failing_streak),
            rep.health_detail,
        )

    async def service_logs(self, deployment: str, service: str, lines: int, instance: str | None) -> list[str]:
        recs = await self.store.list_containers(deployment, service)
        out: list[str] = []
        for rec in recs:
            if instance and not (instance == str(rec.replica) or instance in rec.id):
                continue
            out.extend(await self._tail(ContainerId.parse(rec.id), lines))
        return out


__all__ = ["Replica", "ServiceManager"]
