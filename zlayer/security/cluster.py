"""Secrets in a cluster: one data-encryption key (DEK) for the cluster's secret rows, wrapped for the keepers; every
other node opens only the versions sealed for it because a replica assigned to it uses them.

- **Node key**: each node has its own X25519 key, ``DATA/secrets/node_secrets.key`` (32 raw bytes, 0600), made when
  the node inits or joins a cluster; its public half goes with the join and the leader records it in etcd
  (``/zlayer/secrets/nodes/<id>``). A node in a cluster whose key file is missing or is not the key etcd knows for it
  says so and opens nothing; it never makes a new key in its place.
- **DEK**: 32 random bytes (an X25519 private key), never on disk in the clear. etcd holds it only wrapped per keeper
  in ``/zlayer/secrets/dek`` (``{generation, public, wraps: {node: wrap}, retiring?}``): a wrap is an ephemeral X25519
  key agreement with the node's public key, HKDF-SHA256 and ChaCha20-Poly1305 (:func:`wrap_dek`); the node id and the
  generation are bound in as associated data, so a wrap moved to another node or generation does not open.
- **Rows**: ``/zlayer/secrets/rows/<scope>/<name>/<version>``, each value sealed the same way to the DEK's public
  half (``public``), with ``scope``, ``name`` and ``version`` as associated data: any node writes, keepers open.
- **Grants**: ``/zlayer/secrets/grants/<node>/<scope>/<name>/<version>``, one version sealed for one node. A keeper's
  pass (:meth:`ClusterSecrets.seal_for_nodes`, run by :class:`ClusterSecretsHook`) seals for each node the current
  version of what its assigned replicas refer to and deletes every other grant.
- **Who holds what**: the node that inits the cluster makes the DEK (only while no DEK and no row exist) and is its
  keeper; a node the leader admits gets no wrap, only grants. Removing a node deletes its key record and grants;
  removing a keeper also rotates: a new DEK of the next generation wrapped for the remaining keepers, every row sealed
  again under it. While the rows are sealed again the previous DEK stays wrapped (``retiring``, for the remaining
  keepers only), so no row is unreadable half-way.

Reads come from a copy of the rows held in memory (:meth:`ClusterSecrets.sync` reads them again from etcd; the API
and the agent call it before they look), writes go to etcd first."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets as _random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zlayer.errors import ConflictError, NotFoundError, UsageError, ZLayerError
from zlayer.security.secrets import NotGranted, Secrets, SecretsKeyError
from zlayer.security.store import Environment, SecretVersion, now
from zlayer.state.etcd import EtcdClient, EtcdError, KeyValue, delete_op, mod_is, prefix_end, put_op

log = logging.getLogger("zlayer.security")

PREFIX = "/zlayer/secrets/"
DEK_KEY = PREFIX + "dek"
NODES = PREFIX + "nodes/"
ROWS = PREFIX + "rows/"
ENVS = PREFIX + "envs/"  # environments (not secret): their ids are the scopes of their secrets on every node
GRANTS = PREFIX + "grants/"  # <node>/<scope>/<name>/<version>: one version sealed for one node that needs it
ENV_NAMES = PREFIX + "env-names/"  # <project>/<name> -> id: one environment of a name per project
KEY_FILE = "node_secrets.key"
_WRAP_INFO = b"zlayer dek wrap v1"
_WRAP_LEN = 32 + 12 + 32 + 16  # ephemeral public key, nonce, sealed DEK, tag
_TXN_ROWS = 50  # rows per transaction when sealing again (a compare and a put each; etcd allows 128 operations)


class WrapError(SecretsKeyError):
    """A wrapped DEK that does not open with this node's key (another node's, another generation, or damaged)."""


# ---------------------------------------------------------------------------------------------------- node key
def load_node_key(path: Path, *, create: bool) -> Any:
    """This node's X25519 key from ``path``; made (0600) only with ``create`` (init or join), else missing is an
    error naming the file."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise SecretsKeyError(f"this node's secrets key {path} is missing; the cluster's secrets stay closed to it",
                                  where=str(path), hint="restore the file (0600), or remove the node from the "
                                  "cluster and join it again") from None  # fmt: skip
        from zlayer.paths import private_dir, write_atomic

        key = X25519PrivateKey.generate()
        private_dir(path.parent)
        write_atomic(path, key.private_bytes_raw())
        return key
    except OSError as e:
        raise SecretsKeyError(f"cannot read this node's secrets key {path}: {e.strerror}", where=str(path)) from e
    if len(raw) != 32:
        raise SecretsKeyError(f"{path} holds {len(raw)} bytes, not a 32-byte X25519 key", where=str(path))
    return X25519PrivateKey.from_private_bytes(raw)


def public_b64(key: Any) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def _aad(node_id: str, generation: int) -> bytes:
    return _WRAP_INFO + b"\0" + node_id.encode() + b"\0" + str(generation).encode()


