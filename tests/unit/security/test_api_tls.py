"""Issue 16 item 7: `serve --api-tls-cert/--api-tls-key` serves the TCP API over TLS (as ZLayer's serve offers):
a client that trusts the certificate gets answers and tokens work as over plain HTTP, a plain-HTTP client gets
nothing, the CLI speaks to an https:// host, and a pair that does not belong together is refused at start."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

from tests.fixtures.daemon import DaemonProcess, kill_host_containers


def self_signed(tmp: Path, name: str = "api") -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    crt, pem = tmp / f"{name}.crt", tmp / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    os.chmod(pem, 0o600)
    return crt, pem


def test_the_api_over_tls(tmp_path: Path) -> None:
    crt, pem = self_signed(tmp_path)
    env = {"ZLAYER_RUNTIME_FACTORY": "tests.fixtures.daemon:host_runtime_factory", "PYTHONPATH": str(Path.cwd()),
           "ZLAYER_NODE_NETWORK": "off"}  # fmt: skip
    d = DaemonProcess(tmp_path / "d", env, ["--api-tls-cert", str(crt), "--api-tls-key", str(pem)])
    d.start()
    try:
        trusted = ssl.create_default_context(cafile=str(crt))
        conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=trusted, timeout=10)
        conn.request("GET", "/api/v1/deployments", headers={"Authorization": f"Bearer {d.token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == []
        conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=trusted, timeout=10)
        conn.request("GET", "/api/v1/deployments")
        assert conn.getresponse().status == 401
        plain = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        try:
            plain.request("GET", "/health/live")
            answered = plain.getresponse().status
        except (ConnectionError, http.client.HTTPException):
            answered = 0
        assert answered in (0, 400), answered  # no plain-HTTP answer from a TLS listener
        untrusted = http.client.HTTPSConnection("127.0.0.1", d.port, context=ssl.create_default_context(), timeout=10)
        try:
            untrusted.request("GET", "/health/live")
            raise AssertionError("an unknown certificate was accepted")
        except ssl.SSLCertVerificationError:
            pass
        r = subprocess.run([sys.executable, "-m", "zlayer", "--host", f"https://127.0.0.1:{d.port}", "--token",
                            d.token, "ps", "--format", "json"], env={**d.env, "SSL_CERT_FILE": str(crt)},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        d.terminate()
        kill_host_containers(tmp_path)
    other_crt, _ = self_signed(tmp_path, "other")
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(tmp_path / "e"), "serve", "--bind",
                        "127.0.0.1:0", "--api-tls-cert", str(other_crt), "--api-tls-key", str(pem)], env=d.env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "not a PEM certificate chain and its private key" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(tmp_path / "e"), "serve", "--api-tls-cert",
                        str(crt)], env=d.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "--api-tls-cert and --api-tls-key go together" in r.stderr, r.stderr


def test_api_tls_acme_is_refused_with_a_clear_line_when_it_cannot_be_served(tmp_path: Path) -> None:
    """`--api-tls-acme DOMAIN` (the certificate by ACME, tests/integration/daemon/test_api_acme_live.py): with a
    certificate of the operator's, without a TCP listener or with a name HTTP-01 cannot prove, the daemon does not
    start and says why."""
    crt, pem = self_signed(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    for args, said in (
        (["--api-tls-acme", "api.example.com", "--api-tls-cert", str(crt), "--api-tls-key", str(pem)],
         "--api-tls-acme or --api-tls-cert/--api-tls-key: one or the other"),
        (["--bind", "none", "--api-tls-acme", "api.example.com"], "--api-tls-acme serves the TCP API"),
        (["--api-tls-acme", "*.example.com"], "HTTP-01 cannot prove a wildcard name"),
        (["--api-tls-acme", "10.0.0.1"], "expected the DNS name clients reach the API by"),
    ):  # fmt: skip
        r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(tmp_path / "e"), "serve", *args],
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = subprocess.run([sys.executable, "-m", "zlayer", "serve", "--help"], env=env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert "--api-tls-acme DOMAIN" in r.stdout
