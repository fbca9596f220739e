"""TLS termination (checked with `openssl s_client`) and PROXY protocol v1/v2 (checked by HAProxy `accept-proxy`)."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.proxy_l4 import peer_env
from zlayer.errors import ProxyError

pytestmark = pytest.mark.peer


def test_tls_is_terminated_and_plain_bytes_reach_the_backend(proxy_l4_tcp_echo, proxy_l4_listener, proxy_l4_cert):
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)])
    lst.set_tls(*proxy_l4_cert)
    proc = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{lst.port}",
            "-servername",
            "l4.zlayer.test",
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            str(proxy_l4_cert[0]),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=peer_env(),
    )
    try:
        assert proc.stdin and proc.stdout
        proc.stdin.write(b"hello through tls\n")
        proc.stdin.flush()
        line = proc.stdout.readline()  # the echo, decrypted by s_client
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert line == b"hello through tls\n", err.decode()
    assert b"CN = l4.zlayer.test" in err  # the certificate s_client verified is ours
    assert lst.stats()["tls_errors"] == 0


def test_tls_bulk_data_round_trips(proxy_l4_tcp_echo, proxy_l4_listener, proxy_l4_cert) -> None:
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)])
    lst.set_tls(*proxy_l4_cert)
    ctx = ssl.create_default_context(cafile=str(proxy_l4_cert[0]))
    payload = bytes(range(256)) * 8000
    with (
        socket.create_connection(("127.0.0.1", lst.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="l4.zlayer.test") as tls,
    ):
        got = bytearray()
        for i in range(0, len(payload), 65536):
            tls.sendall(payload[i : i + 65536])
            while len(got) < min(len(payload), i + 65536):
                got += tls.recv(1 << 16)
    assert bytes(got) == payload
    assert lst.stats()["bytes_spliced"] == 0


def test_garbage_instead_of_a_tls_handshake_is_closed_and_counted(
    proxy_l4_tcp_echo, proxy_l4_listener, proxy_l4_cert
) -> None:
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)])
    lst.set_tls(*proxy_l4_cert)
    with socket.create_connection(("127.0.0.1", lst.port), timeout=5) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            while c.recv(1024):
                pass
        except ConnectionResetError:
            pass
    import time

    deadline = time.monotonic() + 5
    while lst.stats()["tls_errors"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lst.stats()["tls_errors"] == 1


def test_certificate_swap_applies_to_new_connections(proxy_l4_tcp_echo, proxy_l4_listener, tmp_path: Path) -> None:
    from zlayer.proxy.certs import self_signed

    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)])
    names = {}
    for name in ("first.zlayer.test", "second.zlayer.test"):
        cert, key = self_signed([name])
        (tmp_path / f"{name}.crt").write_bytes(cert)
        (tmp_path / f"{name}.key").write_bytes(key)
        names[name] = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    for name, (crt, key) in names.items():
        lst.set_tls(crt, key)
        ctx = ssl.create_default_context(cafile=str(crt))
        with (
            socket.create_connection(("127.0.0.1", lst.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            tls.sendall(b"ping")
            assert tls.recv(10) == b"ping"


def test_mismatched_key_is_refused_with_the_file_named(proxy_l4_listener, proxy_l4_cert, tmp_path: Path) -> None:
    from zlayer.proxy.certs import self_signed

    _, other_key = self_signed(["other.test"])
    (tmp_path / "other.key").write_bytes(other_key)
    lst = proxy_l4_listener("tcp", [])
    with pytest.raises(ProxyError, match=r"other\.key: cannot load private key or it does not match"):
        lst.set_tls(proxy_l4_cert[0], tmp_path / "other.key")


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_protocol_header_tells_haproxy_the_real_client(proxy_l4_listener, proxy_l4_haproxy_pp, version) -> None:
    lst = proxy_l4_listener("tcp", [("127.0.0.1", proxy_l4_haproxy_pp)], proxy_protocol=version)
    with socket.create_connection(("127.0.0.1", lst.port), timeout=10) as c:
        me = c.getsockname()
        c.sendall(b"GET / HTTP/1.1\r\nHost: pp\r\nConnection: close\r\n\r\n")
        reply = bytearray()
        while chunk := c.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.split(b"\r\n\r\n", 1)[1] == f"{me[0]}:{me[1]}".encode()


def test_proxy_protocol_header_bytes() -> None:
    from zlayer.proxy._l4 import proxy_header

    assert (
        proxy_header(1, ("192.0.2.1", 4000), ("198.51.100.7", 443)) == b"PROXY TCP4 192.0.2.1 198.51.100.7 4000 443\r\n"
    )
    v2 = proxy_header(2, ("192.0.2.1", 4000), ("198.51.100.7", 443))
    assert v2[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert v2[12:16] == b"\x21\x11\x00\x0c"
    assert v2[16:] == bytes([192, 0, 2, 1, 198, 51, 100, 7]) + (4000).to_bytes(2, "big") + (443).to_bytes(2, "big")
    v6 = proxy_header(2, ("2001:db8::1", 1), ("2001:db8::2", 2))
    assert v6[13:16] == b"\x21\x00\x24" and len(v6) == 16 + 36
    assert proxy_header(1, ("2001:db8::1", 1), ("2001:db8::2", 2)) == b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"


def test_ipv6_client_gets_a_tcp6_proxy_header(proxy_l4_tcp_echo) -> None:
    from zlayer.proxy._l4 import Listener

    echo = proxy_l4_tcp_echo()
    lst = Listener("tcp", "::1", 0, proxy_protocol=1)
    lst.set_backends([("127.0.0.1", echo.port)])
    lst.start()
    try:
        with socket.create_connection(("::1", lst.port), timeout=5) as c:
            me = c.getsockname()
            c.sendall(b"v6")
            c.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := c.recv(1024):
                got += chunk
        assert got == f"PROXY TCP6 ::1 ::1 {me[1]} {lst.port}\r\nv6".encode()
    finally:
        lst.stop()


def test_client_that_never_finishes_the_tls_handshake_is_closed(proxy_l4_tcp_echo, proxy_l4_listener, proxy_l4_cert):
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)], handshake_timeout=0.5)
    lst.set_tls(*proxy_l4_cert)
    with socket.create_connection(("127.0.0.1", lst.port), timeout=5) as c:
        c.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then silence
        assert c.recv(100) == b""  # closed by the proxy, well before the client's 5 s timeout
    assert lst.stats()["tls_errors"] == 1
