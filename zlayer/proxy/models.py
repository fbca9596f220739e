"""What the proxy builds from a service's endpoints, as ZLayer does (spec-and-cli.md §4.5–4.6).

http, https and websocket endpoints become L7 routes, each with its own backend group keyed ``service#endpoint``;
tcp and udp endpoints become L4 stream listeners. ``expose: public`` binds 0.0.0.0, ``internal`` binds the node's
internal (overlay) address, or 127.0.0.1 when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from zlayer.spec.container import DEFAULT_SESSION_TIMEOUT, lb_strategy, session_timeout_seconds

if TYPE_CHECKING:
    from zlayer.spec.models import (
        ExternalSpec,
        HealthSpec,
        ServiceSpec,
        StreamEndpointConfig,
    )

L7_PROTOCOLS = ("http", "https", "websocket")
L4_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class HealthCheckSpec:
    """An active backend check: ``tcp_connect``, ``udp_probe`` (request, expect regex), ``http`` (path, status) or
    ``none`` (UDP streams without a health_check: backends count as healthy)."""

    kind: str = "tcp_connect"
    request: str = ""
    expect: str | None = None
    path: str = "/"
    expect_status: int | None = None  # None: any status below 500 counts as healthy


@dataclass(frozen=True)
class RouteSpec:
    """One L7 route: where it listens and which requests (host, path prefix) it takes."""

    deployment: str
    service: str
    endpoint: str
    protocol: str
    port: int
    target_port: int
    bind: str
    expose: str
    host: str | None = None
    path_prefix: str = "/"
    strip_prefix: bool = False
    health: HealthCheckSpec = field(default_factory=HealthCheckSpec)
    strategy: str = "round_robin"  # one of STRATEGIES

    @property
    def key(self) -> str:
        """The backend group name, ``service#endpoint`` as in ZLayer."""
        return f"{self.service}#{self.endpoint}"


@dataclass(frozen=True)
class StreamSpec:
    """One L4 listener (tcp or udp) of one endpoint."""

    deployment: str
    service: str
    endpoint: str
    protocol: str
    port: int
    target_port: int
    bind: str
    expose: str
    tls: bool = False
    proxy_protocol: int = 0  # 0 none, 1 text v1, 2 binary v2
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    host: str | None = None
    health: HealthCheckSpec = field(default_factory=HealthCheckSpec)

    @property
    def key(self) -> str:
        return f"{self.service}#{self.endpoint}"


def _stream_health(stream: StreamEndpointConfig | None, protocol: str) -> HealthCheckSpec:
    from zlayer.spec.models import UdpProbeCheck

    check = stream.health_check if stream is not None else None
    if check is None:
        # A UDP backend cannot be probed without knowing what it answers: no active check unless one is given.
        return HealthCheckSpec(kind="none") if protocol == "udp" else HealthCheckSpec()
    if isinstance(check, UdpProbeCheck):
        return HealthCheckSpec(kind="udp_probe", request=check.request, expect=check.expect)
    return HealthCheckSpec()


def _http_health(health: HealthSpec | None) -> HealthCheckSpec:
    from zlayer.spec.models import HttpCheck

    check = health.check if health is not None else None
    if isinstance(check, HttpCheck) and check.url:
        parts = urlsplit(check.url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return HealthCheckSpec(kind="http", path=path, expect_status=check.expect_status)
    return HealthCheckSpec(kind="http")


def build(
    deployment: str, service: str, spec: ServiceSpec | ExternalSpec, internal_address: str | None = None
) -> tuple[list[RouteSpec], list[StreamSpec]]:
    """The L7 routes and L4 streams of one service (or external) of a validated spec."""
    from zlayer.spec.models import ServiceSpec

    labels = spec.labels if isinstance(spec, ServiceSpec) else {}
    routes: list[RouteSpec] = []
    streams: list[StreamSpec] = []
    for ep in spec.endpoints:
        bind = "0.0.0.0" if ep.expose == "public" else (internal_address or "127.0.0.1")
        common: dict[str, Any] = {
            "deployment": deployment,
            "service": service,
            "endpoint": ep.name,
            "protocol": ep.protocol,
            "port": ep.port,
            "target_port": ep.container_port,
            "bind": bind,
            "expose": ep.expose,
            "host": ep.host,
        }
        if ep.protocol in L7_PROTOCOLS:
            routes.append(
                RouteSpec(
                    **common,
                    path_prefix=ep.path or "/",
                    health=_http_health(spec.health),
                    strategy=lb_strategy(labels, ep.name),
                )
            )
        else:
            stream = ep.stream
            streams.append(
                StreamSpec(
                    **common,
                    tls=stream.tls if stream is not None else False,
                    proxy_protocol=1 if stream is not None and stream.proxy_protocol else 0,
                    session_timeout=session_timeout_seconds(stream.session_timeout if stream else None),
                    health=_stream_health(stream, ep.protocol),
                )
            )
    return routes, streams


__all__ = ["HealthCheckSpec", "RouteSpec", "StreamSpec", "build"]
