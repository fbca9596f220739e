"""``serve --api-tls-acme DOMAIN``: the TCP API's certificate comes from an ACME CA (the proxy's client,
:class:`zlayer.proxy.acme.CertManager`, HTTP-01, ``--acme-directory``/``--acme-email``) and is renewed in place.

The API is never served in plain under this flag: until a certificate for DOMAIN is at hand (one kept in
``DATA/api-tls`` from an earlier start, or a newly issued one), the TCP port is bound but not listening (clients are
refused at once), the unix socket serves as always, and the daemon logs why and tries again. HTTP-01 is answered on
port 80 by a :class:`~zlayer.proxy.acme.ChallengeServer` for the time of an order; when port 80 is the proxy's
(a deployment publishes it), the proxy's L7 plane answers instead. A renewed certificate is loaded into the
listener's TLS context: the next handshake presents it, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from zlayer.errors import ProxyError
from zlayer.proxy.acme import LETSENCRYPT, RENEW_EVERY, CertManager, ChallengeServer
from zlayer.proxy.certs import CertificateInfo, CertStore

log = logging.getLogger("zlayer.daemon")

RETRY = (15.0, 60.0, 300.0)  # seconds before the next try after a failed order: quick at first, then every 5 min


class ApiCertificate:
    """The API listener's ACME certificate: obtained before the TCP API serves, renewed within 30 days of expiry."""

    def __init__(self, domain: str, directory: Path, *, directory_url: str | None, email: str | None,
                 proxy_l7: Any = None, challenge_port: int = 80) -> None:  # fmt: skip
        self.domain = domain
        self.store = CertStore(directory)
        self.proxy_l7 = proxy_l7  # the proxy's L7 plane: answers HTTP-01 when port 80 is the proxy's
        self.challenge_port = challenge_port
        self.manager = CertManager(self.store, ChallengeServer(port=challenge_port),
                                   directory_url=directory_url or LETSENCRYPT, email=email)  # fmt: skip
        self.context: ssl.SSLContext | None = None  # the listener's, once it serves: renewals load into it

    def current(self) -> CertificateInfo | None:
        """The kept ACME certificate of the domain while it is still valid (a renewal may be due)."""
        try:
            found = self.store.load(self.domain)
        except ProxyError:
            return None
        if found is None or found.source != "acme" or found.not_after <= dt.datetime.now(dt.UTC):
            return None
        return found

    async def issue(self) -> CertificateInfo:
        """Orders a certificate now, answering HTTP-01 on port 80 (or through the proxy holding it)."""
        server = ChallengeServer(port=self.challenge_port)
        try:
            await server.start()
            self.manager.responder = server
        except ProxyError as e:
            if self.proxy_l7 is None or not self.proxy_l7.serving:
                raise ProxyError(f"{e} (HTTP-01 is answered on port {self.challenge_port})") from None
            self.manager.responder = self.proxy_l7  # port 80 is the proxy's: its L7 plane answers the challenge
            server = None  # type: ignore[assignment]
        try:
            return await self.manager.issue([self.domain])
        finally:
            if server is not None:
                await server.stop()

    async def obtain(self, stopping: asyncio.Event) -> CertificateInfo | None:
        """A certificate to serve: the kept one, else one issued now, tried again after each failure until it is
        issued or the daemon stops (None then)."""
        found = self.current()
        if found is not None:
            return found
        attempt = 0
        while not stopping.is_set():
            try:
                return await self.issue()
            except (ProxyError, aiohttp.ClientError, TimeoutError, OSError) as e:
                wait = RETRY[min(attempt, len(RETRY) - 1)]
                attempt += 1
                log.error("API over TLS: no ACME certificate for %s from %s yet: %s — the TCP API stays closed "
                          "(never served in plain; the unix socket serves); trying again in %.0f s",
                          self.domain, self.manager.directory_url, _one_line(e), wait)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
        return None

    async def renew(self, on_renewed: Any = None, every: float = RENEW_EVERY) -> None:
        """Every ``every`` seconds: a certificate within 30 days of expiry is re-issued and loaded into the
        listener (a failure is logged; the current one is served on and the next round tries again)."""
        while True:
            found = self.current()
            if found is None or found.needs_renewal():
                try:
                    info = await self.issue()
                except (ProxyError, aiohttp.ClientError, TimeoutError, OSError) as e:
                    log.error("API over TLS: renewing the certificate of %s failed: %s (tried again in %.0f s)",
                              self.domain, _one_line(e), every)  # fmt: skip
                else:
                    if self.context is not None:
                        self.context.load_cert_chain(str(info.cert_file), str(info.key_file))
                    log.info("API over TLS: renewed certificate of %s, valid until %s", self.domain,
                             info.not_after.isoformat())  # fmt: skip
                    if on_renewed is not None:
                        await on_renewed()
            await asyncio.sleep(every)


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    where = getattr(e, "where", None)
    return " ".join((f"{text} ({where})" if where and where not in text else text).split())


__all__ = ["ApiCertificate"]
