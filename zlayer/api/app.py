"""The daemon's FastAPI application, its error format, and bearer-token authentication for TCP listeners."""

from __future__ import annotations

import email.message
import hmac
import json
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.status import WS_1008_POLICY_VIOLATION
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zlayer._version import __version__
from zlayer.api.auth import ACTOR, AUDIT, CLAIMS, RULES, WRITE_METHODS, authorize, rule_for
from zlayer.api.context import ApiContext
from zlayer.errors import AuthError, ZLayerError, from_os_error
from zlayer.limits import MAX_JSON_BYTES, json_limit_problem
from zlayer.security.rbac import ANONYMOUS, LOCAL_ADMIN, Actor, Level, level_of, roles_level
from zlayer.tokens import verify_token

log = logging.getLogger("zlayer.api")
PUBLIC_PATHS = tuple(sorted({path for (_, path), rule in RULES.items() if rule.need == "public"}))
SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "zlayer_session", "zlayer_csrf", b"x-csrf-token"
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


def declare_bearer(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as ZLayer's: an HTTP bearer (JWT) scheme ``bearer_auth`` that every operation but the
    public ones requires (so generated clients send the token), with the 401 and, on writes, the 403 it answers."""
    doc.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "DATA_DIR/admin_bearer.token, a token from `zlayer token create`, `POST /auth/token` or "
        "`POST /auth/login`; each route needs a level on its resource (admin, or a grant)",
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
            rule = rule_for(method.upper(), path, op)
            if rule.need != "authenticated" or method != "get":
                responses.setdefault("403", {"description": f"Forbidden: needs {rule.need} on the {rule.kind}"})
    return doc


def create_app(context: ApiContext, *, swagger: bool = True) -> FastAPI:
    """The REST API of one daemon. Route modules are imported here, at daemon start, not at CLI start."""
    from zlayer.api import (
        builds,
        cluster,
        containers,
        deployments,
        health,
        identity,
        images,
        jobs,
        overlay,
        peer,
        proxy,
        secrets,
        services,
    )

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
    app.state.security = getattr(context, "security", None)
    app.state.peer = getattr(context, "peer", None)  # checks other nodes' calls (zlayer.cluster.peer.PeerAuth)
    for mod in (
        health,
        deployments,
        services,
        containers,
        images,
        jobs,
        proxy,
        identity,
        cluster,
        secrets,
        builds,
        overlay,
        peer,
    ):
        app.include_router(mod.router)
    app.include_router(images.system)

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
    from zlayer.api.tracing import Traced, tracing_configured

    if tracing_configured():
        app.add_middleware(Traced)  # outermost: the span covers the whole request, refused bodies included

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


class _Routes:
    """The app's routes as (method, template, regex), to tell an unknown path (404, for anyone) from a route that
    needs credentials before the app runs, and to find the rule of a WebSocket route (refused before its accept)."""

    def __init__(self, app: Any) -> None:
        from fastapi.routing import iter_route_contexts
        from starlette.routing import WebSocketRoute, compile_path

        self.size = len(app.routes)
        self.routes: list[tuple[frozenset[str], str, Any, Any]] = []
        for route in iter_route_contexts(app.routes):
            methods = set(getattr(route, "methods", None) or ())
            if isinstance(getattr(route, "original_route", route), WebSocketRoute):
                methods = {"WEBSOCKET"}
            regex, _, _ = compile_path(str(route.path))
            self.routes.append((frozenset(methods), str(route.path), regex, getattr(route, "openapi_extra", None)))

    def match(self, method: str, path: str) -> tuple[str, dict[str, str], Any] | None:
        """(template, path parameters, openapi_extra) of the route serving ``method path``; a path some route has
        under another method gives that route (the app answers 405); None: no such path."""
        other = None
        for methods, template, regex, declared in self.routes:
            m = regex.match(path)
            if m is None:
                continue
            if method in methods or (method == "HEAD" and "GET" in methods):
                return template, m.groupdict(), declared
            other = other or (template, m.groupdict(), declared)
        return other


class TokenAuth:
    """ASGI wrapper of a listener: who sends each request. A bearer token (an HS256 JWT signed with the daemon's
    secret: ``zlayer token create``, a session from ``POST /auth/login``, a token from ``POST /auth/token``) or the
    ``zlayer_session`` cookie (whose writes must carry ``X-CSRF-Token`` equal to the ``zlayer_csrf`` cookie). A
    route that needs an actor answers 401 without one, in the same words for every kind of bad credential; an
    unknown path answers 404 as it would to anyone. With ``local`` (the unix socket, root and group ``zlayer`` only)
    a request without credentials acts as the local admin, as ZLayer's socket does. What the app then decides
    (:func:`zlayer.api.auth.authorize`) and every successful write go to the audit log."""

    def __init__(self, app: ASGIApp, secret: str, *, local: bool = False) -> None:
        self.app = app
        self.secret = secret
        self.local = local
        self._routes: _Routes | None = None

    def _match(self, method: str, path: str) -> tuple[str, dict[str, str], Any] | None:
        routes = getattr(self.app, "routes", None)
        if routes is None:
            return ("", {}, None)
        if self._routes is None or self._routes.size != len(routes):
            self._routes = _Routes(self.app)
        return self._routes.match(method, path)

    @property
    def security(self) -> Any:
        return getattr(getattr(self.app, "state", None), "security", None)

    def _actor(self, claims: dict[str, Any]) -> Actor:
        security = self.security
        if security is not None:
            actor: Actor = security.actor(claims)
            return actor
        if claims.get("uid") is not None:
            raise AuthError("invalid token")
        roles = tuple(r for r in claims.get("roles") or () if isinstance(r, str))
        return Actor(str(claims.get("sub", "")), roles_level(roles), roles=roles, via="token")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan events
            return
        method = scope.get("method", "WEBSOCKET") if scope["type"] == "http" else "WEBSOCKET"
        found = self._match(method, scope["path"])
        if found is None:  # no such path: the app's 404, to anyone
            await self.app({**scope, ACTOR: ANONYMOUS}, receive, send)
            return
        template, params, declared = found
        rule = rule_for(method, template, declared)
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"")
        cookies = _cookies(headers.get(b"cookie", b""))
        claims: dict[str, Any] | None = None
        message = "missing bearer token"
        actor = LOCAL_ADMIN if self.local else ANONYMOUS
        token = ""
        if header:
            scheme, _, value = header.partition(b" ")
            token = value.decode("latin-1") if scheme.lower() == b"bearer" else ""
            message = "invalid or expired token"
        elif SESSION_COOKIE in cookies:
            token = cookies[SESSION_COOKIE]
            message = "invalid or expired session"
            if method in WRITE_METHODS and rule.need != "public":
                given = headers.get(CSRF_HEADER, b"").decode("latin-1")
                if not hmac.compare_digest(given.encode(), cookies.get(CSRF_COOKIE, "").encode()) or not given:
                    await _send_error(send, 403, {"code": "csrf", "message": "missing or wrong X-CSRF-Token header",
                                                  "where": "X-CSRF-Token"})  # fmt: skip
                    return
        if rule.need == "peer":  # another node's call: its credential, not a user's token, says who it is
            actor, message = await self._peer(scope, method, headers)
        elif header or token:
            try:
                claims = verify_token(self.secret, token)
                actor = self._actor(claims)
            except AuthError:
                claims, actor = None, ANONYMOUS
        if not actor.authenticated and rule.need != "public":
            if header or token:
                self._audit(ANONYMOUS, "unauthenticated", template, None, scope)
            if scope["type"] == "websocket":
                await _refuse_websocket(receive, send, message)
                return
            await _unauthorized(send, message)
            return
        if scope["type"] == "websocket" and rule.need not in ("public", "authenticated", "peer"):
            rid = params.get(rule.id) if rule.id else None
            sec = self.security
            have = sec.level(actor, rule.kind, rid) if sec is not None else level_of(actor, None, rule.kind, rid)
            if have < Level[rule.need.upper()]:
                who = "the token" if actor.via == "token" else actor.name[:20]
                verb = f"may only {have.word}" if have else "has no access"
                fix = "it needs admin or operator" if actor.via == "token" else "it needs a grant"
                why = f"WEBSOCKET {scope['path'][:30]}: needs {rule.need} on {rule.kind}; {who} {verb}; {fix}"
                self._audit(actor, "denied", rule.kind, rid, scope)
                await _refuse_websocket(receive, send, why)
                return
        note: dict[str, Any] = {}
        inner = {**scope, ACTOR: actor, AUDIT: note}
        if claims is not None:
            inner[CLAIMS] = claims
        if method not in WRITE_METHODS or self.security is None:
            await self.app(inner, receive, send)
            return
        status = 0

        async def sending(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        await self.app(inner, receive, sending)
        if 200 <= status < 300:
            who = note.get("actor", actor)
            kind = template.removeprefix("/api/v1/").split("/")[0] if template.startswith("/api/v1/") else "auth"
            self._audit(who, {"POST": "create", "DELETE": "delete"}.get(method, "update"), kind,
                        note.get("rid") or params.get("name") or params.get("id"), scope,
                        {"method": method, "path": scope["path"], "status": status})  # fmt: skip

    async def _peer(self, scope: Scope, method: str, headers: dict[bytes, bytes]) -> tuple[Actor, str]:
        """The actor of a call from another node (``via="peer"``, no rights of its own beyond the peer routes),
        or anonymous and why not, from its ``X-ZLayer-Peer`` credential (:mod:`zlayer.cluster.peer`)."""
        peers = getattr(getattr(self.app, "state", None), "peer", None)
        credential = headers.get(b"x-zlayer-peer", b"").decode("latin-1")
        if peers is None or not credential:
            return ANONYMOUS, "missing peer credential: only the nodes of the cluster call this route"
        raw = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        target = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        try:
            claims = await peers.verify(credential, method, target)
        except AuthError as e:
            log.warning("refused a call to %s as another node's: %s", target[:200], e.message)
            return ANONYMOUS, f"peer credential refused: {e.message}"
        who = f"{claims.actor} via node {claims.issuer}" if claims.actor else f"node {claims.issuer}"
        return Actor(who, Level.NONE, via="peer"), ""

    def _audit(self, actor: Actor, action: str, kind: str, rid: str | None, scope: Scope,
               details: dict[str, Any] | None = None) -> None:  # fmt: skip
        security = self.security
        if security is None:
            return
        client = scope.get("client")
        agent = dict(scope.get("headers") or []).get(b"user-agent", b"").decode("latin-1")[:200] or None
        try:
            security.audit(actor, action, kind, rid, ip=client[0] if client else "local", user_agent=agent,
                           details=details)  # fmt: skip
        except (ZLayerError, OSError) as e:
            log.error("audit log: %s", e)


def _cookies(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in raw.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in out:
            out[name] = value.strip().strip('"')
    return out


async def _unauthorized(send: Send, message: str) -> None:
    body = json.dumps({"error": "unauthorized", "code": "unauthorized", "message": message,
                       "hint": "pass a bearer token (DATA_DIR/admin_bearer.token, `zlayer token create`, "
                               "`zlayer auth login`)"}).encode()  # fmt: skip
    headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse_websocket(receive: Receive, send: Send, reason: str) -> None:
    """Accepted, then closed at once with 1008 and the reason: a handshake refused before its accept reaches the
    client as a bare 403 (the reason is lost), and ``zlayer exec`` should say why. A close reason holds 123 bytes."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    text = reason.encode()[:123].decode(errors="ignore")
    await send({"type": "websocket.close", "code": WS_1008_POLICY_VIOLATION, "reason": text})
