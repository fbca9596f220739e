"""ACME HTTP-01 issuance and renewal against Debian's pebble, with our own challenge responder."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import urllib.request

import pytest
from cryptography import x509

from zlayer.errors import ProxyError
from zlayer.proxy.acme import CertManager, ChallengeServer
from zlayer.proxy.certs import CertStore

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def pebble_intermediate(pebble) -> x509.Certificate:
    ctx = ssl.create_default_context(cafile=str(pebble.ca_file))
    with urllib.request.urlopen(f"{pebble.management}/intermediates/0", context=ctx, timeout=10) as resp:
        return x509.load_pem_x509_certificate(resp.read())


def test_certificate_is_issued_over_http01_then_renewed(proxy_pebble, tmp_path) -> None:
    ctx = ssl.create_default_context(cafile=str(proxy_pebble.ca_file))
    store = CertStore(tmp_path / "certs")

    async def main() -> None:
        responder = ChallengeServer("127.0.0.1", proxy_pebble.http_port)
        await responder.start()
        try:
            mgr = CertManager(store, responder, directory_url=proxy_pebble.directory, ssl_context=ctx)
            first = await mgr.ensure("app.zlayer.test")
            assert first.source == "acme"
            again = await mgr.ensure("app.zlayer.test")  # valid and far from expiry: not re-issued
            assert again.fingerprint == first.fingerprint
            assert responder.tokens == {}  # tokens are withdrawn once validated

            chain = x509.load_pem_x509_certificates(first.cert_file.read_bytes())
            leaf = chain[0]
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == ["app.zlayer.test"]
            assert leaf.issuer == pebble_intermediate(proxy_pebble).subject
            account = json.loads((tmp_path / "certs" / "account.json").read_text())
            assert account["url"].startswith("https://127.0.0.1")

            # Pebble issues for ~5 years; pretend we are 30 days before expiry: renew_due re-issues it.
            meta = tmp_path / "certs" / "app.zlayer.test.meta.json"
            assert json.loads(meta.read_text())["source"] == "acme"
            import zlayer.proxy.certs as certs_mod

            real = certs_mod.CertificateInfo.needs_renewal
            certs_mod.CertificateInfo.needs_renewal = lambda self, now=None: real(  # type: ignore[method-assign]
                self, self.not_after - dt.timedelta(days=29)
            )
            try:
                renewed = await mgr.renew_due()
            finally:
                certs_mod.CertificateInfo.needs_renewal = real  # type: ignore[method-assign]
            assert [c.domain for c in renewed] == ["app.zlayer.test"]
            assert renewed[0].fingerprint != first.fingerprint
            assert store.load("app.zlayer.test").fingerprint == renewed[0].fingerprint  # type: ignore[union-attr]
        finally:
            await responder.stop()

    asyncio.run(main())


def test_failed_validation_is_a_clear_error(proxy_pebble, tmp_path) -> None:
    ctx = ssl.create_default_context(cafile=str(proxy_pebble.ca_file))

    class Silent:  # never serves the token: pebble's validation must fail
        def set_challenge(self, token: str, key_authorization: str) -> None: ...

        def remove_challenge(self, token: str) -> None: ...

    async def main() -> None:
        mgr = CertManager(
            CertStore(tmp_path / "certs"), Silent(), directory_url=proxy_pebble.directory, ssl_context=ctx
        )
        with pytest.raises(ProxyError, match="ACME validation failed"):
            await mgr.issue(["nobody.zlayer.test"])
        assert not (tmp_path / "certs" / "nobody.zlayer.test.crt").exists()

    asyncio.run(main())
