"""The cluster's CA and each node's etcd certificate (mutual TLS between the members and their clients).

``zlayer node init`` makes the CA (ECDSA P-256, ten years) and the first node's certificate; a joiner makes its own
key, sends a certificate request with its join request, and gets back a certificate the admitting node signed and the
CA certificate — its key never leaves the node. A node's certificate names its advertise address and 127.0.0.1 (IP
SANs) and serves for both ends of TLS (server and client auth): its etcd member presents it to clients and peers, and
its daemon presents it to etcd. The files live in ``DATA/cluster/tls`` (0700): ``ca.crt``, ``node.crt``, ``node.key``
and ``crl.pem`` (the certificates of removed nodes, which etcd refuses), every one 0600. The same certificate, with
the CA behind it in ``api.crt``, is what the node's TCP API serves once the node is in a cluster (unless the operator
gave the API a certificate of their own), so a joiner and the other nodes reach it over TLS, never in plain.

A token pins the CA the way kubeadm's ``--discovery-token-ca-cert-hash`` does: ``sha256:`` and the hex SHA-256 of the
CA's SubjectPublicKeyInfo (:func:`ca_hash`). A joiner fetches the CA from the API it was pointed at (no secret
sent), keeps it only when it matches the pin, and then sends its token on a connection whose server certificate that CA
signed (:func:`pinned_context`): whoever sits on the path without the CA's key gets nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zlayer.errors import AuthError, UsageError
from zlayer.paths import private_dir, write_atomic

CA_YEARS = 10
NODE_YEARS = 10


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(cluster_id: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new cluster CA: a self-signed P-256 certificate that may sign node certificates (and nothing below them)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"zlayer cluster {cluster_id[:12]} CA")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """The certificate request a joiner sends (its public key, signed by its key); the admitting node decides the
    names the certificate carries, not the request."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: str | bytes, where: str = "csr") -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        raise UsageError("the join request's certificate request is not a PEM CSR", where=where) from None
    if not csr.is_signature_valid:
        raise UsageError("the join request's certificate request is not signed by its own key", where=where)
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise UsageError("the join request's certificate request must carry an ECDSA P-256 key", where=where)
    return csr


def sign_node(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, public_key: ec.EllipticCurvePublicKey,
    addresses: list[str],
) -> x509.Certificate:  # fmt: skip
    """A node's certificate: IP SANs for ``addresses`` (its advertise address and 127.0.0.1), server and client
    auth; its common name names the first address, for a reader (etcd authenticates nothing by it)."""
    now = _now()
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"zlayer node {addresses[0]}")]))
        .issuer_name(ca_cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=365 * NODE_YEARS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip


def make_crl(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, serials: list[int]) -> bytes:
    """The CA's revocation list of ``serials`` (removed nodes' certificates), PEM."""
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
               .next_update(now + datetime.timedelta(days=365 * CA_YEARS)))  # fmt: skip
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def ca_hash(ca: x509.Certificate | bytes | str) -> str:
    """kubeadm's CA pin: ``sha256:`` + hex SHA-256 of the CA certificate's SubjectPublicKeyInfo (DER)."""
    cert = ca if isinstance(ca, x509.Certificate) else x509.load_pem_x509_certificate(
        ca.encode() if isinstance(ca, str) else ca)  # fmt: skip
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def not_pinned(where: str, pin: str, got: str = "") -> AuthError:
    """The refusal of an API that is not the pinned cluster's: its certificate is not signed by the pinned CA."""
    seen = f" (it sends the CA {got})" if got else ""
    return AuthError(f"the API at {where} presents a certificate not signed by the cluster CA the token pins "
                     f"({pin}){seen}: the join token was not sent",
                     hint="check the address; if it is right, something on the path answers in the cluster's "
                          "place")  # fmt: skip


