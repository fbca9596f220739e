"""The C L7 HTTP/1.1 proxy with real nginx (and a Python echo server) as backends, curl and raw sockets as clients."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.fixtures.proxy_l4 import free_port, peer_env
from tests.fixtures.proxy_l7 import RawBackend

pytestmark = pytest.mark.peer


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends ``data``, half-closes nothing, reads until the proxy closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(data)
        out = b""
        try:
            while chunk := c.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def read_responses(sock: socket.socket, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    f = sock.makefile("rb")
    out = []
    for _ in range(n):
        status = f.readline()
        headers: dict[str, str] = {}
        while (line := f.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(f.readline().split(b";")[0], 16):
                body += f.read(size)
                f.readline()
            assert f.readline() == b"\r\n"  # no trailers
        else:
            body = f.read(int(headers.get("content-length", "0")))
        out.append((int(status.split()[1]), headers, body))
    return out


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "--max-time", "10", *args], capture_output=True, text=True, timeout=20, env=peer_env()
    )


def one_group(ports: list[int]) -> dict[str, list[tuple[str, int, bool]]]:
    return {"web#http": [("127.0.0.1", p, True) for p in ports]}


ANY: list[Any] = [("web#http", None, "/", False, "web#http")]


def test_get_keep_alive_and_pipelining_in_order(proxy_l7_nginx, proxy_l7_plane) -> None:
    plane = proxy_l7_plane(ANY, one_group(proxy_l7_nginx.ports[:1]))
    assert curl(f"http://127.0.0.1:{plane.port}/hello").stdout == "A /hello\n"
    with socket.create_connection(("127.0.0.1", plane.port), timeout=5) as s:
        for i in range(3):  # sequential requests on one client connection
            s.sendall(b"GET /seq%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            [(status, _, body)] = read_responses(s, 1)
            assert (status, body) == (200, b"A /seq%d\n" % i)
        s.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(20)))  # one write
        got = read_responses(s, 20)
        assert [b for _, _, b in got] == [b"A /p%d\n" % i for i in range(20)]
    # HTTP/1.0 without keep-alive: answered and closed
    out = raw(plane.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"A /old\n")


def test_forwarded_headers(proxy_l7_nginx, proxy_l7_plane) -> None:
    plane = proxy_l7_plane(ANY, one_group(proxy_l7_nginx.ports[:1]))
    out = curl("-H", "Host: shop.example:8080", f"http://127.0.0.1:{plane.port}/echo").stdout
    assert "xff=127.0.0.1 " in out and "proto=http " in out and "host=shop.example:8080 " in out
    assert 'fwd=for=127.0.0.1;host="shop.example:8080";proto=http' in out
    assert "conn= " in out or out.rstrip().endswith("conn=")  # the client's hop-by-hop Connection is not forwarded
    out = curl("-H", "X-Forwarded-For: 10.1.2.3", f"http://127.0.0.1:{plane.port}/echo").stdout
    assert "xff=10.1.2.3, 127.0.0.1 " in out


def test_large_host_and_forwarded_for_fit(proxy_l7_nginx, proxy_l7_plane) -> None:
    plane = proxy_l7_plane(ANY, one_group(proxy_l7_nginx.ports[:1]))
    host = b"h" * 7000
    xff = b"1" * 7000
    out = raw(
        plane.port, b"GET /echo HTTP/1.1\r\nHost: %s\r\nX-Forwarded-For: %s\r\nConnection: close\r\n\r\n" % (host, xff)
    )
    assert out.split(b" ", 2)[1] in (b"200", b"400")  # nginx may refuse the size; the proxy must not break


def test_routing_by_host_and_longest_prefix_with_strip(proxy_l7_nginx, proxy_l7_plane) -> None:
    a, b, c = proxy_l7_nginx.ports
    routes = [
        ("site#any", None, "/", False, "A"),
        ("site#api", None, "/api", True, "B"),
        ("shop#exact", "shop.test", "/", False, "C"),
        ("wild#w", "*.wild.test", "/", False, "B"),
    ]
    groups = {"A": [("127.0.0.1", a, True)], "B": [("127.0.0.1", b, True)], "C": [("127.0.0.1", c, True)]}
    plane = proxy_l7_plane(routes, groups)
    url = f"http://127.0.0.1:{plane.port}"
    assert curl(f"{url}/x").stdout == "A /x\n"
    assert curl(f"{url}/api/users?id=1").stdout == "B /users?id=1\n"
    assert curl(f"{url}/api").stdout == "B /\n"
    assert curl(f"{url}/apiary").stdout == "A /apiary\n"  # a prefix matches whole path segments
    assert curl("-H", "Host: shop.test", f"{url}/api/x").stdout == "C /api/x\n"  # exact host beats any host
    assert curl("-H", "Host: SHOP.test:80", f"{url}/y").stdout == "C /y\n"
    assert curl("-H", "Host: a.wild.test", f"{url}/z").stdout == "B /z\n"
    assert curl("-H", "Host: wild.test", f"{url}/z").stdout == "A /z\n"


def test_absolute_form_targets_route_on_their_authority(proxy_l7_nginx, proxy_l7_plane) -> None:
    """RFC 9112 §3.2.2: a server accepts ``GET http://host/path HTTP/1.1``; the target's authority overrides Host, and
    the backend gets the request in origin-form."""
    a, b, c = proxy_l7_nginx.ports
    routes = [("site#any", None, "/", False, "A"), ("shop#exact", "shop.test", "/", False, "C")]
    routes.append(("shop#api", "shop.test", "/api", True, "B"))
    groups = {"A": [("127.0.0.1", a, True)], "B": [("127.0.0.1", b, True)], "C": [("127.0.0.1", c, True)]}
    plane = proxy_l7_plane(routes, groups)
    with socket.create_connection(("127.0.0.1", plane.port), timeout=5) as s:
        s.sendall(
            b"GET http://shop.test/x?y=1 HTTP/1.1\r\nHost: other.test\r\n\r\n"
            b"GET HTTP://SHOP.test:8080/api/users HTTP/1.1\r\nHost: shop.test\r\n\r\n"
            b"GET http://shop.test HTTP/1.1\r\nHost: shop.test\r\n\r\n"
            b"GET http://shop.test?q HTTP/1.1\r\nHost: shop.test\r\n\r\n"
            b"GET https://elsewhere.test/z HTTP/1.1\r\nHost: shop.test\r\n\r\n"
            b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        )
        got = [(status, body) for status, _, body in read_responses(s, 6)]
    assert got == [
        (200, b"C /x?y=1\n"),
        (200, b"B /users\n"),
        (200, b"C /\n"),
        (200, b"C /?q\n"),
        (200, b"A /z\n"),
        (200, b"C /plain\n"),
    ]


def test_absolute_form_reaches_the_backend_in_origin_form_with_its_host() -> None:
    """What the backend reads: the origin-form request line and the authority as the one Host header."""
    from zlayer.proxy._l7 import Proxy

    heads: list[bytes] = []

    def record(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while True:
                head = b""
                while (line := f.readline()) not in (b"\r\n", b""):
                    head += line
                if not head:
                    return
                heads.append(head)
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    srv = RawBackend(record)
    proxy = Proxy(1)
    try:
        port = proxy.listen("127.0.0.1", 0)
        proxy.apply([("web#http", port, None, "/", False, 0)], [("web#http", [("127.0.0.1", srv.port, True)])])
        proxy.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET http://app.test:81/a/b?c=d HTTP/1.1\r\nHost: wrong.test\r\nX-Id: 1\r\n\r\n")
            assert read_responses(s, 1)[0][0] == 204
    finally:
        proxy.close()
        srv.close()
    lines = heads[0].decode().split("\r\n")
    assert lines[0] == "GET /a/b?c=d HTTP/1.1"
    hosts = [line for line in lines if line.lower().startswith("host:")]
    assert hosts == ["Host: app.test:81"]
    assert "X-Id: 1" in lines and "X-Forwarded-Host: app.test:81" in lines


BAD = [
    (b"GET /\r\nHost: x\r\n\r\n", 400),  # no version
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: x\n\n", 400),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 needs Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # absolute-form of a scheme that is not HTTP
    (b"GET http:///x HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # no authority
    (b"GET http://user@x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # userinfo (RFC 9110 §4.2.4)
    (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 still needs Host with an absolute-form target
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 400),  # authority-form: no tunnels
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(120)) + b"\r\n", 431),
]


@pytest.mark.parametrize(("request_bytes", "status"), BAD)
def test_bad_requests_are_answered_and_closed(proxy_l7_nginx, proxy_l7_plane, request_bytes, status) -> None:
    plane = proxy_l7_plane(ANY, one_group(proxy_l7_nginx.ports[:1]))
    out = raw(plane.port, request_bytes + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    assert b"Connection: close" in out
    assert b"A /next" not in out  # nothing after a bad request is served: the connection is closed


def test_no_healthy_backend_is_503_at_once_and_health_flips(proxy_l7_nginx, proxy_l7_plane) -> None:
    a = proxy_l7_nginx.ports[0]
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", a, False)]})
    t0 = time.monotonic()
    res = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{plane.port}/")
    assert res.stdout == "503" and time.monotonic() - t0 < 2
    assert plane.proxy.set_health("web#http", "127.0.0.1", a, True)
    assert curl(f"http://127.0.0.1:{plane.port}/").stdout == "A /\n"
    plane.apply(ANY, {"web#http": []})
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{plane.port}/").stdout == "503"
    plane.apply([], {})
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{plane.port}/").stdout == "404"


def test_round_robin_and_refused_connect_retried_on_another_backend(proxy_l7_nginx, proxy_l7_plane) -> None:
    a, b, _ = proxy_l7_nginx.ports
    dead = free_port()
    plane = proxy_l7_plane(
        ANY, {"web#http": [("127.0.0.1", a, True), ("127.0.0.1", dead, True), ("127.0.0.1", b, True)]}
    )
    bodies = [curl(f"http://127.0.0.1:{plane.port}/r").stdout for _ in range(12)]
    assert set(bodies) == {"A /r\n", "B /r\n"}  # every request answered, the dead port never surfaces
    assert bodies.count("A /r\n") >= 4 and bodies.count("B /r\n") >= 4


def test_request_and_response_bodies_length_and_chunked(proxy_l7_echo, proxy_l7_nginx, proxy_l7_plane) -> None:
    groups = {"E": [("127.0.0.1", proxy_l7_echo.port, True)], "N": [("127.0.0.1", proxy_l7_nginx.ports[0], True)]}
    plane = proxy_l7_plane([("e#h", None, "/", False, "E"), ("n#h", None, "/files", False, "N")], groups)
    url = f"http://127.0.0.1:{plane.port}"
    payload = bytes(range(256)) * 600  # 150 KiB: more than one buffer
    with socket.create_connection(("127.0.0.1", plane.port), timeout=10) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        s.sendall(b"POST /up2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), 7000):
            part = payload[i : i + 7000]
            s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        s.sendall(b"0\r\nX-T: 1\r\n\r\n")
        f = s.makefile("rb")
        for _ in range(2):
            assert f.readline().startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := f.readline()) != b"\r\n":
                k, _, v = line.decode().partition(":")
                headers[k.lower()] = v.strip()
            assert headers["transfer-encoding"] == "chunked"
            body = b""
            while (size := int(f.readline().split(b";")[0], 16)) != 0:
                body += f.read(size)
                assert f.read(2) == b"\r\n"
            assert f.readline() == b"X-Trailer: yes\r\n" and f.readline() == b"\r\n"
            assert body == payload
    assert [r[2] for r in proxy_l7_echo.requests] == [payload, payload]
    assert proxy_l7_echo.requests[1][1]["transfer-encoding"] == "chunked"
    big = (proxy_l7_nginx.root / "www" / "files" / "big").read_bytes()
    res = subprocess.run(
        ["curl", "-s", "--max-time", "10", f"{url}/files/big"], capture_output=True, timeout=20, env=peer_env()
    )
    assert hashlib.sha256(res.stdout).digest() == hashlib.sha256(big).digest()


def test_header_timeout_bounds_slow_clients_and_idle_timeout(proxy_l7_nginx, proxy_l7_plane) -> None:
    plane = proxy_l7_plane(ANY, one_group(proxy_l7_nginx.ports[:1]), header_timeout=1.0, idle_timeout=1.5)
    with socket.create_connection(("127.0.0.1", plane.port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\n")
        out = b""
        for _ in range(8):  # a byte every 0.3 s does not extend the header deadline
            try:
                s.sendall(b"X")
            except OSError:
                break
            time.sleep(0.3)
        s.settimeout(5)
        while chunk := s.recv(4096):
            out += chunk
        assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 4
    with socket.create_connection(("127.0.0.1", plane.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(s, 1)[0][0] == 200
        t0 = time.monotonic()
        s.settimeout(6)
        assert s.recv(10) == b""  # closed by the idle timeout
        assert 1.0 < time.monotonic() - t0 < 4


def test_route_swap_under_load_drops_nothing(proxy_l7_nginx, proxy_l7_plane) -> None:
    if not shutil.which("wrk"):
        pytest.fail("wrk is not installed")
    a, b, c = proxy_l7_nginx.ports
    plane = proxy_l7_plane(ANY, one_group([a]), workers=2)
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        sets = [[a], [b, c], [a, c], [c]]
        while not stop.is_set():
            plane.apply(ANY, one_group(sets[swaps % len(sets)]))
            swaps += 1
            time.sleep(0.01)

    t = threading.Thread(target=swapper)
    t.start()
    try:
        res = subprocess.run(
            ["wrk", "-t1", "-c20", "-d3s", f"http://127.0.0.1:{plane.port}/"],
            capture_output=True,
            text=True,
            timeout=30,
            env=peer_env(),
        )
    finally:
        stop.set()
        t.join()
    assert res.returncode == 0, res.stderr
    assert "Socket errors" not in res.stdout and "Non-2xx" not in res.stdout, res.stdout
    requests = int(res.stdout.split(" requests in ")[0].split()[-1])
    assert requests > 1000 and swaps > 50


def test_stats_count_requests_status_classes_bytes_and_latency(proxy_l7_nginx, proxy_l7_plane) -> None:
    from zlayer.proxy.l7 import LATENCY_BUCKETS

    plane = proxy_l7_plane([("web#http", None, "/", False, "G")], {"G": [("127.0.0.1", proxy_l7_nginx.ports[0], True)]})
    plane.apply([("web#http", None, "/", False, "G")], {"G": [("127.0.0.1", proxy_l7_nginx.ports[0], True)]})
    for path in ("/a", "/b", "/down"):
        curl(f"http://127.0.0.1:{plane.port}{path}")
    s = plane.proxy.stats()["web#http"]
    assert s["requests"] == 3 and s["status"] == [0, 2, 0, 0, 1]
    assert len(s["buckets"]) == len(LATENCY_BUCKETS) + 1 and sum(s["buckets"]) == 3
    assert s["bytes_in"] > 100 and s["bytes_out"] > 100 and s["active"] == 0 and s["latency_sum"] > 0


def test_acme_challenge_is_answered_before_routing(proxy_l7_plane) -> None:
    plane = proxy_l7_plane([], {})
    plane.proxy.set_challenge("tok123", "tok123.thumb")
    assert curl(f"http://127.0.0.1:{plane.port}/.well-known/acme-challenge/tok123").stdout == "tok123.thumb"
    plane.proxy.remove_challenge("tok123")
    code = curl(
        "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{plane.port}/.well-known/acme-challenge/tok123"
    )
    assert code.stdout == "404"


def test_backend_dying_mid_response_closes_the_client(proxy_l7_plane) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
        time.sleep(0.2)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", srv.getsockname()[1], True)]})
    t0 = time.monotonic()
    out = raw(plane.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"partial") and time.monotonic() - t0 < 3
    srv.close()


def test_close_delimited_responses_end_when_the_backend_closes(proxy_l7_plane) -> None:
    """An HTTP/1.0 backend writes head and body and closes at once (data and FIN reach the proxy together, as
    Python's http.server does): every client gets its whole body and then its end (the close it asked for, or the
    last chunk of a body re-framed for a keep-alive client), none waits for a timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nbody-until-close")

    threading.Thread(target=serve, daemon=True).start()
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", srv.getsockname()[1], True)]})
    hung = 0
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", plane.port), timeout=2) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            out = b""
            try:
                while chunk := c.recv(65536):
                    out += chunk
            except TimeoutError:
                hung += 1
            assert out.startswith(b"HTTP/1.0 200") and out.endswith(b"body-until-close")
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", plane.port), timeout=2) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                [(status, headers, body)] = read_responses(c, 1)
            except TimeoutError:
                hung += 1
                continue
            assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"body-until-close")
    srv.close()
    assert hung == 0, f"{hung} of 60 responses did not end after the body"


