"""What every route needs, handed to the app once by the daemon (``app.state.ctx``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import HTTPConnection

from zlayer.agent.jobs import JobManager
from zlayer.agent.manager import ServiceManager
from zlayer.proxy import ProxyManager
from zlayer.runtime.protocol import ContainerId, Runtime
from zlayer.state import Store

if TYPE_CHECKING:  # types only: the daemon may run without metrics, whose client library then stays unloaded
    from zlayer.images import ImageStore
    from zlayer.observability import Metrics
    from zlayer.security import Security


@dataclass
class ApiContext:
    store: Store
    runtime: Runtime
    manager: ServiceManager
    jobs: JobManager
    runtime_name: str = "linux"
    images: ImageStore | None = None  # None: an API served without a store (some tests), which lists no images
    proxy: ProxyManager | None = None  # the node's proxy, which /api/v1/proxy shows (None: this node runs none)
    metrics: Metrics | None = None
    security: Security | None = None  # accounts, grants, audit, secrets (None: tokens' roles alone decide)
    token: str = ""
    cluster: Any = None  # the node's zlayer.cluster.membership.ClusterNode (None: a daemon without cluster support)
    overlay: Any = None  # the node's zlayer.overlay.cluster.OverlayNode (None: no overlay on this node)
    peer: Any = None  # the node's zlayer.cluster.peer.PeerAuth: its calls to other nodes, and theirs to it
    builds: Any = None  # the node's zlayer.builder.service.BuildService, made on the first build request
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set at shutdown: open streams end

    async def driver(self, container_id: str) -> Runtime:
        """The workload driver holding a container (Linux or WASM), for its logs, stats and exec."""
        return await self.manager.drivers.owner(ContainerId.parse(container_id))


T = TypeVar("T")


async def until_closing(items: AsyncIterator[T], closing: asyncio.Event) -> AsyncIterator[T]:
    """``items`` until they end or the daemon shuts down: a follow stream (logs -f, events) then ends cleanly (its
    chunked response completes) instead of being cancelled under the client."""
    stop = asyncio.ensure_future(closing.wait())
    nxt: asyncio.Future[T] | None = None
    try:
        while True:
            nxt = asyncio.ensure_future(anext(items))
            await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                return
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stop.cancel()
        if nxt is not None and not nxt.done():  # shutdown, or the client went away: unwind the generator first
            nxt.cancel()
            await asyncio.wait({nxt})
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def ctx(request: HTTPConnection) -> ApiContext:
    """FastAPI dependency: the daemon's context (for HTTP routes and WebSockets alike)."""
    got: ApiContext = request.app.state.ctx
    return got
