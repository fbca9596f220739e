"""Token roles on the TCP API (issue 11, item 4) and the bearer scheme in the OpenAPI document (issue 11, smaller
items): a reader token reads and is refused every write with 403 in ZLayer's error shape, on every route the app
has, including routes added after the fact; operator and admin tokens write; the document declares ZLayer's
``bearer_auth`` scheme on every operation but the public ones."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket

from tests.fixtures.api_routes import app_routes
from zlayer.api import TokenAuth, create_app
from zlayer.api.app import PUBLIC_PATHS
from zlayer.api.auth import READ_ONLY, rule_for
from zlayer.tokens import create_token

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
SECRET = "s3cret"


def _app() -> FastAPI:
    # No context: a request that gets past authorization fails later (500 or 404), which tells it apart from 403.
    return create_app(None)  # type: ignore[arg-type]


class _Answer:
    """An HTTP response, or for a WebSocket sent an exec request: 403 when it was closed with 1008 (refused), else
    the code it was closed with or 101 when it answered."""

    def __init__(self, status_code: int, body: Any = None) -> None:
        self.status_code, self._body = status_code, body

    def json(self) -> Any:
        return self._body

    @property
    def text(self) -> str:
        return str(self._body)


def _websocket(app: Any, path: str, token: str) -> _Answer:
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    with TestClient(TokenAuth(app, SECRET), raise_server_exceptions=False) as client:
        try:
            with client.websocket_connect(path, headers={"Authorization": f"Bearer {token}"}) as ws:
                ws.send_text('{"command": ["true"]}')
                message = ws.receive()
        except WebSocketDisconnect as e:
            return _Answer(403 if e.code == 1008 else e.code, e.reason)
        except Exception as e:  # past authorization, the route fails without a daemon behind it
            return _Answer(500, repr(e))
    if message["type"] == "websocket.close":
        return _Answer(403 if message.get("code") == 1008 else message.get("code", 1000), message.get("reason"))
    return _Answer(101, message)


def _send(app: Any, requests: list[tuple[str, str]], roles: list[str]) -> list[Any]:
    token = create_token(SECRET, "someone", 60, roles)

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=TokenAuth(app, SECRET), raise_app_exceptions=False)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://zlayer", headers=headers) as c:
            return [await c.request(m, p, json={} if m != "GET" else None) for m, p in requests if m != "WEBSOCKET"]

    http = iter(asyncio.run(go()))
    return [_websocket(app, p, token) if m == "WEBSOCKET" else next(http) for m, p in requests]


def _by_level(app: FastAPI) -> list[Any]:
    """The routes a token's roles decide (issue 16): not the sign-in routes (public, or for any account) nor those
    only an admin may call (accounts, grants, the audit log), which an operator token may not either."""
    return [r for r in app_routes(app) if rule_for(r.method, r.path, r.declared).need in ("read", "execute", "write")]


def test_a_reader_token_is_refused_every_write_route_with_zlayers_error_shape() -> None:
    app = _app()
    # (and the reads of secrets' values: a GET that needs execute, issue 16)
    writes = [(r.method, r.target({})) for r in _by_level(app) if rule_for(r.method, r.path, r.declared).need != "read"]
    assert len(writes) >= 10, writes
    assert "WEBSOCKET" in {m for m, _ in writes}  # exec with stdin is one
    for (method, path), resp in zip(writes, _send(app, writes, ["reader"]), strict=True):
        assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
        if method == "WEBSOCKET":
            assert "may only read" in resp.text and "operator" in resp.text, resp.text
            continue
        body = resp.json()
        assert body["error"] == "forbidden" and body["code"] == "forbidden", body
        assert "operator" in body["message"] and "reader" in body["message"], body


def test_a_reader_token_may_read_every_read_route() -> None:
    app = _app()
    reads = [(r.method, r.target({})) for r in _by_level(app) if rule_for(r.method, r.path, r.declared).need == "read"]
    for (method, path), resp in zip(reads, _send(app, reads, ["reader"]), strict=True):
        assert resp.status_code not in (401, 403), (method, path, resp.status_code, resp.text)


def test_operator_and_admin_tokens_get_past_authorization_on_writes_and_no_roles_cannot_write() -> None:
    app = _app()
    writes = [(r.method, r.target({})) for r in _by_level(app) if r.method not in ("GET", "HEAD")]
    for roles in (["operator"], ["admin"], ["reader", "operator"]):
        for (method, path), resp in zip(writes, _send(app, writes, roles), strict=True):
            assert resp.status_code not in (401, 403), (roles, method, path, resp.status_code, resp.text)
    for roles in ([], ["node"], ["Admin"]):
        assert {r.status_code for r in _send(app, writes, roles)} == {403}, roles


def test_a_route_added_later_is_a_write_unless_it_is_declared_read_only() -> None:
    app = _app()

    @app.post("/api/v1/added/dry-run", openapi_extra=READ_ONLY)
    async def dry_run() -> dict[str, bool]:
        return {"ok": True}

    @app.patch("/api/v1/added/thing")
    async def change() -> dict[str, bool]:
        return {"ok": True}

    reader = _send(app, [("POST", "/api/v1/added/dry-run"), ("PATCH", "/api/v1/added/thing")], ["reader"])
    assert [r.status_code for r in reader] == [200, 403]
    operator = _send(app, [("POST", "/api/v1/added/dry-run"), ("PATCH", "/api/v1/added/thing")], ["operator"])
    assert [r.status_code for r in operator] == [200, 200]


def test_the_unix_socket_app_is_not_limited_by_roles() -> None:
    async def go() -> int:
        transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://zlayer") as c:
            return (await c.post("/api/v1/jobs/x/cancel")).status_code

    assert asyncio.run(go()) not in (401, 403)


def test_openapi_declares_the_bearer_scheme_on_every_operation_but_the_public_ones() -> None:
    doc = _app().openapi()
    assert doc["components"]["securitySchemes"]["bearer_auth"] == {
        **doc["components"]["securitySchemes"]["bearer_auth"],
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    seen = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path in PUBLIC_PATHS:
                assert "security" not in op, (method, path)
                continue
            seen += 1
            assert op.get("security") == [{"bearer_auth": []}], (method, path, op.get("security"))
            assert "401" in op["responses"], (method, path)
            if method != "get":
                assert "403" in op["responses"], (method, path)
    assert seen >= 30


def test_a_websocket_needs_a_token_and_a_writing_role() -> None:
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    app = _app()

    @app.websocket("/api/v1/added/attach")
    async def attach(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("attached")
        await ws.close()

    def connect(token: str | None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with TestClient(TokenAuth(app, SECRET)) as client:
            try:
                with client.websocket_connect("/api/v1/added/attach", headers=headers) as ws:
                    return str(ws.receive_text())
            except WebSocketDisconnect as e:
                return f"closed {e.code} {e.reason}"

    assert connect(None) == "closed 1008 missing bearer token"
    # issue 16: a forged, expired or foreign token is refused in words that do not help guessing which it was
    assert connect(create_token("other", "x", 60, ["admin"])) == "closed 1008 invalid or expired token"
    assert connect(create_token(SECRET, "x", 60, ["reader"])).startswith("closed 1008 WEBSOCKET /api/v1/added/attach")
    assert connect(create_token(SECRET, "x", 60, ["operator"])) == "attached"
