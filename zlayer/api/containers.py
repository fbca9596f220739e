"""/api/v1/containers: every container the node runs (its deployments' replicas, and standalone containers): list,
inspect, logs, stats, exec, remove; standalone containers are created, started, stopped, restarted, killed, paused,
waited for, renamed, updated, copied from and into and pruned here (the operations of
:mod:`zlayer.agent.standalone`, which the Docker API shim shares)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, WebSocket
from fastapi.responses import PlainTextResponse

from zlayer.agent.standalone import Standalone, container_spec
from zlayer.api import exec_stream, forward
from zlayer.api.auth import actor_of
from zlayer.api.context import ApiContext, ctx
from zlayer.api.models import (
    U32_MAX,
    ContainerChange,
    ContainerExecRequest,
    ContainerExecResponse,
    ContainerHealthInfo,
    ContainerInfo,
    ContainerPruneResponse,
    ContainerStatsResponse,
    ContainerTopResponse,
    ContainerUpdateRequest,
    ContainerUpdateResponse,
    ContainerWaitDockerResponse,
    ContainerWaitResponse,
    CreateContainerRequest,
    KillContainerRequest,
    NetworkAttachmentInfo,
    PortMapping,
    RestartContainerRequest,
    StopContainerRequest,
)
from zlayer.errors import ConflictError, NotFoundError, UsageError, ZLayerError
from zlayer.runtime.protocol import ContainerId, ExecResult, PathStat
from zlayer.spec.container import signal_name
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


async def every_node(
    c: ApiContext, deployment: str | None = None, service: str | None = None
) -> list[tuple[str, ContainerRecord]]:
    """``(node id, record)`` of the replicas on every node of the cluster; this node's alone (node ``""``) when it
    is in none, or when the cluster's state cannot be read now."""
    cluster = c.cluster
    if cluster is not None and cluster.in_cluster and cluster.local is not None:
        try:
            every = await getattr(c.store, "all_containers")()  # noqa: B009 - the cluster's EtcdStore has it
        except (ZLayerError, AttributeError):
            pass
        else:
            me = cluster.local.node_id
            with contextlib.suppress(ZLayerError):  # a dead node's replicas run nowhere now, whatever it last said
                dead = {n.id for n in await cluster.nodes() if n.status == "dead"}
                every = [(n, dataclasses.replace(r, state="lost", health="unknown") if n in dead else r)
                         for n, r in every]  # fmt: skip
            return [
                (n if n != me else "", r)
                for n, r in every
                if deployment in (None, r.deployment) and service in (None, r.service)
            ]
    return [("", r) for r in await c.store.list_containers(deployment, service)]


def node_of(c: ApiContext, node: str) -> str | None:
    """The node id shown for a replica: another node's as it is, this node's own when it is in a cluster."""
    if node:
        return node
    local = getattr(c.cluster, "local", None) if c.cluster is not None else None
    return str(local.node_id) if local is not None and c.cluster.in_cluster else None


def container_info(c: ApiContext, rec: ContainerRecord, node: str = "") -> ContainerInfo:
    if node:  # another node's replica: what that node last recorded of it
        return ContainerInfo(
            id=rec.id, name=rec.id, image=rec.image, state=rec.state,
            labels={"zlayer.deployment": rec.deployment, "zlayer.service": rec.service,
                    "zlayer.replica": str(rec.replica)},
            created_at=rec.created_at, exit_code=rec.exit_code, oom_killed=rec.oom_killed, pid=rec.pid or None,
            ipv4=rec.ip or None, health=ContainerHealthInfo(status=rec.health, failing_streak=0),
            restarts=rec.restarts, last_error=rec.last_error or None, deployment=rec.deployment,
            service=rec.service, replica=rec.replica, runtime=None, node=node,
        )  # fmt: skip
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
        node=node_of(c, ""),
    )


async def locate(c: ApiContext, container_id: str) -> tuple[str, ContainerRecord]:
    """``(node, record)`` of a replica this node runs (node ``""``) or, in a cluster, another node runs."""
    rec = await c.store.get_container(container_id)
    if rec is not None:
        return "", rec
    for node, other in await every_node(c):
        if other.id == container_id and node:
            return node, other
    raise NotFoundError(f"container {container_id!r} not found", where=f"containers/{container_id}")


async def _record(c: ApiContext, container_id: str) -> ContainerRecord:
    rec = await c.store.get_container(container_id)
    if rec is None:
        raise NotFoundError(f"container {container_id!r} not found", where=f"containers/{container_id}")
    return rec


