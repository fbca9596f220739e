"""Secrets at rest and their references in specs.

Values are sealed with AES-256-GCM (a random 12-byte nonce in front: ``nonce ‖ ciphertext ‖ tag``; the secret's
``scope:name`` as associated data, so a sealed value moved to another name does not open) under the node's key,
found as ZLayer finds it: ``ZLAYER_SECRETS_KEY`` (64 hex digits), else ``ZLAYER_SECRETS_PASSWORD`` through Argon2id
(m 19 MiB, t 2, p 1, the deployment name as salt, padded with NULs to argon2's 8 bytes), else the key file
``DATA/secrets/secrets_{deployment}.key`` (32 raw bytes, 0600), made only for a store that holds no secret yet.
A check value in the store tells a wrong or missing key from a right one: the node then says so and seals nothing
under another key.

References (ZLayer's grammar), resolved when a container starts:
``$S:name`` (the deployment's scope, then ``global``), ``$S:name/field`` (a JSON field of the value),
``$S:@service/name`` (scope ``@service``), ``$S::env/name`` and ``$secret://env/name`` (an environment of no
project), ``$S:project:env/name`` (an environment of a project); each may end in ``/field``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets as _random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zlayer.errors import NotFoundError, UsageError, ZLayerError
from zlayer.security.store import Environment, SecretVersion, SecurityStore, new_id, now

if TYPE_CHECKING:
    from zlayer.security.cluster import ClusterSecrets

GLOBAL = "global"
KEY_CHECK = "secrets_key_check"
_CHECK_TEXT = b"zlayer secrets key check v1"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class SecretsKeyError(ZLayerError):
    """The node's secrets key is missing or is not the one its secrets were sealed with."""

    code = "secrets_key"
    http_status = 503


class NotGranted(SecretsKeyError):
    """In a cluster: a secret this node may not open — it holds no key of the cluster's secrets, and no replica
    assigned to it refers to the secret (or a keeper has not sealed this version for it yet)."""


def check_name(name: str, where: str = "name") -> str:
    if not NAME.match(name):
        raise UsageError(f"secret name {name[:80]!r}: a letter or _ first, then letters, digits, _ . - (at most 128)",
                         where=where)  # fmt: skip
    return name


class Keyring:
    """The node's 32-byte key, resolved once (:meth:`key`); errors say which source failed and what to do."""

    def __init__(self, store: SecurityStore, secrets_dir: Path, deployment: str = "zlayer",
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.store = store
        self.dir = secrets_dir
        self.deployment = deployment
        self.env = os.environ if env is None else env
        self._key: bytes | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.dir / f"secrets_{self.deployment}.key"

    def _resolve(self) -> tuple[bytes | None, str]:
        hexkey = self.env.get("ZLAYER_SECRETS_KEY")
        if hexkey:
            try:
                raw = bytes.fromhex(hexkey.strip())
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise SecretsKeyError("ZLAYER_SECRETS_KEY is not 64 hex digits (a 32-byte key)",
                                      where="ZLAYER_SECRETS_KEY")  # fmt: skip
            return raw, "ZLAYER_SECRETS_KEY"
        password = self.env.get("ZLAYER_SECRETS_PASSWORD")
        if password:
            from argon2.low_level import Type, hash_secret_raw

            salt = self.deployment.encode().ljust(8, b"\0")
            raw = hash_secret_raw(password.encode(), salt, time_cost=2, memory_cost=19456, parallelism=1,
                                  hash_len=32, type=Type.ID, version=19)  # fmt: skip
            return raw, "ZLAYER_SECRETS_PASSWORD"
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, str(self.path)
        except OSError as e:
            raise SecretsKeyError(f"cannot read the secrets key {self.path}: {e.strerror}", where=str(self.path)) from e
        if len(raw) != 32:
            raise SecretsKeyError(f"{self.path} holds {len(raw)} bytes, not a 32-byte key", where=str(self.path))
        return raw, str(self.path)

    def key(self) -> bytes:
        with self._lock:
            if self._key is not None:
                return self._key
            raw, source = self._resolve()
            check = self.store.get_meta(KEY_CHECK)
            if raw is None:
                if check is not None or self.store.list_secrets(None):
                    raise SecretsKeyError(
                        f"the secrets key {source} is missing, and this node has secrets sealed with it",
                        where=source,
                        hint="restore the key file (0600), or set ZLAYER_SECRETS_KEY / ZLAYER_SECRETS_PASSWORD as "
                        "when they were sealed; no new key is made while sealed secrets exist",
                    )
                from zlayer.paths import private_dir, write_atomic

                raw = _random.token_bytes(32)
                private_dir(self.dir)
                write_atomic(self.path, raw)
            if check is None:
                self.store.set_meta(KEY_CHECK, _seal(raw, _CHECK_TEXT, b"check").hex())
            elif _open(raw, bytes.fromhex(check), b"check") != _CHECK_TEXT:
                raise SecretsKeyError(f"the secrets key from {source} does not open this node's secrets",
                                      where=source, hint="use the key they were sealed with")  # fmt: skip
            self._key = raw
            return raw


def _seal(key: bytes, plain: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = _random.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, plain, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], aad)
    except (InvalidTag, ValueError):
        return None


