"""The TLS setup perf/proxy_tls.py measures, checked for behaviour: the standalone proxy terminates TLS from a static
table; a client that sends ``Connection: close`` on every new TLS connection does not cost a new backend connection
each time (the pooled one is kept); sessions still resume by ticket on TLS 1.2 and 1.3 (no internal session store)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.proxy_l4 import free_port, wait_tcp
from tests.integration.proxy_l7.slow_backend import SlowBackend
from zlayer.proxy.certs import self_signed

pytestmark = pytest.mark.peer


@dataclass
class Served:
    port: int
    cert: Path
    backend: SlowBackend


@pytest.fixture
def tls_standalone(tmp_path: Path) -> Iterator[Served]:
    cert, key = self_signed(["bench.zlayer.test"])
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    backend = SlowBackend()
    backend.release.set()
    port = free_port()
    table = {
        "workers": 1,
        "certificates": [{"domain": "bench.zlayer.test", "cert": "c.pem", "key": "k.pem"}],
        "routes": [
            {"key": "b#s", "listen": f"127.0.0.1:{port}", "tls": True, "backends": [f"127.0.0.1:{backend.port}"]}
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(table))
    proc = subprocess.Popen([sys.executable, "-m", "zlayer.proxy.standalone", str(tmp_path / "t.json")])
    try:
        wait_tcp(port)
        yield Served(port, tmp_path / "c.pem", backend)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        backend.close()


def _context(cert: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def _get(served: Served, ctx: ssl.SSLContext, path: str, session: ssl.SSLSession | None = None) -> tuple[str, Any]:
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="bench.zlayer.test", session=session) as s:
        reused, version = s.session_reused, s.version()  # the handshake is done
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench.zlayer.test\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data.decode(errors="replace"), (s.session, reused, version)


def test_connection_close_clients_reuse_one_backend_connection(tls_standalone: Served) -> None:
    ctx = _context(tls_standalone.cert, ssl.TLSVersion.TLSv1_3)
    for i in range(6):
        text, (_, reused, version) = _get(tls_standalone, ctx, f"/r{i}")
        assert text.startswith("HTTP/1.1 200") and text.endswith(f"SLOW /r{i}\n") and "Connection: close" in text
        assert version == "TLSv1.3" and not reused
    assert tls_standalone.backend.connections == 1  # six TLS connections, one pooled backend connection


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_resume_by_ticket(tls_standalone: Served, version: ssl.TLSVersion) -> None:
    ctx = _context(tls_standalone.cert, version)
    _, (session, reused, _) = _get(tls_standalone, ctx, "/first")
    assert not reused and session is not None
    text, (_, reused, got) = _get(tls_standalone, ctx, "/again", session)
    assert reused and text.endswith("SLOW /again\n") and got == version.name.replace("v1_", "v1.")