@router.get("", response_model=list[ContainerInfo], summary="List containers.")
async def list_containers(label: str | None = None, c: ApiContext = Depends(ctx)) -> list[ContainerInfo]:
    out = [container_info(c, r, node) for node, r in await every_node(c)]
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
    request: Request, id: str, tail: Annotated[int | None, Query(ge=0, le=U32_MAX)] = None,
    c: ApiContext = Depends(ctx),
) -> PlainTextResponse:  # fmt: skip
    node, rec = await locate(c, id)
    if node:
        return PlainTextResponse("".join(f"{ln}\n" for ln in await forward.logs(c, node, rec, tail, actor_of(request))))
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
                                  memory_limit=limit, memory_percent=round(pct, 2), calls=st.calls,
                                  call_errors=st.call_errors, instances=st.instances)  # fmt: skip


@router.post("/{id}/exec", response_model=ContainerExecResponse, summary="Run a command in a container.")
async def container_exec(
    request: Request, id: str, body: ContainerExecRequest, c: ApiContext = Depends(ctx)
) -> ContainerExecResponse:
    node, rec = await locate(c, id)
    if node:
        return ContainerExecResponse.model_validate(await forward.exec_(c, node, rec, body.command, actor_of(request)))
    return exec_response(await c.manager.exec(rec, body.command))


@router.websocket("/{id}/exec")
async def container_exec_attached(ws: WebSocket, id: str, c: ApiContext = Depends(ctx)) -> None:
    """The exec with stdio attached (see :mod:`zlayer.api.exec_stream`), on whichever node runs the container."""
    await exec_stream.serve(ws, c, lambda _: locate(c, id))


@router.delete("/{id}", status_code=204, summary="Stop and remove a container (its service will replace it).")
async def remove_container(id: str, force: bool = False, c: ApiContext = Depends(ctx)) -> Response:
    sa = c.manager.standalone.by_id.get(id)
    if sa is not None:  # ZLayer's stop with a 30 s grace, then the removal
        if not force:
            await c.manager.standalone.stop(sa.id, REMOVE_GRACE)
        await c.manager.standalone.remove(sa.id, force=True)
        return Response(status_code=204)
    rec = await _record(c, id)
    await c.manager.remove_replica(rec, force=force)
    return Response(status_code=204)


# ----------------------------------------------------------------------------------------- standalone containers

REMOVE_GRACE = 30.0  # ZLayer's stop timeout before a removal
_RESTART = {"no": "no", "always": "always", "unless_stopped": "unless-stopped", "on_failure": "on-failure"}
_REFUSED = ("health_check", "node_selector", "platform", "registry_auth", "registry_credential_id", "lifecycle")


def _standalone(c: ApiContext, id: str) -> Standalone:
    """A standalone container by its id or its name."""
    got = c.manager.standalone.by_id.get(id)
    if got is None:
        named = [s for s in c.manager.standalone.by_id.values() if s.record.service == id]
        if len(named) == 1:
            return named[0]
        raise NotFoundError(f"no standalone container {id!r} (a deployment's replica is managed by its service)",
                            where=f"containers/{id}")  # fmt: skip
    return got


def service_block(req: CreateContainerRequest) -> dict[str, Any]:
    """The request as a service block of the spec (checked by :func:`zlayer.agent.standalone.container_spec`)."""
    for name in _REFUSED:
        if getattr(req, name) not in (None, [], {}):
            raise UsageError(f"{name} is not supported by this node", where=name)
    if req.networks:
        raise UsageError("networks: a standalone container is on the node's network only", where="networks")
    svc: dict[str, Any] = {"image": {"name": req.image, "pull_policy": req.pull_policy or "if_not_present"},
                           "scale": {"mode": "manual"}}  # fmt: skip
    cmd: dict[str, Any] = {}
    if req.command:
        cmd["entrypoint"], cmd["args"] = list(req.command), []
    if req.work_dir:
        cmd["workdir"] = req.work_dir
    if cmd:
        svc["command"] = cmd
    res = {k: v for k, v in (req.resources.model_dump() if req.resources else {}).items() if v is not None}
    for k in ("pids_limit", "cpu_shares", "cpuset", "memory_swap", "memory_reservation", "memory_swappiness",
              "oom_score_adj", "oom_kill_disable", "blkio_weight"):  # fmt: skip
        if getattr(req, k) is not None:
            res[k] = getattr(req, k)
    if res:
        svc["resources"] = res
    storage = []
    for v in req.volumes:
        if v.type == "bind":
            storage.append({"type": "bind", "source": v.source or "", "target": v.target, "readonly": v.readonly})
        elif v.type == "tmpfs":
            storage.append({"type": "tmpfs", "target": v.target})
        elif v.source:
            storage.append({"type": "named", "name": v.source, "target": v.target, "readonly": v.readonly})
        else:
            storage.append({"type": "anonymous", "target": v.target})
    if storage:
        svc["storage"] = storage
    if req.ports:
        svc["port_mappings"] = [p.model_dump(exclude_none=True) for p in req.ports]
    if req.cap_add:
        svc["capabilities"] = req.cap_add
    if req.ulimits:
        svc["ulimits"] = {k: v.model_dump() for k, v in req.ulimits.items()}
    for k in ("env", "labels", "user", "hostname", "network_mode", "privileged", "cap_drop", "devices", "dns",
              "extra_hosts", "extra_groups", "security_opt", "sysctls", "pid_mode", "ipc_mode", "read_only_root_fs",
              "init_container", "stop_signal", "stop_grace_period"):  # fmt: skip
        value = getattr(req, k)
        if value not in (None, [], {}, False):
            svc[k] = value
    return svc


