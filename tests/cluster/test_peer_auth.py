"""Peer credentials (zlayer/cluster/peer.py) checked against a real etcd: a node's signed call is taken once, for the
request it was signed for, by the node it names, while its sender is a registered node whose published key signed
it; every other case is refused saying why."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest

from zlayer.cluster.etcd import EtcdProcess
from zlayer.cluster.peer import NODES, PEERS, TTL, PeerAuth
from zlayer.errors import AuthError
from zlayer.state.etcd import EtcdClient

pytestmark = pytest.mark.peer

LOGS = "/api/v1/cluster/peer/containers/web-rep-1/logs?tail=5"


def test_a_members_credential_is_taken_once_and_nothing_else_is(etcd: EtcdProcess, tmp_path: Path) -> None:
    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        one, two = PeerAuth(tmp_path / "one"), PeerAuth(tmp_path / "two")
        for node, auth in (("1", one), ("2", two)):
            await client.put(NODES + node, {"node": {"id": node}})
            await auth.entered(client, node, "start")
        assert (tmp_path / "one" / "peer.key").stat().st_mode & 0o777 == 0o600
        assert (await one.peer("2"))["public_key"] == two.public_b64()

        async def refused(credential: str, method: str = "GET", target: str = LOGS, now: float | None = None) -> str:
            with pytest.raises(AuthError) as e:
                await two.verify(credential, method, target, now=now)
            return e.value.message

        good = one.sign("2", "GET", LOGS, "alice")
        claims = await two.verify(good, "GET", LOGS)
        assert (claims.issuer, claims.actor) == ("1", "alice")
        assert "used already" in await refused(good)  # a replay
        assert "another request" in await refused(one.sign("2", "GET", LOGS, "a"), "GET", LOGS.replace("5", "9"))
        assert "another request" in await refused(one.sign("2", "GET", LOGS, "a"), "POST")
        assert "not this one" in await refused(one.sign("3", "GET", LOGS, "alice"))
        assert "expired" in await refused(one.sign("2", "GET", LOGS, "a"), now=time.time() + TTL + 1)
        forger = PeerAuth(tmp_path / "forger")
        forger.node_id = "1"  # claims to be node 1, with a key of its own
        assert "signature" in await refused(forger.sign("2", "GET", LOGS, "mallory"))
        assert "not a peer credential" in await refused("garbage")
        body, _, sig = one.sign("2", "GET", LOGS, "alice").partition(".")
        claims_doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        altered = base64.urlsafe_b64encode(json.dumps({**claims_doc, "act": "admin"}).encode()).rstrip(b"=").decode()
        assert "signature" in await refused(f"{altered}.{sig}")  # the claims changed, the signature kept
        # a node removed from the cluster (its record gone) is refused from then on, its key still published
        await client.delete(NODES + "1")
        assert "not a member" in await refused(one.sign("2", "GET", LOGS, "alice"))
        await one.left(client, "1", removed=True)
        assert await client.get(PEERS + "1") is None
        await client.close()

    asyncio.run(go())
