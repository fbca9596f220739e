"""Issue 16 item 5, below the daemon: the cluster's DEK wrapped per node (X25519 + HKDF-SHA256 + ChaCha20-Poly1305)
and refused for the wrong key, node, generation or a damaged wrap; secret rows sealed under the DEK in a real etcd,
read by another node, never in the clear; a removal rotates the DEK so the removed node's key opens nothing new."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.fixtures.secrets_view import opened_by
from zlayer.cluster.etcd import EtcdProcess
from zlayer.errors import ConflictError, NotFoundError, UsageError
from zlayer.security import SqliteSecurityStore
from zlayer.security.cluster import (
    DEK_KEY,
    GRANTS,
    NODES,
    PREFIX,
    ClusterSecrets,
    ClusterSecretsHook,
    DekRecord,
    NotGranted,
    WrapError,
    grant_key,
    load_node_key,
    make_record,
    open_record,
    open_row,
    public_b64,
    unwrap_dek,
    wrap_dek,
)
from zlayer.security.secrets import Keyring, Secrets, SecretsKeyError
from zlayer.security.store import Environment, SecretVersion
from zlayer.state.etcd import EtcdClient


def _pub(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def test_a_wrap_opens_only_with_its_nodes_key_id_and_generation() -> None:
    dek, a, b = os.urandom(32), X25519PrivateKey.generate(), X25519PrivateKey.generate()
    w = wrap_dek(dek, _pub(a), "2", 7)
    assert unwrap_dek(w, a, "2", 7) == dek and dek not in w
    assert wrap_dek(dek, _pub(a), "2", 7) != w  # a fresh ephemeral key each time
    for key, node, gen in ((b, "2", 7), (a, "3", 7), (a, "2", 8)):
        with pytest.raises(WrapError, match="does not open"):
            unwrap_dek(w, key, node, gen)
    damaged = bytearray(w)
    damaged[50] ^= 1
    with pytest.raises(WrapError, match="does not open"):
        unwrap_dek(bytes(damaged), a, "2", 7)
    with pytest.raises(WrapError, match="not 92"):
        unwrap_dek(w[:-1], a, "2", 7)
    with pytest.raises(WrapError, match="not 32"):
        wrap_dek(dek, b"short", "2", 7)
    with pytest.raises(ValueError):
        wrap_dek(b"x" * 31, _pub(a), "2", 7)


def test_a_record_gives_each_node_its_dek_and_refuses_one_left_out() -> None:
    dek, a, c = os.urandom(32), X25519PrivateKey.generate(), X25519PrivateKey.generate()
    rec = DekRecord.parse(make_record(dek, 3, {"1": _pub(a), "3": _pub(c)}).dump())
    assert open_record(rec, a, "1") == {3: dek} and open_record(rec, c, "3") == {3: dek}
    with pytest.raises(WrapError, match="node 2 has no wrap") as e:
        open_record(rec, a, "2")
    assert e.value.hint and "removed" in e.value.hint
    rec.wraps["1"], rec.wraps["3"] = rec.wraps["3"], rec.wraps["1"]  # swapped between nodes: neither opens
    with pytest.raises(WrapError):
        open_record(rec, a, "1")
    for bad in ({}, {"generation": "x", "wraps": {}}, {"generation": 1, "wraps": []}, []):
        with pytest.raises(SecretsKeyError, match="not a DEK record"):
            DekRecord.parse(bad)


def test_the_node_key_is_private_made_only_when_asked_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "node_secrets.key"
    with pytest.raises(SecretsKeyError, match="is missing") as e:
        load_node_key(path, create=False)
    assert e.value.where == str(path) and not path.exists()
    key = load_node_key(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    assert public_b64(load_node_key(path, create=False)) == public_b64(key)
    path.write_bytes(b"x" * 31)
    with pytest.raises(SecretsKeyError, match="31 bytes"):
        load_node_key(path, create=True)  # a damaged key is an error, never replaced


async def _opened_by(client: EtcdClient, key: X25519PrivateKey, node: str) -> dict[tuple[str, str, int], bytes]:
    return opened_by({kv.key: kv.value for kv in await client.range(PREFIX)}, key, node)


@pytest.mark.peer
def test_each_node_opens_only_what_its_replicas_need_and_loses_it_when_they_move(etcd: EtcdProcess,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    keys = {n: X25519PrivateKey.generate() for n in ("1", "2", "3")}

    async def go() -> None:
        clients = [EtcdClient([etcd.member.client_url]) for _ in range(3)]
        try:
            await clients[0].delete(PREFIX, prefix=True)
            n1, n2, n3 = (ClusterSecrets(c, n, keys[n]) for c, n in zip(clients, ("1", "2", "3"), strict=True))
            assert await n1.create()
            assert not await n1.create()  # a second create changes nothing
            await n1.sync()
            assert n1.generation == 1 and n1.keeper
            hook = ClusterSecretsHook(Secrets(SqliteSecurityStore(tmp_path / "n1.db"), Keyring(
                SqliteSecurityStore(tmp_path / "k1.db"), tmp_path / "k1", "zlayer", {})), tmp_path / "n1")  # fmt: skip
            hook.secrets.cluster = n1
            for n in ("2", "3"):  # as the leader admits a join: ZLayer's [u8; 32]; a joining node is no keeper
                await hook.admitted(clients[0], n, {"secrets_pubkey": list(_pub(keys[n]))})
            for bad in ([1, 2, 3], [300] * 32, "a string", [None] * 32):
                with pytest.raises(UsageError, match="secrets_pubkey"):
                    await hook.admitted(clients[0], "9", {"secrets_pubkey": bad})
            assert sorted(DekRecord.parse((await clients[0].get(DEK_KEY)).json()).wraps) == ["1"]  # type: ignore[union-attr]

            # written on node 2, which opens nothing: sealed to the DEK's public half
            row, before = await n2.put("global", "db_password", b"hunter2-in-the-cluster")
            assert before is None and row.version == 1 and row.generation == 1
            await n2.put("global", "db_password", b"hunter2-rotated")
            await n3.sync()
            got = n3.get("global", "db_password")
            assert got is not None and got.version == 2 and not n3.keeper
            with pytest.raises(NotGranted, match=r"'db_password'.*not sealed for node 3"):
                n3.open(got)
            s3 = Secrets(SqliteSecurityStore(tmp_path / "n3.db"), Keyring(SqliteSecurityStore(tmp_path / "k.db"),
                         tmp_path / "k", "zlayer", {}))  # fmt: skip
            s3.cluster = n3
            with pytest.raises(NotGranted, match="db_password"):  # a replica never starts with an empty value
                s3.resolve_env("shop", {"PW": "$S:db_password"})
            s3.check_env("shop", {"PW": "$S:db_password"})  # it exists: a deploy through node 3 is not refused
            with pytest.raises(NotFoundError, match="nope"):
                s3.check_env("shop", {"PW": "$S:nope"})
            assert await _opened_by(clients[0], keys["3"], "3") == {}
            assert await _opened_by(clients[0], keys["2"], "2") == {}

            # a replica on node 3 refers to it: the keeper seals the current version for node 3, and only that
            await n1.sync()
            assert n1.open(got) == b"hunter2-rotated"
            assert await n1.seal_for_nodes({("3", "global", "db_password"), ("1", "global", "db_password")}) == (1, 0)
            assert await n1.seal_for_nodes({("3", "global", "db_password")}) == (0, 0)  # a pass writes the difference
            await n3.sync()
            assert n3.open(got) == b"hunter2-rotated"
            with pytest.raises(NotGranted):
                n3.open(n3.get("global", "db_password", 1) or got)
            assert s3.resolve_env("shop", {"PW": "$S:db_password", "X": "plain"}) == {"PW": "hunter2-rotated",
                                                                                         "X": "plain"}  # fmt: skip
            assert await _opened_by(clients[0], keys["3"], "3") == {("global", "db_password", 2): b"hunter2-rotated"}
            assert await _opened_by(clients[0], keys["2"], "2") == {}
            with pytest.raises(UsageError, match="through aput"):
                s3.put("global", "x", "y")  # never the node's SQLite while in a cluster

            # an environment made on node 3 is the same scope on node 1
            prod = await s3.acreate_environment("prod")
            await n1.put(prod.id, "API_KEY", b"prod-api-key")
            with pytest.raises(ConflictError, match="already exists"):
                await n1.add_environment(Environment("other-id", "prod", None, None, "t", "t"))
            await n1.sync()
            assert [e.id for e in n1.environments()] == [prod.id]
            needs = {("3", "global", "db_password"), ("3", prod.id, "API_KEY")}
            assert await n1.seal_for_nodes(needs) == (1, 0)
            await s3.refresh()
            assert s3.resolve_env("shop", {"K": "$S::prod/API_KEY"}) == {"K": "prod-api-key"}

            # a rotation: the new version is sealed, the old one's grant goes
            await n1.put("global", "db_password", b"hunter3")
            await n1.sync()
            assert await n1.seal_for_nodes(needs) == (1, 1)
            assert (await _opened_by(clients[0], keys["3"], "3"))[("global", "db_password", 3)] == b"hunter3"
            assert ("global", "db_password", 2) not in await _opened_by(clients[0], keys["3"], "3")

            # the replicas move to node 2: node 2 gets both, node 3 loses both
            assert await n1.seal_for_nodes({("2", "global", "db_password"), ("2", prod.id, "API_KEY")}) == (2, 2)
            assert await _opened_by(clients[0], keys["3"], "3") == {}
            assert sorted(await _opened_by(clients[0], keys["2"], "2")) == [(prod.id, "API_KEY", 1),
                                                                            ("global", "db_password", 3)]  # fmt: skip
            raw = [kv.value for kv in await clients[0].range("/")]
            for plain in (b"hunter", b"prod-api-key"):
                assert not any(plain in v or plain in _b64_fields(v) for v in raw)

            # node 2 removed (no keeper): its grants and its key go; nothing to rotate
            await hook.left(clients[0], "2", removed=True)
            assert await _opened_by(clients[0], keys["2"], "2") == {}
            assert await clients[0].range(grant_key("2")) == [] and await clients[0].get(NODES + "2") is None
            assert DekRecord.parse((await clients[0].get(DEK_KEY)).json()).generation == 1  # type: ignore[union-attr]

            # a keeper removed: the DEK rotates, wrapped for the others only; every row sealed again under it
            await n1.admit("3", _pub(keys["3"]), keeper=True)
            await n3.sync()
            assert n3.keeper and n3.open(n3.get("global", "db_password") or got) == b"hunter3"
            before_dek = n3._deks[1]
            old_record = DekRecord.parse((await clients[0].get(DEK_KEY)).json())  # type: ignore[union-attr]
            await hook.left(clients[0], "3", removed=True)
            rec = DekRecord.parse((await clients[0].get(DEK_KEY)).json())  # type: ignore[union-attr]
            assert rec.generation == 2 and sorted(rec.wraps) == ["1"] and rec.retiring is None
            for wrap in rec.wraps.values():
                with pytest.raises(WrapError):
                    unwrap_dek(base64.b64decode(wrap), keys["3"], "1", 2)
            assert open_record(old_record, keys["3"], "3") == {1: before_dek}  # its old wrap: the old key only
            await n3.sync()
            assert not n3.keeper
            with pytest.raises(NotGranted):
                n3.open(n3.get("global", "db_password") or got)
            await n1.put("global", "db_password", b"after-removal")
            await n2.sync()
            for r in (n2.get("global", "db_password"), n2.get("global", "db_password", 1)):
                assert r is not None and r.generation == 2
                assert open_row(before_dek, r.scope, r.name, r.version, r.value) is None
            await n1.sync()
            assert n1.open(n1.get("global", "db_password") or got) == b"after-removal"
            assert await n2.delete("global", "db_password") and not await n2.delete("global", "db_password")
            # a sync reads the rows again only when something under the prefix changed (a write, or one key fewer)
            await n2.sync()
            assert not (await n2._changed())[2]
            await n1.put("global", "extra", b"x")
            assert (await n2._changed())[2]
            await n2.sync()
            assert not (await n2._changed())[2] and n2.get("global", "extra") is not None
            await n1.delete("global", "extra")
            assert (await n2._changed())[2]
            await n2.sync()
            assert n2.get("global", "extra") is None
            assert n1.open(n1.get(prod.id, "API_KEY") or got) == b"prod-api-key"
            await s3.delete_environment(prod.id)
            await n2.sync()
            assert n2.environments() == [] and n2.get(prod.id, "API_KEY") is None
        finally:
            for c in clients:
                await c.close()

    asyncio.run(go())


@pytest.mark.peer
def test_a_rotation_cut_short_leaves_every_row_readable_and_the_next_one_finishes_it(etcd: EtcdProcess) -> None:
    keys = {n: X25519PrivateKey.generate() for n in ("1", "2")}

    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        try:
            await client.delete(PREFIX, prefix=True)
            n1, n2 = ClusterSecrets(client, "1", keys["1"]), ClusterSecrets(client, "2", keys["2"])
            assert await n1.create()
            await n1.admit("2", _pub(keys["2"]))
            for i in range(3):
                await n1.put("global", f"s{i}", f"value-{i}".encode())
            await n1.sync()
            # the rotating node died after writing generation 2 and before sealing any row again
            dek1, dek2 = n1._deks[1], os.urandom(32)
            cut = make_record(dek2, 2, {n: _pub(k) for n, k in keys.items()})
            cut.retiring_generation, cut.retiring = 1, make_record(dek1, 1, {n: _pub(k) for n, k in keys.items()}).wraps
            await client.put(DEK_KEY, cut.dump())
            await n2.sync()
            assert n2.error is None and all(n2.open(r) == f"value-{i}".encode() for i, r in
                                            enumerate(n2.latest("global")))  # fmt: skip
            fresh = ClusterSecrets(client, "1", keys["1"])  # another process: only its wraps to go by
            assert await fresh.rotate() == 3
            rec = DekRecord.parse((await client.get(DEK_KEY)).json())  # type: ignore[union-attr]
            assert rec.generation == 3 and rec.retiring is None and sorted(rec.wraps) == ["1", "2"]
            await n2.sync()
            rows = n2.latest("global")
            assert [r.generation for r in rows] == [3, 3, 3]
            assert [n2.open(r) for r in rows] == [b"value-0", b"value-1", b"value-2"]
        finally:
            await client.close()

    asyncio.run(go())


@pytest.mark.peer
def test_a_node_whose_key_file_is_gone_opens_nothing_and_makes_no_key(etcd: EtcdProcess, tmp_path: Path) -> None:
    async def go() -> None:
        store = SqliteSecurityStore(tmp_path / "security.db")
        secrets = Secrets(store, Keyring(store, tmp_path / "secrets", "zlayer", {}))
        hook = ClusterSecretsHook(secrets, tmp_path / "secrets")
        client = EtcdClient([etcd.member.client_url])
        try:
            await hook.entered(client, "5", "start")
            assert secrets.cluster is not None and not hook.key_path.exists()
            await secrets.refresh()
            row = SecretVersion("global", "db", 1, b"\0" * 40, "t", "t", 1)  # a cluster row, as sync reads one
            with pytest.raises(SecretsKeyError, match=r"node_secrets\.key is missing"):
                secrets.reveal(row)
            with pytest.raises(SecretsKeyError, match="is missing"):
                await secrets.aput("global", "new", "value")
        finally:
            await client.close()

    asyncio.run(go())


def _b64_fields(raw: bytes) -> bytes:
    """Every base64 string inside a JSON value, decoded (a sealed row keeps its value in one)."""
    import json

    try:
        doc = json.loads(raw)
    except ValueError:
        return b""
    out = b""
    for v in doc.values() if isinstance(doc, dict) else []:
        if isinstance(v, str):
            try:
                out += base64.b64decode(v, validate=True)
            except ValueError:
                pass
    return out


@pytest.mark.peer
def test_a_keeper_seals_for_a_node_what_its_replicas_refer_to_and_drops_it_after(etcd: EtcdProcess,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    key2 = X25519PrivateKey.generate()
    placed: list[tuple[str, str, dict[str, str]]] = []

    async def placements(client: EtcdClient) -> list[tuple[str, str, dict[str, str]]]:
        return list(placed)

    async def until(what: str, check: Any) -> None:
        for _ in range(100):
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        store = SqliteSecurityStore(tmp_path / "security.db")
        secrets = Secrets(store, Keyring(store, tmp_path / "secrets", "zlayer", {}))
        hook = ClusterSecretsHook(secrets, tmp_path / "secrets", placements)
        try:
            await client.delete(PREFIX, prefix=True)
            await hook.entered(client, "1", "init")
            await hook.admitted(client, "2", {"secrets_pubkey": list(_pub(key2))})
            await secrets.aput("global", "db_pass", "v1")
            n2 = ClusterSecrets(client, "2", key2)
            # a replica of node 2 refers to db_pass (and to one that is not there, and to a plain value)
            placed.append(("2", "shop", {"DB": "$S:db_pass", "M": "$S:missing", "X": "plain"}))

            async def opens() -> bool:
                await n2.sync()
                row = n2.get("global", "db_pass")
                return row is not None and (row.scope, row.name, row.version) in n2._grants and n2.open(row) == b"v1"

            await until("node 2's grant of db_pass", opens)
            assert len(await client.range(GRANTS)) == 1  # nothing for the keeper itself, nothing for "missing"
            placed.clear()  # the replica went away

            async def gone() -> bool:
                return await client.range(GRANTS) == []

            await until("node 2's grant to go", gone)
        finally:
            if hook._task is not None:
                hook._task.cancel()
            await client.close()
            store.close()

    asyncio.run(go())


@pytest.mark.peer
def test_a_rollout_just_after_a_rotation_on_another_node_counts_the_new_version(etcd: EtcdProcess,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    """What a rollout compares a replica with (``SecretsBridge.versions``, part of ``Converger.build_hash``) is read
    when the rollout runs: a copy read a moment before the rotation made the redeploy keep the old replica."""
    from zlayer.daemon.wiring import SecretsBridge

    key2 = X25519PrivateKey.generate()

    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        store = SqliteSecurityStore(tmp_path / "security.db")
        secrets = Secrets(store, Keyring(store, tmp_path / "secrets", "zlayer", {}))
        hook = ClusterSecretsHook(secrets, tmp_path / "secrets")
        bridge = SecretsBridge(secrets)
        env = {"DB": "$S:db_pass", "X": "plain"}
        try:
            await client.delete(PREFIX, prefix=True)
            await hook.entered(client, "1", "init")
            await hook.admitted(client, "2", {"secrets_pubkey": list(_pub(key2))})
            await secrets.aput("global", "db_pass", "v1")
            assert await bridge.versions("shop", env) == "DB=global:db_pass:1"  # node 1's copy: read just now
            await ClusterSecrets(client, "2", key2).put("global", "db_pass", b"v2", rotate=True)  # on node 2
            assert await bridge.versions("shop", env) == "DB=global:db_pass:2"
            assert (await bridge.resolve("shop", "web", env))["DB"] == "v2"  # what the new replica is given
        finally:
            await client.close()
            store.close()

    asyncio.run(go())
