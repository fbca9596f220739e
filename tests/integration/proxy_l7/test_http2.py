"""HTTP/2 over TLS (ALPN h2) in the C L7 proxy (csrc/proxy/l7_h2.c): curl --http2, h2load and a raw h2 client in
front, nginx and a Python echo server behind, each stream relayed as an HTTP/1.1 request."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.proxy_l4 import free_port, peer_env
from tests.fixtures.proxy_l7 import EchoBackend, NginxBackend
from zlayer.proxy.certs import self_signed

pytestmark = pytest.mark.peer

Groups = dict[str, list[tuple[str, int, bool]]]
Routes = list[tuple[str, str | None, str, bool, str]]  # key, host, prefix, strip, group


class TlsPlane:
    """A started proxy with one TLS listener."""

    def __init__(self, proxy: Any, port: int, cert: Path) -> None:
        self.proxy = proxy
        self.port = port
        self.cert = cert

    def apply(self, routes: Routes, groups: Groups) -> None:
        names = sorted(groups)
        self.proxy.apply(
            [(k, self.port, h, p, s, names.index(g)) for k, h, p, s, g in routes],
            [(n, groups[n]) for n in names],
        )

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"


MakePlane = Callable[..., TlsPlane]


@pytest.fixture
def h2_plane(tmp_path: Path) -> Iterator[MakePlane]:
    """Factory of started C L7 proxies with one TLS listener (self-signed a.test certificate)."""
    from zlayer.proxy._l7 import Proxy

    made: list[Any] = []

    def make(routes: Routes, groups: Groups, **timeouts: float) -> TlsPlane:
        cert, key = self_signed(["a.test"])
        (tmp_path / "a.crt").write_bytes(cert)
        (tmp_path / "a.key").write_bytes(key)
        proxy = Proxy(1, **timeouts)
        made.append(proxy)
        proxy.set_certificates([("a.test", str(tmp_path / "a.crt"), str(tmp_path / "a.key"))])
        plane = TlsPlane(proxy, proxy.listen("127.0.0.1", 0, True), tmp_path / "a.crt")
        plane.apply(routes, groups)
        proxy.start()
        return plane

    try:
        yield make
    finally:
        for p in made:
            p.close()


def curl(*args: str, stdin: bytes | None = None) -> tuple[str, bytes]:
    """curl -sk with the HTTP version and status on stderr's last line; returns (version status, body)."""
    res = subprocess.run(
        ["curl", "-sk", "--max-time", "20", "-w", "%{stderr}%{http_version} %{http_code}", *args],
        capture_output=True,
        input=stdin,
        timeout=60,
        env=peer_env(),
    )
    assert res.returncode == 0, res.stderr
    return res.stderr.decode().strip().splitlines()[-1], res.stdout


def one_group(port: int) -> tuple[Routes, Groups]:
    return [("web#h2", None, "/", False, "G")], {"G": [("127.0.0.1", port, True)]}