def check_pinned(ca_pem: str, pin: str, where: str) -> x509.Certificate:
    """The CA an API sent, when it is the one ``pin`` names; else :func:`not_pinned`."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
    except ValueError:
        raise not_pinned(where, pin, "nothing that parses as a certificate") from None
    if ca_hash(ca) != pin:
        raise not_pinned(where, pin, ca_hash(ca))
    return ca


def pinned_context(ca_pem: str, crl_pem: str = "") -> ssl.SSLContext:
    """A client context that trusts the cluster CA alone (none of the host's CAs) and refuses a certificate on its
    revocation list. The name is not checked: any certificate this CA signed is a node's, and a joiner may name the
    leader by an address its certificate does not carry (a NAT's, a DNS name)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    ctx.check_hostname = False
    if crl_pem.strip():
        try:
            crl = x509.load_pem_x509_crl(crl_pem.encode())
            signed = crl.is_signature_valid(x509.load_pem_x509_certificate(ca_pem.encode()).public_key())  # type: ignore[arg-type]
        except (ValueError, TypeError):
            signed = False
        if not signed:  # not the CA's: a removed node's certificate could then pass
            raise AuthError("the cluster API sent a revocation list its CA did not sign: the join token was not sent")
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:  # ssl reads a CRL from a file only
            f.write(crl_pem)
            f.flush()
            ctx.load_verify_locations(cafile=f.name)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def check_issued(ca_pem: str, cert_pem_text: str, key: ec.EllipticCurvePrivateKey, pin: str | None) -> None:
    """On the joiner: the CA is the one its token pins (when it pins one), and the certificate it got is for its own
    key and signed by that CA; else AuthError saying which."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        cert = x509.load_pem_x509_certificate(cert_pem_text.encode())
    except ValueError:
        raise AuthError("the admitting node sent no valid certificate (not PEM X.509)") from None
    if pin and ca_hash(ca) != pin:
        raise AuthError(f"the admitting node's cluster CA ({ca_hash(ca)}) is not the one the join token pins "
                        f"({pin}): not joining a cluster that may not be the token's")  # fmt: skip
    mine = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    got = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if mine != got:
        raise AuthError("the certificate the admitting node sent is not for this node's key")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise AuthError("the certificate the admitting node sent is not signed by its cluster CA") from None


@dataclass(frozen=True)
class NodeTLS:
    """Where a node's TLS files are (``DATA/cluster/tls``)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.directory / "node.crt"

    @property
    def key(self) -> Path:
        return self.directory / "node.key"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def chain(self) -> Path:
        return self.directory / "api.crt"

    def api_pair(self) -> tuple[str, str]:
        """(certificate chain, key) the node's TCP API serves: its certificate and the CA (a client that holds only
        the CA's pin learns the CA from the chain's issuer), written again when either changed."""
        chain = self.cert.read_bytes().rstrip(b"\n") + b"\n" + self.ca.read_bytes()
        with contextlib.suppress(OSError):
            if self.chain.read_bytes() == chain:
                return str(self.chain), str(self.key)
        write_atomic(self.chain, chain, mode=0o600)
        return str(self.chain), str(self.key)

    def exists(self) -> bool:
        return self.ca.is_file() and self.cert.is_file() and self.key.is_file() and self.crl.is_file()

    def write(self, ca_pem: bytes, node_cert_pem: bytes, node_key_pem: bytes, crl_pem: bytes) -> None:
        """Every file 0600 in a 0700 directory (no other user of the host reads the key, or the rest)."""
        private_dir(self.directory)
        for path, data in ((self.ca, ca_pem), (self.cert, node_cert_pem), (self.key, node_key_pem),
                           (self.crl, crl_pem)):  # fmt: skip
            write_atomic(path, data, mode=0o600)

    def write_crl(self, crl_pem: bytes) -> bool:
        """Replace the revocation list when it changed (etcd reads it again on each connection)."""
        try:
            if self.crl.read_bytes() == crl_pem:
                return False
        except OSError:
            pass
        write_atomic(self.crl, crl_pem, mode=0o600)
        return True

    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number

    def client_context(self) -> ssl.SSLContext:
        """What the daemon's etcd client presents: the node's certificate, trusting only the cluster CA."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


__all__ = ["NodeTLS", "ca_hash", "cert_pem", "check_issued", "check_pinned", "key_pem", "load_csr", "make_ca",
           "make_crl", "make_csr", "new_key", "not_pinned", "pinned_context", "sign_node"]  # fmt: skip
