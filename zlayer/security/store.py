"""Where identities, grants, the audit log, environments, variables and encrypted secrets are kept:
:class:`SecurityStore` (the protocol a cluster's replicated store will implement too) and :class:`SqliteSecurityStore`,
one SQLite file of the security package's own (``DATA/security.db``, mode 0600, WAL: a crash at any point leaves
the last committed change). Secret values arrive here already encrypted (:mod:`zlayer.security.secrets`)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from zlayer.errors import ConflictError, NotFoundError, ZLayerError
from zlayer.security.rbac import Grant, Level

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE COLLATE NOCASE, display_name TEXT NOT NULL, role TEXT NOT NULL,
    password_hash TEXT NOT NULL, is_active INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    last_login_at TEXT);
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS group_members (
    group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, PRIMARY KEY (group_id, user_id));
CREATE TABLE IF NOT EXISTS permissions (
    id TEXT PRIMARY KEY, subject_kind TEXT NOT NULL, subject_id TEXT NOT NULL, resource_kind TEXT NOT NULL,
    resource_id TEXT, level TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS permissions_by_subject ON permissions (subject_kind, subject_id);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, owner_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL, roles TEXT NOT NULL, expires_at REAL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, user_id TEXT NOT NULL, action TEXT NOT NULL,
    resource_kind TEXT NOT NULL, resource_id TEXT, details TEXT, ip TEXT, user_agent TEXT, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS environments (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL DEFAULT '', description TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, UNIQUE (project_id, name));
CREATE TABLE IF NOT EXISTS variables (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, value TEXT NOT NULL, scope TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, UNIQUE (scope, name));
CREATE TABLE IF NOT EXISTS secrets (
    scope TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, value BLOB NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (scope, name, version));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revoked_sessions (sid TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS oidc_identities (
    provider TEXT NOT NULL, subject TEXT NOT NULL, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL, PRIMARY KEY (provider, subject));
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class User:
    id: str
    email: str
    display_name: str
    role: str  # admin | user
    password_hash: str
    is_active: bool
    created_at: str
    updated_at: str
    last_login_at: str | None = None

    def view(self) -> dict[str, Any]:
        """ZLayer's UserView: never the password hash."""
        return {"id": self.id, "email": self.email, "display_name": self.display_name, "role": self.role,
                "is_active": self.is_active, "last_login_at": self.last_login_at}  # fmt: skip


@dataclass(frozen=True)
class Group:
    id: str
    name: str
    description: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    owner_id: str
    secret_hash: str
    roles: tuple[str, ...]
    expires_at: float | None
    created_at: str


@dataclass(frozen=True)
class Environment:
    id: str
    name: str
    project_id: str | None
    description: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Variable:
    id: str
    name: str
    value: str
    scope: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class SecretVersion:
    scope: str
    name: str
    version: int
    value: bytes  # nonce ‖ ciphertext ‖ tag
    created_at: str  # when this version was written
    first_created_at: str  # when version 1 was
    generation: int | None = None  # a cluster's row: the generation of the cluster key it is sealed under


class SecurityStore(Protocol):
    """What :class:`zlayer.security.Security` keeps; each call is one transaction."""

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def count_users(self) -> int: ...
    def add_user(self, user: User) -> None: ...
    def get_user(self, user_id: str) -> User | None: ...
    def user_by_email(self, email: str) -> User | None: ...
    def list_users(self) -> list[User]: ...
    def update_user(self, user_id: str, **fields: Any) -> User: ...
    def delete_user(self, user_id: str) -> None: ...
    def add_group(self, group: Group) -> None: ...
    def get_group(self, group_id: str) -> Group | None: ...
    def list_groups(self) -> list[Group]: ...
    def update_group(self, group_id: str, **fields: Any) -> Group: ...
    def delete_group(self, group_id: str) -> None: ...
    def add_member(self, group_id: str, user_id: str) -> None: ...
    def remove_member(self, group_id: str, user_id: str) -> None: ...
    def members(self) -> dict[str, list[str]]: ...
    def add_grant(self, grant: Grant) -> None: ...
    def list_grants(self) -> list[Grant]: ...
    def delete_grant(self, grant_id: str) -> Grant: ...
    def add_key(self, key: ApiKey) -> None: ...
    def get_key(self, key_id: str) -> ApiKey | None: ...
    def list_keys(self) -> list[ApiKey]: ...
    def delete_key(self, key_id: str) -> None: ...
    def add_audit(self, entry: dict[str, Any]) -> None: ...
    def list_audit(self, *, user: str | None, resource_kind: str | None, since: str | None, until: str | None,
                   limit: int) -> list[dict[str, Any]]: ...  # fmt: skip
    def add_environment(self, env: Environment) -> None: ...
    def list_environments(self) -> list[Environment]: ...
    def update_environment(self, env_id: str, **fields: Any) -> Environment: ...
    def delete_environment(self, env_id: str) -> None: ...
    def put_variable(self, var: Variable) -> None: ...
    def list_variables(self) -> list[Variable]: ...
    def delete_variable(self, var_id: str) -> None: ...
    def put_secret(self, scope: str, name: str, value: bytes, *, new_version: bool) -> SecretVersion: ...
    def get_secret(self, scope: str, name: str, version: int | None = None) -> SecretVersion | None: ...
    def list_secrets(self, scope: str | None) -> list[SecretVersion]: ...
    def delete_secret(self, scope: str, name: str) -> bool: ...
    def revoke_session(self, sid: str, expires: float) -> None: ...
    def session_revoked(self, sid: str) -> bool: ...
    def get_identity(self, provider: str, subject: str) -> str | None: ...
    def add_identity(self, provider: str, subject: str, user_id: str) -> None: ...
    def close(self) -> None: ...


