"""An L7 port stops listening when the last route on it goes away (and listens again when one comes back), while
other ports keep serving and connections already accepted, with a request in flight, are not dropped."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from tests.fixtures.proxy_l4 import free_port
from tests.integration.proxy_l7.slow_backend import SlowBackend, get
from zlayer.proxy import ProxyManager
from zlayer.spec.models import ServiceSpec

pytestmark = pytest.mark.peer


def _spec(*ports: tuple[int, int]) -> ServiceSpec:
    """Endpoints (port, target_port); the replicas are given as bare IPs so each endpoint uses its target_port."""
    return ServiceSpec.model_validate(
        {
            "image": {"name": "busybox"},
            "endpoints": [{"name": f"e{p}", "protocol": "http", "port": p, "target_port": t} for p, t in ports],
        }
    )


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_port_closes_with_its_last_route_and_reopens(proxy_l7_nginx, tmp_path: Path) -> None:
    a = proxy_l7_nginx.ports[0]
    slow = SlowBackend()
    p1, p2, p3 = free_port(), free_port(), free_port()
    results: dict[str, tuple[int, str]] = {}

    def in_flight(name: str, port: int, path: str) -> threading.Thread:
        t = threading.Thread(target=lambda: results.__setitem__(name, get(port, path)), daemon=True)
        t.start()
        return t

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            await m.add_service("demo", "slow", _spec((p1, slow.port)))
            await m.update_backends("slow", ["127.0.0.1"])
            await m.add_service("demo", "web", _spec((p2, a), (p3, a)))
            await m.update_backends("web", ["127.0.0.1"])
            assert await asyncio.to_thread(get, p3, "/x") == (200, "A /x\n")
            assert await asyncio.to_thread(get, p2, "/x") == (200, "A /x\n")
            # A request in flight on p1 (held by the slow backend) while its service and routes are removed.
            held = in_flight("held", p1, "/held")
            assert await asyncio.to_thread(slow.wait_waiting, 1)
            await m.remove_service("slow")
            assert await asyncio.to_thread(_refused, p1), "p1 still accepts after its last route went away"
            assert await asyncio.to_thread(get, p2, "/y") == (200, "A /y\n")  # other ports keep serving
            slow.release.set()
            await asyncio.to_thread(held.join, 10)
            assert results["held"] == (200, "SLOW /held\n")  # the accepted connection was not dropped

            # One of two ports of a service goes away: only that one closes; a request in flight on the other
            # port survives the route change.
            slow.release.clear()
            await m.add_service("demo", "web", _spec((p2, slow.port), (p3, a)))
            held = in_flight("held2", p2, "/held2")
            assert await asyncio.to_thread(slow.wait_waiting, 1)
            await m.add_service("demo", "web", _spec((p2, a)))
            assert await asyncio.to_thread(_refused, p3)
            assert await asyncio.to_thread(get, p2, "/z") == (200, "A /z\n")
            slow.release.set()
            await asyncio.to_thread(held.join, 10)
            assert results["held2"] == (200, "SLOW /held2\n")

            # Adding a route on the port again reopens it.
            await m.add_service("demo", "slow", _spec((p1, a)))
            await m.update_backends("slow", ["127.0.0.1"])
            assert await asyncio.to_thread(get, p1, "/again") == (200, "A /again\n")
        finally:
            slow.release.set()
            slow.close()
            await m.close()

    asyncio.run(main())


def test_unlisten_closes_every_workers_socket(proxy_l7_nginx) -> None:
    from zlayer.proxy._l7 import Proxy

    proxy = Proxy(3)
    try:
        port = proxy.listen("127.0.0.1", 0)
        proxy.apply([("w#h", port, None, "/", False, 0)], [("w#h", [("127.0.0.1", proxy_l7_nginx.ports[1], True)])])
        proxy.start()
        assert all(get(port, f"/{i}") == (200, f"B /{i}\n") for i in range(6))  # whichever worker accepts
        assert proxy.unlisten("127.0.0.1", port) is True
        assert all(_refused(port) for _ in range(6))  # no worker's SO_REUSEPORT socket is left
        assert proxy.unlisten("127.0.0.1", port) is False
        assert proxy.listen("127.0.0.1", port) == port
        assert get(port, "/back") == (200, "B /back\n")
    finally:
        proxy.close()
