"""Re-adoption after a daemon restart: containers outlive the daemon (their shims keep them), so a new daemon takes
back what its drivers still run and the store still knows, and removes the rest."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from zlayer.agent.lifecycle import Lifecycle
from zlayer.agent.replica import Replica
from zlayer.agent.supervisor import Supervisor
from zlayer.errors import ZLayerError
from zlayer.runtime.drivers import Drivers
from zlayer.runtime.protocol import ContainerId, ContainerInfo, Runtime
from zlayer.state import Store

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

log = logging.getLogger("zlayer.agent")


async def _live(drivers: Drivers) -> dict[str, tuple[ContainerInfo, Runtime]]:
    live: dict[str, tuple[ContainerInfo, Runtime]] = {}
    for driver in drivers:
        try:
            infos = await driver.list()
        except ZLayerError as e:
            log.warning("cannot list containers: %s", e)
            continue
        for info in infos:
            live[info.id] = (info, driver)
    return live


async def readopt(
    store: Store,
    drivers: Drivers,
    lifecycle: Lifecycle,
    supervisor: Supervisor,
    specs: dict[str, dict[str, ServiceSpec]],
    standalone: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Watch again every running replica of a known deployment (``specs``: its services' specs); remove orphans,
    replicas recorded as failed, exited or still pending, and records whose container is gone. The ``standalone``
    containers taken back (:meth:`zlayer.agent.standalone.StandaloneContainers.restore`) are theirs to watch."""
    known = {c.id: c for c in await store.list_containers() if c.id not in standalone}
    live = await _live(drivers)
    for cid_text, (info, driver) in live.items():
        if cid_text.startswith("job-") or cid_text in standalone:
            continue  # job containers belong to the JobManager, standalone ones to StandaloneContainers
        rec = known.get(cid_text)
        # "pending": the old daemon stopped between starting it and recording it running (its after-start init,
        # address and port mappings unrecorded): it is replaced, not adopted half-known.
        if rec is None or rec.deployment not in specs or rec.state in ("failed", "exited", "pending"):
            await lifecycle.forget(cid_text, driver)
            continue
        spec = specs[rec.deployment].get(rec.service)
        if not info.state.running or spec is None:
            continue
        rec.pid = info.state.pid
        rep = Replica(rec.deployment, rec.service, spec, ContainerId.parse(rec.id), rec, driver)
        # Its last known health stands until its first check: a healthy replica stays behind the proxy meanwhile.
        rep.healthy = rec.health == "healthy"
        lifecycle.replicas[rec.id] = rep
        supervisor.watch(rep)
    for rec in known.values():
        if rec.id not in lifecycle.replicas:  # died while no daemon watched, or never started
            entry = live.get(rec.id)
            await lifecycle.forget(rec.id, entry[1] if entry is not None else None)


__all__ = ["readopt"]
