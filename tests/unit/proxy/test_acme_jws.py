"""The pieces of our ACME client that must be exactly right: JWK, thumbprint, ES256 JWS, CSR."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from zlayer.proxy.acme import b64u, csr_der, jwk_of, jws, thumbprint
from zlayer.proxy.certs import new_key


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_jws_is_a_valid_es256_signature_over_protected_and_payload() -> None:
    key = new_key()
    msg = jws(key, {"alg": "ES256", "nonce": "n", "url": "https://acme/x", "jwk": jwk_of(key)}, {"a": 1})
    sig = unb64u(msg["signature"])
    assert len(sig) == 64
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.public_key().verify(der, f"{msg['protected']}.{msg['payload']}".encode(), ec.ECDSA(hashes.SHA256()))
    assert json.loads(unb64u(msg["payload"])) == {"a": 1}
    assert json.loads(unb64u(msg["protected"]))["url"] == "https://acme/x"


def test_post_as_get_has_an_empty_payload() -> None:
    assert jws(new_key(), {"alg": "ES256"}, None)["payload"] == ""


def test_thumbprint_follows_rfc7638_member_order() -> None:
    jwk = {"y": "Y", "x": "X", "kty": "EC", "crv": "P-256"}
    expected = b64u(hashlib.sha256(b'{"crv":"P-256","kty":"EC","x":"X","y":"Y"}').digest())
    assert thumbprint(jwk) == expected


def test_jwk_coordinates_are_32_bytes() -> None:
    jwk = jwk_of(new_key())
    assert len(unb64u(jwk["x"])) == 32 and len(unb64u(jwk["y"])) == 32


def test_csr_carries_every_domain_as_a_san() -> None:
    csr = x509.load_der_x509_csr(csr_der(["a.test", "b.test"], new_key()))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.test", "b.test"]
    assert csr.is_signature_valid
