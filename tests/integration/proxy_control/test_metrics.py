"""Prometheus metrics and the autoscaler's requests-per-second, computed from the data planes' counters."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from tests.fixtures.proxy_l4 import free_port
from tests.integration.proxy_control.test_manager_l4 import spec, tcp_roundtrip
from zlayer.proxy import ProxyManager
from zlayer.proxy.metrics import register

pytestmark = pytest.mark.peer


def test_stream_traffic_shows_in_metrics_and_rps(proxy_l4_tcp_echo, tmp_path) -> None:
    echo = proxy_l4_tcp_echo()
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        registry = register(m)
        try:
            await m.add_service("demo", "db", spec({"name": "pg", "protocol": "tcp", "port": port}))
            await m.update_backends("db", [("127.0.0.1", echo.port)])
            m.sample(now=100.0)
            for _ in range(20):
                assert await asyncio.to_thread(tcp_roundtrip, port, b"x" * 10) == b"x" * 10
            m.sample(now=102.0)
            assert m.requests_per_second("db") == pytest.approx(10.0)
            text = generate_latest(registry).decode()
            assert 'zlayer_proxy_requests_total{route="db#pg",service="db"} 20.0' in text
            assert 'zlayer_proxy_bytes_total{direction="in",route="db#pg",service="db"} 200.0' in text
            assert 'zlayer_proxy_bytes_total{direction="out",route="db#pg",service="db"} 200.0' in text
            assert (
                f'zlayer_proxy_backend_healthy{{backend="127.0.0.1:{echo.port}",route="db#pg",service="db"}} 1.0'
                in text
            )
            assert 'zlayer_service_rps{service="db"} 10.0' in text
        finally:
            await m.close()

    asyncio.run(main())


def test_rps_window_forgets_old_traffic(tmp_path) -> None:
    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            await m.add_service("demo", "idle", spec({"name": "pg", "protocol": "tcp", "port": free_port()}))
            for t in range(0, 30, 1):
                m.sample(now=float(t))
            assert m.requests_per_second("idle") == 0.0
            assert m.requests_per_second("unknown") == 0.0
        finally:
            await m.close()

    asyncio.run(main())
