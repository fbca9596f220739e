"""The control plane's view of the L7 HTTP data plane (zlayer.proxy._l7, built from csrc/proxy/).

:class:`L7Plane` is what the :class:`~zlayer.proxy.manager.ProxyManager` needs from an L7 data plane: take a whole
route table (routes, backend groups with health, certificates) and swap it in atomically, flip one backend's health,
serve ACME HTTP-01 tokens, and report per-route counters. The one implementation is the C data plane's
adapter (:mod:`zlayer.proxy._l7_adapter`); there is no Python stand-in that would hide a missing build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from zlayer.proxy.models import RouteSpec

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class BackendState:
    host: str
    port: int
    healthy: bool = True


@dataclass
class RouteStats:
    """Cumulative counters of one route (``service#endpoint``) as the data plane reports them."""

    requests: int = 0
    status: dict[str, int] = field(default_factory=dict)  # "1xx".."5xx" -> count
    bytes_in: int = 0
    bytes_out: int = 0
    active_connections: int = 0
    latency_buckets: list[int] = field(default_factory=list)  # cumulative counts per LATENCY_BUCKETS (+Inf last)
    latency_sum: float = 0.0
    backend_active: dict[str, int] = field(default_factory=dict)  # "ip:port" -> in-flight requests


class L7Plane(Protocol):
    def apply(
        self,
        routes: list[RouteSpec],
        groups: Mapping[str, list[BackendState]],
        certificates: Mapping[str, tuple[Path, Path]],
    ) -> None: ...

    def set_health(self, group: str, host: str, port: int, healthy: bool) -> None: ...

    def route_stats(self) -> dict[str, RouteStats]: ...

    def set_challenge(self, token: str, key_authorization: str) -> None: ...

    def remove_challenge(self, token: str) -> None: ...

    def close(self) -> None: ...

    @property
    def serving(self) -> bool: ...


__all__ = ["LATENCY_BUCKETS", "BackendState", "L7Plane", "RouteStats"]
