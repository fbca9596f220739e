"""Issue 16 item 2: every route of the daemon's OpenAPI document, walked over TCP against a live `zlayer serve` with
four callers — an admin account, a reader token (the old role), an account with a write grant on one deployment,
and no one — and each answer checked against what that caller may do. A route added without a rule fails the
suite (test_route_rules.py); one whose rule is wrong fails here. Then the audit log holds the writes and the
refusals, sign-in is rate-limited per address, and cookies need their CSRF token for writes."""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonProcess, kill_host_containers
from zlayer.api.auth import rule_for
from zlayer.tokens import create_token

SPEC = ("version: v1\ndeployment: {name}\nservices:\n  app:\n    image: {{name: busybox}}\n"
        "    command: {{entrypoint: [sh, -c, 'sleep 300']}}\n")  # fmt: skip


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self, method: str, path: str, token: str | None = None, body: Any = None,
                 headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Content-Type": "application/json", **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {token}"
        conn.request(method, path, None if body is None else json.dumps(body), h)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None, resp
        except ValueError:
            return resp.status, raw.decode(errors="replace"), resp


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, Api]]:
    root = tmp_path_factory.mktemp("security-access")
    env = {"ZLAYER_RUNTIME_FACTORY": "tests.fixtures.daemon:host_runtime_factory", "PYTHONPATH": str(Path.cwd()),
           "ZLAYER_NODE_NETWORK": "off"}  # fmt: skip
    d = DaemonProcess(root / "d", env)
    d.start()
    try:
        yield d, Api(d.port)
    finally:
        d.terminate()
        kill_host_containers(root)


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "nope"), path)


