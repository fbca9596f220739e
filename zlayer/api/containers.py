"""/api/v1/containers: every container the node runs for its deployments: list, inspect, logs, stats, exec, remove."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, WebSocket
from fastapi.responses import PlainTextResponse

from zlayer.api import exec_stream
from zlayer.api.context import ApiContext, ctx
from zlayer.api.models import (
    U32_MAX,
    ContainerExecRequest,
    ContainerExecResponse,
    ContainerHealthInfo,
    ContainerInfo,
    ContainerStatsResponse,
    NetworkAttachmentInfo,
    PortMapping,
)
from zlayer.errors import NotFoundError
from zlayer.runtime.protocol import ContainerId, ExecResult
from zlayer.state import ContainerRecord

router = APIRouter(prefix="/api/v1/containers", tags=["Containers"])


def _published(c: ApiContext, container: str) -> list[PortMapping]:
    """The container's published port mappings, ephemeral host ports as the node picked them."""
    return [
        PortMapping(container_port=m.container_port, host_port=m.host_port, protocol=m.protocol, host_ip=m.host_ip)
        for m in c.manager.published_ports(container)
    ]


def exec_response(res: ExecResult) -> ContainerExecResponse:
    return ContainerExecResponse(exit_code=res.exit_code, stdout=res.stdout.decode(errors="replace"),
                                 stderr=res.stderr.decode(errors="replace"), oom_killed=res.oom_killed)  # fmt: skip


def container_info(c: ApiContext, rec: ContainerRecord) -> ContainerInfo:
    status, streak, detail = c.manager.replica_health(rec.id)
    return ContainerInfo(
        id=rec.id,
        name=rec.id,
        image=rec.image,
        state=rec.state,
        labels={"zlayer.deployment": rec.deployment, "zlayer.service": rec.service, "zlayer.replica": str(rec.replica)},
        created_at=rec.created_at,
        exit_code=rec.exit_code,
        oom_killed=rec.oom_killed,
        pid=rec.pid or None,
        ipv4=rec.ip or None,
        ports=_published(c, rec.id),
        networks=[NetworkAttachmentInfo(network="zlayer", ipv4=rec.ip, aliases=[rec.service, rec.id])]
        if rec.ip
        else [],
        health=ContainerHealthInfo(
            status=rec.health if status == "unknown" else status, failing_streak=streak, last_output=detail or None
        ),
        restarts=rec.restarts,
        last_error=rec.last_error or None,
        deployment=rec.deployment,
        service=rec.service,
        replica=rec.replica,
        runtime=c.manager.replica_runtime(rec.id) or None,
    )


async def _record(c: ApiContext, container_id: str) -> ContainerRecord:
    rec = await c.store.get_container(container_id)
    if rec is None:
        raise NotFoundError(f"container {container_id!r} not found", where=f"containers/{container_id}")
    return rec


@router.get("", response_model=list[ContainerInfo], summary="List containers.")
async def list_containers(label: str | None = None, c: ApiContext = Depends(ctx)) -> list[ContainerInfo]:
    out = [container_info(c, r) for r in await c.store.list_containers()]
    if label:
        key, _, value = label.partition("=")
        out = [i for i in out if key in i.labels and (not value or i.labels[key] == value)]
    return out


@router.get("/{id}", response_model=ContainerInfo, summary="Inspect a container.")
async def get_container(id: str, c: ApiContext = Depends(ctx)) -> ContainerInfo:
    return container_info(c, await _record(c, id))


@router.get("/{id}/port", summary="Report the published port mappings for a container.")
async def port_container(id: str, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """Docker's ``GET /containers/{id}/port`` shape: ``{"Ports": {"80/tcp": [{"HostIp": .., "HostPort": ".."}]}}``."""
    rec = await _record(c, id)
    ports: dict[str, list[dict[str, str]]] = {}
    for m in _published(c, rec.id):
        ports.setdefault(f"{m.container_port}/{m.protocol}", []).append(
            {"HostIp": m.host_ip, "HostPort": str(m.host_port)}
        )
    return {"Ports": ports}


@router.get("/{id}/logs", response_class=PlainTextResponse, summary="A container's output.")
async def container_logs(
    id: str, tail: Annotated[int | None, Query(ge=0, le=U32_MAX)] = None, c: ApiContext = Depends(ctx)
) -> PlainTextResponse:
    await _record(c, id)
    lines = [
        f"[{ln.stream}] {ln.message}\n" async for ln in (await c.driver(id)).logs(ContainerId.parse(id), tail=tail)
    ]
    return PlainTextResponse("".join(lines))


@router.get("/{id}/stats", response_model=ContainerStatsResponse, summary="A container's resource use now.")
async def container_stats(id: str, c: ApiContext = Depends(ctx)) -> ContainerStatsResponse:
    await _record(c, id)
    st = await (await c.driver(id)).stats(ContainerId.parse(id))
    limit = st.memory_limit_bytes or 0
    pct = (100.0 * st.memory_usage_bytes / limit) if limit else 0.0
    return ContainerStatsResponse(id=id, cpu_usage_usec=st.cpu_usage_ns // 1000, memory_bytes=st.memory_usage_bytes,
                                  memory_limit=limit, memory_percent=round(pct, 2))  # fmt: skip


@router.post("/{id}/exec", response_model=ContainerExecResponse, summary="Run a command in a container.")
async def container_exec(id: str, body: ContainerExecRequest, c: ApiContext = Depends(ctx)) -> ContainerExecResponse:
    res = await c.manager.exec(await _record(c, id), body.command)
    return exec_response(res)


@router.websocket("/{id}/exec")
async def container_exec_attached(ws: WebSocket, id: str, c: ApiContext = Depends(ctx)) -> None:
    """The exec with stdio attached (see :mod:`zlayer.api.exec_stream`)."""
    await exec_stream.serve(ws, c, lambda _: _record(c, id))


@router.delete("/{id}", status_code=204, summary="Stop and remove a container (its service will replace it).")
async def remove_container(id: str, force: bool = False, c: ApiContext = Depends(ctx)) -> Response:
    rec = await _record(c, id)
    await c.manager.remove_replica(rec, force=force)
    return Response(status_code=204)
