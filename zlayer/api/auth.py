"""Who may do what on the API: one route table (:data:`RULES`) says, for every (method, route), the resource kind,
where its id comes from and the level needed (none < read < execute < write, ``admin`` above all; ``public`` and
``authenticated`` for the sign-in routes; ``peer`` for what another node of the cluster asks, with a credential signed
by that node, :mod:`zlayer.cluster.peer`); :func:`authorize`, the app's one dependency, decides from the actor
(:mod:`zlayer.security`) and that rule. A route the table does not name is decided by its method (a write unless
declared :data:`READ_ONLY`) on the node, and the suite fails for it (tests/unit/api/test_route_rules.py), so a new
route gets a rule when it is added.

Roles of tokens that name no account keep their meaning: ``admin`` is admin, ``operator`` writes everything, any
other valid token reads everything. An account's session or API key gets what its grants give (an admin account
everything)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocketException
from starlette.requests import HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION

from zlayer.errors import AuthError, ForbiddenError, SpecError, ZLayerError
from zlayer.security.rbac import LOCAL_ADMIN, Actor, Level, level_of

WRITE_ROLES = frozenset({"admin", "operator"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# openapi_extra of a route that changes nothing although its method is not a read (a dry run, a validation):
# ``@router.post(..., openapi_extra=READ_ONLY)``. Every other POST, PUT, PATCH and DELETE is a write.
ACCESS_KEY = "x-zlayer-access"
READ_ONLY: dict[str, Any] = {ACCESS_KEY: "read"}
ACTOR = "zlayer.actor"  # where the listener's wrapper leaves who sends the request (absent: the unix socket's admin)
AUDIT = "zlayer.audit"  # a dict the wrapper hands down and reads back: what the decision found, for the audit log
CLAIMS = "zlayer.claims"  # a verified token's claims


@dataclass(frozen=True)
class Rule:
    need: str  # public | authenticated | read | execute | write | admin | peer (another node of the cluster)
    kind: str = "node"
    id: str | None = None  # the path parameter naming the resource, or "@resolver" (RESOLVERS) for other places
    reveal: str | None = None  # a query flag that, when true, asks for values: then execute is needed


P, A, ADM, PEER = Rule("public"), Rule("authenticated"), Rule("admin"), Rule("peer")


def _r(need: str, kind: str = "node", rid: str | None = None, reveal: str | None = None) -> Rule:
    return Rule(need, kind, rid, reveal)


DEP, DEPS = "/api/v1/deployments/{name}", "/api/v1/deployments/{deployment}/services"
RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health/live"): P, ("GET", "/health/ready"): P, ("GET", "/api-docs/openapi.json"): P,
    ("GET", "/swagger-ui"): P, ("GET", "/docs/oauth2-redirect"): P,
    ("POST", "/auth/bootstrap"): P, ("POST", "/auth/login"): P, ("POST", "/auth/logout"): P,
    ("POST", "/auth/token"): P, ("GET", "/auth/csrf"): P, ("GET", "/auth/me"): A,
    ("GET", "/auth/oidc/providers"): P, ("GET", "/auth/oidc/{provider}/start"): P,
    ("GET", "/auth/oidc/{provider}/callback"): P,
    ("GET", "/api/v1/deployments"): _r("read", "deployment"),
    ("POST", "/api/v1/deployments"): _r("write", "deployment", "@spec"),
    ("GET", DEP): _r("read", "deployment", "name"), ("GET", f"{DEP}/spec"): _r("read", "deployment", "name"),
    ("GET", f"{DEP}/events"): _r("read", "deployment", "name"), ("DELETE", DEP): _r("write", "deployment", "name"),
    ("GET", DEPS): _r("read", "deployment", "deployment"),
    ("GET", f"{DEPS}/{{service}}"): _r("read", "deployment", "deployment"),
    ("POST", f"{DEPS}/{{service}}/scale"): _r("write", "deployment", "deployment"),
    ("GET", f"{DEPS}/{{service}}/logs"): _r("read", "deployment", "deployment"),
    ("GET", f"{DEPS}/{{service}}/containers"): _r("read", "deployment", "deployment"),
    ("POST", f"{DEPS}/{{service}}/exec"): _r("execute", "deployment", "deployment"),
    ("WEBSOCKET", f"{DEPS}/{{service}}/exec"): _r("execute", "deployment", "deployment"),
    ("GET", "/api/v1/containers"): _r("read"), ("GET", "/api/v1/containers/{id}"): _r("read"),
    ("GET", "/api/v1/containers/{id}/port"): _r("read"), ("GET", "/api/v1/containers/{id}/logs"): _r("read"),
    ("GET", "/api/v1/containers/{id}/stats"): _r("read"), ("POST", "/api/v1/containers/{id}/exec"): _r("execute"),
    ("WEBSOCKET", "/api/v1/containers/{id}/exec"): _r("execute"), ("DELETE", "/api/v1/containers/{id}"): _r("write"),
    ("GET", "/api/v1/images"): _r("read"), ("POST", "/api/v1/images/pull"): _r("write"),
    **{("POST", f"/api/v1/containers{op}"): _r("write") for op in (
        "", "/prune", "/{id}/start", "/{id}/stop", "/{id}/restart", "/{id}/kill", "/{id}/pause", "/{id}/unpause",
        "/{id}/rename", "/{id}/update", "/{id}/wait")},
    ("GET", "/api/v1/containers/{id}/wait"): _r("read"), ("GET", "/api/v1/containers/{id}/top"): _r("read"),
    ("GET", "/api/v1/containers/{id}/changes"): _r("read"), ("GET", "/api/v1/containers/{id}/archive"): _r("read"),
    ("HEAD", "/api/v1/containers/{id}/archive"): _r("read"),
    ("PUT", "/api/v1/containers/{id}/archive"): _r("write"),
    ("POST", "/api/v1/images/tag"): _r("write"), ("DELETE", "/api/v1/images/{image:path}"): _r("write"),
    ("POST", "/api/v1/system/prune"): _r("write"),
    ("POST", "/api/v1/build"): _r("write"), ("POST", "/api/v1/build/json"): _r("write"),
    ("GET", "/api/v1/build/{id}"): _r("read"), ("DELETE", "/api/v1/build/{id}"): _r("write"),
    ("GET", "/api/v1/build/{id}/logs"): _r("read"), ("GET", "/api/v1/build/{id}/stream"): _r("read"),
    ("GET", "/api/v1/builds"): _r("read"), ("GET", "/api/v1/templates"): P,
    ("POST", "/api/v1/jobs/{name}/trigger"): _r("execute"), ("GET", "/api/v1/jobs/{name}/executions"): _r("read"),
    ("GET", "/api/v1/jobs/{execution_id}/status"): _r("read"),
    ("POST", "/api/v1/jobs/{execution_id}/cancel"): _r("execute"),
    ("GET", "/api/v1/cron"): _r("read"), ("GET", "/api/v1/cron/{name}"): _r("read"),
    ("PUT", "/api/v1/cron/{name}/enable"): _r("write"), ("PUT", "/api/v1/cron/{name}/disable"): _r("write"),
    ("POST", "/api/v1/cron/{name}/trigger"): _r("execute"),
    ("GET", "/api/v1/proxy/routes"): _r("read"), ("GET", "/api/v1/proxy/backends"): _r("read"),
    ("GET", "/api/v1/proxy/streams"): _r("read"), ("GET", "/api/v1/proxy/tls"): _r("read"),
    ("GET", "/api/v1/overlay/status"): _r("read"), ("GET", "/api/v1/overlay/peers"): _r("read"),
    ("GET", "/api/v1/overlay/ip-alloc"): _r("read"), ("GET", "/api/v1/overlay/dns"): _r("read"),
    ("GET", "/api/v1/overlay/services/{name}"): _r("read"),
    ("GET", "/api/v1/overlay/services/{name}/bridges/{node_id}"): _r("read"),
    ("GET", "/api/v1/users"): ADM, ("POST", "/api/v1/users"): ADM, ("GET", "/api/v1/users/{id}"): ADM,
    ("PATCH", "/api/v1/users/{id}"): ADM, ("DELETE", "/api/v1/users/{id}"): ADM,
    ("POST", "/api/v1/users/{id}/password"): A,  # one's own (with the current password), or any as admin
    ("GET", "/api/v1/groups"): ADM, ("POST", "/api/v1/groups"): ADM, ("GET", "/api/v1/groups/{id}"): ADM,
    ("PATCH", "/api/v1/groups/{id}"): ADM, ("DELETE", "/api/v1/groups/{id}"): ADM,
    ("POST", "/api/v1/groups/{id}/members"): ADM, ("DELETE", "/api/v1/groups/{id}/members/{user_id}"): ADM,
    ("GET", "/api/v1/permissions"): ADM, ("POST", "/api/v1/permissions"): ADM,
    ("GET", "/api/v1/permissions/by-resource"): ADM, ("DELETE", "/api/v1/permissions/{id}"): ADM,
    ("GET", "/api/v1/audit"): ADM,
    ("GET", "/api/v1/api-keys"): ADM, ("POST", "/api/v1/api-keys"): ADM, ("DELETE", "/api/v1/api-keys/{id}"): ADM,
    # the cluster: a join (and its abort) carries its own proof, the join token; the rest is the node's
    ("POST", "/api/v1/cluster/join"): P, ("GET", "/api/v1/cluster/ca"): P, ("POST", "/api/v1/cluster/join/abort"): P,
    ("POST", "/api/v1/cluster/init"): ADM, ("POST", "/api/v1/cluster/connect"): ADM,
    ("GET", "/api/v1/cluster/self"): _r("read"), ("GET", "/api/v1/cluster/nodes"): _r("read"),
    ("GET", "/api/v1/cluster/nodes/{node_id}"): _r("read"), ("GET", "/api/v1/nodes"): _r("read"),
    ("GET", "/api/v1/nodes/{node_id}"): _r("read"), ("POST", "/api/v1/cluster/nodes/{node_id}/labels"): _r("write"),
    ("PUT", "/api/v1/cluster/nodes/{node_id}/drain"): _r("write"),
    ("PUT", "/api/v1/cluster/nodes/{node_id}/undrain"): _r("write"),
    ("PUT", "/api/v1/cluster/nodes/{node_id}/mode"): ADM, ("DELETE", "/api/v1/cluster/nodes/{node_id}"): ADM,
    ("POST", "/api/v1/cluster/force-leader"): ADM, ("POST", "/api/v1/cluster/revoke-token"): ADM,
    ("POST", "/api/v1/nodes/join-token"): ADM,
    # another node of the cluster, for a replica this node runs: a peer credential, nothing else (zlayer.api.peer)
    ("GET", "/api/v1/cluster/peer/containers/{id}/logs"): PEER,
    ("POST", "/api/v1/cluster/peer/containers/{id}/exec"): PEER,
    ("WEBSOCKET", "/api/v1/cluster/peer/containers/{id}/exec"): PEER,
    # a secret's id is SCOPE:NAME (SCOPE: an environment's id, @service, a deployment, or global); a grant on its
    # environment counts for it, and SCOPE:* stands for the scope's every secret
    ("GET", "/api/v1/secrets"): _r("read", "secret", "@secrets"),
    ("POST", "/api/v1/secrets"): _r("write", "secret", "@secret"),
    ("POST", "/api/v1/secrets/bulk-import"): _r("write", "secret", "@secrets"),
    ("GET", "/api/v1/secrets/reveal-all"): _r("execute", "secret", "@secrets"),  # values: to run with them
    ("GET", "/api/v1/secrets/{name}"): _r("read", "secret", "@secret", reveal="reveal"),
    ("DELETE", "/api/v1/secrets/{name}"): _r("write", "secret", "@secret"),
    ("POST", "/api/v1/secrets/{name}/rotate"): _r("write", "secret", "@secret"),
    ("GET", "/api/v1/environments"): _r("read", "environment"),
    ("POST", "/api/v1/environments"): _r("write", "environment"),
    ("GET", "/api/v1/environments/{id}"): _r("read", "environment", "@env"),
    ("PATCH", "/api/v1/environments/{id}"): _r("write", "environment", "@env"),
    ("DELETE", "/api/v1/environments/{id}"): _r("write", "environment", "@env"),
    ("GET", "/api/v1/variables"): _r("read", "project"), ("POST", "/api/v1/variables"): _r("write", "project"),
    ("GET", "/api/v1/variables/{id}"): _r("read", "project"),
    ("PATCH", "/api/v1/variables/{id}"): _r("write", "project"),
    ("DELETE", "/api/v1/variables/{id}"): _r("write", "project"),
}  # fmt: skip


def rule_for(method: str, path: str, declared: dict[str, Any] | None = None) -> Rule:
    """The table's rule, else the method's: a read of the node, or a write unless declared :data:`READ_ONLY`."""
    rule = RULES.get((method, path))
    if rule is not None:
        return rule
    return Rule(access_needed(method, declared))


def access_needed(method: str, declared: dict[str, Any] | None) -> str:
    """``"read"`` or ``"write"`` for a route the table does not name."""
    if method.upper() in READ_METHODS or (declared or {}).get(ACCESS_KEY) == "read":
        return "read"
    return "write"


def may_write(claims: dict[str, Any]) -> bool:
    """True when a token's roles include ``admin`` or ``operator``."""
    roles = claims.get("roles")
    return isinstance(roles, list) and any(isinstance(r, str) and r in WRITE_ROLES for r in roles)