def _wrap_key(shared: bytes, eph_pub: bytes, node_pub: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(SHA256(), 32, salt=eph_pub + node_pub, info=aad).derive(shared)


def _seal_to(plain: bytes, node_public: bytes, aad: bytes) -> bytes:
    """``plain`` sealed for the holder of the X25519 key whose public half is ``node_public``:
    ``ephemeral public key ‖ nonce ‖ ChaCha20-Poly1305(plain)`` (HKDF-SHA256 over the agreement, ``aad`` bound in)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes_raw()
    key = _wrap_key(eph.exchange(X25519PublicKey.from_public_bytes(node_public)), eph_pub, node_public, aad)
    nonce = _random.token_bytes(12)
    return eph_pub + nonce + ChaCha20Poly1305(key).encrypt(nonce, plain, aad)


def _open_sealed(blob: bytes, node_key: Any, aad: bytes) -> bytes | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if len(blob) < 32 + 12 + 16:
        return None
    eph_pub, nonce, sealed = blob[:32], blob[32:44], blob[44:]
    try:
        shared = node_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _wrap_key(shared, eph_pub, node_key.public_key().public_bytes_raw(), aad)
        return ChaCha20Poly1305(key).decrypt(nonce, sealed, aad)
    except (InvalidTag, ValueError):
        return None


def wrap_dek(dek: bytes, node_public: bytes, node_id: str, generation: int) -> bytes:
    """``dek`` sealed for the node whose X25519 public key is ``node_public`` (:func:`_seal_to`)."""
    if len(dek) != 32:
        raise ValueError("a DEK is 32 bytes")
    if len(node_public) != 32:
        raise WrapError(f"node {node_id}'s public key is {len(node_public)} bytes, not 32", where=f"node {node_id}")
    return _seal_to(dek, node_public, _aad(node_id, generation))


def unwrap_dek(wrapped: bytes, node_key: Any, node_id: str, generation: int) -> bytes:
    """The DEK in ``wrapped``, opened with this node's private key; :class:`WrapError` when it does not open."""
    where = f"{DEK_KEY} generation {generation}"
    if len(wrapped) != _WRAP_LEN:
        raise WrapError(f"the wrapped key of node {node_id} is {len(wrapped)} bytes, not {_WRAP_LEN}", where=where)
    dek = _open_sealed(wrapped, node_key, _aad(node_id, generation))
    if dek is None:
        raise WrapError(f"the cluster key of generation {generation} does not open with node {node_id}'s key",
                        where=where, hint="this node's key file is not the one it joined with, or the "
                        "node was removed from the cluster")  # fmt: skip
    return dek


# ---------------------------------------------------------------------------------------------------- grants
def _grant_aad(node_id: str, scope: str, name: str, version: int) -> bytes:
    return f"zlayer secret grant v1\0{node_id}\0{scope}\0{name}\0{version}".encode()


def grant_key(node_id: str, scope: str | None = None, name: str = "", version: int = 0) -> str:
    """``/zlayer/secrets/grants/<node>/<scope>/<name>/<version>`` (no scope: every grant of the node)."""
    base = f"{GRANTS}{node_id}/"
    return base if scope is None else f"{base}{urllib.parse.quote(scope, safe='')}/{name}/{version:010d}"


def seal_grant(plain: bytes, node_public: bytes, node_id: str, scope: str, name: str, version: int) -> bytes:
    """One version of a secret sealed for one node (its key, this node, scope, name and version bound in)."""
    return _seal_to(plain, node_public, _grant_aad(node_id, scope, name, version))


def open_grant(blob: bytes, node_key: Any, node_id: str, scope: str, name: str, version: int) -> bytes | None:
    """A grant's value with ``node_key``; None when it does not open (another node's, version's, or damaged)."""
    return _open_sealed(blob, node_key, _grant_aad(node_id, scope, name, version))


def _row_aad(scope: str, name: str, version: int) -> bytes:
    return f"zlayer secret v1\0{scope}\0{name}\0{version}".encode()


def dek_public(dek: bytes) -> bytes:
    """The public half of a DEK (an X25519 private key): what any node seals a row to, so that only the keepers,
    who hold the DEK, open it."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(dek).public_key().public_bytes_raw()


def seal_row(public: bytes, scope: str, name: str, version: int, plain: bytes) -> bytes:
    """A row's value sealed to the DEK's public half (:func:`dek_public`, :func:`_seal_to`)."""
    return _seal_to(plain, public, _row_aad(scope, name, version))


def open_row(dek: bytes, scope: str, name: str, version: int, blob: bytes) -> bytes | None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return _open_sealed(blob, X25519PrivateKey.from_private_bytes(dek), _row_aad(scope, name, version))


# ---------------------------------------------------------------------------------------------------- the DEK record
@dataclass
class DekRecord:
    """``/zlayer/secrets/dek``: the current generation's wraps, and the previous one's while rows move to it."""

    generation: int
    wraps: dict[str, str]
    retiring_generation: int = 0
    retiring: dict[str, str] | None = None
    public: str = ""  # the current DEK's public half (base64): any node seals a row to it, keepers open it

    @classmethod
    def parse(cls, raw: Any) -> DekRecord:
        try:
            ret = raw.get("retiring") or None
            return cls(int(raw["generation"]), {str(k): str(v) for k, v in raw["wraps"].items()},
                       int(ret["generation"]) if ret else 0,
                       {str(k): str(v) for k, v in ret["wraps"].items()} if ret else None,
                       str(raw.get("public") or ""))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SecretsKeyError(f"{DEK_KEY} is not a DEK record ({type(e).__name__}: {e})", where=DEK_KEY) from None

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"generation": self.generation, "wraps": self.wraps}
        if self.public:
            out["public"] = self.public
        if self.retiring is not None:
            out["retiring"] = {"generation": self.retiring_generation, "wraps": self.retiring}
        return out


def make_record(dek: bytes, generation: int, publics: Mapping[str, bytes]) -> DekRecord:
    return DekRecord(generation, {n: base64.b64encode(wrap_dek(dek, pub, n, generation)).decode()
                                  for n, pub in publics.items()},
                     public=base64.b64encode(dek_public(dek)).decode())  # fmt: skip


def open_record(record: DekRecord, node_key: Any, node_id: str) -> dict[int, bytes]:
    """The DEKs ``record`` gives this node, by generation; :class:`WrapError` when it has no wrap of the current."""
    wrap = record.wraps.get(node_id)
    if wrap is None:
        raise WrapError(f"node {node_id} has no wrap of the cluster's secrets key (generation {record.generation})",
                        where=DEK_KEY, hint="a node removed from the cluster loses its access; join it "
                        "again with a new token") from None  # fmt: skip
    out = {record.generation: unwrap_dek(base64.b64decode(wrap), node_key, node_id, record.generation)}
    old = (record.retiring or {}).get(node_id)
    if old is not None:
        out[record.retiring_generation] = unwrap_dek(base64.b64decode(old), node_key, node_id,
                                                     record.retiring_generation)  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------- rows
def _row_key(scope: str, name: str, version: int | None = None) -> str:
    base = f"{ROWS}{urllib.parse.quote(scope, safe='')}/{name}/"
    return base if version is None else f"{base}{version:010d}"


def _parse_row(kv: KeyValue) -> SecretVersion | None:
    try:
        scope, name, version = kv.key[len(ROWS) :].split("/")
        doc = kv.json()
        return SecretVersion(urllib.parse.unquote(scope), name, int(version), base64.b64decode(doc["v"]), doc["t"],
                             doc["t"], int(doc["g"]))  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("secrets: ignoring %s: not a secret row", kv.key)
        return None


class ClusterSecrets:
    """This node's view of the cluster's secrets: its DEKs (in memory only) and a copy of the rows."""

    def __init__(self, client: EtcdClient, node_id: str, node_key: Any | None) -> None:
        self.client = client
        self.node_id = node_id
        self.node_key = node_key
        self.generation = 0
        self._deks: dict[int, bytes] = {}
        self._rows: dict[tuple[str, str], list[SecretVersion]] = {}
        self._envs: list[Environment] = []
        self._grants: dict[tuple[str, str, int], bytes] = {}  # this node's grants (a non-keeper opens only these)
        self._opened: dict[tuple[str, str, int, int], bytes] = {}  # rows and grants opened (generation -1: a grant)
        self.keepers: list[str] = []  # the nodes holding a wrap of the DEK, as last read
        self._synced = 0.0
        self._dek_rev = 0  # the DEK record's revision at the last sync: a write is sealed under what it says
        self._seen = (0, -1)  # etcd's revision and the number of keys under PREFIX when the copy was last read
        self.error: SecretsKeyError | None = None  # why this node cannot open the cluster's secrets, if it cannot

    # -------------------------------------------------------------------------------------------------- set-up
    async def create(self) -> bool:
        """The cluster's first DEK, wrapped for this node — only while etcd holds no DEK and no secret row (rows
        without a key are never taken over by a new one). True when this node made it."""
        assert self.node_key is not None
        if await self.client.range(ROWS, limit=1):
            return False
        dek = _random.token_bytes(32)
        record = make_record(dek, 1, {self.node_id: self.node_key.public_key().public_bytes_raw()})
        ops = [put_op(DEK_KEY, record.dump()), put_op(NODES + self.node_id, self._identity())]
        return await self.client.txn([mod_is(DEK_KEY, 0)], ops)

    @property
    def keeper(self) -> bool:
        """Whether this node holds the cluster's DEK (it opens every secret and seals them for the others)."""
        return self.node_id in self.keepers

    def _identity(self) -> dict[str, Any]:
        return {"public_key": public_b64(self.node_key), "joined_at": now()}

    async def admit(self, node_id: str, public: bytes, *, keeper: bool = False) -> None:
        """The leader's side of a join: record the node's public key (and, for a ``keeper``, wrap the current DEK and
        the retiring one for it). A joining node is no keeper: it opens only the grants sealed for it."""
        if len(public) != 32:
            raise UsageError("the join request's secrets_pubkey is not an X25519 public key (32 numbers 0-255)",
                             where="secrets_pubkey")  # fmt: skip
        for _ in range(32):
            kv = await self.client.get(DEK_KEY)
            if kv is None:
                raise WrapError("the cluster has no secrets key yet", where=DEK_KEY)
            record = DekRecord.parse(kv.json())
            ident = {"public_key": base64.b64encode(public).decode(), "joined_at": now()}
            if not keeper:
                record.wraps.pop(node_id, None)  # a node id used again: its old wrap is no grant
                if record.retiring is not None:
                    record.retiring.pop(node_id, None)
                if await self.client.txn([mod_is(DEK_KEY, kv.mod_revision)],
                                         [put_op(DEK_KEY, record.dump()), put_op(NODES + node_id, ident),
                                          delete_op(grant_key(node_id), prefix=True)]):  # fmt: skip
                    return
                continue
            deks = self._open(record)
            record.wraps[node_id] = base64.b64encode(wrap_dek(deks[record.generation], public, node_id,
                                                              record.generation)).decode()  # fmt: skip
            if record.retiring is not None and record.retiring_generation in deks:
                record.retiring[node_id] = base64.b64encode(wrap_dek(deks[record.retiring_generation], public, node_id,
                                                                     record.retiring_generation)).decode()  # fmt: skip
            if await self.client.txn([mod_is(DEK_KEY, kv.mod_revision)],
                                     [put_op(DEK_KEY, record.dump()), put_op(NODES + node_id, ident)]):  # fmt: skip
                return
        raise EtcdError(f"{DEK_KEY}: too many concurrent changes")

    async def forget(self, node_id: str) -> None:
        """A join that did not complete: the node's wrap and public key go (nothing was sealed for it alone)."""
        for _ in range(32):
            kv = await self.client.get(DEK_KEY)
            ops = [delete_op(NODES + node_id), delete_op(grant_key(node_id), prefix=True)]
            if kv is None:
                await self.client.txn([], ops)
                return
            record = DekRecord.parse(kv.json())
            record.wraps.pop(node_id, None)
            if record.retiring is not None:
                record.retiring.pop(node_id, None)
            if await self.client.txn([mod_is(DEK_KEY, kv.mod_revision)], [put_op(DEK_KEY, record.dump()), *ops]):
                return
        raise EtcdError(f"{DEK_KEY}: too many concurrent changes")

    def _open(self, record: DekRecord) -> dict[int, bytes]:
        if self.node_key is None:
            raise self.error or WrapError("this node has no secrets key", where=DEK_KEY)
        known = {g: d for g, d in self._deks.items() if g in (record.generation, record.retiring_generation)}
        if record.generation in known and (record.retiring is None or record.retiring_generation in known
                                           or self.node_id not in record.retiring):  # fmt: skip
            return known
        opened = open_record(record, self.node_key, self.node_id)
        self._deks.update(opened)
        return {**known, **opened}

    # -------------------------------------------------------------------------------------------------- reads
    async def sync(self, max_age: float = 0.0) -> None:
        """Read the DEK record and the rows again (unless the copy is younger than ``max_age`` seconds)."""
        if max_age and time.monotonic() - self._synced < max_age:
            return
        try:
            revision, count, changed = await self._changed()
            if not changed:
                self._synced = time.monotonic()
                return
            kvs = await self.client.range(PREFIX)
        except EtcdError as e:
            if not (max_age and self._synced):
                raise
            log.warning("secrets: the cluster's rows as last read (%s)", e)  # a replica starts with what is known
            return
        self._seen = (revision, count)
        rows: dict[tuple[str, str], list[SecretVersion]] = {}
        record: DekRecord | None = None
        envs: list[Environment] = []
        grants: dict[tuple[str, str, int], bytes] = {}
        mine = grant_key(self.node_id)
        for kv in kvs:
            if kv.key.startswith(ENVS):
                try:
                    envs.append(Environment(**kv.json()))
                except (TypeError, ValueError):
                    log.warning("secrets: ignoring %s: not an environment", kv.key)
            elif kv.key == DEK_KEY:
                record, self._dek_rev = DekRecord.parse(kv.json()), kv.mod_revision
            elif kv.key.startswith(ROWS):
                got = _parse_row(kv)
                if got is not None:
                    rows.setdefault((got.scope, got.name), []).append(got)
            elif kv.key.startswith(mine):
                try:
                    scope, name, version = kv.key[len(mine) :].split("/")
                    grants[(urllib.parse.unquote(scope), name, int(version))] = base64.b64decode(kv.json()["v"])
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning("secrets: ignoring %s: not a grant", kv.key)
        if self.node_key is None:
            pass  # the key file is missing: the error load_node_key gave stays
        elif record is None:
            self.error = SecretsKeyError("the cluster has no secrets key (it is made when the cluster is created)",
                                         where=DEK_KEY)  # fmt: skip
        else:
            self.keepers = sorted(record.wraps, key=lambda n: (len(n), n))
            try:
                if self.node_id in record.wraps:
                    self._open(record)
                else:
                    self._deks = {}
                self.generation, self.error = record.generation, None
            except SecretsKeyError as e:
                self.error = e
        out: dict[tuple[str, str], list[SecretVersion]] = {}
        for key, versions in rows.items():
            versions.sort(key=lambda v: v.version)
            first = versions[0].created_at
            out[key] = [SecretVersion(v.scope, v.name, v.version, v.value, v.created_at, first, v.generation)
                        for v in versions]  # fmt: skip
        self._rows = out
        self._grants = grants
        self._opened = {}
        self._envs = sorted(envs, key=lambda e: (e.project_id or "", e.name))
        self._synced = time.monotonic()

    async def _changed(self) -> tuple[int, int, bool]:
        """etcd's revision, the number of keys under PREFIX, and whether any of them changed since the copy was read
        (a key written since, or one fewer): one small transaction instead of reading every row each time."""
        key = base64.b64encode(PREFIX.encode()).decode()
        end = prefix_end(PREFIX)  # already base64, as the gateway wants
        since, known = self._seen
        got = await self.client.call("kv/txn", {"compare": [], "success": [
            {"request_range": {"key": key, "range_end": end, "count_only": True}},
            {"request_range": {"key": key, "range_end": end, "keys_only": True, "limit": "1",
                               "min_mod_revision": str(since + 1)}}]})  # fmt: skip
        try:
            first, second = (r["response_range"] for r in got["responses"])
            revision, count = int(got["header"]["revision"]), int(first.get("count") or 0)
        except (KeyError, TypeError, ValueError):
            return 0, -1, True
        return revision, count, since == 0 or count != known or bool(second.get("kvs"))

    def get(self, scope: str, name: str, version: int | None = None) -> SecretVersion | None:
        versions = self._rows.get((scope, name)) or []
        if version is None:
            return versions[-1] if versions else None
        return next((v for v in versions if v.version == version), None)

    def latest(self, scope: str | None) -> list[SecretVersion]:
        return [v[-1] for k, v in sorted(self._rows.items()) if v and (scope is None or k[0] == scope)]

    def _dek(self, generation: int) -> bytes:
        if self.error is not None:
            raise self.error
        dek = self._deks.get(generation)
        if dek is None:
            raise WrapError(f"this node holds no cluster key of generation {generation}", where=DEK_KEY)
        return dek

    def open(self, row: SecretVersion) -> bytes:
        if self.error is None and not self.keeper:
            gkey = (row.scope, row.name, row.version, -1)
            plain = self._opened.get(gkey)
            blob = self._grants.get((row.scope, row.name, row.version))
            if plain is None and blob is not None:
                plain = open_grant(blob, self.node_key, self.node_id, row.scope, row.name, row.version)
                if plain is not None:
                    self._opened[gkey] = plain
            if plain is None:
                raise NotGranted(f"secret {row.name!r} (scope {row.scope!r}, version {row.version}) is not sealed for "
                                 f"node {self.node_id}", where=f"secrets/{row.name}",
                                 hint="a node opens only the secrets of the replicas assigned to it (a keeper node "
                                 f"seals them for it within a second or two); read it on a keeper node: "
                                 f"{', '.join(self.keepers) or 'none'}")  # fmt: skip
            return plain
        key = (row.scope, row.name, row.version, row.generation or 0)
        plain = self._opened.get(key)
        if plain is None:
            plain = open_row(self._dek(row.generation or 0), row.scope, row.name, row.version, row.value)
            if plain is not None:
                self._opened[key] = plain
        if plain is None:
            raise SecretsKeyError(f"secret {row.name!r} (scope {row.scope!r}) does not open with the cluster's key",
                                  where=f"secrets/{row.name}")  # fmt: skip
        return plain

    # -------------------------------------------------------------------------------------------------- writes
    async def put(self, scope: str, name: str, plain: bytes, *,
                  rotate: bool = False) -> tuple[SecretVersion, int | None]:  # fmt: skip
        """``plain`` sealed as the next version of the secret, written to etcd (conditional on the DEK record it was
        sealed under, so a rotation meanwhile makes it start again); the previous version number."""
        for _ in range(32):
            dkv = await self.client.get(DEK_KEY)
            if dkv is None:
                raise self.error or WrapError("the cluster has no secrets key", where=DEK_KEY)
            record = DekRecord.parse(dkv.json())
            if self.node_key is None:
                raise self.error or WrapError("this node has no secrets key", where=DEK_KEY)
            if self.node_id in record.wraps:
                public = dek_public(self._open(record)[record.generation])
            elif record.public:
                public = base64.b64decode(record.public)  # a node that opens nothing may still write
            else:
                raise NotGranted(f"node {self.node_id} holds no key of the cluster's secrets, so it writes none",
                                 where=f"secrets/{name}", hint="write secrets on a keeper node: "
                                 + ", ".join(sorted(record.wraps, key=lambda n: (len(n), n))))  # fmt: skip
            versions = sorted((r for r in map(_parse_row, await self.client.range(_row_key(scope, name))) if r),
                              key=lambda r: r.version)  # fmt: skip
            before = versions[-1] if versions else None
            if rotate and before is None:
                raise NotFoundError(f"secret {name!r} not found in scope {scope!r}", where=f"secrets/{name}")
            version = (before.version if before else 0) + 1
            key = _row_key(scope, name, version)
            t = now()
            blob = seal_row(public, scope, name, version, plain)
            doc = {"g": record.generation, "v": base64.b64encode(blob).decode(), "t": t}
            if await self.client.txn([mod_is(key, 0), mod_is(DEK_KEY, dkv.mod_revision)], [put_op(key, doc)]):
                first = versions[0].created_at if versions else t
                got = SecretVersion(scope, name, version, blob, t, first, record.generation)
                self._rows[(scope, name)] = [SecretVersion(v.scope, v.name, v.version, v.value, v.created_at, first,
                                                           v.generation) for v in versions] + [got]  # fmt: skip
                self.generation, self._dek_rev = record.generation, dkv.mod_revision
                return got, before.version if before else None
        raise ConflictError(f"secret {name!r}: too many concurrent writes", where=f"secrets/{name}")

    async def seal_for_nodes(self, needs: Iterable[tuple[str, str, str]]) -> tuple[int, int]:
        """A keeper's pass: each ``(node, scope, name)`` that a replica assigned to ``node`` refers to gets the
        secret's current version sealed for that node (a grant); every other grant goes (an older version, a replica
        moved away, a node gone). Keepers get none: they hold the DEK. Returns (grants written, grants dropped)."""
        if not self.keeper:
            return 0, 0
        publics: dict[str, bytes] = {}
        for kv in await self.client.range(NODES):
            try:
                publics[kv.key[len(NODES) :]] = base64.b64decode(kv.json()["public_key"])
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        want: dict[str, SecretVersion] = {}
        for node, scope, name in needs:
            row = self.get(scope, name)
            if row is not None and node in publics and node not in self.keepers:
                want[grant_key(node, scope, name, row.version)] = row
        have = {kv.key for kv in await self.client.range(GRANTS)}
        ops: list[dict[str, Any]] = []
        for key, row in sorted(want.items()):
            if key not in have:
                node = key[len(GRANTS) :].split("/", 1)[0]
                blob = seal_grant(self.open(row), publics[node], node, row.scope, row.name, row.version)
                ops.append(put_op(key, {"v": base64.b64encode(blob).decode()}))
        written = len(ops)
        ops += [delete_op(k) for k in sorted(have - want.keys())]
        for i in range(0, len(ops), _TXN_ROWS * 2):
            await self.client.txn([], ops[i : i + _TXN_ROWS * 2])
        return written, len(ops) - written

    async def delete(self, scope: str, name: str) -> bool:
        self._rows.pop((scope, name), None)
        return await self.client.delete(_row_key(scope, name), prefix=True) > 0

    # -------------------------------------------------------------------------------------------------- environments
    def environments(self) -> list[Environment]:
        return list(self._envs)

    @staticmethod
    def _name_key(project: str | None, name: str) -> str:
        return f"{ENV_NAMES}{urllib.parse.quote(project or '', safe='')}/{name}"

    async def add_environment(self, env: Environment) -> None:
        ok = await self.client.txn([mod_is(self._name_key(env.project_id, env.name), 0)],
                                   [put_op(self._name_key(env.project_id, env.name), env.id),
                                    put_op(ENVS + env.id, env.__dict__)])  # fmt: skip
        if not ok:
            where = f" in project {env.project_id!r}" if env.project_id else ""
            raise ConflictError(f"environment {env.name!r} already exists{where}", where="name")
        await self.sync()

    async def update_environment(self, env_id: str, **fields: Any) -> Environment:
        for _ in range(32):
            kv = await self.client.get(ENVS + env_id)
            if kv is None:
                raise NotFoundError(f"environment {env_id!r} not found", where=f"environments/{env_id}")
            old = Environment(**kv.json())
            new = Environment(**{**old.__dict__, **fields, "updated_at": now()})
            compare, ops = [mod_is(kv.key, kv.mod_revision)], [put_op(kv.key, new.__dict__)]
            if new.name != old.name:
                compare.append(mod_is(self._name_key(new.project_id, new.name), 0))
                ops += [delete_op(self._name_key(old.project_id, old.name)),
                        put_op(self._name_key(new.project_id, new.name), new.id)]  # fmt: skip
            if await self.client.txn(compare, ops):
                await self.sync()
                return new
            if new.name != old.name and await self.client.get(self._name_key(new.project_id, new.name)):
                raise ConflictError(f"environment {new.name!r} already exists", where="name")
        raise EtcdError(f"environment {env_id}: too many concurrent changes")

    async def delete_environment(self, env_id: str) -> None:
        """The environment and every secret of it."""
        kv = await self.client.get(ENVS + env_id)
        if kv is None:
            raise NotFoundError(f"environment {env_id!r} not found", where=f"environments/{env_id}")
        env = Environment(**kv.json())
        rows = delete_op(f"{ROWS}{urllib.parse.quote(env_id, safe='')}/", prefix=True)
        await self.client.txn([], [delete_op(kv.key), delete_op(self._name_key(env.project_id, env.name)), rows])
        await self.sync()

    # -------------------------------------------------------------------------------------------------- rotation
    async def rotate(self, without: str | None = None) -> int:
        """A new DEK of the next generation, wrapped for every recorded node but ``without`` (which also loses its
        public key record); every row sealed again under it; then the previous DEK's wraps go. Returns the new
        generation."""
        for _ in range(32):
            kv = await self.client.get(DEK_KEY)
            if kv is None:
                raise WrapError("the cluster has no secrets key to rotate", where=DEK_KEY)
            record = DekRecord.parse(kv.json())
            if record.retiring is not None:  # a rotation cut short: finish it first
                await self._reseal(record)
                again = await self.client.get(DEK_KEY)
                if again is None:
                    continue
                kv, record = again, DekRecord.parse(again.json())
                record.retiring, record.retiring_generation = None, 0
            old = self._open(record)[record.generation]
            publics = {}
            for n in await self.client.range(NODES):
                node_id = n.key[len(NODES) :]
                if node_id != without and node_id in record.wraps:  # holders only: a key recorded is not a grant
                    publics[node_id] = base64.b64decode(n.json()["public_key"])
            new_gen = record.generation + 1
            dek = _random.token_bytes(32)
            new = make_record(dek, new_gen, publics)
            new.retiring_generation = record.generation
            new.retiring = {n: base64.b64encode(wrap_dek(old, pub, n, record.generation)).decode()
                            for n, pub in publics.items()}  # fmt: skip
            ops = [put_op(DEK_KEY, new.dump())]
            if without is not None:
                ops += [delete_op(NODES + without), delete_op(grant_key(without), prefix=True)]
            if await self.client.txn([mod_is(DEK_KEY, kv.mod_revision)], ops):
                self._deks = {new_gen: dek, record.generation: old}
                await self._reseal(new)
                return new_gen
        raise EtcdError(f"{DEK_KEY}: too many concurrent changes")

    async def _reseal(self, record: DekRecord) -> None:
        """Every row of an older generation sealed again under ``record``'s, then the retiring wraps dropped."""
        deks = self._open(record)
        dek = deks[record.generation]
        public = dek_public(dek)
        for _ in range(8):
            stale = []
            for kv in await self.client.range(ROWS):
                row = _parse_row(kv)
                if row is not None and row.generation != record.generation:
                    stale.append((kv, row))
            if not stale:
                break
            for i in range(0, len(stale), _TXN_ROWS):
                compare, ops = [], []
                for kv, row in stale[i : i + _TXN_ROWS]:
                    plain = open_row(deks.get(row.generation or 0, b"\0" * 32), row.scope, row.name, row.version,
                                     row.value)  # fmt: skip
                    if plain is None:
                        log.error("secrets: %s (generation %s) does not open with any key this node holds; left as is",
                                  kv.key, row.generation)  # fmt: skip
                        continue
                    sealed = base64.b64encode(seal_row(public, row.scope, row.name, row.version, plain)).decode()
                    doc = {**kv.json(), "g": record.generation, "v": sealed}
                    compare.append(mod_is(kv.key, kv.mod_revision))
                    ops.append(put_op(kv.key, doc))
                if ops:
                    await self.client.txn(compare, ops)  # a row changed meanwhile: the next pass takes it again
        for _ in range(32):
            dkv = await self.client.get(DEK_KEY)
            if dkv is None:
                return
            current = DekRecord.parse(dkv.json())
            if current.generation != record.generation or current.retiring is None:
                return
            current.retiring, current.retiring_generation = None, 0
            if await self.client.txn([mod_is(DEK_KEY, dkv.mod_revision)], [put_op(DEK_KEY, current.dump())]):
                self._deks = {record.generation: dek}
                return


