"""TLS certificates of the proxy: loaded from files, generated self-signed, or issued by ACME; stored on disk.

Layout follows ZLayer (``<data>/certs/<domain>.crt|.key|.meta.json``). Every write is atomic (temp + fsync +
rename) so a crash leaves either the old or the new certificate, never half of one.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zlayer.errors import ProxyError
from zlayer.paths import PRIVATE_FILE, private_dir
from zlayer.paths import write_atomic as _write_atomic

RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertificateInfo:
    """What the proxy knows about one certificate on disk."""

    domain: str
    cert_file: Path
    key_file: Path
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    source: str  # "file", "self-signed" or "acme"

    def needs_renewal(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        return self.not_after - now <= RENEW_BEFORE


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replaces ``path`` with ``data`` so that a crash leaves the old or the new content, never a mix; the directory
    is made (0700) if missing."""
    private_dir(path.parent)
    _write_atomic(path, data, mode)


def new_key() -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key (the kind ZLayer issues)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed(domains: list[str], days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``domains`` (the first is the subject): (cert PEM, key PEM)."""
    if not domains:
        raise ProxyError("a self-signed certificate needs at least one domain")
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(d) for d in domains]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def _san(domain: str) -> x509.GeneralName:
    import ipaddress

    try:
        return x509.IPAddress(ipaddress.ip_address(domain))
    except ValueError:
        return x509.DNSName(domain)


def inspect(domain: str, cert_file: Path, key_file: Path, source: str) -> CertificateInfo:
    """Reads a PEM certificate (chain) and checks the key beside it; raises ProxyError naming the file."""
    try:
        pem = cert_file.read_bytes()
    except OSError as exc:
        raise ProxyError(f"cannot read certificate: {exc.strerror}", where=str(cert_file)) from None
    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        raise ProxyError("not a PEM certificate", where=str(cert_file)) from None
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise ProxyError(f"cannot read private key: {exc.strerror}", where=str(key_file)) from None
    except (ValueError, TypeError):
        raise ProxyError("not an unencrypted PEM private key", where=str(key_file)) from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        raise ProxyError(f"private key does not match the certificate {cert_file}", where=str(key_file))
    return CertificateInfo(
        domain=domain,
        cert_file=cert_file,
        key_file=key_file,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        source=source,
    )


class CertStore:
    """Certificates under ``<data>/certs``, one ``<domain>.crt|.key|.meta.json`` triple per domain."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def paths(self, domain: str) -> tuple[Path, Path, Path]:
        safe = domain.replace("*", "_wildcard_").replace("/", "_")
        return (
            self.directory / f"{safe}.crt",
            self.directory / f"{safe}.key",
            self.directory / f"{safe}.meta.json",
        )

    def save(self, domain: str, cert_pem: bytes, key_pem_bytes: bytes, source: str) -> CertificateInfo:
        crt, key, meta = self.paths(domain)
        write_atomic(key, key_pem_bytes, 0o600)
        write_atomic(crt, cert_pem)
        info = inspect(domain, crt, key, source)
        body = {
            "domain": domain,
            "not_before": info.not_before.isoformat(),
            "not_after": info.not_after.isoformat(),
            "fingerprint": info.fingerprint,
            "source": source,
        }
        write_atomic(meta, json.dumps(body, indent=2).encode())
        return info

    def load(self, domain: str) -> CertificateInfo | None:
        crt, key, meta = self.paths(domain)
        if not crt.exists() or not key.exists():
            return None
        source = "file"
        try:
            source = str(json.loads(meta.read_text()).get("source", "file"))
        except (OSError, ValueError):
            pass
        return inspect(domain, crt, key, source)

    def ensure_self_signed(self, domain: str) -> CertificateInfo:
        """The stored certificate of ``domain``, or a new self-signed one when there is none."""
        found = self.load(domain)
        if found is not None:
            return found
        cert, key = self_signed([domain])
        return self.save(domain, cert, key, "self-signed")

    def all(self) -> list[CertificateInfo]:
        out: list[CertificateInfo] = []
        if not self.directory.is_dir():
            return out
        for crt in sorted(self.directory.glob("*.crt")):
            domain = crt.stem.replace("_wildcard_", "*")
            info = self.load(domain)
            if info is not None:
                out.append(info)
        return out


__all__ = [
    "RENEW_BEFORE",
    "CertStore",
    "CertificateInfo",
    "inspect",
    "key_pem",
    "new_key",
    "self_signed",
    "write_atomic",
]
