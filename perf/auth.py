"""What identity and secrets cost.

- ``authz_median_ms``: the latency authorization adds to an API read, on a node with 1,000 accounts, 100 groups and
  10,000 grants: ``GET /api/v1/deployments/{name}`` through the daemon's ASGI app (TokenAuth in front, the route
  table's dependency inside) by an account that holds a write grant on that deployment, against the same request
  by the unix socket's local admin (which skips the token and the grants), interleaved; median of the per-request
  difference of the two medians. Target ≤ 1 ms.
- ``secrets_rollout_ms``: resolving the secret references of a 50-replica rollout (each replica's env with one of
  each of ZLayer's reference forms, six in all, sealed under AES-256-GCM in the SQLite store), plus the version
  fingerprint the rollout compares; total. Target ≤ 50 ms.
- ``secrets_rollout_cluster_keeper_ms`` / ``secrets_rollout_cluster_grant_ms``: the same rollout on a node of a
  cluster, from its copy of the cluster's rows (each sealed to the DEK's public half, X25519): on a keeper, which
  opens the rows with the DEK, and on a node that opens only the grants sealed for it; each round starts with
  nothing opened (as after a sync that read changed rows). etcd's reads are not in it (one per second at most, as
  replicas start). Target ≤ 50 ms.

Runs standalone (`python perf/auth.py [--rounds N]`); no root, no daemon. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zlayer.api import TokenAuth, create_app  # noqa: E402
from zlayer.security import Security, SqliteSecurityStore  # noqa: E402
from zlayer.security.rbac import Grant, Level  # noqa: E402
from zlayer.security.secrets import Keyring, Secrets  # noqa: E402
from zlayer.security.store import Group, User, new_id, now  # noqa: E402

SECRET = "perf-" + "k" * 60
KINDS = ("deployment", "environment", "project", "secret", "node")


def populate(sec: Security, users: int = 1000, groups: int = 100, grants: int = 10_000) -> User:
    """Accounts (one password hash shared: hashing 1,000 Argon2id passwords measures argon2, not authorization),
    groups of about 30 members each, grants spread over kinds, wildcards, users and groups."""
    rng = random.Random(16)
    t = now()
    pw = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo"
    people = [User(new_id(), f"user{i}@example.com", f"user{i}", "user", pw, True, t, t) for i in range(users)]
    for u in people:
        sec.store.add_user(u)
    teams = [Group(new_id(), f"team{i}", None, t, t) for i in range(groups)]
    for g in teams:
        sec.store.add_group(g)
        for u in rng.sample(people, 30):
            sec.store.add_member(g.id, u.id)
    for i in range(grants - 1):
        subject = ("user", rng.choice(people).id) if i % 3 else ("group", rng.choice(teams).id)
        kind = KINDS[i % len(KINDS)]
        rid = None if i % 50 == 0 else f"{kind}-{rng.randrange(2000)}"
        sec.store.add_grant(Grant(new_id(), *subject, kind, rid, Level(1 + i % 3), t))
    me = people[0]
    sec.store.add_grant(Grant(new_id(), "user", me.id, "deployment", "web", Level.WRITE, t))
    sec.changed()
    return me


async def one(app: Any, headers: list[tuple[bytes, bytes]]) -> None:
    path = "/api/v1/deployments/web"
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
             "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 3669)}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)


class _Ctx:
    """Just enough of ApiContext for GET /api/v1/deployments/{name}: a store that knows no deployment (404)."""

    metrics = None

    class store:
        @staticmethod
        async def get_deployment(name: str) -> None:
            return None


def authz(rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        sec = Security(SqliteSecurityStore(Path(tmp) / "security.db"), SECRET)
        me = populate(sec)
        app = create_app(_Ctx())  # type: ignore[arg-type]
        app.state.security = sec
        tcp, unix = TokenAuth(app, SECRET), TokenAuth(app, SECRET, local=True)
        user = [(b"authorization", f"Bearer {sec.session_token(me)}".encode())]
        assert sec.level(sec.actor({"uid": me.id, "sub": me.id, "roles": ["user"]}), "deployment", "web") is Level.WRITE

        async def go() -> tuple[list[float], list[float]]:
            a: list[float] = []
            b: list[float] = []
            for _ in range(200):  # warm: route tables, the grant index, sqlite pages
                await one(tcp, user)
                await one(unix, [])
            for _ in range(rounds):
                t0 = time.perf_counter()
                await one(tcp, user)
                t1 = time.perf_counter()
                await one(unix, [])
                t2 = time.perf_counter()
                a.append(t1 - t0)
                b.append(t2 - t1)
            return a, b

        with_user, local = asyncio.run(go())
        sec.store.close()
    return {"authz_median_ms": round((statistics.median(with_user) - statistics.median(local)) * 1000, 4),
            "request_user_median_ms": round(statistics.median(with_user) * 1000, 4),
            "request_local_admin_median_ms": round(statistics.median(local) * 1000, 4)}  # fmt: skip


def rollout(rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteSecurityStore(Path(tmp) / "security.db")
        s = Secrets(store, Keyring(store, Path(tmp) / "secrets", "zlayer", {}))
        prod = s.create_environment("prod")
        acme = s.create_environment("prod", project="acme")
        for i in range(200):  # other secrets on the node
            s.put(prod.id, f"other_{i}", "x" * 32)
        s.put("shop", "api_key", "k" * 40)
        s.put("global", "cfg", json.dumps({"user": "app", "port": 5432}))
        s.put("@web", "token", "t" * 40)
        s.put(prod.id, "db_password", "p" * 24)
        s.put(acme.id, "db_password", "q" * 24)
        env = {"A": "$S:api_key", "B": "$S:cfg/user", "C": "$S:@web/token", "D": "$S::prod/db_password",
               "E": "$S:acme:prod/db_password", "F": "$secret://prod/db_password", "G": "plain"}  # fmt: skip
        times = []
        for _ in range(rounds):
            s.keyring._key = None  # each rollout finds the key again, as after a daemon start
            t0 = time.perf_counter()
            s.versions("shop", env)
            for _replica in range(50):
                got = s.resolve_env("shop", env)
            times.append(time.perf_counter() - t0)
            assert got["F"] == "p" * 24
        store.close()
    return {"secrets_rollout_ms": round(statistics.median(times) * 1000, 3),
            "secrets_per_replica_ms": round(statistics.median(times) * 1000 / 50, 4)}  # fmt: skip


def rollout_cluster(rounds: int) -> dict[str, float]:
    import os

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from zlayer.security.cluster import ClusterSecrets, dek_public, seal_grant, seal_row
    from zlayer.security.store import Environment, SecretVersion

    out: dict[str, float] = {}
    dek, t = os.urandom(32), now()
    prod = Environment(new_id(), "prod", None, None, t, t)
    acme = Environment(new_id(), "prod", "acme", None, t, t)
    values = {(prod.id, f"other_{i}"): "x" * 32 for i in range(200)}
    values.update({("shop", "api_key"): "k" * 40, ("global", "cfg"): json.dumps({"user": "app", "port": 5432}),
                   ("@web", "token"): "t" * 40, (prod.id, "db_password"): "p" * 24,
                   (acme.id, "db_password"): "q" * 24})  # fmt: skip
    env = {"A": "$S:api_key", "B": "$S:cfg/user", "C": "$S:@web/token", "D": "$S::prod/db_password",
           "E": "$S:acme:prod/db_password", "F": "$secret://prod/db_password", "G": "plain"}  # fmt: skip
    for node in ("1", "2"):
        key = X25519PrivateKey.generate()
        cs = ClusterSecrets(None, node, key)  # type: ignore[arg-type]  # no etcd: the copy as a sync left it
        cs.keepers, cs._envs = ["1"], [prod, acme]
        for (scope, name), value in values.items():
            blob = seal_row(dek_public(dek), scope, name, 1, value.encode())
            cs._rows[(scope, name)] = [SecretVersion(scope, name, 1, blob, t, t, 1)]
            if node == "2" and not name.startswith("other_"):
                cs._grants[(scope, name, 1)] = seal_grant(value.encode(), key.public_key().public_bytes_raw(), node,
                                                          scope, name, 1)  # fmt: skip
        if node == "1":
            cs._deks = {1: dek}
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteSecurityStore(Path(tmp) / "security.db")
            s = Secrets(store, Keyring(store, Path(tmp) / "secrets", "zlayer", {}))
            s.cluster = cs
            times = []
            for _ in range(rounds):
                cs._opened = {}
                t0 = time.perf_counter()
                s.versions("shop", env)
                for _replica in range(50):
                    got = s.resolve_env("shop", env)
                times.append(time.perf_counter() - t0)
                assert got["F"] == "p" * 24 and got["B"] == "app"
            store.close()
        out["secrets_rollout_cluster_keeper_ms" if node == "1" else "secrets_rollout_cluster_grant_ms"] = round(
            statistics.median(times) * 1000, 3
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    out: dict[str, Any] = {"users": 1000, "groups": 100, "grants": 10_000}
    out.update(authz(args.rounds))
    out.update(rollout(max(5, args.rounds // 300)))
    out.update(rollout_cluster(max(5, args.rounds // 300)))
    out["authz_target_ms"], out["secrets_rollout_target_ms"] = 1.0, 50.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
