"""WebSocket through the C L7 proxy: the Upgrade goes to the backend, the 101 comes back, then a byte tunnel.
Backend and client are aiohttp's WebSocket server and client."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

pytestmark = pytest.mark.peer


def test_websocket_upgrade_then_messages_both_ways(proxy_l7_plane) -> None:
    async def main() -> None:
        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(f"hello {request.headers.get('X-Forwarded-For')}")
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str("echo:" + msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            return ws

        async def plain(request: web.Request) -> web.Response:
            return web.Response(text="plain")

        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        app.router.add_get("/", plain)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        plane = proxy_l7_plane([("ws#e", None, "/", False, "G")], {"G": [("127.0.0.1", port, True)]})
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{plane.port}/") as r:
                    assert await r.text() == "plain"
                async with s.ws_connect(f"http://127.0.0.1:{plane.port}/ws") as ws:
                    assert (await ws.receive_str(timeout=5)) == "hello 127.0.0.1"
                    for i in range(50):
                        await ws.send_str(f"m{i}")
                        assert (await ws.receive_str(timeout=5)) == f"echo:m{i}"
                    big = bytes(range(256)) * 1000
                    await ws.send_bytes(big)
                    assert (await ws.receive_bytes(timeout=5)) == big[::-1]
                    await ws.close()
            stats = plane.proxy.stats()["ws#e"]
            assert stats["requests"] == 2 and stats["status"][0] == 1  # the 101 counts as 1xx
        finally:
            await runner.cleanup()

    asyncio.run(main())
