"""/health/live and /health/ready (no authentication: load balancers and systemd probe them)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from zlayer._version import __version__
from zlayer.api.context import ApiContext, ctx
from zlayer.api.models import HealthResponse

router = APIRouter(tags=["Health"])


def _body(c: ApiContext, status: str) -> HealthResponse:
    return HealthResponse(
        status=status, version=__version__, runtime_name=c.runtime_name, uptime_secs=int(time.monotonic() - c.started)
    )


@router.get("/health/live", response_model=HealthResponse)
async def live(c: ApiContext = Depends(ctx)) -> HealthResponse:
    return _body(c, "ok")


@router.get(
    "/health/ready", response_model=None, responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse}}
)
async def ready(c: ApiContext = Depends(ctx)) -> HealthResponse | JSONResponse:
    if not c.ready:
        return JSONResponse(_body(c, "starting").model_dump(), status_code=503)
    return _body(c, "ready")
