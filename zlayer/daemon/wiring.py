"""What the daemon plugs into the agent: the node network (with its DNS server) and the endpoint proxy.

The proxy is :class:`zlayer.proxy.ProxyManager` over the C data planes, the only ones there are: no Python code moves
an endpoint's bytes, and a daemon whose C parts are not built does not start (:func:`zlayer._native.require_built`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zlayer.agent.hooks import Backend
from zlayer.config import DaemonConfig
from zlayer.errors import ProxyError
from zlayer.proxy import ProxyManager
from zlayer.proxy.dpclient import DataPlaneClient

if TYPE_CHECKING:
    from zlayer.overlay.cluster import OverlayNode
    from zlayer.security.secrets import Secrets
    from zlayer.spec.models import DeploymentSpec, ExternalSpec, PortMapping, ServiceSpec

log = logging.getLogger("zlayer.daemon")

DRAIN_TICK = 0.05  # seconds between two looks at a draining replica's requests in flight


@dataclasses.dataclass(frozen=True)
class AcmeSettings:
    """``serve --acme-email/--acme-directory``: certificates of https hosts come from this ACME directory
    (Let's Encrypt when none is named)."""

    directory_url: str | None
    email: str | None


class ManagedProxy:
    """The agent's ProxyHook over :class:`zlayer.proxy.ProxyManager` (C data planes)."""

    def __init__(
        self, manager: ProxyManager, acme: AcmeSettings | None = None, dataplane: DataPlaneClient | None = None
    ) -> None:
        self.pm = manager
        self.acme = acme
        self.dataplane = dataplane
        self._started = False
        self._names: dict[tuple[str, str], str] = {}  # (deployment, service) -> the name the proxy knows it by

    def _name(self, deployment: str, service: str, key: str | None = None) -> str:
        """The proxy keys services by name alone: the first deployment to use a name gets it plain (as ZLayer shows
        it), another deployment's service of the same name is ``service.deployment``, so neither replaces the
        other's routes. ``key`` keeps an external apart from a service of the same name."""
        name = self._names.get((deployment, key or service))
        if name is None:
            taken = set(self._names.values())
            name = service if service not in taken else f"{service}.{deployment}"
            self._names[(deployment, key or service)] = name
        return name

    async def update_external(self, deployment: str, name: str, spec: ExternalSpec) -> None:
        await self._start()
        await self.pm.add_external(deployment, self._name(deployment, name, f"externals.{name}"), spec)
        self._enable_acme()

    async def remove_external(self, deployment: str, name: str) -> None:
        proxied = self._names.pop((deployment, f"externals.{name}"), name)
        await self.pm.remove_service(proxied, deployment=deployment)

    async def _start(self) -> None:
        """The proxy starts with the first endpoint."""
        if not self._started:
            await self.pm.start()
            self._started = True

    def _enable_acme(self) -> None:
        """With ACME configured, once the first endpoint listens (it answers the HTTP-01 challenges): certificates of
        https hosts are issued from then on, and the ones due are renewed at once and every 12 h."""
        if self.acme is None or self.pm.acme is not None:
            return
        try:
            self.pm.enable_acme(directory_url=self.acme.directory_url, email=self.acme.email)
        except ProxyError as e:  # https endpoints keep their self-signed certificates
            log.error("ACME is off: %s", e)
            self.acme = None

    async def update_service(self, deployment: str, service: str, spec: ServiceSpec, backends: list[Backend]) -> None:
        await self._start()
        # Bare addresses: each endpoint then sends to the replica's address at that endpoint's target_port.
        name = self._name(deployment, service)
        await self.pm.add_service(deployment, name, spec)
        # A replica on another node of a cluster is reached on the host port that node published for it.
        port = spec.backend_port
        await self.pm.update_backends(name, [b.address if b.port == port else (b.address, b.port) for b in backends])
        self._enable_acme()

    async def remove_service(self, deployment: str, service: str) -> None:
        name = self._names.pop((deployment, service), service)
        await self.pm.remove_service(name, deployment=deployment)

    # ---- the agent's TrafficHook

    async def request_counts(self) -> dict[tuple[str, str], int]:
        if not self._started:
            return {}
        totals = self.pm.requests_totals()
        return {key: totals[name] for key, name in self._names.items() if name in totals}

    async def drain(self, deployment: str, service: str, address: str, timeout: float) -> None:
        name = self._names.get((deployment, service))
        if name is None or not self._started:
            return
        await self.pm.drain_backend(name, address)
        # Idle twice in a row, a tick apart: a request that took the old table just before the swap is counted by
        # the time of the second look.
        deadline = time.monotonic() + timeout
        idle = 0
        while idle < 2 and time.monotonic() < deadline:
            idle = idle + 1 if self.pm.in_flight(name, address) == 0 else 0
            await asyncio.sleep(DRAIN_TICK)

    async def drained(self, deployment: str, service: str, address: str) -> None:
        name = self._names.get((deployment, service))
        if name is not None and self._started:
            await self.pm.forget_backend(name, address)

    async def adopted(self) -> None:
        """The agent re-adopted its replicas: a re-adopted data-plane process gets the daemon's whole state now (until
        then it served the tables it had)."""
        if self.dataplane is not None:
            await self._start()
            await asyncio.to_thread(self.dataplane.synced)

    async def close(self) -> None:
        """A daemon stopping with services left keeps its data plane serving them (their containers run on too; the
        next daemon re-adopts both); with none left, the data-plane process stops (``stop_dataplane`` ends one
        from outside)."""
        # A daemon that stops before it sent a re-adopted process its state leaves the tables that process serves.
        keep = self.dataplane is not None and (bool(self.pm.services()) or self.dataplane.adopting)
        if self._started:
            await self.pm.close(keep_serving=keep)
        if self.dataplane is not None:
            await asyncio.to_thread(self.dataplane.detach if keep else self.dataplane.shutdown)


def make_proxy(cfg: DaemonConfig) -> ManagedProxy:
    """The proxy's C planes run in a data-plane process of their own that outlives this daemon
    (:mod:`zlayer.proxy.dataplane`); the one this data dir has running is re-adopted."""
    acme = AcmeSettings(cfg.acme_directory, cfg.acme_email) if cfg.acme_email or cfg.acme_directory else None
    client = DataPlaneClient(cfg.paths.run_dir, cfg.paths.log_dir / "dataplane.log")
    client.connect()
    pm = ProxyManager(
        data_dir=cfg.paths.sub("proxy"),
        l7=client.l7_plane(),
        listener_factory=client.listener,
        known_health=client.last_health,
    )
    return ManagedProxy(pm, acme, client)


class DaemonNetwork:
    """NodeNetwork plus the DNS server answering on the bridge gateway."""

    def __init__(self, cfg: DaemonConfig, overlay: OverlayNode | None = None) -> None:
        from zlayer.net import NodeNetwork
        from zlayer.net.node import choose_subnet

        subnet = cfg.node_subnet or choose_subnet(cfg.paths.data_dir)
        self.net = NodeNetwork(cfg.paths.data_dir, subnet)
        self.dns: Any = None
        self.overlay = overlay  # in a cluster: each container also gets an address of the node's overlay slice
        self._local: Any = None
        self.overlay_dns: list[Any] = []  # ZLayer's port 15353, on 127.0.0.1 and the node's overlay address

    def _lookup(self, asker: str, qname: str) -> list[str]:
        """In a cluster, the overlay addresses of the asker's deployment's replicas on every node; else (or for a
        name the cluster does not know) the replicas of this node."""
        ov = self.overlay
        if ov is not None and ov.up:
            me = next((c for c, ip in self.net.ipam.leases.items() if ip == asker), None)
            if me is not None and me in self.net.members:
                got: list[str] | None = ov.answer(self.net.members[me][0], qname)
            else:
                got = ov.lookup(asker, qname)
            if got:
                return got
        return list(self._local(asker, qname)) if self._local is not None else []

    async def _overlay_dns(self) -> None:
        from zlayer.net import DnsServer

        ov = self.overlay
        if self.overlay_dns or ov is None or not ov.up:
            return
        from zlayer.overlay.cluster import DNS_PORT

        for host in ("127.0.0.1", ov.address):
            server = DnsServer(self._lookup, _resolvers())
            try:
                await server.start(host, DNS_PORT)
            except OSError as e:
                log.warning("service DNS not available on %s:%d: %s", host, DNS_PORT, e)
                continue
            self.overlay_dns.append(server)
            ov.dns_binds.append(host)

    async def _ensure(self) -> None:
        if self.dns is None:
            from zlayer.net import DnsServer, service_records

            await self.net.setup()
            upstreams = _resolvers()
            self._local = service_records(self.net.members, self.net.ipam.leases)
            self.dns = DnsServer(self._lookup, upstreams)
            try:
                await self.dns.start(self.net.gateway, 53)
            except OSError as e:
                log.warning("service DNS not available on %s:53: %s", self.net.gateway, e)

    async def restore(self) -> None:
        """At start-up, with replicas left from the daemon before: their rules (isolation, port mappings) and
        their DNS server are back before the daemon re-adopts them, whatever happened to the tables meanwhile."""
        ov = self.overlay
        if ov is not None and ov.up:  # re-adopted replicas keep their overlay addresses (the leases file)
            self.net.overlay_in = (ov.ifname, str(ov.slice))
        if self.net.members:
            await self._ensure()
            await self._overlay_dns()

    async def attach(self, deployment: str, service: str, container: str, pid: int) -> str:
        if _same_netns(pid):
            return ""  # the container shares the host network: nothing to plumb
        await self._ensure()
        ip = await self.net.attach(deployment, service, container, pid)
        ov = self.overlay
        if ov is not None and ov.up:
            from zlayer.overlay.addressing import CLUSTER_CIDR

            self.net.overlay_in = (ov.ifname, str(ov.slice))
            address = ov.allocate(container)
            try:
                await self.net.add_overlay(pid, address, CLUSTER_CIDR)
            except Exception as e:  # the replica runs on its node address; it says why it has no overlay one
                ov.release(container)
                log.error("overlay: no overlay address for %s: %s", container, e)
            else:
                await ov.register(container, deployment, service)
                await self._overlay_dns()
        return ip

    async def detach(self, deployment: str, service: str, container: str) -> None:
        await self.net.detach(deployment, service, container)
        ov = self.overlay
        if ov is not None and container in ov.leases:
            await ov.unregister(container)
            await self.net.remove_overlay(ov.leases[container])
            ov.release(container)

    async def publish(self, container: str, mappings: Sequence[PortMapping]) -> None:
        from zlayer.net import port_mappings

        await self.net.publish(container, port_mappings(mappings))

    def published(self, container: str) -> list[Any]:
        return list(self.net.published(container))

    async def withdraw(self, container: str) -> None:
        await self.net.withdraw(container)
        ov = self.overlay
        if ov is not None and container in ov.leases:  # other nodes' proxies reach it by overlay address too
            await self.net.refuse_overlay(ov.leases[container])

    def dns_servers(self) -> list[str]:
        return [self.net.gateway]

    async def close(self) -> None:
        if self.dns is not None:
            self.dns.close()
        for server in self.overlay_dns:
            server.close()


def _same_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _resolvers() -> list[str]:
    out = []
    with contextlib.suppress(OSError), open("/etc/resolv.conf") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
                out.append(parts[1])
    return out


def make_overlay(cfg: DaemonConfig) -> OverlayNode | None:
    """The node's overlay (up once the node is in a cluster); none without root or the node network."""
    if os.geteuid() != 0 or cfg.host_network or os.environ.get("ZLAYER_NODE_NETWORK", "on") == "off":
        return None
    from zlayer.overlay.cluster import OverlayNode

    return OverlayNode(cfg.paths.sub("overlay"), port=cfg.wg_port, unhealthy_after=cfg.overlay_peer_timeout)


def make_network(cfg: DaemonConfig, overlay: OverlayNode | None = None) -> DaemonNetwork | None:
    if os.geteuid() != 0 or cfg.host_network or os.environ.get("ZLAYER_NODE_NETWORK", "on") == "off":
        return None
    return DaemonNetwork(cfg, overlay)


class SecretsBridge:
    """The agent's SecretsHook over :class:`zlayer.security.secrets.Secrets` (the agent does not import security):
    references checked at deploy, resolved when a replica is created, their versions part of what it is built from."""

    GRANT_WAIT = 20.0

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets

    async def check(self, spec: DeploymentSpec) -> None:
        from zlayer.errors import NotFoundError, UsageError

        await self.secrets.refresh()  # in a cluster: a secret set on another node a moment ago counts
        for name, svc in spec.services.items():
            try:
                self.secrets.check_env(spec.deployment, svc.env, where=f"services.{name}.env")
            except NotFoundError as e:  # a spec naming what is not there: the spec is refused (400), not a 404
                raise UsageError(e.message, where=e.where, hint=e.hint) from None

    async def resolve(self, deployment: str, service: str, env: Mapping[str, str]) -> dict[str, str]:
        """In a cluster a replica just assigned here may need a secret a keeper has not sealed for this node yet
        (it does within a second or so): wait for it up to ``GRANT_WAIT`` seconds, then fail naming it."""
        from zlayer.errors import NotFoundError
        from zlayer.security.secrets import NotGranted

        await self.secrets.refresh(max_age=1.0)  # one read of the cluster's rows serves a rollout's replicas
        deadline, said, fresh = time.monotonic() + self.GRANT_WAIT, False, False
        while True:
            try:
                return self.secrets.resolve_env(deployment, env, where=f"services.{service}.env")
            except NotFoundError:
                if fresh:
                    raise
                await self.secrets.refresh()  # set a moment ago on another node: the copy may be a second old
                fresh = True
            except NotGranted as e:
                if time.monotonic() >= deadline:
                    raise
                if not said:
                    log.info("secrets: a replica of %s/%s waits: %s yet", deployment, service, e.message)
                    said = True
                await asyncio.sleep(0.25)
                await self.secrets.refresh()

    async def versions(self, deployment: str, env: Mapping[str, str]) -> str:
        """Read now, never from a copy up to a second old: a rollout decides here, once, whether a replica is
        replaced, and a rotation written just before the deploy (by any node) must count — a keeper's copy is always
        that fresh (its sealing pass reads it twice a second), so a copy-aged check kept the old replica there for
        good. Unchanged, the read is one small transaction per service."""
        await self.secrets.refresh()
        return self.secrets.versions(deployment, env)


async def cluster_placements(client: Any) -> list[tuple[str, str, Mapping[str, str]]]:
    """``(node, deployment, env)`` for every replica the cluster's scheduler assigned: what the secrets' keepers seal
    for each node (``zlayer.security.cluster.ClusterSecretsHook``)."""
    from zlayer.cluster.assignments import EtcdAssignments
    from zlayer.cluster.membership import STATE
    from zlayer.state.etcd import EtcdStore

    assigned = await EtcdAssignments(client).assignments()
    if not assigned:
        return []
    specs = {d.name: d.spec for d in await EtcdStore(client, STATE).list_deployments()}
    out: list[tuple[str, str, Mapping[str, str]]] = []
    for a in assigned:
        svc = ((specs.get(a.deployment) or {}).get("services") or {}).get(a.service) or {}
        env = svc.get("env") if isinstance(svc, dict) else None
        if isinstance(env, dict) and env:
            out.append((a.node_id, a.deployment, {str(k): str(v) for k, v in env.items()}))
    return out
