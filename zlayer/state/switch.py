"""The store the daemon hands to its agent and API: one backend at a time, replaceable while the daemon runs.

A node starts on SQLite; when it starts or joins a cluster (``zlayer node init``/``join``) its state is carried over
into etcd and every later call goes there, without a restart and without redeploying anything. While the copy runs,
calls wait for it (none reaches a backend half-way between the two).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from zlayer.state.protocol import Store


class SwitchingStore:
    """:class:`Store` that forwards every call to its current backend (``current``)."""

    def __init__(self, backend: Store) -> None:
        self.current: Store = backend
        self._open = asyncio.Event()
        self._open.set()

    async def switch(self, backend: Store, carry: Callable[[Store], Awaitable[Any]] | None = None) -> Any:
        """Make ``backend`` the store from now on; ``carry(old)`` (the copy of the old backend's state) runs first,
        with every other call held until it is done. The old backend is closed; on a failure it stays current."""
        self._open.clear()
        try:
            carried = await carry(self.current) if carry is not None else None
            old, self.current = self.current, backend
        finally:
            self._open.set()
        await old.close()
        return carried

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.current, name)
        if not callable(target) or name.startswith("_"):
            return target

        @functools.wraps(target)
        async def call(*args: Any, **kwargs: Any) -> Any:
            if not self._open.is_set():
                await self._open.wait()
            return await getattr(self.current, name)(*args, **kwargs)

        return call

    async def close(self) -> None:
        await self.current.close()


__all__ = ["SwitchingStore"]
