"""/api/v1/cluster and /api/v1/nodes: ZLayer's cluster routes (join, nodes, labels, drain, mode, remove,
force-leader, join tokens), and this node's own ``init`` and ``connect`` (what ``zlayer node init``/``join`` ask).

``POST /api/v1/cluster/join`` is the one route a TCP client reaches without a bearer token: the join token it
carries is its authentication, checked by the leader before anything is written. ``GET /api/v1/cluster/ca`` is
public too: the cluster CA and its revocation list (nothing secret), which a joiner checks against its token's pin
before it sends the token on a connection verified by that CA."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from zlayer.api.context import ApiContext, ctx
from zlayer.cluster.membership import ClusterNode, Liveness, NotInCluster

router = APIRouter(tags=["Cluster"])


def _cluster(c: ApiContext) -> ClusterNode:
    node: ClusterNode | None = c.cluster
    if node is None:
        raise NotInCluster("this daemon runs without cluster support")
    return node


class InitRequest(BaseModel):
    advertise_addr: str
    raft_port: int = Field(default=9000, ge=1, le=65535)
    client_port: int = Field(default=2379, ge=1, le=65535)
    heartbeat_interval: float | None = None
    dead_after: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class ConnectRequest(BaseModel):
    leader: str | None = None
    token: str
    advertise_addr: str
    mode: str = "full"
    labels: dict[str, str] = Field(default_factory=dict)
    raft_port: int = Field(default=9000, ge=1, le=65535)
    client_port: int = Field(default=2379, ge=1, le=65535)


class ClusterJoinRequest(BaseModel):
    """ZLayer's ClusterJoinRequest (overlay and secrets fields accepted, unused until those land) with the
    joiner's etcd client port beside its raft (etcd peer) port, and its certificate request for the cluster's
    mutual TLS (``csr``)."""

    token: str
    advertise_addr: str
    raft_port: int = Field(default=9000, ge=1, le=65535)
    client_port: int = Field(default=2379, ge=1, le=65535)
    overlay_port: int = 0
    api_port: int = Field(default=3669, ge=1, le=65535)
    wg_public_key: str = ""
    mode: str = "full"
    services: list[str] | None = None
    cpu_total: float = 0.0
    memory_total: int = 0
    disk_total: int = 0
    gpus: list[dict[str, Any]] = Field(default_factory=list)
    os: str | None = None
    arch: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    secrets_pubkey: list[int] | None = None
    csr: str = Field(default="", max_length=16384)  # the joiner's etcd certificate request (PEM): it keeps its key


class UpdateLabelsRequest(BaseModel):
    labels: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class ModeRequest(BaseModel):
    mode: str


class ForceLeaderRequest(BaseModel):
    confirm: str


class RevokeRequest(BaseModel):
    token: str


class JoinTokenRequest(BaseModel):
    ttl: str | None = None


@router.post("/api/v1/cluster/init")
async def init(req: InitRequest, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """Make this node a cluster of one (``zlayer node init``); its deployments carry over."""
    node = _cluster(c)
    live = None
    if req.heartbeat_interval is not None or req.dead_after is not None:
        live = Liveness(req.heartbeat_interval or node.liveness.heartbeat, req.dead_after or node.liveness.dead_after)
    return await node.init(req.advertise_addr, req.raft_port, req.client_port, live, req.labels)


@router.post("/api/v1/cluster/connect")
async def connect(req: ConnectRequest, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """Join this node to the cluster whose leader ``leader`` (else the token's endpoint) is (``zlayer node join``)."""
    return await _cluster(c).join(req.leader, req.token, req.advertise_addr, req.mode, req.labels, req.raft_port,
                                  req.client_port)  # fmt: skip


@router.post("/api/v1/cluster/join")
async def join(req: ClusterJoinRequest, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """The leader admits a node that carries a valid join token (ZLayer's cluster_join)."""
    return await _cluster(c).admit(req.model_dump())


class AbortRequest(BaseModel):
    token: str
    node_id: str


@router.get("/api/v1/cluster/ca")
async def cluster_ca(c: ApiContext = Depends(ctx)) -> dict[str, str]:
    """The cluster CA this node's API certificate chains to, and its revocation list (PEM)."""
    return await _cluster(c).ca_bundle()


@router.post("/api/v1/cluster/join/abort", status_code=204)
async def join_abort(req: AbortRequest, c: ApiContext = Depends(ctx)) -> None:
    """A joiner that could not start its etcd member is taken out again (its join token proves who it is)."""
    await _cluster(c).abort(req.token, req.node_id)


@router.get("/api/v1/cluster/self")
async def this_node(c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """Which node this daemon is, and whether it leads."""
    node = _cluster(c)
    local, _ = node.need()
    return {"node_id": local.node_id, "advertise_addr": local.advertise, "is_leader": await node.is_leader()}


@router.get("/api/v1/cluster/nodes")
async def cluster_nodes(c: ApiContext = Depends(ctx)) -> list[dict[str, Any]]:
    return [e.summary() for e in await _cluster(c).entries()]


@router.get("/api/v1/cluster/nodes/{node_id}")
async def cluster_node(node_id: str, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    return (await _cluster(c).entry(node_id)).summary()


@router.post("/api/v1/cluster/nodes/{node_id}/labels")
async def labels(node_id: str, req: UpdateLabelsRequest, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    return {"labels": await _cluster(c).set_labels(node_id, req.labels, req.remove)}


@router.put("/api/v1/cluster/nodes/{node_id}/drain")
async def drain(node_id: str, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """The node gets ``draining`` and its replicas move to ready nodes (it stops each once its replacement runs
    healthy). Answers once the leader placed them: ``moved`` (to which node), ``pending`` (no node may take them:
    why, as ``zlayer status`` says it) and ``unmoved`` (not placed yet when the wait ran out)."""
    node, moves = await _cluster(c).drain(node_id)
    moved: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    unmoved: list[dict[str, Any]] = []
    for a, to in moves:
        item: dict[str, Any] = {"deployment": a.deployment, "service": a.service, "replica": a.replica}
        if to is None:
            svc = await c.store.get_service(a.deployment, a.service)
            pending.append({**item, "reason": svc.status_message if svc is not None else "removed"})
        elif to == node_id:
            unmoved.append(item)
        else:
            moved.append({**item, "to": to})
    return {"id": node.id, "status": node.status, "moved": moved, "pending": pending, "unmoved": unmoved}


@router.put("/api/v1/cluster/nodes/{node_id}/undrain")
async def undrain(node_id: str, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """The node is ready again: new replicas may go there; those that moved away during the drain stay put."""
    node = await _cluster(c).set_status(node_id, "ready")
    return {"id": node.id, "status": node.status}


@router.put("/api/v1/cluster/nodes/{node_id}/mode")
async def mode(node_id: str, req: ModeRequest, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    node = await _cluster(c).set_mode(node_id, req.mode)
    return {"id": node.id, "mode": node.mode}


@router.delete("/api/v1/cluster/nodes/{node_id}", status_code=204)
async def remove(node_id: str, c: ApiContext = Depends(ctx)) -> None:
    await _cluster(c).remove(node_id)


@router.post("/api/v1/cluster/force-leader")
async def force_leader(req: ForceLeaderRequest, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    return await _cluster(c).force_leader(req.confirm)


@router.post("/api/v1/cluster/revoke-token")
async def revoke_token(req: RevokeRequest, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    return {"revoked": await _cluster(c).revoke_token(req.token)}


@router.get("/api/v1/nodes")
async def list_nodes(c: ApiContext = Depends(ctx)) -> list[dict[str, Any]]:
    """ZLayer's NodeSummary list."""
    return [{"id": int(e.node.id), "address": e.node.advertise_addr, "role": e.node.role, "status": e.node.status,
             "labels": dict(e.node.labels), "last_seen": e.last_heartbeat // 1000}
            for e in await _cluster(c).entries()]  # fmt: skip


@router.get("/api/v1/nodes/{node_id}")
async def get_node(node_id: str, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """ZLayer's NodeDetails, with the node's GPUs, disk, mode and leadership beside it."""
    e = await _cluster(c).entry(node_id)
    r = e.node.resources
    return {
        "id": int(e.node.id),
        "address": e.node.advertise_addr,
        "role": e.node.role,
        "status": e.node.status,
        "labels": dict(e.node.labels),
        "last_heartbeat": e.last_heartbeat // 1000,
        "last_seen": e.last_heartbeat // 1000,
        "registered_at": e.registered_at // 1000,
        "services": [],
        "resources": {
            "cpu_total": r.cpu_cores,
            "cpu_used": 0.0,
            "cpu_percent": 0.0,
            "memory_total": r.memory_bytes,
            "memory_used": 0,
            "memory_percent": 0.0,
            "disk_total": r.disk_bytes,
            "gpus": [g.model_dump() for g in r.gpus],
        },
        "mode": e.node.mode,
        "is_leader": e.is_leader,
        "os": e.node.os,
        "arch": e.node.arch,
        "api_endpoint": f"{e.node.advertise_addr}:{e.api_port}",
    }


@router.post("/api/v1/nodes/join-token")
async def join_token(
    req: JoinTokenRequest | None = None, ttl: str | None = Query(default=None), c: ApiContext = Depends(ctx)
) -> dict[str, Any]:
    """A signed, single-use join token carrying this node's API endpoint (ZLayer's JoinTokenResponse)."""
    return await _cluster(c).issue_token(ttl or (req.ttl if req else None))
