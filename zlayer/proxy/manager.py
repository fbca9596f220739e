"""ProxyManager: turns services and their replicas into data-plane tables, and keeps them current.

The daemon calls, from its event loop::

    manager = ProxyManager(internal_address=None, data_dir=paths.data / "proxy")
    await manager.start()
    await manager.add_service(deployment, "web", service_spec)      # opens/updates the endpoint listeners
    await manager.update_backends("web", [("10.200.0.5", 8080)])     # replicas; swapped in atomically
    await manager.remove_service("web")                              # closes its listeners and routes
    await manager.close()

It also implements the agent's ``ProxyHook`` (``update_service`` / ``remove_service``). Listeners of L4 endpoints
are C data-plane listeners (``zlayer.proxy._l4``); L7 routes go to the L7 plane as one table per change. Backend
health from the active checker is pushed into both planes; nothing in Python runs per connection or request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer.errors import ProxyError, SpecError
from zlayer.proxy import health as health_mod
from zlayer.proxy._l7_adapter import open_plane
from zlayer.proxy.certs import CertificateInfo, CertStore
from zlayer.proxy.l7 import BackendState, L7Plane
from zlayer.proxy.models import RouteSpec, StreamSpec, build

if TYPE_CHECKING:
    from zlayer.spec.models import ExternalSpec, ServiceSpec

log = logging.getLogger("zlayer.proxy")

RPS_WINDOW = 10.0
DRAIN_GRACE = 30.0  # ZLayer's stop waits up to 30 s for connections to finish


@dataclass
class _Stream:
    spec: StreamSpec
    listener: Any  # zlayer.proxy._l4.Listener


@dataclass
class _Service:
    deployment: str
    name: str
    routes: list[RouteSpec]
    streams: list[StreamSpec]
    addresses: list[tuple[str, int]] = field(default_factory=list)
    external: bool = False  # an `externals.<name>` block: backends carry their own ports
    draining: set[str] = field(default_factory=set)  # replica addresses kept, unhealthy, until their requests end


class ProxyManager:
    """Owns every listener, route and backend group of this node's proxy. Methods are called from one event loop."""

    def __init__(
        self,
        *,
        internal_address: str | None = None,
        data_dir: Path | None = None,
        workers: int = 1,
        health_interval: float = health_mod.DEFAULT_INTERVAL,
        health_timeout: float = health_mod.DEFAULT_TIMEOUT,
        l7: L7Plane | None = None,
        sample_interval: float = 1.0,
        listener_factory: Callable[..., Any] | None = None,
        known_health: Mapping[tuple[str, str, int], bool] | None = None,
    ) -> None:
        self.internal_address = internal_address
        self.workers = workers
        self.certs = CertStore((data_dir or Path("/var/lib/zlayer")) / "certs")
        self.l7: L7Plane = l7 if l7 is not None else open_plane(workers)
        self.health = health_mod.HealthChecker(self._on_health, health_interval, health_timeout)
        if known_health:  # backends re-adopted with the data plane keep their last known health until checked
            self.health.seed(known_health)
        self._listener_factory = listener_factory
        self.acme: Any = None  # zlayer.proxy.acme.CertManager when ACME is configured
        self._services: dict[str, _Service] = {}
        self._streams: dict[tuple[str, int, str], _Stream] = {}
        self._sample_interval = sample_interval
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.drain_grace = DRAIN_GRACE
        self._draining: dict[asyncio.Task[None], Any] = {}
        self._acme_pending: set[str] = set()
        self._acme_tasks: set[asyncio.Task[None]] = set()

    # ---- life cycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the health checker and the requests-per-second sampler."""
        self.health.start()
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_loop(), name="zlayer-proxy-rps")

    async def close(self, keep_serving: bool = False) -> None:
        """Stops every listener and background task; with ``keep_serving`` the listeners stay (they belong to a
        data-plane process that outlives this daemon)."""
        await self.health.stop()
        if self.acme is not None:
            await self.acme.stop()
        for task in list(self._acme_tasks):
            task.cancel()
        if self._sampler is not None:
            self._sampler.cancel()
            try:
                await self._sampler
            except asyncio.CancelledError:
                pass
            self._sampler = None
        if not keep_serving:
            for entry in self._streams.values():
                await asyncio.to_thread(entry.listener.stop)
        self._streams.clear()
        for task, listener in list(self._draining.items()):
            listener.hurry()  # the whole proxy is going away: cut drains short
            await task
        self._services.clear()
        self.l7.close()

    # ---- the daemon's API -------------------------------------------------------------------------------------

    async def add_service(self, deployment: str, service_name: str, service_spec: ServiceSpec | ExternalSpec) -> None:
        """Opens or updates the listeners and routes of a service's endpoints (idempotent). The spec is the typed,
        validated one (the daemon validated it when it was deployed).

        Raises ProxyError when a port is taken by another service or cannot be bound; on error nothing changes.
        """
        routes, streams = build(deployment, service_name, service_spec, self.internal_address)
        if self.internal_address is None and "internal" in {e.expose for e in routes} | {e.expose for e in streams}:
            log.warning("service %s: no overlay address on this node, internal endpoints bind 127.0.0.1", service_name)
        prepare = getattr(self.l7, "prepare", None)  # a plane in a process of its own: started off the loop
        if prepare is not None:
            await asyncio.to_thread(prepare)
        async with self._lock:
            self._check_conflicts(service_name, routes, streams)
            old = self._services.get(service_name)
            svc = _Service(
                deployment, service_name, routes, streams, old.addresses if old else [], old.external if old else False
            )
            await self._apply_streams(svc, old)
            self._services[service_name] = svc
            self._apply_backends(svc)
            self._apply_l7()
        self._request_certificates()

    async def update_backends(self, service_name: str, backends: Iterable[tuple[str, int] | str]) -> None:
        """Replaces the replicas of a service. Each backend is an IP or ``(ip, port)``; every endpoint sends to
        ``ip:<its target_port>`` (with a single endpoint, an explicit port different from it is used as given)."""
        async with self._lock:
            svc = self._services.get(service_name)
            if svc is None:
                raise ProxyError(f"service {service_name!r} has no proxy configuration; add_service it first")
            svc.addresses = [(b, 0) if isinstance(b, str) else (str(b[0]), int(b[1])) for b in backends]
            self._apply_backends(svc)
            self._apply_l7()

    async def remove_service(self, service_name: str, deployment: str | None = None) -> None:
        """Closes the service's listeners and drops its routes; unknown services are ignored."""
        async with self._lock:
            svc = self._services.get(service_name)
            if svc is None or (deployment is not None and svc.deployment != deployment):
                return
            del self._services[service_name]
            for spec in svc.streams:
                entry = self._streams.pop((spec.bind, spec.port, spec.protocol), None)
                if entry is not None:
                    await self._drain(entry.listener)
            for key in {r.key for r in svc.routes} | {s.key for s in svc.streams}:
                self.health.remove_group(key)
            self._samples.pop(service_name, None)
            self._apply_l7()

    # ---- certificates -------------------------------------------------------------------------------------------

    async def add_certificate(self, domain: str, cert_file: Path, key_file: Path) -> CertificateInfo:
        """Imports a PEM certificate chain and key for ``domain`` (checked to match) and swaps it into every listener
        serving that domain. Raises ProxyError naming the bad file."""
        from zlayer.proxy.certs import inspect

        inspect(domain, cert_file, key_file, "file")  # validate before anything on disk changes
        info = self.certs.save(domain, cert_file.read_bytes(), key_file.read_bytes(), "file")
        await self._on_certificate(info)
        return info

    # ---- ACME ---------------------------------------------------------------------------------------------------

    def enable_acme(
        self,
        *,
        directory_url: str | None = None,
        email: str | None = None,
        responder: Any = None,
        ssl_context: Any = None,
        renew_every: float | None = None,
    ) -> None:
        """Issue certificates of https routes with a host name (and TLS streams) by ACME HTTP-01, and renew them.

        Challenges are answered by the L7 proxy when it serves traffic, else by ``responder`` (for example a
        :class:`~zlayer.proxy.acme.ChallengeServer` on port 80). Until a certificate is issued, a self-signed one
        is served. Call after :meth:`start`, from the event loop.
        """
        from zlayer.proxy import acme

        if responder is None:
            if not self.l7.serving:
                raise ProxyError("ACME needs an HTTP-01 responder: the L7 data plane is not running here")
            responder = self.l7
        self.acme = acme.CertManager(
            self.certs,
            responder,
            directory_url=directory_url or acme.LETSENCRYPT,
            email=email,
            ssl_context=ssl_context,
            on_issued=self._on_certificate,
        )
        self.acme.start(renew_every or acme.RENEW_EVERY)
        self._request_certificates()

    def _acme_domains(self) -> set[str]:
        domains = {r.host for r in self.routes() if r.protocol == "https" and r.host}
        domains |= {s.host for s, _ in self.streams() if s.tls and s.host}
        return {d for d in domains if "*" not in d}  # HTTP-01 cannot prove wildcard names

    def _request_certificates(self) -> None:
        if self.acme is None:
            return
        for domain in self._acme_domains():
            found = self.certs.load(domain)
            if found is not None and found.source in ("file", "acme"):
                continue  # a certificate the user placed is never replaced; an ACME one is renewed by the renewal round
            if domain in self._acme_pending:
                continue
            self._acme_pending.add(domain)
            task = asyncio.get_running_loop().create_task(self._issue(domain), name=f"zlayer-acme-{domain}")
            self._acme_tasks.add(task)
            task.add_done_callback(self._acme_tasks.discard)

    async def _issue(self, domain: str) -> None:
        try:
            await self.acme.ensure(domain)
        except Exception as exc:  # reported, retried by the renewal round; never kills the proxy
            log.warning("ACME certificate for %s failed: %s", domain, exc)
        finally:
            self._acme_pending.discard(domain)

    async def _on_certificate(self, cert: CertificateInfo) -> None:
        """Swaps a new certificate into every listener that serves its domain."""
        async with self._lock:
            for entry in self._streams.values():
                if entry.spec.tls and entry.spec.host == cert.domain:
                    entry.listener.set_tls(cert.cert_file, cert.key_file)
            self._apply_l7()

    # ---- externals ----------------------------------------------------------------------------------------------

    async def add_external(self, deployment: str, name: str, external_spec: ExternalSpec) -> None:
        """An ``externals.<name>`` block: its endpoints proxied to its fixed ``backends: ["ip:port", ...]``."""
        where = f"externals.{name}.backends"
        backends = [_parse_backend(b, f"{where}[{i}]") for i, b in enumerate(external_spec.backends)]
        if not backends:
            raise SpecError("an external needs at least one backend", where=where)
        await self.add_service(deployment, name, external_spec)
        async with self._lock:
            svc = self._services[name]
            svc.external = True
            svc.addresses = backends
            self._apply_backends(svc)
            self._apply_l7()

    # ---- the agent's ProxyHook --------------------------------------------------------------------------------

    async def update_service(self, deployment: str, service: str, spec: ServiceSpec, backends: Sequence[Any]) -> None:
        """ProxyHook: (re)configure ``service`` and balance over ``backends`` (the agent's Backends)."""
        await self.add_service(deployment, service, spec)
        await self.update_backends(service, [(b.address, b.port) for b in backends])

    # ---- figures ----------------------------------------------------------------------------------------------

    def service_requests_total(self, service_name: str) -> int:
        """Requests (L7) plus connections/sessions (L4) the service has taken since its listeners opened."""
        return self.requests_totals([service_name]).get(service_name, 0)

    def requests_totals(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """:meth:`service_requests_total` of every service (or of ``names``), from one read of the L7 plane's
        counters and one of each L4 listener's."""
        wanted = [n for n in (self._services if names is None else names) if n in self._services]
        svcs = [self._services[n] for n in wanted]
        counts = self.l7.route_requests() if any(svc.routes for svc in svcs) else {}
        out: dict[str, int] = {}
        for svc in svcs:
            total = sum(counts.get(r.key, 0) for r in svc.routes)
            for s in svc.streams:
                entry = self._streams.get((s.bind, s.port, s.protocol))
                if entry is not None:
                    total += int(entry.listener.stats()["connections_total"])
            out[svc.name] = total
        return out

    # ---- draining one replica ---------------------------------------------------------------------------------

    async def drain_backend(self, service_name: str, address: str) -> None:
        """The replica at ``address`` gets no new request or connection from now on, and stays in the tables
        (unhealthy) so that :meth:`in_flight` still sees what it serves; :meth:`forget_backend` drops it."""
        async with self._lock:
            svc = self._services.get(service_name)
            if svc is None or address in svc.draining:
                return
            svc.draining.add(address)
            self._apply_backends(svc)
            self._apply_l7()

    async def forget_backend(self, service_name: str, address: str) -> None:
        async with self._lock:
            svc = self._services.get(service_name)
            if svc is None or address not in svc.draining:
                return
            svc.draining.discard(address)
            self._apply_backends(svc)
            self._apply_l7()

    def in_flight(self, service_name: str, address: str) -> int:
        """Requests (L7) and connections (L4) the proxy has open to the replica at ``address``."""
        svc = self._services.get(service_name)
        if svc is None:
            return 0
        total = 0
        if svc.routes:
            stats = self.l7.route_stats()
            for r in svc.routes:
                for host, port in self._targets(svc, r.target_port, r, [address]):
                    total += stats[r.key].backend_active.get(f"{host}:{port}", 0) if r.key in stats else 0
        for s in svc.streams:
            entry = self._streams.get((s.bind, s.port, s.protocol))
            if entry is None:
                continue
            targets = set(self._targets(svc, s.target_port, s, [address]))
            total += sum(int(b["active"]) for b in entry.listener.backends() if (b["host"], b["port"]) in targets)
        return total

    def requests_per_second(self, service_name: str) -> float:
        """The service's request rate over the last ~10 s, from the data planes' counters (for the autoscaler)."""
        samples = self._samples.get(service_name)
        if not samples or len(samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def sample(self, now: float | None = None) -> None:
        """Records each service's counter (the sampler task calls this every ``sample_interval``)."""
        now = time.monotonic() if now is None else now
        for name, total in self.requests_totals().items():
            q = self._samples.setdefault(name, deque())
            q.append((now, total))
            while len(q) > 2 and now - q[0][0] > RPS_WINDOW:
                q.popleft()

    async def _sample_loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._sample_interval)

    # ---- state for the API ------------------------------------------------------------------------------------

    def services(self) -> list[str]:
        return sorted(self._services)

    def routes(self) -> list[RouteSpec]:
        return [r for svc in self._services.values() for r in svc.routes]

    def streams(self) -> list[tuple[StreamSpec, Any]]:
        """Every L4 stream with its data-plane listener."""
        return [(e.spec, e.listener) for e in self._streams.values()]

    def route_backends(self, route: RouteSpec) -> list[tuple[str, int]]:
        svc = self._services.get(route.service)
        return self._targets(svc, route.target_port, route) if svc else []

    def stream_backends(self, spec: StreamSpec) -> list[tuple[str, int]]:
        svc = self._services.get(spec.service)
        return self._targets(svc, spec.target_port, spec) if svc else []

    def certificates(self) -> list[CertificateInfo]:
        return self.certs.all()

    # ---- internals --------------------------------------------------------------------------------------------

    def _check_conflicts(self, service: str, routes: list[RouteSpec], streams: list[StreamSpec]) -> None:
        mine = {(s.bind, s.port, s.protocol) for s in streams}
        for other in self._services.values():
            if other.name == service:
                continue
            for s in other.streams:
                if (s.bind, s.port, s.protocol) in mine:
                    raise ProxyError(
                        f"{s.protocol} port {s.port} on {s.bind} is already used by service {other.name!r}",
                        where=f"services.{service}.endpoints",
                    )
            for r in other.routes:
                for s in streams:
                    if s.protocol == "tcp" and (r.bind, r.port) == (s.bind, s.port):
                        raise ProxyError(
                            f"tcp port {s.port} on {s.bind} is already an HTTP listener of service {other.name!r}",
                            where=f"services.{service}.endpoints",
                        )

    async def _apply_streams(self, svc: _Service, old: _Service | None) -> None:
        factory = self._listener_factory or _l4_listener()

        wanted = {(s.bind, s.port, s.protocol): s for s in svc.streams}
        started: list[tuple[tuple[str, int, str], _Stream]] = []
        try:
            for key, spec in wanted.items():
                entry = self._streams.get(key)
                if entry is not None and _same_listener(entry.spec, spec):
                    continue
                listener = factory(
                    spec.protocol,
                    spec.bind,
                    spec.port,
                    workers=self.workers,
                    proxy_protocol=spec.proxy_protocol if spec.protocol == "tcp" else 0,
                    session_timeout=spec.session_timeout,
                )
                if spec.tls and spec.protocol == "tcp":
                    cert = self._certificate_for(spec.host or f"{spec.service}.{spec.deployment}")
                    listener.set_tls(cert.cert_file, cert.key_file)
                listener.set_backends(self._targets(svc, spec.target_port, spec))
                # SO_REUSEPORT: the new listener binds beside a replaced one, so no connection attempt is refused.
                await asyncio.to_thread(listener.start)
                started.append((key, _Stream(spec, listener)))
        except BaseException:
            for _, e in started:
                await asyncio.to_thread(e.listener.stop)
            raise
        for key, new in started:
            replaced = self._streams.get(key)
            self._streams[key] = new
            if replaced is not None:
                await self._drain(replaced.listener)
        if old is not None:
            for spec in old.streams:
                key = (spec.bind, spec.port, spec.protocol)
                if key not in wanted and key in self._streams:
                    await self._drain(self._streams.pop(key).listener)
            gone = {r.key for r in old.routes} | {s.key for s in old.streams}
            for group in gone - ({r.key for r in svc.routes} | {s.key for s in svc.streams}):
                self.health.remove_group(group)

    async def _drain(self, listener: Any) -> None:
        """Stops a listener: no new connection once this returns; open ones get DRAIN_GRACE seconds (background)."""
        await asyncio.to_thread(listener.stop_accepting)
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(listener.drain, self.drain_grace), name="zlayer-proxy-drain"
        )
        self._draining[task] = listener
        task.add_done_callback(lambda t: self._draining.pop(t, None))

    def _certificate_for(self, domain: str) -> CertificateInfo:
        if self.acme is not None:
            found = self.certs.load(domain)
            if found is not None:
                return found
        return self.certs.ensure_self_signed(domain)

    def _targets(
        self, svc: _Service, target_port: int, ep: RouteSpec | StreamSpec, draining: Iterable[str] | None = None
    ) -> list[tuple[str, int]]:
        """Where an endpoint sends: the service's live addresses (not draining), or the ``draining`` ones given."""
        single = svc.external or len(svc.routes) + len(svc.streams) == 1
        if draining is None:
            chosen = [(h, p) for h, p in svc.addresses if h not in svc.draining]
        else:
            chosen = [(h, 0) for h in draining]
        out = []
        for host, port in chosen:
            out.append((host, port if (single and port) else target_port))
        return out

    def _apply_backends(self, svc: _Service) -> None:
        for spec in svc.streams:
            targets = self._targets(svc, spec.target_port, spec)
            drains = self._targets(svc, spec.target_port, spec, sorted(svc.draining))
            self.health.set_group(spec.key, spec.health, targets)
            entry = self._streams.get((spec.bind, spec.port, spec.protocol))
            if entry is not None:
                entry.listener.set_backends(targets + [t for t in drains if t not in targets])
                for host, port in targets:
                    entry.listener.set_health(host, port, self.health.health(spec.key, host, port).healthy)
                for host, port in drains:
                    entry.listener.set_health(host, port, False)
        for route in svc.routes:
            self.health.set_group(route.key, route.health, self._targets(svc, route.target_port, route))

    def _apply_l7(self) -> None:
        routes = self.routes()
        groups = {
            r.key: [BackendState(h, p, self.health.health(r.key, h, p).healthy) for h, p in self.route_backends(r)]
            + self._draining_states(r)
            for r in routes
        }
        certificates: dict[str, tuple[Path, Path]] = {}
        for r in routes:
            if r.protocol == "https":
                domain = r.host or f"{r.service}.{r.deployment}"
                cert = self._certificate_for(domain)
                certificates[domain] = (cert.cert_file, cert.key_file)
        self.l7.apply(routes, groups, certificates)

    def _draining_states(self, route: RouteSpec) -> list[BackendState]:
        svc = self._services.get(route.service)
        if svc is None or not svc.draining:
            return []
        live = set(self.route_backends(route))
        drains = self._targets(svc, route.target_port, route, sorted(svc.draining))
        return [BackendState(h, p, False) for h, p in drains if (h, p) not in live]

    def _on_health(self, group: str, host: str, port: int, healthy: bool) -> None:
        service = group.split("#", 1)[0]
        svc = self._services.get(service)
        if svc is None:
            return
        for spec in svc.streams:
            if spec.key == group:
                entry = self._streams.get((spec.bind, spec.port, spec.protocol))
                if entry is not None:
                    entry.listener.set_health(host, port, healthy)
        if any(r.key == group for r in svc.routes):
            self.l7.set_health(group, host, port, healthy)


def _l4_listener() -> Callable[..., Any]:
    """The in-process C L4 listener (the daemon gives a data-plane process's instead: ``listener_factory``)."""
    from zlayer.proxy._l4 import Listener

    return Listener


def _parse_backend(text: Any, where: str) -> tuple[str, int]:
    """``ip:port`` or ``[ipv6]:port``."""
    import ipaddress

    value = str(text)
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 1 <= number <= 65535:
        raise SpecError(f"backend {value!r} is not ip:port", where=where)
    return host, number


def _same_listener(a: StreamSpec, b: StreamSpec) -> bool:
    return (a.tls, a.proxy_protocol, a.session_timeout, a.host, a.service) == (
        b.tls,
        b.proxy_protocol,
        b.session_timeout,
        b.host,
        b.service,
    )


__all__ = ["ProxyManager"]