def test_every_route_answers_each_caller_as_its_rule_says(node: tuple[DaemonProcess, Api]) -> None:
    d, api = node
    status, admin_login, _ = api("POST", "/auth/bootstrap", body={"email": "root@example.com", "password": "rootroot1"})
    assert status == 201 and admin_login["user"]["role"] == "admin", admin_login
    admin = admin_login["token"]
    assert api("POST", "/auth/bootstrap", body={"email": "x@example.com", "password": "whatever1"})[0] == 409
    for name in ("web", "other"):
        assert api("POST", "/api/v1/deployments", admin, {"spec": SPEC.format(name=name)})[0] == 201
    status, writer_user, _ = api("POST", "/api/v1/users", admin, {"email": "dev@example.com", "password": "devdevdev1",
                                                                  "role": "user"})  # fmt: skip
    assert status == 201 and "password" not in json.dumps(writer_user)
    grant = {"subject_kind": "user", "subject_id": writer_user["id"], "resource_kind": "deployment",
             "resource_id": "web", "level": "write"}  # fmt: skip
    assert api("POST", "/api/v1/permissions", admin, grant)[0] == 201
    writer = api("POST", "/auth/login", body={"email": "dev@example.com", "password": "devdevdev1"})[1]["token"]
    reader = create_token((d.data_dir / "jwt_secret").read_text().strip(), "ci-reader", 600, ["reader"])

    status, doc, _ = api("GET", "/api-docs/openapi.json")  # public, as ZLayer's
    assert status == 200
    assert api("GET", "/swagger-ui")[0] == 200
    ops = [(m.upper(), p) for p, item in doc["paths"].items() for m in item if m in ("get", "post", "put", "patch",
                                                                                        "delete")]  # fmt: skip
    assert len(ops) >= 60, len(ops)
    # writes last, deletes at the very end: what one call removes does not change another's answer
    ops.sort(key=lambda op: (op[0] == "DELETE", op[0] != "GET"))
    streaming = {"/api/v1/deployments/{name}/events"}
    checked = 0
    for who, token in (("anonymous", None), ("reader", reader), ("writer", writer), ("admin", admin)):
        for method, template in ops:
            rule = rule_for(method, template)
            values = {"name": "web", "deployment": "web", "service": "app"} if who == "writer" else {}
            path = _fill(template, values) + ("?follow=false" if template in streaming else "")
            body = {"spec": SPEC.format(name="web")} if (method, template) == ("POST", "/api/v1/deployments") else {}
            # (a logout ends the caller's session: sent without it, so the walk goes on as the same caller)
            sent = None if (method, template) == ("POST", "/auth/logout") else token
            status, answer, _ = api(method, path, sent, None if method == "GET" else body)
            what = (who, method, path, status, answer)
            checked += 1
            if rule.need == "public":
                assert status not in (401, 403), what
                continue
            if who == "anonymous":
                assert status == 401 and answer["message"] == "missing bearer token", what
                continue
            assert status != 401, what
            if who == "admin" or rule.need == "authenticated":
                assert status != 403 or template.endswith("/password"), what
                continue
            may = {"reader": rule.need == "read",
                   "writer": (rule.kind == "deployment" and "{" in template and rule.need != "admin")
                   or (method, template) == ("POST", "/api/v1/deployments")}[who]  # fmt: skip
            if may:
                assert status not in (401, 403) and status < 500, what
            else:
                assert status == 403, what
                assert answer["error"] == "forbidden", what
                kind = "the admin role" if rule.need == "admin" else f"{rule.need} on "
                assert kind in answer["message"] and (rule.need == "admin" or rule.kind in answer["message"]), what
    assert checked >= 240
    # the writer's grant is on one deployment: not the other, and not listing them all
    assert api("GET", "/api/v1/deployments/other", writer)[0] == 403
    assert api("POST", "/api/v1/deployments", writer, {"spec": SPEC.format(name="other")})[0] == 403
    assert api("GET", "/api/v1/deployments/other", admin)[0] == 200

    # unknown paths are 404 for anyone, never 401
    for token in (None, "garbage", reader):
        assert api("GET", "/api/v1/no/such/thing", token)[0] == 404
        assert api("GET", "/nope", token)[0] == 404
    # bad credentials: one answer, no detail
    for bad in ("garbage", create_token("other-secret", "x", 60, ["admin"]), create_token(
            (d.data_dir / "jwt_secret").read_text().strip(), "x", -10, ["admin"])):  # fmt: skip
        status, answer, _ = api("GET", "/api/v1/deployments", bad)
        assert status == 401 and answer["message"] == "invalid or expired token", answer

    # the audit log: writes with who, what, which resource, from where; refusals too
    status, log, _ = api("GET", "/api/v1/audit?limit=1000", admin)
    assert status == 200
    creates = [e for e in log if e["action"] == "create" and e["resource_kind"] == "deployments"]
    assert {e["resource_id"] for e in creates} >= {"web", "other"}
    assert all(e["ip"] == "127.0.0.1" and e["created_at"] for e in creates)
    denied = [e for e in log if e["action"] == "denied" and e["user_id"] == writer_user["id"]]
    assert any(e["resource_kind"] == "deployment" and e["resource_id"] == "other" for e in denied), denied
    mine = api("GET", "/api/v1/audit?user=dev@example.com&resource_kind=deployment&limit=5", admin)[1]
    assert mine and len(mine) <= 5 and {e["user_id"] for e in mine} == {writer_user["id"]}


