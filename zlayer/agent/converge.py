"""Converge: bring what runs to what a deployment asks for — services side by side, each after its dependencies'
conditions; per service, a rolling replacement of outdated replicas (one new one healthy, then one old one stops),
then scale up in parallel or down from the highest replica number."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from zlayer.agent.events import Events
from zlayer.agent.externals import ExternalRoutes
from zlayer.agent.health import HealthMonitor
from zlayer.agent.hooks import AssignmentHook, ImageDigests, JobHook, SecretsHook
from zlayer.agent.lifecycle import Lifecycle, new_replica
from zlayer.agent.publish import Publisher
from zlayer.agent.replica import Replica
from zlayer.agent.spans import tracer
from zlayer.agent.supervisor import Supervisor
from zlayer.errors import RuntimeFailure, ZLayerError, from_os_error, with_context
from zlayer.runtime.drivers import Drivers
from zlayer.runtime.protocol import ContainerId, Runtime
from zlayer.state import ContainerRecord, Store

if TYPE_CHECKING:
    from zlayer.spec.models import DeploymentSpec, ServiceSpec

log = logging.getLogger("zlayer.agent")

SCALE_DOWN_STOP_TIMEOUT = 30.0
HANDOVER_TIMEOUT = 120.0  # a replica moved to another node stops at the latest this long after its move
HANDOVER_POLL = 0.5  # seconds between two looks at whether its replacement runs healthy


def stop_grace(spec: ServiceSpec) -> float:
    """How long a replica being removed gets between SIGTERM and SIGKILL: the spec's ``stop_grace_period`` when
    it sets one, else ZLayer's 30 s scale-down stop."""
    return spec.stop_grace_period if spec.stop_grace_period is not None else SCALE_DOWN_STOP_TIMEOUT