# How a rule's ``id`` that is not a plain path parameter finds the resource: from the request (body, query).
Resolver = Callable[[HTTPConnection], Awaitable[str | None]]
RESOLVERS: dict[str, Resolver] = {}


async def _spec_deployment(request: HTTPConnection) -> str | None:
    """The deployment a ``POST /api/v1/deployments`` creates or replaces: its spec's ``deployment`` (None when the
    body is no spec: the wildcard is needed, and the route itself then says what is wrong)."""
    from zlayer.limits import load_json
    from zlayer.spec.loader import check_spec_text

    if not hasattr(request, "body"):
        return None
    try:
        body = load_json(await request.body(), where="body", error=SpecError)
        doc = check_spec_text(body["spec"]) if isinstance(body, dict) and isinstance(body.get("spec"), str) else {}
    except (ValueError, SpecError, ZLayerError):
        return None
    name = doc.get("deployment")
    return name if isinstance(name, str) else None


RESOLVERS["@spec"] = _spec_deployment


def _secrets_of(request: HTTPConnection) -> Any:
    return getattr(getattr(request.app.state, "security", None), "secrets", None)


async def _refreshed(request: HTTPConnection) -> Any:
    """The secrets, their environments as the cluster has them now (a node's copy may be a moment behind)."""
    secrets = _secrets_of(request)
    if secrets is not None:
        with contextlib.suppress(ZLayerError):
            await secrets.refresh(max_age=0.2)
    return secrets


