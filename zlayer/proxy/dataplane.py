"""The data-plane process: owns the proxy's listeners and runs the C planes, so ingress outlives the daemon.

``python -m zlayer.proxy.dataplane --run-dir DIR`` is started by the daemon in its own session (as the container
shims are), one per data dir. It imports only this module, the C extensions and the small modules they need
(``zlayer.errors``, ``zlayer.proxy.l7``'s table rows) — not the daemon, the agent or FastAPI — so it stays small, and
Python in it only takes control messages: the bytes go through the C threads.

The daemon talks to it over ``DIR/dataplane/control.sock`` (0600 in a 0700 directory; ``pid`` beside it): frames of a
4-byte big-endian length and a JSON object ``{"op": ..., ...}``, answered ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``. The process keeps its tables when the daemon goes away (a crash, an upgrade) and
serves on; a daemon that comes back re-adopts it, re-sends the whole state and the process reconciles (listeners
that stay are not re-bound). When the daemon runs another build, it starts a successor with ``--takeover``: the
successor asks this process for its listening sockets (``handover``, the descriptors passed with SCM_RIGHTS), serves
on them, and this process stops accepting, lets its open connections finish and exits — no connection attempt is
refused during the swap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

MAX_FRAME = 64 << 20
DRAIN_GRACE = 30.0


def build_id() -> str:
    """The identity a daemon and its data-plane process must share: zlayer's version and the C planes' build
    (``ZLAYER_BUILD_ID`` overrides it, which is how an upgrade in place is tested)."""
    forced = os.environ.get("ZLAYER_BUILD_ID")
    if forced:
        return forced
    from zlayer._version import __version__

    here = Path(__file__).parent
    stamp = []
    for entry in sorted(here.iterdir()):
        if entry.name.startswith(("_l7.", "_l4.")) and entry.suffix == ".so":
            st = entry.stat()
            stamp.append(f"{st.st_size:x}.{st.st_mtime_ns:x}")
    return "+".join([__version__, *stamp])


def control_dir(run_dir: Path) -> Path:
    return run_dir / "dataplane"


def socket_path(run_dir: Path) -> Path:
    return control_dir(run_dir) / "control.sock"


def pid_path(run_dir: Path) -> Path:
    return control_dir(run_dir) / "pid"


# ---- framing (both sides) --------------------------------------------------------------------------------------


def send_frame(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    data = struct.pack(">I", len(body)) + body
    if fds:
        socket.send_fds(sock, [data[:4]], fds)
        sock.sendall(data[4:])
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the peer closed the data-plane control socket")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, want_fds: int = 0) -> tuple[Any, list[int]]:
    fds: list[int] = []
    if want_fds:
        head, fds, _, _ = socket.recv_fds(sock, 4, want_fds)
        if not head:
            raise ConnectionError("the peer closed the data-plane control socket")
        head += _recv_exact(sock, 4 - len(head))
    else:
        head = _recv_exact(sock, 4)
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ConnectionError(f"data-plane control frame of {n} bytes is over the limit")
    return json.loads(_recv_exact(sock, n)), fds


# ---- the process -----------------------------------------------------------------------------------------------


def _l4_key(protocol: str, host: str, port: int) -> str:
    return f"{protocol}|{host}|{port}"


class DataPlane:
    """The state of the process: one L7 plane, L4 listeners by ``protocol|host|port``, the last health it was given."""

    def __init__(self, workers: int) -> None:
        from zlayer.proxy._l7_adapter import CL7Plane

        self.workers = workers
        self.l7 = CL7Plane(workers)
        self.l7_table: dict[str, Any] | None = None
        self.l4: dict[str, Any] = {}  # key -> zlayer.proxy._l4.Listener
        self.l4_conf: dict[str, dict[str, Any]] = {}
        self.health: dict[str, bool] = {}  # "group|host|port" -> healthy, as last told
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.inherited: dict[str, list[int]] = {}  # "tcp|host|port" / "udp|host|port" -> listening fds to reuse
        self.drains: list[threading.Thread] = []
        self.l7_ports: set[int] = set()

    # -- L7
    def l7_apply(self, table: dict[str, Any]) -> None:
        from zlayer.proxy.l7 import L7Table

        compiled = L7Table.from_wire(table)
        self._offer_inherited([("tcp", h, p) for h, p, _ in compiled.listen], l7=True)
        self.l7.apply_table(compiled)
        self.l7_table = table
        for name, backends in compiled.groups:
            for h, p, ok in backends:
                self.health[f"{name}|{h}|{p}"] = ok

    def l7_set_health(self, group: str, host: str, port: int, healthy: bool) -> None:
        self.l7.set_health(group, host, port, healthy)
        self.health[f"{group}|{host}|{port}"] = healthy

    # -- L4
    def l4_open(self, conf: dict[str, Any], tls: list[str] | None, backends: list[list[Any]]) -> int:
        """Opens (or keeps, when one with the same settings runs) the listener of ``conf``; returns its port."""
        from zlayer.proxy._l4 import Listener

        key = _l4_key(conf["protocol"], conf["host"], conf["port"])
        old = self.l4.get(key)
        if old is not None and old.running and self.l4_conf.get(key) == conf and conf["port"]:
            listener = old  # re-adopted: the same socket keeps accepting
        else:
            kw = {k: v for k, v in conf.items() if k not in ("protocol", "host", "port")}
            listener = Listener(conf["protocol"], conf["host"], conf["port"], **kw)
        listener.set_backends([(str(h), int(p)) for h, p, _ in backends])
        for h, p, ok in backends:
            listener.set_health(str(h), int(p), bool(ok))
        if conf["protocol"] == "tcp":
            listener.set_tls(*(tls or (None, None)))
        if listener is not old:
            self._offer_inherited([(conf["protocol"], conf["host"], conf["port"])], l7=False)
            listener.start()  # SO_REUSEPORT: binds beside a replaced listener, which then drains
            self.l4[key] = listener
            self.l4_conf[key] = conf
            if old is not None:
                self._drain(old)
        return int(listener.port)

    def l4_get(self, key: str) -> Any:
        listener = self.l4.get(key)
        if listener is None:
            raise LookupError(f"no L4 listener {key}")
        return listener

    def l4_close(self, key: str, drain: bool, grace: float) -> None:
        listener = self.l4.pop(key, None)
        self.l4_conf.pop(key, None)
        if listener is None:
            return
        if drain:
            listener.stop_accepting()
            self._drain(listener, grace)
        else:
            listener.stop()

    def _drain(self, listener: Any, grace: float = DRAIN_GRACE) -> None:
        t = threading.Thread(target=listener.drain, args=(grace,), daemon=True, name="zlayer-dp-drain")
        t.start()
        self.drains.append(t)

    def prune(self, keep: list[str]) -> None:
        """After a re-adopting daemon sent its whole state: listeners it did not name drain away, and sockets handed
        over for addresses it no longer serves are closed."""
        for key in [k for k in self.l4 if k not in set(keep)]:
            self.l4_close(key, True, DRAIN_GRACE)
        for fds in self.inherited.values():
            for fd in fds:
                os.close(fd)
        self.inherited.clear()

    # -- handover
    def _offer_inherited(self, wanted: list[tuple[str, str, int]], l7: bool) -> None:
        """Listening sockets taken over from a predecessor go to the plane that opens that address again."""
        from zlayer.proxy import _l4, _l7

        for proto, host, port in wanted:
            fds = self.inherited.pop(f"{proto}|{host}|{port}", None)
            if fds:
                (_l7 if l7 else _l4).inherit_fds(fds)
                _say(f"serving {proto} {host}:{port} on the {len(fds)} socket(s) handed over")

    def listening(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Every listening socket of this process, dup'ed, with what it is."""
        from zlayer.proxy import _l4, _l7

        meta: list[dict[str, Any]] = []
        fds: list[int] = []
        for fd, proto in [(fd, "tcp") for fd in _l7.listening_fds(self.l7.proxy)] + [
            (fd, lst.protocol) for lst in self.l4.values() for fd in _l4.listening_fds(lst)
        ]:
            s = socket.socket(fileno=os.dup(fd))
            host, port = s.getsockname()[:2]
            meta.append({"proto": proto, "host": host, "port": port})
            fds.append(s.detach())
        return meta, fds

    def stop_accepting_all(self) -> None:
        self.l7_ports = {port for _, port in self.l7._listening}
        self.l7.unlisten_all()
        for listener in self.l4.values():
            if listener.protocol == "tcp":
                listener.stop_accepting()

    def drain_all(self, grace: float) -> None:
        """Lets open connections finish (up to ``grace``), then stops every plane."""
        for listener in list(self.l4.values()):
            self._drain(listener, grace)
        self.l4.clear()
        deadline = time.monotonic() + grace
        # Every client connection this process accepted (requests under way, a request not read yet, keep-alive
        # ones between requests) may finish: clients close them, the grace bounds the wait.
        while time.monotonic() < deadline and _client_connections(self.l7_ports):
            time.sleep(0.05)
        for t in self.drains:
            t.join(max(0.0, deadline - time.monotonic()) + 1.0)
        self.l7.close()

    def close(self) -> None:
        for listener in self.l4.values():
            listener.stop()
        self.l4.clear()
        self.l7.close()

    # -- requests
    def handle(self, req: dict[str, Any], conn: socket.socket) -> Any:
        op = req.get("op")
        if op == "hello":
            return {"build": BUILD, "pid": os.getpid(), "state": self.l7_table is not None or bool(self.l4)}
        if op == "ping":
            return True
        if op == "l7_apply":
            self.l7_apply(req["table"])
            return True
        if op == "l7_set_health":
            self.l7_set_health(req["group"], req["host"], int(req["port"]), bool(req["healthy"]))
            return True
        if op == "l7_stats":
            return {"stats": self.l7.proxy.stats(), "active": self.l7.proxy.backend_active()}
        if op == "l7_requests":
            return self.l7.route_requests()
        if op == "l7_challenge":
            if req.get("value") is None:
                self.l7.remove_challenge(req["token"])
            else:
                self.l7.set_challenge(req["token"], req["value"])
            return True
        if op == "l4_open":
            return self.l4_open(req["conf"], req.get("tls"), req.get("backends") or [])
        if op == "l4_set_backends":
            lst = self.l4_get(req["key"])
            lst.set_backends([(str(h), int(p)) for h, p, _ in req["backends"]])
            for h, p, ok in req["backends"]:
                lst.set_health(str(h), int(p), bool(ok))
            return True
        if op == "l4_set_health":
            return bool(self.l4_get(req["key"]).set_health(req["host"], int(req["port"]), bool(req["healthy"])))
        if op == "l4_set_tls":
            self.l4_get(req["key"]).set_tls(*(req.get("tls") or (None, None)))
            return True
        if op == "l4_stats":
            lst = self.l4_get(req["key"])
            return {"stats": dict(lst.stats()), "backends": [dict(b) for b in lst.backends()]}
        if op == "l4_close":
            self.l4_close(req["key"], bool(req.get("drain")), float(req.get("grace", DRAIN_GRACE)))
            return True
        if op == "prune":
            self.prune(list(req["keep"]))
            return True
        if op == "health":
            return self.health
        if op == "handover":
            meta, fds = self.listening()
            try:
                send_frame(conn, {"ok": True, "result": meta}, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            return _SENT
        if op == "retire":
            # The successor serves on the same sockets now: stop taking new connections, finish the open ones, exit.
            self.stopping.set()
            threading.Thread(target=self._retire, args=(float(req.get("grace", DRAIN_GRACE)),), daemon=True).start()
            return True
        if op == "shutdown":
            self.stopping.set()
            threading.Thread(target=self._shutdown, daemon=True).start()
            return True
        raise ValueError(f"unknown data-plane request {op!r}")

    def _retire(self, grace: float) -> None:
        with self.lock:
            self.stop_accepting_all()
        self.drain_all(grace)
        _exit_now()

    def _shutdown(self) -> None:
        with self.lock:
            self.close()
        _exit_now()


_SENT = object()
BUILD = ""


def _client_connections(ports: set[int]) -> int:
    """Established TCP connections of this process whose local port is one of ``ports``."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) in ports:
                    n += cols[9] in inodes
    return n


def _say(line: str) -> None:
    print(f"zlayer data plane: {line}", file=sys.stderr, flush=True)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve_conn(dp: DataPlane, conn: socket.socket) -> None:
    with conn:
        while True:
            try:
                req, _ = recv_frame(conn)
            except (ConnectionError, OSError, ValueError):
                return
            try:
                with dp.lock:
                    result = dp.handle(req, conn)
                if result is _SENT:
                    continue
                reply: dict[str, Any] = {"ok": True, "result": result}
            except Exception as exc:  # a bad request is answered, never ends the process
                where = getattr(exc, "where", None)
                reply = {"ok": False, "error": f"{exc}" + (f" ({where})" if where else ""), "type": type(exc).__name__}
            try:
                send_frame(conn, reply)
            except OSError:
                return


def _take_over(dp: DataPlane, predecessor: Path) -> socket.socket | None:
    """Receives the predecessor's listening sockets; they are reused when the daemon opens those addresses again."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(predecessor))
        send_frame(s, {"op": "handover"})
        reply, fds = recv_frame(s, want_fds=1024)
    except OSError as exc:
        print(f"zlayer data plane: no handover from {predecessor}: {exc}", file=sys.stderr)
        s.close()
        return None
    for meta, fd in zip(reply.get("result") or [], fds, strict=False):
        dp.inherited.setdefault(f"{meta['proto']}|{meta['host']}|{meta['port']}", []).append(fd)
    _say(f"took over {len(fds)} listening socket(s) from the predecessor")
    return s


def listen_control(path: Path) -> socket.socket:
    from zlayer.paths import bind_unix

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    srv = bind_unix(tmp, 0o600)
    srv.listen(16)
    os.replace(tmp, path)  # atomically the socket a daemon finds from now on
    return srv


def main(argv: list[str] | None = None) -> int:
    global BUILD
    ap = argparse.ArgumentParser(prog="python -m zlayer.proxy.dataplane")
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--takeover", action="store_true", help="take the listening sockets of the running process")
    args = ap.parse_args(argv)
    BUILD = build_id()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    dp = DataPlane(args.workers)
    path = socket_path(args.run_dir)
    predecessor: socket.socket | None = None
    if args.takeover:
        predecessor = _take_over(dp, path)
    srv = listen_control(path)
    pid_file = pid_path(args.run_dir)
    tmp = pid_file.with_name(".pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, pid_file)

    def on_term(signum: int, frame: Any) -> None:
        dp.stopping.set()
        threading.Thread(target=dp._shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"zlayer data plane {BUILD} pid {os.getpid()} on {path}", file=sys.stderr, flush=True)
    if predecessor is not None:
        predecessor.close()  # the daemon tells the predecessor to retire once this process serves its tables
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve_conn, args=(dp, conn), daemon=True, name="zlayer-dp-control").start()


if __name__ == "__main__":
    sys.exit(main())