@pytest.mark.parametrize("backend", ["proxy_l7_nginx_close", "proxy_l7_http10", "proxy_l7_closing"])
def test_pipelined_requests_are_each_answered_when_the_backend_closes_after_every_response(
    proxy_l7_plane, request, backend
) -> None:
    """nginx with keepalive_timeout 0 (Connection: close after a length-delimited body), Python's http.server
    (HTTP/1.0, body ended by the close) and a raw HTTP/1.1 backend (Connection: close, no length): three requests
    pipelined on one client connection get their three responses in order, over a new backend connection each."""
    found = request.getfixturevalue(backend)
    port = found.ports[0] if backend == "proxy_l7_nginx_close" else found if isinstance(found, int) else found.port
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", port, True)]})
    with socket.create_connection(("127.0.0.1", plane.port), timeout=5) as s:
        for _ in range(2):  # and the connection serves on afterwards
            s.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
            got = read_responses(s, 3)
            assert [status for status, _, _ in got] == [200, 200, 200]
            assert [body.split()[-1] for _, _, body in got] == [b"/p0", b"/p1", b"/p2"]
            assert all(h.get("connection") != "close" for _, h, _ in got)
    # an HTTP/1.0 client cannot take chunks: the close-delimited body ends with the close, as it came
    out = raw(plane.port, b"GET /old HTTP/1.0\r\n\r\nGET /unanswered HTTP/1.0\r\n\r\n")
    assert out.count(b"HTTP/1.") == 1 and out.endswith(b"/old\n" if backend == "proxy_l7_nginx_close" else b"/old")


