"""A node's TCP API serves TLS with its cluster certificate from the moment it is in a cluster, so a join token
crosses the network only inside TLS: on three netns hosts (tests/fixtures/netns_cluster.py), what an AF_PACKET
socket on the joiner's link sees of a join holds no byte of the token, the API presents a certificate the cluster
CA signed (for the node's address and 127.0.0.1) and answers nothing in plain HTTP, a user's CLI reaches it over
https with the cluster CA, and a host that is not in the cluster keeps its plain API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.fixtures.netns_cluster import Host, NetnsCluster, capture, netns_hosts, wait_for
from zlayer.cluster import pki

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    with netns_hosts(tmp_path_factory, size=3) as c:
        yield c


def _curl(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", host.ns, "curl", "-sS", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def _tls(host: Host) -> Path:
    return Path(host.data) / "cluster" / "tls"


def _presented(client: Host, server: Host) -> x509.Certificate:
    """The leaf certificate ``server``'s API presents, as ``client`` reads it off the wire."""
    out = subprocess.run(["ip", "netns", "exec", client.ns, "openssl", "s_client", "-connect", server.api,
                          "-showcerts"], input="", capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    pem = out[out.index("-----BEGIN CERTIFICATE-----") : out.index("-----END CERTIFICATE-----") + 25]
    return x509.load_pem_x509_certificate(pem.encode())


def test_a_join_token_never_crosses_the_wire_in_plain(cluster: NetnsCluster) -> None:
    h1, h2, h3 = cluster.hosts
    # a host outside any cluster keeps its API as it was: plain HTTP
    assert _curl(h2, f"http://{h1.api}/health/live").returncode == 0
    h1.ok("node", "init", "--advertise-addr", h1.addr)
    token = h1.ok("node", "generate-join-token", "--ttl", "1h", "-q").strip()
    with capture(h2) as wire:
        h2.ok("node", "join", h1.api, "--token", token, "--advertise-addr", h2.addr)
    to_api = [f for f in wire.frames() if f[:3] == (h2.addr, h1.addr, "tcp") and f[4] == 3669]
    assert to_api, "the capture saw no packet of the join to the leader's API"
    # neither the token nor any 24-byte piece of it (the base64 or the signature's text) is anywhere on the wire
    assert token.encode() not in wire.raw
    assert not [i for i in range(0, len(token) - 24, 8) if token[i : i + 24].encode() in wire.raw]
    wait_for(lambda: [n["status"] for n in h1.json("node", "ls")] == ["ready", "ready"], 30, "two ready nodes")
    assert _curl(h2, f"http://{h3.api}/health/live").returncode == 0  # host 3, in no cluster, is as it was


def test_each_nodes_api_presents_its_cluster_certificate_and_refuses_plain_http(cluster: NetnsCluster) -> None:
    h1, h2, h3 = cluster.hosts
    ca = x509.load_pem_x509_certificate((_tls(h1) / "ca.crt").read_bytes())
    for h in (h1, h2):  # the node that made the cluster, and one that joined it (both switched while running)
        cert = _presented(h3, h)
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {h.addr, "127.0.0.1"}
        plain = _curl(h3, f"http://{h.api}/health/live")
        assert plain.returncode != 0 and "OK" not in plain.stdout and "ok" not in plain.stdout, plain
        verified = _curl(h3, "--cacert", str(_tls(h1) / "ca.crt"), f"https://{h.api}/health/live")
        assert verified.returncode == 0, verified.stderr


def test_a_user_reaches_a_node_over_https_with_the_cluster_ca_and_a_restart_keeps_tls(
    cluster: NetnsCluster, tmp_path: Path
) -> None:
    h1, h2, h3 = cluster.hosts
    bearer = (Path(h2.data) / "admin_bearer.token").read_text().strip()
    ca = tmp_path / "ca.crt"
    ca.write_bytes((_tls(h1) / "ca.crt").read_bytes())
    env = {**h3.env, "ZLAYER_API_TOKEN": bearer, "ZLAYER_API_CA": str(ca)}
    argv = ["ip", "netns", "exec", h3.ns, sys.executable, "-m", "zlayer", "--data-dir", str(h3.data), "--host",
            f"https://{h2.api}", "node", "ls", "-o", "json"]  # fmt: skip
    got = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert sorted(n["advertise_addr"] for n in json.loads(got.stdout)) == sorted([h1.addr, h2.addr])
    # without the cluster CA the CLI refuses the certificate, saying so (no token was answered in plain)
    no_ca = subprocess.run(argv, env={k: v for k, v in env.items() if k != "ZLAYER_API_CA"}, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert no_ca.returncode != 0 and "certificate" in no_ca.stderr and "Traceback" not in no_ca.stderr, no_ca
    # a restarted node serves its cluster certificate from its first connection
    h2.stop()
    h2.start()
    wait_for(lambda: _curl(h3, "--cacert", str(ca), f"https://{h2.api}/health/live").returncode == 0, 30,
             "node 2's API over TLS after a restart")  # fmt: skip
    assert _curl(h3, f"http://{h2.api}/health/live").returncode != 0
    assert pki.ca_hash((_tls(h2) / "ca.crt").read_bytes()) == pki.ca_hash(ca.read_bytes())