@dataclass(frozen=True)
class Reference:
    """One parsed reference: where to look (scopes in order, or an environment) and an optional JSON field."""

    text: str
    name: str
    field: str | None = None
    service: str | None = None
    env: str | None = None
    project: str | None = None


def parse_reference(value: str) -> Reference | None:
    """The reference ``value`` holds, None when it is a plain value; :class:`UsageError` when it is malformed."""
    if value.startswith("$secret://"):
        where, _, tail = value[len("$secret://") :].partition("/")
        name, _, field = tail.partition("/")
        if not where or not name:
            raise UsageError(f"{value!r}: expected $secret://ENV/NAME[/FIELD]")
        return Reference(value, check_name(name), field or None, env=where)
    if not value.startswith("$S:"):
        return None
    rest = value[3:]
    service: str | None = None
    env: str | None = None
    project: str | None = None
    if rest.startswith("@"):
        service, _, rest = rest[1:].partition("/")
        if not service or not rest:
            raise UsageError(f"{value!r}: expected $S:@SERVICE/NAME[/FIELD]")
    elif ":" in rest.split("/", 1)[0]:
        head, _, rest = rest.partition("/")
        project, _, env = head.partition(":")
        if not env or not rest:
            raise UsageError(f"{value!r}: expected $S::ENV/NAME or $S:PROJECT:ENV/NAME[/FIELD]")
    name, _, field = rest.partition("/")
    return Reference(value, check_name(name), field or None, service=service, env=env, project=project or None)


