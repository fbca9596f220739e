"""ZLayer's identity routes: ``/auth/*`` (bootstrap, login, logout, me, csrf, token), ``/api/v1/users``,
``/groups``, ``/permissions``, ``/audit`` and our ``/api/v1/api-keys``. Who may call each is the route table's
(:mod:`zlayer.api.auth`); what they do is :class:`zlayer.security.Security`'s."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from zlayer.api.auth import AUDIT, CLAIMS, actor_of
from zlayer.errors import DaemonError, NotFoundError, RateLimitedError
from zlayer.security.rbac import Actor, Grant
from zlayer.security.service import SESSION_SECS, Security
from zlayer.security.store import ApiKey, Group

router = APIRouter(tags=["Identity"])
SESSION_COOKIE, CSRF_COOKIE = "zlayer_session", "zlayer_csrf"


def sec(request: Request) -> Security:
    got: Security | None = getattr(request.app.state, "security", None)
    if got is None:
        raise DaemonError("this daemon has no identity store")
    return got


def _limited(request: Request, s: Security) -> None:
    client = request.client.host if request.client else "local"
    if not s.limiter.allow(client):
        raise RateLimitedError("too many attempts from this address; wait a minute", where=client)


class BootstrapRequest(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    display_name: str | None = Field(default=None, max_length=200)


class LoginRequest(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class TokenRequest(BaseModel):
    api_key: str = Field(max_length=254, description="API key or username")
    api_secret: str = Field(max_length=1024)


class CreateUserRequest(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    role: str = "user"
    display_name: str | None = Field(default=None, max_length=200)


class UpdateUserRequest(BaseModel):
    display_name: str | None = Field(default=None, max_length=200)
    is_active: bool | None = None
    role: str | None = None


class SetPasswordRequest(BaseModel):
    new_password: str = Field(max_length=1024)
    current_password: str | None = Field(default=None, max_length=1024)


class GroupRequest(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)


class AddMemberRequest(BaseModel):
    user_id: str = Field(max_length=254)


class GrantPermissionRequest(BaseModel):
    subject_kind: str
    subject_id: str = Field(max_length=254)
    resource_kind: str
    resource_id: str | None = Field(default=None, max_length=500)
    level: str


class CreateKeyRequest(BaseModel):
    name: str = Field(default="key", max_length=200)
    roles: list[str] = Field(default_factory=lambda: ["user"], max_length=10)
    hours: float | None = Field(default=None, gt=0, le=24 * 365 * 10)
    owner: str | None = Field(default=None, max_length=254, description="user id or email (default: the caller)")


def _login_response(response: Response, s: Security, user: Any) -> dict[str, Any]:
    token = s.session_token(user)
    csrf = secrets.token_urlsafe(32)
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_SECS, httponly=True, samesite="lax", path="/")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=SESSION_SECS, httponly=False, samesite="lax", path="/")
    return {"csrf_token": csrf, "user": user.view(), "token": token}


def _note(request: Request, user: Any) -> None:
    note = request.scope.get(AUDIT)
    if note is not None:
        note.update(actor=Actor(user.email, s_cap(user), user_id=user.id, via="session"), rid=user.id)


def s_cap(user: Any) -> Any:
    from zlayer.security.rbac import Level

    return Level.ADMIN if user.role == "admin" else Level.WRITE


@router.post("/auth/bootstrap", status_code=201, summary="Create the first admin (refused once an account exists).")
async def bootstrap(body: BootstrapRequest, request: Request, response: Response,
                    s: Security = Depends(sec)) -> dict[str, Any]:  # fmt: skip
    _limited(request, s)
    user = await asyncio.to_thread(s.bootstrap, body.email, body.password, body.display_name)
    _note(request, user)
    return _login_response(response, s, user)


@router.post("/auth/login", summary="Sign in with email and password (session cookie and a bearer token).")
async def login(body: LoginRequest, request: Request, response: Response, s: Security = Depends(sec)) -> dict[str, Any]:
    _limited(request, s)
    user = await asyncio.to_thread(s.login, body.email, body.password)
    _note(request, user)
    return _login_response(response, s, user)


@router.post("/auth/logout", status_code=204, summary="End the session: its token stops working, cookies cleared.")
async def logout(request: Request) -> Response:
    claims = request.scope.get(CLAIMS)
    s: Security | None = getattr(request.app.state, "security", None)
    if isinstance(claims, dict) and s is not None:
        s.logout(claims)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/auth/csrf", summary="The CSRF token cookie-authenticated writes must send as X-CSRF-Token.")
async def csrf(request: Request, response: Response) -> dict[str, str]:
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    response.set_cookie(CSRF_COOKIE, token, max_age=SESSION_SECS, httponly=False, samesite="lax", path="/")
    return {"csrf_token": token}


@router.post("/auth/token", summary="Exchange an API key and its secret (or an email and password) for a token.")
async def token(body: TokenRequest, request: Request, s: Security = Depends(sec)) -> dict[str, Any]:
    _limited(request, s)
    access, secs = await asyncio.to_thread(s.exchange, body.api_key, body.api_secret)
    return {"access_token": access, "token_type": "Bearer", "expires_in": secs}


@router.get("/auth/me", summary="The signed-in account.")
async def me(request: Request) -> dict[str, Any]:
    actor = actor_of(request)
    s: Security | None = getattr(request.app.state, "security", None)
    if actor.user_id and s is not None:
        return s.user(actor.user_id).view()
    return {"id": actor.name, "email": actor.name, "display_name": actor.name, "is_active": True,
            "role": "admin" if actor.admin else "user", "last_login_at": None, "roles": list(actor.roles)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- users
@router.get("/api/v1/users", summary="List accounts.")
async def list_users(s: Security = Depends(sec)) -> list[dict[str, Any]]:
    return [u.view() for u in s.store.list_users()]


@router.post("/api/v1/users", status_code=201, summary="Create an account.")
async def create_user(body: CreateUserRequest, s: Security = Depends(sec)) -> dict[str, Any]:
    user = await asyncio.to_thread(s.create_user, body.email, body.password, body.role, body.display_name)
    return user.view()


@router.get("/api/v1/users/{id}", summary="One account (by id or email).")
async def get_user(id: str, s: Security = Depends(sec)) -> dict[str, Any]:
    return s.user(id).view()


@router.patch("/api/v1/users/{id}", summary="Change an account's name, role or whether it is active.")
async def update_user(id: str, body: UpdateUserRequest, s: Security = Depends(sec)) -> dict[str, Any]:
    return s.update_user(id, display_name=body.display_name, is_active=body.is_active, role=body.role).view()


@router.delete("/api/v1/users/{id}", status_code=204, summary="Delete an account (its grants and keys go too).")
async def delete_user(id: str, s: Security = Depends(sec)) -> Response:
    s.delete_user(id)
    return Response(status_code=204)


@router.post("/api/v1/users/{id}/password", status_code=204, summary="Set a password (one's own, or as admin).")
async def set_password(id: str, body: SetPasswordRequest, request: Request, s: Security = Depends(sec)) -> Response:
    await asyncio.to_thread(s.set_password, actor_of(request), id, body.new_password, body.current_password)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------------- groups
def _group(s: Security, g: Group) -> dict[str, Any]:
    members = s.store.members().get(g.id, [])
    return {"id": g.id, "name": g.name, "description": g.description, "created_at": g.created_at,
            "updated_at": g.updated_at, "members": members}  # fmt: skip


@router.get("/api/v1/groups", summary="List groups.")
async def list_groups(s: Security = Depends(sec)) -> list[dict[str, Any]]:
    return [_group(s, g) for g in s.store.list_groups()]


@router.post("/api/v1/groups", status_code=201, summary="Create a group.")
async def create_group(body: GroupRequest, s: Security = Depends(sec)) -> dict[str, Any]:
    return _group(s, s.create_group(body.name or "", body.description))


@router.get("/api/v1/groups/{id}", summary="One group (by id or name).")
async def get_group(id: str, s: Security = Depends(sec)) -> dict[str, Any]:
    return _group(s, s.group(id))


@router.patch("/api/v1/groups/{id}", summary="Rename a group or change its description.")
async def update_group(id: str, body: GroupRequest, s: Security = Depends(sec)) -> dict[str, Any]:
    fields = {k: v for k, v in (("name", body.name), ("description", body.description)) if v is not None}
    g = s.group(id)
    return _group(s, s.store.update_group(g.id, **fields) if fields else g)


@router.delete("/api/v1/groups/{id}", status_code=204, summary="Delete a group (its grants go too).")
async def delete_group(id: str, s: Security = Depends(sec)) -> Response:
    s.delete_group(id)
    return Response(status_code=204)


@router.post("/api/v1/groups/{id}/members", status_code=204, summary="Add a user to a group.")
async def add_member(id: str, body: AddMemberRequest, s: Security = Depends(sec)) -> Response:
    s.add_member(id, body.user_id)
    return Response(status_code=204)


@router.delete("/api/v1/groups/{id}/members/{user_id}", status_code=204, summary="Remove a user from a group.")
async def remove_member(id: str, user_id: str, s: Security = Depends(sec)) -> Response:
    s.remove_member(id, user_id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------------- grants
def _grant(g: Grant) -> dict[str, Any]:
    return {"id": g.id, "subject_kind": g.subject_kind, "subject_id": g.subject_id, "resource_kind": g.resource_kind,
            "resource_id": g.resource_id, "level": g.level.word, "created_at": g.created_at}  # fmt: skip


@router.get("/api/v1/permissions", summary="Grants of a user (with its groups') or of a group; all without filter.")
async def list_permissions(user: str | None = None, group: str | None = None,
                           s: Security = Depends(sec)) -> list[dict[str, Any]]:  # fmt: skip
    return [_grant(g) for g in s.grants(user=user, group=group)]


@router.post("/api/v1/permissions", status_code=201, summary="Grant a level on a resource (or a kind's wildcard).")
async def grant(body: GrantPermissionRequest, s: Security = Depends(sec)) -> dict[str, Any]:
    return _grant(s.grant(body.subject_kind, body.subject_id, body.resource_kind, body.resource_id, body.level))


@router.get("/api/v1/permissions/by-resource", summary="Grants on one resource (and on its kind's wildcard).")
async def by_resource(kind: str, id: str | None = None, s: Security = Depends(sec)) -> list[dict[str, Any]]:
    return [_grant(g) for g in s.store.list_grants()
            if g.resource_kind == kind and (g.resource_id is None or id is None or g.resource_id == id)]  # fmt: skip


@router.delete("/api/v1/permissions/{id}", status_code=204, summary="Revoke a grant.")
async def revoke(id: str, s: Security = Depends(sec)) -> Response:
    s.revoke(id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------------- audit
@router.get("/api/v1/audit", summary="The audit log, newest first.")
async def audit(
    user: str | None = None,
    resource_kind: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    s: Security = Depends(sec),
) -> list[dict[str, Any]]:
    uid = None
    if user is not None:
        found = s.store.get_user(user) or s.store.user_by_email(user)
        uid = found.id if found else user
    return s.store.list_audit(user=uid, resource_kind=resource_kind, since=since, until=until, limit=limit)


# ---------------------------------------------------------------------------------------------------- API keys
def _key(k: ApiKey) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "owner_id": k.owner_id, "roles": list(k.roles), "expires_at": k.expires_at,
            "created_at": k.created_at}  # fmt: skip


@router.get("/api/v1/api-keys", summary="List API keys (never their secrets).")
async def list_keys(s: Security = Depends(sec)) -> list[dict[str, Any]]:
    return [_key(k) for k in s.store.list_keys()]


@router.post("/api/v1/api-keys", status_code=201, summary="Create an API key; its secret is shown this once.")
async def create_key(body: CreateKeyRequest, request: Request, s: Security = Depends(sec)) -> dict[str, Any]:
    actor = actor_of(request)
    owner = body.owner or actor.user_id
    if owner is None:
        from zlayer.errors import UsageError

        raise UsageError("name the key's owner (an account's id or email)", where="owner")
    key, secret = s.create_key(owner, body.name, body.roles, body.hours)
    return {**_key(key), "secret": secret}


@router.delete("/api/v1/api-keys/{id}", status_code=204, summary="Revoke an API key (its tokens stop working).")
async def delete_key(id: str, s: Security = Depends(sec)) -> Response:
    s.store.delete_key(id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------------- OIDC
def _oidc(s: Security) -> Any:
    if s.oidc is None:
        raise NotFoundError("no OIDC provider is configured", hint="ZLAYER_OIDC_<NAME>_ISSUER, _CLIENT_ID, ...")
    return s.oidc


@router.get("/auth/oidc/providers", summary="The OIDC providers this daemon signs in with.")
async def oidc_providers(request: Request) -> list[dict[str, str]]:
    s: Security | None = getattr(request.app.state, "security", None)
    oidc = getattr(s, "oidc", None)
    return [] if oidc is None else [{"name": p.name, "display_name": p.display_name} for p in oidc.providers.values()]


@router.get("/auth/oidc/{provider}/start", status_code=302, summary="Begin a sign-in: redirects to the provider.")
async def oidc_start(provider: str, s: Security = Depends(sec)) -> Response:
    url = await _oidc(s).start(provider)
    return Response(status_code=302, headers={"Location": url, "Cache-Control": "no-store"})


@router.get("/auth/oidc/{provider}/callback", summary="The provider's redirect back: signs in (session cookies).")
async def oidc_callback(provider: str, request: Request, response: Response, code: str = Query(max_length=4096),
                        state: str = Query(max_length=200), s: Security = Depends(sec)) -> dict[str, Any]:  # fmt: skip
    _limited(request, s)
    user = await _oidc(s).callback(provider, code, state)
    _note(request, user)
    return {**_login_response(response, s, user), "provider": provider}
