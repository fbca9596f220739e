"""A loopback HTTP backend that holds every request until the test releases it (no timing involved): it proves
which backend a request went to and keeps a connection busy for as long as the test needs."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SlowBackend:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.hits = 0
        self.waiting = 0
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with outer._cond:
                    outer.hits += 1
                    outer.waiting += 1
                    outer._cond.notify_all()
                outer.release.wait(30)
                with outer._cond:
                    outer.waiting -= 1
                body = f"SLOW {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def process_request(self, request: Any, client_address: Any) -> None:
                with outer._cond:
                    outer.connections += 1
                super().process_request(request, client_address)

        self.connections = 0  # TCP connections accepted
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_waiting(self, n: int, timeout: float = 10.0) -> bool:
        """True once at least ``n`` requests are held here."""
        with self._cond:
            return self._cond.wait_for(lambda: self.waiting >= n, timeout)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def get(port: int, path: str, timeout: float = 20.0) -> tuple[int, str]:
    """One HTTP/1.1 GET on a new connection (Connection: close): (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, body.decode(errors="replace")
