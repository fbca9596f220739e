"""Prometheus metrics of the proxy, read from the data planes' counters at scrape time (no Python per request).

Per route (``service#endpoint``; L7 routes and L4 streams alike):
``zlayer_proxy_requests_total`` (L7 requests, or L4 connections/UDP sessions), ``zlayer_proxy_responses_total{class}``
(1xx..5xx), ``zlayer_proxy_request_duration_seconds`` (histogram, ZLayer's request buckets),
``zlayer_proxy_bytes_total{direction="in|out"}``, ``zlayer_proxy_active_connections``,
``zlayer_proxy_backend_healthy{backend}``; per service ZLayer's ``zlayer_service_rps`` (the autoscaler's figure).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from zlayer.proxy.l7 import LATENCY_BUCKETS

if TYPE_CHECKING:
    from zlayer.proxy.manager import ProxyManager


class ProxyCollector(Collector):
    def __init__(self, manager: ProxyManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        m = self.manager
        labels = ["route", "service"]
        requests = CounterMetricFamily(
            "zlayer_proxy_requests", "Requests (L7) or connections (L4) taken", labels=labels
        )
        responses = CounterMetricFamily(
            "zlayer_proxy_responses", "Responses by status class", labels=[*labels, "class"]
        )
        duration = HistogramMetricFamily(
            "zlayer_proxy_request_duration_seconds", "Time from request to response end", labels=labels
        )
        nbytes = CounterMetricFamily("zlayer_proxy_bytes", "Bytes moved", labels=[*labels, "direction"])
        active = GaugeMetricFamily("zlayer_proxy_active_connections", "Open client connections", labels=labels)
        healthy = GaugeMetricFamily(
            "zlayer_proxy_backend_healthy", "1 when the backend takes traffic", labels=[*labels, "backend"]
        )
        rps = GaugeMetricFamily("zlayer_service_rps", "Requests per second over the last 10 s", labels=["service"])

        stats = m.l7.route_stats()
        for r in m.routes():
            lv = [r.key, r.service]
            s = stats.get(r.key)
            if s is not None:
                requests.add_metric(lv, s.requests)
                for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
                    responses.add_metric([*lv, cls], s.status.get(cls, 0))
                if s.latency_buckets:
                    bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
                    duration.add_metric(lv, list(zip(bounds, s.latency_buckets, strict=False)), s.latency_sum)
                nbytes.add_metric([*lv, "in"], s.bytes_in)
                nbytes.add_metric([*lv, "out"], s.bytes_out)
                active.add_metric(lv, s.active_connections)
            for h, p in m.route_backends(r):
                healthy.add_metric([*lv, f"{h}:{p}"], float(m.health.health(r.key, h, p).healthy))
        for spec, listener in m.streams():
            lv = [spec.key, spec.service]
            st = listener.stats()
            requests.add_metric(lv, st["connections_total"])
            nbytes.add_metric([*lv, "in"], st["bytes_in"])
            nbytes.add_metric([*lv, "out"], st["bytes_out"])
            active.add_metric(lv, st["connections_active"] + st["udp_sessions_active"])
            for b in listener.backends():
                healthy.add_metric([*lv, f"{b['host']}:{b['port']}"], float(b["healthy"]))
        for name in m.services():
            rps.add_metric([name], m.requests_per_second(name))
        yield from (requests, responses, duration, nbytes, active, healthy, rps)


def register(manager: ProxyManager, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Registers the proxy's collector (in a new registry unless one is given) and returns the registry."""
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(ProxyCollector(manager))
    return registry


__all__ = ["ProxyCollector", "register"]