def test_curl_http2_through_the_proxy_to_nginx(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    plane = h2_plane(*one_group(proxy_l7_nginx.ports[0]))
    status, body = curl("--http2", plane.url("/echo"))
    assert status == "2 200"
    text = body.decode()
    assert text.startswith(f"A xff=127.0.0.1 proto=https host=127.0.0.1:{plane.port} ")
    assert f'fwd=for=127.0.0.1;host="127.0.0.1:{plane.port}";proto=https' in text
    assert "uri=/echo" in text
    # a 1 MiB static file over DATA frames under curl's flow control, byte for byte
    status, big = curl("--http2", plane.url("/files/big"))
    assert status == "2 200"
    want = (proxy_l7_nginx.root / "www" / "files" / "big").read_bytes()
    assert hashlib.sha256(big).digest() == hashlib.sha256(want).digest()
    # response headers come lowercase, without hop-by-hop fields
    res = subprocess.run(
        ["curl", "-sk", "--http2", "-D", "-", "-o", "/dev/null", plane.url("/")],
        capture_output=True,
        timeout=30,
        env=peer_env(),
    )
    head = res.stdout.decode().lower()
    assert head.startswith("http/2 200") and "server: nginx" in head
    assert "connection:" not in head and "keep-alive" not in head
    stats = plane.proxy.stats()["web#h2"]
    assert stats["requests"] == 3 and stats["status"][1] == 3 and stats["active"] == 0
    assert stats["bytes_out"] > len(want)


def test_streams_are_routed_by_authority_and_path_prefix(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    a, b = proxy_l7_nginx.ports[0], proxy_l7_nginx.ports[1]
    plane = h2_plane(
        [
            ("a#h", "a.test", "/", False, "GA"),
            ("b#h", "b.test", "/", False, "GB"),
            ("b#api", "b.test", "/api", True, "GA"),
        ],
        {"GA": [("127.0.0.1", a, True)], "GB": [("127.0.0.1", b, True)]},
    )
    resolve = ["--resolve", f"a.test:{plane.port}:127.0.0.1", "--resolve", f"b.test:{plane.port}:127.0.0.1"]
    assert curl("--http2", *resolve, plane.url("/x", "a.test")) == ("2 200", b"A /x\n")
    assert curl("--http2", *resolve, plane.url("/y?q=1", "b.test")) == ("2 200", b"B /y?q=1\n")
    assert curl("--http2", *resolve, plane.url("/api/v1", "b.test")) == ("2 200", b"A /v1\n")
    # several streams of one connection, each to its own route
    _, body = curl(
        "--http2", *resolve, plane.url("/1", "b.test"), plane.url("/api/2", "b.test"), plane.url("/3", "b.test")
    )
    assert body == b"B /1\nA /2\nB /3\n"
    # no route for the name: 404 over h2
    assert curl("--http2", "--resolve", f"c.test:{plane.port}:127.0.0.1", plane.url("/", "c.test"))[0] == "2 404"
    assert plane.proxy.stats()["b#api"]["requests"] == 2


def test_request_bodies_reach_the_backend(proxy_l7_echo: EchoBackend, h2_plane: MakePlane, tmp_path: Path) -> None:
    plane = h2_plane(*one_group(proxy_l7_echo.port))
    payload = os.urandom(300_000)
    (tmp_path / "body").write_bytes(payload)
    # with a content-length: relayed as is; the backend answers chunked, the proxy turns it into DATA frames
    status, body = curl("--http2", "--data-binary", f"@{tmp_path / 'body'}", plane.url("/up"))
    assert status == "2 200" and body == payload
    line, headers, got = proxy_l7_echo.requests[-1]
    assert line == "POST /up HTTP/1.1" and got == payload
    assert headers["content-length"] == str(len(payload)) and headers["x-forwarded-proto"] == "https"
    # without a length (upload from a pipe): chunked toward the HTTP/1.1 backend
    status, body = curl("--http2", "-T", "-", "-X", "PUT", plane.url("/pipe"), stdin=payload[:70_000])
    assert status == "2 200" and body == payload[:70_000]
    line, headers, got = proxy_l7_echo.requests[-1]
    assert line == "PUT /pipe HTTP/1.1" and headers.get("transfer-encoding") == "chunked"
    assert got == payload[:70_000]
    assert plane.proxy.stats()["web#h2"]["bytes_in"] >= len(payload) + 70_000


def test_h2load_many_streams_without_a_failure(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    plane = h2_plane(*one_group(proxy_l7_nginx.ports[0]))
    res = subprocess.run(
        ["h2load", "-n", "20000", "-c", "10", "-m", "10", plane.url("/")],
        capture_output=True,
        text=True,
        timeout=300,
        env=peer_env(),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Application protocol: h2" in res.stdout
    assert "20000 succeeded, 0 failed, 0 errored" in res.stdout, res.stdout[-1500:]
    assert "status codes: 20000 2xx" in res.stdout
    stats = plane.proxy.stats()["web#h2"]
    assert stats["requests"] == 20000 and stats["status"][1] == 20000 and stats["active"] == 0


def _alpn_request(port: int, protocols: list[str] | None) -> tuple[str | None, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if protocols is not None:
        ctx.set_alpn_protocols(protocols)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="a.test") as s,
    ):
        chosen = s.selected_alpn_protocol()
        if chosen == "h2":
            return chosen, b""
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return chosen, data


def test_clients_without_h2_keep_http1(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    plane = h2_plane(*one_group(proxy_l7_nginx.ports[0]))
    assert _alpn_request(plane.port, ["h2", "http/1.1"])[0] == "h2"
    chosen, data = _alpn_request(plane.port, ["http/1.1"])
    assert chosen == "http/1.1" and data.startswith(b"HTTP/1.1 200") and data.endswith(b"A /hello\n")
    chosen, data = _alpn_request(plane.port, None)
    assert chosen is None and data.startswith(b"HTTP/1.1 200") and data.endswith(b"A /hello\n")
    assert curl("--http1.1", plane.url("/x")) == ("1.1 200", b"A /x\n")


def test_no_healthy_backend_is_503_and_a_dead_backend_502(h2_plane: MakePlane) -> None:
    # a backend that accepts and hangs up without answering
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    hangup_port = lsock.getsockname()[1]

    def hang_up() -> None:
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            c.recv(65536)
            c.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        plane = h2_plane(
            [("down#h", None, "/down", False, "D"), ("bad#h", None, "/bad", False, "B")],
            {"D": [("127.0.0.1", free_port(), False)], "B": [("127.0.0.1", hangup_port, True)]},
        )
        assert curl("--http2", plane.url("/down")) == ("2 503", b"no healthy backend\n")
        assert curl("--http2", plane.url("/bad")) == ("2 502", b"bad gateway\n")
        stats = plane.proxy.stats()
        assert stats["down#h"]["status"][4] == 1 and stats["bad#h"]["status"][4] == 1
    finally:
        lsock.close()


# ---- a minimal raw HTTP/2 client (frames by hand, HPACK literals without indexing)


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


class RawH2:
    def __init__(self, port: int, window: int = 2**31 - 1) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        self.port = port
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="a.test")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.buf = b""
        # INITIAL_WINDOW_SIZE: by default no flow control to manage; a small window makes the proxy wait for updates
        settings = struct.pack(">HI", 4, window)
        grow = _frame(8, 0, 0, struct.pack(">I", 2**31 - 1 - 65535)) if window > 65535 else b""
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings) + grow)

    def get(self, stream: int, path: str) -> None:
        block = (
            _literal(":method", "GET")
            + _literal(":scheme", "https")
            + _literal(":path", path)
            + _literal(":authority", f"127.0.0.1:{self.port}")
        )
        self.sock.sendall(_frame(1, 0x5, stream, block))  # END_STREAM | END_HEADERS

    def reset(self, stream: int) -> None:
        self.sock.sendall(_frame(3, 0, stream, struct.pack(">I", 8)))  # CANCEL

    def frame(self) -> tuple[int, int, int, bytes] | None:
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        ftype, flags, stream = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9 : 9 + n], self.buf[9 + n :]
        if ftype == 4 and not flags & 1:
            self.sock.sendall(_frame(4, 1, 0))  # SETTINGS ACK
        return ftype, flags, stream, payload


