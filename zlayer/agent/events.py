"""A deployment's event log: what the agent did and saw, in order, stored and followed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from zlayer.errors import ZLayerError
from zlayer.state import EventRecord, Store

log = logging.getLogger("zlayer.agent")


class Events:
    """Appends events to the store and wakes whoever follows them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiters = asyncio.Condition()
        self._added = 0  # events added so far: a follower that saw this many has missed none

    async def add(self, deployment: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        try:
            await self.store.add_event(deployment, kind, message, data)
        except ZLayerError as e:  # the journal loses a line; what happened stands (a full disk must not undo a down)
            log.warning("event %s of %s not recorded: %s", kind, deployment, e)
            return
        self._added += 1
        async with self._waiters:
            self._waiters.notify_all()

    async def follow(self, deployment: str, after: int = 0) -> AsyncIterator[EventRecord]:
        """Events of a deployment from ``after`` on, waiting for new ones (ends when the deployment is deleted)."""
        while True:
            seen = self._added
            for ev in await self.store.list_events(deployment, after):
                after = ev.seq
                yield ev
            if await self.store.get_deployment(deployment) is None:
                return
            async with self._waiters:
                if self._added != seen:  # one came while this follower was reading or yielding: read again now
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._waiters.wait(), 15.0)


__all__ = ["Events"]
