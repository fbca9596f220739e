"""The node's proxy: L7 HTTP routes and L4 TCP/UDP streams built from service endpoints, backend health, TLS
certificates (files, self-signed, ACME HTTP-01), Prometheus metrics and the live state the API shows.

The data planes are C (``zlayer.proxy._l4`` from csrc/stream/, ``zlayer.proxy._l7`` from csrc/proxy/); this package
configures them and swaps their tables atomically. The daemon uses :class:`ProxyManager`. Names load lazily, so the
data-plane process (``python -m zlayer.proxy.dataplane``) imports only what it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zlayer.proxy.manager import ProxyManager
    from zlayer.proxy.models import HealthCheckSpec, RouteSpec, StreamSpec, build

__all__ = ["HealthCheckSpec", "ProxyManager", "RouteSpec", "StreamSpec", "build"]


def __getattr__(name: str) -> object:
    if name == "ProxyManager":
        from zlayer.proxy.manager import ProxyManager

        return ProxyManager
    if name in ("HealthCheckSpec", "RouteSpec", "StreamSpec", "build"):
        from zlayer.proxy import models

        return getattr(models, name)
    raise AttributeError(f"module 'zlayer.proxy' has no attribute {name!r}")