class Converger:
    """Runs converges; one at a time per service (a lock), any number of services at once."""

    def __init__(
        self,
        store: Store,
        events: Events,
        drivers: Drivers,
        lifecycle: Lifecycle,
        supervisor: Supervisor,
        health: HealthMonitor,
        publisher: Publisher,
        externals: ExternalRoutes,
        jobs: JobHook | None,
        images: ImageDigests | None,
        scale: float,
        secrets: SecretsHook | None = None,
        assignments: AssignmentHook | None = None,
    ) -> None:
        self.assignments = assignments
        self.secrets = secrets
        self.externals = externals
        self.store = store
        self.events = events
        self.drivers = drivers
        self.lifecycle = lifecycle
        self.supervisor = supervisor
        self.health = health
        self.publisher = publisher
        self.jobs = jobs
        self.images = images
        self.scale = scale
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._claimed: set[str] = set()  # replica ids chosen by a converge whose replica is not yet registered

    def lock(self, deployment: str, service: str) -> asyncio.Lock:
        return self._locks.setdefault((deployment, service), asyncio.Lock())

    # ------------------------------------------------------------------------------------------------ deployment

    async def deployment(self, spec: DeploymentSpec, revision: int) -> list[str]:
        """Converge every service of the deployment; returns the failures (``service: why``), sorted."""
        name = spec.deployment
        failures: list[str] = []
        running = {c.service for c in await self.store.list_containers(name)}
        for gone in sorted(running - set(spec.services)):
            await self.remove_service(name, gone, None)
        failures += await self.externals.apply(name, spec.externals)
        # Every service converges at once; one with `depends` first waits for its own dependencies' conditions
        # (not for services that merely come earlier in the order).
        failed_now: dict[str, str] = {}  # services whose converge failed in this deploy, and why

        async def one(svc: str) -> None:
            try:
                await self.wait_depends(name, svc, spec.services[svc], failed_now)
                await self.service(name, svc, spec.services[svc], revision)
            except Exception as exc:
                e = (from_os_error(exc, f"service {svc}") if isinstance(exc, OSError) else None) or exc
                if not isinstance(e, ZLayerError):
                    log.exception("converging %s/%s failed", name, svc)
                failed_now[svc] = str(e)
                failures.append(with_context(svc, e))
                await self.store.set_service_status(name, svc, "failed", str(e))
                await self.events.add(name, "service_failed", with_context(svc, e))

        await asyncio.gather(*(one(s) for s in spec.service_order()))
        return sorted(failures)

    async def remove_service(self, deployment: str, service: str, spec: ServiceSpec | None) -> None:
        """Stop every replica of the service (side by side) and close its listeners."""
        async with self.lock(deployment, service):
            driver = self.drivers.for_service(spec) if spec is not None else self.drivers.default
            recs = await self.store.list_containers(deployment, service)

            def grace(rec: ContainerRecord) -> float:  # without the spec: the one the live replica was started from
                live = self.lifecycle.replicas.get(rec.id)
                known = spec if spec is not None else live.spec if live is not None else None
                return stop_grace(known) if known is not None else SCALE_DOWN_STOP_TIMEOUT

            results = await asyncio.gather(
                *(self.lifecycle.stop(rec, grace(rec), driver) for rec in recs), return_exceptions=True
            )
            await self.publisher.unpublish(deployment, service)
            for r in results:
                if isinstance(r, BaseException):
                    raise r

    # ------------------------------------------------------------------------------------------------ service

    async def service(
        self,
        deployment: str,
        name: str,
        spec: ServiceSpec,
        revision: int,
        desired: int | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        """Converge one service to ``desired`` replicas (default: what the store says, else the spec's)."""
        if spec.rtype != "service":
            await self.store.set_service_status(deployment, name, "registered")
            if self.jobs is not None:
                await self.jobs.register(deployment, name, spec)
            return
        async with self.lock(deployment, name):
            await self._service(deployment, name, spec, revision, desired, stop_timeout)

    async def _service(
        self,
        deployment: str,
        name: str,
        spec: ServiceSpec,
        revision: int,
        desired: int | None,
        stop_timeout: float | None,
    ) -> None:
        if not self.drivers.decided(spec):
            await self.pull(deployment, name, spec)  # the image says which driver runs it (a WASM artifact: wasm)
        driver = self.drivers.for_service(spec)
        if desired is None and spec.image.pull_policy in ("always", "newer"):
            await self.pull(deployment, name, spec)  # a deploy looks for a newer image under the same name first
        if desired is None:
            rec = await self.store.get_service(deployment, name)
            desired = rec.desired_replicas if rec else spec.initial_replicas
        assigned = await self.assignments.replicas(deployment, name) if self.assignments is not None else None
        if assigned is not None:
            await self._assigned(deployment, name, spec, revision, driver, assigned, stop_timeout)
            return
        await self.store.set_service_status(deployment, name, "deploying")
        current = await self.store.list_containers(deployment, name)
        # Watched replicas are the live ones; a record nobody watches was left half-made (a cancelled rollout)
        # or has failed, and is replaced.
        live = self.lifecycle.replicas
        current_ok = [c for c in current if c.state != "failed" and c.id in live]
        for bad in [c for c in current if c not in current_ok]:
            await self.lifecycle.stop(bad, 1.0, driver)
        want = await self.build_hash(spec, deployment)
        outdated = [c for c in current_ok if c.spec_hash != want]
        fresh = [c for c in current_ok if c.spec_hash == want]
        next_index = await self._numbering(deployment, name, {c.replica for c in current_ok})

        async def start(index: int) -> Replica:
            rep = new_replica(deployment, name, spec, index, revision, want, driver)
            self._claimed.discard(rep.key)  # registered by start() before it first waits
            started = await self.lifecycle.start(rep)
            self.supervisor.watch(started)
            return started

        if outdated and len(fresh) < desired:
            await self.pull(deployment, name, spec)
        # Rolling replacement: one new replica healthy, then one old replica stops.
        while outdated and len(fresh) < desired:
            old = outdated.pop(0)
            new = await start(next_index())
            await self.health.await_healthy(new)
            fresh.append(new.record)
            await self.lifecycle.stop(old, stop_grace(spec), driver)
            next_index.free(old.replica)
        for old in outdated:
            await self.lifecycle.stop(old, stop_grace(spec), driver)
            next_index.free(old.replica)
        # Scale up in parallel, scale down from the highest replica number.
        if len(fresh) < desired:
            await self._start_side_by_side(
                deployment, name, spec, start, [next_index() for _ in range(desired - len(fresh))]
            )
        elif len(fresh) > desired:
            extras = sorted(fresh, key=lambda c: c.replica, reverse=True)[: len(fresh) - desired]
            grace = stop_grace(spec) if stop_timeout is None else stop_timeout
            await asyncio.gather(*(self.lifecycle.stop(extra, grace, driver) for extra in extras))
        await self.publisher.publish(deployment, name, spec)
        await self.store.set_service_status(deployment, name, "running")

    async def _start_side_by_side(
        self,
        deployment: str,
        name: str,
        spec: ServiceSpec,
        start: Callable[[int], Awaitable[Replica]],
        indices: list[int],
    ) -> None:
        """Start the replicas numbered ``indices`` in parallel and wait for them healthy. On a failure the proxy is
        given the ones that did start before the first error is raised."""
        await self.pull(deployment, name, spec)
        results = await asyncio.gather(*(start(i) for i in indices), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        started = [r for r in results if isinstance(r, Replica)]
        if errors:
            await self.publisher.publish(deployment, name, spec)
            raise errors[0] if isinstance(errors[0], ZLayerError) else RuntimeFailure(str(errors[0]))
        await asyncio.gather(*(self.health.await_healthy(r) for r in started))

    async def _assigned(
        self,
        deployment: str,
        name: str,
        spec: ServiceSpec,
        revision: int,
        driver: Runtime,
        assigned: set[int],
        stop_timeout: float | None,
    ) -> None:
        """A node of a cluster runs exactly the replicas the leader assigned to it: those it runs and no longer has
        go (moved or scaled away), outdated ones are replaced in place, missing ones start side by side. The
        service's status is the cluster's: an ``unschedulable`` one is left to the scheduler."""
        current = await self.store.list_containers(deployment, name)
        live = self.lifecycle.replicas
        current_ok = [c for c in current if c.state != "failed" and c.id in live]
        for bad in [c for c in current if c not in current_ok]:
            await self.lifecycle.stop(bad, 1.0, driver)
        want = await self.build_hash(spec, deployment)
        grace = stop_grace(spec) if stop_timeout is None else stop_timeout
        moved = [c for c in current_ok if c.replica not in assigned]
        outdated = [c for c in current_ok if c.replica in assigned and c.spec_hash != want]
        await asyncio.gather(*(self.lifecycle.stop(c, grace, driver) for c in outdated))
        have = {c.replica for c in current_ok if c not in moved and c not in outdated}
        missing = sorted(assigned - have)

        async def start(index: int) -> Replica:
            rep = new_replica(deployment, name, spec, index, revision, want, driver)
            started = await self.lifecycle.start(rep)
            self.supervisor.watch(started)
            return started

        # what moved away is handed over while what moved here starts: neither waits for the other
        results = await asyncio.gather(
            self._hand_over(deployment, name, moved, grace, driver),
            self._start_side_by_side(deployment, name, spec, start, missing) if missing else asyncio.sleep(0),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        await self.publisher.publish(deployment, name, spec)
        rec = await self.store.get_service(deployment, name)
        if rec is not None and not rec.status_message.startswith("unschedulable: ") and rec.status != "running":
            await self.store.set_service_status(deployment, name, "running")

    async def _hand_over(
        self, deployment: str, name: str, moved: list[ContainerRecord], grace: float, driver: Runtime
    ) -> None:
        """Stop the replicas assigned to another node now, each once its replacement runs healthy there (a drain
        leaves the service answering), at once when it is assigned nowhere (scaled away, or no node may take it),
        and at the latest after ``HANDOVER_TIMEOUT``. One assigned back here meanwhile goes on."""
        assert self.assignments is not None
        left = {c.replica: c for c in moved}
        deadline = time.monotonic() + HANDOVER_TIMEOUT
        while left:
            if time.monotonic() >= deadline:
                log.warning("%s/%s: replicas %s moved away; their replacements are not healthy after %gs, stopped "
                            "anyway", deployment, name, sorted(left), HANDOVER_TIMEOUT)  # fmt: skip
                ready = set(left)
            else:
                back = await self.assignments.replicas(deployment, name) or set()
                for r in back & set(left):
                    del left[r]
                ready = await self.assignments.handed_over(deployment, name, set(left)) if left else set()
            going = [left.pop(r) for r in sorted(ready)]
            await asyncio.gather(*(self.lifecycle.stop(c, grace, driver) for c in going))
            if left:
                await asyncio.sleep(HANDOVER_POLL)

    async def _numbering(self, deployment: str, service: str, used: set[int]) -> _Numbering:
        # Replica ids are ZLayer's `{service}-rep-{n}`, unique on the node: numbers another deployment's service of
        # the same name holds (running, starting or recorded) are skipped, never taken over.
        elsewhere = {c.id for c in await self.store.list_containers() if c.deployment != deployment}

        def taken(cid: str) -> bool:
            rep = self.lifecycle.replicas.get(cid)
            return cid in elsewhere or cid in self._claimed or (rep is not None and rep.deployment != deployment)

        return _Numbering(service, used, taken, self._claimed)

    async def build_hash(self, spec: ServiceSpec, deployment: str = "") -> str:
        """What a replica is built from: the spec, the content of its image when the node can tell (so a new
        image under the same name — re-imported, or pulled with ``always``/``newer`` — rolls the replicas too), and
        the versions of the secrets its env refers to (so a rollout after a rotation replaces it)."""
        digest = await self.images.digest(spec.image.name) if self.images is not None else None
        versions = await self.secrets.versions(deployment, spec.env) if self.secrets is not None else ""
        if digest is None and not versions:
            return spec.spec_hash
        extra = f"{digest} {versions}" if versions else str(digest)
        return hashlib.sha256(f"{spec.spec_hash} {extra}".encode()).hexdigest()[:16]

    async def pull(self, deployment: str, name: str, spec: ServiceSpec) -> None:
        """Once per rollout, not per replica; a failure names the image and fails the service."""
        attrs = {"container.image.name": spec.image.name, "zlayer.deployment": deployment, "zlayer.service": name}
        try:
            with tracer.start_as_current_span("image.pull", attributes=attrs):
                await self.drivers.for_service(spec).pull(spec.image.name, policy=spec.image.pull_policy)
        except ZLayerError as e:
            await self.events.add(deployment, "pull_failed", with_context(name, e))
            raise

    # ------------------------------------------------------------------------------------------------ depends

    async def wait_depends(
        self, deployment: str, name: str, spec: ServiceSpec, failed: dict[str, str] | None = None
    ) -> None:
        """Wait for each dependency's condition in turn; at its timeout (or at once when the dependency's own
        converge failed in this deploy) fail, warn or continue as ``on_timeout`` says."""
        failed = failed if failed is not None else {}
        for dep in spec.depends:
            deadline = time.monotonic() + dep.timeout
            while not self.condition_met(deployment, dep.service, dep.condition):
                if time.monotonic() >= deadline or dep.service in failed:
                    msg = (
                        f"dependency {dep.service!r} failed: {failed[dep.service]}"
                        if dep.service in failed
                        else f"dependency {dep.service!r} not {dep.condition} after {dep.timeout:g}s"
                    )
                    if dep.on_timeout == "fail":
                        raise RuntimeFailure(msg, where=f"services.{name}.depends")
                    if dep.on_timeout == "warn":
                        await self.events.add(deployment, "depends_timeout", f"{name}: {msg} (continuing)")
                    break
                await asyncio.sleep(min(1.0, self.scale))

    def condition_met(self, deployment: str, service: str, condition: str) -> bool:
        reps = [r for r in self.lifecycle.replicas.values() if r.deployment == deployment and r.service == service]
        if condition == "started":
            return any(r.record.state == "running" for r in reps)
        healthy = any(r.healthy for r in reps)
        if condition == "ready" and healthy and reps and self.publisher.fronted(reps[0].spec):
            # ready: the proxy already sends to it (as ZLayer: its route resolves to at least one backend)
            return self.publisher.in_proxy(deployment, service) > 0
        return healthy  # healthy, and ready for a service the proxy does not front


class _Numbering:
    """Hands out the lowest free replica number of one service, claiming its id until the replica is registered."""

    def __init__(self, service: str, used: set[int], taken: Callable[[str], bool], claimed: set[str]) -> None:
        self.service = service
        self.used = used
        self.taken = taken
        self.claimed = claimed

    def __call__(self) -> int:
        i = 1
        while i in self.used or self.taken(str(ContainerId(self.service, i))):
            i += 1
        self.used.add(i)
        self.claimed.add(str(ContainerId(self.service, i)))
        return i

    def free(self, index: int) -> None:
        self.used.discard(index)


__all__ = ["SCALE_DOWN_STOP_TIMEOUT", "Converger", "stop_grace"]
