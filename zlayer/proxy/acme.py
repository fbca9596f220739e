"""ACME (RFC 8555) certificate issuance and renewal with HTTP-01 challenges, on aiohttp and cryptography.

Flow: directory → newNonce → newAccount (ES256 JWS with the account's P-256 key; then the account URL as ``kid``)
→ newOrder → each authorization's http-01 challenge (token served at ``/.well-known/acme-challenge/<token>`` by the
L7 proxy or by :class:`ChallengeServer`) → finalize with a CSR → download the PEM chain. ``badNonce`` answers are
retried with the fresh nonce, as RFC 8555 §6.5 asks. :class:`CertManager` stores results with
:class:`~zlayer.proxy.certs.CertStore` and renews certificates within 30 days of expiry (checked every 12 h).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from zlayer.errors import ProxyError
from zlayer.proxy.certs import CertificateInfo, CertStore, key_pem, new_key, write_atomic

log = logging.getLogger("zlayer.proxy.acme")

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
RENEW_EVERY = 12 * 3600.0
VALIDATION_TIMEOUT = 120.0


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": b64u(nums.x.to_bytes(32, "big")), "y": b64u(nums.y.to_bytes(32, "big"))}


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint (members in lexical order, no whitespace), base64url."""
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def jws(key: ec.EllipticCurvePrivateKey, protected: dict[str, Any], payload: Any) -> dict[str, str]:
    """A flattened JWS signed with ES256. ``payload`` None means POST-as-GET (empty payload)."""
    prot = b64u(json.dumps(protected, separators=(",", ":")).encode())
    body = "" if payload is None else b64u(json.dumps(payload, separators=(",", ":")).encode())
    der = key.sign(f"{prot}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return {"protected": prot, "payload": body, "signature": b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}


def csr_der(domains: Sequence[str], key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


class ChallengeResponder(Protocol):
    """Whatever answers ``GET /.well-known/acme-challenge/<token>`` with the key authorization."""

    def set_challenge(self, token: str, key_authorization: str) -> None: ...

    def remove_challenge(self, token: str) -> None: ...


class ChallengeServer:
    """A small HTTP-01 responder of our own (used when the L7 proxy does not serve port 80 on this node)."""

    def __init__(self, host: str = "0.0.0.0", port: int = 80) -> None:
        self.host, self.port = host, port
        self.tokens: dict[str, str] = {}
        self._runner: web.AppRunner | None = None

    def set_challenge(self, token: str, key_authorization: str) -> None:
        self.tokens[token] = key_authorization

    def remove_challenge(self, token: str) -> None:
        self.tokens.pop(token, None)

    async def _serve(self, request: web.Request) -> web.Response:
        answer = self.tokens.get(request.match_info["token"])
        if answer is None:
            return web.Response(status=404, text="unknown ACME challenge token\n")
        return web.Response(text=answer, content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/acme-challenge/{token}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ProxyError(f"ACME challenge responder cannot bind {self.host}:{self.port}: {exc.strerror}") from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class Account:
    key: ec.EllipticCurvePrivateKey
    url: str | None = None


class AcmeClient:
    """One ACME account talking to one directory."""

    def __init__(self, directory_url: str, account: Account, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.directory_url = directory_url
        self.account = account
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._dir: dict[str, Any] = {}
        self._nonce: str | None = None

    async def __aenter__(self) -> AcmeClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        try:
            async with self._session.get(self.directory_url) as resp:
                if resp.status != 200:
                    raise ProxyError(f"ACME directory answered {resp.status}", where=self.directory_url)
                self._dir = await resp.json(content_type=None)
        except BaseException:  # no __aexit__ follows a failed __aenter__: the session closes here
            await self._session.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use AcmeClient as an async context manager"
        return self._session

    async def _new_nonce(self) -> str:
        async with self.session.head(self._dir["newNonce"]) as resp:
            nonce = resp.headers.get("Replay-Nonce")
        if not nonce:
            raise ProxyError("ACME server gave no Replay-Nonce", where=self._dir["newNonce"])
        return nonce

    async def post(self, url: str, payload: Any, *, use_jwk: bool = False) -> tuple[int, dict[str, str], Any]:
        """A signed POST (payload None = POST-as-GET); returns status, headers and the decoded body."""
        for _ in range(5):
            nonce = self._nonce or await self._new_nonce()
            self._nonce = None
            protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
            if use_jwk or not self.account.url:
                protected["jwk"] = jwk_of(self.account.key)
            else:
                protected["kid"] = self.account.url
            body = jws(self.account.key, protected, payload)
            async with self.session.post(
                url, data=json.dumps(body), headers={"Content-Type": "application/jose+json"}
            ) as resp:
                self._nonce = resp.headers.get("Replay-Nonce")
                ctype = resp.headers.get("Content-Type", "")
                data: Any = await resp.json(content_type=None) if "json" in ctype else await resp.text()
                if resp.status == 400 and isinstance(data, dict) and data.get("type", "").endswith(":badNonce"):
                    continue
                if resp.status >= 400:
                    detail = data.get("detail", data) if isinstance(data, dict) else data
                    raise ProxyError(f"ACME server refused the request ({resp.status}): {detail}", where=url)
                return resp.status, dict(resp.headers), data
        raise ProxyError("ACME server kept rejecting nonces", where=url)

    async def register(self, email: str | None = None) -> str:
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if email:
            payload["contact"] = [f"mailto:{email}"]
        _, headers, _ = await self.post(self._dir["newAccount"], payload, use_jwk=True)
        self.account.url = headers["Location"]
        return self.account.url

    async def _poll(self, url: str, done: set[str], timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            _, _, obj = await self.post(url, None)
            if obj.get("status") in done:
                return dict(obj)
            if obj.get("status") == "invalid":
                problem = obj.get("error") or next(
                    (c.get("error") for c in obj.get("challenges", []) if c.get("error")), obj
                )
                raise ProxyError(f"ACME validation failed: {problem}", where=url)
            if loop.time() > deadline:
                raise ProxyError(f"ACME object still {obj.get('status')!r} after {timeout:.0f}s", where=url)
            await asyncio.sleep(0.5)

    async def issue(
        self, domains: Sequence[str], responder: ChallengeResponder, timeout: float = VALIDATION_TIMEOUT
    ) -> tuple[bytes, bytes]:
        """Orders a certificate for ``domains`` (HTTP-01); returns (PEM chain, PEM key)."""
        if not self.account.url:
            await self.register()
        _, headers, order = await self.post(
            self._dir["newOrder"], {"identifiers": [{"type": "dns", "value": d} for d in domains]}
        )
        order_url = headers["Location"]
        tokens: list[str] = []
        try:
            for authz_url in order["authorizations"]:
                _, _, authz = await self.post(authz_url, None)
                if authz.get("status") == "valid":
                    continue
                chal = next((c for c in authz["challenges"] if c["type"] == "http-01"), None)
                if chal is None:
                    raise ProxyError("the ACME server offers no http-01 challenge", where=authz_url)
                responder.set_challenge(chal["token"], f"{chal['token']}.{thumbprint(jwk_of(self.account.key))}")
                tokens.append(chal["token"])
                await self.post(chal["url"], {})
                await self._poll(authz_url, {"valid"}, timeout)
            key = new_key()
            await self.post(order["finalize"], {"csr": b64u(csr_der(domains, key))})
            order = await self._poll(order_url, {"valid"}, timeout)
            _, _, chain = await self.post(order["certificate"], None)
        finally:
            for token in tokens:
                responder.remove_challenge(token)
        return str(chain).encode(), key_pem(key)


class CertManager:
    """Certificates by ACME for domains this node serves, stored in a CertStore and renewed before expiry."""

    def __init__(
        self,
        store: CertStore,
        responder: ChallengeResponder,
        *,
        directory_url: str = LETSENCRYPT,
        email: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_issued: Callable[[CertificateInfo], Awaitable[None] | None] | None = None,
    ) -> None:
        self.store = store
        self.responder = responder
        self.directory_url = directory_url
        self.email = email
        self._ssl = ssl_context
        self.on_issued = on_issued
        self._task: asyncio.Task[None] | None = None

    def _account_path(self) -> Path:
        return self.store.directory / "account.json"

    def _load_account(self) -> Account:
        path = self._account_path()
        try:
            body = json.loads(path.read_text())
            key = serialization.load_pem_private_key(body["key"].encode(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey) and body.get("directory") == self.directory_url:
                return Account(key, body.get("url"))
        except (OSError, ValueError, KeyError):
            pass
        return Account(new_key())

    def _save_account(self, account: Account) -> None:
        body = {"directory": self.directory_url, "url": account.url, "key": key_pem(account.key).decode()}
        write_atomic(self._account_path(), json.dumps(body, indent=2).encode(), 0o600)

    async def issue(self, domains: Sequence[str]) -> CertificateInfo:
        account = self._load_account()
        async with AcmeClient(self.directory_url, account, ssl_context=self._ssl) as client:
            if not account.url:
                await client.register(self.email)
                self._save_account(account)
            chain, key = await client.issue(domains, self.responder)
        info = self.store.save(domains[0], chain, key, "acme")
        log.info("ACME certificate for %s valid until %s", domains[0], info.not_after.isoformat())
        if self.on_issued is not None:
            result = self.on_issued(info)
            if asyncio.iscoroutine(result):
                await result
        return info

    async def ensure(self, domain: str) -> CertificateInfo:
        """The stored ACME certificate of ``domain`` when it is not due for renewal, else a newly issued one."""
        found = self.store.load(domain)
        if found is not None and found.source == "acme" and not found.needs_renewal():
            return found
        return await self.issue([domain])

    async def renew_due(self) -> list[CertificateInfo]:
        """Re-issues every ACME certificate within 30 days of expiry; a failure is logged and retried next round."""
        renewed = []
        for cert in self.store.all():
            if cert.source == "acme" and cert.needs_renewal():
                try:
                    renewed.append(await self.issue([cert.domain]))
                except (ProxyError, aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("renewing the certificate of %s failed: %s", cert.domain, exc)
        return renewed

    def start(self, every: float = RENEW_EVERY) -> None:
        async def loop() -> None:
            while True:
                await self.renew_due()
                await asyncio.sleep(every)

        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(loop(), name="zlayer-acme-renewal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


__all__ = [
    "LETSENCRYPT",
    "LETSENCRYPT_STAGING",
    "AcmeClient",
    "CertManager",
    "ChallengeResponder",
    "ChallengeServer",
    "jwk_of",
    "jws",
    "thumbprint",
]