def _secret_scope(request: HTTPConnection) -> str:
    """The scope a secrets route works in, as the route itself will find it (an environment by name or id)."""
    q = request.query_params
    secrets, env = _secrets_of(request), q.get("environment")
    if env and secrets is not None:
        with contextlib.suppress(ZLayerError):
            return str(secrets.scope_of(env, q.get("project")))
        return env
    return q.get("scope") or "global"


async def _secret(request: HTTPConnection) -> str | None:
    await _refreshed(request)
    name = request.path_params.get("name")
    if name is None and hasattr(request, "body"):  # POST /api/v1/secrets: the name is in the body
        from zlayer.limits import load_json

        with contextlib.suppress(ZLayerError):
            body = load_json(await request.body(), where="body")
            name = body.get("name") if isinstance(body, dict) else None
            if isinstance(body, dict) and isinstance(body.get("scope"), str):
                return f"{body['scope']}:{name}"
    return f"{_secret_scope(request)}:{name}" if isinstance(name, str) else None


async def _secrets_scope(request: HTTPConnection) -> str | None:
    await _refreshed(request)
    return f"{_secret_scope(request)}:*"


async def _env(request: HTTPConnection) -> str | None:
    ref, secrets = request.path_params.get("id"), await _refreshed(request)
    if ref is not None and secrets is not None:
        with contextlib.suppress(ZLayerError):
            return str(secrets.environment(ref, request.query_params.get("project")).id)
    return None if ref is None else str(ref)