class Secrets:
    """Secrets, environments and variables over a :class:`SecurityStore`, sealed with a :class:`Keyring` — or, once
    the node is in a cluster (:attr:`cluster`), the secret rows of the cluster, sealed under its DEK
    (:mod:`zlayer.security.cluster`). Writes go through :meth:`aput` and :meth:`adelete`; :meth:`refresh` brings a
    cluster's rows up to date before a read."""

    def __init__(self, store: SecurityStore, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring
        self.cluster: ClusterSecrets | None = None

    async def refresh(self, max_age: float = 0.0) -> None:
        """In a cluster: read the rows again from etcd (unless read less than ``max_age`` seconds ago)."""
        if self.cluster is not None:
            await self.cluster.sync(max_age)

    def latest(self, scope: str | None) -> list[SecretVersion]:
        """The current version of each secret of ``scope`` (None: of every scope)."""
        return self.cluster.latest(scope) if self.cluster is not None else self.store.list_secrets(scope)

    def _row(self, scope: str, name: str, version: int | None = None) -> SecretVersion | None:
        if self.cluster is not None:
            return self.cluster.get(scope, name, version)
        return self.store.get_secret(scope, name, version)

    async def aput(self, scope: str, name: str, value: str, *,
                   rotate: bool = False) -> tuple[SecretVersion, int | None]:  # fmt: skip
        """:meth:`put`, or in a cluster the same written to etcd under the cluster's key."""
        if self.cluster is None:
            return await asyncio.to_thread(self.put, scope, name, value, rotate=rotate)
        check_name(name)
        if len(value.encode()) > 64 * 1024:
            raise UsageError("a secret value may hold at most 64 KiB", where="value")
        return await self.cluster.put(scope, name, value.encode(), rotate=rotate)

    async def adelete(self, scope: str, name: str) -> bool:
        """Delete a secret with every version; False when there was none."""
        if self.cluster is None:
            return self.store.delete_secret(scope, name)
        return await self.cluster.delete(scope, name)

    async def delete_environment(self, env_id: str) -> None:
        """The environment and every secret of it."""
        if self.cluster is not None:
            await self.cluster.delete_environment(env_id)
        else:
            self.store.delete_environment(env_id)

    def environments(self) -> list[Environment]:
        return self.cluster.environments() if self.cluster is not None else self.store.list_environments()

    async def update_environment(self, env_id: str, **fields: str) -> Environment:
        if self.cluster is not None:
            return await self.cluster.update_environment(env_id, **fields)
        return self.store.update_environment(env_id, **fields)

    # ---------------------------------------------------------------- environments
    def environment(self, ref: str, project: str | None = None) -> Environment:
        """An environment by id, or by name within ``project`` (no project: the environments of none)."""
        envs = self.environments()
        for e in envs:
            if e.id == ref:
                return e
        for e in envs:
            if e.name == ref and (e.project_id or None) == (project or None):
                return e
        where = f"environments/{ref}" if project is None else f"projects/{project}/environments/{ref}"
        raise NotFoundError(f"environment {ref!r} not found" + (f" in project {project!r}" if project else ""),
                            where=where, hint="zlayer env create NAME")  # fmt: skip

    def create_environment(self, name: str, project: str | None = None, description: str | None = None) -> Environment:
        if not NAME.match(name):
            raise UsageError(f"environment name {name[:80]!r}: letters, digits, _ . - (a letter first)", where="name")
        if self.cluster is not None:
            raise UsageError("in a cluster an environment is made through acreate_environment", where="name")
        t = now()
        env = Environment(new_id(), name, project or None, description, t, t)
        self.store.add_environment(env)
        return env

    async def acreate_environment(self, name: str, project: str | None = None,
                                  description: str | None = None) -> Environment:  # fmt: skip
        """:meth:`create_environment`, or in a cluster the same recorded in etcd (its id is its secrets' scope on
        every node)."""
        if self.cluster is None:
            return self.create_environment(name, project, description)
        if not NAME.match(name):
            raise UsageError(f"environment name {name[:80]!r}: letters, digits, _ . - (a letter first)", where="name")
        t = now()
        env = Environment(new_id(), name, project or None, description, t, t)
        await self.cluster.add_environment(env)
        return env

    def scope_of(self, env: str | None = None, project: str | None = None, scope: str | None = None) -> str:
        """The storage scope of the API's and the CLI's ``environment``/``scope``/``project`` parameters."""
        if env:
            return self.environment(env, project).id
        return scope or GLOBAL

    # ---------------------------------------------------------------- values
    def put(self, scope: str, name: str, value: str, *, rotate: bool = False) -> tuple[SecretVersion, int | None]:
        """Seal ``value`` as the secret's next version (``rotate`` needs it to exist); returns it and the previous
        version number (None: it is new)."""
        check_name(name)
        if len(value.encode()) > 64 * 1024:
            raise UsageError("a secret value may hold at most 64 KiB", where="value")
        if self.cluster is not None:
            raise UsageError("in a cluster a secret is written through aput", where=f"secrets/{name}")
        before = self.store.get_secret(scope, name)
        if rotate and before is None:
            raise NotFoundError(f"secret {name!r} not found in scope {scope!r}", where=f"secrets/{name}")
        blob = _seal(self.keyring.key(), value.encode(), f"{scope}:{name}".encode())
        got = self.store.put_secret(scope, name, blob, new_version=True)
        return got, before.version if before else None

    def reveal(self, row: SecretVersion) -> str:
        if row.generation is not None:
            if self.cluster is None:
                raise SecretsKeyError(f"secret {row.name!r} is a cluster's and this node is in none",
                                      where=f"secrets/{row.name}")  # fmt: skip
            return self.cluster.open(row).decode()
        plain = _open(self.keyring.key(), row.value, f"{row.scope}:{row.name}".encode())
        if plain is None:
            raise SecretsKeyError(f"secret {row.name!r} (scope {row.scope!r}) does not open with this node's key",
                                  where=f"secrets/{row.name}")  # fmt: skip
        return plain.decode()

    def get(self, scope: str, name: str, version: int | None = None) -> SecretVersion:
        row = self._row(scope, name, version)
        if row is None:
            raise NotFoundError(f"secret {name!r} not found in scope {scope!r}", where=f"secrets/{name}")
        return row

    # ---------------------------------------------------------------- references
    def _scopes(self, ref: Reference, deployment: str) -> list[str]:
        if ref.env is not None:
            return [self.environment(ref.env, ref.project).id]
        if ref.service is not None:
            return [f"@{ref.service}"]
        return [deployment, GLOBAL]

    def lookup(self, ref: Reference, deployment: str) -> SecretVersion:
        """The current version a reference names; :class:`NotFoundError` naming the reference otherwise."""
        try:
            scopes = self._scopes(ref, deployment)
        except NotFoundError as e:
            raise NotFoundError(f"{ref.text}: {e.message}", where=e.where) from None
        for scope in scopes:
            row = self._row(scope, ref.name)
            if row is not None:
                return row
        raise NotFoundError(f"{ref.text}: no secret {ref.name!r} in scope {' or '.join(map(repr, scopes))}",
                            hint=f"zlayer secret create {ref.name} ...")  # fmt: skip

    def value_of(self, ref: Reference, deployment: str) -> str:
        value = self.reveal(self.lookup(ref, deployment))
        if ref.field is None:
            return value
        try:
            doc = json.loads(value)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or ref.field not in doc:
            raise NotFoundError(f"{ref.text}: the secret {ref.name!r} has no JSON field {ref.field!r}")
        field = doc[ref.field]
        return field if isinstance(field, str) else json.dumps(field)

    def resolve_env(self, deployment: str, env: Mapping[str, str], *, where: str = "env") -> dict[str, str]:
        """``env`` with every reference replaced by its value; the first that does not resolve raises, naming the
        variable (never a container started with an empty value)."""
        out: dict[str, str] = {}
        for key, value in env.items():
            try:
                ref = parse_reference(value)
                out[key] = value if ref is None else self.value_of(ref, deployment)
            except (NotFoundError, UsageError) as e:
                raise type(e)(f"{where}.{key}: {e.message}", where=f"{where}.{key}", hint=e.hint) from None
        return out

    def check_env(self, deployment: str, env: Mapping[str, str], *, where: str = "env") -> None:
        """:meth:`resolve_env`'s errors, without the values: every reference names a secret that exists (and a JSON
        field it has, where this node can open it — a node of a cluster opens only what its replicas use)."""
        for key, value in env.items():
            try:
                ref = parse_reference(value)
                if ref is not None:
                    self.value_of(ref, deployment)
            except NotGranted:
                continue  # it exists (lookup found it); the node that runs the replica gets it sealed
            except (NotFoundError, UsageError) as e:
                raise type(e)(f"{where}.{key}: {e.message}", where=f"{where}.{key}", hint=e.hint) from None

    def versions(self, deployment: str, env: Mapping[str, str]) -> str:
        """Which version of each referenced secret ``env`` would get: a replica built from other versions is
        replaced by the next rollout."""
        parts = []
        for key in sorted(env):
            ref = parse_reference(env[key])
            if ref is not None:
                try:
                    row = self.lookup(ref, deployment)
                except (NotFoundError, UsageError):
                    continue
                parts.append(f"{key}={row.scope}:{row.name}:{row.version}")
        return ",".join(parts)


def parse_dotenv(text: str) -> tuple[dict[str, str], list[str]]:
    """``NAME=value`` lines (``export`` and quotes allowed, ``#`` comments); unparsable lines are reported."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not NAME.match(name):
            errors.append(f"line {n}: expected NAME=value")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values, errors


__all__ = ["GLOBAL", "Keyring", "NotGranted", "Reference", "Secrets", "SecretsKeyError", "parse_dotenv",
           "parse_reference"]  # fmt: skip
