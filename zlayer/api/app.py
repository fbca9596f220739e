"""The daemon's FastAPI application, its error format, and bearer-token authentication for TCP listeners."""

from __future__ import annotations

import email.message
import json
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request, WebSocketException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zlayer._version import __version__
from zlayer.api.auth import access_needed, may_write
from zlayer.api.context import ApiContext
from zlayer.errors import AuthError, ForbiddenError, ZLayerError, from_os_error
from zlayer.limits import MAX_JSON_BYTES, json_limit_problem
from zlayer.tokens import verify_token

log = logging.getLogger("zlayer.api")
PUBLIC_PATHS = ("/health/live", "/health/ready", "/api-docs/openapi.json")
CLAIMS = "zlayer.claims"  # where TokenAuth leaves a verified token's claims in the ASGI scope
BEARER_SCHEME = "bearer_auth"  # ZLayer's name for it in the OpenAPI document
_OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


# ZLayer's ErrorResponse names the kind of error in ``error`` (by HTTP status); ours keeps that field for ZLayer's
# clients and adds the finer, stable ``code`` and, where one applies, the field path (``where``/``problems``).
ZLAYER_ERROR = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
                422: "validation_error", 429: "rate_limited", 500: "internal_error", 501: "not_implemented",
                502: "bad_gateway", 503: "service_unavailable", 405: "method_not_allowed", 413: "payload_too_large",
                507: "insufficient_storage"}  # fmt: skip


