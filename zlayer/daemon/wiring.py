"""What the daemon plugs into the agent: the node network (with its DNS server) and the endpoint proxy.

The proxy is :class:`zlayer.proxy.ProxyManager` when that package provides it. Until then the daemon runs a small
asyncio TCP forwarder per endpoint port (``expose: public`` on 0.0.0.0, ``internal`` on 127.0.0.1), round-robin over
healthy replicas, so endpoints are reachable from the first deploy; it moves bytes in Python and is the slow path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from typing import Any

from zlayer.agent.hooks import Backend
from zlayer.agent.specview import ServiceView
from zlayer.config import DaemonConfig
from zlayer.errors import ProxyError

log = logging.getLogger("zlayer.daemon")


class _Listener:
    def __init__(self, port: int, host: str) -> None:
        self.port = port
        self.host = host
        self.backends: list[Backend] = []
        self._rr = itertools.count()
        self.server: asyncio.base_events.Server | None = None
        self.conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self.server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        except OSError as e:
            raise ProxyError(f"cannot listen on {self.host}:{self.port}: {e.strerror}") from e

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.conns.add(task)
        try:
            for _ in range(max(len(self.backends), 1)):
                if not self.backends:
                    break
                b = self.backends[next(self._rr) % len(self.backends)]
                try:
                    up_r, up_w = await asyncio.wait_for(asyncio.open_connection(b.address, b.port), 5.0)
                except (OSError, TimeoutError):
                    continue
                await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer), return_exceptions=True)
                return
        finally:
            writer.close()
            if task is not None:
                self.conns.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.conns):
            t.cancel()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()


class ForwardingProxy:
    """The agent's ProxyHook over asyncio listeners, one per endpoint port."""

    def __init__(self, internal_host: str = "127.0.0.1") -> None:
        self.internal_host = internal_host
        self.listeners: dict[int, _Listener] = {}
        self.owners: dict[int, tuple[str, str]] = {}

    async def update_service(self, deployment: str, service: ServiceView, backends: list[Backend]) -> None:
        for ep in service.endpoints:
            if ep.protocol == "udp":
                continue
            owner = self.owners.get(ep.port)
            if owner is not None and owner != (deployment, service.name):
                raise ProxyError(f"port {ep.port} is already used by {owner[0]}/{owner[1]}",
                                 where=f"services.{service.name}.endpoints.{ep.name}")  # fmt: skip
            lst = self.listeners.get(ep.port)
            if lst is None:
                host = "0.0.0.0" if ep.expose == "public" else self.internal_host
                lst = _Listener(ep.port, host)
                await lst.start()
                self.listeners[ep.port] = lst
                self.owners[ep.port] = (deployment, service.name)
            lst.backends = [Backend(b.container, b.address, ep.target_port) for b in backends]

    async def remove_service(self, deployment: str, service: str) -> None:
        for port, owner in list(self.owners.items()):
            if owner == (deployment, service):
                await self.listeners.pop(port).close()
                del self.owners[port]

    async def close(self) -> None:
        for lst in self.listeners.values():
            await lst.close()


L7 = ("http", "https", "websocket")


def _only(view: ServiceView, l7: bool) -> ServiceView:
    """The service with only its L7 (or only its L4) endpoints."""
    keep = [e for e in view.endpoints if (e.protocol in L7) == l7]
    raw_eps = [e for e in view.raw.get("endpoints") or [] if (str(e.get("protocol", "")).lower() in L7) == l7]
    return dataclasses.replace(view, endpoints=tuple(keep), raw={**view.raw, "endpoints": raw_eps})


@dataclasses.dataclass(frozen=True)
class AcmeSettings:
    """``serve --acme-email/--acme-directory``: certificates of https hosts come from this ACME directory
    (Let's Encrypt when none is named)."""

    directory_url: str | None
    email: str | None


