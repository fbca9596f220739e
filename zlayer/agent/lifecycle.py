"""A replica's life on the node: create it through its driver, wire it, run its init steps, and tear it down.

Every step is recorded in the store as it happens. Starts and stops are bounded (a deploy of hundreds of replicas
runs them side by side, not all at once); a stop runs every step even when one fails, so what can go does go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from typing import TYPE_CHECKING

from zlayer.agent.events import Events
from zlayer.agent.hooks import AgentMetrics, SecretsHook
from zlayer.agent.probes import ExecFn, run_init_step
from zlayer.agent.publish import Publisher
from zlayer.agent.replica import Replica
from zlayer.agent.spans import replica_attributes, tracer
from zlayer.agent.supervisor import should_restart
from zlayer.errors import ConflictError, NotFoundError, RuntimeFailure, ZLayerError, with_context
from zlayer.runtime.protocol import ContainerId, ExecResult, Runtime
from zlayer.state import ContainerRecord, Store

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

log = logging.getLogger("zlayer.agent")

START_CONCURRENCY = 16  # replicas created/started at once
STOP_CONCURRENCY = 64  # replicas stopped at once (a stop mostly waits out its grace period)


class Lifecycle:
    """Creates, starts and removes replicas; ``replicas`` are the live ones this daemon watches."""

    def __init__(
        self,
        store: Store,
        events: Events,
        publisher: Publisher,
        metrics: AgentMetrics | None,
        replicas: dict[str, Replica],
        secrets: SecretsHook | None = None,
    ) -> None:
        self.secrets = secrets
        self.store = store
        self.events = events
        self.publisher = publisher
        self.metrics = metrics
        self.replicas = replicas
        self._start_slots = asyncio.Semaphore(START_CONCURRENCY)
        self._stop_slots = asyncio.Semaphore(STOP_CONCURRENCY)

    # ------------------------------------------------------------------------------------------------ start

    async def start(self, rep: Replica) -> Replica:
        """Run init (before), create and start, run init (after). A replica that ran and died at once, and that
        its restart policy restarts, is returned for the supervisor to restart with backoff; any other failure
        is recorded, everything made is removed and the error raised."""
        rec = rep.record
        self.replicas[rec.id] = rep
        await self.store.put_container(rec)
        try:
            await self.run_init(rep, phase="before")
            try:
                await self.create_and_start(rep)
            except ZLayerError as e:
                if await self._exited_at_start(rep, e):
                    return rep
                raise
            await self.run_init(rep, phase="after")
        except ZLayerError as e:
            rec.state, rec.last_error = "failed", str(e)
            await self.store.put_container(rec)
            await self.events.add(rep.deployment, "replica_failed", with_context(rec.id, e))
            self.replicas.pop(rec.id, None)
            # also when attach failed half-way (its veth may exist without an address)
            with contextlib.suppress(ZLayerError, OSError):
                await self.publisher.detach(rep.deployment, rep.service, rec.id)
            with contextlib.suppress(ZLayerError):
                await rep.driver.stop(rep.cid, timeout=1.0)
            with contextlib.suppress(ZLayerError):
                await rep.driver.remove(rep.cid, force=True)
            raise
        await self.events.add(rep.deployment, "replica_started", f"{rec.id} running")
        return rep

    async def _exited_at_start(self, rep: Replica, err: ZLayerError) -> bool:
        """After a failed start: did the process run and exit (rather than never start), and does the restart
        policy restart it? Then the replica is left to the supervisor (a dependency it needs may come later)."""
        try:
            state = await rep.driver.state(rep.cid)
        except ZLayerError:
            return False
        if state.status not in ("exited", "failed") or state.exit_code is None:
            return False
        if not should_restart(rep.spec, rep.record.restarts, state.exit_code):
            return False
        rep.record.state, rep.record.exit_code, rep.record.last_error = "exited", state.exit_code, str(err)
        rep.record.oom_killed = state.oom_killed
        await self.store.put_container(rep.record)
        return True

    async def create_and_start(self, rep: Replica) -> None:
        # Bounded: each start is a shim process, a mount and netlink work; beyond a few dozen they only queue up
        # in the kernel.
        async with self._start_slots:
            await self._create_and_start_now(rep)

    async def _create_and_start_now(self, rep: Replica) -> None:
        driver = rep.driver
        with contextlib.suppress(ZLayerError):
            await driver.remove(rep.cid, force=True)  # a stale container with the same id
        spec = rep.spec
        if self.secrets is not None and spec.env:  # the values as they are now, never kept in the agent's state
            spec = spec.model_copy(update={"env": await self.secrets.resolve(rep.deployment, rep.service, spec.env)})
        attrs = replica_attributes(rep)
        wired = False
        plumb = self.publisher.wired(rep.spec) and not driver.host_network
        with tracer.start_as_current_span("container.create", attributes=attrs):
            await driver.create(rep.cid, spec, dns=self.publisher.dns_servers(rep.spec))
            if plumb:
                # A created container already has its namespaces (its init waits before exec): plumb eth0 now, so
                # the process finds its network from its first instruction.
                created = await driver.state(rep.cid)
                if created.pid > 0:
                    rep.record.ip = await self.publisher.attach(rep, created.pid)
                    wired = True
        with tracer.start_as_current_span("container.start", attributes=attrs):
            await driver.start(rep.cid)
        state = await driver.state(rep.cid)
        rep.record.pid = state.pid
        if not plumb and state.ip:
            rep.record.ip = state.ip  # a WASM HTTP replica listens on a loopback address of its own
        rep.record.state = "running"
        rep.record.exit_code = None
        rep.record.oom_killed = False
        if plumb:
            if not wired:
                rep.record.ip = await self.publisher.attach(rep, state.pid)
            await self.publisher.publish_ports(rep)
        await self.store.put_container(rep.record)
        if self.metrics is not None:
            self.metrics.container_state(rep.record.id, "running")

    async def run_init(self, rep: Replica, phase: str) -> None:
        """The service's init steps of one phase (``init.run`` after the start, the waits before), retried as
        ``errors.on_init_failure`` says."""
        steps = [s for s in rep.spec.init.steps if (s.uses == "init.run") == (phase == "after")]
        if not steps:
            return
        policy = rep.spec.errors.on_init_failure.action
        delays = [0.1] * 3 if policy == "restart" else [1.0, 2.0, 4.0] if policy == "backoff" else []
        for attempt in range(len(delays) + 1):
            try:
                for step in steps:
                    try:
                        await asyncio.wait_for(run_init_step(step, self.exec_fn(rep)), step.timeout_seconds)
                    except (ZLayerError, TimeoutError) as e:
                        why = (
                            f"init step {step.id!r} ({step.uses}) timed out after {step.timeout_seconds:g}s"
                            if isinstance(e, TimeoutError)
                            else str(e)
                        )
                        if step.on_failure == "fail":
                            raise RuntimeFailure(why, where=f"services.{rep.service}.init") from e
                        if step.on_failure == "warn":
                            await self.events.add(rep.deployment, "init_warning", f"{rep.record.id}: {why}")
                return
            except RuntimeFailure:
                if attempt >= len(delays):
                    raise
                await asyncio.sleep(delays[attempt])

    # ------------------------------------------------------------------------------------------------ exec

    async def exec(self, rec: ContainerRecord, argv: list[str], driver: Runtime) -> ExecResult:
        """Run ``argv`` in a replica's container; an OOM kill while it ran is recorded on the replica (its
        ``oom_killed``, as Docker's State.OOMKilled) and reported as an ``exec_oom_killed`` event."""
        rep = self.replicas.get(rec.id)
        res = await (rep.driver if rep is not None else driver).exec(ContainerId.parse(rec.id), argv)
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
        await self.events.add(
            record.deployment,
            "exec_oom_killed",
            f"{record.id} OOMKilled: the kernel's OOM killer ended a process at the memory limit while "
            f"`{shlex.join(argv)}` ran (its exit code {res.exit_code})",
        )

    def exec_fn(self, rep: Replica) -> ExecFn:
        """A command runner inside the replica (command health checks and ``init.run``)."""

        async def run(argv: list[str]) -> tuple[int, str]:
            res = await self.exec(rep.record, argv, rep.driver)
            return res.exit_code, (res.stdout + res.stderr).decode(errors="replace")

        return run

    # ------------------------------------------------------------------------------------------------ stop

    async def stop(self, rec: ContainerRecord, timeout: float, driver: Runtime) -> None:
        """Stop and remove one replica. Every step runs even when an earlier one failed (a container that will not
        stop is still removed by force, its veth and its record still go); the first failure is raised at the end
        and the record is kept, so a later ``down`` retries."""
        rep = self.replicas.pop(rec.id, None)
        cid = ContainerId.parse(rec.id)
        if rep is not None:
            driver = rep.driver
            rep.stopping = True
            for t in rep.tasks:
                t.cancel()
            # A supervisor cancelled inside a restart must finish unwinding (the driver removes what it had half
            # made) before this stop looks at the container, or the two race and a container outlives its record.
            await asyncio.gather(*(t for t in rep.tasks if t is not asyncio.current_task()), return_exceptions=True)
            if rep.healthy:
                rep.healthy = False
                await self.publisher.drain(rep, timeout)
                await self.publisher.publish(rep.deployment, rep.service, rep.spec)
            await self.publisher.withdraw(rep)
        async with self._stop_slots:
            errors = await self._teardown(rec, cid, timeout, driver)
        if rep is not None:
            await self.publisher.drained(rep)
        if self.metrics is not None:
            self.metrics.container_gone(rec.id)
        if errors:
            log.warning("removing %s: %s", rec.id, "; ".join(map(str, errors)))
            rec.state, rec.last_error = "failed", f"could not be removed: {errors[0]}"
            with contextlib.suppress(ZLayerError):
                await self.store.put_container(rec)
            await self.events.add(rec.deployment, "replica_remove_failed", with_context(rec.id, errors[0]))
            err = errors[0]
            raise err if isinstance(err, ZLayerError) else RuntimeFailure(f"removing {rec.id}: {err}")
        await self.store.delete_container(rec.id)
        await self.events.add(rec.deployment, "replica_stopped", f"{rec.id} stopped")

    async def _teardown(
        self, rec: ContainerRecord, cid: ContainerId, timeout: float, driver: Runtime
    ) -> list[BaseException]:
        errors: list[BaseException] = []
        # Out of the proxy first, then stopped while still on the network (requests it is serving finish, its
        # clients see it close), and only then detached: a veth removed under a live process leaves them hanging.
        try:
            await driver.stop(cid, timeout=timeout)
        except (NotFoundError, ConflictError):
            pass
        except Exception as e:
            errors.append(e)
        try:
            await self.publisher.detach(rec.deployment, rec.service, rec.id)
        except Exception as e:
            errors.append(e)
        try:
            await driver.remove(cid, force=True)
        except NotFoundError:
            pass
        except Exception as e:
            errors.append(e)
        return errors

    async def forget(self, container: str, driver: Runtime | None) -> None:
        """A container the restarted daemon does not adopt: removed from its driver (when it is still there), its
        address, veth, service DNS entry and port mappings released (they would leak one lease per restart), its
        record dropped."""
        if driver is not None:
            with contextlib.suppress(ZLayerError):
                await driver.remove(ContainerId.parse(container), force=True)
        await self.publisher.release(container)
        await self.store.delete_container(container)


def new_replica(
    deployment: str, service: str, spec: ServiceSpec, index: int, revision: int, built: str, driver: Runtime
) -> Replica:
    """A replica about to be made: replica ``index`` of the service, recorded as built from ``built``."""
    cid = ContainerId(service, index)
    rec = ContainerRecord(
        str(cid), deployment, service, index, image=spec.image.name, revision=revision, spec_hash=built
    )
    return Replica(deployment, service, spec, cid, rec, driver)


__all__ = ["Lifecycle", "new_replica"]