def error_body(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"error": ZLAYER_ERROR.get(status, "error"), **body}


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body = {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(error_body(status, body), status_code=status)


async def authorize(request: HTTPConnection) -> None:
    """Every route's dependency: over TCP, a route that writes (:func:`~zlayer.api.auth.access_needed`) needs an
    ``admin`` or ``operator`` token, else 403. A request without claims came through the unix socket, whose file mode
    admits root and the ``zlayer`` group only: it may do everything (ZLayer's socket acts as ``local-admin``).
    A WebSocket (an interactive channel: attach, exec) is a write."""
    claims = request.scope.get(CLAIMS)
    if claims is None:
        return
    route = request.scope.get("route")
    method = request.scope.get("method", "WEBSOCKET")
    if access_needed(method, getattr(route, "openapi_extra", None)) == "read" or may_write(claims):
        return
    what = f"{method} {getattr(route, 'path', request.url.path)}"
    if request.scope["type"] == "websocket":
        raise WebSocketException(WS_1008_POLICY_VIOLATION, f"{what}: the token's roles allow reading only")
    raise ForbiddenError(
        f"{what} changes the node; the token of {claims.get('sub')!r} has roles {claims.get('roles') or []}, "
        "it needs admin or operator",
        where=what,
        hint="use a token from `zlayer token create --roles operator`",
    )


def declare_bearer(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as ZLayer's: an HTTP bearer (JWT) scheme ``bearer_auth`` that every operation but the
    public ones requires (so generated clients send the token), with the 401 and, on writes, the 403 it answers."""
    doc.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "DATA_DIR/admin_bearer.token, or a token from `zlayer token create`; writes need the "
        "admin or operator role",
    }
    for path, item in doc.get("paths", {}).items():
        if path in PUBLIC_PATHS:
            continue
        for method, op in item.items():
            if method not in _OPERATIONS:
                continue
            op["security"] = [{BEARER_SCHEME: []}]
            responses = op.setdefault("responses", {})
            responses.setdefault("401", {"description": "Missing, invalid or expired bearer token"})
            if access_needed(method, op) == "write":
                responses.setdefault("403", {"description": "Forbidden - operator role required"})
    return doc


def create_app(context: ApiContext, *, swagger: bool = True) -> FastAPI:
    """The REST API of one daemon. Route modules are imported here, at daemon start, not at CLI start."""
    from zlayer.api import containers, deployments, health, images, jobs, proxy, services

    app = FastAPI(
        title="ZLayer API",
        version=__version__,
        openapi_url="/api-docs/openapi.json",
        docs_url="/swagger-ui" if swagger else None,
        redoc_url=None,
        dependencies=[Depends(authorize)],
    )
    generate = app.openapi
    app.openapi = lambda: declare_bearer(generate())  # type: ignore[method-assign]
    app.state.ctx = context
    for mod in (health, deployments, services, containers, images, jobs, proxy):
        app.include_router(mod.router)

    @app.exception_handler(ZLayerError)
    async def zlayer_error(_: Request, exc: ZLayerError) -> JSONResponse:
        return JSONResponse(error_body(exc.http_status, exc.to_json()), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"path": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]} for e in exc.errors()
        ]
        where = problems[0]["path"] if problems else None
        return _error(400, "invalid_request", "the request body or parameters are invalid", where=where,
                      problems=problems)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(OSError)
    async def os_error(_: Request, exc: OSError) -> JSONResponse:
        err = from_os_error(exc, "the request could not be completed")
        if err is None:  # not the host's disk: a bug or a broken host, so the traceback goes to the log
            log.error("request failed", exc_info=exc)
            return _error(500, "internal", f"{type(exc).__name__}: {exc}")
        return JSONResponse(error_body(err.http_status, err.to_json()), status_code=err.http_status)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal", f"{type(exc).__name__}: {exc}")

    app.add_middleware(BodyLimits)  # before the timing middleware, so refused bodies are counted too

    metrics = context.metrics if context is not None else None
    if metrics is not None:

        @app.middleware("http")
        async def timing(request: Request, call_next: Any) -> Any:
            t0 = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            metrics.api_request(
                request.method, getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - t0
            )
            return response

    return app


def _parsed_as_json(content_type: bytes | None) -> bool:
    """Whether FastAPI will hand this body to ``json.loads``: no content type, ``application/json`` or
    ``application/*+json`` (decided with the same parser FastAPI uses)."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _not_utf8(body: bytes) -> str | None:
    """JSON between systems is UTF-8 (RFC 8259); anything else is said as such, not as "an error parsing the body"."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start}: 0x{body[e.start]:02x})"
    return None


async def _send_error(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(error_body(status, body)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyLimits:
    """ASGI middleware: a request body that FastAPI will parse as JSON is read whole first (at most
    :data:`~zlayer.limits.MAX_JSON_BYTES`, else 413) and checked for nesting (at most
    :data:`~zlayer.limits.MAX_NESTING` levels, else 400) before any parser sees it, so no request can exhaust the
    daemon's stack. Other bodies (streams) pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        length = headers.get(b"content-length")
        has_body = (length is not None and length.strip() not in (b"", b"0")) or b"transfer-encoding" in headers
        if not has_body or not _parsed_as_json(headers.get(b"content-type")):
            await self.app(scope, receive, send)
            return
        too_large = {"code": "payload_too_large", "where": "body",
                     "message": f"request body too large (at most {MAX_JSON_BYTES} bytes are accepted)"}  # fmt: skip
        if length is not None and length.strip().isdigit() and (len(length) > 18 or int(length) > MAX_JSON_BYTES):
            await _send_error(send, 413, too_large)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_JSON_BYTES:
                await _send_error(send, 413, too_large)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = json_limit_problem(body) or _not_utf8(body)
        if problem is not None:
            await _send_error(send, 400, {"code": "invalid_request", "message": f"request body: {problem}",
                                          "where": "body"})  # fmt: skip
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # a streaming response waits here for the client to go away
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class TokenAuth:
    """ASGI wrapper for a TCP listener: every request but the health probes and the OpenAPI document needs
    ``Authorization: Bearer <JWT>``, an HS256 token signed with the daemon's secret (as ZLayer's); a missing, forged,
    expired or foreign token gets 401 ``{"code": "unauthorized"}``. The token's claims go on to the app, whose
    :func:`authorize` refuses writes to tokens without a writing role. A WebSocket (an attached exec, a write) is
    refused here, closed with 1008 and the reason. The unix socket is served without this wrapper: its file mode
    already limits it to root and the ``zlayer`` group (admin)."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or (scope["type"] == "http" and scope["path"] in PUBLIC_PATHS):
            await self.app(scope, receive, send)  # lifespan events, health probes, the OpenAPI document
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, value = header.partition(b" ")
        if not header:
            message = "missing bearer token"
        elif scheme.lower() != b"bearer":
            message = "the Authorization header must be 'Bearer <token>'"
        else:
            try:
                claims = verify_token(self.secret, value.decode("latin-1"))
            except AuthError as e:
                message = e.message
            else:
                if scope["type"] == "websocket" and not may_write(claims):  # an attached exec: a write
                    why = f"WEBSOCKET {scope['path'][:56]}: the token may only read; it needs admin or operator"
                    await _refuse_websocket(receive, send, why)
                    return
                await self.app({**scope, CLAIMS: claims}, receive, send)
                return
        if scope["type"] == "websocket":
            await _refuse_websocket(receive, send, message)
            return
        body = json.dumps(
            {
                "error": "unauthorized",
                "code": "unauthorized",
                "message": message,
                "hint": "pass the token from DATA_DIR/admin_bearer.token, or one from `zlayer token create`",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _refuse_websocket(receive: Receive, send: Send, reason: str) -> None:
    """Accepted, then closed at once with 1008 and the reason: a handshake refused before its accept reaches the
    client as a bare 403 (the reason is lost), and ``zlayer exec`` should say why. A close reason holds 123 bytes."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    text = reason.encode()[:123].decode(errors="ignore")
    await send({"type": "websocket.close", "code": WS_1008_POLICY_VIOLATION, "reason": text})
