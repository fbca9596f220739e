"""/api/v1/overlay/status|peers|ip-alloc|dns|services: this node's part of the cluster overlay (ZLayer's Overlay
routes), read from its :class:`zlayer.overlay.cluster.OverlayNode`. A node without an overlay (not in a cluster, no
root, the node network off) answers 409 naming why, as the cluster routes do on a node that is in none (ZLayer's 503
would read as the daemon failing). ``services/{name}`` answers where the service's overlay ends on each node that runs
a replica of it, where ZLayer's is a stub that answers an empty map; 404 when no node runs one."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from fastapi import APIRouter, Depends

from zlayer.api.context import ApiContext, ctx
from zlayer.errors import ZLayerError

router = APIRouter(prefix="/api/v1/overlay", tags=["Overlay"])
DNS_PORT = 15353  # ZLayer's (zlayer.overlay.cluster.DNS_PORT; the API does not import the overlay)


class OverlayUnavailable(ZLayerError):
    code = "no_overlay"
    http_status = 409


def _status(c: ApiContext) -> dict[str, Any]:
    ov = c.overlay
    if ov is None or not ov.up:
        why = getattr(ov, "error", "") if ov is not None else ""
        raise OverlayUnavailable(
            "the overlay network is not initialized on this node",
            where="/api/v1/overlay",
            hint=why or "it comes up once the node is in a cluster (zlayer node init|join)",
        )
    st: dict[str, Any] = ov.status()
    return st


@router.get("/status", summary="Get overlay network status.")
async def overlay_status(c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    st = _status(c)
    healthy = sum(1 for p in st["peers"] if p["healthy"])
    leader = False
    if c.cluster is not None and getattr(c.cluster, "in_cluster", False):
        leader = bool(await c.cluster.is_leader())
    return {
        "interface": st["interface"],
        "is_leader": leader,
        "node_ip": st["node_ip"],
        "cidr": st["overlay_cidr"],
        "slice_cidr": st["slice_cidr"],
        "port": st["listen_port"],
        "mtu": st["mtu"],
        "public_key": st["public_key"],
        "total_peers": len(st["peers"]),
        "healthy_peers": healthy,
        "unhealthy_peers": len(st["peers"]) - healthy,
        "last_check": int(time.time()),
    }


@router.get("/peers", summary="Get list of overlay peers.")
async def overlay_peers(c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    st = _status(c)
    now = int(time.time())
    peers = []
    for p in st["peers"]:
        nets = p["allowed_ips"]
        peers.append({
            "public_key": p["public_key"],
            "node": p["node"],
            "endpoint": p["endpoint"],
            "overlay_ip": str(next(ipaddress.ip_network(nets[0]).hosts())) if nets else None,
            "allowed_ips": nets,
            "healthy": p["healthy"],
            "last_handshake_secs": None if p["handshake_age_s"] is None else int(p["handshake_age_s"]),
            "last_handshake_unix_secs": p["last_handshake_unix_secs"],
            "rx_bytes": p["rx_bytes"],
            "tx_bytes": p["tx_bytes"],
            "last_ping_ms": None,
            "failure_count": 0 if p["healthy"] else 1,
            "last_check": now,
        })  # fmt: skip
    return {"total": len(peers), "healthy": sum(1 for p in peers if p["healthy"]), "peers": peers}


@router.get("/ip-alloc", summary="Get IP allocation status.")
async def overlay_ip_alloc(c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    st = _status(c)
    net = ipaddress.ip_network(st["slice_cidr"])
    total = net.num_addresses - 2 if net.version == 4 else net.num_addresses - 1
    used = sorted({st["node_ip"], *st["containers"].values()}, key=ipaddress.ip_address)
    return {
        "cidr": st["slice_cidr"],
        "total_ips": total,
        "allocated_count": len(used),
        "available_count": total - len(used),
        "utilization_percent": round(100.0 * len(used) / total, 2) if total else 100.0,
        "allocated_ips": used,
        "containers": st["containers"],
    }


@router.get("/dns", summary="Get DNS service status.")
async def overlay_dns(c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """The cluster's service DNS on this node; a node without one says ``enabled: false`` (not an error)."""
    ov = c.overlay
    binds: list[str] = list(getattr(ov, "dns_binds", []) or [])
    names: set[str] = set()
    for c_id, (_, svc, _) in ov.records.items() if ov is not None and binds else []:
        names.update({svc, f"{svc}.service.local", f"{c_id.rsplit('-', 1)[-1]}.{svc}.service.local"})
    return {
        "enabled": bool(binds),
        "bind_addr": binds[-1] if binds else None,
        "bind_addrs": binds,
        "port": DNS_PORT if binds else None,
        "zone": "service.local" if binds else None,
        "service_count": len({r[1] for r in ov.records.values()}) if ov is not None and binds else 0,
        "services": sorted(names),
    }


class NoBridge(ZLayerError):
    code = "not_found"
    http_status = 404


@router.get("/services/{name}", summary="Get the overlay status for a single service.")
async def overlay_service(name: str, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    """Where ``name``'s overlay ends on each node that runs a replica of it (ZLayer answers an empty map, a stub)."""
    _status(c)
    bridges: dict[str, Any] = c.overlay.bridges(name)  # _status checked it
    if not bridges:
        raise NoBridge(f"no node runs a replica of service {name!r} on the overlay", where=f"service {name}")
    return {"service": name, "mode": "shared", "bridges_by_node": bridges}


@router.get("/services/{name}/bridges/{node_id}", summary="Get the bridge attachment for a service on a specific node.")
async def overlay_service_bridge(name: str, node_id: str, c: ApiContext = Depends(ctx)) -> dict[str, Any]:
    _status(c)
    got: dict[str, Any] | None = c.overlay.bridges(name).get(node_id)
    if got is None:
        raise NoBridge(f"node {node_id} runs no replica of service {name!r} on the overlay",
                       where=f"service {name}, node {node_id}")  # fmt: skip
    return got