RESOLVERS.update({"@secret": _secret, "@secrets": _secrets_scope, "@env": _env})


async def resource(rule: Rule, request: HTTPConnection) -> str | None:
    if rule.id is None:
        return None
    if rule.id in RESOLVERS:
        return await RESOLVERS[rule.id](request)
    value = request.path_params.get(rule.id)
    return None if value is None else str(value)


def actor_of(request: HTTPConnection) -> Actor:
    """Who sends ``request``: what the listener's wrapper found, or the local admin on the unix socket."""
    actor: Actor = request.scope.get(ACTOR, LOCAL_ADMIN)
    return actor


def _client(request: HTTPConnection) -> tuple[str | None, str | None]:
    client = request.scope.get("client")
    agent = request.headers.get("user-agent")
    return (client[0] if client else "local"), (agent[:200] if agent else None)


def _refusal(what: str, rule: Rule, rid: str | None, actor: Actor, have: Level) -> str:
    target = f"{rule.kind} {rid!r}" if rid else f"every {rule.kind}"
    need = "the admin role" if rule.need == "admin" else f"{rule.need} on {target}"
    who = f"{actor.name!r}" + (f" (roles {list(actor.roles)})" if actor.via == "token" else "")
    text = f"{what} needs {need}; {who} may only {have.word}" if have else f"{what} needs {need}; {who} has no access"
    if actor.via == "token" and rule.need != "admin":
        text += " (a token needs the operator or admin role to change things)"
    return text


