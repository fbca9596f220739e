"""``zlayer serve``: wire store, runtime, agent, proxy and API into one uvloop process, and shut it down cleanly.

Start-up order: lock the data dir → open the store → runtime → agent (re-adopts running containers) → listeners.
Shutdown (SIGTERM/SIGINT): stop accepting requests → stop watching containers (they keep running; the next daemon
adopts them) → close the store → remove the socket and daemon.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer._native import require_built
from zlayer.config import DaemonConfig, probe_socket, split_bind, write_json_atomic
from zlayer.daemon.sdnotify import notify, watchdog, watchdog_interval
from zlayer.errors import DaemonError, ZLayerError
from zlayer.paths import bind_unix

_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)

if TYPE_CHECKING:
    from zlayer.agent import ServiceManager
    from zlayer.daemon.images import StoreImages
    from zlayer.daemon.wiring import ManagedProxy
    from zlayer.images import ImageStore
    from zlayer.state import Store

log = logging.getLogger("zlayer.daemon")


def _lock_data_dir(cfg: DaemonConfig) -> int:
    fd = os.open(cfg.paths.run_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonError(
            f"another zlayer daemon already uses {cfg.paths.data_dir}",
            hint="stop it first, or pass --data-dir for a second daemon",
        ) from None
    return fd


def unix_listener(path: Path) -> socket.socket:
    """Bind the API socket with mode 0660 (root and group only) before anyone can connect."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if probe_socket(path):  # a live daemon (another data dir, same --socket): never take its socket over
        raise DaemonError(f"another zlayer daemon already answers on {path}",
                          hint="stop it first, or pass --socket for a second daemon")  # fmt: skip
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = bind_unix(path, 0o660)
    with contextlib.suppress(KeyError, PermissionError):
        import grp

        os.chown(path, 0, grp.getgrnam("zlayer").gr_gid)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def tcp_listener(bind: str, what: str = "--bind", listen: bool = True) -> socket.socket:
    """The TCP API's socket; ``listen=False``: bound only (the port is ours, a client is refused until the server
    that takes it listens)."""
    host, port = split_bind(bind, what)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DaemonError(f"cannot listen on {bind}: {e.strerror}", where=what) from e
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


def make_runtime(cfg: DaemonConfig, images: StoreImages) -> tuple[Any, str]:
    """The Linux workload driver of this node over its image store. ``ZLAYER_RUNTIME_FACTORY=module:callable``
    substitutes another implementation of the Runtime protocol (called with the DaemonConfig)."""
    spec = os.environ.get("ZLAYER_RUNTIME_FACTORY")
    if spec:
        mod, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
        rt = factory(cfg)
        return rt, getattr(rt, "name", type(rt).__name__)
    missing = native_missing()
    if cfg.runtime == "docker" or (cfg.runtime == "auto" and missing and _docker_answers()):
        from zlayer.runtime.docker import DockerRuntime

        if cfg.runtime == "auto":
            log.warning("the native runtime cannot run here (%s): containers run through dockerd", missing)
        return DockerRuntime(cfg.paths.data_dir), "docker"
    from zlayer.runtime.linux.backend import LinuxRuntime

    return LinuxRuntime(cfg.paths.data_dir, images, log_dir=cfg.paths.log_dir), "linux"


def native_missing() -> str:
    """What the native runtime needs and this host lacks (empty when it can run): root, cgroup v2, overlayfs."""
    if os.geteuid() != 0:
        return "not root"
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no cgroup v2 at /sys/fs/cgroup"
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "no overlayfs in the kernel"
    except OSError:
        return "no /proc/filesystems"
    return ""


def _docker_answers() -> bool:
    from zlayer.runtime.docker import docker_socket

    with contextlib.suppress(Exception):
        return probe_socket(Path(docker_socket()))
    return False


def make_wasm_runtime(cfg: DaemonConfig, images: StoreImages) -> Any:
    """The WASM workload driver of this node, over the same image store and log directory as the Linux one."""
    from zlayer.runtime.wasm.driver import WasmRuntime

    return WasmRuntime(cfg.paths.data_dir, images, log_dir=cfg.paths.log_dir)


def make_image_store(cfg: DaemonConfig) -> ImageStore:
    from zlayer.images import ImageStore
    from zlayer.images.unpack import UnpackLimits

    return ImageStore(cfg.paths.sub("images"), UnpackLimits.from_env(cfg.max_layer_size, cfg.max_image_size))


