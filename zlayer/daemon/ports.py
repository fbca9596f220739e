"""Admission of a deployment's ports: its endpoints and ``port_mappings`` against every other holder of a port of
this node (other deployments, the daemon's own listeners, other programs), before anything is stored or started.
It needs where the proxy would listen (``proxy.models``) and which ports are held (``net.ports``), so it lives here,
above both, and reaches the agent through its ``PortHook`` (``agent/hooks.py``).

A deployment that asks for a taken port is refused with ConflictError (HTTP 409) naming the holder; re-deploying a
deployment with the ports it already has is no conflict (its previous version is not counted as a holder).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from zlayer.net.ports import PortClaim, admit
from zlayer.state import Store

if TYPE_CHECKING:
    from zlayer.spec.models import DeploymentSpec, ExternalSpec, ServiceSpec


def endpoint_claims(deployment: str, kind: str, name: str, spec: ServiceSpec | ExternalSpec) -> list[PortClaim]:
    """The ports the endpoints of a service or an external (``kind``) take: where the proxy listens for them."""
    from zlayer.proxy.models import build

    section = "services" if kind == "service" else "externals"
    index = {e.name: i for i, e in enumerate(spec.endpoints)}
    routes, streams = build(deployment, name, spec)

    def claim(endpoint: str, protocol: str, bind: str, port: int, route: Any = None) -> PortClaim:
        owner = f"deployment {deployment!r} ({kind} {name!r}, endpoint {endpoint!r})"
        return PortClaim(owner, protocol, bind, port, f"{section}.{name}.endpoints[{index[endpoint]}].port", route)

    return [claim(r.endpoint, "tcp", r.bind, r.port, (r.protocol == "https", r.host or "", r.path_prefix))
            for r in routes] + [claim(s.endpoint, s.protocol, s.bind, s.port) for s in streams]  # fmt: skip


def service_claims(deployment: str, name: str, spec: ServiceSpec) -> list[PortClaim]:
    """The ports the service takes: its endpoints and its fixed host ports."""
    if spec.rtype != "service" or spec.uses_host_network:
        return []  # jobs get no listeners; a host-network replica binds what it binds itself
    claims = endpoint_claims(deployment, "service", name, spec)
    for i, m in enumerate(spec.port_mappings):
        if m.host_port:
            where = f"services.{name}.port_mappings[{i}].host_port"
            owner = f"deployment {deployment!r} (service {name!r}, port_mappings[{i}])"
            claims.append(PortClaim(owner, m.protocol, m.host_ip, m.host_port, where))
    return claims


def deployment_claims(spec: DeploymentSpec) -> list[PortClaim]:
    name = spec.deployment
    claims = [c for svc, body in spec.services.items() for c in service_claims(name, svc, body)]
    for ext, body in spec.externals.items():
        claims += endpoint_claims(name, "external", ext, body)
    return claims


class PortAdmission:
    """The agent's ``PortHook``: ``reserved`` are the daemon's own listeners (API, metrics), never given out."""

    def __init__(self, store: Store, reserved: Iterable[PortClaim] = ()) -> None:
        self.store = store
        self.reserved = tuple(reserved)

    async def admit(self, spec: DeploymentSpec, deployed: Mapping[str, DeploymentSpec]) -> None:
        await admit_ports(self.store, spec, self.reserved, deployed)


async def admit_ports(
    store: Store, spec: DeploymentSpec, reserved: Iterable[PortClaim], deployed: Mapping[str, DeploymentSpec]
) -> None:
    """Raise ConflictError when the deployment would take a port that is already held (see the module doc).
    ``deployed``: the specs of the node's deployments (a stored one missing there is read back from the store)."""
    from zlayer.spec.models import DeploymentSpec

    held, before = list(reserved), list[PortClaim]()
    for dep in await store.list_deployments():
        other = deployed.get(dep.name) or DeploymentSpec.model_validate(dep.spec)
        (before if dep.name == spec.deployment else held).extend(deployment_claims(other))
    new = deployment_claims(spec)
    # Ports this node already listens on (its API, its proxy for this or another deployment) are not probed: a bind
    # of them fails because they are ours. Each port is probed once.
    ours = {(c.protocol, c.port) for c in held + before}
    probe = {(c.protocol, c.port): c for c in new if (c.protocol, c.port) not in ours}
    admit(new, held, probe.values())


__all__ = ["PortAdmission", "PortClaim", "admit_ports", "deployment_claims"]
