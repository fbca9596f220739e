"""What the service manager tells the rest of the node about replicas — networking, the proxy, jobs and metrics —
as narrow protocols the daemon wires at start-up (``zlayer.daemon.server``).

Each is optional: without a network hook replicas share the host network (``127.0.0.1``), without a proxy hook no
listener is opened, without a job hook job and cron services are only recorded, without image digests a replica is
rebuilt only when its spec changes, without metrics nothing is counted, without a port hook ports are not
checked before a deploy, without a secrets hook a ``$S:`` reference fails the replica's start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from zlayer.spec.models import DeploymentSpec, ExternalSpec, PortMapping, ServiceSpec


@dataclass(frozen=True)
class Backend:
    """One healthy replica a proxy listener may send traffic to."""

    container: str
    address: str
    port: int


class PublishedPort(Protocol):
    """One port mapping as the node opened it (an ephemeral ``host_port`` as it was picked)."""

    @property
    def host_port(self) -> int: ...

    @property
    def container_port(self) -> int: ...

    @property
    def protocol(self) -> str: ...

    @property
    def host_ip(self) -> str: ...


class NetworkHook(Protocol):
    async def attach(self, deployment: str, service: str, container: str, pid: int) -> str:
        """Give the container (whose init is ``pid``) an interface; returns its address."""
        ...

    async def detach(self, deployment: str, service: str, container: str) -> None: ...

    async def publish(self, container: str, mappings: Sequence[PortMapping]) -> None:
        """Open the service's ``port_mappings`` on the host toward the container's address."""
        ...

    def published(self, container: str) -> Sequence[PublishedPort]:
        """The container's open port mappings."""
        ...

    async def withdraw(self, container: str) -> None:
        """Close the container's port mappings before it stops: a new connection to them is refused at once."""
        ...

    def dns_servers(self) -> list[str]:
        """The node's service DNS servers, put first in every container's resolv.conf."""
        ...


class ProxyHook(Protocol):
    async def update_service(self, deployment: str, service: str, spec: ServiceSpec, backends: list[Backend]) -> None:
        """Open or update the service's endpoint listeners, balancing over ``backends`` (may be empty)."""
        ...

    async def remove_service(self, deployment: str, service: str) -> None: ...

    async def update_external(self, deployment: str, name: str, spec: ExternalSpec) -> None:
        """Open or update the endpoints of ``externals.<name>``, sending to its fixed ``backends``."""
        ...

    async def remove_external(self, deployment: str, name: str) -> None: ...


class JobHook(Protocol):
    async def register(self, deployment: str, service: str, spec: ServiceSpec) -> None:
        """A job or cron service was deployed (a cron gets its schedule)."""
        ...


class ImageDigests(Protocol):
    async def digest(self, image: str) -> str | None:
        """The content digest the node holds under ``image`` (None when it cannot tell): a new image under the same
        name rolls the replicas built from the old one."""
        ...


class PortHook(Protocol):
    async def admit(self, spec: DeploymentSpec, deployed: Mapping[str, DeploymentSpec]) -> None:
        """Refuse (ConflictError naming the holder) a deployment that would take a port something else holds;
        ``deployed``: the node's deployments as the agent knows them (its own previous version is no holder)."""
        ...


