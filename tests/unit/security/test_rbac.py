"""Issue 16: ZLayer's access model on a real store: levels, wildcard grants, grants through groups, the secret's
environment fallback, API keys with roles and expiry, deleted accounts and revoked keys, tokens of old roles."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from zlayer.errors import AuthError, ConflictError, UsageError
from zlayer.security import Level, Security, SqliteSecurityStore
from zlayer.security.service import RateLimiter
from zlayer.tokens import create_token, verify_token

SECRET = "k" * 64


@pytest.fixture
def sec(tmp_path: Path) -> Security:
    return Security(SqliteSecurityStore(tmp_path / "security.db"), SECRET)


def _actor(sec: Security, token: str):  # type: ignore[no-untyped-def]
    return sec.actor(verify_token(SECRET, token))


def test_grants_direct_wildcard_and_through_groups_decide_the_level(sec: Security, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(tmp_path / "security.db").st_mode) == 0o600
    admin = sec.bootstrap("root@example.com", "correct horse", "Root")
    with pytest.raises(ConflictError):
        sec.bootstrap("again@example.com", "correct horse")
    dev = sec.create_user("dev@example.com", "password1")
    ops = sec.create_user("ops@example.com", "password2")
    a, d, o = (_actor(sec, sec.session_token(u)) for u in (admin, dev, ops))
    assert sec.level(a, "node", None) is Level.ADMIN
    assert sec.level(d, "deployment", "web") is Level.NONE
    sec.grant("user", "dev@example.com", "deployment", "web", "write")
    sec.grant("user", dev.id, "deployment", None, "read")  # wildcard
    assert sec.level(d, "deployment", "web") is Level.WRITE
    assert sec.level(d, "deployment", "api") is Level.READ
    assert sec.level(d, "deployment", None) is Level.READ  # a listing needs the wildcard
    assert sec.level(d, "node", None) is Level.NONE
    g = sec.create_group("oncall")
    sec.grant("group", "oncall", "node", "*", "execute")
    assert sec.level(o, "node", None) is Level.NONE
    sec.add_member("oncall", "ops@example.com")
    assert sec.level(o, "node", "anything") is Level.EXECUTE
    sec.remove_member(g.id, ops.id)
    assert sec.level(o, "node", "anything") is Level.NONE
    # a secret: its environment's grant counts (read reads, execute or write writes)
    sec.grant("user", ops.id, "environment", "prod", "execute")
    assert sec.level(o, "secret", "prod:db_password") is Level.WRITE
    assert sec.level(o, "secret", "staging:db_password") is Level.NONE
    with pytest.raises(UsageError, match="unknown resource kind"):
        sec.grant("user", ops.id, "planet", None, "read")
    with pytest.raises(UsageError, match="role"):
        sec.grant("user", ops.id, "node", None, "admin")
    # the last admin cannot be demoted or deleted; a deleted account's token stops working
    with pytest.raises(ConflictError, match="last active admin"):
        sec.update_user(admin.id, role="user")
    token = sec.session_token(dev)
    sec.delete_user(dev.id)
    with pytest.raises(AuthError):
        _actor(sec, token)
    assert sec.grants(user=ops.id) and not [g for g in sec.store.list_grants() if g.subject_id == dev.id]


def test_passwords_are_argon2id_and_a_wrong_one_says_nothing_more(sec: Security) -> None:
    user = sec.create_user("a@example.com", "s3cret-pass")
    assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert sec.login("A@example.com", "s3cret-pass").id == user.id
    for email, password in (("a@example.com", "wrong-pass"), ("nobody@example.com", "s3cret-pass")):
        with pytest.raises(AuthError) as e:
            sec.login(email, password)
        assert e.value.message == "invalid credentials"
    sec.update_user(user.id, is_active=False)
    with pytest.raises(AuthError, match="invalid credentials"):
        sec.login("a@example.com", "s3cret-pass")
    with pytest.raises(UsageError, match="8 characters"):
        sec.create_user("b@example.com", "short")


def test_api_keys_carry_roles_and_expiry_and_stop_working_when_revoked(sec: Security) -> None:
    admin = sec.bootstrap("root@example.com", "correct horse")
    key, secret = sec.create_key(admin.id, "ci", ["reader"], hours=1)
    token, secs = sec.exchange(key.id, secret)
    assert 0 < secs <= 3600
    actor = _actor(sec, token)
    assert actor.via == "key" and sec.level(actor, "deployment", "web") is Level.READ  # capped by its role
    with pytest.raises(AuthError, match="invalid credentials"):
        sec.exchange(key.id, secret + "x")
    with pytest.raises(AuthError, match="invalid credentials"):
        sec.exchange("zk_nosuchkey", secret)
    sec.store.delete_key(key.id)
    with pytest.raises(AuthError):
        _actor(sec, token)
    expired, secret2 = sec.create_key(admin.id, "old", ["admin"], hours=1 / 3600)
    sec.store.delete_key(expired.id)
    sec.store.add_key(expired.__class__(**{**expired.__dict__, "expires_at": time.time() - 1}))
    with pytest.raises(AuthError):
        sec.exchange(expired.id, secret2)
    # an account's email and password are accepted in place of a key (ZLayer's "API key or username")
    assert _actor(sec, sec.exchange("root@example.com", "correct horse")[0]).admin


def test_tokens_without_an_account_keep_their_roles_meaning(sec: Security) -> None:
    for roles, level in ((["admin"], Level.ADMIN), (["operator"], Level.WRITE), (["reader"], Level.READ),
                         ([], Level.READ), (["node"], Level.READ)):  # fmt: skip
        actor = _actor(sec, create_token(SECRET, "someone", 60, roles))
        assert sec.level(actor, "deployment", "web") is level, roles
    with pytest.raises(AuthError):  # names an account that does not exist
        _actor(sec, create_token(SECRET, "x", 60, ["admin"], {"uid": "gone"}))


def test_the_rate_limiter_counts_per_client_address() -> None:
    limiter = RateLimiter(limit=3, window=60)
    assert [limiter.allow("10.0.0.1", at=t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limiter.allow("10.0.0.2", at=3)
    assert limiter.allow("10.0.0.1", at=61)
