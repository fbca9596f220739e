"""Bearer tokens as ZLayer issues them: HS256 JWTs signed with the daemon's secret (``--jwt-secret`` /
``ZLAYER_JWT_SECRET``, else a secret generated once and kept in ``{data}/jwt_secret``), claims ``sub``, ``exp``,
``iat``, ``iss`` (always ``zlayer``) and ``roles``. The daemon writes a 24 h ``local-admin`` token to
``{data}/admin_bearer.token`` for local CLI use; ``zlayer token create`` mints others from the same secret.

The token format sits below the API (which verifies tokens) and the CLI (which mints and decodes them without a
daemon); what a token may do on which route is the API's (:mod:`zlayer.api.auth`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

from zlayer.errors import AuthError
from zlayer.limits import load_json
from zlayer.paths import write_atomic

ISSUER = "zlayer"
SECRET_FILE = "jwt_secret"
BEARER_FILE = "admin_bearer.token"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create_token(
    secret: str, subject: str, expiry_secs: int, roles: list[str] | None = None, extra: dict[str, Any] | None = None
) -> str:
    """An HS256 JWT; ``extra`` claims ride along (a user's session names its account in ``uid``, an API key's
    token its key in ``kid``: :mod:`zlayer.security` checks both still exist on every request)."""
    now = int(time.time())
    claims = {**(extra or {}), "sub": subject, "exp": now + int(expiry_secs), "iat": now, "iss": ISSUER,
              "roles": list(roles or [])}  # fmt: skip
    head = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def decode_token(token: str) -> dict[str, Any]:
    """The claims of a token, unverified (``zlayer token decode``)."""
    try:
        _, body, _ = token.strip().split(".")
        claims = load_json(_unb64(body), where="token", error=AuthError)
    except (ValueError, binascii.Error) as e:
        raise AuthError("not a JWT (expected three base64url parts separated by dots)") from e
    if not isinstance(claims, dict):
        raise AuthError("not a JWT: its claims are not a JSON object")
    return claims


def verify_token(secret: str, token: str, now: float | None = None) -> dict[str, Any]:
    """The claims of a valid token; :class:`AuthError` saying why otherwise (signature, expiry, issuer)."""
    try:
        head, body, sig = token.strip().split(".")
        header = load_json(_unb64(head), where="token", error=AuthError)
        given = _unb64(sig)
    except (ValueError, binascii.Error) as e:
        raise AuthError("invalid token: not a JWT") from e
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise AuthError("invalid token: only HS256 tokens are accepted")
    want = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(want, given):
        raise AuthError("invalid token: bad signature")
    claims = decode_token(token)
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp < (time.time() if now is None else now):
        raise AuthError("invalid token: expired")
    if claims.get("iss") != ISSUER:
        raise AuthError("invalid token: wrong issuer")
    return claims


def load_or_create_secret(data_dir: Path) -> str:
    """The node's signing secret, generated once (64 random bytes, hex) and kept with mode 0600."""
    path = data_dir / SECRET_FILE
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(64)
    write_atomic(path, secret + "\n")
    return secret


def write_admin_bearer(data_dir: Path, secret: str, hours: int = 24) -> str:
    """Mint the ``local-admin`` token and keep it in ``{data}/admin_bearer.token`` (mode 0600)."""
    token = create_token(secret, "local-admin", hours * 3600, ["admin"])
    write_atomic(data_dir / BEARER_FILE, token + "\n")
    return token


__all__ = [
    "BEARER_FILE",
    "SECRET_FILE",
    "create_token",
    "decode_token",
    "load_or_create_secret",
    "verify_token",
    "write_admin_bearer",
]
