"""The C L7 data plane (zlayer.proxy._l7) behind the control plane's :class:`~zlayer.proxy.l7.L7Plane` protocol.

The extension must be built (the daemon checks for it at start, :func:`zlayer._native.require_built`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from zlayer.proxy._l7 import Proxy
from zlayer.proxy.l7 import BackendState, L7Table, RouteStats, compile_table, numeric_host, stats_from
from zlayer.proxy.models import RouteSpec

log = logging.getLogger("zlayer.proxy")


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
        self.apply_table(compile_table(list(routes), groups, certificates))

    def apply_table(self, table: L7Table) -> None:
        """Swaps in a compiled table: new ports listen first, ports no route uses any more close after the swap."""
        self.proxy.set_certificates(table.certificates)
        for host, port, tls in table.listen:
            if (host, port) not in self._listening:
                self.listen(host, port, tls=tls)
        self.proxy.apply(table.routes, table.groups)
        # A port no route uses any more stops listening (after the swap, so its last routes went with the old table;
        # connections it already accepted keep being served; adding a route on it again reopens it).
        wanted = {(h, p) for h, p, _ in table.listen}
        for host, port in [k for k in self._listening if k not in wanted]:
            self.proxy.unlisten(host, port)
            del self._listening[(host, port)]

    def unlisten_all(self) -> None:
        """Closes every listening socket (open connections go on); used when a successor process took them."""
        for host, port in list(self._listening):
            self.proxy.unlisten(host, port)
            del self._listening[(host, port)]

    def set_health(self, group: str, host: str, port: int, healthy: bool) -> None:
        self.proxy.set_health(group, numeric_host(host), port, healthy)

    def route_stats(self) -> dict[str, RouteStats]:
        return stats_from(self.proxy.stats(), self.proxy.backend_active())

    def route_requests(self) -> dict[str, int]:
        return self.proxy.requests()

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