async def authorize(request: HTTPConnection) -> None:
    """Every route's dependency: the route's rule (:func:`rule_for`) against the actor's level on the resource.
    401 when nobody signed in; 403 naming the resource kind and the level needed (and recorded in the audit log)."""
    route = request.scope.get("route")
    method = request.scope.get("method", "WEBSOCKET")
    path = str(getattr(route, "path", request.url.path))
    rule = rule_for(method, path, getattr(route, "openapi_extra", None))
    actor = actor_of(request)
    note = request.scope.get(AUDIT)
    if rule.need == "peer" or actor.via == "peer":  # a node's credential opens the peer routes, and nothing else
        if rule.need == "peer" and actor.via == "peer":
            return
        raise ForbiddenError(
            f"{method} {path} is for the nodes of the cluster only"
            if rule.need == "peer"
            else f"{method} {path} is not open to another node's call",
            where=f"{method} {path}",
        )
    if rule.need == "public":
        return
    if not actor.authenticated:
        raise AuthError("authentication required")
    rid = await resource(rule, request)
    if note is not None:
        note.update(actor=actor, kind=rule.kind, rid=rid)
    if rule.need == "authenticated":
        return
    security = getattr(request.app.state, "security", None)
    have = security.level(actor, rule.kind, rid) if security is not None else level_of(actor, None, rule.kind, rid)
    need = Level[rule.need.upper()]
    if rule.reveal and request.query_params.get(rule.reveal, "").lower() in ("true", "1", "yes"):
        need, rule = Level.EXECUTE, Rule("execute", rule.kind, rule.id)
    if have >= need:
        return
    what = f"{method} {path}"
    if security is not None:
        ip, agent = _client(request)
        with contextlib.suppress(ZLayerError, OSError):
            security.audit(actor, "denied", rule.kind, rid, ip=ip, user_agent=agent,
                           details={"method": method, "path": request.url.path, "needed": rule.need})  # fmt: skip
    message = _refusal(what, rule, rid, actor, have)
    hint = None
    if actor.via == "token":
        hint = "a token with the operator or admin role, or an account with a grant (zlayer permission grant)"
    if request.scope["type"] == "websocket":
        raise WebSocketException(WS_1008_POLICY_VIOLATION, message[:123])
    raise ForbiddenError(message, where=what, hint=hint)


__all__ = ["ACTOR", "AUDIT", "READ_ONLY", "RULES", "WRITE_ROLES", "Rule", "access_needed", "actor_of",
           "authorize", "may_write", "rule_for"]  # fmt: skip
