"""ProxyManager with the C L7 plane: an http endpoint of a service spec served end to end to nginx replicas."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tests.fixtures.proxy_l4 import free_port, peer_env
from zlayer.proxy import ProxyManager
from zlayer.proxy._l7_adapter import CL7Plane
from zlayer.spec.models import ServiceSpec

pytestmark = pytest.mark.peer


def curl(url: str, *args: str) -> str:
    return subprocess.run(
        ["curl", "-s", "--max-time", "5", *args, url], capture_output=True, text=True, timeout=10, env=peer_env()
    ).stdout


def test_add_service_with_http_endpoint_serves_through_the_c_plane(proxy_l7_nginx, tmp_path) -> None:
    a, b, _ = proxy_l7_nginx.ports
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path, health_interval=0.2, health_timeout=0.5)
        assert isinstance(m.l7, CL7Plane) and m.l7.serving
        await m.start()
        try:
            spec = {
                "image": {"name": "busybox"},
                "endpoints": [{"name": "site", "protocol": "http", "port": port, "path": "/app"}],
            }
            await m.add_service("demo", "web", ServiceSpec.model_validate(spec))
            await m.update_backends("web", [("127.0.0.1", a), ("127.0.0.1", b)])
            bodies = {await asyncio.to_thread(curl, f"http://127.0.0.1:{port}/app/x") for _ in range(6)}
            assert bodies == {"A /app/x\n", "B /app/x\n"}
            code = await asyncio.to_thread(
                curl, f"http://127.0.0.1:{port}/other", "-o", "/dev/null", "-w", "%{http_code}"
            )
            assert code == "404"
            stats = m.l7.route_stats()["web#site"]
            assert stats.requests == 6 and stats.status == {"2xx": 6}
            assert stats.latency_buckets[-1] == 6  # cumulative, +Inf last
            assert m.l7.route_requests() == {"web#site": 6}  # the autoscaler's read: the counts alone
            assert m.service_requests_total("web") >= 6
            proxy_l7_nginx.stop()  # replicas gone: the health checker ejects them, then 503 at once

            async def unavailable() -> bool:
                code = await asyncio.to_thread(
                    curl, f"http://127.0.0.1:{port}/app/", "-o", "/dev/null", "-w", "%{http_code}"
                )
                return code == "503"

            for _ in range(50):
                if await unavailable():
                    break
                await asyncio.sleep(0.1)
            assert await unavailable()
            await m.remove_service("web")
        finally:
            await m.close()

    asyncio.run(main())


def test_https_endpoint_is_terminated_with_a_generated_certificate(proxy_l7_nginx, tmp_path) -> None:
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            spec = {
                "image": {"name": "busybox"},
                "endpoints": [{"name": "secure", "protocol": "https", "port": port, "host": "secure.zlayer.test"}],
            }
            await m.add_service("demo", "web", ServiceSpec.model_validate(spec))
            await m.update_backends("web", [("127.0.0.1", proxy_l7_nginx.ports[2])])
            [cert] = [c for c in m.certificates() if c.domain == "secure.zlayer.test"]
            out = await asyncio.to_thread(
                curl,
                f"https://secure.zlayer.test:{port}/echo",
                "--cacert",
                str(cert.cert_file),
                "--resolve",
                f"secure.zlayer.test:{port}:127.0.0.1",
            )
            assert out.startswith("C ") and "proto=https " in out
        finally:
            await m.close()

    asyncio.run(main())
