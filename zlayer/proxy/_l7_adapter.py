"""The C L7 data plane (zlayer.proxy._l7) behind the control plane's :class:`~zlayer.proxy.l7.L7Plane` protocol.

The extension must be built (the daemon checks for it at start, :func:`zlayer._native.require_built`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from pathlib import Path

from zlayer.errors import ProxyError
from zlayer.proxy._l7 import Proxy
from zlayer.proxy.l7 import LATENCY_BUCKETS, BackendState, RouteStats
from zlayer.proxy.models import RouteSpec

log = logging.getLogger("zlayer.proxy")

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _numeric(host: str) -> str:
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


class CL7Plane:
    """HTTP/1.1 routes served by the C data plane: one listener per (bind, port), tables swapped atomically."""

    def __init__(
        self,
        workers: int = 1,
        *,
        header_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
    ) -> None:
        self.proxy = Proxy(workers, header_timeout, idle_timeout, connect_timeout, response_timeout)
        self._listening: dict[tuple[str, int], int] = {}
        self._started = False
        self._closed = False

    @property
    def serving(self) -> bool:
        return not self._closed

    def listen(self, host: str, port: int, tls: bool = False) -> int:
        """Opens a listener (port 0 picks a free one; TLS ones terminate with the certificates) and returns its port."""
        bound = self.proxy.listen(host, port, tls)
        self._listening[(host, bound)] = bound
        if not self._started:
            self.proxy.start()
            self._started = True
        return bound

    def apply(
        self,
        routes: list[RouteSpec],
        groups: Mapping[str, list[BackendState]],
        certificates: Mapping[str, tuple[Path, Path]],
    ) -> None:
        self.proxy.set_certificates([(d, str(c), str(k)) for d, (c, k) in sorted(certificates.items())])
        served = list(routes)
        for r in served:
            if (r.bind, r.port) not in self._listening:
                self.listen(r.bind, r.port, tls=r.protocol == "https")
        names = sorted({r.key for r in served})
        index = {n: i for i, n in enumerate(names)}
        table = [
            (r.key, r.port, r.host, r.path_prefix or "/", r.strip_prefix, index[r.key], r.strategy) for r in served
        ]
        group_rows = [(n, [(_numeric(b.host), b.port, b.healthy) for b in groups.get(n, [])]) for n in names]
        self.proxy.apply(table, group_rows)
        # A port no route uses any more stops listening (after the swap, so its last routes went with the old table;
        # connections it already accepted keep being served; adding a route on it again reopens it).
        wanted = {(r.bind, r.port) for r in served}
        for host, port in [k for k in self._listening if k not in wanted]:
            self.proxy.unlisten(host, port)
            del self._listening[(host, port)]

    def set_health(self, group: str, host: str, port: int, healthy: bool) -> None:
        self.proxy.set_health(group, _numeric(host), port, healthy)

    def route_stats(self) -> dict[str, RouteStats]:
        active = self.proxy.backend_active()
        out: dict[str, RouteStats] = {}
        for key, s in self.proxy.stats().items():
            cumulative: list[int] = []
            total = 0
            for count in s["buckets"]:
                total += count
                cumulative.append(total)
            assert len(cumulative) == len(LATENCY_BUCKETS) + 1
            out[key] = RouteStats(
                requests=s["requests"],
                status={c: n for c, n in zip(STATUS_CLASSES, s["status"], strict=True) if n},
                bytes_in=s["bytes_in"],
                bytes_out=s["bytes_out"],
                active_connections=s["active"],
                latency_buckets=cumulative,
                latency_sum=s["latency_sum"],
                backend_active={k.split("|", 1)[1]: v for k, v in active.items() if k.split("|", 1)[0] == key},
            )
        return out

    def set_challenge(self, token: str, key_authorization: str) -> None:
        self.proxy.set_challenge(token, key_authorization)

    def remove_challenge(self, token: str) -> None:
        self.proxy.remove_challenge(token)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.proxy.close()


def open_plane(workers: int = 1) -> CL7Plane:
    return CL7Plane(workers)


__all__ = ["CL7Plane", "open_plane"]
