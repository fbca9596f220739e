"""TLS termination with SNI in the C L7 proxy: certificates made by zlayer.proxy.certs, curl and Python's ssl as
clients, nginx behind."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from tests.fixtures.proxy_l4 import peer_env
from zlayer.errors import ProxyError
from zlayer.proxy.certs import self_signed

pytestmark = pytest.mark.peer


def certs(tmp_path: Path, *names: str) -> list[tuple[str, str, str]]:
    rows = []
    for name in names:
        cert, key = self_signed([name])
        safe = name.replace("*", "star")
        (tmp_path / f"{safe}.crt").write_bytes(cert)
        (tmp_path / f"{safe}.key").write_bytes(key)
        rows.append((name, str(tmp_path / f"{safe}.crt"), str(tmp_path / f"{safe}.key")))
    return rows


def served_name(port: int, sni: str | None) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return str(san.get_values_for_type(x509.DNSName)[0])


def test_tls_termination_picks_the_certificate_by_sni(proxy_l7_nginx, proxy_l7_plane, tmp_path: Path) -> None:
    plane = proxy_l7_plane([], {})
    rows = certs(tmp_path, "a.test", "*.wild.test")
    plane.proxy.set_certificates(rows)
    port = plane.proxy.listen("127.0.0.1", 0, True)
    groups = {"G": [("127.0.0.1", proxy_l7_nginx.ports[0], True)]}
    plane.proxy.apply([("t#https", port, None, "/", False, 0)], [("G", groups["G"])])
    assert served_name(port, "a.test") == "a.test"
    assert served_name(port, "x.wild.test") == "*.wild.test"
    assert served_name(port, None) == "a.test"  # no SNI: the first certificate
    res = subprocess.run(
        [
            "curl", "-s", "--max-time", "10", "--cacert", rows[0][1],
            "--resolve", f"a.test:{port}:127.0.0.1",
            f"https://a.test:{port}/echo", f"https://a.test:{port}/files/big",
        ],
        capture_output=True,
        timeout=30,
        env=peer_env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    big = (proxy_l7_nginx.root / "www" / "files" / "big").read_bytes()
    first, rest = res.stdout.split(b"\n", 1)
    assert b"proto=https " in first and b'fwd=for=127.0.0.1;host="a.test:%d";proto=https' % port in first
    assert hashlib.sha256(rest).digest() == hashlib.sha256(big).digest()
    # garbage instead of a ClientHello: the connection is dropped, the proxy keeps serving
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass  # dropped with a reset: equally closed
    assert served_name(port, "a.test") == "a.test"


def test_bad_certificate_files_are_refused_with_the_path(proxy_l7_plane, tmp_path: Path) -> None:
    plane = proxy_l7_plane([], {})
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ProxyError, match=r"bad\.crt"):
        plane.proxy.set_certificates([("x.test", str(tmp_path / "bad.crt"), str(tmp_path / "bad.key"))])


def test_certificate_swap_keeps_open_connections_and_serves_the_new_one(
    proxy_l7_nginx, proxy_l7_plane, tmp_path: Path
) -> None:
    """A renewed certificate goes in while a client holds a keep-alive TLS connection: that connection goes on
    serving requests, and new handshakes present the new certificate."""
    plane = proxy_l7_plane([], {})
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    plane.proxy.set_certificates(certs(old_dir, "a.test"))
    port = plane.proxy.listen("127.0.0.1", 0, True)
    plane.proxy.apply([("t#https", port, None, "/", False, 0)], [("G", [("127.0.0.1", proxy_l7_nginx.ports[0], True)])])

    def fingerprint(s: ssl.SSLSocket) -> bytes:
        der = s.getpeercert(binary_form=True)
        assert der
        return hashlib.sha256(der).digest()

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="a.test") as held,
    ):
        first = fingerprint(held)
        f = held.makefile("rb")

        def get() -> int:
            held.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            status = int(f.readline().split()[1])
            length = 0
            while (line := f.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            return status

        assert get() == 200
        plane.proxy.set_certificates(certs(new_dir, "a.test"))
        for _ in range(3):
            assert get() == 200  # the open connection was not cut
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw2,
            ctx.wrap_socket(raw2, server_hostname="a.test") as fresh,
        ):
            assert fingerprint(fresh) != first