def test_the_cli_manages_accounts_grants_and_shows_the_audit_log(node: tuple[DaemonProcess, Api],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    import subprocess
    import sys

    d, _ = node
    env = {**d.env, "ZLAYER_SESSION_FILE": str(tmp_path / "session.json"), "ZLAYER_PASSWORD": "opsopsops1"}
    env.pop("ZLAYER_API_TOKEN", None)

    def zl(*args: str, host: bool = False) -> subprocess.CompletedProcess[str]:
        pre = ["--host", f"http://127.0.0.1:{d.port}"] if host else []
        return subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(d.data_dir), *pre, *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    assert "local-admin (admin)" in zl("auth", "whoami").stdout  # the unix socket: the node's admin
    r = zl("user", "create", "--email", "ops@example.com")
    assert r.returncode == 0 and "Created user ops@example.com (user)" in r.stdout, r.stderr
    assert zl("group", "create", "--name", "oncall").returncode == 0
    assert zl("group", "member", "add", "--group", "oncall", "--user", "ops@example.com").returncode == 0
    r = zl("permission", "grant", "--subject-kind", "group", "--subject", "oncall", "--resource-kind", "deployment",
           "--resource", "web", "--level", "read")  # fmt: skip
    assert r.returncode == 0, r.stderr
    grants = json.loads(zl("permission", "list", "--user", "ops@example.com", "-o", "json").stdout)
    assert [(g["resource_kind"], g["resource_id"], g["level"]) for g in grants] == [("deployment", "web", "read")]
    r = zl("auth", "login", "--email", "ops@example.com", host=True)
    assert r.returncode == 0 and "Logged in as ops@example.com" in r.stdout, r.stderr
    assert os.stat(tmp_path / "session.json").st_mode & 0o777 == 0o600
    assert "ops@example.com (user)" in zl("auth", "whoami", host=True).stdout
    r = zl("user", "ls", host=True)
    assert r.returncode != 0 and "needs the admin role" in r.stderr, r.stderr
    session = json.loads((tmp_path / "session.json").read_text())["token"]
    assert Api(d.port)("GET", "/auth/me", session)[0] == 200
    assert zl("auth", "logout").returncode == 0 and not (tmp_path / "session.json").exists()
    assert Api(d.port)("GET", "/auth/me", session)[0] == 401  # logout ended the session, not only the file
    tail = json.loads(zl("audit", "tail", "--resource", "permissions", "-o", "json").stdout)
    assert tail and tail[-1]["action"] == "create" and tail[-1]["resource_kind"] == "permissions"
    assert zl("auth", "bootstrap", "--email", "late@example.com").returncode != 0  # an account exists
    # API keys: created with roles and a lifetime, exchanged for a token, revoked
    r = zl("token", "key", "create", "--name", "ci", "--roles", "user", "--hours", "2", "--owner", "ops@example.com",
           "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    key_id, key_secret = r.stdout.strip().split(":", 1)
    api = Api(d.port)
    status, got, _ = api("POST", "/auth/token", body={"api_key": key_id, "api_secret": key_secret})
    assert status == 200 and got["token_type"] == "Bearer" and 0 < got["expires_in"] <= 3600, got
    assert api("GET", "/api/v1/deployments/web", got["access_token"])[0] == 200  # the owner's group grant
    assert api("DELETE", "/api/v1/deployments/web", got["access_token"])[0] == 403  # read only there
    assert api("POST", "/auth/token", body={"api_key": key_id, "api_secret": "wrong"})[1]["message"] == (
        "invalid credentials"
    )
    keys = json.loads(zl("token", "key", "ls", "-o", "json").stdout)
    assert [k["id"] for k in keys if k["name"] == "ci"] == [key_id] and "secret" not in json.dumps(keys)
    assert zl("token", "key", "revoke", key_id).returncode == 0
    assert api("GET", "/api/v1/deployments/web", got["access_token"])[0] == 401


def test_sign_in_is_rate_limited_per_address_and_cookies_need_csrf(node: tuple[DaemonProcess, Api]) -> None:
    d, api = node
    if api("POST", "/auth/login", body={"email": "root@example.com", "password": "rootroot1"})[0] != 200:
        api("POST", "/auth/bootstrap", body={"email": "root@example.com", "password": "rootroot1"})
    status, login, resp = api("POST", "/auth/login", body={"email": "root@example.com", "password": "rootroot1"})
    assert status == 200
    cookies = "; ".join(c.split(";")[0] for c in resp.headers.get_all("set-cookie") or [])
    assert "zlayer_session=" in cookies and "zlayer_csrf=" in cookies
    assert api("GET", "/auth/me", headers={"Cookie": cookies})[1]["email"] == "root@example.com"
    group = {"name": "ops"}
    assert api("POST", "/api/v1/groups", body=group, headers={"Cookie": cookies})[0] == 403  # no CSRF header
    ok = api("POST", "/api/v1/groups", body=group, headers={"Cookie": cookies, "X-CSRF-Token": login["csrf_token"]})
    assert ok[0] == 201, ok[1]
    answers = [api("POST", "/auth/login", body={"email": "root@example.com", "password": "wrong-one"})[0]
               for _ in range(12)]  # fmt: skip
    assert set(answers[:1]) <= {401, 429} and answers[-1] == 429, answers
    # over the unix socket (root's), no credentials act as the local admin
    conn = http.client.HTTPConnection("localhost")
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(d.socket))
    conn.sock = sock
    conn.request("GET", "/api/v1/users")
    assert conn.getresponse().status == 200
