"""Active HTTP health checks of L7 backends, against nginx."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.proxy_l4 import free_port
from zlayer.proxy import ProxyManager
from zlayer.proxy.api_models import backends_response
from zlayer.proxy.health import http_check
from zlayer.spec.models import ServiceSpec

pytestmark = pytest.mark.peer


def test_http_check_reads_the_status_nginx_returns(proxy_nginx: int) -> None:
    async def main() -> None:
        assert await http_check("127.0.0.1", proxy_nginx, "/healthz", 200, 2.0)
        assert not await http_check("127.0.0.1", proxy_nginx, "/healthz", 204, 2.0)
        assert not await http_check("127.0.0.1", proxy_nginx, "/down", None, 2.0)  # 5xx is never healthy
        assert await http_check("127.0.0.1", proxy_nginx, "/anything", None, 2.0)
        assert not await http_check("127.0.0.1", free_port(), "/", None, 2.0)  # nothing listens

    asyncio.run(main())


@pytest.mark.parametrize(("url", "healthy"), [("http://localhost:8080/healthz", True), ("http://x/down", False)])
def test_route_backend_health_follows_the_service_http_check(proxy_nginx: int, tmp_path, url, healthy) -> None:
    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path, health_interval=0.05, health_timeout=1.0)
        await m.start()
        try:
            spec = {
                "image": {"name": "x"},
                "endpoints": [{"name": "web", "protocol": "http", "port": free_port()}],
                "health": {"check": {"type": "http", "url": url, "expect_status": 200}},
            }
            await m.add_service("demo", "site", ServiceSpec.model_validate(spec))
            await m.update_backends("site", [("127.0.0.1", proxy_nginx)])
            for _ in range(100):
                group = backends_response(m).groups[0]
                if group.backends[0].consecutive_failures >= 3 or (healthy and group.healthy_count == 1):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            group = backends_response(m).groups[0]
            assert group.service == "site#web"
            assert group.backends[0].healthy is healthy
            assert group.backends[0].address == f"127.0.0.1:{proxy_nginx}"
        finally:
            await m.close()

    asyncio.run(main())
