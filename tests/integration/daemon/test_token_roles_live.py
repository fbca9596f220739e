"""Token roles against a live daemon over TCP (issue 11, item 4): a token from ``zlayer token create --roles reader``
reads every read route and is refused every other route the app has (403, ZLayer's error shape) — exec as root and
scale included — and nothing changes on the node; an operator token may write."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.api_routes import app_routes
from tests.fixtures.daemon_live import LiveNode, web_spec
from tests.fixtures.daemon_node import unique
from zlayer.api import create_app
from zlayer.api.auth import rule_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Bodies a real client would send, so a refusal is not a body error in disguise.
BODIES: dict[str, Any] = {
    "/api/v1/containers/{id}/exec": {"command": ["/bin/sh", "-c", "echo pwned > /pwned"]},
    "/api/v1/deployments/{deployment}/services/{service}/exec": {"command": ["/bin/sh", "-c", "echo x > /pwned"]},
    "/api/v1/deployments/{deployment}/services/{service}/scale": {"replicas": 3},
    "/api/v1/images/pull": {"reference": "zlayer-svc/httpd:v2"},
}


def _websocket_exec(node: LiveNode, path: str, token: str, command: list[str]) -> tuple[int | None, str]:
    """An attached exec over TCP as ``zlayer exec -i`` opens it: (close code, reason), or (None, first frame)."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    def go() -> tuple[int | None, str]:
        url = f"ws://127.0.0.1:{node.api_port}{path}"
        try:
            with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, proxy=None) as ws:
                ws.send(json.dumps({"command": command}))
                return None, str(ws.recv(timeout=30))
        except ConnectionClosed as e:
            return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "closed")
        except InvalidStatus as e:
            return e.response.status_code, "handshake refused"

    return node.in_ns(go)


def _token(node: LiveNode, roles: str) -> str:
    r = node.zl("token", "create", "--roles", roles, "--subject", f"ci-{roles}", "--quiet")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_reader_token_reads_and_is_refused_every_write_and_exec(
    daemon_live: LiveNode, daemon_live_names: list[str]
) -> None:
    node, name = daemon_live, unique("roles")
    daemon_live_names.append(name)
    node.deploy(web_spec(name, 1))
    node.expect(name)
    reader, operator = _token(node, "reader"), _token(node, "operator")
    values = {"name": name, "deployment": name, "service": "web", "id": "web-rep-1", "execution_id": "x"}
    # issue 16: the routes a token's roles decide; not the sign-in routes (public, or for any account) nor those only
    # an admin may call (accounts, grants, the audit log), which tests/unit/security walks with each kind of caller
    routes = [r for r in app_routes(create_app(None)) if rule_for(r.method, r.path, r.declared).need  # type: ignore[arg-type]
              in ("read", "execute", "write")]  # fmt: skip
    assert len([r for r in routes if r.method not in ("GET", "HEAD")]) >= 10

    assert "WEBSOCKET" in {r.method for r in routes}  # exec with stdin attached
    for route in routes:
        target = route.target(values)
        if route.method == "WEBSOCKET":
            code, reason = _websocket_exec(node, target, reader, ["/bin/sh", "-c", "echo ws > /pwned"])
            assert code in (1008, 403), (route.path, code, reason)
            continue
        if rule_for(route.method, route.path, route.declared).need == "read":
            status, _, body = node.tcp(route.method, f"{target}?follow=false", reader)
            assert status not in (401, 403) and status < 500, (route.method, route.path, status, body)
            continue
        status, _, body = node.tcp(route.method, target, reader, body=BODIES.get(route.path, {}))
        assert status == 403, (route.method, route.path, status, body)
        assert body["error"] == "forbidden" and body["code"] == "forbidden", body
        assert "reader" in body["message"] and "operator" in body["message"], body

    # nothing the reader asked for happened
    assert node.deployment(name)["status"] == "running"
    assert [c["id"] for c in node.containers(name, "web")] == ["web-rep-1"]
    probe = node.api("POST", "/api/v1/containers/web-rep-1/exec", {"command": ["/bin/sh", "-c", "cat /pwned"]})
    assert probe["exit_code"] != 0, probe

    # the same write with an operator token goes through
    status, _, body = node.tcp("POST", f"/api/v1/deployments/{name}/services/web/scale", operator, {"replicas": 2})
    assert status == 200 and body["desired_replicas"] == 2, body
    status, _, body = node.tcp("POST", "/api/v1/containers/web-rep-1/exec", operator, {"command": ["id", "-u"]})
    assert status == 200 and body["stdout"].strip() == "0", body
    code, first = _websocket_exec(node, "/api/v1/containers/web-rep-1/exec", operator, ["id", "-u"])
    assert code is None and first, first  # the attached exec runs for an operator


def test_the_cli_with_a_reader_token_says_it_may_not(daemon_live: LiveNode, daemon_live_names: list[str]) -> None:
    node, name = daemon_live, unique("rolescli")
    daemon_live_names.append(name)
    node.deploy(web_spec(name, 1))
    node.expect(name)
    host = f"http://127.0.0.1:{node.api_port}"
    r = node.zl_ns("--host", host, "--token", _token(node, "reader"), "exec", "--deployment", name, "web", "--", "true")
    assert r.returncode != 0 and "needs admin or operator" in r.stderr, r.stdout + r.stderr
    r = node.zl_ns("--host", host, "--token", _token(node, "reader"), "ps", "--deployment", name)
    assert r.returncode == 0 and "web" in r.stdout, r.stdout + r.stderr
