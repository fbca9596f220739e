"""Join tokens: ZLayer's Ed25519 signed envelope, single use and revocable, checked against the cluster's state.

A token is base64url (no padding) of the JSON ``{"v": 1, "kid", "claims", "sig"}``. ``claims`` holds, in this
order, ``api_endpoint`` (where the joiner sends its request), ``raft_endpoint``, ``leader_wg_pubkey`` and
``overlay_cidr`` (empty until the overlay lands), ``exp`` and ``iat`` (RFC 3339), ``iss`` (the issuing node) and
``jti`` (a random id, what single use is kept by); ``sig`` is Ed25519 over the compact JSON of the claims, ``kid`` the
first 8 hex digits of SHA-256 of the public key. Our tokens add ``ca`` to the envelope: the cluster CA's pin
(``sha256:<hex>`` of its public key, as kubeadm's discovery hash), which the joiner checks the CA it is sent against;
the claims stay ZLayer's, so the pin is not under the signature — it is as trusted as the token text itself, which the
joiner cannot verify anyway (it has no key to) and which the operator carries to it.
The cluster's signing key lives in its replicated state, so any node
that leads later checks the tokens the first leader issued; a used token's ``jti`` and a revoked token's hash are
kept there too (ZLayer keeps both in one leader's memory: a leader change forgot them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from zlayer.errors import AuthError, UsageError

DEFAULT_TTL = 24 * 3600
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str | int | None, where: str = "--ttl") -> int:
    """``24h``, ``30m``, ``7d``, ``90s`` or seconds; at least one second and at most a year."""
    if text is None or text == "":
        return DEFAULT_TTL
    m = _DURATION.match(str(text))
    if not m:
        raise UsageError(f"{text!r} is not a duration (e.g. 30m, 24h, 7d)", where=where)
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not 1 <= seconds <= 366 * 86400:
        raise UsageError(f"{text!r}: a token lives between 1 second and a year", where=where)
    return seconds


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    text = text.strip()
    pad = "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(text + pad)
    except (binascii.Error, ValueError):
        return base64.b64decode(text + pad)  # ZLayer accepts standard base64 too


def token_hash(token: str) -> str:
    """What a revocation keeps: SHA-256 of the token as given (a 64-hex input is taken as already hashed)."""
    token = token.strip()
    if re.fullmatch(r"[0-9a-f]{64}", token):
        return token
    return hashlib.sha256(token.encode()).hexdigest()


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JoinClaims:
    api_endpoint: str
    raft_endpoint: str
    exp: str
    iat: str
    iss: str
    jti: str
    leader_wg_pubkey: str = ""
    overlay_cidr: str = ""

    def signed_json(self) -> bytes:
        ordered = {"api_endpoint": self.api_endpoint, "raft_endpoint": self.raft_endpoint,
                   "leader_wg_pubkey": self.leader_wg_pubkey, "overlay_cidr": self.overlay_cidr, "exp": self.exp,
                   "iat": self.iat, "iss": self.iss, "jti": self.jti}  # fmt: skip
        return json.dumps(ordered, separators=(",", ":")).encode()

    @property
    def expires(self) -> datetime:
        return datetime.fromisoformat(self.exp.replace("Z", "+00:00"))


class SigningKey:
    """The cluster's Ed25519 key for join tokens (its 32-byte seed, base64, is kept in the cluster's state)."""

    def __init__(self, seed: bytes | None = None) -> None:
        self.seed = seed if seed is not None else os.urandom(32)
        self._key = Ed25519PrivateKey.from_private_bytes(self.seed)
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = hashlib.sha256(self.public).hexdigest()[:8]

    @classmethod
    def from_b64(cls, text: str) -> SigningKey:
        return cls(base64.b64decode(text))

    def seed_b64(self) -> str:
        return base64.b64encode(self.seed).decode()

    def issue(
        self, api_endpoint: str, raft_endpoint: str, issuer: str, ttl: int = DEFAULT_TTL, ca_pin: str = ""
    ) -> tuple[str, JoinClaims]:
        """A signed token; ``ca_pin`` (:func:`zlayer.cluster.pki.ca_hash`) rides in the envelope beside the claims,
        whose fields and order are ZLayer's."""
        now = datetime.now(UTC)
        claims = JoinClaims(api_endpoint, raft_endpoint, _rfc3339(now + timedelta(seconds=ttl)), _rfc3339(now),
                            issuer, uuid.uuid4().hex)  # fmt: skip
        body = claims.signed_json()
        envelope = {"v": 1, "kid": self.kid, "claims": json.loads(body), "sig": _b64url(self._key.sign(body))}
        if ca_pin:
            envelope["ca"] = ca_pin
        return _b64url(json.dumps(envelope, separators=(",", ":")).encode()), claims

    def verify(self, token: str, now: datetime | None = None, check_expiry: bool = True) -> JoinClaims:
        """The token's claims when this key signed it and it has not expired; else AuthError saying which."""
        claims, kid, sig = read_token(token)
        if kid != self.kid:
            raise AuthError(f"the join token was signed by key {kid}, not this cluster's ({self.kid})",
                            hint="generate a token on this cluster: zlayer node generate-join-token")  # fmt: skip
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(sig, claims.signed_json())
        except InvalidSignature:
            raise AuthError("the join token's signature does not verify (altered or forged)") from None
        if check_expiry and (now or datetime.now(UTC)) >= claims.expires:
            raise AuthError(f"the join token expired at {claims.exp}",
                            hint="generate a fresh one: zlayer node generate-join-token")  # fmt: skip
        return claims


def token_ca_pin(token: str) -> str:
    """The cluster CA a token pins (``sha256:<hex>``), or "" for a token without one (one ZLayer made)."""
    with_pin = ""
    try:
        env = json.loads(_unb64(token))
        if isinstance(env, dict) and isinstance(env.get("ca"), str):
            with_pin = env["ca"]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        return ""
    if with_pin and not re.fullmatch(r"sha256:[0-9a-f]{64}", with_pin):
        raise AuthError(f"the join token's CA pin {with_pin[:80]!r} is not sha256:<64 hex digits>")
    return with_pin


def read_token(token: str) -> tuple[JoinClaims, str, bytes]:
    """Decode a join token without checking it: ``(claims, kid, signature)``; AuthError when it is not one."""
    try:
        env = json.loads(_unb64(token))
        if not isinstance(env, dict) or env.get("v") not in (1, 2) or not isinstance(env.get("claims"), dict):
            raise ValueError("not an envelope")
        raw: dict[str, Any] = env["claims"]
        claims = JoinClaims(**{k: str(raw.get(k, "")) for k in JoinClaims.__dataclass_fields__})
        claims.expires  # noqa: B018 - a date that does not parse is a bad token, said here
        sig = _unb64(str(env.get("sig", "")))
        kid = str(env.get("kid", ""))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise AuthError("not a zlayer join token (a signed envelope from `zlayer node generate-join-token`)") from None
    if not claims.api_endpoint:
        raise AuthError("the join token names no API endpoint")
    return claims, kid, sig


__all__ = ["DEFAULT_TTL", "JoinClaims", "SigningKey", "parse_ttl", "read_token", "token_ca_pin", "token_hash"]
