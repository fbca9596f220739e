"""The daemon's side of the data-plane process (:mod:`zlayer.proxy.dataplane`): find or start it, feed it tables.

:class:`DataPlaneClient` keeps a mirror of everything it told the process (the L7 table, each L4 listener with its
backends, health and certificate), so a process that died is started again and given the whole state, and a daemon
that restarts re-adopts the running process: it connects, leaves the tables being served alone while the agent
re-adopts its replicas (:attr:`adopting`), then sends its whole state once (:meth:`synced`) and the process drops
what the daemon no longer has. :class:`RemoteL7Plane` and :class:`RemoteListener` stand where the in-process C planes
stood for the :class:`~zlayer.proxy.manager.ProxyManager`. Calls block for one round trip on a local socket (control
path only; they are safe from any thread — the metrics collector calls from its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from zlayer.errors import ProxyError
from zlayer.proxy import dataplane as dp
from zlayer.proxy.l7 import BackendState, L7Table, RouteStats, compile_table, stats_from
from zlayer.proxy.models import RouteSpec

log = logging.getLogger("zlayer.proxy")

START_TIMEOUT = 15.0
WATCH_INTERVAL = 0.5


class DataPlaneClient:
    """One data-plane process per data dir (``run_dir``); see the module docstring."""

    def __init__(self, run_dir: Path, log_file: Path | None = None, workers: int = 1) -> None:
        self.run_dir = run_dir
        self.log_file = log_file
        self.workers = workers
        self.build = dp.build_id()
        self.adopting = False
        self.pid = 0
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._l7: RemoteL7Plane | None = None
        self._l4: dict[str, RemoteListener] = {}
        self._watch: threading.Thread | None = None
        self._predecessor: socket.socket | None = None
        self._closed = False
        self.last_health: dict[tuple[str, str, int], bool] = {}

    # ---- finding, starting, adopting -------------------------------------------------------------------------

    def connect(self) -> None:
        """Adopts the running data-plane process of this data dir, or replaces it when it is another build (its
        listening sockets handed over). With none running, one is started by the first request."""
        with self._lock:
            old = self._try_connect()
            if old is not None:
                sock, hello = old
                if hello.get("build") == self.build:
                    self._sock, self.pid = sock, int(hello["pid"])
                    self.adopting = bool(hello.get("state"))
                    if self.adopting:
                        self.last_health = _health(self._call("health"))
                    log.info("re-adopted the data plane (pid %s)", self.pid)
                    self._start_watch()
                    return
                self._upgrade(sock, hello)
                self._start_watch()
                return
            self._kill_stale()

    def ensure_started(self) -> None:
        """Start the data-plane process now when none runs. The daemon calls this off its event loop before its
        first table: a start waits for a new Python process to answer (a few hundred ms on a busy machine), and
        made by the first request it stalled the loop that long — in a cluster every node at once, just as the
        leader's placement of a new deployment reached them."""
        with self._lock:
            if self._sock is None and not self._closed:
                self._recover()

    def _try_connect(self) -> tuple[socket.socket, dict[str, Any]] | None:
        path = dp.socket_path(self.run_dir)
        st = None
        with contextlib.suppress(OSError):
            st = path.lstat()
        if st is None:
            return None
        if st.st_uid != os.geteuid():
            raise ProxyError(f"{path} is owned by uid {st.st_uid}, not this daemon's: refusing to use it")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5.0)
        try:
            s.connect(str(path))
            dp.send_frame(s, {"op": "hello"})
            reply, _ = dp.recv_frame(s)
        except (OSError, ValueError):
            s.close()
            return None
        s.settimeout(None)
        return s, dict(reply.get("result") or {})

    def _kill_stale(self) -> None:
        """A process whose pid file names it but that does not answer is ended (it would hold the ports)."""
        pid = _read_pid(dp.pid_path(self.run_dir))
        if pid and _is_dataplane(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _spawn(self, takeover: bool) -> None:
        argv = [sys.executable, "-m", "zlayer.proxy.dataplane", "--run-dir", str(self.run_dir)]
        argv += ["--workers", str(self.workers)] + (["--takeover"] if takeover else [])
        out: Any = subprocess.DEVNULL
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
            os.chmod(self.log_file, 0o600)
        try:
            proc = subprocess.Popen(  # its own session, as the shims: it outlives this daemon
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            got = self._try_connect()
            if got is not None and int(got[1].get("pid", 0)) == proc.pid:
                self._sock, self.pid = got[0], proc.pid
                self.adopting = False
                threading.Thread(target=proc.wait, daemon=True).start()  # reaped if it dies while we run
                return
            if got is not None:
                got[0].close()
            if proc.poll() is not None:
                raise ProxyError(f"the data-plane process exited ({proc.returncode}); see {self.log_file}")
            time.sleep(0.02)
        proc.kill()
        raise ProxyError(f"the data-plane process did not answer within {START_TIMEOUT:g}s; see {self.log_file}")

    def _upgrade(self, old: socket.socket, hello: Mapping[str, Any]) -> None:
        """Another build runs: its successor takes the listening sockets, gets the whole state once the daemon has
        it (:meth:`synced`), then the old process stops accepting and drains."""
        log.info(
            "data plane %s (pid %s) is another build: handing its listeners over", hello.get("build"), hello.get("pid")
        )
        self.last_health = _health(_call_on(old, "health"))
        self._predecessor = old
        self._spawn(takeover=True)
        self.adopting = True  # the old process serves until the successor has the tables

    # ---- calls ---------------------------------------------------------------------------------------------------

    def _call(self, op: str, **kw: Any) -> Any:
        if self._sock is None:
            raise ConnectionError("the data-plane process is not started")
        return _call_on(self._sock, op, **kw)

    def call(self, op: str, **kw: Any) -> Any:
        """One request; a process that died is started again (and given the state) and the request retried."""
        with self._lock:
            try:
                return self._call(op, **kw)
            except (OSError, ConnectionError):
                pass
            self._recover()
            return self._call(op, **kw)

    def send(self, op: str, **kw: Any) -> Any:
        """A change: sent now, or only mirrored while re-adoption is under way (sent whole by :meth:`synced`)."""
        if self.adopting:
            return None
        return self.call(op, **kw)

    def _recover(self) -> None:
        if self._closed:
            raise ProxyError("the proxy is closed")
        if self.pid:
            log.warning("the data-plane process (pid %s) is gone: starting it again", self.pid)
        with contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.close()
        self._sock = None
        self._kill_stale()
        self._spawn(takeover=False)
        self._start_watch()
        self._replay()

    def _replay(self) -> None:
        """The whole mirrored state to the process, then the listeners it has and we do not are dropped."""
        if self._l7 is not None and self._l7.table is not None:
            self._call("l7_apply", table=self._l7.table.to_wire())
            for token, value in self._l7.challenges.items():
                self._call("l7_challenge", token=token, value=value)
        for lst in list(self._l4.values()):
            if lst.started:
                try:
                    lst._open()
                except ProxyError as e:
                    log.error("data plane: %s", e)
        self._call("prune", keep=sorted(self._l4))

    def synced(self) -> None:
        """The daemon re-adopted its replicas: the process gets the whole state (replacing what it served)."""
        with self._lock:
            if not self.adopting:
                return
            self.adopting = False
            try:
                self._replay()
            except (OSError, ConnectionError):
                self._recover()
            log.info("data plane: the daemon's state sent (pid %s, %d L4 listeners)", self.pid, len(self._l4))
            old = self._predecessor
            if old is not None:
                self._predecessor = None
                with contextlib.suppress(OSError, ConnectionError, ProxyError):
                    _call_on(old, "retire", grace=dp.DRAIN_GRACE)
                old.close()

    # ---- watching ----------------------------------------------------------------------------------------------

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = threading.Thread(target=self._watch_loop, daemon=True, name="zlayer-dataplane-watch")
            self._watch.start()

    def _watch_loop(self) -> None:
        while not self._closed:
            time.sleep(WATCH_INTERVAL)
            if self._closed or not self.pid:
                continue
            try:
                self.call("ping")
            except (ProxyError, OSError, ConnectionError) as e:
                log.error("data plane: %s", e)

    # ---- stopping ------------------------------------------------------------------------------------------------

    def detach(self) -> None:
        """The daemon goes away; the process serves on (a later daemon re-adopts it)."""
        self._closed = True
        with self._lock, contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.close()
            self._sock = None

    def shutdown(self) -> None:
        """Stops the process (its listeners close) and waits for it to exit."""
        self._closed = True
        with self._lock:
            pid = self.pid
            with contextlib.suppress(OSError, ConnectionError, ProxyError):
                self._call("shutdown")
            with contextlib.suppress(OSError):
                if self._sock is not None:
                    self._sock.close()
            self._sock = None
        _wait_gone(pid, 10.0)

    # ---- the planes ------------------------------------------------------------------------------------------------

    def l7_plane(self) -> RemoteL7Plane:
        if self._l7 is None:
            self._l7 = RemoteL7Plane(self)
        return self._l7

    def listener(self, protocol: str, host: str, port: int, **kw: Any) -> RemoteListener:
        return RemoteListener(self, protocol, host, port, **kw)


def _call_on(sock: socket.socket, op: str, **kw: Any) -> Any:
    dp.send_frame(sock, {"op": op, **kw})
    reply, _ = dp.recv_frame(sock)
    if not reply.get("ok"):
        raise ProxyError(f"data plane: {reply.get('error')}")
    return reply.get("result")


def _health(raw: Mapping[str, bool]) -> dict[tuple[str, str, int], bool]:
    out: dict[tuple[str, str, int], bool] = {}
    for key, ok in raw.items():
        group, host, port = key.rsplit("|", 2)
        out[(group, host, int(port))] = bool(ok)
    return out


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_dataplane(pid: int) -> bool:
    try:
        return b"zlayer.proxy.dataplane" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pid and _is_dataplane(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_dataplane(run_dir: Path, timeout: float = 10.0) -> bool:
    """Ends the data-plane process of a run dir (``zlayer system reset``, test clean-up); True when one ran."""
    pid = _read_pid(dp.pid_path(run_dir))
    if not pid or not _is_dataplane(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    _wait_gone(pid, timeout)
    if _is_dataplane(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 2.0)
    return True


class RemoteL7Plane:
    """The L7 plane of the data-plane process (the :class:`~zlayer.proxy.l7.L7Plane` protocol)."""

    def __init__(self, client: DataPlaneClient) -> None:
        self.client = client
        self.table: L7Table | None = None
        self.challenges: dict[str, str] = {}
        self._closed = False

    @property
    def serving(self) -> bool:
        return not self._closed

    def prepare(self) -> None:
        """Blocking: the process is running once this returns (see :meth:`DataPlaneClient.ensure_started`)."""
        self.client.ensure_started()

    def apply(
        self,
        routes: list[RouteSpec],
        groups: Mapping[str, list[BackendState]],
        certificates: Mapping[str, tuple[Path, Path]],
    ) -> None:
        self.table = compile_table(list(routes), groups, certificates)
        self.client.send("l7_apply", table=self.table.to_wire())

    def set_health(self, group: str, host: str, port: int, healthy: bool) -> None:
        if self.table is not None:
            rows = [
                (n, [(h, p, healthy if (h, p) == (host, port) else ok) for h, p, ok in bs]) if n == group else (n, bs)
                for n, bs in self.table.groups
            ]
            self.table = L7Table(self.table.listen, self.table.routes, rows, self.table.certificates)
        self.client.send("l7_set_health", group=group, host=host, port=port, healthy=healthy)

    def route_stats(self) -> dict[str, RouteStats]:
        got = self.client.call("l7_stats")
        return stats_from(got["stats"], got["active"])

    def route_requests(self) -> dict[str, int]:
        got: dict[str, int] = self.client.call("l7_requests")
        return got

    def set_challenge(self, token: str, key_authorization: str) -> None:
        self.challenges[token] = key_authorization
        self.client.call("l7_challenge", token=token, value=key_authorization)

    def remove_challenge(self, token: str) -> None:
        self.challenges.pop(token, None)
        self.client.call("l7_challenge", token=token, value=None)

    def close(self) -> None:
        self._closed = True


class RemoteListener:
    """An L4 listener of the data-plane process (the face of :class:`zlayer.proxy._l4.Listener` the manager uses)."""

    def __init__(
        self,
        client: DataPlaneClient,
        protocol: str,
        host: str,
        port: int,
        *,
        workers: int = 1,
        proxy_protocol: int = 0,
        session_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.protocol = protocol
        self.host = host
        self.conf = {
            "protocol": protocol,
            "host": host,
            "port": port,
            "workers": workers,
            "proxy_protocol": proxy_protocol,
            "session_timeout": session_timeout,
        }
        self.key = f"{protocol}|{host}|{port}"
        self.backends_: list[list[Any]] = []
        self.tls: list[str] | None = None
        self.started = False
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self.started

    def _open(self) -> None:
        self._port = int(self.client._call("l4_open", conf=self.conf, tls=self.tls, backends=self.backends_))

    def start(self) -> None:
        with self.client._lock:
            self.client._l4[self.key] = self
            self.started = True
            if not self.client.adopting:
                try:
                    self._port = int(self.client.call("l4_open", conf=self.conf, tls=self.tls, backends=self.backends_))
                except ProxyError:
                    self.started = False
                    if self.client._l4.get(self.key) is self:
                        del self.client._l4[self.key]
                    raise

    def _close(self, drain: bool, grace: float = dp.DRAIN_GRACE) -> None:
        with self.client._lock:
            if self.client._l4.get(self.key) is not self:
                return  # replaced by a listener on the same address (already swapped in the process)
            del self.client._l4[self.key]
            self.started = False
            self.client.send("l4_close", key=self.key, drain=drain, grace=grace)

    def stop(self) -> None:
        self._close(False)

    def stop_accepting(self) -> None:
        self._close(True)

    def drain(self, grace: float = dp.DRAIN_GRACE) -> None:
        self._close(True, grace)

    def hurry(self) -> None:
        return None  # the process finishes its drains on its own

    def set_backends(self, backends: Iterable[tuple[str, int]]) -> None:
        health = {(h, p): ok for h, p, ok in self.backends_}
        self.backends_ = [[str(h), int(p), health.get((str(h), int(p)), True)] for h, p in backends]
        if self.started:
            self.client.send("l4_set_backends", key=self.key, backends=self.backends_)

    def set_health(self, host: str, port: int, healthy: bool) -> bool:
        for b in self.backends_:
            if (b[0], b[1]) == (host, port):
                b[2] = healthy
        if self.started:
            return bool(self.client.send("l4_set_health", key=self.key, host=host, port=port, healthy=healthy))
        return False

    def set_tls(self, cert_file: str | PathLike[str] | None, key_file: str | PathLike[str] | None) -> None:
        self.tls = [str(cert_file), str(key_file)] if cert_file is not None and key_file is not None else None
        if self.started:
            self.client.send("l4_set_tls", key=self.key, tls=self.tls)

    def _stats(self) -> dict[str, Any]:
        if not self.started:
            return {"stats": _ZERO_STATS, "backends": []}
        try:
            return dict(self.client.call("l4_stats", key=self.key))
        except ProxyError:
            return {"stats": _ZERO_STATS, "backends": []}

    def stats(self) -> Any:
        return self._stats()["stats"]

    def backends(self) -> Any:
        return self._stats()["backends"]


_ZERO_STATS = dict.fromkeys(
    (
        "connections_total",
        "connections_active",
        "bytes_in",
        "bytes_out",
        "bytes_spliced",
        "connect_errors",
        "no_backend",
        "tls_errors",
        "udp_sessions_total",
        "udp_sessions_active",
        "udp_datagrams_in",
        "udp_datagrams_out",
    ),
    0,
)

__all__ = ["DataPlaneClient", "RemoteL7Plane", "RemoteListener", "stop_dataplane"]