class SecretsHook(Protocol):
    """The node's secrets, as the agent needs them: ZLayer's references in a service's ``env`` (``$S:name``,
    ``$S:name/field``, ``$S:@service/name``, ``$S::env/name``, ``$S:project:env/name``, ``$secret://env/name``)."""

    async def check(self, spec: DeploymentSpec) -> None:
        """Refuse (400, naming ``services.<svc>.env.<KEY>`` and the secret) a deployment whose references do not
        all resolve now."""
        ...

    async def resolve(self, deployment: str, service: str, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with each reference replaced by the secret's current value, when a replica is created; one that
        does not resolve raises, naming it (a replica never starts with an empty value)."""
        ...

    async def versions(self, deployment: str, env: Mapping[str, str]) -> str:
        """Which version of each referenced secret ``env`` would get now ('' without references): part of what a
        replica is built from, so a rollout after a rotation replaces it."""


class TrafficHook(Protocol):
    """What the proxy knows of a service's traffic: its request counters (the autoscaler's requests per second)
    and the requests in flight to one replica (drained before the replica stops)."""

    async def request_counts(self) -> Mapping[tuple[str, str], int]:
        """Requests (L7) plus connections and sessions (L4) each fronted service has taken so far, by
        ``(deployment, service)``; counters only grow while the service's listeners stay."""
        ...

    async def drain(self, deployment: str, service: str, address: str, timeout: float) -> None:
        """Send the replica at ``address`` no new request and wait, at most ``timeout`` s, until none it is serving
        through the proxy is left."""
        ...

    async def drained(self, deployment: str, service: str, address: str) -> None:
        """The replica at ``address`` is gone: forget it."""
        ...


class AssignmentHook(Protocol):
    """Which replicas of a service this node runs, when it is one node of a cluster (the leader's placement)."""

    async def replicas(self, deployment: str, service: str) -> set[int] | None:
        """The replica numbers of ``deployment``/``service`` assigned to this node; None when the node is not in a
        cluster (it runs every replica itself, numbered as it likes)."""
        ...

    def clustered(self) -> bool:
        """Whether the node is in a cluster now (else the hook changes nothing)."""
        ...

    async def handed_over(self, deployment: str, service: str, replicas: set[int]) -> set[int]:
        """Of ``replicas`` (running here, assigned here no more), those this node may stop now: assigned to no node
        (scaled away, or no node can take them), or running healthy on the node they are assigned to now."""
        ...

    async def settled(self, spec: DeploymentSpec) -> list[str]:
        """Wait (bounded) until every service of a deployment just deployed through this node runs its replicas
        healthy on the nodes it was placed on, or cannot; returns the failures (``service: why``). Returns at once
        when the node is not in a cluster."""
        ...

    async def down_begins(self, deployment: str) -> None:
        """A removal of ``deployment`` through this node starts: what the nodes said of an earlier one is forgotten."""
        ...

    async def share_down(self, deployment: str, error: str) -> None:
        """This node's share of a deployment being removed (status ``stopped``) is down: its replicas stopped and its
        proxy routes gone; ``error``: what could not be removed, if anything. Told to the node removing it."""
        ...

    async def shares_down(self, deployment: str, timeout: float) -> tuple[list[str], list[str]]:
        """Wait (at most ``timeout`` s) until every other live node's share of the deployment being removed through
        this node is down; returns ``(failures, notes)``: ``node N (address): why`` for each node whose share did not
        go down, and what a dead node still holds (removed when it returns)."""
        ...


class ClusterTrafficHook(Protocol):
    """A service's replicas on the other nodes of a cluster, for this node's proxy, and this node's for theirs."""

    def exposed(self) -> bool:
        """Whether replicas of fronted services are published on a host port for the other nodes' proxies."""
        ...

    def remote(self, deployment: str, service: str) -> list[Backend]:
        """The healthy replicas of the service on the other nodes (their overlay address and port, or their node
        address and host port)."""
        ...

    async def report(self, deployment: str, service: str, backends: list[Backend], port: int) -> None:
        """This node's healthy replicas of the service, as the other nodes reach them: ``backends`` by node address
        and host port, or by overlay address and ``port`` (the one they listen on)."""
        ...


class AgentMetrics(Protocol):
    def deploy_finished(self, seconds: float, ok: bool) -> None: ...

    def container_state(self, container: str, state: str) -> None: ...

    def container_gone(self, container: str) -> None: ...

    def health_result(self, service: str, ok: bool) -> None: ...

    def restart(self, service: str) -> None: ...


__all__ = [
    "AgentMetrics",
    "AssignmentHook",
    "Backend",
    "ClusterTrafficHook",
    "ImageDigests",
    "JobHook",
    "NetworkHook",
    "PortHook",
    "ProxyHook",
    "PublishedPort",
    "SecretsHook",
    "TrafficHook",
]
