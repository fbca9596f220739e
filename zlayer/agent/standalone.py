"""Containers of their own: made one by one (the Docker Engine API, ZLayer's container create), not by a deployment.

Each operation is written here once, below every API that offers it: create, start, stop, restart, kill, pause,
unpause, wait, rename, update, remove. A standalone container runs on the node's workload driver and network as a
replica does (through :class:`~zlayer.agent.lifecycle.Lifecycle`: created, wired, started, recorded in the store, so
``zlayer ps -c`` lists it), but no service stands behind it: nothing replaces it when it goes, and it restarts only
as its own restart policy says (Docker's ``no``, ``always``, ``unless-stopped``, ``on-failure[:N]``).

A container outlives the daemon as a replica does (its shim, or dockerd, keeps it): what the store's record does not
hold — the service block it was made from, its restart policy, its runs' times and what the API that made it keeps
(``extra``: Docker's id, name and config) — is written to ``DATA/standalone/<id>.json`` at each change, and a new
daemon takes each one back (:meth:`StandaloneContainers.restore` before the deployments' re-adoption, then
:meth:`StandaloneContainers.readopt`): a running one is watched again, one that ended while no daemon watched is
recorded exited (and restarted or removed as its policy says), an exited one stays listed until removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer.agent.events import Events
from zlayer.agent.lifecycle import Lifecycle
from zlayer.agent.replica import Replica, save
from zlayer.errors import ConflictError, NotFoundError, RuntimeFailure, SpecError, ZLayerError
from zlayer.paths import write_atomic
from zlayer.runtime.drivers import Drivers
from zlayer.runtime.protocol import ContainerId, ContainerState
from zlayer.state import ContainerRecord, Store

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

log = logging.getLogger("zlayer.agent")

STOP_TIMEOUT = 10.0  # Docker's default grace before SIGKILL


SERVICE_KEY = "container"  # the service's name in the one-service deployment that checks a container's spec


def container_spec(service: dict[str, Any], source: str = "<container>") -> ServiceSpec:
    """A standalone container's spec (a service block as a dict), checked as a deploy's is
    (:func:`zlayer.spec.loader.parse_deployable`: ZLayer's rules and what this node can build); a ``SpecError``
    names the field from the service block on."""
    import json

    from zlayer.spec.loader import parse_deployable

    doc = {"version": "v1", "deployment": "standalone", "services": {SERVICE_KEY: service}}
    try:
        spec = parse_deployable(json.dumps(doc), source)
    except SpecError as e:
        # the problems by field, without the position in a document the caller never wrote
        lines = [ln.split(": ", 1)[-1] if ln.startswith(source) else ln for ln in str(e).splitlines()[1:]]
        said = "; ".join(ln.replace(f"services.{SERVICE_KEY}.", "") for ln in lines) or e.message
        raise SpecError(f"invalid container spec: {said}", where=source) from None
    return spec.services[SERVICE_KEY]


def now() -> str:
    """RFC 3339 with nanoseconds, UTC: the form of the log lines' timestamps, so the two compare as strings."""
    ns = time.time_ns()
    second = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{second}.{ns % 1_000_000_000:09d}Z"


@dataclass
class Standalone:
    """One standalone container: its record (as the store has it), its typed spec and what this daemon knows of its
    runs. ``restart`` is Docker's policy name; ``max_retries`` bounds ``on-failure``."""

    record: ContainerRecord
    spec: ServiceSpec
    source: dict[str, Any] = field(default_factory=dict)  # the service block ``spec`` was checked from
    extra: dict[str, Any] = field(default_factory=dict)  # what the API that made it keeps (kept with it on disk)
    restart: str = "no"
    max_retries: int = 0
    auto_remove: bool = False
    started_at: str = ""
    finished_at: str = ""
    pid: int = 0
    paused: bool = False
    stopped_by_user: bool = False
    exits: int = 0  # exits so far (a waiter for the next exit waits for this to grow)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set (and replaced) at each exit and at removal
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # it has run (and may have ended) at least once
    removed: bool = False  # gone for good: its record, driver state and network attachment
    attached: int = 0  # clients streaming its output: an auto-removed container waits for them to have it all
    watcher: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def cid(self) -> ContainerId:
        return ContainerId.parse(self.record.id)

    @property
    def running(self) -> bool:
        return self.record.state in ("running", "paused")

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


Removed = Callable[[Standalone], Awaitable[None]]


class StandaloneContainers:
    """The node's standalone containers, by record id."""

    def __init__(
        self, store: Store, events: Events, drivers: Drivers, lifecycle: Lifecycle, state_dir: Path | None = None
    ) -> None:
        self.state_dir = state_dir  # where each container's definition is kept for the next daemon (None: nowhere)
        self.store = store
        self.events = events
        self.drivers = drivers
        self.lifecycle = lifecycle
        self.by_id: dict[str, Standalone] = {}
        self.on_removed: list[Removed] = []  # told when a container goes by itself (auto-remove)
        self.on_change: list[Callable[[Standalone, str], None]] = []  # (container, Docker event action)

    def get(self, container_id: str) -> Standalone:
        got = self.by_id.get(container_id)
        if got is None:
            raise NotFoundError(f"no such container: {container_id}", where=container_id)
        return got

    def _tell(self, c: Standalone, action: str) -> None:
        for fn in self.on_change:
            with contextlib.suppress(Exception):
                fn(c, action)

    async def create(
        self,
        deployment: str,
        name: str,
        cid: ContainerId,
        spec: ServiceSpec,
        *,
        source: dict[str, Any],
        restart: str = "no",
        max_retries: int = 0,
        auto_remove: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Standalone:
        """Record a container made from ``spec`` (checked from the service block ``source`` as a deploy's spec is;
        the next daemon checks it again from there); it runs at :meth:`start`."""
        driver = self.drivers.for_service(spec)
        await driver.pull(spec.image.name, policy="never")  # an image the node does not have: refused here
        rec = ContainerRecord(str(cid), deployment, name, cid.replica, image=spec.image.name, state="created",
                              created_at=now())  # fmt: skip
        c = Standalone(rec, spec, source, dict(extra or {}), restart, max_retries, auto_remove)
        await self.store.put_container(rec)
        self.by_id[rec.id] = c
        await self.save(c)
        self._tell(c, "create")
        return c

    def replica(self, c: Standalone) -> Replica:
        return Replica(c.record.deployment, c.record.service, c.spec, c.cid, c.record, self.drivers.for_service(c.spec))

    async def start(self, container_id: str) -> Standalone:
        c = self.get(container_id)
        async with c.lock:
            if c.running:
                return c  # Docker answers 304: already started
            await self._run(c)
        return c

    async def _run(self, c: Standalone) -> None:
        rep = self.replica(c)
        c.exited.clear()
        c.stopped_by_user = False
        c.paused = False
        c.started_at, c.finished_at = now(), ""
        try:
            await self.lifecycle.create_and_start(rep)
        except RuntimeFailure:
            # A process that ended at once (`docker run busybox true`) ran: that is an exit, not a failed start.
            try:
                state = await rep.driver.state(rep.cid)
            except ZLayerError:
                state = None
            if state is None or state.exit_code is None:
                c.record.state = "created"
                with contextlib.suppress(ZLayerError):
                    await rep.driver.remove(rep.cid, force=True)
                with contextlib.suppress(ZLayerError, OSError):
                    await self.lifecycle.publisher.detach(c.record.deployment, c.record.service, c.id)
                await self.store.put_container(c.record)
                raise
        c.pid = c.record.pid
        c.started.set()
        await self.save(c)
        c.watcher = asyncio.create_task(self._watch(c, rep), name=f"standalone {c.id}")
        self._tell(c, "start")

    async def _watch(self, c: Standalone, rep: Replica) -> None:
        try:
            final: ContainerState | None = await rep.driver.wait(rep.cid)
        except NotFoundError:
            final = None
        if c.id not in self.by_id:  # removed meanwhile
            return
        code = final.exit_code if final is not None and final.exit_code is not None else -1
        c.record.state = "exited"
        c.record.exit_code = code
        c.record.oom_killed = bool(final and final.oom_killed)
        c.record.pid = 0
        c.pid = 0
        c.paused = False
        c.finished_at = now()
        await save(self.store, c.record)
        await self.save(c)
        c.exits += 1
        c.exited.set()
        c.notify()
        self._tell(c, "die")
        if c.auto_remove:
            for _ in range(1000):  # an attached client reads the last output first (at most 10 s)
                if c.attached <= 0:
                    break
                await asyncio.sleep(0.01)
            with contextlib.suppress(ZLayerError):
                await self.remove(c.id, force=True)
                for fn in self.on_removed:
                    await fn(c)
            return
        if self._restarts(c, code):
            await asyncio.sleep(min(0.1 * 2 ** min(c.record.restarts, 8), 10.0))
            async with c.lock:
                if c.stopped_by_user or c.id not in self.by_id or c.running:
                    return
                c.record.restarts += 1
                try:
                    await self._run(c)
                except ZLayerError as e:
                    log.warning("restarting %s: %s", c.id, e)

    @staticmethod
    def _restarts(c: Standalone, code: int) -> bool:
        if c.stopped_by_user or c.restart in ("", "no"):
            return False
        if c.restart == "on-failure":
            return code != 0 and (c.max_retries <= 0 or c.record.restarts < c.max_retries)
        return c.restart in ("always", "unless-stopped")

    async def stop(self, container_id: str, timeout: float | None = None, signal: str | None = None) -> bool:
        """Stop (the stop signal, SIGKILL after ``timeout``); False when it was not running (Docker's 304)."""
        c = self.get(container_id)
        if not c.running:
            return False
        c.stopped_by_user = True
        await self.save(c)
        driver = self.drivers.for_service(c.spec)
        if signal:
            with contextlib.suppress(ZLayerError):
                await driver.kill(c.cid, signal)
        await driver.stop(c.cid, timeout=STOP_TIMEOUT if timeout is None else timeout)
        await self._wait_exit(c)
        self._tell(c, "stop")
        return True

    async def _wait_exit(self, c: Standalone, timeout: float = 30.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(c.exited.wait(), timeout)

    async def restart(self, container_id: str, timeout: float | None = None) -> None:
        c = self.get(container_id)
        await self.stop(container_id, timeout)
        async with c.lock:
            if not c.running:
                await self._run(c)
        self._tell(c, "restart")

    async def kill(self, container_id: str, signal: str = "KILL") -> None:
        c = self.get(container_id)
        if not c.running:
            raise ConflictError(f"container {c.record.service} is not running", where=container_id)
        if signal.upper().removeprefix("SIG") in ("KILL", "9"):
            c.stopped_by_user = True
        await self.drivers.for_service(c.spec).kill(c.cid, signal)
        self._tell(c, "kill")

    async def pause(self, container_id: str) -> None:
        c = self.get(container_id)
        if not c.running:
            raise ConflictError(f"container {c.record.service} is not running", where=container_id)
        if c.paused:
            raise ConflictError(f"container {c.record.service} is already paused", where=container_id)
        await self.drivers.for_service(c.spec).pause(c.cid)
        c.paused, c.record.state = True, "paused"
        await self.store.put_container(c.record)
        self._tell(c, "pause")

    async def unpause(self, container_id: str) -> None:
        c = self.get(container_id)
        if not c.paused:
            raise ConflictError(f"container {c.record.service} is not paused", where=container_id)
        await self.drivers.for_service(c.spec).unpause(c.cid)
        c.paused, c.record.state = False, "running"
        await self.store.put_container(c.record)
        self._tell(c, "unpause")

    async def wait(self, container_id: str, condition: str = "not-running") -> int:
        """Until the container is not running (``not-running``), has exited once more (``next-exit``) or is removed
        (``removed``); its exit code."""
        c = self.get(container_id)
        if condition == "not-running" and not c.running and c.record.state != "created":
            return self._code(c)
        target = c.exits + 1
        while True:
            if condition == "removed" and c.removed:
                return self._code(c)
            if condition != "removed" and c.exits >= target:
                return self._code(c)
            await c.changed.wait()

    @staticmethod
    def _code(c: Standalone) -> int:
        return c.record.exit_code if c.record.exit_code is not None else -1

    async def rename(self, container_id: str, name: str) -> None:
        c = self.get(container_id)
        c.record.service = name
        await self.store.put_container(c.record)
        await self.save(c)
        self._tell(c, "rename")

    async def update(self, container_id: str, *, restart: str | None = None, max_retries: int | None = None) -> None:
        c = self.get(container_id)
        if restart is not None:
            c.restart = restart
        if max_retries is not None:
            c.max_retries = max_retries
        await self.save(c)
        self._tell(c, "update")

    async def remove(self, container_id: str, *, force: bool = False) -> None:
        """Remove a container (a running one only with ``force``, killed first) and its network attachment."""
        c = self.get(container_id)
        if c.running and not force:
            raise ConflictError(
                f"cannot remove container {c.record.service}: it is running", where=container_id,
                hint="stop the container before removing or force remove",
            )  # fmt: skip
        c.stopped_by_user = True
        self.by_id.pop(c.id, None)
        driver = self.drivers.for_service(c.spec)
        errors = await self.lifecycle._teardown(c.record, c.cid, 0.0, driver)
        if c.watcher is not None and not c.watcher.done() and c.watcher is not asyncio.current_task():
            c.watcher.cancel()
        c.exited.set()
        await self.store.delete_container(c.id)
        path = self._file(c.id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._tell(c, "destroy")
        c.removed = True
        c.notify()
        if errors:
            log.warning("removing %s: %s", c.id, "; ".join(map(str, errors)))

    # ---------------------------------------------------------------------------------------------- across restarts

    def _file(self, container_id: str) -> Path | None:
        if self.state_dir is None or "/" in container_id or container_id.startswith("."):
            return None
        return self.state_dir / f"{container_id}.json"

    async def save(self, c: Standalone) -> None:
        """Keep ``c``'s definition for the next daemon (its record is the store's). Written whole and renamed into
        place: a daemon killed meanwhile leaves the old definition or the new, never half of one."""
        path = self._file(c.id)
        if path is None or c.removed:
            return
        doc = {"id": c.id, "source": c.source, "extra": c.extra, "restart": c.restart, "max_retries": c.max_retries,
               "auto_remove": c.auto_remove, "started_at": c.started_at, "finished_at": c.finished_at,
               "stopped_by_user": c.stopped_by_user}  # fmt: skip
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, json.dumps(doc), durable=False)  # outlives the daemon's crash; a power loss ends it too
        except OSError as e:
            log.warning("cannot keep container %s for the next daemon: %s", c.id, e)

    async def restore(self) -> set[str]:
        """Take back the containers a previous daemon made (their definitions and the store's records), before the
        deployments' re-adoption, which leaves the ids returned alone. A definition without a record, or one this
        node no longer accepts, is dropped and said in the log: its container is then an orphan that re-adoption
        removes."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return set()
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
                rec = await self.store.get_container(str(doc["id"]))
                if rec is None:
                    raise ValueError("the store has no record of it")
                spec = container_spec(doc["source"], str(path))
                c = Standalone(rec, spec, dict(doc["source"]), dict(doc.get("extra") or {}),
                               str(doc.get("restart") or "no"), int(doc.get("max_retries") or 0),
                               bool(doc.get("auto_remove")), str(doc.get("started_at") or ""),
                               str(doc.get("finished_at") or ""),
                               stopped_by_user=bool(doc.get("stopped_by_user")))  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError, ZLayerError) as e:
                log.warning("standalone container %s not taken back: %s", path.stem, e)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if rec.state != "created":
                c.started.set()
            if not c.running:
                c.exited.set()
            c.paused = rec.state == "paused"
            self.by_id[rec.id] = c
        return set(self.by_id)

    async def readopt(self) -> None:
        """Watch again each taken-back container that was running: one its driver still runs goes on as if no
        daemon had left; one that ended meanwhile is recorded exited at once (and restarted or removed as its
        policy says), as the watcher sees its end. An exited one whose policy is ``always`` or ``unless-stopped``
        (and that no one stopped) starts again, as Docker's containers do when their daemon starts."""
        for c in list(self.by_id.values()):
            if c.watcher is not None and not c.watcher.done():
                continue
            if not c.running:
                if c.started.is_set() and not c.stopped_by_user and c.restart in ("always", "unless-stopped"):
                    try:
                        await self.start(c.id)
                    except Exception as e:  # one container that cannot start must not keep the daemon from starting
                        log.warning("starting %s again: %s", c.id, e)
                continue
            rep = self.replica(c)
            try:
                st = await rep.driver.state(rep.cid)
                c.pid = c.record.pid = st.pid if st.running else 0
            except (ZLayerError, OSError):
                pass  # gone: the watcher reads its end as unknown (-1)
            c.watcher = asyncio.create_task(self._watch(c, rep), name=f"standalone {c.id}")

    async def close(self) -> None:
        tasks = [c.watcher for c in self.by_id.values() if c.watcher is not None and not c.watcher.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["Standalone", "StandaloneContainers"]