@router.post("", response_model=ContainerInfo, status_code=201, summary="Create and start a container.")
async def create_container(body: CreateContainerRequest, c: ApiContext = Depends(ctx)) -> ContainerInfo:
    block = service_block(body)
    spec = container_spec(block, "body")
    name = body.name or f"c{secrets.token_hex(6)}"
    cid = ContainerId(name, 0)
    if str(cid) in c.manager.standalone.by_id or await c.store.get_container(str(cid)) is not None:
        raise ConflictError(f"a container named {name!r} already exists", where="name")
    await c.runtime.pull(spec.image.name, policy=spec.image.pull_policy)
    policy = body.restart_policy
    sa = await c.manager.standalone.create(
        "standalone", name, cid, spec, source=block, restart=_RESTART[policy.kind] if policy else "no",
        max_retries=(policy.max_attempts or 0) if policy else 0,
    )  # fmt: skip
    try:
        await c.manager.standalone.start(sa.id)
    except Exception:
        await c.manager.standalone.remove(sa.id, force=True)
        raise
    return container_info(c, sa.record)


@router.post("/prune", response_model=ContainerPruneResponse, summary="Prune stopped containers from the runtime.")
async def prune_containers(c: ApiContext = Depends(ctx)) -> ContainerPruneResponse:
    gone = []
    for sa in list(c.manager.standalone.by_id.values()):
        if not sa.running:
            await c.manager.standalone.remove(sa.id, force=True)
            gone.append(sa.id)
    return ContainerPruneResponse(ContainersDeleted=gone, SpaceReclaimed=0)


@router.post("/{id}/start", status_code=204, summary="Start a stopped container.")
async def start_container(id: str, c: ApiContext = Depends(ctx)) -> Response:
    await c.manager.standalone.start(_standalone(c, id).id)
    return Response(status_code=204)


@router.post("/{id}/stop", status_code=204, summary="Stop a container (SIGKILL after the timeout).")
async def stop_container(id: str, body: StopContainerRequest | None = None, c: ApiContext = Depends(ctx)) -> Response:
    timeout = body.timeout if body is not None else None
    await c.manager.standalone.stop(_standalone(c, id).id, None if timeout is None else float(timeout))
    return Response(status_code=204)


@router.post("/{id}/restart", status_code=204, summary="Restart a container.")
async def restart_container(
    id: str, body: RestartContainerRequest | None = None, c: ApiContext = Depends(ctx)
) -> Response:
    timeout = body.timeout if body is not None else None
    await c.manager.standalone.restart(_standalone(c, id).id, None if timeout is None else float(timeout))
    return Response(status_code=204)


@router.post("/{id}/kill", status_code=204, summary="Send a signal to a container (SIGKILL by default).")
async def kill_container(id: str, body: KillContainerRequest | None = None, c: ApiContext = Depends(ctx)) -> Response:
    sig = (body.signal if body is not None else None) or "KILL"
    try:
        signal_name(sig)
    except ValueError as e:
        raise UsageError(str(e), where="signal") from None
    await c.manager.standalone.kill(_standalone(c, id).id, sig)
    return Response(status_code=204)


@router.post("/{id}/pause", status_code=204, summary="Freeze every process of a container.")
async def pause_container(id: str, c: ApiContext = Depends(ctx)) -> Response:
    await c.manager.standalone.pause(_standalone(c, id).id)
    return Response(status_code=204)


@router.post("/{id}/unpause", status_code=204, summary="Thaw a paused container.")
async def unpause_container(id: str, c: ApiContext = Depends(ctx)) -> Response:
    await c.manager.standalone.unpause(_standalone(c, id).id)
    return Response(status_code=204)


