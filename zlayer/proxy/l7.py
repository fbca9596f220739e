"""The control plane's view of the L7 HTTP data plane (zlayer.proxy._l7, built from csrc/proxy/).

:class:`L7Plane` is what the :class:`~zlayer.proxy.manager.ProxyManager` needs from an L7 data plane: take a whole
route table (routes, backend groups with health, certificates) and swap it in atomically, flip one backend's health,
serve ACME HTTP-01 tokens, and report per-route counters. :func:`open_plane` returns the C data plane's adapter when
the extension is built, else :class:`RecordingL7Plane`, which keeps the configuration (so the API can show it) but
serves no traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from zlayer.proxy.models import RouteSpec

log = logging.getLogger("zlayer.proxy")

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


class RecordingL7Plane:
    """Keeps the L7 configuration without a data plane (the C extension is not built)."""

    def __init__(self) -> None:
        self.routes: list[RouteSpec] = []
        self.groups: dict[str, list[BackendState]] = {}
        self.certificates: dict[str, tuple[Path, Path]] = {}
        self.challenges: dict[str, str] = {}
        self._warned = False

    @property
    def serving(self) -> bool:
        return False

    def apply(
        self,
        routes: list[RouteSpec],
        groups: Mapping[str, list[BackendState]],
        certificates: Mapping[str, tuple[Path, Path]],
    ) -> None:
        if routes and not self._warned:
            log.warning("the L7 data plane (zlayer.proxy._l7) is not built: HTTP routes are recorded but not served")
            self._warned = True
        self.routes = list(routes)
        self.groups = {k: list(v) for k, v in groups.items()}
        self.certificates = dict(certificates)

    def set_health(self, group: str, host: str, port: int, healthy: bool) -> None:
        self.groups[group] = [
            BackendState(b.host, b.port, healthy) if (b.host, b.port) == (host, port) else b
            for b in self.groups.get(group, [])
        ]

    def route_stats(self) -> dict[str, RouteStats]:
        return {}

    def set_challenge(self, token: str, key_authorization: str) -> None:
        self.challenges[token] = key_authorization

    def remove_challenge(self, token: str) -> None:
        self.challenges.pop(token, None)

    def close(self) -> None:
        self.routes = []


def open_plane(workers: int = 1) -> L7Plane:
    """The C L7 data plane when it is built, else a recording stand-in (logged once when routes arrive)."""
    import importlib

    try:
        adapter = importlib.import_module("zlayer.proxy._l7_adapter")
    except ImportError:
        return RecordingL7Plane()
    plane: L7Plane = adapter.open_plane(workers)
    return plane


__all__ = ["LATENCY_BUCKETS", "BackendState", "L7Plane", "RecordingL7Plane", "RouteStats", "open_plane"]