class Daemon:
    """One running daemon; ``await Daemon(cfg).run()`` returns after SIGTERM/SIGINT or :meth:`stop`."""

    def __init__(self, cfg: DaemonConfig, runtime: Any = None) -> None:
        self.cfg = cfg
        self._runtime = runtime
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.context: Any = None
        self._tcp_app: Any = None  # the TCP API's app (behind its token check), for a server made again in TLS

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        require_built()  # before anything imports a C part: one line naming what is missing, not a traceback
        import uvicorn

        from zlayer.agent import JobManager, ServiceManager
        from zlayer.api import ApiContext, TokenAuth, create_app
        from zlayer.cluster.membership import ClusterNode, Liveness
        from zlayer.daemon.images import StoreImages
        from zlayer.daemon.ports import PortAdmission
        from zlayer.runtime import Drivers
        from zlayer.state import SqliteStore, SwitchingStore

        cfg = self.cfg
        from zlayer.observability.tracing import setup_tracing

        tracing = setup_tracing()  # before the API exists: its request spans need the provider
        cfg.paths.make_private()
        lock_fd = _lock_data_dir(cfg)
        sockets: list[socket.socket] = []
        extra_sockets: list[socket.socket] = []
        security_store = None
        overlay: Any = None
        # SQLite until the node starts or joins a cluster; then etcd (zlayer.cluster), without a restart
        store = SwitchingStore(SqliteStore(cfg.state_db))
        cluster = ClusterNode(cfg.paths.data_dir / "cluster", cfg.paths.log_dir / "etcd.log", store,
                              cfg.paths.data_dir, split_bind(cfg.bind)[1] if cfg.bind else 3669,
                              Liveness(cfg.heartbeat_interval, cfg.dead_after))  # fmt: skip
        try:
            from zlayer.security import SqliteSecurityStore
            from zlayer.security.cluster import ClusterSecretsHook
            from zlayer.security.secrets import Keyring, Secrets, SecretsKeyError

            security_store = SqliteSecurityStore(cfg.paths.data_dir / "security.db")
            secrets = Secrets(security_store, Keyring(security_store, cfg.paths.sub("secrets"), cfg.deployment_name))
            try:
                secrets.keyring.key()  # made now for a new node; for one with secrets, found and checked now
            except SecretsKeyError as e:  # the daemon runs on; each use of a secret says this again
                log.error("secrets: %s%s", e, f" (hint: {e.hint})" if e.hint else "")
            # in a cluster the secrets are the cluster's, sealed under its key (zlayer.security.cluster)
            from zlayer.daemon.wiring import cluster_placements

            cluster.hooks.append(ClusterSecretsHook(secrets, cfg.paths.sub("secrets"), cluster_placements))
            from zlayer.daemon.wiring import make_overlay

            overlay = make_overlay(cfg)  # in a cluster: this node's WireGuard interface and slice
            if overlay is not None:
                cluster.hooks.append(overlay)
            from zlayer.cluster.peer import PeerAuth

            # this node's key for its calls to other nodes' APIs, published after the overlay has its address
            wildcard = cfg.bind is not None and split_bind(cfg.bind)[0] in ("0.0.0.0", "::")
            api_cert = None
            tls_cert = Path(cfg.api_tls_cert) if cfg.api_tls_cert else None
            if cfg.api_tls_acme and cfg.bind:
                from zlayer.daemon.api_acme import ApiCertificate

                api_cert = ApiCertificate(cfg.api_tls_acme, cfg.paths.sub("api-tls"), directory_url=cfg.acme_directory,
                                          email=cfg.acme_email)  # fmt: skip
                tls_cert = api_cert.store.paths(cfg.api_tls_acme)[0]
            api_tls = None
            if cfg.bind and tls_cert is None:  # no certificate of the operator's: the cluster's, once in one
                from zlayer.daemon.api_tls import ClusterApiTLS

                api_tls = ClusterApiTLS(cluster.tls, cfg.bind, tcp_listener, self._tcp_config)
                cluster.hooks.append(api_tls)  # before the peer key: its published fingerprint is then served
                tls_cert = cluster.tls.cert
            peer = PeerAuth(cfg.paths.data_dir / "cluster", wildcard=wildcard, overlay=overlay, tls_cert=tls_cert)
            peer.cluster = cluster
            cluster.hooks.append(peer)
            await cluster.start()  # a node in a cluster: its etcd member first, the store on it
            image_store = make_image_store(cfg)
            images = StoreImages(image_store)
            runtime, runtime_name = (
                (self._runtime, "injected") if self._runtime is not None else make_runtime(cfg, images)
            )
            drivers = Drivers(
                {"linux": runtime, "wasm": make_wasm_runtime(cfg, images)},
                image_kind=images.kind,  # a WASM artifact in the store runs on wasm with no setting
                force="wasm" if cfg.runtime == "wasm" else None,  # `zlayer --runtime wasm serve`
            )
            metrics = None
            if cfg.metrics_bind:
                from zlayer.observability import Metrics

                metrics = Metrics()
                metrics.serve(cfg.metrics_bind)
            from zlayer.daemon.wiring import SecretsBridge, make_network, make_proxy
            from zlayer.security import Security

            proxy = make_proxy(cfg)
            network = make_network(cfg, overlay)
            if metrics is not None:
                from zlayer.proxy.metrics import ProxyCollector

                metrics.registry.register(ProxyCollector(proxy.pm))  # per-route series and zlayer_service_rps
            # The agent, wired here and only here: its drivers, the node's network and proxy, jobs, image digests.
            jobs = JobManager(store, drivers, network=network)
            from zlayer.daemon.dispatch import Dispatch

            dispatch = Dispatch(cluster, store, overlay)  # a node in a cluster runs what the leader assigns it
            manager = ServiceManager(
                store,
                drivers,
                proxy=proxy,
                network=network,
                jobs=jobs,
                images=images,
                metrics=metrics,
                ports=PortAdmission(store, _own_ports(cfg)),
                secrets=SecretsBridge(secrets),
                traffic=proxy,
                autoscale_interval=cfg.autoscale_interval,
                standalone_dir=cfg.paths.sub("standalone"),
                assignments=dispatch,
                cluster=dispatch,
                cluster_metrics=dispatch,
            )
            dispatch.manager = manager
            cluster.on_enter.append(dispatch.start)
            from zlayer.tokens import load_or_create_secret, write_admin_bearer

            if cfg.token is not None and not cfg.token.strip():
                raise DaemonError("--jwt-secret was given but is empty", where="--jwt-secret")
            secret = cfg.token or load_or_create_secret(cfg.paths.data_dir)
            token = write_admin_bearer(cfg.paths.data_dir, secret)
            security = Security(security_store, secret, secrets)
            from zlayer.security.oidc import Oidc, providers_from_env

            oidc_providers = providers_from_env(os.environ)
            if oidc_providers:
                security.oidc = Oidc(oidc_providers, security)
                log.info("OIDC sign-in with %s", ", ".join(sorted(oidc_providers)))
            self.context = ApiContext(
                store=store,
                runtime=runtime,
                manager=manager,
                jobs=jobs,
                runtime_name=runtime_name,
                images=image_store,
                metrics=metrics,
                proxy=proxy.pm,
                token=token,
                security=security,
                cluster=cluster,
                overlay=overlay,
                peer=peer,
            )
            app = create_app(self.context, swagger=cfg.swagger)
            servers = []
            sockets.append(unix_listener(cfg.paths.socket))
            servers.append(uvicorn.Server(self._uv_config(TokenAuth(app, secret, local=True))))
            acme_socket = None
            self._tcp_app = TokenAuth(app, secret)
            if cfg.bind and api_cert is None:
                sockets.append(tcp_listener(cfg.bind))
                pair = api_tls.pair() if api_tls is not None else None
                servers.append(uvicorn.Server(self._uv_config(self._tcp_app, tls=True, pair=pair)))
            elif cfg.bind:  # bound now (the port is ours), served once the ACME certificate is here
                acme_socket = tcp_listener(cfg.bind, listen=False)
                extra_sockets.append(acme_socket)
                api_cert.proxy_l7 = proxy.pm.l7  # type: ignore[union-attr]
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            # A detached daemon leads its own session: a hang-up must not end it (it has no terminal to lose).
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            serving = [
                asyncio.create_task(srv.serve(sockets=[sock])) for srv, sock in zip(servers, sockets, strict=True)
            ]
            if api_tls is not None:
                api_tls.attach(servers, serving, sockets, len(servers) - 1)
            for srv in servers:
                while not srv.started and not any(t.done() for t in serving):
                    await asyncio.sleep(0.01)
            for t in serving:
                if t.done() and t.exception():
                    raise DaemonError(f"API listener failed: {t.exception()}")
            docker = None
            if cfg.docker_socket:
                from zlayer.dockerapi import DockerApi, DockerSocket

                docker = DockerSocket(DockerApi(manager, runtime, store, image_store, cfg.paths.data_dir),
                                      Path(cfg.docker_socket))  # fmt: skip
                await docker.start()
            write_json_atomic(cfg.daemon_json, self._info())
            if cfg.chosen:  # it listens: from now on a daemon a client starts for this data dir starts like this one
                cfg.remember()
            if network is not None:
                await network.restore()
            await jobs.restore()
            await manager.restore()
            if docker is not None:
                await docker.serve()  # with the Docker containers among the standalone ones the agent took back
            dispatch.start()
            adopting = asyncio.create_task(self._adopted(manager, proxy, store), name="zlayer-proxy-adopt")
            jobs.start()
            self.context.ready = True
            self.ready.set()
            log.info("zlayer daemon ready on %s%s", cfg.paths.socket, f" and {cfg.bind}" if cfg.bind else "")
            notify("READY=1", f"STATUS=serving on {cfg.paths.socket}", f"MAINPID={os.getpid()}")
            renew = asyncio.create_task(self._renew_bearer(secret))
            acme_task = None
            if api_cert is not None and acme_socket is not None:
                acme_task = asyncio.create_task(self._serve_acme(api_cert, acme_socket, TokenAuth(app, secret), servers,
                                                               serving, peer), name="zlayer-api-acme")  # fmt: skip
            interval = watchdog_interval()
            pinging = asyncio.create_task(watchdog(interval)) if interval else None
            await self._stop.wait()
            notify("STOPPING=1", "STATUS=stopping")
            renew.cancel()
            if acme_task is not None:
                acme_task.cancel()
            if pinging is not None:
                pinging.cancel()
            if not adopting.done():
                adopting.cancel()
            self.context.closing.set()  # follow streams (logs -f, events) end their responses now
            await asyncio.sleep(0.05)
            for srv in servers:
                srv.should_exit = True
            await asyncio.wait(serving, timeout=5.0)
            if docker is not None:
                await docker.close()
            await dispatch.close()
            await manager.close()
            await jobs.close()
            await proxy.close()
            if network is not None:
                await network.close()
        finally:
            if overlay is not None:
                await overlay.close()
            await cluster.close()
            for sock in sockets + extra_sockets:
                sock.close()
            with contextlib.suppress(FileNotFoundError):
                if sockets:
                    cfg.paths.socket.unlink()
            with contextlib.suppress(FileNotFoundError):
                cfg.daemon_json.unlink()
            await store.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)  # the last batch of spans leaves before the daemon does
            if security_store is not None:
                security_store.close()
            os.close(lock_fd)

    async def _adopted(self, manager: ServiceManager, proxy: ManagedProxy, store: Store) -> None:
        """Once the re-adopted deployments have converged (their services published to the proxy again; at most
        30 s), the data plane gets the daemon's whole state in place of what it kept serving meanwhile."""
        names = [d.name for d in await store.list_deployments()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(manager.wait_deployed(n) for n in names)), 30.0)
        try:
            await proxy.adopted()
        except ZLayerError as e:
            log.error("proxy: %s", e)

    async def _serve_acme(self, api_cert: Any, sock: socket.socket, app: Any, servers: list[Any],
                          serving: list[asyncio.Task[None]], peer: Any) -> None:  # fmt: skip
        """``--api-tls-acme``: the TCP API listens once its certificate is here (never in plain), and the
        certificate is renewed in place; other nodes learn the new one's fingerprint."""
        import uvicorn

        info = await api_cert.obtain(self._stop)
        if info is None:
            return
        config = self._uv_config(app, pair=(str(info.cert_file), str(info.key_file)))
        config.load()
        api_cert.context = config.ssl
        srv = uvicorn.Server(config)
        servers.append(srv)
        serving.append(asyncio.create_task(srv.serve(sockets=[sock])))
        log.info("API over TLS on %s with the ACME certificate of %s (valid until %s)", self.cfg.bind,
                 api_cert.domain, info.not_after.isoformat())  # fmt: skip

        async def republish() -> None:
            if peer.node_id and peer.client is not None:
                await peer.entered(peer.client, peer.node_id, "tls")

        await republish()
        await api_cert.renew(republish)

    def _tcp_config(self, pair: tuple[str, str] | None) -> Any:
        """The TCP API's server configuration with the certificate ``pair`` (the cluster's, :mod:`api_tls`)."""
        return self._uv_config(self._tcp_app, tls=pair is not None, pair=pair)

    def _uv_config(self, app: Any, tls: bool = False, pair: tuple[str, str] | None = None) -> Any:
        import uvicorn

        from zlayer.config import check_tls_pair

        cert, key = pair or ((self.cfg.api_tls_cert, self.cfg.api_tls_key) if tls else (None, None))
        if cert is not None:
            check_tls_pair(cert, key)  # read again at each start: a renewed pair is picked up by a restart
        return uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            loop="none",
            http="h11",
            ws="websockets-sansio",
            ssl_certfile=cert,
            ssl_keyfile=key,
        )  # fmt: skip  (WebSockets: the attached exec, zlayer.api.exec_stream)

    async def _renew_bearer(self, secret: str) -> None:
        """The local admin token lives 24 h (as ZLayer's); mint a fresh one every 12 h so the file stays usable."""
        from zlayer.tokens import write_admin_bearer

        while True:
            await asyncio.sleep(12 * 3600)
            try:
                token = await asyncio.to_thread(write_admin_bearer, self.cfg.paths.data_dir, secret)
            except OSError as e:
                log.warning("cannot renew %s: %s", self.cfg.token_file, e)
                continue
            if self.context is not None:
                self.context.token = token

    def _info(self) -> dict[str, object]:
        from datetime import UTC, datetime

        return {
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(),
            "api_bind": self.cfg.bind,
            "socket_path": str(self.cfg.paths.socket),
            "host_network": self.cfg.host_network,
            "metrics_bind": self.cfg.metrics_bind,
            "data_dir": str(self.cfg.paths.data_dir),
        }


