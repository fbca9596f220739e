"""/api/v1/deployments: create (from YAML), list, inspect, raw spec, events, delete."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse

from zlayer.api.containers import every_node
from zlayer.api.context import ApiContext, ctx, until_closing
from zlayer.api.models import (
    SEQ_MAX,
    CreateDeploymentRequest,
    DeploymentDetails,
    DeploymentSummary,
    ServiceHealthInfo,
    StoredDeployment,
)
from zlayer.errors import NotFoundError
from zlayer.state import DeploymentRecord, EventRecord

router = APIRouter(prefix="/api/v1/deployments", tags=["Deployments"])


async def _get(c: ApiContext, name: str) -> DeploymentRecord:
    rec = await c.store.get_deployment(name)
    if rec is None:
        raise NotFoundError(f"deployment {name!r} not found", where=f"deployments/{name}")
    return rec


async def details(c: ApiContext, rec: DeploymentRecord) -> DeploymentDetails:
    health = []
    for svc in await c.store.list_services(rec.name):
        spec = c.manager.service_spec(svc)
        reps = [r for _, r in await every_node(c, rec.name, svc.name)]
        running = [r for r in reps if r.state == "running"]
        healthy = [r for r in running if r.health == "healthy"]
        if spec.rtype != "service":
            state = svc.status
        elif svc.status == "failed":
            state = "failed"
        elif svc.desired_replicas == 0:
            state = "stopped"
        elif len(healthy) >= svc.desired_replicas:
            state = "healthy"
        elif healthy:
            state = "degraded"
        else:
            state = "unhealthy" if running else "pending"
        eps = [f"{e.protocol}://{e.name}:{e.port}" for e in spec.endpoints]
        health.append(ServiceHealthInfo(name=svc.name, health=state, replicas_running=len(running),
                                        replicas_desired=svc.desired_replicas, endpoints=eps))  # fmt: skip
    status, message = c.manager.status_of(rec)
    return DeploymentDetails(
        name=rec.name,
        status=status,
        services=[h.name for h in health],
        service_health=health,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        status_message=message or None,
    )


@router.get("", response_model=list[DeploymentSummary], summary="List all deployments.")
async def list_deployments(c: ApiContext = Depends(ctx)) -> list[DeploymentSummary]:
    out = []
    for d in await c.store.list_deployments():
        n = len(await c.store.list_services(d.name))
        status = c.manager.status_of(d)[0]
        out.append(DeploymentSummary(name=d.name, status=status, service_count=n, created_at=d.created_at))
    return out


@router.post("", status_code=201, response_model=DeploymentDetails, summary="Create a new deployment.")
async def create_deployment(body: CreateDeploymentRequest, c: ApiContext = Depends(ctx)) -> DeploymentDetails:
    rec = await c.manager.deploy(body.spec)
    return await details(c, rec)


@router.get("/{name}", response_model=DeploymentDetails, summary="Get deployment details.")
async def get_deployment(name: str, c: ApiContext = Depends(ctx)) -> DeploymentDetails:
    return await details(c, await _get(c, name))


@router.get("/{name}/spec", response_model=StoredDeployment, summary="Get the stored deployment with its spec.")
async def get_deployment_spec(name: str, c: ApiContext = Depends(ctx)) -> StoredDeployment:
    rec = await _get(c, name)
    status: dict[str, str] = {"state": rec.status}
    if rec.status == "failed":
        status["message"] = rec.status_message
    return StoredDeployment(
        name=rec.name, spec=rec.spec, status=status, created_at=rec.created_at, updated_at=rec.updated_at
    )


@router.get(
    "/{name}/events",
    response_model=None,
    summary="Deployment events: Server-Sent Events, or a JSON list with follow=false.",
)
async def deployment_events(
    name: str, after: Annotated[int, Query(ge=0, le=SEQ_MAX)] = 0, follow: bool = True, c: ApiContext = Depends(ctx)
) -> StreamingResponse | JSONResponse:
    await _get(c, name)
    if not follow:
        events = await c.store.list_events(name, after)
        return JSONResponse([_event(e) for e in events])

    async def stream() -> AsyncIterator[bytes]:
        async for ev in until_closing(c.manager.follow_events(name, after), c.closing):
            body = _event(ev)
            yield f"id: {ev.seq}\nevent: {ev.kind}\ndata: {json.dumps(body)}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream")


def _event(e: EventRecord) -> dict[str, object]:
    """An event as the API shows it; ``data`` (e.g. a scale's metric and value) only where the event has some."""
    body: dict[str, object] = {"seq": e.seq, "kind": e.kind, "message": e.message, "timestamp": e.timestamp}
    if e.data:
        body["data"] = e.data
    return body


@router.delete("/{name}", status_code=204, summary="Delete a deployment.")
async def delete_deployment(name: str, c: ApiContext = Depends(ctx)) -> Response:
    await c.manager.delete(name)
    return Response(status_code=204)