@router.post("/{id}/rename", status_code=204, summary="Rename a container.")
async def rename_container(
    id: str, name: Annotated[str, Query(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")], c: ApiContext = Depends(ctx)
) -> Response:
    if any(s.record.service == name for s in c.manager.standalone.by_id.values()):
        raise ConflictError(f"a container named {name!r} already exists", where="name")
    await c.manager.standalone.rename(_standalone(c, id).id, name)
    return Response(status_code=204)


@router.post("/{id}/update", response_model=ContainerUpdateResponse, summary="Update a container's restart policy.")
async def update_container(
    id: str, body: ContainerUpdateRequest, c: ApiContext = Depends(ctx)
) -> ContainerUpdateResponse:
    sa = _standalone(c, id)
    fixed = sorted(k for k, v in body.model_dump(exclude={"RestartPolicy"}).items() if v not in (None, 0, ""))
    if fixed:
        raise UsageError(f"{', '.join(fixed)} cannot change on a running container on this node; recreate it",
                         where=fixed[0])  # fmt: skip
    if body.RestartPolicy is not None:
        await c.manager.standalone.update(sa.id, restart=body.RestartPolicy.Name or "no",
                                          max_retries=body.RestartPolicy.MaximumRetryCount or 0)  # fmt: skip
    return ContainerUpdateResponse(Warnings=[])


@router.get("/{id}/wait", response_model=ContainerWaitResponse, summary="Wait for a container to exit.")
async def wait_container(id: str, c: ApiContext = Depends(ctx)) -> ContainerWaitResponse:
    sa = _standalone(c, id)
    code = await c.manager.standalone.wait(sa.id)
    reason = "oom_killed" if sa.record.oom_killed else "signal" if code > 128 else "exited"
    return ContainerWaitResponse(id=sa.id, exit_code=code, reason=reason,
                                 signal=str(code - 128) if code > 128 else None,
                                 finished_at=sa.finished_at or None)  # fmt: skip


@router.post("/{id}/wait", response_model=ContainerWaitDockerResponse, summary="Wait (Docker's form).")
async def wait_container_docker(
    id: str, condition: Literal["not-running", "next-exit", "removed"] = "not-running", c: ApiContext = Depends(ctx)
) -> ContainerWaitDockerResponse:
    code = await c.manager.standalone.wait(_standalone(c, id).id, condition)
    return ContainerWaitDockerResponse(StatusCode=code)


@router.get("/{id}/top", response_model=ContainerTopResponse, summary="The processes running in a container.")
async def top_container(id: str, ps_args: str | None = None, c: ApiContext = Depends(ctx)) -> ContainerTopResponse:
    rec = await _record(c, id) if id not in c.manager.standalone.by_id else _standalone(c, id).record
    procs = await c.runtime.top(ContainerId.parse(rec.id))
    rows = [[str(p.uid), str(p.pid), str(p.ppid), p.stime, p.cmd] for p in procs]
    return ContainerTopResponse(Titles=["UID", "PID", "PPID", "STIME", "CMD"], Processes=rows)


@router.get("/{id}/changes", response_model=list[ContainerChange], summary="What a container changed in its files.")
async def container_changes(id: str, c: ApiContext = Depends(ctx)) -> list[ContainerChange]:
    rec = await _record(c, id) if id not in c.manager.standalone.by_id else _standalone(c, id).record
    return [ContainerChange(Path=f.path, Kind=f.kind) for f in await c.runtime.changes(ContainerId.parse(rec.id))]


def _stat_header(st: PathStat) -> dict[str, str]:
    mode = st.mode & 0o7777
    kind = st.mode & 0o170000
    mode |= (1 << 31) if kind == 0o040000 else (1 << 27) if kind == 0o120000 else 0  # Go's os.FileMode, as Docker
    doc = {"name": st.name, "size": st.size, "mode": mode, "mtime": st.mtime, "linkTarget": st.link_target}
    return {"X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(doc).encode()).decode()}


@router.head("/{id}/archive", summary="A path's stat inside a container (Docker's header), without its content.")
async def archive_stat(id: str, path: Annotated[str, Query(min_length=1)], c: ApiContext = Depends(ctx)) -> Response:
    rec = await _record(c, id)
    st = await c.runtime.path_stat(ContainerId.parse(rec.id), path)
    return Response(status_code=200, headers=_stat_header(st))


@router.get("/{id}/archive", summary="A path inside a container as a tar.")
async def archive_get(id: str, path: Annotated[str, Query(min_length=1)], c: ApiContext = Depends(ctx)) -> Response:
    rec = await _record(c, id)
    data, st = await c.runtime.get_archive(ContainerId.parse(rec.id), path)
    return Response(data, status_code=200, media_type="application/x-tar", headers=_stat_header(st))


@router.put("/{id}/archive", summary="Unpack a tar into a directory inside a container.")
async def archive_put(
    id: str, request: Request, path: Annotated[str, Query(min_length=1)], c: ApiContext = Depends(ctx)
) -> Response:
    rec = await _record(c, id)
    await c.runtime.put_archive(ContainerId.parse(rec.id), path, await request.body())
    return Response(status_code=200)
