"""The cluster's etcd as an outsider meets it: three hosts (network namespaces on a bridge,
tests/fixtures/netns_cluster.py) make a cluster, and a fourth namespace on the same bridge — a machine on the cluster's
network that is not a node — tries every node's etcd client port (2379) and raft port (9000): plain HTTP, TLS without a
client certificate and TLS with a certificate of a CA it made itself all get nothing, while a node's own certificate
does (so it is the certificate that is refused, not the address). On each host the key files are root's alone, and a
non-root user can neither read them nor get anything from 127.0.0.1:2379. A removed node's certificate is refused
from then on; a join whose token pins another CA is refused with nothing left; the removed host joins again."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures.netns_cluster import NetnsCluster, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

RANGE_ALL = json.dumps({"key": "AA==", "range_end": "AA=="})  # every key


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Outsider:
    """A namespace on the cluster's bridge with an address of its subnet, running no zlayer."""

    def __init__(self, cluster: NetnsCluster) -> None:
        self.ns = f"zlc-{cluster.tag}-out"
        self.veth = f"zlc{cluster.tag}o"
        self.addr = f"{cluster.subnet}.200"
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", self.veth + "n")
        _ip("link", "set", self.veth + "n", "netns", self.ns)
        _ip("-n", self.ns, "link", "set", self.veth + "n", "name", "eth0")
        _ip("-n", self.ns, "addr", "add", f"{self.addr}/24", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")
        _ip("link", "set", self.veth, "master", cluster.bridge, "up")

    def curl(self, url: str, *opts: str | Path) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.ns, "curl", "-sS", "-m", "5", "-X", "POST", "-d", RANGE_ALL]
        return subprocess.run([*argv, *map(str, opts), url], capture_output=True, text=True, timeout=30)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], check=False, capture_output=True)


