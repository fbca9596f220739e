"""The service manager: the agent's face to the API, and the one place its parts are wired together.

What it does is in the parts, one concern each: :mod:`~zlayer.agent.converge` (deploy, rollout, scale, depends),
:mod:`~zlayer.agent.lifecycle` (create, init, start and tear down one replica), :mod:`~zlayer.agent.supervisor`
(restarts and backoff), :mod:`~zlayer.agent.health` (checks), :mod:`~zlayer.agent.publish` (proxy and network),
:mod:`~zlayer.agent.readopt` (after a daemon restart) and :mod:`~zlayer.agent.events`. Everything decided is written
to the :class:`zlayer.state.Store` before or as it happens, so a restarted daemon re-adopts what is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zlayer.agent.autoscale import DEFAULT_INTERVAL, Autoscaler, ClusterMetrics, Decision, ScalableService
from zlayer.agent.converge import SCALE_DOWN_STOP_TIMEOUT, Converger, stop_grace
from zlayer.agent.events import Events
from zlayer.agent.externals import ExternalRoutes
from zlayer.agent.health import HealthMonitor
from zlayer.agent.hooks import (
    AgentMetrics,
    AssignmentHook,
    ClusterTrafficHook,
    ImageDigests,
    JobHook,
    NetworkHook,
    PortHook,
    ProxyHook,
    PublishedPort,
    SecretsHook,
    TrafficHook,
)
from zlayer.agent.lifecycle import Lifecycle
from zlayer.agent.publish import Publisher
from zlayer.agent.readopt import readopt
from zlayer.agent.replica import Replica
from zlayer.agent.spans import tracer
from zlayer.agent.standalone import StandaloneContainers
from zlayer.agent.supervisor import Supervisor
from zlayer.agent.usage import LocalUsage
from zlayer.errors import ConflictError, NotFoundError, RuntimeFailure, UsageError, ZLayerError, with_context
from zlayer.runtime.drivers import Drivers
from zlayer.runtime.protocol import ContainerId, ExecResult, Runtime
from zlayer.spec.loader import parse_deployable
from zlayer.state import ContainerRecord, DeploymentRecord, EventRecord, ServiceRecord, Store

if TYPE_CHECKING:
    from zlayer.spec.models import DeploymentSpec, ServiceSpec

log = logging.getLogger("zlayer.agent")

REMOVE_STOP_TIMEOUT = 10.0  # a container removed through the API: the runtime's default grace
SHARES_DOWN_MARGIN = 30.0  # a cluster down waits this long beyond the longest grace period for the other nodes
_WARM_SPEC = "version: v1\ndeployment: warm-up\nservices:\n  web:\n    image: {name: warm/up}\n"


def _warm_up() -> None:
    """Load, off the event loop and once the daemon is up, what the first deploy needs: the spec models (imported
    lazily by the spec package, their validators built at import: ~0.3 s, ~3 MB) that the first ``zlayer deploy``
    then no longer waits for. Parsing a minimal spec pulls in exactly what a real one uses."""
    with contextlib.suppress(Exception):
        parse_deployable(_WARM_SPEC)
    # What start-up allocated and dropped (import-time garbage, compile buffers) goes back to the system instead
    # of sitting in the heap of an idle daemon.
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ServiceManager:
    """Deploy, scale, tear down and supervise services with the node's workload drivers."""

    def __init__(
        self,
        store: Store,
        drivers: Drivers | Runtime,
        *,
        network: NetworkHook | None = None,
        proxy: ProxyHook | None = None,
        jobs: JobHook | None = None,
        images: ImageDigests | None = None,
        metrics: AgentMetrics | None = None,
        ports: PortHook | None = None,
        secrets: SecretsHook | None = None,
        traffic: TrafficHook | None = None,
        assignments: AssignmentHook | None = None,
        cluster: ClusterTrafficHook | None = None,
        cluster_metrics: ClusterMetrics | None = None,
        health_scale: float = 1.0,
        autoscale_interval: float = DEFAULT_INTERVAL,
        standalone_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.ports = ports
        self.secrets = secrets
        self.drivers = drivers if isinstance(drivers, Drivers) else Drivers({"linux": drivers})
        self.metrics = metrics
        self.events = Events(store)
        replicas: dict[str, Replica] = {}
        self.publisher = Publisher(replicas, self.events, proxy, network, traffic, cluster)
        self.lifecycle = Lifecycle(store, self.events, self.publisher, metrics, replicas, secrets)
        self.health = HealthMonitor(store, self.events, self.publisher, self.lifecycle.exec_fn, metrics, health_scale)
        self.externals = ExternalRoutes(proxy)
        self.supervisor = Supervisor(store, self.events, self.publisher, self.lifecycle, self.health, metrics,
                                     health_scale)  # fmt: skip
        self.converger = Converger(store, self.events, self.drivers, self.lifecycle, self.supervisor, self.health,
                                   self.publisher, self.externals, jobs, images, health_scale, secrets,
                                   assignments)  # fmt: skip
        self.assignments = assignments
        self.standalone = StandaloneContainers(store, self.events, self.drivers, self.lifecycle, standalone_dir)
        self._specs: dict[str, DeploymentSpec] = {}  # the deployed spec of every deployment, by name
        self._revisions: dict[str, int] = {}  # the revision of each that this node converges to
        self._deploy_tasks: dict[str, asyncio.Task[None]] = {}
        self._settling: dict[str, asyncio.Task[None]] = {}  # a cluster deploy waiting for the other nodes' shares
        self._unrecorded: dict[str, tuple[str, str]] = {}  # deployment → (status, message) the store could not take
        self._warm: asyncio.Task[None] | None = None
        self.autoscaler = Autoscaler(
            self._scalable,
            LocalUsage(replicas, traffic),
            self._autoscale,
            self.events.add,
            autoscale_interval,
            cluster_metrics,
        )

    @property
    def replicas(self) -> dict[str, Replica]:
        """The live replicas this daemon watches, by container id."""
        return self.lifecycle.replicas

    # ---------------------------------------------------------------------------------------------- deployments

    async def deploy(self, text: str) -> DeploymentRecord:
        """Validate and store a spec (the one validation: below here everything is the typed spec), then converge
        in the background. Invalid specs, and specs asking for a port something else holds, change nothing."""
        spec = parse_deployable(text)
        spec.service_order()  # unknown, self- and circular dependencies are refused now
        for name, svc in spec.services.items():
            self.drivers.check(name, svc)
        if self.ports is not None:
            await self.ports.admit(spec, self._specs)
        if self.secrets is not None:
            await self.secrets.check(spec)
        data = spec.model_dump(mode="json", exclude_none=True)
        services = [
            ServiceRecord(spec.deployment, name, data["services"][name], svc.initial_replicas)
            for name, svc in spec.services.items()
        ]
        if await self.store.get_deployment(spec.deployment) is not None:
            # A scale set through the API survives a redeploy of an unchanged manual service; an adaptive one keeps
            # the count the autoscaler (or `zlayer scale`) reached, within its new bounds.
            for rec in services:
                prev = await self.store.get_service(spec.deployment, rec.name)
                mode, lo, hi = spec.services[rec.name].replicas_hint()
                if prev is not None and mode == "manual":
                    rec.desired_replicas = prev.desired_replicas
                elif prev is not None and mode == "adaptive" and spec.services[rec.name].rtype == "service":
                    rec.desired_replicas = min(hi, max(lo, prev.desired_replicas))
        try:
            record = await self.store.put_deployment(spec.deployment, text, data, services, status="deploying")
        except ZLayerError as e:  # one transaction: nothing of it was stored
            raise e.add_context(f"deployment {spec.deployment} was not stored") from None
        self._unrecorded.pop(spec.deployment, None)  # the stored "deploying" is the status now
        self._specs[spec.deployment] = spec
        self._revisions[spec.deployment] = record.revision
        await self.events.add(spec.deployment, "deploy", f"revision {record.revision} submitted")
        self._spawn_converge(spec, "deploy")
        return record

    def _spawn_converge(self, spec: DeploymentSpec, how: str = "restore") -> None:
        """``how``: ``deploy`` (this node took it: in a cluster, done once every node's share is), ``restore``, or
        ``share`` (this node's share of a deploy another node took: only a failure is said, that node says done)."""
        for prev in (self._deploy_tasks.get(spec.deployment), self._settling.pop(spec.deployment, None)):
            if prev is not None and not prev.done():
                prev.cancel()
        self._deploy_tasks[spec.deployment] = asyncio.create_task(self._converge(spec, how))

    async def wait_deployed(self, name: str) -> None:
        task = self._deploy_tasks.get(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _converge(self, spec: DeploymentSpec, how: str = "restore") -> None:
        with tracer.start_as_current_span("deploy", attributes={"zlayer.deployment": spec.deployment}):
            await self._converge_now(spec, how)

    async def _converge_now(self, spec: DeploymentSpec, how: str = "restore") -> None:
        name = spec.deployment
        started = time.monotonic()
        failures: list[str] = []
        try:
            record = await self.store.get_deployment(name)
            revision = record.revision if record else 1
            failures = await self.converger.deployment(spec, revision)
            if how == "deploy" and not failures and self.assignments is not None and self.assignments.clustered():
                # in a cluster, done once the other nodes' shares are: waited for apart, so that this node's own
                # converges of the deployment (its share, placed a moment later) need not wait for it
                self._settling[name] = asyncio.create_task(self._settle(spec, revision))
                return
            if failures:
                await self._set_status(name, "failed", "; ".join(failures))
                await self.events.add(name, "deploy_failed", "; ".join(failures))
            elif how != "share":  # this node's share of a deploy another node took: that node says it done
                await self._set_status(name, "running")
                await self.events.add(name, "deploy_done", f"revision {revision} running")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the deploy task must always leave a status behind
            if isinstance(e, ZLayerError):  # the state itself may be what failed (a full disk): said in one line
                log.error("deploy of %s failed: %s", name, e)
            else:
                log.exception("deploy of %s failed", name)
            said = str(e) if isinstance(e, ZLayerError) else f"internal error: {e}"
            failures = [said]
            await self._set_status(name, "failed", said)
            await self.events.add(name, "deploy_failed", said)  # what `zlayer deploy` waits for
        finally:
            if self.metrics is not None:
                self.metrics.deploy_finished(time.monotonic() - started, not failures)

    async def _settle(self, spec: DeploymentSpec, revision: int) -> None:
        assert self.assignments is not None
        name = spec.deployment
        try:
            failures = await self.assignments.settled(spec)
            if failures:
                await self._set_status(name, "failed", "; ".join(failures))
                await self.events.add(name, "deploy_failed", "; ".join(failures))
            else:
                await self._set_status(name, "running")
                await self.events.add(name, "deploy_done", f"revision {revision} running")
        except ZLayerError as e:
            log.error("deploy of %s: %s", name, e)
            await self._set_status(name, "failed", str(e))
            await self.events.add(name, "deploy_failed", str(e))

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

    async def _cancel_work(self, name: str) -> None:
        """Cancel the deployment's settling watch and its deploy task still running, and wait for the task to end."""
        settling = self._settling.pop(name, None)
        if settling is not None:
            settling.cancel()
        task = self._deploy_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def delete(self, name: str) -> None:
        """Stop and remove every replica of the deployment, close its listeners, forget it."""
        # Read before anything is awaited: in a cluster this node's own watch hears of the stop below and forgets the
        # spec meanwhile, and each replica must still get its service's stop_grace_period, not the 30 s default.
        deployed = self._specs.get(name)
        record = await self.store.get_deployment(name)
        if record is None:
            raise NotFoundError(f"deployment {name!r} not found")
        await self._cancel_work(name)
        clustered = self.assignments is not None and self.assignments.clustered()
        try:
            if clustered:
                assert self.assignments is not None
                await self.assignments.down_begins(name)
            # in a cluster, the other nodes take their share down on hearing of this
            await self.store.set_deployment_status(name, "stopped")
        except ZLayerError as e:  # the state cannot be written (a full disk): touch nothing, so it stays true
            raise e.add_context(f"deployment {name} was not removed") from None
        # Services go down side by side (each one's replicas in parallel too): a down costs one grace period, not
        # one per replica. A service that fails to go keeps the deployment (status failed) so a retry finds it.
        stored = await self.store.list_services(name)
        services = {s.name for s in stored} | {c.service for c in await self.store.list_containers(name)}
        specs: dict[str, ServiceSpec] = {}
        for s in stored:
            with contextlib.suppress(ValueError):  # a stored form that no longer reads: its replicas' own specs
                specs[s.name] = self.service_spec(s)
        if deployed is not None:
            specs.update(deployed.services)
        results = await asyncio.gather(
            *(self.converger.remove_service(name, s, specs.get(s)) for s in sorted(services)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        notes: list[str] = []
        if clustered:  # done once every other node's share is down too, or said why not
            assert self.assignments is not None
            grace = max((stop_grace(s) for s in specs.values()), default=SCALE_DOWN_STOP_TIMEOUT)
            failures, notes = await self.assignments.shares_down(name, grace + SHARES_DOWN_MARGIN)
            errors += [RuntimeFailure(f) for f in failures]
        if errors:
            msg = "; ".join(str(e) for e in errors)
            # in a cluster it stays stopped: another node would run a failed deployment again
            await self.store.set_deployment_status(name, "stopped" if clustered else "failed",
                                                   f"teardown incomplete: {msg}")  # fmt: skip
            await self.events.add(name, "delete_failed", msg)
            err = errors[0]
            raise err if isinstance(err, ZLayerError) else RuntimeFailure(f"removing {name}: {err}")
        await self.externals.remove(name)
        await self.store.delete_deployment(name)
        if clustered:
            assert self.assignments is not None
            with contextlib.suppress(ZLayerError):
                await self.assignments.down_begins(name)  # what the nodes said goes with it
        self._specs.pop(name, None)
        self._unrecorded.pop(name, None)
        await self.events.add(name, "deleted", "; ".join(["deployment removed", *notes]))

    # ---------------------------------------------------------------------------------------------- cluster

    async def refresh(self, name: str) -> None:
        """The deployment changed elsewhere (a deploy through another node of the cluster): converge this node to
        its new revision; one stopped or gone there is taken down here."""
        rec = await self.store.get_deployment(name)
        if rec is None or rec.status == "stopped":
            errors = await self.forget(name)
            if rec is not None and self.assignments is not None:  # the node removing it waits to hear this
                await self.assignments.share_down(name, "; ".join(errors))
            return
        if self._revisions.get(name) == rec.revision:
            return
        try:
            spec = parse_deployable(rec.spec_yaml)
        except ZLayerError as e:
            log.warning("deployment %s revision %d does not parse here: %s", name, rec.revision, e)
            return
        self._specs[name], self._revisions[name] = spec, rec.revision
        self._spawn_converge(spec, "share")

    async def converge_service(self, deployment: str, service: str) -> None:
        """Bring one service to what this node is assigned now (the leader placed its replicas again)."""
        spec = self._specs.get(deployment)
        rec = await self.store.get_deployment(deployment)
        if rec is None or rec.status == "stopped":
            return
        if spec is None or self._revisions.get(deployment) != rec.revision:
            await self.refresh(deployment)  # converges every service of the new revision
            return
        svc = spec.services.get(service)
        if svc is None:
            return
        await self.wait_deployed(deployment)  # a converge in progress may have read the assignments before
        try:
            await self.converger.service(deployment, service, svc, rec.revision)
        except Exception as e:
            if not isinstance(e, ZLayerError):
                log.exception("converging %s/%s failed", deployment, service)
            await self.events.add(deployment, "service_failed", with_context(service, e))

    async def forget(self, name: str) -> list[str]:
        """Take down this node's replicas of a deployment the cluster removed, leaving the cluster's state alone;
        returns what could not be removed (``service: why``)."""
        await self._cancel_work(name)
        deployed = self._specs.pop(name, None)
        self._revisions.pop(name, None)
        services = {c.service for c in await self.store.list_containers(name)}
        errors: list[str] = []

        async def remove(s: str) -> None:  # side by side, as a down on this node: one grace period in all
            try:
                await self.converger.remove_service(name, s, deployed.services.get(s) if deployed else None)
            except ZLayerError as e:
                errors.append(with_context(s, e))

        await asyncio.gather(*(remove(s) for s in sorted(services)))
        if deployed is not None:
            for s in deployed.services:
                with contextlib.suppress(ZLayerError):
                    await self.publisher.unpublish(name, s)
            with contextlib.suppress(ZLayerError):
                await self.externals.remove(name)
        return sorted(errors)

    async def republish(self, deployment: str, service: str) -> None:
        """The proxy of this node gets the service's backends again (another node's changed) — unless the deployment
        is being removed: a republish that raced its removal takes back the route it put in again."""
        dep = await self.store.get_deployment(deployment)
        rec = await self.store.get_service(deployment, service)
        if dep is None or dep.status == "stopped" or rec is None:
            return
        spec = self.service_spec(rec)
        if spec.rtype != "service":
            return
        await self.publisher.publish(deployment, service, spec)
        dep = await self.store.get_deployment(deployment)
        if dep is None or dep.status == "stopped":  # removed meanwhile, its route maybe already taken away
            await self.publisher.unpublish(deployment, service)

    # ---------------------------------------------------------------------------------------------- services

    def service_spec(self, rec: ServiceRecord) -> ServiceSpec:
        """The typed spec of a stored service (the deployed one; else the stored form read back)."""
        from zlayer.spec.models import ServiceSpec

        deployed = self._specs.get(rec.deployment)
        if deployed is not None and rec.name in deployed.services:
            return deployed.services[rec.name]
        return ServiceSpec.model_validate(rec.spec)

    async def scale(
        self, deployment: str, service: str, replicas: int, stop_timeout: float | None = None
    ) -> ServiceRecord:
        """Set a service's desired replica count and converge to it."""
        if replicas < 0:
            raise UsageError("replicas must be >= 0", where="replicas")
        svc = await self.store.get_service(deployment, service)
        if svc is None:
            raise NotFoundError(f"service {service!r} not found in deployment {deployment!r}")
        spec = self.service_spec(svc)
        if spec.rtype != "service":
            raise ConflictError(f"{service!r} is a {spec.rtype}, it has no replicas to scale")
        mode, lo, hi = spec.replicas_hint()
        if mode == "adaptive" and replicas and not lo <= replicas <= hi:
            # As ZLayer documents: a manual count for an adaptive service is one the autoscaler may move again, so
            # it stays within the bounds the autoscaler keeps (0 stops the service, as `zlayer stop` does).
            raise UsageError(
                f"{service!r} scales adaptively between {lo} and {hi} replicas: {replicas} is outside that "
                f"(0 stops it; change scale.min/max in the spec for more)",
                where="replicas",
            )
        await self.store.set_service_desired(deployment, service, replicas)
        if mode == "adaptive":
            self.autoscaler.scaled(deployment, service, replicas)
        dep = await self.store.get_deployment(deployment)
        await self.events.add(deployment, "scale", f"{service} -> {replicas} replicas")
        revision = dep.revision if dep else 1
        await self.converger.service(deployment, service, spec, revision, desired=replicas, stop_timeout=stop_timeout)
        got = await self.store.get_service(deployment, service)
        assert got is not None
        return got

    async def remove_replica(self, rec: ContainerRecord, *, force: bool) -> None:
        """Stop and remove one container (the containers API). A service's replica goes as a scale-down takes it
        (out of the proxy, stopped, its address released) and the service converges back to its count in the
        background, so a new replica replaces it; any other container is just removed."""
        svc = await self.store.get_service(rec.deployment, rec.service)
        spec = self.service_spec(svc) if svc is not None else None
        if spec is not None and spec.rtype == "service":
            driver = self.drivers.for_service(spec)
            grace = spec.stop_grace_period if spec.stop_grace_period is not None else REMOVE_STOP_TIMEOUT
            await self.lifecycle.stop(rec, 0.0 if force else grace, driver)
            dep = await self.store.get_deployment(rec.deployment)
            if dep is not None and dep.status != "stopped":
                task = asyncio.create_task(self._replace(rec.deployment, rec.service, spec, dep.revision))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        cid = ContainerId.parse(rec.id)
        rep = self.lifecycle.replicas.pop(rec.id, None)
        if rep is not None:
            rep.stopping = True
            for t in rep.tasks:
                t.cancel()
        driver = rep.driver if rep is not None else self.drivers.default
        if not force:
            await driver.stop(cid, timeout=REMOVE_STOP_TIMEOUT)
        await driver.remove(cid, force=True)
        await self.store.delete_container(rec.id)

    _background: set[asyncio.Task[None]] = set()  # noqa: RUF012 - tasks kept alive until done, shared on purpose

    async def _replace(self, deployment: str, service: str, spec: ServiceSpec, revision: int) -> None:
        try:
            await self.converger.service(deployment, service, spec, revision)
        except Exception as e:  # reported as the deployment's event; the supervisor's next converge retries
            await self.events.add(deployment, "replica_replace_failed", with_context(service, e))

    async def exec(self, rec: ContainerRecord, argv: list[str]) -> ExecResult:
        """Run ``argv`` in a replica's container (the exec API); an OOM kill while it ran is recorded on it."""
        svc = await self.store.get_service(rec.deployment, rec.service)
        driver = self.drivers.for_service(self.service_spec(svc)) if svc is not None else self.drivers.default
        return await self.lifecycle.exec(rec, argv, driver)

    async def exec_done(self, rec: ContainerRecord, argv: list[str], res: ExecResult) -> None:
        """What an exec that ran elsewhere (attached, over a WebSocket) tells about its replica: see
        :meth:`Lifecycle.exec_done`."""
        await self.lifecycle.exec_done(rec, argv, res)

    # ---------------------------------------------------------------------------------------------- restart

    async def restore(self) -> None:
        """Re-adopt running containers after a daemon restart, remove orphans, then converge every deployment."""
        deployments = await self.store.list_deployments()
        services: dict[str, dict[str, ServiceSpec]] = {}
        for dep in deployments:
            try:
                self._specs[dep.name] = parse_deployable(dep.spec_yaml)
                self._revisions[dep.name] = dep.revision
                services[dep.name] = dict(self._specs[dep.name].services)
            except ZLayerError as e:
                # Its replicas still run as they were deployed: they are adopted from the stored services.
                await self.store.set_deployment_status(dep.name, "failed", f"stored spec no longer parses: {e}")
                stored = await self.store.list_services(dep.name)
                services[dep.name] = {svc.name: self.service_spec(svc) for svc in stored}
        taken = await self.standalone.restore()
        await readopt(self.store, self.drivers, self.lifecycle, self.supervisor, services, taken)
        await self.standalone.readopt()
        for dep in deployments:
            if dep.status != "stopped" and dep.name in self._specs:
                self._spawn_converge(self._specs[dep.name])
        if self._warm is None:
            self._warm = asyncio.create_task(asyncio.to_thread(_warm_up), name="warm up")
        self.autoscaler.start()

    # ---------------------------------------------------------------------------------------------- autoscaling

    async def _scalable(self) -> list[ScalableService]:
        """Adaptive services the autoscaler watches: of deployments not being removed, not stopped (0 replicas);
        those being deployed or converging are measured but not moved."""
        out: list[ScalableService] = []
        for name, spec in list(self._specs.items()):
            # A round runs every interval: only deployments with an adaptive service are read, and of them only
            # their status and counts (a spec decoded for each service each round was most of a round's cost).
            adaptive = {n: s for n, s in spec.services.items() if s.rtype == "service" and s.scale_mode == "adaptive"}
            view = await self.store.scale_view(name) if adaptive else None
            if view is None:
                continue
            status = self._unrecorded.get(name, (view[0], ""))[0]  # status_of, without the record
            if status == "stopped":
                continue
            for svc_name, desired in view[1].items():
                svc = adaptive.get(svc_name)
                if svc is None or desired == 0:
                    continue
                busy = status == "deploying" or self.converger.lock(name, svc_name).locked()
                out.append(ScalableService(name, svc_name, svc, desired, busy))
        return out

    async def _autoscale(self, svc: ScalableService, d: Decision) -> None:
        """Carry out one decision through the converge a deploy uses: the count is stored, the step recorded as
        an event with its reason, new replicas join the proxy once healthy and removed ones are drained first."""
        dep = await self.store.get_deployment(svc.deployment)
        if dep is None:
            return
        await self.store.set_service_desired(svc.deployment, svc.name, d.target)
        kind = "scale_up" if d.target > svc.replicas else "scale_down"
        data: dict[str, object] = {"service": svc.name, "from": svc.replicas, "to": d.target, "reason": d.reason}
        if d.metric is not None and d.value is not None:
            data.update(metric=d.metric, value=round(d.value, 2))
        await self.events.add(
            svc.deployment, kind, f"{svc.name}: {svc.replicas} -> {d.target} replicas ({d.reason})", data
        )
        await self.converger.service(svc.deployment, svc.name, svc.spec, dep.revision, desired=d.target)

    def autoscale_status(self, rec: ServiceRecord) -> dict[str, object] | None:
        """The autoscaler's view of an adaptive service (averages, targets, why it holds or moves), else None."""
        from zlayer.spec.models import AdaptiveScale

        spec = self.service_spec(rec)
        if not isinstance(spec.scale, AdaptiveScale) or spec.rtype != "service":
            return None
        view = self.autoscaler.status(rec.deployment, rec.name, spec.scale)
        if self.autoscaler.interval <= 0:
            view["reason"] = "autoscaling is off on this node (serve --autoscale-interval 0)"
        elif rec.desired_replicas == 0:
            view["reason"] = "stopped (0 replicas): the autoscaler leaves it until it is scaled or deployed again"
        return view

    async def close(self) -> None:
        """Stop watching (containers keep running, the next daemon re-adopts them)."""
        await self.standalone.close()
        await self.autoscaler.close()
        tasks = [t for t in [*self._deploy_tasks.values(), *self._settling.values()] if not t.done()]
        for rep in self.lifecycle.replicas.values():
            tasks.extend(rep.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------------------------------------- views

    def follow_events(self, deployment: str, after: int = 0) -> AsyncIterator[EventRecord]:
        """Events of a deployment from ``after`` on, waiting for new ones (ends when the deployment is deleted)."""
        return self.events.follow(deployment, after)

    def published_ports(self, container_id: str) -> Sequence[PublishedPort]:
        """The container's port mappings as the node opened them."""
        return self.publisher.published(container_id)

    def replica_runtime(self, container_id: str) -> str:
        """The workload driver running a live replica (``linux``, ``wasm``; empty when none runs it now)."""
        rep = self.lifecycle.replicas.get(container_id)
        if rep is not None:
            return self.drivers.name_of(rep.driver)
        sa = self.standalone.by_id.get(container_id)  # a standalone container while it runs
        return self.drivers.name_of(self.drivers.for_service(sa.spec)) if sa is not None and sa.running else ""

    def replica_health(self, container_id: str) -> tuple[str, int, str]:
        return HealthMonitor.status(self.lifecycle.replicas.get(container_id))


__all__ = ["Replica", "ServiceManager"]