def test_streams_reset_by_the_client_leave_the_others_whole(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    plane = h2_plane(*one_group(proxy_l7_nginx.ports[0]))
    want = (proxy_l7_nginx.root / "www" / "files" / "big").read_bytes()
    c = RawH2(plane.port)
    streams = list(range(1, 41, 2))
    for s in streams:
        c.get(s, "/files/big")
    cancelled = set(streams[::2])
    for s in cancelled:
        c.reset(s)
    kept = {s: b"" for s in streams if s not in cancelled}
    ended: set[int] = set()
    while ended != set(kept):
        f = c.frame()
        assert f is not None, f"connection closed with streams {sorted(set(kept) - ended)} unfinished"
        ftype, flags, stream, payload = f
        assert ftype != 7, f"GOAWAY {payload!r}"
        assert not (ftype == 3 and stream in kept), f"stream {stream} was reset by the proxy"
        if ftype == 0 and stream in kept:
            kept[stream] += payload
            if flags & 1:
                ended.add(stream)
    for s, body in kept.items():
        assert len(body) == len(want) and body == want, s
    # the same connection still serves, and so does a new one
    c.get(101, "/after")
    body = b""
    while True:
        f = c.frame()
        assert f is not None
        if f[0] == 0 and f[2] == 101:
            body += f[3]
            if f[1] & 1:
                break
    assert body == b"A /after\n"
    c.sock.close()
    assert curl("--http2", plane.url("/x")) == ("2 200", b"A /x\n")
    assert plane.proxy.stats()["web#h2"]["active"] == 0
    assert all(v == 0 for v in plane.proxy.backend_active().values())


def test_shutdown_sends_goaway(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    plane = h2_plane(*one_group(proxy_l7_nginx.ports[0]))
    c = RawH2(plane.port)
    c.get(1, "/x")
    while True:
        f = c.frame()
        assert f is not None
        if f[0] == 0 and f[2] == 1 and f[1] & 1:
            break
    plane.proxy.close()
    frames = []
    while (f := c.frame()) is not None:
        frames.append(f)
    goaway = [f for f in frames if f[0] == 7]
    assert goaway, frames
    last_stream, code = struct.unpack(">II", goaway[0][3][:8])
    assert last_stream == 1 and code == 0  # NO_ERROR, stream 1 was processed


def test_server_settings_limit_concurrent_streams(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    plane = h2_plane(*one_group(proxy_l7_nginx.ports[0]))
    c = RawH2(plane.port)
    f = c.frame()
    assert f is not None and f[0] == 4 and not f[1] & 1  # the server's SETTINGS come first
    settings = {
        struct.unpack(">H", f[3][i : i + 2])[0]: struct.unpack(">I", f[3][i + 2 : i + 6])[0]
        for i in range(0, len(f[3]), 6)
    }
    assert settings[3] == 128  # SETTINGS_MAX_CONCURRENT_STREAMS
    c.sock.close()


def test_a_client_with_a_small_window_paces_the_backend(proxy_l7_nginx: NginxBackend, h2_plane: MakePlane) -> None:
    """4 KiB stream and 64 KiB connection windows: the proxy sends only what the client grants, and waits for more."""
    plane = h2_plane(*one_group(proxy_l7_nginx.ports[0]))
    want = (proxy_l7_nginx.root / "www" / "files" / "big").read_bytes()
    c = RawH2(plane.port, window=4096)
    c.get(1, "/files/big")
    body = b""
    granted = 4096
    while True:
        f = c.frame()
        assert f is not None
        if f[0] == 0 and f[2] == 1:
            body += f[3]
            assert len(body) <= granted, "DATA beyond the stream window"
            if f[1] & 1:
                break
            if f[3]:
                n = struct.pack(">I", len(f[3]))
                c.sock.sendall(_frame(8, 0, 1, n) + _frame(8, 0, 0, n))
                granted += len(f[3])
    assert len(body) == len(want) and body == want
    c.sock.close()


def test_stream_connect_timeout_then_504_and_response_timeout(
    proxy_l7_nginx: NginxBackend, proxy_l7_blackhole: Any, proxy_l7_silent: Any, h2_plane: MakePlane
) -> None:
    """Per stream: a hanging connect moves on to the next backend, or gives 504 with none left; a backend that never
    answers gives 504 after the response timeout."""
    hole = ("127.0.0.1", proxy_l7_blackhole.port, True)
    routes: Routes = [("web#h2", None, "/", False, "G")]
    plane = h2_plane(routes, {"G": [hole, ("127.0.0.1", proxy_l7_nginx.ports[0], True)]}, connect_timeout=0.5)
    for _ in range(3):
        assert curl("--http2", plane.url("/"))[0] == "2 200"
    alone = h2_plane(routes, {"G": [hole]}, connect_timeout=0.5, response_timeout=30.0)
    status, body = curl("--http2", alone.url("/"))
    assert status == "2 504" and b"connect timed out" in body
    silent = h2_plane(routes, {"G": [("127.0.0.1", proxy_l7_silent.port, True)]}, response_timeout=1.0)
    assert curl("--http2", silent.url("/"))[0] == "2 504"


def test_expect_100_continue_reaches_an_h2_client(proxy_l7_continue: Any, h2_plane: MakePlane, tmp_path: Path) -> None:
    plane = h2_plane([("web#h2", None, "/", False, "G")], {"G": [("127.0.0.1", proxy_l7_continue.port, True)]})
    body = tmp_path / "body"
    body.write_bytes(b"y" * 100_000)
    res = subprocess.run(
        ["curl", "-sk", "-v", "--http2", "--expect100-timeout", "20", "-H", "Expect: 100-continue",
         "--data-binary", f"@{body}", plane.url("/up")],
        capture_output=True, timeout=60, env=peer_env(),
    )  # fmt: skip
    assert b"< HTTP/2 100" in res.stderr, res.stderr[-2000:]
    assert res.stdout == b"expected=1 " + b"y" * 100_000


@pytest.mark.parametrize("backend", ["proxy_l7_nginx_close", "proxy_l7_http10", "proxy_l7_closing"])
def test_streams_are_each_answered_when_the_backend_closes_after_every_response(
    h2_plane: MakePlane, request: pytest.FixtureRequest, backend: str
) -> None:
    """Backends that end every connection after one response (Connection: close, with or without a length): three
    streams sent at once on one h2 connection, twice, each get their whole body."""
    found = request.getfixturevalue(backend)
    port = found.ports[0] if backend == "proxy_l7_nginx_close" else found if isinstance(found, int) else found.port
    plane = h2_plane(*one_group(port))
    c = RawH2(plane.port)
    for first in (1, 7):
        bodies = {s: b"" for s in range(first, first + 6, 2)}
        for s in bodies:
            c.get(s, f"/s{s}")
        ended: set[int] = set()
        while ended != set(bodies):
            f = c.frame()
            assert f is not None, f"connection closed with streams {sorted(set(bodies) - ended)} unfinished"
            ftype, flags, stream, payload = f
            assert ftype not in (3, 7), f"stream {stream} reset or GOAWAY"
            if ftype == 0 and stream in bodies:
                bodies[stream] += payload
            if ftype in (0, 1) and flags & 1 and stream in bodies:
                ended.add(stream)
        assert {s: b.split()[-1] for s, b in bodies.items()} == {s: b"/s%d" % s for s in bodies}
    c.sock.close()
