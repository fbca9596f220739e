"""Prometheus metrics of one daemon, served on ``--metrics-bind`` (its own registry, so tests can run several).

Series: ``zlayer_containers{state}``, ``zlayer_container_restarts_total{service}``,
``zlayer_health_checks_total{service,result}``, ``zlayer_deploy_duration_seconds{result}``,
``zlayer_api_request_duration_seconds{method,route,status}``.
"""

from __future__ import annotations

from collections import Counter as _Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from zlayer.config import split_bind

STATES = ("pending", "running", "backoff", "exited", "failed")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._states: dict[str, str] = {}
        self.containers = Gauge("zlayer_containers", "Containers by state", ["state"], registry=self.registry)
        self.restarts = Counter(
            "zlayer_container_restarts", "Replica restarts after a crash", ["service"], registry=self.registry
        )
        self.health = Counter(
            "zlayer_health_checks", "Health check results", ["service", "result"], registry=self.registry
        )
        self.deploys = Histogram(
            "zlayer_deploy_duration_seconds",
            "Time from a deploy request to its services converged",
            ["result"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.api = Histogram(
            "zlayer_api_request_duration_seconds",
            "API request latency",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry,
        )
        for s in STATES:
            self.containers.labels(s).set(0)
        self._server: object = None

    def serve(self, bind: str) -> None:
        """Start the exposition endpoint (``/metrics``) on HOST:PORT in a background thread."""
        host, port = split_bind(bind, "--metrics-bind")
        self._server = start_http_server(port, addr=host, registry=self.registry)

    def _recount(self) -> None:
        tally = _Tally(self._states.values())
        for s in set(STATES) | set(tally):
            self.containers.labels(s).set(tally.get(s, 0))

    def container_state(self, container: str, state: str) -> None:
        self._states[container] = state
        self._recount()

    def container_gone(self, container: str) -> None:
        self._states.pop(container, None)
        self._recount()

    def restart(self, service: str) -> None:
        self.restarts.labels(service).inc()

    def health_result(self, service: str, ok: bool) -> None:
        self.health.labels(service, "healthy" if ok else "unhealthy").inc()

    def deploy_finished(self, seconds: float, ok: bool) -> None:
        self.deploys.labels("success" if ok else "failure").observe(seconds)

    def api_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.api.labels(method, route, str(status)).observe(seconds)
