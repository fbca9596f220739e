""":class:`Security`: accounts (Argon2id passwords), groups, grants, API keys, sessions, the audit log, and the one
decision every API route asks for (:meth:`Security.level`). The API holds one; nothing here knows HTTP."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from zlayer.errors import AuthError, ConflictError, NotFoundError, UsageError
from zlayer.security.rbac import (
    SUBJECT_KINDS,
    Actor,
    Grant,
    GrantIndex,
    Level,
    check_kind,
    level_of,
    roles_level,
)
from zlayer.security.store import ApiKey, Group, SecurityStore, User, new_id, now

if TYPE_CHECKING:
    from zlayer.security.oidc import Oidc
    from zlayer.security.secrets import Secrets
from zlayer.tokens import create_token

SESSION_SECS = 24 * 3600  # a login's session, as ZLayer's cookie
KEY_TOKEN_SECS = 3600  # a token exchanged for an API key
ROLES = ("admin", "user")
INVALID = "invalid credentials"  # the one answer to every failed sign-in: nothing that helps guessing


def _hasher() -> Any:
    from argon2 import PasswordHasher
    from argon2.profiles import RFC_9106_LOW_MEMORY

    # ZLayer's Argon2::default(): Argon2id v0x13, m = 19 MiB, t = 2, p = 1
    return PasswordHasher.from_parameters(replace(RFC_9106_LOW_MEMORY, memory_cost=19456, time_cost=2, parallelism=1))


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise UsageError("a password needs at least 8 characters", where="password")
    if len(password) > 1024:
        raise UsageError("a password may have at most 1024 characters", where="password")
    return str(_hasher().hash(password))


def verify_password(stored: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(_hasher().verify(stored, password[:1024]))
    except (VerificationError, InvalidHashError):
        return False


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against when no account matches, so a wrong email costs what a wrong password costs."""
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY[0]


def _check_email(email: str) -> str:
    email = email.strip()
    if not (3 <= len(email) <= 254) or "@" not in email or any(c.isspace() or ord(c) < 32 for c in email):
        raise UsageError(f"not an email address: {email[:80]!r}", where="email")
    return email


