"""`zlayer serve --api-tls-acme DOMAIN` (issue 16 item 7): the TCP API's certificate comes from an ACME CA (Debian's
pebble, beside the daemon in its network namespace, validating HTTP-01 on port 80 as a real CA does). While the CA
cannot be reached the daemon runs on, says why, and keeps the TCP API closed rather than serving it in plain; once
the CA answers, a client trusting only the CA's root gets `zlayer status` answers over TLS by the domain's name."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.fixtures.daemon_live import LiveNode, live_node
from tests.fixtures.proxy_l4 import Pebble, free_port, run_pebble, wait_tcp
from zlayer.proxy.certs import self_signed

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]

DOMAIN = "api.zlayer.test"


@pytest.fixture
def hosts_node(tmp_path: Path) -> Iterator[LiveNode]:
    """A daemon namespace where DOMAIN names 127.0.0.1 for commands run with `ip netns exec` (its /etc/hosts)."""
    with live_node(tmp_path / "node") as node:
        etc = Path("/etc/netns") / node.ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {DOMAIN}\n")
        try:
            yield node
        finally:
            shutil.rmtree(etc, ignore_errors=True)


def _refused(node: LiveNode, port: int) -> bool:
    def go() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 2).close()
        except ConnectionRefusedError:
            return True
        return False

    return bool(node.in_ns(go))


def _root(node: LiveNode, pebble: Pebble) -> bytes:
    ctx = ssl.create_default_context(cafile=str(pebble.ca_file))

    def go() -> bytes:
        with urllib.request.urlopen(f"{pebble.management}/roots/0", context=ctx, timeout=10) as resp:
            return bytes(resp.read())

    return x509.load_pem_x509_certificate(node.in_ns(go)).public_bytes(serialization.Encoding.PEM)


def _status(node: LiveNode, port: int, token: str, trust: Path) -> subprocess.CompletedProcess[str]:
    """`zlayer status` from a remote client: the TCP API by the domain's name, trusting only ``trust``."""
    env = {**node.env, "SSL_CERT_FILE": str(trust)}
    return subprocess.run(["ip", "netns", "exec", node.ns, sys.executable, "-m", "zlayer", "--host",
                           f"https://{DOMAIN}:{port}", "--token", token, "status"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def _wait(what: str, check: object, node: LiveNode, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}\n{node.log_tail()}"
        time.sleep(0.3)


def test_the_api_gets_its_certificate_by_acme_and_is_never_served_in_plain_meanwhile(
    hosts_node: LiveNode, tmp_path: Path
) -> None:
    node = hosts_node
    assert node.signal_and_wait(15) == 0
    api_port, acme_port = node.free_port(), free_port()
    directory = f"https://127.0.0.1:{acme_port}/dir"
    pebble_dir = tmp_path / "pebble"
    pebble_dir.mkdir()
    cert, key = self_signed(["localhost", "127.0.0.1"])  # pebble's listener certificate, trusted by the daemon
    (pebble_dir / "pebble.crt").write_bytes(cert)
    (pebble_dir / "pebble.key").write_bytes(key)
    node.serve_args = ["--bind", f"0.0.0.0:{api_port}", "--api-tls-acme", DOMAIN, "--acme-directory", directory,
                       "--acme-email", "ops@zlayer.test"]  # fmt: skip
    node.env["SSL_CERT_FILE"] = str(pebble_dir / "pebble.crt")  # pebble's directory is served under its own cert
    node.start()

    # the CA is down: the daemon runs, says so in one line, the unix socket answers, the TCP port refuses
    _wait("no line about the missing certificate", lambda: "no ACME certificate for api.zlayer.test" in
          node.log_tail(), node)  # fmt: skip
    line = next(ln for ln in node.log_tail().splitlines() if "no ACME certificate for api.zlayer.test" in ln)
    assert directory in line and "never served in plain" in line, line
    assert "Traceback" not in node.log_tail()
    assert node.proc is not None and node.proc.poll() is None
    local = node.zl("status")
    assert local.returncode == 0, local.stderr
    assert _refused(node, api_port)

    # the CA comes up: the next try gets the certificate, and the API serves TLS with it
    with run_pebble(pebble_dir, ["ip", "netns", "exec", node.ns], wait=lambda port: node.in_ns(lambda: wait_tcp(port)),
                    http_port=80, acme_port=acme_port) as pebble:  # fmt: skip
        _wait("the TCP API never listened", lambda: not _refused(node, api_port), node)
        trust = tmp_path / "pebble-root.pem"
        trust.write_bytes(_root(node, pebble))
        token = (node.data / "admin_bearer.token").read_text().strip()
        r = _status(node, api_port, token, trust)
        assert r.returncode == 0, r.stdout + r.stderr + node.log_tail()
        assert "Traceback" not in r.stderr

        # the certificate is pebble's, for the domain; a client trusting other roots is refused
        served = json.loads((node.data / "api-tls" / f"{DOMAIN}.meta.json").read_text())
        assert served["source"] == "acme" and served["domain"] == DOMAIN
        bad = _status(node, api_port, token, pebble.ca_file)
        assert bad.returncode != 0 and "certificate" in (bad.stdout + bad.stderr).lower(), bad.stdout + bad.stderr

        # a plain-HTTP client gets no API answer
        def plain() -> bytes:
            with socket.create_connection(("127.0.0.1", api_port), 5) as s:
                s.sendall(b"GET /api/v1/deployments HTTP/1.1\r\nHost: x\r\n\r\n")
                s.settimeout(5)
                try:
                    return s.recv(65536)
                except (TimeoutError, ConnectionError):
                    return b""

        assert b"200 OK" not in node.in_ns(plain)
