"""Issue 16 item 4 on a real node: secrets in every reference form reach a real container's environment (read from
its init process, /proc/1/environ), a rotation followed by a rollout changes what a new replica sees, a reference
that does not resolve is refused at deploy (nothing starts with an empty value), values never reach the daemon's
log nor a listing, and `zlayer run` gives a local command the secrets of an environment."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from tests.fixtures.daemon_live import web_spec
from tests.fixtures.daemon_node import Node, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]


def spec(name: str, env: dict[str, str]) -> str:
    return web_spec(name, 1, extra="    env:\n" + "".join(f"      {k}: {json.dumps(v)}\n" for k, v in env.items()))


def environ(node: Node, name: str) -> dict[str, str]:
    """The environment the running replica's process was started with ({} while none runs)."""
    running = [c["id"] for c in node.containers(name, "web") if c.get("state") == "running"]
    if len(running) != 1:
        return {}
    body = {"command": ["/bin/sh", "-c", "tr '\\000' '\\n' < /proc/1/environ"]}
    status, got = node.request("POST", f"/api/v1/containers/{running[0]}/exec", body)
    if status != 200 or got["exit_code"] != 0:
        return {}
    return dict(line.split("=", 1) for line in got["stdout"].splitlines() if "=" in line)


def test_secrets_reach_a_container_and_a_rotation_rolls_out(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node, name = daemon_node, unique("secrets")
    daemon_deployments.append(name)
    env, project = unique("prod"), unique("acme")
    assert node.zl("env", "create", env).returncode == 0
    assert node.zl("env", "create", env, "--project", project).returncode == 0
    first, rotated = "s3cret-" + unique("v1"), "s3cret-" + unique("v2")
    (node.root / "pw").write_text(first + "\n")
    r = node.zl("secret", "set", "db_password", "--env", env, "--from-file", str(node.root / "pw"))
    assert r.returncode == 0 and "version 1" in r.stdout, r.stderr
    node.api("POST", f"/api/v1/secrets?environment={env}&project={project}", {"name": "db_password",
                                                                             "value": "acme-pw"})  # fmt: skip
    node.api("POST", "/api/v1/secrets", {"name": "cfg", "value": '{"user": "app"}', "scope": name})
    node.api("POST", "/api/v1/secrets?scope=@web", {"name": "token", "value": "web-token"})
    refs = {"DB_PASSWORD": f"$S::{env}/db_password", "DB_ACME": f"$S:{project}:{env}/db_password",
            "DB_URL_FORM": f"$secret://{env}/db_password", "DB_USER": "$S:cfg/user", "TOKEN": "$S:@web/token",
            "PLAIN": "hello"}  # fmt: skip
    node.deploy(spec(name, refs))
    node.expect(name)
    seen = environ(node, name)
    assert {k: seen.get(k) for k in refs} == {"DB_PASSWORD": first, "DB_ACME": "acme-pw", "DB_URL_FORM": first,
                                             "DB_USER": "app", "TOKEN": "web-token", "PLAIN": "hello"}  # fmt: skip
    before = node.containers(name, "web")[0]["id"]

    # rotate, then roll out (the same spec again): the new replica sees the new value; the old version is kept
    r = node.zl("secret", "rotate", "db_password", "--env", env, "--value", rotated)
    assert r.returncode == 0 and "version 1 -> 2" in r.stdout, r.stderr
    node.deploy(spec(name, refs))
    node.wait_for(lambda: environ(node, name).get("DB_PASSWORD") == rotated, 60, "the rotated value in the replica")
    assert environ(node, name)["DB_URL_FORM"] == rotated
    versions = sqlite3.connect(node.data / "security.db").execute(
        "SELECT version FROM secrets WHERE name='db_password' ORDER BY version").fetchall()  # fmt: skip
    assert [v for (v,) in versions][-2:] == [1, 2]
    assert [c["id"] for c in node.containers(name, "web") if c["state"] == "running"] != [before]

    # listings carry no values; the daemon's log holds none
    listed = node.api("GET", f"/api/v1/secrets?environment={env}")
    assert listed and all("value" not in s for s in listed) and rotated not in json.dumps(listed)
    logs = "".join(p.read_text(errors="replace") for p in (node.data / "logs").glob("*.log*"))
    assert first not in logs and rotated not in logs
    raw = b"".join(p.read_bytes() for p in node.data.glob("security.db*"))
    assert rotated.encode() not in raw and first.encode() not in raw

    # a reference that does not resolve: refused at deploy, naming the variable and the secret; nothing changes
    status, body = node.request("POST", "/api/v1/deployments", {"spec": spec(name, {**refs, "MISSING":
                                                                                    f"$S::{env}/nope"})})  # fmt: skip
    assert status == 400, (status, body)
    assert "services.web.env.MISSING" in body["message"] and "nope" in body["message"], body
    assert environ(node, name)["DB_PASSWORD"] == rotated

    # zlayer run: a local command with the environment's secrets
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), "run", "--env", env,
                        "--no-global", "--", "sh", "-c", "echo $db_password"], env=node.env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == rotated, r.stderr