class RateLimiter:
    """At most ``limit`` attempts per ``window`` seconds from one client address (login, bootstrap, token)."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str, at: float | None = None) -> bool:
        t = time.monotonic() if at is None else at
        with self._lock:
            if len(self._hits) > 10_000:  # forget idle clients rather than grow without bound
                self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > t - self.window}
            hits = self._hits.setdefault(client, deque())
            while hits and hits[0] <= t - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(t)
            return True


class Security:
    """Identities and who may do what, over one :class:`~zlayer.security.store.SecurityStore`; ``jwt_secret``
    signs the sessions and API-key tokens it issues (the daemon's own token secret)."""

    def __init__(self, store: SecurityStore, jwt_secret: str, secrets: Secrets | None = None) -> None:
        self.store = store
        self.secrets = secrets
        self.oidc: Oidc | None = None  # OIDC sign-in, when providers are configured (zlayer.security.oidc)
        self.jwt_secret = jwt_secret
        self.limiter = RateLimiter()
        self._index: GrantIndex | None = None

    # ------------------------------------------------------------------ decisions
    def changed(self) -> None:
        """Grants or memberships changed: the next decision rebuilds the index."""
        self._index = None

    def index(self) -> GrantIndex:
        if self._index is None:
            self._index = GrantIndex.build(self.store.list_grants(), self.store.members())
        return self._index

    def level(self, actor: Actor, kind: str, rid: str | None) -> Level:
        return level_of(actor, self.index() if actor.user_id else None, kind, rid)

    def actor(self, claims: dict[str, Any]) -> Actor:
        """The actor a verified token speaks for; :class:`AuthError` when its account or key is gone, disabled or
        expired (the same words for each)."""
        roles = tuple(r for r in claims.get("roles") or () if isinstance(r, str))
        uid = claims.get("uid")
        if uid is None:  # a token minted with the node's secret (zlayer token create, admin_bearer.token)
            return Actor(str(claims.get("sub", "")), roles_level(roles), roles=roles, via="token")
        user = self.store.get_user(str(uid))
        if user is None or not user.is_active:
            raise AuthError("invalid token")
        cap = Level.ADMIN if user.role == "admin" else Level.WRITE
        kid = claims.get("kid")
        sid = claims.get("sid")
        if isinstance(sid, str) and self.store.session_revoked(sid):
            raise AuthError("invalid token")
        if kid is None:
            return Actor(user.email, cap, user_id=user.id, roles=(user.role,), via="session")
        key = self.store.get_key(str(kid))
        if key is None or key.owner_id != user.id or (key.expires_at is not None and key.expires_at < time.time()):
            raise AuthError("invalid token")
        key_cap = Level.ADMIN if "admin" in key.roles else roles_level(r for r in key.roles if r != "admin")
        if "user" in key.roles:
            key_cap = max(key_cap, Level.WRITE)
        return Actor(f"{user.email} (key {key.name})", min(cap, key_cap), user_id=user.id, roles=key.roles,
                     via="key", key_id=key.id, owner_admin=user.role == "admin")  # fmt: skip

    # ------------------------------------------------------------------ sign-in
    def bootstrap(self, email: str, password: str, display_name: str | None = None) -> User:
        if self.store.count_users():
            raise ConflictError("an account already exists; bootstrap makes only the first admin",
                                hint="sign in with `zlayer auth login`")  # fmt: skip
        return self.create_user(email, password, "admin", display_name)

    def login(self, email: str, password: str) -> User:
        user = self.store.user_by_email(email.strip())
        ok = verify_password(user.password_hash if user else _dummy_hash(), password)
        if user is None or not ok or not user.is_active:
            raise AuthError(INVALID)
        return self.store.update_user(user.id, last_login_at=now())

    def session_token(self, user: User) -> str:
        extra = {"uid": user.id, "email": user.email, "sid": secrets.token_urlsafe(16)}
        return create_token(self.jwt_secret, user.id, SESSION_SECS, [user.role], extra)

    def logout(self, claims: dict[str, Any]) -> bool:
        """End the session ``claims`` belong to (its token and cookie stop working); False: not a session."""
        sid, exp = claims.get("sid"), claims.get("exp")
        if not isinstance(sid, str) or not isinstance(exp, int | float):
            return False
        self.store.revoke_session(sid, float(exp))
        return True

    def exchange(self, key_id: str, key_secret: str) -> tuple[str, int]:
        """``POST /auth/token``: an API key and its secret (or an account's email and password) for a bearer token."""
        key = self.store.get_key(key_id.strip())
        if key is None:
            if "@" in key_id:
                user = self.login(key_id, key_secret)
                return create_token(self.jwt_secret, user.id, KEY_TOKEN_SECS, [user.role],
                                    {"uid": user.id, "email": user.email}), KEY_TOKEN_SECS  # fmt: skip
            hmac.compare_digest(_digest("x" * 43), _digest(key_secret))  # the same work as a known key
            raise AuthError(INVALID)
        good = hmac.compare_digest(key.secret_hash, _digest(key_secret))
        owner = self.store.get_user(key.owner_id)
        expired = key.expires_at is not None and key.expires_at < time.time()
        if not good or expired or owner is None or not owner.is_active:
            raise AuthError(INVALID)
        secs = (
            KEY_TOKEN_SECS if key.expires_at is None else max(1, min(KEY_TOKEN_SECS, int(key.expires_at - time.time())))
        )
        token = create_token(self.jwt_secret, key.id, secs, list(key.roles), {"uid": owner.id, "kid": key.id})
        return token, secs

    # ------------------------------------------------------------------ users
    def create_user(self, email: str, password: str, role: str = "user", display_name: str | None = None) -> User:
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r} (admin or user)", where="role")
        email = _check_email(email)
        t = now()
        user = User(new_id(), email, display_name or email.split("@")[0], role, hash_password(password), True, t, t)
        self.store.add_user(user)
        return user

    def user(self, ref: str) -> User:
        user = self.store.get_user(ref) or self.store.user_by_email(ref)
        if user is None:
            raise NotFoundError(f"user {ref!r} not found", where=f"users/{ref}")
        return user

    def update_user(self, ref: str, **fields: Any) -> User:
        user = self.user(ref)
        if fields.get("role") is not None and fields["role"] not in ROLES:
            raise UsageError(f"unknown role {fields['role']!r} (admin or user)", where="role")
        demoting = fields.get("role") == "user" or fields.get("is_active") is False
        if demoting and user.role == "admin" and self._admins() == [user.id]:
            raise ConflictError("this is the last active admin; make another admin first", where=f"users/{user.id}")
        clean = {k: v for k, v in fields.items() if v is not None}
        return self.store.update_user(user.id, **clean) if clean else user

    def _admins(self) -> list[str]:
        return [u.id for u in self.store.list_users() if u.role == "admin" and u.is_active]

    def delete_user(self, ref: str) -> None:
        user = self.user(ref)
        if user.role == "admin" and self._admins() == [user.id]:
            raise ConflictError("this is the last active admin; make another admin first", where=f"users/{user.id}")
        self.store.delete_user(user.id)
        self.changed()

    def set_password(self, actor: Actor, ref: str, new: str, current: str | None) -> None:
        user = self.user(ref)
        if not actor.admin:
            if actor.user_id != user.id:
                raise AuthError(INVALID)
            if current is None or not verify_password(user.password_hash, current):
                raise AuthError(INVALID)
        self.store.update_user(user.id, password_hash=hash_password(new))

    # ------------------------------------------------------------------ groups and grants
    def group(self, ref: str) -> Group:
        group = self.store.get_group(ref)
        if group is None:
            raise NotFoundError(f"group {ref!r} not found", where=f"groups/{ref}")
        return group

    def create_group(self, name: str, description: str | None = None) -> Group:
        if not name.strip():
            raise UsageError("a group needs a name", where="name")
        t = now()
        group = Group(new_id(), name.strip(), description, t, t)
        self.store.add_group(group)
        return group

    def delete_group(self, ref: str) -> None:
        self.store.delete_group(self.group(ref).id)
        self.changed()

    def add_member(self, group: str, user: str) -> None:
        self.store.add_member(self.group(group).id, self.user(user).id)
        self.changed()

    def remove_member(self, group: str, user: str) -> None:
        self.store.remove_member(self.group(group).id, self.user(user).id)
        self.changed()

    def grant(self, subject_kind: str, subject: str, resource_kind: str, resource_id: str | None, level: str) -> Grant:
        if subject_kind not in SUBJECT_KINDS:
            raise UsageError(f"unknown subject kind {subject_kind!r} (user or group)", where="subject_kind")
        sid = self.user(subject).id if subject_kind == "user" else self.group(subject).id
        rid = None if resource_id in (None, "", "*") else resource_id
        g = Grant(new_id(), subject_kind, sid, check_kind(resource_kind), rid, Level.parse(level), now())
        self.store.add_grant(g)
        self.changed()
        return g

    def revoke(self, grant_id: str) -> Grant:
        g = self.store.delete_grant(grant_id)
        self.changed()
        return g

    def grants(self, *, user: str | None = None, group: str | None = None) -> list[Grant]:
        out = self.store.list_grants()
        if user is not None:
            u = self.user(user)
            groups = set(self.index().groups_of.get(u.id, ()))
            out = [g for g in out if (g.subject_kind, g.subject_id) == ("user", u.id)
                   or (g.subject_kind == "group" and g.subject_id in groups)]  # fmt: skip
        if group is not None:
            gid = self.group(group).id
            out = [g for g in out if (g.subject_kind, g.subject_id) == ("group", gid)]
        return out

    # ------------------------------------------------------------------ API keys
    def create_key(self, owner: str, name: str, roles: list[str], hours: float | None) -> tuple[ApiKey, str]:
        user = self.user(owner)
        if "admin" in roles and user.role != "admin":
            raise UsageError("only an admin's key may carry the admin role", where="roles")
        secret = secrets.token_urlsafe(32)
        expires = None if hours is None else time.time() + hours * 3600
        if hours is not None and hours <= 0:
            raise UsageError("--hours must be positive", where="hours")
        key = ApiKey("zk_" + secrets.token_hex(8), name or "key", user.id, _digest(secret), tuple(roles or ["user"]),
                     expires, now())  # fmt: skip
        self.store.add_key(key)
        return key, secret

    # ------------------------------------------------------------------ audit
    def audit(self, actor: Actor, action: str, kind: str, rid: str | None, *, ip: str | None,
              user_agent: str | None, details: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.store.add_audit({"id": new_id(), "user_id": actor.user_id or actor.name, "action": action,
                              "resource_kind": kind, "resource_id": rid, "details": details, "ip": ip,
                              "user_agent": user_agent, "created_at": now()})  # fmt: skip


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


__all__ = ["INVALID", "RateLimiter", "Security", "hash_password", "verify_password"]
