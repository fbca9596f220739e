"""A ``wasi:http/incoming-handler`` replica's HTTP/1.1 server (in its worker process): each request read whole,
handed to :meth:`P2Http.call` on a pooled instance, its response written with a ``Content-Length``. A thread per
connection (the guest runs with the GIL released, inside wasmtime); keep-alive as the client asks.

A request the guest failed (a trap, past ``request_timeout``, no response set) is a ``500`` whose body says so, and
the line goes to the replica's log; the server and the other instances go on."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from zlayer.runtime.wasm.engine import EpochTicker, P2Http

MAX_BODY = 64 << 20
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
    program: P2Http
    log: Callable[[str, bytes], None]

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        err = sys.exc_info()[1]
        if isinstance(err, OSError):  # a client gone mid-request (reset, broken pipe): its business, not an error
            return
        self.log("stderr", f"zlayer: serving {client_address}: {type(err).__name__}: {err}\n".encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle held the body for the peer's delayed ACK
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log into the guest's log

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
                if len(out) > MAX_BODY:
                    return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        try:
            body = self._body()
        except ValueError:
            self._send(400, [], b"zlayer: malformed request body\n")
            return
        if body is None:
            self._send(413, [], b"zlayer: request body too large\n")
            return
        headers = [(k, v.encode("latin-1")) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        authority = self.headers.get("Host", "")
        status, out_headers, data, error = self.server.program.call(
            self.command, self.path, "http", authority, headers, body
        )
        if error:
            self.server.log("stderr", f"zlayer: {self.command} {self.path}: 500: {error}\n".encode())
            self._send(500, [], f"zlayer: the WASM handler failed: {error}\n".encode())
            return
        self._send(status, out_headers, data)

    def _send(self, status: int, headers: list[tuple[str, bytes]], data: bytes) -> None:
        self.send_response_only(status)
        for k, v in headers:
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v.decode("latin-1"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve


def serve(
    program: P2Http, root: Path, listen: tuple[str, int], min_instances: int, log: Callable[[str, bytes], None]
) -> None:
    """Serve ``program`` on ``listen`` until the process is ended (SIGTERM)."""
    ticker = EpochTicker(program.engine)
    program.warm(min_instances)
    server = _Server((listen[0], int(listen[1])), _Handler)
    server.program = program
    server.log = log
    threading.Thread(target=_write_stats, args=(program, root), name="wasm-stats", daemon=True).start()
    (root / "ready").write_text(json.dumps({"listen": list(listen)}))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        ticker.close()


def _write_stats(program: P2Http, root: Path) -> None:
    last: tuple[int, ...] = ()
    while True:
        st = program.stats
        program.shrink()  # wasm.idle_timeout: instances unused that long go, down to min_instances
        now = (st.calls, st.errors, st.instantiated, st.alive)
        if now != last:
            tmp = root / "stats.json.tmp"
            tmp.write_text(json.dumps({"calls": now[0], "errors": now[1], "instantiated": now[2], "instances": now[3]}))
            os.replace(tmp, root / "stats.json")
            last = now
        time.sleep(0.5)


__all__ = ["serve"]
