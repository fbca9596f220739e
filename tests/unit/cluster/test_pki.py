"""The cluster CA without etcd: what a joiner accepts back from the admitting node, the CA pin a token carries, the
certificate a node gets, and a node whose cluster config predates TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from zlayer.cluster import pki
from zlayer.cluster.membership import ClusterNode
from zlayer.cluster.tokens import SigningKey, token_ca_pin
from zlayer.errors import AuthError, DaemonError, UsageError
from zlayer.state import SqliteStore
from zlayer.state.switch import SwitchingStore


def test_a_joiner_accepts_only_a_cert_for_its_key_from_the_ca_its_token_pins() -> None:
    ca, ca_key = pki.make_ca("c1")
    other, other_key = pki.make_ca("c2")
    mine = pki.new_key()
    csr = pki.load_csr(pki.make_csr(mine, "n"))
    public = csr.public_key()
    assert isinstance(public, pki.ec.EllipticCurvePublicKey)
    cert = pki.sign_node(ca, ca_key, public, ["10.0.0.2", "127.0.0.1"])
    ca_pem, cert_pem = pki.cert_pem(ca).decode(), pki.cert_pem(cert).decode()
    pki.check_issued(ca_pem, cert_pem, mine, pki.ca_hash(ca))  # the real thing passes
    pki.check_issued(ca_pem, cert_pem, mine, "")  # a token without a pin: trusted on first use
    with pytest.raises(AuthError, match="not the one the join token pins"):
        pki.check_issued(ca_pem, cert_pem, mine, pki.ca_hash(other))
    with pytest.raises(AuthError, match="not for this node's key"):
        pki.check_issued(ca_pem, cert_pem, pki.new_key(), pki.ca_hash(ca))
    forged = pki.sign_node(other, other_key, public, ["10.0.0.2"])  # right key, signed by another CA
    with pytest.raises(AuthError, match="not signed by its cluster CA"):
        pki.check_issued(ca_pem, pki.cert_pem(forged).decode(), mine, pki.ca_hash(ca))
    with pytest.raises(AuthError, match="no valid certificate"):
        pki.check_issued("junk", cert_pem, mine, "")


def test_a_node_cert_names_its_addresses_and_serves_both_ends_of_tls() -> None:
    ca, ca_key = pki.make_ca("c1")
    cert = pki.sign_node(ca, ca_key, pki.new_key().public_key(), ["10.0.0.2", "127.0.0.1"])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.2", "127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)


def test_a_bad_certificate_request_is_refused_saying_where() -> None:
    with pytest.raises(UsageError, match="not a PEM CSR"):
        pki.load_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


def test_a_token_pins_the_ca_and_a_bad_pin_is_refused() -> None:
    ca, _ = pki.make_ca("c1")
    key = SigningKey()
    token, _ = key.issue("10.0.0.1:3669", "10.0.0.1:9000", "node-1", ca_pin=pki.ca_hash(ca))
    assert token_ca_pin(token) == pki.ca_hash(ca) and pki.ca_hash(ca).startswith("sha256:")
    key.verify(token)  # the pin rides beside ZLayer's claims: the signature is unchanged
    plain, _ = key.issue("10.0.0.1:3669", "10.0.0.1:9000", "node-1")
    assert token_ca_pin(plain) == ""
    env = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    env["ca"] = "md5:abc"
    with pytest.raises(AuthError, match="CA pin"):
        token_ca_pin(base64.urlsafe_b64encode(json.dumps(env).encode()).decode())


def test_the_files_are_private_and_make_a_client_context(tmp_path: Path) -> None:
    ca, ca_key = pki.make_ca("c1")
    key = pki.new_key()
    cert = pki.sign_node(ca, ca_key, key.public_key(), ["127.0.0.1"])
    tls = pki.NodeTLS(tmp_path / "tls")
    tls.write(pki.cert_pem(ca), pki.cert_pem(cert), pki.key_pem(key), pki.make_crl(ca, ca_key, []))
    assert tls.exists() and tls.directory.stat().st_mode & 0o777 == 0o700
    assert {f.name: f.stat().st_mode & 0o777 for f in tls.directory.iterdir()} == {
        "ca.crt": 0o600, "node.crt": 0o600, "node.key": 0o600, "crl.pem": 0o600}  # fmt: skip
    assert isinstance(tls.client_context(), ssl.SSLContext) and tls.serial() == cert.serial_number
    crl = pki.make_crl(ca, ca_key, [cert.serial_number])
    assert tls.write_crl(crl) and not tls.write_crl(crl)  # changed once, then the same
    assert x509.load_pem_x509_crl(crl).get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def test_a_node_whose_cluster_config_predates_tls_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    directory.mkdir()
    (directory / "node.json").write_text(json.dumps({
        "node_id": "1", "advertise": "10.0.0.1", "api_port": 3669, "raft_port": 9000, "client_port": 2379,
        "initial_cluster": "node-1=http://10.0.0.1:9000", "cluster_token": "zlayer-x", "state": "new"}))  # fmt: skip
    node = ClusterNode(directory, tmp_path / "etcd.log", SwitchingStore(SqliteStore(tmp_path / "state.db")), tmp_path,
                       3669)  # fmt: skip
    with pytest.raises(DaemonError, match="predates TLS") as e:
        asyncio.run(node.start())
    assert "node.json" in str(e.value.where) and "zlayer node init" in str(e.value.hint)
    assert node.etcd is None  # no etcd started in plain HTTP
