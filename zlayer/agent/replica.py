"""A running replica as the agent holds it: its record, its service's spec, its driver and the tasks watching it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zlayer.errors import ZLayerError
from zlayer.runtime.protocol import ContainerId, Runtime
from zlayer.state import ContainerRecord, Store

log = logging.getLogger("zlayer.agent")

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec


@dataclass
class Replica:
    """One replica of ``deployment``/``service``. ``record`` is what the store knows of it (written as it changes);
    the rest lives only while this daemon watches it."""

    deployment: str
    service: str
    spec: ServiceSpec
    cid: ContainerId
    record: ContainerRecord
    driver: Runtime
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


async def save(store: Store, rec: ContainerRecord) -> None:
    """Write a replica's record from the loops that watch it. A state that cannot be written (a full disk) is
    logged in one line and the loop goes on: the record in memory stays right and is written with the next
    change, where a raised error would have ended the replica's supervision."""
    try:
        await store.put_container(rec)
    except ZLayerError as e:
        log.warning("replica %s: its record was not written: %s", rec.id, e)


async def tail(driver: Runtime, cid: ContainerId, n: int) -> list[str]:
    """The container's last ``n`` output lines as ``[stream] message`` (none when it has no logs)."""
    out: list[str] = []
    try:
        async for line in driver.logs(cid, tail=n):
            out.append(f"[{line.stream}] {line.message}")
    except ZLayerError:
        pass
    return out


__all__ = ["Replica", "save", "tail"]
