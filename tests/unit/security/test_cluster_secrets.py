"""Issue 16 item 5, below the daemon: the cluster's DEK wrapped per node (X25519 + HKDF-SHA256 + ChaCha20-Poly1305)
and refused for the wrong key, node, generation or a damaged wrap; secret rows sealed under the DEK in a real etcd,
read by another node, never in the clear; a removal rotates the DEK so the removed node's key opens nothing new."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from zlayer.cluster.etcd import EtcdProcess
from zlayer.errors import ConflictError, UsageError
from zlayer.security import SqliteSecurityStore
from zlayer.security.cluster import (
    DEK_KEY,
    PREFIX,
    ClusterSecrets,
    ClusterSecretsHook,
    DekRecord,
    WrapError,
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


@pytest.mark.peer
def test_rows_replicate_sealed_and_a_removal_rotates_the_key(etcd: EtcdProcess, tmp_path: Path) -> None:
    keys = {n: X25519PrivateKey.generate() for n in ("1", "2", "3")}

    async def go() -> None:
        clients = [EtcdClient([etcd.member.client_url]) for _ in range(3)]
        try:
            await clients[0].delete(PREFIX, prefix=True)
            n1, n2, n3 = (ClusterSecrets(c, n, keys[n]) for c, n in zip(clients, ("1", "2", "3"), strict=True))
            assert await n1.create()
            assert not await n1.create()  # a second create changes nothing
            await n1.sync()
            assert n1.generation == 1
            hook = ClusterSecretsHook(Secrets(SqliteSecurityStore(tmp_path / "n1.db"), Keyring(
                SqliteSecurityStore(tmp_path / "k1.db"), tmp_path / "k1", "zlayer", {})), tmp_path / "n1")  # fmt: skip
            hook.secrets.cluster = n1
            for n in ("2", "3"):  # as the leader admits a join: ZLayer's [u8; 32]
                await hook.admitted(clients[0], n, {"secrets_pubkey": list(_pub(keys[n]))})
            for bad in ([1, 2, 3], [300] * 32, "a string", [None] * 32):
                with pytest.raises(UsageError, match="secrets_pubkey"):
                    await hook.admitted(clients[0], "9", {"secrets_pubkey": bad})

            # set on node 2, read (and resolve) on node 3
            row, before = await n2.put("global", "db_password", b"hunter2-in-the-cluster")
            assert before is None and row.version == 1 and row.generation == 1
            await n2.put("global", "db_password", b"hunter2-rotated")
            await n3.sync()
            got = n3.get("global", "db_password")
            assert got is not None and got.version == 2 and n3.open(got) == b"hunter2-rotated"
            old = n3.get("global", "db_password", 1)
            assert old is not None and n3.open(old) == b"hunter2-in-the-cluster"
            s3 = Secrets(SqliteSecurityStore(tmp_path / "n3.db"), Keyring(SqliteSecurityStore(tmp_path / "k.db"),
                         tmp_path / "k", "zlayer", {}))  # fmt: skip
            s3.cluster = n3
            assert s3.resolve_env("shop", {"PW": "$S:db_password", "X": "plain"}) == {"PW": "hunter2-rotated",
                                                                                         "X": "plain"}  # fmt: skip
            with pytest.raises(UsageError, match="through aput"):
                s3.put("global", "x", "y")  # never the node's SQLite while in a cluster
            await s3.aput("@web", "token", '{"k": "v"}')
            await n2.sync()
            assert n2.open(n2.get("@web", "token") or old) == b'{"k": "v"}'

            # an environment made on node 1 is the same scope on node 3; a second of that name is refused
            prod = await s3.acreate_environment("prod")
            await n1.put(prod.id, "API_KEY", b"prod-api-key")
            with pytest.raises(ConflictError, match="already exists"):
                await n1.add_environment(Environment("other-id", "prod", None, None, "t", "t"))
            await n1.sync()
            assert [e.id for e in n1.environments()] == [prod.id]
            await s3.refresh()
            assert s3.resolve_env("shop", {"K": "$S::prod/API_KEY"}) == {"K": "prod-api-key"}

            raw = [kv.value for kv in await clients[0].range("/")]
            for plain in (b"hunter2", b'"k"'):
                assert not any(plain in v or plain in _b64_fields(v) for v in raw)

            before_dek = n3._deks[1]
            old_record = DekRecord.parse((await clients[0].get(DEK_KEY)).json())  # type: ignore[union-attr]
            # node 3 is removed: generation 2, wrapped for 1 and 2 only; every row sealed again under it
            assert await n1.rotate(without="3") == 2
            rec = DekRecord.parse((await clients[0].get(DEK_KEY)).json())  # type: ignore[union-attr]
            assert rec.generation == 2 and sorted(rec.wraps) == ["1", "2"] and rec.retiring is None
            for wrap in rec.wraps.values():
                for node in ("1", "2", "3"):
                    with pytest.raises(WrapError):
                        unwrap_dek(base64.b64decode(wrap), keys["3"], node, 2)
            assert open_record(old_record, keys["3"], "3") == {1: before_dek}  # its old wrap: the old key only
            await n3.sync()
            assert isinstance(n3.error, WrapError) and "no wrap" in str(n3.error)
            with pytest.raises(WrapError):
                n3.open(n3.get("global", "db_password") or old)
            await n1.put("global", "db_password", b"after-removal")
            await n2.sync()
            for r in (n2.get("global", "db_password"), n2.get("global", "db_password", 1)):
                assert r is not None and r.generation == 2
                assert open_row(before_dek, r.scope, r.name, r.version, r.value) is None
            assert n2.open(n2.get("global", "db_password") or old) == b"after-removal"
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
            assert n2.open(n2.get(prod.id, "API_KEY") or old) == b"prod-api-key"
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
