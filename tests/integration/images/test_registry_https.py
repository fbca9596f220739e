"""Registries off loopback, for real: Debian's docker-registry inside a network namespace this test creates, on a
non-loopback address. Over HTTPS the client trusts the system's CA store (pointed at a test CA with SSL_CERT_FILE,
the machine's own store untouched) and refuses a certificate it cannot verify; a plain-HTTP registry there is
refused unless it is named with ``--insecure``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytestmark = [pytest.mark.root, pytest.mark.peer]

ADDR = "10.199.77.1"


@dataclass
class Site:
    ns: str
    https: str  # HOST:PORT of the TLS registry
    http: str  # HOST:PORT of the plain-HTTP registry
    ca: Path


def _cert(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None) -> tuple[bytes, bytes, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0] if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ADDR))]), critical=False
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM), pem_key, (subject, key)


def _registry(ns: str, root: Path, port: int, tls: tuple[Path, Path] | None) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True)
    extra = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {ADDR}:{port}\n{extra}"
    )
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "docker-registry", "serve", str(root / "config.yml")],
                            stdout=log, stderr=log)  # fmt: skip
    log.close()
    return proc


def _listening(ns: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"], capture_output=True,
                         text=True).stdout  # fmt: skip
    return f"{ADDR}:{port}" in out


@pytest.fixture
def registry_site(tmp_path: Path) -> Iterator[Site]:
    ns = f"zlreg-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        setup = (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],  # no dummy module on every kernel
            ["ip", "addr", "add", f"{ADDR}/24", "dev", "v0"],
            ["ip", "link", "set", "v0", "up"],
            ["ip", "link", "set", "v1", "up"],
        )
        for argv in setup:
            subprocess.run(["ip", "netns", "exec", ns, *argv], check=True)
        ca_pem, _, ca = _cert("zlayer test CA", None)
        crt, key, _ = _cert(ADDR, ca)  # type: ignore[arg-type]
        (tmp_path / "ca.pem").write_bytes(ca_pem)
        (tmp_path / "server.pem").write_bytes(crt)
        (tmp_path / "server.key").write_bytes(key)
        procs.append(_registry(ns, tmp_path / "reg-tls", 5443, (tmp_path / "server.pem", tmp_path / "server.key")))
        procs.append(_registry(ns, tmp_path / "reg-plain", 5000, None))
        deadline = time.monotonic() + 20
        while not (_listening(ns, 5443) and _listening(ns, 5000)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "registries did not start"
            time.sleep(0.1)
        yield Site(ns, f"{ADDR}:5443", f"{ADDR}:5000", tmp_path / "ca.pem")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def zl(site: Site, data: Path, *args: str, ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "ZLAYER_INSECURE_REGISTRIES")
    }
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)  # OpenSSL's default store, as the system's would be
    return subprocess.run(["ip", "netns", "exec", site.ns, sys.executable, "-m", "zlayer", "--data-dir", str(data),
                           *args], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_https_with_the_system_store_and_plain_http_only_when_insecure(
    registry_site: Site, images_busybox_oci: Path, tmp_path: Path
) -> None:
    site, src = registry_site, tmp_path / "src"
    assert zl(site, src, "import", str(images_busybox_oci), "-t", "demo/bb:1").returncode == 0

    # HTTPS: trusted through the default store
    r = zl(site, src, "image", "push", "demo/bb:1", f"{site.https}/demo/bb:1", ca=site.ca)
    assert r.returncode == 0, r.stdout + r.stderr
    r = zl(site, tmp_path / "a", "pull", "-q", f"{site.https}/demo/bb:1", ca=site.ca)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo/bb" in zl(site, tmp_path / "a", "image", "ls").stdout
    # ... and refused, in one line naming the registry, when the CA is not trusted
    r = zl(site, tmp_path / "b", "pull", "-q", f"{site.https}/demo/bb:1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) <= 2 and site.https in err and "certificate" in err.lower(), err

    # plain HTTP off loopback: refused unless the registry is named insecure
    r = zl(site, src, "image", "push", "--insecure", site.http, "demo/bb:1", f"{site.http}/demo/bb:1")
    assert r.returncode == 0, r.stdout + r.stderr
    r = zl(site, tmp_path / "c", "pull", "-q", f"{site.http}/demo/bb:1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert site.http in r.stderr, r.stderr
    r = zl(site, tmp_path / "c", "pull", "-q", "--insecure", site.http, f"{site.http}/demo/bb:1")
    assert r.returncode == 0, r.stdout + r.stderr
