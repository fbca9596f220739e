"""ZLayer's ``/api/v1/secrets``, ``/environments`` and ``/variables``. Values are sealed at rest
(:mod:`zlayer.security.secrets`) and leave only through ``GET /secrets/{name}?reveal=true`` and
``GET /secrets/reveal-all``; listings carry names, versions and times, never values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, Field

from zlayer.errors import DaemonError, NotFoundError, UsageError
from zlayer.security.secrets import Secrets, parse_dotenv
from zlayer.security.store import Environment, SecretVersion, Variable, new_id, now

router = APIRouter(tags=["Secrets"])


async def secrets_of(request: Request) -> Secrets:
    security = getattr(request.app.state, "security", None)
    got: Secrets | None = getattr(security, "secrets", None)
    if got is None:
        raise DaemonError("this daemon has no secrets store")
    await got.refresh()  # in a cluster: what every node wrote, as etcd has it now
    return got


class CreateSecretRequest(BaseModel):
    name: str = Field(max_length=128)
    value: str = Field(max_length=65536)
    scope: str | None = Field(default=None, max_length=200)


class RotateSecretRequest(BaseModel):
    value: str = Field(max_length=65536)


class EnvironmentRequest(BaseModel):
    name: str | None = Field(default=None, max_length=128)
    description: str | None = Field(default=None, max_length=1000)
    project_id: str | None = Field(default=None, max_length=200)


class VariableRequest(BaseModel):
    name: str | None = Field(default=None, max_length=128)
    value: str | None = Field(default=None, max_length=65536)
    scope: str | None = Field(default=None, max_length=200)


def _epoch(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def _meta(row: SecretVersion, value: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": row.name, "version": row.version, "created_at": _epoch(row.first_created_at),
                           "updated_at": _epoch(row.created_at)}  # fmt: skip
    if value is not None:
        out["value"] = value
    return out


def _scope(s: Secrets, environment: str | None, scope: str | None, project: str | None = None) -> str:
    return s.scope_of(environment, project, scope)


# ---------------------------------------------------------------------------------------------------- secrets
@router.get("/api/v1/secrets", summary="List secrets of a scope (names, versions, times: never values).")
async def list_secrets(environment: str | None = None, scope: str | None = None, project: str | None = None,
                       s: Secrets = Depends(secrets_of)) -> list[dict[str, Any]]:  # fmt: skip
    return [_meta(r) for r in s.latest(_scope(s, environment, scope, project))]


@router.post("/api/v1/secrets", status_code=201, summary="Create a secret, or store a new version of one.")
async def create_secret(body: CreateSecretRequest, response: Response, environment: str | None = None,
                        scope: str | None = None, project: str | None = None,
                        s: Secrets = Depends(secrets_of)) -> dict[str, Any]:  # fmt: skip
    row, before = await s.aput(_scope(s, environment, body.scope or scope, project), body.name, body.value)
    if before is not None:
        response.status_code = 200
    return _meta(row)


@router.post("/api/v1/secrets/bulk-import", summary="Import NAME=value lines (a .env file) into an environment.")
async def bulk_import(environment: str, text: str = Body(media_type="text/plain", max_length=1 << 20),
                      project: str | None = None, s: Secrets = Depends(secrets_of)) -> dict[str, Any]:  # fmt: skip
    scope = _scope(s, environment, None, project)
    values, errors = parse_dotenv(text)
    created = updated = 0
    for name, value in values.items():
        try:
            _, before = await s.aput(scope, name, value)
        except UsageError as e:
            errors.append(f"{name}: {e.message}")
            continue
        created, updated = (created + 1, updated) if before is None else (created, updated + 1)
    return {"created": created, "updated": updated, "errors": errors}


@router.get("/api/v1/secrets/reveal-all", summary="Every secret of an environment, in plain text (zlayer run).")
async def reveal_all(environment: str, project: str | None = None,
                     s: Secrets = Depends(secrets_of)) -> dict[str, Any]:  # fmt: skip
    scope = _scope(s, environment, None, project)
    return {"environment": scope, "secrets": {r.name: s.reveal(r) for r in s.latest(scope)}}


@router.get("/api/v1/secrets/{name}", summary="A secret's metadata; its value with reveal=true.")
async def get_secret(name: str, environment: str | None = None, scope: str | None = None, reveal: bool = False,
                     project: str | None = None, s: Secrets = Depends(secrets_of)) -> dict[str, Any]:  # fmt: skip
    row = s.get(_scope(s, environment, scope, project), name)
    return _meta(row, s.reveal(row) if reveal else None)


@router.delete("/api/v1/secrets/{name}", status_code=204, summary="Delete a secret with every version.")
async def delete_secret(name: str, environment: str | None = None, scope: str | None = None,
                        project: str | None = None, s: Secrets = Depends(secrets_of)) -> Response:  # fmt: skip
    scope_id = _scope(s, environment, scope, project)
    if not await s.adelete(scope_id, name):
        raise NotFoundError(f"secret {name!r} not found in scope {scope_id!r}", where=f"secrets/{name}")
    return Response(status_code=204)


@router.post("/api/v1/secrets/{name}/rotate", summary="Store a new version of a secret (the old ones are kept).")
async def rotate_secret(name: str, body: RotateSecretRequest, environment: str | None = None,
                        scope: str | None = None, project: str | None = None,
                        s: Secrets = Depends(secrets_of)) -> dict[str, Any]:  # fmt: skip
    row, before = await s.aput(_scope(s, environment, scope, project), name, body.value, rotate=True)
    return {"name": name, "new_version": row.version, "previous_version": before}


# ---------------------------------------------------------------------------------------------------- environments
def _env(e: Environment) -> dict[str, Any]:
    return {"id": e.id, "name": e.name, "project_id": e.project_id, "description": e.description,
            "created_at": e.created_at, "updated_at": e.updated_at}  # fmt: skip


@router.get("/api/v1/environments", summary="List environments (of a project, or of none).")
async def list_environments(project: str | None = None, s: Secrets = Depends(secrets_of)) -> list[dict[str, Any]]:
    return [_env(e) for e in s.environments() if project is None or e.project_id == project]


@router.post("/api/v1/environments", status_code=201, summary="Create an environment.")
async def create_environment(body: EnvironmentRequest, s: Secrets = Depends(secrets_of)) -> dict[str, Any]:
    if not body.name:
        raise UsageError("an environment needs a name", where="name")
    return _env(await s.acreate_environment(body.name, body.project_id, body.description))


@router.get("/api/v1/environments/{id}", summary="One environment (by id, or by name).")
async def get_environment(id: str, project: str | None = None, s: Secrets = Depends(secrets_of)) -> dict[str, Any]:
    return _env(s.environment(id, project))


@router.patch("/api/v1/environments/{id}", summary="Rename an environment or change its description.")
async def update_environment(id: str, body: EnvironmentRequest, project: str | None = None,
                             s: Secrets = Depends(secrets_of)) -> dict[str, Any]:  # fmt: skip
    env = s.environment(id, project)
    fields = {k: v for k, v in (("name", body.name), ("description", body.description)) if v is not None}
    return _env(await s.update_environment(env.id, **fields) if fields else env)


@router.delete("/api/v1/environments/{id}", status_code=204, summary="Delete an environment and its secrets.")
async def delete_environment(id: str, project: str | None = None, s: Secrets = Depends(secrets_of)) -> Response:
    await s.delete_environment(s.environment(id, project).id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------------- variables
def _var(v: Variable) -> dict[str, Any]:
    return {"id": v.id, "name": v.name, "value": v.value, "scope": v.scope, "created_at": v.created_at,
            "updated_at": v.updated_at}  # fmt: skip


def _variable(s: Secrets, ref: str, scope: str | None = None) -> Variable:
    for v in s.store.list_variables():
        if v.id == ref or (v.name == ref and v.scope == scope):
            return v
    raise NotFoundError(f"variable {ref!r} not found", where=f"variables/{ref}")


@router.get("/api/v1/variables", summary="List plain (unencrypted) variables of a scope, or all.")
async def list_variables(scope: str | None = None, s: Secrets = Depends(secrets_of)) -> list[dict[str, Any]]:
    return [_var(v) for v in s.store.list_variables() if scope is None or v.scope == scope]


@router.post("/api/v1/variables", status_code=201, summary="Create a variable.")
async def create_variable(body: VariableRequest, s: Secrets = Depends(secrets_of)) -> dict[str, Any]:
    if not body.name or body.value is None:
        raise UsageError("a variable needs a name and a value", where="name" if not body.name else "value")
    if any(v.name == body.name and v.scope == body.scope for v in s.store.list_variables()):
        from zlayer.errors import ConflictError

        raise ConflictError(f"variable {body.name!r} already exists", where="name", hint="PATCH it instead")
    t = now()
    var = Variable(new_id(), body.name, body.value, body.scope, t, t)
    s.store.put_variable(var)
    return _var(var)


@router.get("/api/v1/variables/{id}", summary="One variable (by id, or by name).")
async def get_variable(id: str, scope: str | None = None, s: Secrets = Depends(secrets_of)) -> dict[str, Any]:
    return _var(_variable(s, id, scope))


@router.patch("/api/v1/variables/{id}", summary="Change a variable's name or value.")
async def update_variable(id: str, body: VariableRequest, scope: str | None = None,
                          s: Secrets = Depends(secrets_of)) -> dict[str, Any]:  # fmt: skip
    v = _variable(s, id, scope)
    var = Variable(v.id, body.name or v.name, v.value if body.value is None else body.value, v.scope, v.created_at,
                   now())  # fmt: skip
    s.store.put_variable(var)
    return _var(var)


@router.delete("/api/v1/variables/{id}", status_code=204, summary="Delete a variable.")
async def delete_variable(id: str, scope: str | None = None, s: Secrets = Depends(secrets_of)) -> Response:
    s.store.delete_variable(_variable(s, id, scope).id)
    return Response(status_code=204)