def _self_made_cert(directory: Path, ips: list[str]) -> tuple[Path, Path]:
    """A CA of the attacker's own and a client/server certificate it signed for ``ips``."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the cluster's CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
            .issuer_name(name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    crt, pem = directory / "rogue.crt", directory / "rogue.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    return crt, pem


def _tls(host: Any) -> Path:
    return Path(host.data) / "cluster" / "tls"


def _nodes(host: Any) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in host.json("node", "ls")}


def _token(host: Any) -> str:
    return str(host.ok("node", "generate-join-token", "--ttl", "1h", "-q").strip())


def _with_cert(tls: Path) -> list[str | Path]:
    return ["--cacert", tls / "ca.crt", "--cert", tls / "node.crt", "--key", tls / "node.key"]


@pytest.fixture(scope="module")
def cluster(netns_cluster: NetnsCluster) -> NetnsCluster:
    h1, h2, h3 = netns_cluster.hosts
    h1.ok("node", "init", "--advertise-addr", h1.addr)
    for h in (h2, h3):
        h.ok("node", "join", h1.api, "--token", _token(h1), "--advertise-addr", h.addr)
    wait_for(lambda: all(n["status"] == "ready" for n in _nodes(h1).values()) and len(_nodes(h1)) == 3, 60,
             "three ready nodes")  # fmt: skip
    return netns_cluster


@pytest.fixture(scope="module")
def outsider(cluster: NetnsCluster) -> Iterator[Outsider]:
    out = Outsider(cluster)
    try:
        yield out
    finally:
        out.delete()


def test_an_outsider_gets_nothing_from_any_nodes_etcd(
    cluster: NetnsCluster, outsider: Outsider, tmp_path: Path
) -> None:
    rogue_crt, rogue_key = _self_made_cert(tmp_path, [outsider.addr, "127.0.0.1"])
    # a node's own certificate, from outside: etcd answers it (the refusals below are the certificate's, not the
    # network's)
    h1 = cluster.hosts[0]
    ok = outsider.curl(f"https://{h1.addr}:2379/v3/kv/range", *_with_cert(_tls(h1)))
    assert ok.returncode == 0 and "/zlayer/cluster/" in str(
        [base64.b64decode(kv["key"]) for kv in json.loads(ok.stdout)["kvs"]]
    ), ok.stdout[:300] + ok.stderr
    for h in cluster.hosts:
        for port, path in ((2379, "/v3/kv/range"), (9000, "/members")):
            tries = {
                "plain HTTP": outsider.curl(f"http://{h.addr}:{port}{path}"),
                "TLS without a client certificate": outsider.curl(f"https://{h.addr}:{port}{path}", "-k"),
                "a certificate of another CA": outsider.curl(
                    f"https://{h.addr}:{port}{path}", "-k", "--cert", rogue_crt, "--key", rogue_key
                ),
            }
            for how, r in tries.items():
                assert r.returncode != 0, f"{how} to {h.addr}:{port} got an answer: {r.stdout[:300]}"
                assert "kvs" not in r.stdout and "zlayer" not in r.stdout and "node-" not in r.stdout, r.stdout
    # and the nodes still agree: a change made through one is seen through the others
    cluster.hosts[2].ok("node", "label", "1", "checked=tls")
    assert all(_nodes(h)["1"]["labels"].get("checked") == "tls" for h in cluster.hosts)


def test_key_files_are_roots_alone_and_a_local_user_gets_nothing(cluster: NetnsCluster) -> None:
    for h in cluster.hosts:
        tls = _tls(h)
        assert tls.stat().st_mode & 0o777 == 0o700 and tls.stat().st_uid == 0
        for f in tls.iterdir():
            assert f.stat().st_mode & 0o777 == 0o600 and f.stat().st_uid == 0, f"{f}: {oct(f.stat().st_mode)}"
        nobody = ["ip", "netns", "exec", h.ns, "setpriv", "--reuid", "nobody", "--regid", "nogroup",
                  "--clear-groups"]  # fmt: skip
        r = subprocess.run([*nobody, "cat", str(tls / "node.key")], capture_output=True, text=True)
        assert r.returncode != 0 and "BEGIN" not in r.stdout, r.stdout
        for opts in ([], ["-k"], _with_cert(tls)):
            scheme = "http" if not opts else "https"
            r = subprocess.run([*nobody, "curl", "-sS", "-m", "5", "-X", "POST", "-d", RANGE_ALL, *map(str, opts),
                                f"{scheme}://127.0.0.1:2379/v3/kv/range"], capture_output=True, text=True)  # fmt: skip
            assert r.returncode != 0 and "kvs" not in r.stdout, f"nobody {opts}: {r.stdout[:300]}"


def test_a_removed_nodes_certificate_is_refused_and_a_token_pinning_another_ca_is_not_joined(
    cluster: NetnsCluster, outsider: Outsider, tmp_path: Path
) -> None:
    h1, h2, h3 = cluster.hosts
    kept = tmp_path / "h3-tls"
    kept.mkdir()
    for f in ("ca.crt", "node.crt", "node.key"):
        (kept / f).write_bytes((_tls(h3) / f).read_bytes())
    h1.ok("node", "remove", "3")
    # every remaining member refuses node 3's certificate once the revocation list reached it
    for h in (h1, h2):
        wait_for(lambda h=h: outsider.curl(f"https://{h.addr}:2379/v3/kv/range", *_with_cert(kept)).returncode != 0,
                 30, f"{h.addr} refusing the removed node's certificate")  # fmt: skip
        r = outsider.curl(f"https://{h.addr}:2379/v3/kv/range", *_with_cert(_tls(h)))
        assert r.returncode == 0 and "kvs" in r.stdout, r.stderr  # its own still works

    # host 3 is a fresh node again (its daemon restarted without its cluster directory) and asks to join with a token
    # whose CA pin is not the cluster's: it refuses to join and nothing of it stays, here or in the cluster
    h3.stop()
    subprocess.run(["rm", "-rf", str(Path(h3.data) / "cluster")], check=True)
    h3.start()
    token = _token(h1)
    env = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert str(env.get("ca", "")).startswith("sha256:")
    env["ca"] = "sha256:" + "0" * 64
    other = base64.urlsafe_b64encode(json.dumps(env).encode()).decode().rstrip("=")
    r = h3.zl("node", "join", h1.api, "--token", other, "--advertise-addr", h3.addr)
    assert r.returncode != 0 and "not signed by the cluster CA the token pins" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert not (Path(h3.data) / "cluster" / "node.json").exists()
    assert not (Path(h3.data) / "cluster" / "tls").exists()
    assert sorted(_nodes(h1)) == ["1", "2"]
    # with a token as the cluster issued it, it joins again and the cluster agrees
    h3.ok("node", "join", h1.api, "--token", _token(h1), "--advertise-addr", h3.addr)
    want = [(h1.addr, "ready"), (h2.addr, "ready"), (h3.addr, "ready")]
    wait_for(lambda: sorted((n["advertise_addr"], n["status"]) for n in _nodes(h2).values()) == want, 60,
             "host 3 a ready node again")  # fmt: skip
    r = outsider.curl(f"https://{h1.addr}:2379/v3/kv/range", *_with_cert(_tls(h3)))
    assert r.returncode == 0 and "kvs" in r.stdout, r.stderr
