"""`zlayer serve --acme-email/--acme-directory`: a public https host gets its certificate from an ACME CA (Debian's
pebble, beside the daemon in its network namespace) by HTTP-01, answered by the daemon's own proxy, and the
certificate is renewed once due. https endpoints used to get self-signed certificates only."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.fixtures.daemon_live import HTTPD, LiveNode, live_node
from tests.fixtures.daemon_node import unique
from tests.fixtures.proxy_l4 import Pebble, run_pebble, wait_tcp

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]

HOST = "app.zlayer.test"
DAY = 86400


@pytest.fixture
def acme_node(tmp_path: Path) -> Iterator[tuple[LiveNode, Pebble]]:
    """A daemon with ACME on, and pebble in its namespace issuing 20-day certificates (due for renewal at once)."""
    with live_node(tmp_path / "node") as node:
        pebble_dir = tmp_path / "pebble"
        pebble_dir.mkdir()
        with run_pebble(pebble_dir, ["ip", "netns", "exec", node.ns], wait=lambda port: node.in_ns(
                lambda: wait_tcp(port)), validity=20 * DAY) as pebble:  # fmt: skip
            assert node.signal_and_wait(signal.SIGTERM) == 0
            node.serve_args = ["--bind", "none", "--acme-email", "ops@zlayer.test", "--acme-directory",
                               pebble.directory]  # fmt: skip
            node.env["SSL_CERT_FILE"] = str(pebble.ca_file)  # pebble's directory is served under a private CA
            node.start()
            yield node, pebble


def _spec(name: str, http_port: int, https_port: int) -> str:
    return (
        f"version: v1\ndeployment: {name}\nservices:\n  web:\n"
        f"    image: {{name: 'zlayer-svc/httpd:v1', pull_policy: never}}\n"
        f"    command: {{entrypoint: ['/bin/sh', '-c'], args: [{HTTPD!r}]}}\n"
        "    stop_grace_period: 1s\n    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
        "    endpoints:\n"
        f"      - {{name: http, protocol: http, port: {http_port}, target_port: 8080, expose: public}}\n"
        f"      - {{name: tls, protocol: https, port: {https_port}, target_port: 8080, host: {HOST}, expose: public}}\n"
    )


def _pem(node: LiveNode, pebble: Pebble, path: str) -> x509.Certificate:
    ctx = ssl.create_default_context(cafile=str(pebble.ca_file))

    def go() -> bytes:
        with urllib.request.urlopen(f"{pebble.management}{path}", context=ctx, timeout=10) as resp:
            return bytes(resp.read())

    return x509.load_pem_x509_certificate(node.in_ns(go))


def _served(node: LiveNode, port: int) -> x509.Certificate:
    """The certificate the proxy presents for HOST (not verified: it may still be the self-signed one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    def go() -> bytes:
        with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return der

    return x509.load_der_x509_certificate(node.in_ns(go))


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.tbs_certificate_bytes).hexdigest()


def _served_by(node: LiveNode, port: int, issuer: x509.Name, other_than: str = "", timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    seen: x509.Certificate | None = None
    while time.monotonic() < deadline:
        try:
            seen = _served(node, port)
        except OSError:  # (after a restart: until the proxy listens again)
            seen = None
        if seen is not None and seen.issuer == issuer and _fingerprint(seen) != other_than:
            return _fingerprint(seen)
        time.sleep(0.2)
    raise AssertionError(f"still served {seen and seen.issuer.rfc4514_string()}\n{node.log_tail()}")


def test_a_public_https_host_gets_an_acme_certificate_through_the_daemon_and_it_is_renewed(
    acme_node: tuple[LiveNode, Pebble],
) -> None:
    node, pebble = acme_node
    name, https_port = unique("acme"), node.free_port()
    node.deploy(_spec(name, pebble.http_port, https_port))  # pebble validates HTTP-01 on its http_port
    node.expect(name)
    intermediate = _pem(node, pebble, "/intermediates/0").subject
    first = _served_by(node, https_port, intermediate)

    # a client that trusts the CA (and no other) verifies the chain and the name, and reaches the service
    root = _pem(node, pebble, "/roots/0").public_bytes(serialization.Encoding.PEM).decode()
    trusting = ssl.create_default_context(cadata=root)

    def fetch() -> str:
        with (
            socket.create_connection(("127.0.0.1", https_port), 5) as raw,
            trusting.wrap_socket(raw, server_hostname=HOST) as s,
        ):
            s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            return b"".join(iter(lambda: s.recv(65536), b"")).decode()

    reply = node.in_ns(fetch)
    assert reply.startswith("HTTP/1.1 200") and reply.endswith("v1\n"), reply
    meta = json.loads((node.data / "proxy" / "certs" / f"{HOST}.meta.json").read_text())
    assert meta["source"] == "acme"

    # pebble's certificates last 20 days, inside the 30-day renewal window: the daemon's renewal round (at start,
    # then every 12 h) re-issues it, and the proxy serves the new one
    assert node.signal_and_wait(signal.SIGTERM) == 0
    node.start()
    node.expect(name)
    renewed = _served_by(node, https_port, intermediate, other_than=first)
    assert renewed != first
