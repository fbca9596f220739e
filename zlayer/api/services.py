"""/api/v1/deployments/{deployment}/services: list, inspect, scale, logs, containers, exec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse

from zlayer.api import exec_stream
from zlayer.api.containers import container_info, every_node, exec_response
from zlayer.api.context import ApiContext, ctx, until_closing
from zlayer.api.models import (
    U32_MAX,
    ContainerExecRequest,
    ContainerExecResponse,
    ContainerInfo,
    ScaleRequest,
    ServiceDetails,
    ServiceEndpoint,
    ServiceMetrics,
    ServiceSummary,
)
from zlayer.errors import ConflictError, NotFoundError
from zlayer.runtime.protocol import ContainerId
from zlayer.state import ContainerRecord, ServiceRecord

router = APIRouter(prefix="/api/v1/deployments/{deployment}/services", tags=["Services"])


async def _service(c: ApiContext, deployment: str, service: str) -> ServiceRecord:
    if await c.store.get_deployment(deployment) is None:
        raise NotFoundError(f"deployment {deployment!r} not found", where=f"deployments/{deployment}")
    svc = await c.store.get_service(deployment, service)
    if svc is None:
        raise NotFoundError(f"service {service!r} not found in deployment {deployment!r}", where=f"services/{service}")
    return svc


async def _summary(c: ApiContext, svc: ServiceRecord) -> dict[str, object]:
    spec = c.manager.service_spec(svc)
    reps = [r for _, r in await every_node(c, svc.deployment, svc.name)]
    eps = [
        ServiceEndpoint(name=e.name, protocol=e.protocol, port=e.port,
                        url=f"{'https' if e.protocol == 'https' else 'http'}://127.0.0.1:{e.port}{e.path or '/'}"
                        if e.protocol in ("http", "https", "websocket") else None)
        for e in spec.endpoints
    ]  # fmt: skip
    return {
        "name": svc.name,
        "deployment": svc.deployment,
        "status": svc.status,
        "replicas": sum(1 for r in reps if r.state == "running"),
        "desired_replicas": svc.desired_replicas,
        "endpoints": eps,
    }


@router.get("", response_model=list[ServiceSummary], summary="List services in a deployment.")
async def list_services(deployment: str, c: ApiContext = Depends(ctx)) -> list[ServiceSummary]:
    if await c.store.get_deployment(deployment) is None:
        raise NotFoundError(f"deployment {deployment!r} not found", where=f"deployments/{deployment}")
    return [ServiceSummary.model_validate(await _summary(c, s)) for s in await c.store.list_services(deployment)]


async def _details(c: ApiContext, svc: ServiceRecord) -> ServiceDetails:
    body = await _summary(c, svc)
    spec = c.manager.service_spec(svc)
    mode, lo, hi = spec.replicas_hint() if spec.rtype == "service" else (None, None, None)
    auto = c.manager.autoscale_status(svc)
    avg: dict[str, float] = auto["metrics"] if auto is not None else {}  # type: ignore[assignment]
    return ServiceDetails.model_validate(
        {
            **body,
            "metrics": ServiceMetrics(
                cpu_percent=avg.get("cpu", 0.0), memory_percent=avg.get("memory", 0.0), rps=avg.get("rps")
            ),
            "status_message": svc.status_message or None,
            "scale_mode": mode,
            "min_replicas": lo if mode != "manual" else None,
            "max_replicas": hi if mode != "manual" else None,
            "autoscale": auto,
        }
    )


@router.get("/{service}", response_model=ServiceDetails, summary="Get service details.")
async def get_service(deployment: str, service: str, c: ApiContext = Depends(ctx)) -> ServiceDetails:
    return await _details(c, await _service(c, deployment, service))


@router.post("/{service}/scale", response_model=ServiceDetails, summary="Scale a service.")
async def scale_service(
    deployment: str,
    service: str,
    body: ScaleRequest,
    stop_timeout: float | None = None,
    c: ApiContext = Depends(ctx),
) -> ServiceDetails:
    await _service(c, deployment, service)
    return await _details(c, await c.manager.scale(deployment, service, body.replicas, stop_timeout=stop_timeout))


@router.get("/{service}/logs", summary="Get service logs.", response_class=PlainTextResponse, response_model=None)
async def get_service_logs(
    deployment: str,
    service: str,
    lines: Annotated[int, Query(ge=0, le=U32_MAX)] = 100,
    follow: bool = False,
    instance: str | None = None,
    c: ApiContext = Depends(ctx),
) -> PlainTextResponse | StreamingResponse:
    await _service(c, deployment, service)
    first = await c.manager.service_logs(deployment, service, lines, instance)
    if not follow:
        return PlainTextResponse("".join(f"{line}\n" for line in first))

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in until_closing(following(), c.closing):
            yield chunk

    async def following() -> AsyncIterator[bytes]:
        for line in first:
            yield f"data: {line}\n\n".encode()
        seen = {rec.id: 0 for rec in await c.store.list_containers(deployment, service)}
        # Follow each replica's log from its end, emitting new lines as they are written.
        queue: asyncio.Queue[str] = asyncio.Queue(1024)

        async def tail(cid: str) -> None:
            async for ln in (await c.driver(cid)).logs(ContainerId.parse(cid), tail=0, follow=True):
                await queue.put(f"[{ln.stream}] {ln.message}")

        tasks = [asyncio.create_task(tail(cid)) for cid in seen]
        try:
            while True:
                try:
                    line = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield f"data: {line}\n\n".encode()
        finally:
            for t in tasks:
                t.cancel()

    return StreamingResponse(stream(), media_type="text/event-stream")


@router.get("/{service}/containers", response_model=list[ContainerInfo], summary="List a service's containers.")
async def list_service_containers(deployment: str, service: str, c: ApiContext = Depends(ctx)) -> list[ContainerInfo]:
    await _service(c, deployment, service)
    return [container_info(c, rec) for rec in await c.store.list_containers(deployment, service)]


@router.post("/{service}/exec", response_model=ContainerExecResponse, summary="Run a command in a replica.")
async def exec_in_service(
    deployment: str, service: str, body: ContainerExecRequest, c: ApiContext = Depends(ctx)
) -> ContainerExecResponse:
    target = await _exec_target(c, deployment, service, body.replica)
    return exec_response(await c.manager.exec(target, body.command))


@router.websocket("/{service}/exec")
async def exec_in_service_attached(ws: WebSocket, deployment: str, service: str, c: ApiContext = Depends(ctx)) -> None:
    """The exec with stdio attached (see :mod:`zlayer.api.exec_stream`), in the replica the POST would pick."""
    await exec_stream.serve(ws, c, lambda req: _exec_target(c, deployment, service, req.replica))


async def _exec_target(c: ApiContext, deployment: str, service: str, replica: int | None) -> ContainerRecord:
    """The replica an exec runs in: ``replica`` when given, else the first healthy running one."""
    await _service(c, deployment, service)
    reps = [r for r in await c.store.list_containers(deployment, service) if r.state == "running"]
    if replica is not None:
        reps = [r for r in reps if r.replica == replica]
        if not reps:
            raise NotFoundError(f"replica {replica} of {service!r} is not running", where="replica")
    if not reps:
        raise ConflictError(f"service {service!r} has no running replica")
    healthy = [r for r in reps if r.health == "healthy"]
    return (healthy or reps)[0]
