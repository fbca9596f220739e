"""A joiner sends its token only over TLS to an API whose certificate the cluster CA its token pins signed: an API
that answers with another CA's certificate — whatever CA document it hands out — is refused with one clear line and
has never seen the token; the cluster's own API gets it."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from zlayer.cluster import pki
from zlayer.cluster.membership import ClusterNode
from zlayer.cluster.tokens import SigningKey
from zlayer.errors import AuthError, DaemonError
from zlayer.state import SqliteStore
from zlayer.state.switch import SwitchingStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ca_and_node(tmp_path: Path, name: str) -> tuple[str, ssl.SSLContext]:
    """A CA (PEM) and a server context presenting a node certificate it signed (for 127.0.0.1); the CA's revocation
    list is in ``tmp_path/name/crl.pem``."""
    ca, ca_key = pki.make_ca(name)
    key = pki.new_key()
    cert = pki.sign_node(ca, ca_key, key.public_key(), ["127.0.0.1"])
    tls = pki.NodeTLS(tmp_path / name)
    tls.write(pki.cert_pem(ca), pki.cert_pem(cert), pki.key_pem(key), pki.make_crl(ca, ca_key, []))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls.api_pair())
    return pki.cert_pem(ca).decode(), ctx


@asynccontextmanager
async def _api(
    served_ca: str, server_tls: ssl.SSLContext | None, seen: list[dict[str, Any]], crl: str = ""
) -> AsyncIterator[str]:
    """An API on 127.0.0.1 that hands out ``served_ca`` (and ``crl``) and keeps every join request it reads (it
    refuses them)."""

    async def ca(_: web.Request) -> web.Response:
        return web.json_response({"ca_cert": served_ca, "crl": crl})

    async def join(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"code": "unauthorized", "message": "refused here"}, status=401)

    app = web.Application()
    app.router.add_get("/api/v1/cluster/ca", ca)
    app.router.add_post("/api/v1/cluster/join", join)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _join(tmp_path: Path, api: str, pin: str) -> tuple[ClusterNode, str, Any]:
    token, _ = SigningKey().issue(api, "127.0.0.1:9000", "node-1", ca_pin=pin)
    node = ClusterNode(tmp_path / "cluster", tmp_path / "etcd.log", SwitchingStore(SqliteStore(tmp_path / "s.db")),
                       tmp_path, 3669)  # fmt: skip
    return node, token, node.join(None, token, "127.0.0.1", raft_port=_free_port(), client_port=_free_port())


@pytest.mark.parametrize("served", ["the cluster's CA", "its own CA"])
def test_an_api_whose_certificate_the_pinned_ca_did_not_sign_never_gets_the_token(tmp_path: Path, served: str) -> None:
    cluster_ca, _ = _ca_and_node(tmp_path, "cluster")
    own_ca, impostor_tls = _ca_and_node(tmp_path, "impostor")
    seen: list[dict[str, Any]] = []

    async def run() -> None:
        # the cluster's CA is public, so an impostor may hand it out; its certificate is still not the CA's
        async with _api(cluster_ca if served == "the cluster's CA" else own_ca, impostor_tls, seen) as api:
            node, _, joining = _join(tmp_path, api, pki.ca_hash(cluster_ca.encode()))
            with pytest.raises(AuthError) as e:
                await joining
            assert f"the API at {api} presents a certificate not signed by the cluster CA the token pins" in str(
                e.value
            )
            assert not node.tls.exists() and not (tmp_path / "cluster" / "node.json").exists()

    asyncio.run(run())
    assert seen == []


def test_an_api_in_plain_http_never_gets_a_pinned_token(tmp_path: Path) -> None:
    cluster_ca, _ = _ca_and_node(tmp_path, "cluster")
    seen: list[dict[str, Any]] = []

    async def run() -> None:
        async with _api(cluster_ca, None, seen) as api:
            with pytest.raises(DaemonError, match=f"the API at {api} does not answer over TLS"):
                await _join(tmp_path, api, pki.ca_hash(cluster_ca.encode()))[2]

    asyncio.run(run())
    assert seen == []


def test_the_api_the_pinned_ca_signed_gets_the_token_over_tls(tmp_path: Path) -> None:
    cluster_ca, cluster_tls = _ca_and_node(tmp_path, "cluster")
    seen: list[dict[str, Any]] = []

    async def run() -> str:
        crl = (tmp_path / "cluster" / "crl.pem").read_text()  # checked too: a removed node's certificate is refused
        async with _api(cluster_ca, cluster_tls, seen, crl) as api:
            _, token, joining = _join(tmp_path, api, pki.ca_hash(cluster_ca.encode()))
            with pytest.raises(AuthError, match="refused here"):  # what the API answered, as it said it
                await joining
            return token

    token = asyncio.run(run())
    assert [s["token"] for s in seen] == [token]


def test_a_removed_nodes_certificate_never_gets_the_token(tmp_path: Path) -> None:
    ca, ca_key = pki.make_ca("cluster")
    removed_key = pki.new_key()
    removed = pki.sign_node(ca, ca_key, removed_key.public_key(), ["127.0.0.1"])  # the CA's, then revoked
    tls = pki.NodeTLS(tmp_path / "removed")
    crl = pki.make_crl(ca, ca_key, [removed.serial_number])
    tls.write(pki.cert_pem(ca), pki.cert_pem(removed), pki.key_pem(removed_key), crl)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*tls.api_pair())
    seen: list[dict[str, Any]] = []

    async def run() -> None:
        async with _api(pki.cert_pem(ca).decode(), server, seen, crl.decode()) as api:
            with pytest.raises(AuthError, match=f"the API at {api} presents a certificate the cluster CA revoked"):
                await _join(tmp_path, api, pki.ca_hash(ca))[2]

    asyncio.run(run())
    assert seen == []
