"""OIDC sign-in as ZLayer configures it: providers from ``ZLAYER_OIDC_<NAME>_{ISSUER, CLIENT_ID, CLIENT_SECRET,
REDIRECT_URL, DISPLAY_NAME, SCOPES}`` (scopes default ``openid,email,profile``; ``openid`` always). The
authorization-code flow with PKCE (S256): :meth:`Oidc.start` keeps a state, a nonce and a code verifier for ten
minutes, each usable once; :meth:`Oidc.callback` exchanges the code, verifies the ID token against the provider's
JWKS (signature, issuer, audience, expiry, nonce: ``joserfc``) and maps ``(provider, sub)`` to a local account —
an account already linked, else the one with the token's verified email, else a new ``user`` account."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from zlayer.errors import AuthError, NotFoundError, ZLayerError
from zlayer.security.store import User

PENDING_SECS = 600
HttpJson = Callable[[str, str, Mapping[str, str] | None], Awaitable[Any]]  # (method, url, form) -> JSON


@dataclass(frozen=True)
class Provider:
    name: str
    issuer: str
    client_id: str
    client_secret: str
    redirect_url: str
    display_name: str
    scopes: tuple[str, ...]


def providers_from_env(env: Mapping[str, str]) -> dict[str, Provider]:
    """Every ``ZLAYER_OIDC_<NAME>_ISSUER`` with its client id and redirect URL; names are lower-cased."""
    out = {}
    for key, issuer in env.items():
        if not (key.startswith("ZLAYER_OIDC_") and key.endswith("_ISSUER")) or not issuer:
            continue
        up = key[len("ZLAYER_OIDC_") : -len("_ISSUER")]
        client, redirect = env.get(f"ZLAYER_OIDC_{up}_CLIENT_ID"), env.get(f"ZLAYER_OIDC_{up}_REDIRECT_URL")
        if not up or not client or not redirect:
            continue
        scopes = [s.strip() for s in env.get(f"ZLAYER_OIDC_{up}_SCOPES", "openid,email,profile").split(",")]
        scopes = ["openid", *[s for s in scopes if s and s != "openid"]]
        secret, shown = env.get(f"ZLAYER_OIDC_{up}_CLIENT_SECRET", ""), env.get(f"ZLAYER_OIDC_{up}_DISPLAY_NAME")
        out[up.lower()] = Provider(up.lower(), issuer.rstrip("/"), client, secret, redirect, shown or up.title(),
                                   tuple(scopes))  # fmt: skip
    return out


async def aiohttp_json(method: str, url: str, form: Mapping[str, str] | None) -> Any:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=15)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                method, url, data=dict(form) if form is not None else None, headers={"Accept": "application/json"}
            ) as resp,
        ):
            body = await resp.read()
            if resp.status >= 400:
                raise AuthError(f"the identity provider answered {resp.status} at {url}")
    except aiohttp.ClientError as e:
        raise AuthError(f"the identity provider at {url} cannot be reached: {e}") from e
    from zlayer.limits import load_json

    return load_json(body, where=url, error=AuthError)


@dataclass
class _Pending:
    provider: str
    nonce: str
    verifier: str
    expires: float


class Oidc:
    """The sign-in flows of the configured providers; ``accounts`` finds or makes the local account."""

    def __init__(self, providers: Mapping[str, Provider], accounts: Any, http: HttpJson = aiohttp_json) -> None:
        self.providers = dict(providers)
        self.accounts = accounts
        self.http = http
        self._pending: dict[str, _Pending] = {}
        self._meta: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def provider(self, name: str) -> Provider:
        got = self.providers.get(name)
        if got is None:
            raise NotFoundError(f"no OIDC provider {name!r}", where=f"auth/oidc/{name}")
        return got

    async def discovery(self, p: Provider) -> dict[str, Any]:
        cached = self._meta.get(p.name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        doc = await self.http("GET", f"{p.issuer}/.well-known/openid-configuration", None)
        if not isinstance(doc, dict) or doc.get("issuer", "").rstrip("/") != p.issuer:
            raise AuthError(f"the discovery document of {p.issuer} names another issuer")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(field), str):
                raise AuthError(f"the discovery document of {p.issuer} has no {field}")
        self._meta[p.name] = (time.monotonic() + 3600, doc)
        return doc

    async def start(self, name: str) -> str:
        """The provider's authorization URL for a new sign-in (state, nonce and PKCE kept here, each used once)."""
        p = self.provider(name)
        doc = await self.discovery(p)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        now = time.monotonic()
        with self._lock:
            self._pending = {k: v for k, v in self._pending.items() if v.expires > now}
            if len(self._pending) > 10_000:
                raise AuthError("too many sign-ins in progress; try again later")
            self._pending[state] = _Pending(name, nonce, verifier, now + PENDING_SECS)
        query = {"response_type": "code", "client_id": p.client_id, "redirect_uri": p.redirect_url,
                 "scope": " ".join(p.scopes), "state": state, "nonce": nonce, "code_challenge": challenge,
                 "code_challenge_method": "S256"}  # fmt: skip
        sep = "&" if "?" in doc["authorization_endpoint"] else "?"
        return f"{doc['authorization_endpoint']}{sep}{urlencode(query)}"

    async def callback(self, name: str, code: str, state: str) -> User:
        """The local account of a completed sign-in; :class:`AuthError` for an unknown, reused or expired state,
        a refused code, or an ID token that does not verify."""
        with self._lock:
            pending = self._pending.pop(state, None)
        if pending is None or pending.provider != name or pending.expires < time.monotonic():
            raise AuthError("unknown or expired sign-in (state)")
        p = self.provider(name)
        doc = await self.discovery(p)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": p.redirect_url,
                "client_id": p.client_id, "code_verifier": pending.verifier}  # fmt: skip
        if p.client_secret:
            form["client_secret"] = p.client_secret
        tokens = await self.http("POST", doc["token_endpoint"], form)
        id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
        if not isinstance(id_token, str):
            raise AuthError("the identity provider returned no ID token")
        claims = await self._verify(p, doc, id_token, pending.nonce)
        return self._account(p, claims)

    async def _verify(self, p: Provider, doc: dict[str, Any], id_token: str, nonce: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet
        from joserfc.jwt import JWTClaimsRegistry

        jwks = await self.http("GET", doc["jwks_uri"], None)
        try:
            keys = KeySet.import_key_set(jwks)
            token = jwt.decode(id_token, keys, algorithms=["RS256", "ES256", "PS256", "EdDSA"])
            JWTClaimsRegistry(iss={"essential": True, "value": p.issuer}, sub={"essential": True},
                              exp={"essential": True}, nonce={"essential": True, "value": nonce},
                              leeway=60).validate(token.claims)  # fmt: skip
        except (JoseError, ValueError, TypeError, KeyError) as e:
            raise AuthError(f"the ID token does not verify: {type(e).__name__}") from None
        aud = token.claims.get("aud")
        if p.client_id not in (aud if isinstance(aud, list) else [aud]):
            raise AuthError("the ID token is for another client (aud)")
        return dict(token.claims)

    def _account(self, p: Provider, claims: dict[str, Any]) -> User:
        store = self.accounts.store
        subject = str(claims["sub"])
        linked = store.get_identity(p.name, subject)
        user = store.get_user(linked) if linked else None
        if user is None:
            email = claims.get("email")
            if isinstance(email, str) and claims.get("email_verified") is True:
                user = store.user_by_email(email)
            if user is None:
                address = email if isinstance(email, str) and "@" in email else f"{subject}@{p.name}.oidc"
                name = claims.get("name") if isinstance(claims.get("name"), str) else None
                try:
                    user = self.accounts.create_user(address, secrets.token_urlsafe(32), "user", name)
                except ZLayerError as e:  # an account with that (unverified) email exists: not taken over
                    raise AuthError("this identity's email belongs to another account") from e
            store.add_identity(p.name, subject, user.id)
        if not user.is_active:
            raise AuthError("invalid credentials")
        return user


__all__ = ["Oidc", "Provider", "aiohttp_json", "providers_from_env"]