def _own_ports(cfg: DaemonConfig) -> tuple[Any, ...]:
    """The daemon's own TCP listeners, as ports no deployment may take."""
    from zlayer.net.ports import PortClaim

    own = [(f"the zlayer API (--bind {cfg.bind})", cfg.bind, "--bind")]
    own.append((f"the metrics listener (--metrics-bind {cfg.metrics_bind})", cfg.metrics_bind, "--metrics-bind"))
    return tuple(PortClaim(owner, "tcp", *split_bind(bind, what)) for owner, bind, what in own if bind)


def serve_foreground(cfg: DaemonConfig) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT."""
    # Whatever the daemon writes (state, bundles with the containers' env, tokens, keys, logs) is its own: a file
    # written without an explicit mode is still closed to other users. Containers get 022 from the shim.
    os.umask(0o077)
    _fewer_malloc_arenas()
    from zlayer.observability.daemonlog import setup_daemon_logging

    cfg.paths.make_private()
    setup_daemon_logging(cfg.log_file)
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    # uvloop for the daemon's own loop only, not as the global policy: pyroute2 runs its netlink sockets on
    # loops of its own in worker threads, and uvloop cannot open AF_NETLINK datagram endpoints.
    # The loop learns of SIGTERM through a wakeup fd that a forked child inherits (pyroute2 forks to work in other
    # network namespaces): when such a child is sent SIGTERM, its handler would write into our wakeup fd and the
    # daemon would shut down as if it had been told to. A forked child therefore drops the wakeup fd at once.
    os.register_at_fork(after_in_child=_drop_signal_wakeup_fd)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(Daemon(cfg).run())


def _fewer_malloc_arenas() -> None:
    """At most two glibc malloc arenas, set before the daemon's threads start. glibc gives each thread that allocates
    an arena of its own (up to 8 per core), and each keeps its free memory apart from the others': the daemon's dozen
    threads (executor workers, the overlay's, the data-plane watch) each held a little of it, for no speed that
    matters here since Python's allocations are made under the GIL anyway. A libc without mallopt is left alone."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)


def _drop_signal_wakeup_fd() -> None:
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)


