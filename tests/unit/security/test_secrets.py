"""Issue 16 item 4: secrets sealed at rest under the node's key (file 0600, ZLAYER_SECRETS_KEY or a password through
Argon2id), versions kept on rotation, every reference form of ZLayer resolved, and a missing or wrong key refused
with a clear error instead of a new key that would leave the old secrets unreadable."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from zlayer.errors import NotFoundError, UsageError
from zlayer.security import SqliteSecurityStore
from zlayer.security.secrets import Keyring, Secrets, SecretsKeyError, parse_dotenv, parse_reference


def _secrets(tmp: Path, env: dict[str, str] | None = None) -> Secrets:
    store = SqliteSecurityStore(tmp / "security.db")
    return Secrets(store, Keyring(store, tmp / "secrets", "zlayer", env or {}))


def test_values_are_sealed_under_a_private_key_file_and_versions_are_kept(tmp_path: Path) -> None:
    s = _secrets(tmp_path)
    row, before = s.put("global", "db_password", "hunter2-very-secret")
    assert before is None and row.version == 1
    key = tmp_path / "secrets" / "secrets_zlayer.key"
    assert len(key.read_bytes()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "security.db").stat().st_mode) == 0o600
    row2, before = s.put("global", "db_password", "correct-horse-battery")
    assert (before, row2.version) == (1, 2)
    assert s.reveal(s.get("global", "db_password")) == "correct-horse-battery"
    assert s.reveal(s.get("global", "db_password", version=1)) == "hunter2-very-secret"
    s.store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("security.db*"))
    assert b"hunter2" not in raw and b"correct-horse" not in raw
    with sqlite3.connect(tmp_path / "security.db") as db:  # a sealed value moved to another name does not open
        db.execute("UPDATE secrets SET name='other' WHERE version=2")
    s = _secrets(tmp_path)
    with pytest.raises(SecretsKeyError, match="does not open"):
        s.reveal(s.get("global", "other"))
    with pytest.raises(NotFoundError):
        s.put("global", "missing", "x", rotate=True)


def test_a_missing_or_wrong_key_is_refused_and_no_new_key_is_made(tmp_path: Path) -> None:
    s = _secrets(tmp_path)
    s.put("global", "token", "abc123")
    key = tmp_path / "secrets" / "secrets_zlayer.key"
    saved = key.read_bytes()
    key.unlink()
    s = _secrets(tmp_path)
    with pytest.raises(SecretsKeyError, match="missing, and this node has secrets sealed with it") as e:
        s.reveal(s.get("global", "token"))
    assert "restore the key file" in (e.value.hint or "")
    with pytest.raises(SecretsKeyError):
        s.put("global", "token", "new")  # nothing sealed under a fresh key
    assert not key.exists()
    key.write_bytes(os.urandom(32))
    with pytest.raises(SecretsKeyError, match="does not open this node's secrets"):
        _secrets(tmp_path).keyring.key()
    key.write_bytes(saved)
    s = _secrets(tmp_path)
    assert s.reveal(s.get("global", "token")) == "abc123"
    with pytest.raises(SecretsKeyError, match="64 hex digits"):
        _secrets(tmp_path / "x", {"ZLAYER_SECRETS_KEY": "nothex"}).keyring.key()


def test_a_key_from_the_environment_or_a_password_needs_no_file(tmp_path: Path) -> None:
    hexkey = os.urandom(32).hex()
    s = _secrets(tmp_path / "a", {"ZLAYER_SECRETS_KEY": hexkey})
    s.put("global", "k", "v1")
    assert not (tmp_path / "a" / "secrets").exists()
    assert _secrets(tmp_path / "a", {"ZLAYER_SECRETS_KEY": hexkey}).reveal(s.get("global", "k")) == "v1"
    with pytest.raises(SecretsKeyError):
        _secrets(tmp_path / "a", {"ZLAYER_SECRETS_KEY": os.urandom(32).hex()}).keyring.key()
    p = _secrets(tmp_path / "b", {"ZLAYER_SECRETS_PASSWORD": "pass phrase"})
    p.put("global", "k", "v2")
    again = _secrets(tmp_path / "b", {"ZLAYER_SECRETS_PASSWORD": "pass phrase"})
    assert again.reveal(again.get("global", "k")) == "v2"
    with pytest.raises(SecretsKeyError):
        _secrets(tmp_path / "b", {"ZLAYER_SECRETS_PASSWORD": "other phrase"}).keyring.key()


def test_every_reference_form_resolves_and_one_that_does_not_is_named(tmp_path: Path) -> None:
    s = _secrets(tmp_path)
    prod = s.create_environment("prod")
    acme = s.create_environment("prod", project="acme")
    s.put("global", "api_key", "global-key")
    s.put("shop", "api_key", "shop-key")  # the deployment's own scope comes first
    s.put("global", "cfg", '{"user": "app", "port": 5432}')
    s.put("@web", "token", "web-token")
    s.put(prod.id, "db_password", "prod-pw")
    s.put(acme.id, "db_password", "acme-pw")
    env = {
        "A": "$S:api_key", "B": "$S:cfg/user", "C": "$S:cfg/port", "D": "$S:@web/token", "E": "$S::prod/db_password",
        "F": "$S:acme:prod/db_password", "G": "$secret://prod/db_password", "H": "plain $S:x", "I": "$E:HOME",
    }  # fmt: skip
    assert s.resolve_env("shop", env) == {
        "A": "shop-key", "B": "app", "C": "5432", "D": "web-token", "E": "prod-pw", "F": "acme-pw", "G": "prod-pw",
        "H": "plain $S:x", "I": "$E:HOME",
    }  # fmt: skip
    assert s.resolve_env("other", {"A": "$S:api_key"}) == {"A": "global-key"}
    missing = [("$S:nope", "no secret 'nope'"), ("$S::staging/db_password", "environment 'staging' not found"),
               ("$S:cfg/missing", "no JSON field 'missing'"), ("$S:@api/token", "no secret 'token'")]  # fmt: skip
    for ref, words in missing:
        with pytest.raises(NotFoundError) as e:
            s.resolve_env("shop", {"DB": ref}, where="services.app.env")
        assert e.value.message.startswith("services.app.env.DB: ") and words in e.value.message, e.value.message
    for bad in ("$S:", "$S:@web", "$S::prod", "$secret://prod", "$S:bad name"):
        with pytest.raises(UsageError):
            parse_reference(bad)
    before = s.versions("shop", env)
    s.put(prod.id, "db_password", "prod-pw-2")
    assert s.versions("shop", env) != before and s.resolve_env("shop", env)["E"] == "prod-pw-2"


def test_dotenv_lines_are_parsed_and_bad_ones_reported() -> None:
    values, errors = parse_dotenv("# c\nA=1\nexport B='two words'\nC=\"x=y\"\n\nnot a line\n9X=1\n")
    assert values == {"A": "1", "B": "two words", "C": "x=y"}
    assert errors == ["line 6: expected NAME=value", "line 7: expected NAME=value"]


def test_a_daemon_whose_key_file_is_gone_says_so_and_seals_nothing_new(daemon_process: Any) -> None:
    import json
    import urllib.error
    import urllib.request

    d = daemon_process("keyed")

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{d.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {d.token}",
                                              "Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert call("POST", "/api/v1/secrets", {"name": "token", "value": "abc123"})[0] == 201
    key = d.data_dir / "secrets" / "secrets_zlayer.key"
    saved = key.read_bytes()
    d.terminate()
    key.unlink()
    d.start()
    assert "secrets: the secrets key" in d.read_log() and "is missing" in d.read_log()
    status, body = call("GET", "/api/v1/secrets/token?reveal=true")
    assert status == 503 and body["code"] == "secrets_key" and "missing" in body["message"], body
    assert call("POST", "/api/v1/secrets", {"name": "other", "value": "x"})[0] == 503
    assert not key.exists()  # no new key took the old one's place
    d.terminate()
    key.write_bytes(saved)
    key.chmod(0o600)
    d.start()
    assert call("GET", "/api/v1/secrets/token?reveal=true")[1]["value"] == "abc123"
