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
from zlayer.spec.models import ServiceSpec

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


def test_manager_swaps_the_acme_certificate_into_a_live_tls_stream(proxy_pebble, proxy_l4_tcp_echo, tmp_path) -> None:
    import socket

    from tests.fixtures.proxy_l4 import free_port
    from zlayer.proxy import ProxyManager

    echo = proxy_l4_tcp_echo()
    port = free_port()
    ctx = ssl.create_default_context(cafile=str(proxy_pebble.ca_file))
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    def served_issuer() -> x509.Name:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            insecure.wrap_socket(raw, server_hostname="db.zlayer.test") as s,
        ):
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).issuer

    async def main() -> None:
        responder = ChallengeServer("127.0.0.1", proxy_pebble.http_port)
        await responder.start()
        m = ProxyManager(data_dir=tmp_path)
        await m.start()
        try:
            ep = {"name": "pg", "protocol": "tcp", "port": port, "host": "db.zlayer.test", "stream": {"tls": True}}
            await m.add_service("demo", "db", ServiceSpec.model_validate({"image": {"name": "x"}, "endpoints": [ep]}))
            await m.update_backends("db", [("127.0.0.1", echo.port)])
            first = await asyncio.to_thread(served_issuer)
            assert first.rfc4514_string() == "CN=db.zlayer.test"  # self-signed until ACME delivers
            m.enable_acme(directory_url=proxy_pebble.directory, responder=responder, ssl_context=ctx)
            intermediate = pebble_intermediate(proxy_pebble).subject
            for _ in range(200):
                if await asyncio.to_thread(served_issuer) == intermediate:
                    break
                await asyncio.sleep(0.1)
            assert await asyncio.to_thread(served_issuer) == intermediate
            from zlayer.proxy.api_models import tls_response

            tls = tls_response(m)
            assert tls.acme_available and [c.domain for c in tls.certificates] == ["db.zlayer.test"]
        finally:
            await m.close()
            await responder.stop()

    asyncio.run(main())
