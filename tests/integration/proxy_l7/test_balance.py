"""Least-connections balancing on L7, chosen per route from the service spec (label ``zlayer.proxy.strategy``):
new requests go to the backend with fewer requests in flight, where round-robin would keep feeding a busy one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import yaml

from tests.fixtures.proxy_l4 import free_port
from tests.integration.proxy_l7.slow_backend import SlowBackend, get
from zlayer.errors import SpecError
from zlayer.proxy import ProxyManager
from zlayer.proxy.models import build
from zlayer.spec.loader import parse_deployable
from zlayer.spec.models import ServiceSpec

pytestmark = pytest.mark.peer


def _spec(port: int, labels: dict[str, str]) -> ServiceSpec:
    return ServiceSpec.model_validate(
        {
            "image": {"name": "busybox"},
            "labels": labels,
            "endpoints": [{"name": "site", "protocol": "http", "port": port}],
        }
    )


def _run(strategy: str | None, fast_port: int, tmp_path: Path) -> tuple[list[str], int]:
    """One request parked on the slow backend, then 8 more one after another: (bodies of those 8, slow hits)."""
    slow = SlowBackend()
    port = free_port()
    labels = {"zlayer.proxy.strategy": strategy} if strategy else {}
    threads: list[threading.Thread] = []

    def background(path: str) -> None:
        t = threading.Thread(target=get, args=(port, path), daemon=True)
        t.start()
        threads.append(t)

    async def main() -> tuple[list[str], int]:
        m = ProxyManager(data_dir=tmp_path / (strategy or "default"))
        try:
            await m.add_service("demo", "web", _spec(port, labels))
            await m.update_backends("web", [("127.0.0.1", slow.port), ("127.0.0.1", fast_port)])
            # Park one request on the slow backend (the fast one answers at once, so keep asking until one sticks).
            for i in range(10):
                background(f"/park{i}")
                if await asyncio.to_thread(slow.wait_waiting, 1, 0.5):
                    break
            assert slow.waiting >= 1, "no request reached the slow backend"
            parked = slow.hits
            bodies: list[str] = []
            for i in range(8):  # sequential: each either answers at once (fast) or is held (slow)
                before = slow.hits
                background(f"/n{i}")
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if slow.hits > before or not threads[-1].is_alive():
                        break
                bodies.append("slow" if slow.hits > before else "fast")
            stats = m.l7.route_stats()["web#site"]
            assert stats.backend_active.get(f"127.0.0.1:{slow.port}", 0) == slow.waiting
            return bodies, slow.hits - parked
        finally:
            slow.release.set()
            for t in threads:
                t.join(10)
            slow.close()
            await m.close()

    return asyncio.run(main())


def test_least_connections_sends_new_requests_to_the_idle_backend(proxy_l7_nginx, tmp_path: Path) -> None:
    bodies, slow_hits = _run("least_connections", proxy_l7_nginx.ports[0], tmp_path)
    assert bodies == ["fast"] * 8 and slow_hits == 0


def test_round_robin_keeps_sending_to_the_busy_backend(proxy_l7_nginx, tmp_path: Path) -> None:
    # The same setup without the label: round-robin (ZLayer's default) alternates, so the busy backend gets more.
    bodies, slow_hits = _run(None, proxy_l7_nginx.ports[0], tmp_path)
    assert slow_hits >= 3 and bodies.count("slow") == slow_hits


def test_strategy_per_endpoint_and_bad_values_name_the_label() -> None:
    spec = {
        "image": {"name": "busybox"},
        "labels": {"zlayer.proxy.strategy": "least_connections", "zlayer.proxy.strategy.api": "round-robin"},
        "endpoints": [
            {"name": "site", "protocol": "http", "port": 8080},
            {"name": "api", "protocol": "http", "port": 8081},
        ],
    }
    routes, _ = build("demo", "web", ServiceSpec.model_validate(spec))
    assert {r.endpoint: r.strategy for r in routes} == {"site": "least_connections", "api": "round_robin"}
    spec["labels"] = {"zlayer.proxy.strategy": "fastest"}
    with pytest.raises(SpecError) as exc:  # refused when deployed, at the label
        parse_deployable(yaml.safe_dump({"version": "v1", "deployment": "demo", "services": {"web": spec}}))
    assert "services.web.labels.zlayer.proxy.strategy" in str(exc.value) and "least_connections" in str(exc.value)
