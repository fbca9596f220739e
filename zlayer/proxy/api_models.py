"""Response models of ``GET /api/v1/proxy/routes|backends|streams|tls`` (ZLayer's OpenAPI shapes) and the functions
that read them from a live :class:`~zlayer.proxy.manager.ProxyManager`. The daemon mounts them, e.g.::

    @router.get("/api/v1/proxy/routes", response_model=RoutesResponse)
    async def list_routes() -> RoutesResponse:
        return routes_response(manager)
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from zlayer.proxy.manager import ProxyManager


class RouteInfo(BaseModel):
    service: str = Field(description="Owning service name.")
    endpoint: str = Field(description="Endpoint name within the service.")
    host: str | None = Field(None, description="Host pattern (e.g. `*.example.com`), or `null` for any host.")
    path_prefix: str = Field(description="Path prefix matched by this route.")
    protocol: str = Field(description="Protocol (http, https, tcp, etc.).")
    expose: str = Field(description="Exposure type (public / internal).")
    strip_prefix: bool = Field(description="Whether the matched prefix is stripped before forwarding.")
    target_port: int = Field(ge=0, description="Container target port.")
    backends: list[str] = Field(description="Backend addresses currently assigned to this route.")


class RoutesResponse(BaseModel):
    routes: list[RouteInfo]
    total: int = Field(ge=0)


class BackendInfo(BaseModel):
    address: str = Field(description="Backend address (`ip:port`).")
    healthy: bool = Field(description="Whether the backend is currently healthy.")
    active_connections: int = Field(ge=0, description="Number of in-flight connections.")
    consecutive_failures: int = Field(ge=0, description="Number of consecutive health-check failures.")


class BackendGroupInfo(BaseModel):
    service: str = Field(description="Service name.")
    strategy: str = Field(description="Load-balancing strategy (`round_robin` or `least_connections`).")
    backends: list[BackendInfo]
    healthy_count: int = Field(ge=0)
    total_count: int = Field(ge=0)


class BackendsResponse(BaseModel):
    groups: list[BackendGroupInfo]
    total_groups: int = Field(ge=0)


class StreamBackendInfo(BaseModel):
    address: str = Field(description="Backend address (`ip:port`).")


class StreamInfo(BaseModel):
    service: str
    protocol: str = Field(description="Transport protocol (`tcp` or `udp`).")
    port: int = Field(ge=0, description="Listen port on this node.")
    backends: list[StreamBackendInfo]
    backend_count: int = Field(ge=0)


class StreamsResponse(BaseModel):
    streams: list[StreamInfo]
    total: int = Field(ge=0)
    tcp_count: int = Field(ge=0)
    udp_count: int = Field(ge=0)


class CertInfo(BaseModel):
    domain: str
    fingerprint: str | None = None
    not_before: str | None = None
    not_after: str | None = None
    needs_renewal: bool


class TlsResponse(BaseModel):
    certificates: list[CertInfo]
    total: int = Field(ge=0)
    acme_available: bool
    acme_email: str | None = None


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def routes_response(manager: ProxyManager) -> RoutesResponse:
    routes = [
        RouteInfo(
            service=r.service,
            endpoint=r.endpoint,
            host=r.host,
            path_prefix=r.path_prefix,
            protocol=r.protocol,
            expose=r.expose,
            strip_prefix=r.strip_prefix,
            target_port=r.target_port,
            backends=[_addr(h, p) for h, p in manager.route_backends(r)],
        )
        for r in manager.routes()
    ]
    return RoutesResponse(routes=routes, total=len(routes))


def backends_response(manager: ProxyManager) -> BackendsResponse:
    groups: list[BackendGroupInfo] = []
    stats = manager.l7.route_stats()
    for r in manager.routes():
        active = stats[r.key].backend_active if r.key in stats else {}
        backends = []
        for h, p in manager.route_backends(r):
            state = manager.health.health(r.key, h, p)
            backends.append(
                BackendInfo(
                    address=_addr(h, p),
                    healthy=state.healthy,
                    active_connections=active.get(_addr(h, p), 0),
                    consecutive_failures=state.consecutive_failures,
                )
            )
        groups.append(_group(r.key, r.strategy, backends))
    for spec, listener in manager.streams():
        backends = []
        for b in listener.backends():
            state = manager.health.health(spec.key, b["host"], b["port"])
            backends.append(
                BackendInfo(
                    address=_addr(b["host"], b["port"]),
                    healthy=bool(b["healthy"]),
                    active_connections=int(b["active"]),
                    consecutive_failures=max(state.consecutive_failures, int(b["consecutive_failures"])),
                )
            )
        groups.append(_group(spec.key, "round_robin", backends))
    return BackendsResponse(groups=groups, total_groups=len(groups))


def _group(name: str, strategy: str, backends: list[BackendInfo]) -> BackendGroupInfo:
    return BackendGroupInfo(
        service=name,
        strategy=strategy,
        backends=backends,
        healthy_count=sum(b.healthy for b in backends),
        total_count=len(backends),
    )


def streams_response(manager: ProxyManager) -> StreamsResponse:
    streams = [
        StreamInfo(
            service=spec.service,
            protocol=spec.protocol,
            port=int(listener.port),
            backends=[StreamBackendInfo(address=_addr(b["host"], b["port"])) for b in listener.backends()],
            backend_count=len(listener.backends()),
        )
        for spec, listener in manager.streams()
    ]
    return StreamsResponse(
        streams=streams,
        total=len(streams),
        tcp_count=sum(s.protocol == "tcp" for s in streams),
        udp_count=sum(s.protocol == "udp" for s in streams),
    )


def tls_response(manager: ProxyManager) -> TlsResponse:
    now = dt.datetime.now(dt.UTC)
    certs = [
        CertInfo(
            domain=c.domain,
            fingerprint=c.fingerprint,
            not_before=c.not_before.isoformat(),
            not_after=c.not_after.isoformat(),
            needs_renewal=c.needs_renewal(now),
        )
        for c in manager.certificates()
    ]
    acme = manager.acme
    return TlsResponse(
        certificates=certs,
        total=len(certs),
        acme_available=acme is not None,
        acme_email=getattr(acme, "email", None),
    )


__all__ = [
    "BackendGroupInfo",
    "BackendInfo",
    "BackendsResponse",
    "CertInfo",
    "RouteInfo",
    "RoutesResponse",
    "StreamBackendInfo",
    "StreamInfo",
    "StreamsResponse",
    "TlsResponse",
    "backends_response",
    "routes_response",
    "streams_response",
    "tls_response",
]