def test_pooled_connection_closed_by_the_backend_is_retried_fresh(proxy_l7_plane) -> None:
    """The backend drops each keep-alive connection when its second request arrives (an idle-timeout race)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            conn.recv(65536)  # the next request: closed unanswered

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", srv.getsockname()[1], True)]})
    with socket.create_connection(("127.0.0.1", plane.port), timeout=5) as s:
        for _ in range(4):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            [(status, _, body)] = read_responses(s, 1)
            assert (status, body) == (200, b"ok\n")
    assert len(accepted) >= 4
    srv.close()


def test_backend_heads_with_bare_lf_reach_the_client_with_crlf(proxy_l7_plane) -> None:
    """Some backends end header lines with a bare LF; nginx and curl accept that, and so does the proxy, which
    re-ends every line with CRLF toward the client. A reason phrase with a control byte is a bad response (502)."""

    def handle(conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rb")
            while line := f.readline():
                if line != b"\r\n":
                    continue
                conn.sendall(b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nX-Old: yes\r\nContent-Length: 5\n\nhello")

    srv = RawBackend(handle)
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", srv.port, True)]})
    with socket.create_connection(("127.0.0.1", plane.port), timeout=5) as s:
        got = b""
        for _ in range(2):  # the same client connection, keep-alive on both sides
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            while not got.endswith(b"hello"):
                chunk = s.recv(65536)
                assert chunk, f"the proxy closed after {got!r}"
                got += chunk
            head = got[: got.index(b"\r\n\r\nhello")]
            assert head.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), got
            assert b"x-old: yes" in head.lower() and b"\n" not in head.replace(b"\r\n", b""), got
            got = b""
    srv.close()

    def answer_bad(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n")

    bad = RawBackend(answer_bad)
    plane2 = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", bad.port, True)]})
    assert raw(plane2.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 502")
    bad.close()


def test_connect_timeout_moves_on_to_another_backend_then_504(
    proxy_l7_nginx, proxy_l7_blackhole, proxy_l7_plane
) -> None:
    """A backend whose connect hangs is given up after the connect timeout: the request goes to the next backend
    (and the hanging one is ejected), or, with none left, the client gets 504 long before the response timeout."""
    hole = ("127.0.0.1", proxy_l7_blackhole.port, True)
    plane = proxy_l7_plane(
        ANY, {"web#http": [hole, ("127.0.0.1", proxy_l7_nginx.ports[0], True)]}, connect_timeout=0.5,
        response_timeout=30.0,
    )  # fmt: skip
    for _ in range(4):  # round robin: one of the first two requests meets the black hole
        with socket.create_connection(("127.0.0.1", plane.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_responses(s, 1)[0][0] == 200

    alone = proxy_l7_plane(ANY, {"web#http": [hole]}, connect_timeout=0.5, response_timeout=30.0)
    t0 = time.monotonic()
    out = raw(alone.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=20)
    assert out.startswith(b"HTTP/1.1 504") and b"connect timed out" in out, out
    assert time.monotonic() - t0 < 10, "the connect timeout did not apply"


def test_response_timeout_is_504_and_close(proxy_l7_silent, proxy_l7_plane) -> None:
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", proxy_l7_silent.port, True)]}, response_timeout=1.0)
    t0 = time.monotonic()
    out = raw(plane.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=20)
    assert out.startswith(b"HTTP/1.1 504"), out
    assert 0.9 < time.monotonic() - t0 < 10
    assert plane.proxy.stats()["web#http"]["status"][4] == 1


def test_backend_dying_mid_response_is_ejected(proxy_l7_nginx, proxy_l7_plane) -> None:
    """Passive ejection: once a backend has died in the middle of a response, the next requests go to the others
    (round robin alone would send every second one back to it)."""
    hits: list[int] = []

    def die_mid_response(conn: socket.socket) -> None:
        with conn:
            if conn.recv(65536):
                hits.append(1)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")

    srv = RawBackend(die_mid_response)
    dying = ("127.0.0.1", srv.port, True)
    plane = proxy_l7_plane(ANY, {"web#http": [dying, ("127.0.0.1", proxy_l7_nginx.ports[0], True)]})
    outcomes = []
    for _ in range(8):
        out = raw(plane.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5)
        outcomes.append("cut" if out.endswith(b"partial") else out.split(b" ", 2)[1].decode())
    srv.close()
    assert outcomes.count("cut") == 1 and len(hits) == 1, outcomes
    assert outcomes.count("200") == 7, outcomes


def test_expect_100_continue_is_relayed(proxy_l7_continue, proxy_l7_plane, tmp_path) -> None:
    """curl holds a large body until it sees ``100 Continue`` (here for up to 20 s): the backend's 100 reaches it
    through the proxy, then the body goes through."""
    plane = proxy_l7_plane(ANY, {"web#http": [("127.0.0.1", proxy_l7_continue.port, True)]})
    body = tmp_path / "body"
    body.write_bytes(b"x" * 200_000)
    res = curl(
        "-v", "--expect100-timeout", "20", "-H", "Expect: 100-continue", "--data-binary", f"@{body}",
        f"http://127.0.0.1:{plane.port}/up",
    )  # fmt: skip
    assert "< HTTP/1.1 100 Continue" in res.stderr, res.stderr
    assert res.stdout == "expected=1 " + "x" * 200_000