class SecurityStoreError(ZLayerError):
    code = "security_store"


class SqliteSecurityStore:
    """:class:`SecurityStore` on ``path`` (made 0600 before anything is written to it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise SecurityStoreError(f"cannot open the security store {self.path}: {e}", where=str(self.path)) from e
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self.db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # meta
    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # users
    @staticmethod
    def _user(r: sqlite3.Row) -> User:
        return User(r["id"], r["email"], r["display_name"], r["role"], r["password_hash"], bool(r["is_active"]),
                    r["created_at"], r["updated_at"], r["last_login_at"])  # fmt: skip

    def count_users(self) -> int:
        return int(self._rows("SELECT count(*) AS n FROM users")[0]["n"])

    def add_user(self, user: User) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO users VALUES (?,?,?,?,?,?,?,?,?)",
                           (user.id, user.email, user.display_name, user.role, user.password_hash,
                            int(user.is_active), user.created_at, user.updated_at, user.last_login_at))  # fmt: skip
        except sqlite3.IntegrityError:
            raise ConflictError(f"a user with email {user.email!r} already exists", where="email") from None

    def get_user(self, user_id: str) -> User | None:
        rows = self._rows("SELECT * FROM users WHERE id=?", (user_id,))
        return self._user(rows[0]) if rows else None

    def user_by_email(self, email: str) -> User | None:
        rows = self._rows("SELECT * FROM users WHERE email=?", (email,))
        return self._user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        return [self._user(r) for r in self._rows("SELECT * FROM users ORDER BY created_at, email")]

    def _update(self, table: str, key: str, fields: dict[str, Any]) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            cur = db.execute(f"UPDATE {table} SET {sets} WHERE id=?", (*fields.values(), key))
            if cur.rowcount == 0:
                raise NotFoundError(f"{table[:-1]} {key!r} not found", where=f"{table}/{key}")

    def update_user(self, user_id: str, **fields: Any) -> User:
        if "is_active" in fields:
            fields["is_active"] = int(fields["is_active"])
        self._update("users", user_id, {**fields, "updated_at": now()})
        got = self.get_user(user_id)
        assert got is not None
        return got

    def delete_user(self, user_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM users WHERE id=?", (user_id,)).rowcount == 0:
                raise NotFoundError(f"user {user_id!r} not found", where=f"users/{user_id}")
            db.execute("DELETE FROM permissions WHERE subject_kind='user' AND subject_id=?", (user_id,))

    # groups
    @staticmethod
    def _group(r: sqlite3.Row) -> Group:
        return Group(r["id"], r["name"], r["description"], r["created_at"], r["updated_at"])

    def add_group(self, group: Group) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO groups VALUES (?,?,?,?,?)",
                           (group.id, group.name, group.description, group.created_at, group.updated_at))  # fmt: skip
        except sqlite3.IntegrityError:
            raise ConflictError(f"a group named {group.name!r} already exists", where="name") from None

    def get_group(self, group_id: str) -> Group | None:
        rows = self._rows("SELECT * FROM groups WHERE id=? OR name=?", (group_id, group_id))
        return self._group(rows[0]) if rows else None

    def list_groups(self) -> list[Group]:
        return [self._group(r) for r in self._rows("SELECT * FROM groups ORDER BY name")]

    def update_group(self, group_id: str, **fields: Any) -> Group:
        try:
            self._update("groups", group_id, {**fields, "updated_at": now()})
        except sqlite3.IntegrityError:
            raise ConflictError(f"a group named {fields.get('name')!r} already exists", where="name") from None
        got = self.get_group(group_id)
        assert got is not None
        return got

    def delete_group(self, group_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM groups WHERE id=?", (group_id,)).rowcount == 0:
                raise NotFoundError(f"group {group_id!r} not found", where=f"groups/{group_id}")
            db.execute("DELETE FROM permissions WHERE subject_kind='group' AND subject_id=?", (group_id,))

    def add_member(self, group_id: str, user_id: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO group_members VALUES (?, ?)", (group_id, user_id))

    def remove_member(self, group_id: str, user_id: str) -> None:
        with self._tx() as db:
            cur = db.execute("DELETE FROM group_members WHERE group_id=? AND user_id=?", (group_id, user_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"user {user_id!r} is not a member of group {group_id!r}",
                                    where=f"groups/{group_id}/members/{user_id}")  # fmt: skip

    def members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self._rows("SELECT group_id, user_id FROM group_members ORDER BY group_id"):
            out.setdefault(r["group_id"], []).append(r["user_id"])
        return out

    # grants
    def add_grant(self, grant: Grant) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO permissions VALUES (?,?,?,?,?,?,?)",
                       (grant.id, grant.subject_kind, grant.subject_id, grant.resource_kind, grant.resource_id,
                        grant.level.word, grant.created_at))  # fmt: skip

    @staticmethod
    def _grant(r: sqlite3.Row) -> Grant:
        return Grant(r["id"], r["subject_kind"], r["subject_id"], r["resource_kind"], r["resource_id"],
                     Level[str(r["level"]).upper()], r["created_at"])  # fmt: skip

    def list_grants(self) -> list[Grant]:
        return [self._grant(r) for r in self._rows("SELECT * FROM permissions ORDER BY created_at")]

    def delete_grant(self, grant_id: str) -> Grant:
        rows = self._rows("SELECT * FROM permissions WHERE id=?", (grant_id,))
        if not rows:
            raise NotFoundError(f"permission {grant_id!r} not found", where=f"permissions/{grant_id}")
        with self._tx() as db:
            db.execute("DELETE FROM permissions WHERE id=?", (grant_id,))
        return self._grant(rows[0])

    # API keys
    @staticmethod
    def _key(r: sqlite3.Row) -> ApiKey:
        return ApiKey(r["id"], r["name"], r["owner_id"], r["secret_hash"], tuple(json.loads(r["roles"])),
                      r["expires_at"], r["created_at"])  # fmt: skip

    def add_key(self, key: ApiKey) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO api_keys VALUES (?,?,?,?,?,?,?)",
                       (key.id, key.name, key.owner_id, key.secret_hash, json.dumps(list(key.roles)),
                        key.expires_at, key.created_at))  # fmt: skip

    def get_key(self, key_id: str) -> ApiKey | None:
        rows = self._rows("SELECT * FROM api_keys WHERE id=?", (key_id,))
        return self._key(rows[0]) if rows else None

    def list_keys(self) -> list[ApiKey]:
        return [self._key(r) for r in self._rows("SELECT * FROM api_keys ORDER BY created_at")]

    def delete_key(self, key_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM api_keys WHERE id=?", (key_id,)).rowcount == 0:
                raise NotFoundError(f"API key {key_id!r} not found", where=f"api-keys/{key_id}")

    # audit
    def add_audit(self, entry: dict[str, Any]) -> None:
        details = entry.get("details")
        with self._tx() as db:
            db.execute("INSERT INTO audit (id, user_id, action, resource_kind, resource_id, details, ip, user_agent, "
                       "created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                       (entry["id"], entry["user_id"], entry["action"], entry["resource_kind"],
                        entry.get("resource_id"), None if details is None else json.dumps(details), entry.get("ip"),
                        entry.get("user_agent"), entry["created_at"]))  # fmt: skip

    def list_audit(self, *, user: str | None, resource_kind: str | None, since: str | None, until: str | None,
                   limit: int) -> list[dict[str, Any]]:  # fmt: skip
        where, args = [], []
        for clause, value in (("user_id=?", user), ("resource_kind=?", resource_kind), ("created_at>=?", since),
                              ("created_at<=?", until)):  # fmt: skip
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
        out = []
        for r in self._rows(sql, (*args, limit)):
            d = {k: r[k] for k in ("id", "user_id", "action", "resource_kind", "resource_id", "ip", "user_agent",
                                   "created_at")}  # fmt: skip
            d["details"] = None if r["details"] is None else json.loads(r["details"])
            out.append(d)
        return out

    # environments
    @staticmethod
    def _env(r: sqlite3.Row) -> Environment:
        return Environment(r["id"], r["name"], r["project_id"] or None, r["description"], r["created_at"],
                           r["updated_at"])  # fmt: skip

    def add_environment(self, env: Environment) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO environments VALUES (?,?,?,?,?,?)",
                           (env.id, env.name, env.project_id or "", env.description, env.created_at,
                            env.updated_at))  # fmt: skip
        except sqlite3.IntegrityError:
            raise ConflictError(f"environment {env.name!r} already exists", where="name") from None

    def list_environments(self) -> list[Environment]:
        return [self._env(r) for r in self._rows("SELECT * FROM environments ORDER BY project_id, name")]

    def update_environment(self, env_id: str, **fields: Any) -> Environment:
        try:
            self._update("environments", env_id, {**fields, "updated_at": now()})
        except sqlite3.IntegrityError:
            raise ConflictError(f"environment {fields.get('name')!r} already exists", where="name") from None
        return next(e for e in self.list_environments() if e.id == env_id)

    def delete_environment(self, env_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM environments WHERE id=?", (env_id,)).rowcount == 0:
                raise NotFoundError(f"environment {env_id!r} not found", where=f"environments/{env_id}")
            db.execute("DELETE FROM secrets WHERE scope=?", (env_id,))

    # variables
    def put_variable(self, var: Variable) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO variables VALUES (?,?,?,?,?,?)",
                           (var.id, var.name, var.value, var.scope or "", var.created_at, var.updated_at))  # fmt: skip
        except sqlite3.IntegrityError:
            raise ConflictError(f"variable {var.name!r} already exists in that scope", where="name") from None

    def list_variables(self) -> list[Variable]:
        return [Variable(r["id"], r["name"], r["value"], r["scope"] or None, r["created_at"], r["updated_at"])
                for r in self._rows("SELECT * FROM variables ORDER BY scope, name")]  # fmt: skip

    def delete_variable(self, var_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM variables WHERE id=?", (var_id,)).rowcount == 0:
                raise NotFoundError(f"variable {var_id!r} not found", where=f"variables/{var_id}")

    # sessions ended by logout (until they would have expired anyway)
    def revoke_session(self, sid: str, expires: float) -> None:
        import time

        with self._tx() as db:
            db.execute("DELETE FROM revoked_sessions WHERE expires < ?", (time.time(),))
            db.execute("INSERT OR REPLACE INTO revoked_sessions VALUES (?, ?)", (sid, expires))

    def session_revoked(self, sid: str) -> bool:
        return bool(self._rows("SELECT 1 FROM revoked_sessions WHERE sid=?", (sid,)))

    # OIDC identities: (provider, sub) -> account
    def get_identity(self, provider: str, subject: str) -> str | None:
        rows = self._rows("SELECT user_id FROM oidc_identities WHERE provider=? AND subject=?", (provider, subject))
        return str(rows[0]["user_id"]) if rows else None

    def add_identity(self, provider: str, subject: str, user_id: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO oidc_identities VALUES (?,?,?,?)", (provider, subject, user_id, now()))

    # secrets
    _LATEST = ("SELECT s.*, (SELECT min(created_at) FROM secrets f WHERE f.scope=s.scope AND f.name=s.name) AS first "
               "FROM secrets s WHERE s.version=(SELECT max(version) FROM secrets m WHERE m.scope=s.scope AND "
               "m.name=s.name)")  # fmt: skip

    @staticmethod
    def _secret(r: sqlite3.Row) -> SecretVersion:
        return SecretVersion(r["scope"], r["name"], int(r["version"]), bytes(r["value"]), r["created_at"], r["first"])

    def put_secret(self, scope: str, name: str, value: bytes, *, new_version: bool) -> SecretVersion:
        """Store ``value`` as the secret's next version (``new_version``) or in place of its current one."""
        with self._tx() as db:
            row = db.execute("SELECT max(version) FROM secrets WHERE scope=? AND name=?", (scope, name)).fetchone()
            current = int(row[0] or 0)
            version = current + 1 if new_version or current == 0 else current
            db.execute("INSERT OR REPLACE INTO secrets VALUES (?,?,?,?,?)", (scope, name, version, value, now()))
        got = self.get_secret(scope, name)
        assert got is not None
        return got

    def get_secret(self, scope: str, name: str, version: int | None = None) -> SecretVersion | None:
        if version is None:
            rows = self._rows(self._LATEST + " AND s.scope=? AND s.name=?", (scope, name))
        else:
            rows = self._rows("SELECT s.*, s.created_at AS first FROM secrets s WHERE scope=? AND name=? AND "
                              "version=?", (scope, name, version))  # fmt: skip
        return self._secret(rows[0]) if rows else None

    def list_secrets(self, scope: str | None) -> list[SecretVersion]:
        if scope is None:
            return [self._secret(r) for r in self._rows(self._LATEST + " ORDER BY s.scope, s.name")]
        return [self._secret(r) for r in self._rows(self._LATEST + " AND s.scope=? ORDER BY s.name", (scope,))]

    def delete_secret(self, scope: str, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM secrets WHERE scope=? AND name=?", (scope, name)).rowcount > 0


__all__ = [
    "ApiKey",
    "Environment",
    "Group",
    "SecretVersion",
    "SecurityStore",
    "SecurityStoreError",
    "SqliteSecurityStore",
    "User",
    "Variable",
    "new_id",
    "now",
]
