"""Publishing replicas to the rest of the node: their healthy set to the proxy, their interfaces, service DNS and
port mappings to the network. Everything the agent says to :class:`ProxyHook` and :class:`NetworkHook` goes here."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from zlayer.agent.events import Events
from zlayer.agent.hooks import Backend, ClusterTrafficHook, NetworkHook, ProxyHook, PublishedPort, TrafficHook
from zlayer.agent.replica import Replica
from zlayer.errors import ZLayerError, with_context

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec


class Publisher:
    """Keeps the proxy's backends and the network's view in step with the live replicas."""

    def __init__(
        self,
        replicas: Mapping[str, Replica],
        events: Events,
        proxy: ProxyHook | None,
        network: NetworkHook | None,
        traffic: TrafficHook | None = None,
        cluster: ClusterTrafficHook | None = None,
    ) -> None:
        self.cluster = cluster
        self.replicas = replicas
        self.events = events
        self.proxy = proxy
        self.network = network
        self.traffic = traffic
        self._in_proxy: dict[tuple[str, str], int] = {}  # backends the proxy last accepted, per service

    # ------------------------------------------------------------------------------------------------ proxy

    async def publish(self, deployment: str, service: str, spec: ServiceSpec) -> None:
        """Send the service's healthy replicas to the proxy; a proxy refusal becomes an event, not a failure."""
        if self.proxy is None:
            return
        port = spec.backend_port
        healthy = [
            r
            for r in self.replicas.values()
            if r.deployment == deployment and r.service == service and r.healthy and not r.stopping
        ]
        backends = [Backend(r.key, self._address(r), port) for r in healthy]
        if self.cluster is not None and self.cluster.exposed() and spec.endpoints:
            # in a cluster: this node's replicas as the other nodes reach them (a host port each), and theirs here
            reachable = []
            for r in healthy:
                ports = [m.host_port for m in self.published(r.key) if m.container_port == port and m.host_port]
                if ports or not r.record.ip:  # on the host network, the replica's own port is the node's
                    reachable.append(Backend(r.key, "", ports[0] if ports else port))
            try:
                await self.cluster.report(deployment, service, reachable, port)
            except ZLayerError as e:
                await self.events.add(deployment, "proxy_error", with_context(service, e))
            backends += self.cluster.remote(deployment, service)
        try:
            await self.proxy.update_service(deployment, service, spec, backends)
            self._in_proxy[(deployment, service)] = len(backends)
        except ZLayerError as e:
            await self.events.add(deployment, "proxy_error", with_context(service, e))

    async def drain(self, rep: Replica, timeout: float) -> None:
        """Before a published replica stops: the proxy sends it nothing new, and the requests it is serving through
        the proxy finish (at most ``timeout`` s), so a scale-down or a rollout cuts none."""
        if self.traffic is None or not self.fronted(rep.spec):
            return
        try:
            await self.traffic.drain(rep.deployment, rep.service, self._address(rep), timeout)
        except ZLayerError as e:
            await self.events.add(rep.deployment, "proxy_error", with_context(rep.key, e))

    async def drained(self, rep: Replica) -> None:
        if self.traffic is not None and self.fronted(rep.spec):
            with contextlib.suppress(ZLayerError):
                await self.traffic.drained(rep.deployment, rep.service, self._address(rep))

    @staticmethod
    def _address(rep: Replica) -> str:
        return rep.record.ip or "127.0.0.1"

    async def unpublish(self, deployment: str, service: str) -> None:
        self._in_proxy.pop((deployment, service), None)
        if self.proxy is not None:
            await self.proxy.remove_service(deployment, service)

    def fronted(self, spec: ServiceSpec) -> bool:
        """Whether the proxy sends the service traffic at all (it has a proxy and endpoints)."""
        return self.proxy is not None and bool(spec.endpoints)

    def in_proxy(self, deployment: str, service: str) -> int:
        """How many backends the proxy last accepted for the service."""
        return self._in_proxy.get((deployment, service), 0)

    # ------------------------------------------------------------------------------------------------ network

    def dns_servers(self, spec: ServiceSpec) -> list[str]:
        """The node DNS servers a container of ``spec`` gets first (none on the host network)."""
        if self.network is None or spec.uses_host_network:
            return []
        return list(self.network.dns_servers())

    def wired(self, spec: ServiceSpec) -> bool:
        return self.network is not None and not spec.uses_host_network

    async def attach(self, rep: Replica, pid: int) -> str:
        assert self.network is not None
        return await self.network.attach(rep.deployment, rep.service, rep.record.id, pid)

    async def publish_ports(self, rep: Replica) -> None:
        mappings = list(rep.spec.port_mappings)
        port = rep.spec.backend_port
        cluster = self.cluster is not None and self.cluster.exposed() and bool(rep.spec.endpoints)
        if cluster and not any(m.container_port == port and m.protocol == "tcp" for m in mappings):
            from zlayer.spec.models import PortMapping  # the other nodes' proxies reach it on a host port here

            mappings.append(PortMapping(container_port=port))
        if self.network is not None and mappings and rep.record.ip:
            await self.network.publish(rep.record.id, mappings)

    async def withdraw(self, rep: Replica) -> None:
        if self.network is not None and self.network.published(rep.record.id):
            try:
                await self.network.withdraw(rep.record.id)
            except ZLayerError as e:
                await self.events.add(rep.deployment, "network_error", with_context(rep.key, e))

    def published(self, container: str) -> Sequence[PublishedPort]:
        return self.network.published(container) if self.network is not None else []

    async def detach(self, deployment: str, service: str, container: str) -> None:
        if self.network is not None:
            await self.network.detach(deployment, service, container)

    async def release(self, container: str) -> None:
        """Free what the network held for a container nobody adopts (address, veth, DNS entry, port mappings)."""
        if self.network is not None:
            with contextlib.suppress(ZLayerError, OSError):
                await self.network.detach("", "", container)


__all__ = ["Publisher"]