Placements = Callable[[EtcdClient], Awaitable[list[tuple[str, str, Mapping[str, str]]]]]
"""What each node runs, as the secrets need it: ``(node, deployment, env)`` for every replica assigned (the daemon
reads the cluster's assignments and specs; ``security`` does not import ``cluster``)."""


class ClusterSecretsHook:
    """The cluster's membership hook for secrets (the daemon hands it to ``cluster.membership.ClusterNode``): the node
    key goes with a join, the leader wraps the DEK for a node it admits, a node that enters the cluster reads its
    secrets from etcd from then on, and a node's removal rotates the DEK."""

    def __init__(self, secrets: Secrets, directory: Path, placements: Placements | None = None) -> None:
        self.secrets = secrets
        self.key_path = directory / KEY_FILE
        self.placements = placements
        self._task: asyncio.Task[None] | None = None

    def join_fields(self) -> dict[str, Any]:
        """ZLayer's ``secrets_pubkey``: the node's X25519 public key as 32 numbers."""
        return {"secrets_pubkey": list(load_node_key(self.key_path, create=True).public_key().public_bytes_raw())}

    async def entered(self, client: EtcdClient, node_id: str, how: str) -> None:
        """``how``: ``init`` (this node makes the DEK), ``join`` or ``start``. From here on this node's secrets are the
        cluster's; on init and join the ones this node had and the cluster lacks are carried over (their latest
        version). A key that is missing or wrong is said here and on every use, never replaced."""
        try:
            key = load_node_key(self.key_path, create=how == "init")
        except SecretsKeyError as e:
            log.error("secrets: %s", e)
            cs = ClusterSecrets(client, node_id, None)
            cs.error = e
            self.secrets.cluster = cs
            return
        cs = ClusterSecrets(client, node_id, key)
        made = False
        if how == "init":
            made = await cs.create()
        elif how == "start" and await client.get(DEK_KEY) is None:
            # a cluster made before its secrets were: the first node to start makes the key; the others hold no
            # wrap of it and say so (they join again to get one)
            made = await cs.create()
        try:
            await cs.sync()
        except EtcdError as e:
            log.warning("secrets: cannot read the cluster's secrets yet: %s", e)
        except SecretsKeyError as e:
            cs.error = e
        if cs.error is not None:
            log.error("secrets: %s%s", cs.error, f" (hint: {cs.error.hint})" if cs.error.hint else "")
        if (how == "join" or made) and cs.error is None:
            try:
                await self._carry(cs)
            except ZLayerError as e:
                log.warning("secrets: this node's secrets were not all carried into the cluster: %s", e)
        self.secrets.cluster = cs
        if self._task is not None:
            self._task.cancel()
        if self.placements is not None and cs.error is None:
            self._task = asyncio.get_running_loop().create_task(self._seal_loop(cs, self.placements))

    async def _seal_loop(self, cs: ClusterSecrets, placements: Placements, every: float = 0.5) -> None:
        """On a keeper: seal for each node what its replicas refer to, and drop what they no longer do, as
        assignments and secrets change (every ``every`` seconds; a pass writes only the difference)."""
        from zlayer.security.secrets import parse_reference

        failing = ""
        while True:
            await asyncio.sleep(every)
            try:
                if not cs.keeper or self.secrets.cluster is not cs:
                    continue  # (whether it is one: as the last read said)
                await cs.sync(max_age=every)
                needs: set[tuple[str, str, str]] = set()
                for node, deployment, env in await placements(cs.client):
                    for value in env.values():
                        try:
                            ref = parse_reference(value)
                            if ref is not None:
                                row = self.secrets.lookup(ref, deployment)
                                needs.add((node, row.scope, row.name))
                        except (NotFoundError, UsageError):
                            continue  # the replica says what is missing when it starts
                written, dropped = await cs.seal_for_nodes(needs)
                if written or dropped:
                    log.info("secrets: sealed %d secret version(s) for the nodes that run them, dropped %d",
                             written, dropped)  # fmt: skip
                failing = ""
            except (ZLayerError, OSError) as e:
                if str(e) != failing:
                    log.warning("secrets: sealing the secrets for the nodes that need them: %s", e)
                failing = str(e)

    async def _carry(self, cs: ClusterSecrets) -> None:
        known = {e.id for e in cs.environments()}
        left: set[str] = set()
        for env in self.secrets.store.list_environments():
            if env.id not in known:
                try:
                    await cs.add_environment(env)
                except ConflictError:  # the cluster has one of that name: this node's secrets of it stay here
                    log.warning("secrets: environment %s not carried into the cluster: it has one of that name",
                                env.name)  # fmt: skip
                    left.add(env.id)
        carried = 0
        for row in self.secrets.store.list_secrets(None):
            if row.scope in left or cs.get(row.scope, row.name) is not None:
                continue
            try:
                value = self.secrets.reveal(row)
                await cs.put(row.scope, row.name, value.encode())
                carried += 1
            except (SecretsKeyError, ConflictError, EtcdError) as e:
                log.warning("secrets: %s (scope %s) not carried into the cluster: %s", row.name, row.scope, e)
        if carried:
            log.info("secrets: carried %d secret(s) of this node into the cluster", carried)

    def _cs(self) -> ClusterSecrets:
        cs = self.secrets.cluster
        if cs is None:
            raise WrapError("this node holds no cluster secrets key", where=DEK_KEY)
        return cs

    async def admitted(self, client: EtcdClient, node_id: str, request: Mapping[str, Any]) -> None:
        pub = request.get("secrets_pubkey")
        if not pub:
            log.warning("secrets: node %s joined without a secrets key: the cluster's secrets stay closed to it",
                        node_id)  # fmt: skip
            return
        try:
            public = bytes(pub) if isinstance(pub, list) else b""
        except (TypeError, ValueError):
            public = b""
        await self._cs().admit(node_id, public)

    async def left(self, client: EtcdClient, node_id: str, removed: bool) -> None:
        cs = self._cs()
        await cs.sync()  # who holds the DEK now
        if not removed or node_id not in cs.keepers:
            await cs.forget(node_id)  # its grants go; it held no DEK, so there is nothing to rotate
            if removed:
                log.info("secrets: node %s removed: the secrets sealed for it are gone", node_id)
            return
        generation = await cs.rotate(without=node_id)
        log.info("secrets: node %s removed: the cluster key rotated to generation %d, every secret sealed again",
                 node_id, generation)  # fmt: skip


__all__ = ["KEY_FILE", "ClusterSecrets", "ClusterSecretsHook", "DekRecord", "NotGranted", "WrapError", "grant_key",
           "load_node_key", "make_record", "open_grant", "open_record", "public_b64", "seal_grant", "unwrap_dek",
           "wrap_dek"]  # fmt: skip