def serve_background(
    argv: list[str], cfg: DaemonConfig, timeout: float = 15.0, env: dict[str, str] | None = None
) -> int:
    """Start the daemon detached (new session, output to daemon.log) and return its pid once the socket answers."""
    import subprocess

    cfg.paths.make_private()
    with open(os.open(cfg.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zlayer", *argv],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = _last_line(cfg.log_file)
            raise DaemonError(f"the daemon exited with code {proc.returncode}" + (f": {last}" if last else ""),
                              where=str(cfg.log_file), hint=f"see {cfg.log_file}")  # fmt: skip
        if probe_socket(cfg.paths.socket) and _info_pid(cfg) == proc.pid:  # this child, not a daemon already there
            return proc.pid
        time.sleep(0.05)
    raise DaemonError(f"the daemon did not answer on {cfg.paths.socket} within {timeout:g}s",
                      hint=f"see {cfg.log_file}")  # fmt: skip


def _info_pid(cfg: DaemonConfig) -> int:
    import json

    try:
        return int(json.loads(cfg.daemon_json.read_text()).get("pid") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _last_line(path: Path) -> str:
    """The last line the daemon logged (its error), without the ``error:`` prefix."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error: ")]
    last = (errors or lines or [""])[-1].removeprefix("error: ")
    if last.startswith("{"):  # a JSON line of the daemon's log (observability.daemonlog): its message
        import json

        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(last).get("msg", last))
    return last


__all__ = ["Daemon", "serve_background", "serve_foreground"]
