"""ZLayer's access model: permission levels, resource kinds, who acts (:class:`Actor`) and the grant index that
answers "what level does this actor have on that resource" in a few dictionary look-ups.

Levels are ordered none < read < execute < write; ``admin`` (a user's role, or a token's) stands above all. A grant
names a subject (a user or a group), a resource kind, a resource id (``None``: every resource of the kind, the
wildcard) and a level. An actor's level on a resource is the highest of its direct grants and its groups' grants on
that resource and on the kind's wildcard; for a secret (id ``scope:name``) a grant on its environment counts too, as
ZLayer's check does (read there reads the secret, execute or write there writes it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from zlayer.errors import UsageError


class Level(IntEnum):
    NONE = 0
    READ = 1
    EXECUTE = 2
    WRITE = 3
    ADMIN = 4

    @property
    def word(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str, where: str = "level") -> Level:
        try:
            level = cls[text.strip().upper()]
        except KeyError:
            raise UsageError(f"unknown permission level {text!r} (none, read, execute or write)", where=where) from None
        if level is cls.ADMIN:
            raise UsageError("admin is a user's role, not a level to grant", where=where,
                             hint="zlayer user set-role ID --role admin")  # fmt: skip
        return level


KINDS = ("deployment", "environment", "project", "secret", "node")
SUBJECT_KINDS = ("user", "group")
# What the roles of a bearer token that names no user (``zlayer token create``, the node's admin token) may do: the
# levels of ZLayer's roles before there were grants. Every other role (reader, node, ...) reads.
ROLE_LEVELS = {"admin": Level.ADMIN, "operator": Level.WRITE, "write": Level.WRITE, "execute": Level.EXECUTE}


def check_kind(kind: str, where: str = "resource_kind") -> str:
    if kind not in KINDS:
        raise UsageError(f"unknown resource kind {kind!r} (one of {', '.join(KINDS)})", where=where)
    return kind


def roles_level(roles: Iterable[object]) -> Level:
    """The highest level ``roles`` carry (read at least: any valid token reads)."""
    return max((ROLE_LEVELS.get(r, Level.READ) for r in roles if isinstance(r, str)), default=Level.READ)


@dataclass(frozen=True)
class Actor:
    """Who sends a request. ``user_id`` names an account (its grants apply, capped at ``cap``: an API key with
    the reader role reads at most); without one the token's roles alone decide (``cap`` everywhere)."""

    name: str
    cap: Level
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    via: str = "token"  # token (roles only), session (login/cookie), key (API key), local (unix socket), anonymous
    key_id: str | None = None
    owner_admin: bool = False  # an admin account's key with fewer roles: everything, up to ``cap``

    @property
    def admin(self) -> bool:
        return self.cap >= Level.ADMIN

    @property
    def authenticated(self) -> bool:
        return self.via != "anonymous"


LOCAL_ADMIN = Actor("local-admin", Level.ADMIN, roles=("admin",), via="local")
ANONYMOUS = Actor("anonymous", Level.NONE, via="anonymous")


@dataclass(frozen=True)
class Grant:
    id: str
    subject_kind: str
    subject_id: str
    resource_kind: str
    resource_id: str | None
    level: Level
    created_at: str = ""


@dataclass
class GrantIndex:
    """Grants by subject, kind and resource id, and each user's groups: built once from the store, rebuilt after
    any change of grants or memberships (:meth:`Security.changed`)."""

    grants: dict[tuple[str, str], dict[str, dict[str | None, Level]]] = field(default_factory=dict)
    groups_of: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, grants: Iterable[Grant], members: Mapping[str, Iterable[str]]) -> GrantIndex:
        index = cls()
        for g in grants:
            by_id = index.grants.setdefault((g.subject_kind, g.subject_id), {}).setdefault(g.resource_kind, {})
            by_id[g.resource_id] = max(by_id.get(g.resource_id, Level.NONE), g.level)
        groups: dict[str, list[str]] = {}
        for group, users in members.items():
            for user in users:
                groups.setdefault(user, []).append(group)
        index.groups_of = {u: tuple(gs) for u, gs in groups.items()}
        return index

    def _direct(self, user_id: str, kind: str, rid: str | None) -> Level:
        best = Level.NONE
        subjects = [("user", user_id), *(("group", g) for g in self.groups_of.get(user_id, ()))]
        for subject in subjects:
            by_id = self.grants.get(subject, {}).get(kind)
            if by_id:
                best = max(best, by_id.get(None, Level.NONE), by_id.get(rid, Level.NONE) if rid else Level.NONE)
        return best

    def level(self, user_id: str, kind: str, rid: str | None) -> Level:
        best = self._direct(user_id, kind, rid)
        if kind == "secret" and rid and ":" in rid and best < Level.WRITE:
            env = self._direct(user_id, "environment", rid.split(":", 1)[0])
            best = max(best, Level.WRITE if env >= Level.EXECUTE else env)
        return best


def level_of(actor: Actor, index: GrantIndex | None, kind: str, rid: str | None) -> Level:
    """What ``actor`` may do on resource ``kind``/``rid`` (``rid`` None: on every resource of the kind)."""
    if actor.admin or actor.user_id is None or actor.owner_admin:
        return actor.cap
    return min(actor.cap, index.level(actor.user_id, kind, rid)) if index is not None else Level.NONE


__all__ = [
    "ANONYMOUS",
    "KINDS",
    "LOCAL_ADMIN",
    "SUBJECT_KINDS",
    "Actor",
    "Grant",
    "GrantIndex",
    "Level",
    "check_kind",
    "level_of",
    "roles_level",
]
