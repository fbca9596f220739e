"""Admission of a deployment's ports: its endpoints and ``port_mappings`` against every other holder of a port of
this node (other deployments, the daemon's own listeners, other programs), before anything is stored or started.

A deployment that asks for a taken port is refused with ConflictError (HTTP 409) naming the holder; re-deploying a
deployment with the ports it already has is no conflict (its previous version is not counted as a holder).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from zlayer.agent.specload import ParsedDeployment
from zlayer.agent.specview import ServiceView, service_view
from zlayer.net.ports import PortClaim, admit
from zlayer.state import Store


def endpoint_claims(deployment: str, kind: str, name: str, raw: Mapping[str, Any]) -> list[PortClaim]:
    """The ports the endpoints of a service or an external (``kind``) take: where the proxy listens for them."""
    from zlayer.proxy.models import build

    section = "services" if kind == "service" else "externals"
    index = {str(e.get("name")): i for i, e in enumerate(raw.get("endpoints") or [])}
    routes, streams = build(deployment, name, raw)

    def claim(endpoint: str, protocol: str, bind: str, port: int, route: Any = None) -> PortClaim:
        owner = f"deployment {deployment!r} ({kind} {name!r}, endpoint {endpoint!r})"
        return PortClaim(owner, protocol, bind, port, f"{section}.{name}.endpoints[{index[endpoint]}].port", route)

    return [claim(r.endpoint, "tcp", r.bind, r.port, (r.protocol == "https", r.host or "", r.path_prefix))
            for r in routes] + [claim(s.endpoint, s.protocol, s.bind, s.port) for s in streams]  # fmt: skip


def service_claims(deployment: str, view: ServiceView) -> list[PortClaim]:
    """The ports the service takes: its endpoints and its fixed host ports."""
    from zlayer.net import port_mappings

    if view.rtype != "service" or view.host_network:
        return []  # jobs get no listeners; a host-network replica binds what it binds itself
    claims = endpoint_claims(deployment, "service", view.name, view.raw)
    for i, m in enumerate(port_mappings(view.raw.get("port_mappings"))):
        if m.host_port:
            where = f"services.{view.name}.port_mappings[{i}].host_port"
            owner = f"deployment {deployment!r} (service {view.name!r}, port_mappings[{i}])"
            claims.append(PortClaim(owner, m.protocol, m.host_ip, m.host_port, where))
    return claims


def deployment_claims(name: str, spec: Mapping[str, Any], views: Iterable[ServiceView]) -> list[PortClaim]:
    claims = [c for view in views for c in service_claims(name, view)]
    for ext, raw in (spec.get("externals") or {}).items():
        claims += endpoint_claims(name, "external", str(ext), raw)
    return claims


async def admit_ports(store: Store, parsed: ParsedDeployment, reserved: Iterable[PortClaim]) -> None:
    """Raise ConflictError when the deployment would take a port that is already held (see the module doc)."""
    held, before = list(reserved), list[PortClaim]()
    for dep in await store.list_deployments():
        views = [service_view(svc.name, svc.spec) for svc in await store.list_services(dep.name)]
        (before if dep.name == parsed.name else held).extend(deployment_claims(dep.name, dep.spec, views))
    new = deployment_claims(parsed.name, parsed.spec, parsed.services.values())
    # Ports this node already listens on (its API, its proxy for this or another deployment) are not probed: a bind
    # of them fails because they are ours. Each port is probed once.
    ours = {(c.protocol, c.port) for c in held + before}
    probe = {(c.protocol, c.port): c for c in new if (c.protocol, c.port) not in ours}
    admit(new, held, probe.values())


__all__ = ["admit_ports", "deployment_claims"]