class ManagedProxy:
    """The agent's ProxyHook over :class:`zlayer.proxy.ProxyManager` (C data planes). When the C L7 plane is not
    built, HTTP endpoints go through the asyncio forwarder instead, so they still answer."""

    def __init__(self, manager: Any, l7_fallback: ForwardingProxy | None, acme: AcmeSettings | None = None) -> None:
        self.pm = manager
        self.fallback = l7_fallback
        self.acme = acme
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

    async def update_external(self, deployment: str, name: str, spec: dict[str, Any]) -> None:
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

    async def update_service(self, deployment: str, service: ServiceView, backends: list[Backend]) -> None:
        await self._start()
        if self.fallback is None:
            await self._managed(deployment, service, backends)
            self._enable_acme()
            return
        l4, l7 = _only(service, l7=False), _only(service, l7=True)
        if l4.endpoints:
            await self._managed(deployment, l4, backends)
        if l7.endpoints:
            await self.fallback.update_service(deployment, l7, backends)
        self._enable_acme()

    async def _managed(self, deployment: str, service: ServiceView, backends: list[Backend]) -> None:
        # Bare addresses: each endpoint then sends to the replica's address at that endpoint's target_port.
        name = self._name(deployment, service.name)
        await self.pm.add_service(deployment, name, service)
        await self.pm.update_backends(name, [b.address for b in backends])

    async def remove_service(self, deployment: str, service: str) -> None:
        name = self._names.pop((deployment, service), service)
        await self.pm.remove_service(name, deployment=deployment)
        if self.fallback is not None:
            await self.fallback.remove_service(deployment, service)

    async def close(self) -> None:
        if self._started:
            await self.pm.close()
        if self.fallback is not None:
            await self.fallback.close()


def make_proxy(cfg: DaemonConfig) -> Any:
    try:
        from zlayer.proxy import ProxyManager
        from zlayer.proxy.l7 import RecordingL7Plane
    except ImportError:
        return ForwardingProxy()
    pm = ProxyManager(data_dir=cfg.paths.sub("proxy"))
    acme = AcmeSettings(cfg.acme_directory, cfg.acme_email) if cfg.acme_email or cfg.acme_directory else None
    if isinstance(pm.l7, RecordingL7Plane):
        log.warning("the C L7 proxy plane is not built; HTTP endpoints use the asyncio forwarder")
        return ManagedProxy(pm, ForwardingProxy(), acme)
    return ManagedProxy(pm, None, acme)


class DaemonNetwork:
    """NodeNetwork plus the DNS server answering on the bridge gateway."""

    def __init__(self, cfg: DaemonConfig) -> None:
        from zlayer.net import NodeNetwork
        from zlayer.net.node import choose_subnet

        subnet = cfg.node_subnet or choose_subnet(cfg.paths.data_dir)
        self.net = NodeNetwork(cfg.paths.data_dir, subnet)
        self.dns: Any = None

    async def _ensure(self) -> None:
        if self.dns is None:
            from zlayer.net import DnsServer, service_records

            await self.net.setup()
            upstreams = _resolvers()
            self.dns = DnsServer(service_records(self.net.members, self.net.ipam.leases), upstreams)
            try:
                await self.dns.start(self.net.gateway, 53)
            except OSError as e:
                log.warning("service DNS not available on %s:53: %s", self.net.gateway, e)

    async def restore(self) -> None:
        """At start-up, with replicas left from the daemon before: their rules (isolation, port mappings) and
        their DNS server are back before the daemon re-adopts them, whatever happened to the tables meanwhile."""
        if self.net.members:
            await self._ensure()

    async def attach(self, deployment: str, service: str, container: str, pid: int) -> str:
        if _same_netns(pid):
            return ""  # the container shares the host network: nothing to plumb
        await self._ensure()
        return await self.net.attach(deployment, service, container, pid)

    async def detach(self, deployment: str, service: str, container: str) -> None:
        await self.net.detach(deployment, service, container)

    async def publish(self, container: str, mappings: list[Any]) -> None:
        await self.net.publish(container, mappings)

    def published(self, container: str) -> list[Any]:
        return list(self.net.published(container))

    def dns_servers(self) -> list[str]:
        return [self.net.gateway]

    async def close(self) -> None:
        if self.dns is not None:
            self.dns.close()


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


def make_network(cfg: DaemonConfig) -> Any:
    if os.geteuid() != 0 or cfg.host_network or os.environ.get("ZLAYER_NODE_NETWORK", "on") == "off":
        return None
    return DaemonNetwork(cfg)
