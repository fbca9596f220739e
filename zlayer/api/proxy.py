"""/api/v1/proxy/routes|backends|streams|tls: the live state of this node's proxy, read from its ProxyManager.

A context without a proxy (an API served without one, as some tests do) answers 503, as ZLayer's routes do when its
load balancer or registries are not initialised.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from zlayer.api.context import ApiContext, ctx
from zlayer.errors import DaemonError
from zlayer.proxy import ProxyManager
from zlayer.proxy.api_models import (
    BackendsResponse,
    RoutesResponse,
    StreamsResponse,
    TlsResponse,
    backends_response,
    routes_response,
    streams_response,
    tls_response,
)

router = APIRouter(prefix="/api/v1/proxy", tags=["Proxy"])


def _manager(c: ApiContext) -> ProxyManager:
    if c.proxy is None:
        raise DaemonError("the proxy is not available on this node", where="/api/v1/proxy")
    return c.proxy


@router.get("/routes", response_model=RoutesResponse, summary="List all registered proxy routes.")
async def list_routes(c: ApiContext = Depends(ctx)) -> RoutesResponse:
    return routes_response(_manager(c))


@router.get("/backends", response_model=BackendsResponse, summary="List all load-balancer backend groups.")
async def list_backends(c: ApiContext = Depends(ctx)) -> BackendsResponse:
    return backends_response(_manager(c))


@router.get("/streams", response_model=StreamsResponse, summary="List L4 stream proxies.")
async def list_streams(c: ApiContext = Depends(ctx)) -> StreamsResponse:
    return streams_response(_manager(c))


@router.get("/tls", response_model=TlsResponse, summary="List loaded TLS certificates.")
async def list_tls(c: ApiContext = Depends(ctx)) -> TlsResponse:
    return tls_response(_manager(c))
