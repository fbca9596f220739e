"""The control plane's view of the L7 HTTP data plane (zlayer.proxy._l7, built from csrc/proxy/).

:class:`L7Plane` is what the :class:`~zlayer.proxy.manager.ProxyManager` needs from an L7 data plane: take a whole
route table (routes, backend groups with health, certificates) and swap it in atomically, flip one backend's health,
serve ACME HTTP-01 tokens, and report per-route counters. The one implementation is the C data plane's
adapter (:mod:`zlayer.proxy._l7_adapter`); there is no Python stand-in that would hide a missing build.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zlayer.errors import ProxyError
from zlayer.proxy.models import RouteSpec

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


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


@dataclass(frozen=True)
class L7Table:
    """One L7 configuration as the C plane takes it (plain rows, so it also crosses the data-plane socket):
    listeners ``(host, port, tls)``, route rows, backend group rows and certificates ``(domain, cert, key)``."""

    listen: list[tuple[str, int, bool]]
    routes: list[tuple[str, int, str | None, str, bool, int, str]]
    groups: list[tuple[str, list[tuple[str, int, bool]]]]
    certificates: list[tuple[str, str, str]]

    def to_wire(self) -> dict[str, Any]:
        return {"listen": self.listen, "routes": self.routes, "groups": self.groups, "certs": self.certificates}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> L7Table:
        return cls(
            [(str(h), int(p), bool(t)) for h, p, t in d["listen"]],
            [(str(k), int(p), h, str(pre), bool(s), int(g), str(st)) for k, p, h, pre, s, g, st in d["routes"]],
            [(str(n), [(str(h), int(p), bool(ok)) for h, p, ok in bs]) for n, bs in d["groups"]],
            [(str(d_), str(c), str(k)) for d_, c, k in d["certs"]],
        )


def numeric_host(host: str) -> str:
    """Backends may be named; the data plane takes addresses (resolved once per apply)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ProxyError(f"cannot resolve backend host {host!r}: {exc.strerror}") from None
    return str(infos[0][4][0])


def compile_table(
    routes: list[RouteSpec],
    groups: Mapping[str, list[BackendState]],
    certificates: Mapping[str, tuple[Path, Path]],
) -> L7Table:
    """The C plane's rows for a route table (what every L7 plane applies)."""
    listen = sorted({(r.bind, r.port, r.protocol == "https") for r in routes})
    names = sorted({r.key for r in routes})
    index = {n: i for i, n in enumerate(names)}
    rows = [(r.key, r.port, r.host, r.path_prefix or "/", r.strip_prefix, index[r.key], r.strategy) for r in routes]
    group_rows = [(n, [(numeric_host(b.host), b.port, b.healthy) for b in groups.get(n, [])]) for n in names]
    certs = [(d, str(c), str(k)) for d, (c, k) in sorted(certificates.items())]
    return L7Table(listen, rows, group_rows, certs)


def stats_from(raw: Mapping[str, Mapping[str, Any]], active: Mapping[str, int]) -> dict[str, RouteStats]:
    """RouteStats from the C plane's counters (``Proxy.stats()`` and ``Proxy.backend_active()``)."""
    by_route: dict[str, dict[str, int]] = {}
    for k, v in active.items():  # "route|ip:port" -> in flight
        route, _, backend = k.partition("|")
        by_route.setdefault(route, {})[backend] = v
    out: dict[str, RouteStats] = {}
    for key, s in raw.items():
        cumulative: list[int] = []
        total = 0
        for count in s["buckets"]:
            total += count
            cumulative.append(total)
        out[key] = RouteStats(
            requests=s["requests"],
            status={c: n for c, n in zip(STATUS_CLASSES, s["status"], strict=True) if n},
            bytes_in=s["bytes_in"],
            bytes_out=s["bytes_out"],
            active_connections=s["active"],
            latency_buckets=cumulative,
            latency_sum=s["latency_sum"],
            backend_active=by_route.get(key, {}),
        )
    return out


class L7Plane(Protocol):
    def apply(
        self,
        routes: list[RouteSpec],
        groups: Mapping[str, list[BackendState]],
        certificates: Mapping[str, tuple[Path, Path]],
    ) -> None: ...

    def set_health(self, group: str, host: str, port: int, healthy: bool) -> None: ...

    def route_stats(self) -> dict[str, RouteStats]: ...

    def route_requests(self) -> dict[str, int]:
        """Each route's request count so far (what a request rate needs; :meth:`route_stats` builds everything)."""
        ...

    def set_challenge(self, token: str, key_authorization: str) -> None: ...

    def remove_challenge(self, token: str) -> None: ...

    def close(self) -> None: ...

    @property
    def serving(self) -> bool: ...


__all__ = [
    "LATENCY_BUCKETS",
    "BackendState",
    "L7Plane",
    "L7Table",
    "RouteStats",
    "compile_table",
    "numeric_host",
    "stats_from",
]
