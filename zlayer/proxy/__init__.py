"""The node's proxy: L7 HTTP routes and L4 TCP/UDP streams built from service endpoints, backend health, TLS
certificates (files, self-signed, ACME HTTP-01), Prometheus metrics and the live state the API shows.

The data planes are C (``zlayer.proxy._l4`` from csrc/stream/, ``zlayer.proxy._l7`` from csrc/proxy/); this package
configures them and swaps their tables atomically. The daemon uses :class:`ProxyManager`.
"""

from zlayer.proxy.manager import ProxyManager
from zlayer.proxy.models import HealthCheckSpec, RouteSpec, StreamSpec, build

__all__ = ["HealthCheckSpec", "ProxyManager", "RouteSpec", "StreamSpec", "build"]
