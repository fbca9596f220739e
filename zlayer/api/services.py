"""/api/v1/deployments/{deployment}/services: list, inspect, scale, logs, containers, exec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse

from zlayer.agent.replica import tail
from zlayer.api import exec_stream, forward
from zlayer.api.auth import actor_of
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
    request: Request,
    deployment: str,
    service: str,
    lines: Annotated[int, Query(ge=0, le=U32_MAX)] = 100,
    follow: bool = False,
    instance: str | None = None,
    c: ApiContext = Depends(ctx),
) -> PlainTextResponse | StreamingResponse:
    """Every replica's last ``lines`` lines, in replica order, whichever node of the cluster runs it (another
    node's are asked of it, :mod:`zlayer.api.forward`); with ``instance``, that replica's alone. A replica whose
    node the cluster has marked dead is left out, unless it alone is the one asked for (the answer then says so)."""
    svc = await _service(c, deployment, service)
    actor = actor_of(request)
    targets = [(n, r) for n, r in await every_node(c, deployment, service)
               if not instance or instance == str(r.replica) or instance in r.id]  # fmt: skip
    if not instance or any(r.state != "lost" for _, r in targets):  # a dead node's, unless it alone is asked for
        targets = [(n, r) for n, r in targets if not (n and r.state == "lost")]
    local = [r for n, r in targets if not n]
    if not follow:
        got = await asyncio.gather(*(
            _tail(c, svc, r, lines) if not n else forward.logs(c, n, r, lines, actor) for n, r in targets))  # fmt: skip
        return PlainTextResponse("".join(f"{line}\n" for chunk in got for line in chunk))
    remote: list[forward.LogStream] = []
    try:
        for n, r in targets:  # opened before the answer starts: a node that cannot be reached is the answer
            if n:
                remote.append(await forward.follow(c, n, r, lines, actor))
        first = [ln for r in local for ln in await _tail(c, svc, r, lines)]
    except BaseException:
        for s in remote:
            await s.close()
        raise

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in until_closing(following(), c.closing):
            yield chunk

    async def following() -> AsyncIterator[bytes]:
        for line in first:
            yield f"data: {line}\n\n".encode()
        # Follow each local replica's log from its end, and the other nodes' streams, emitting lines as they come.
        queue: asyncio.Queue[str] = asyncio.Queue(1024)

        async def tail(cid: str) -> None:
            async for ln in (await c.driver(cid)).logs(ContainerId.parse(cid), tail=0, follow=True):
                await queue.put(f"[{ln.stream}] {ln.message}")

        async def relay(s: forward.LogStream) -> None:
            async for ln in s.lines():
                await queue.put(ln)

        tasks = [asyncio.create_task(tail(r.id)) for r in local] + [asyncio.create_task(relay(s)) for s in remote]
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
            for s in remote:
                await s.close()

    return StreamingResponse(stream(), media_type="text/event-stream")


async def _tail(c: ApiContext, svc: ServiceRecord, rec: ContainerRecord, lines: int) -> list[str]:
    """The last ``lines`` lines of a replica this node runs (none when its driver has no log of it)."""
    return await tail(c.manager.drivers.for_service(c.manager.service_spec(svc)), ContainerId.parse(rec.id), lines)


@router.get("/{service}/containers", response_model=list[ContainerInfo], summary="List a service's containers.")
async def list_service_containers(deployment: str, service: str, c: ApiContext = Depends(ctx)) -> list[ContainerInfo]:
    await _service(c, deployment, service)
    return [container_info(c, rec) for rec in await c.store.list_containers(deployment, service)]


@router.post("/{service}/exec", response_model=ContainerExecResponse, summary="Run a command in a replica.")
async def exec_in_service(
    request: Request, deployment: str, service: str, body: ContainerExecRequest, c: ApiContext = Depends(ctx)
) -> ContainerExecResponse:
    node, target = await _exec_target(c, deployment, service, body.replica)
    if node:
        return ContainerExecResponse.model_validate(
            await forward.exec_(c, node, target, body.command, actor_of(request))
        )
    return exec_response(await c.manager.exec(target, body.command))


@router.websocket("/{service}/exec")
async def exec_in_service_attached(ws: WebSocket, deployment: str, service: str, c: ApiContext = Depends(ctx)) -> None:
    """The exec with stdio attached (see :mod:`zlayer.api.exec_stream`), in the replica the POST would pick."""
    await exec_stream.serve(ws, c, lambda req: _exec_target(c, deployment, service, req.replica))


async def _exec_target(
    c: ApiContext, deployment: str, service: str, replica: int | None
) -> tuple[str, ContainerRecord]:
    """``(node, replica)`` an exec runs in: ``replica`` when given, else the first healthy running one (this node's
    first) — on whichever node of the cluster runs it (node ``""``: this one)."""
    await _service(c, deployment, service)
    reps = [(n, r) for n, r in await every_node(c, deployment, service) if r.state == "running"]
    if replica is not None:
        reps = [(n, r) for n, r in reps if r.replica == replica]
        if not reps:
            raise NotFoundError(f"replica {replica} of {service!r} is not running", where="replica")
    if not reps:
        raise ConflictError(f"service {service!r} has no running replica")
    return min(reps, key=lambda nr: (nr[1].health != "healthy", nr[0] != "", nr[1].replica))
