"""/api/v1/cluster/peer: what another node of the cluster asks of this one for a replica this node runs (its logs,
once or followed; an exec, whole or attached). Only a member reaches these routes: each request carries a peer
credential signed by the calling node (:mod:`zlayer.cluster.peer`, checked by the listener before the route runs),
and a user's token, even an admin's, is refused here. The caller checked its user's rights before it asked; these
routes act on this node's own replicas only and forward nothing further."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse

from zlayer.api import exec_stream
from zlayer.api.containers import exec_response
from zlayer.api.context import ApiContext, ctx, until_closing
from zlayer.api.forward import KEEPALIVE
from zlayer.api.models import U32_MAX, ContainerExecRequest, ContainerExecResponse
from zlayer.errors import NotFoundError
from zlayer.runtime.protocol import ContainerId
from zlayer.state import ContainerRecord

router = APIRouter(prefix="/api/v1/cluster/peer", tags=["Cluster"], include_in_schema=False)


async def _own(c: ApiContext, container: str) -> ContainerRecord:
    rec = await c.store.get_container(container)  # in a cluster: this node's containers only
    if rec is None:
        raise NotFoundError(f"container {container!r} does not run on this node", where=f"containers/{container}")
    return rec


@router.get("/containers/{id}/logs", response_model=None)
async def peer_logs(
    id: str,
    tail: Annotated[int | None, Query(ge=0, le=U32_MAX)] = None,
    follow: bool = False,
    c: ApiContext = Depends(ctx),
) -> PlainTextResponse | StreamingResponse:
    """The replica's lines as ``[stream] message``; followed: then each new one, and an empty line every
    :data:`~zlayer.api.forward.KEEPALIVE` seconds while none comes (the caller tells a silent node by it)."""
    rec = await _own(c, id)
    driver = await c.driver(rec.id)
    cid = ContainerId.parse(rec.id)
    if not follow:
        lines = [f"[{ln.stream}] {ln.message}\n" async for ln in driver.logs(cid, tail=tail)]
        return PlainTextResponse("".join(lines))

    async def followed() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(1024)

        async def read() -> None:
            try:
                async for ln in driver.logs(cid, tail=tail, follow=True):
                    await queue.put(f"[{ln.stream}] {ln.message}\n".encode())
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                try:
                    line = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield b"\n"
                    continue
                if line is None:
                    return
                yield line
        finally:
            reader.cancel()

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in until_closing(followed(), c.closing):
            yield chunk

    return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")


@router.post("/containers/{id}/exec", response_model=ContainerExecResponse)
async def peer_exec(id: str, body: ContainerExecRequest, c: ApiContext = Depends(ctx)) -> ContainerExecResponse:
    return exec_response(await c.manager.exec(await _own(c, id), body.command))


@router.websocket("/containers/{id}/exec")
async def peer_exec_attached(ws: WebSocket, id: str, c: ApiContext = Depends(ctx)) -> None:
    async def target(_: object) -> tuple[str, ContainerRecord]:
        return "", await _own(c, id)

    await exec_stream.serve(ws, c, target)
