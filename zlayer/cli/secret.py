"""``zlayer secret``, ``env``, ``variable`` and ``run``: ZLayer's secrets commands over the daemon's API. Values go
to the daemon in the request body (never on a command line it logs), are sealed there, and come back only with
``secret get --reveal``, ``secret export`` and ``run``/``env run`` (which put them in a local command's
environment)."""

from __future__ import annotations

import json
import os
import secrets as _random
import sys
from collections.abc import Callable
from typing import Any

import click

from zlayer.cli.common import output_option, print_data, print_table, run, warn_if_secret_in_argv
from zlayer.errors import UsageError


def _q(env: str | None, project: str | None) -> dict[str, Any]:
    return {"environment": env, "project": project}


def value_source(f: Callable[..., Any]) -> Callable[..., Any]:
    """ZLayer's value flags: exactly one of --value, --from-stdin, --from-file, --random [--random-length]."""
    for opt in reversed([
        click.option("--value", help="The value (visible in ps: prefer --from-stdin or --from-file)."),
        click.option("--from-stdin", is_flag=True, help="Read the value from standard input."),
        click.option("--from-file", type=click.Path(dir_okay=False), help="Read the value from a file."),
        click.option("--random", "random_", is_flag=True, help="Generate a random value."),
        click.option("--random-length", default=32, show_default=True, type=click.IntRange(8, 4096)),
    ]):  # fmt: skip
        f = opt(f)
    return f


def _value(value: str | None, from_stdin: bool, from_file: str | None, random_: bool, random_length: int) -> str:
    given = [x for x in (value is not None, from_stdin, from_file is not None, random_) if x]
    if len(given) != 1:
        raise UsageError("give exactly one of --value, --from-stdin, --from-file, --random", where="--value")
    if value is not None:
        warn_if_secret_in_argv("value", "--from-stdin")
        return value
    if from_stdin:
        return sys.stdin.read().rstrip("\n")
    if from_file is not None:
        with open(from_file) as f:
            return f.read().rstrip("\n")
    return _random.token_urlsafe(random_length)[:random_length]


def _env_option(required: bool = False) -> Callable[[Any], Any]:
    return click.option("--env", "env", required=required, help="Environment (name or id).")


def _project_option() -> Callable[[Any], Any]:
    return click.option("--project", help="The environment's project.")


@click.group("secret")
def secret() -> None:
    """Encrypted secrets: create, read, rotate, import and export, and who may use them."""


@secret.command("ls")
@_env_option()
@_project_option()
@output_option()
def secret_ls(env: str | None, project: str | None, output: str) -> None:
    """List secrets (names and versions; never values)."""
    rows = run(lambda c: c.request("GET", "/api/v1/secrets", params=_q(env, project)))
    if output != "table":
        print_data(rows, output)
        return
    print_table(["NAME", "VERSION", "UPDATED"], [[r["name"], r["version"], r["updated_at"]] for r in rows])


secret.add_command(secret_ls, "list")


def _put(name: str, value: str, env: str | None, project: str | None) -> dict[str, Any]:
    body = {"name": name, "value": value}
    got: dict[str, Any] = run(lambda c: c.request("POST", "/api/v1/secrets", json_body=body, params=_q(env, project)))
    return got


@secret.command("create")
@click.argument("name")
@value_source
@_env_option()
@_project_option()
def secret_create(name: str, env: str | None, project: str | None, **source: Any) -> None:
    """Create a secret (or store a new version of it)."""
    got = _put(name, _value(**source), env, project)
    click.echo(f"Secret {name} stored (version {got['version']})")


@secret.command("set")
@click.argument("name")
@value_source
@_env_option(required=True)
@_project_option()
def secret_set(name: str, env: str, project: str | None, **source: Any) -> None:
    """Set a secret of an environment."""
    got = _put(name, _value(**source), env, project)
    click.echo(f"Secret {name} set in {env} (version {got['version']})")


@secret.command("rotate")
@click.argument("name")
@value_source
@_env_option(required=True)
@_project_option()
def secret_rotate(name: str, env: str, project: str | None, **source: Any) -> None:
    """Store a new version of an existing secret (the previous ones are kept); redeploy to roll replicas."""
    body = {"value": _value(**source)}
    got = run(lambda c: c.request("POST", f"/api/v1/secrets/{name}/rotate", json_body=body, params=_q(env, project)))
    click.echo(f"Secret {name} rotated: version {got['previous_version']} -> {got['new_version']}")


@secret.command("get")
@click.argument("name")
@_env_option()
@_project_option()
@click.option("--reveal", is_flag=True, help="Print the value too.")
@output_option()
def secret_get(name: str, env: str | None, project: str | None, reveal: bool, output: str) -> None:
    """A secret's metadata (and value with --reveal)."""
    params = {**_q(env, project), "reveal": reveal}
    got = run(lambda c: c.request("GET", f"/api/v1/secrets/{name}", params=params))
    if output != "table":
        print_data(got, output)
        return
    click.echo(f"{got['name']}  version {got['version']}" + (f"\n{got['value']}" if reveal else ""))


@secret.command("rm")
@click.argument("name")
@_env_option()
@_project_option()
def secret_rm(name: str, env: str | None, project: str | None) -> None:
    """Delete a secret with all its versions."""
    run(lambda c: c.request("DELETE", f"/api/v1/secrets/{name}", params=_q(env, project)))
    click.echo(f"Secret {name} deleted")


secret.add_command(secret_rm, "remove")


@secret.command("unset")
@click.argument("name")
@_env_option(required=True)
@_project_option()
def secret_unset(name: str, env: str, project: str | None) -> None:
    """Delete a secret of an environment."""
    run(lambda c: c.request("DELETE", f"/api/v1/secrets/{name}", params=_q(env, project)))
    click.echo(f"Secret {name} removed from {env}")


@secret.command("import")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False, exists=True), help="A .env file.")
@_env_option(required=True)
@_project_option()
def secret_import(path: str, env: str, project: str | None) -> None:
    """Import NAME=value lines into an environment."""
    with open(path) as f:
        text = f.read()

    got = run(lambda c: c.request("POST", "/api/v1/secrets/bulk-import", json_body=text, params=_q(env, project)))
    click.echo(f"Imported into {env}: {got['created']} created, {got['updated']} updated")
    for err in got["errors"]:
        click.echo(f"  {path}: {err}", err=True)
    if got["errors"]:
        raise SystemExit(1)


def _reveal_all(env: str, project: str | None) -> dict[str, str]:
    got = run(lambda c: c.request("GET", "/api/v1/secrets/reveal-all", params=_q(env, project)))
    return dict(got["secrets"])


@secret.command("export")
@_env_option(required=True)
@_project_option()
@click.option("--format", "fmt", type=click.Choice(["env", "json"]), default="env", show_default=True)
def secret_export(env: str, project: str | None, fmt: str) -> None:
    """Print an environment's secrets (values in plain text)."""
    values = _reveal_all(env, project)
    if fmt == "json":
        click.echo(json.dumps(values, indent=2))
        return
    plain = set(" #\"'\\\n$")
    for k, v in values.items():
        click.echo(f"{k}={json.dumps(v) if plain & set(v) else v}")


def _env_id(env: str, project: str | None) -> str:
    got = run(lambda c: c.request("GET", f"/api/v1/environments/{env}", params={"project": project}))
    return str(got["id"])


@secret.command("grant")
@click.argument("user")
@click.argument("env")
@click.argument("level", type=click.Choice(["read", "execute", "write"]))
@_project_option()
def secret_grant(user: str, env: str, level: str, project: str | None) -> None:
    """Let USER read (names), execute (use, reveal) or write an environment's secrets."""
    body = {"subject_kind": "user", "subject_id": user, "resource_kind": "environment",
            "resource_id": _env_id(env, project), "level": level}  # fmt: skip
    run(lambda c: c.request("POST", "/api/v1/permissions", json_body=body))
    click.echo(f"Granted {level} on environment {env} to {user}")


@secret.command("revoke")
@click.argument("user")
@click.argument("env")
@_project_option()
def secret_revoke(user: str, env: str, project: str | None) -> None:
    """Remove USER's grants on an environment."""
    env_id = _env_id(env, project)

    async def go(c: Any) -> int:
        who = await c.request("GET", f"/api/v1/users/{user}")
        grants = await c.request("GET", "/api/v1/permissions", params={"user": user})
        mine = [g for g in grants if g["subject_kind"] == "user" and g["subject_id"] == who["id"]
                and g["resource_kind"] == "environment" and g["resource_id"] == env_id]  # fmt: skip
        for g in mine:
            await c.request("DELETE", f"/api/v1/permissions/{g['id']}")
        return len(mine)

    click.echo(f"Revoked {run(go)} grant(s) of {user} on environment {env}")


@secret.command("permissions")
@click.argument("env")
@_project_option()
@output_option()
def secret_permissions(env: str, project: str | None, output: str) -> None:
    """Who may do what with an environment's secrets."""
    env_id = _env_id(env, project)
    params = {"kind": "environment", "id": env_id}
    grants = run(lambda c: c.request("GET", "/api/v1/permissions/by-resource", params=params))
    if output != "table":
        print_data(grants, output)
        return
    print_table(["SUBJECT", "LEVEL", "RESOURCE"], [[f"{g['subject_kind']}:{g['subject_id']}", g["level"],
                                                    g["resource_id"] or "*"] for g in grants])  # fmt: skip


# ---------------------------------------------------------------------------------------------------- environments
@click.group("env")
def env() -> None:
    """Environments: named sets of secrets (dev, staging, prod), optionally per project."""


@env.command("ls")
@_project_option()
@output_option()
def env_ls(project: str | None, output: str) -> None:
    rows = run(lambda c: c.request("GET", "/api/v1/environments", params={"project": project}))
    if output != "table":
        print_data(rows, output)
        return
    rows_ = [[e["id"], e["name"], e.get("project_id") or "", e.get("description") or ""] for e in rows]
    print_table(["ID", "NAME", "PROJECT", "DESCRIPTION"], rows_)


@env.command("create")
@click.argument("name")
@_project_option()
@click.option("--description")
def env_create(name: str, project: str | None, description: str | None) -> None:
    body = {"name": name, "project_id": project, "description": description}
    got = run(lambda c: c.request("POST", "/api/v1/environments", json_body=body))
    click.echo(f"Created environment {got['name']} id {got['id']}")


@env.command("show")
@click.argument("name")
@_project_option()
@output_option()
def env_show(name: str, project: str | None, output: str) -> None:
    got = run(lambda c: c.request("GET", f"/api/v1/environments/{name}", params={"project": project}))
    print_data(got, "json" if output == "table" else output)


@env.command("update")
@click.argument("name")
@_project_option()
@click.option("--name", "new_name", help="A new name.")
@click.option("--description")
def env_update(name: str, project: str | None, new_name: str | None, description: str | None) -> None:
    body = {"name": new_name, "description": description}
    run(lambda c: c.request("PATCH", f"/api/v1/environments/{name}", json_body=body, params={"project": project}))
    click.echo(f"Updated environment {new_name or name}")


@env.command("delete")
@click.argument("name")
@_project_option()
def env_delete(name: str, project: str | None) -> None:
    run(lambda c: c.request("DELETE", f"/api/v1/environments/{name}", params={"project": project}))
    click.echo(f"Deleted environment {name} and its secrets")


def run_with_secrets(envs: list[str], project: str | None, include_global: bool, dry_run: bool, unmask: bool,
                     command: tuple[str, ...]) -> None:  # fmt: skip
    """Run ``command`` here with the secrets of the global scope (unless not wanted) and of ``envs`` (later ones
    win) added to this environment."""
    if not command and not dry_run:
        raise UsageError("give the command after --, e.g. zlayer run --env dev -- ./server", where="CMD")

    async def go(c: Any) -> dict[str, str]:
        values: dict[str, str] = {}
        if include_global:
            for meta in await c.request("GET", "/api/v1/secrets"):
                got = await c.request("GET", f"/api/v1/secrets/{meta['name']}", params={"reveal": True})
                values[meta["name"]] = got["value"]
        for e in envs:
            got = await c.request("GET", "/api/v1/secrets/reveal-all", params=_q(e, project))
            values.update(got["secrets"])
        return values

    values = run(go)
    if dry_run:
        for k, v in sorted(values.items()):
            click.echo(f"{k}={v if unmask else '*' * 8}")
        return
    try:
        os.execvpe(command[0], list(command), {**os.environ, **values})
    except OSError as e:
        raise UsageError(f"{command[0]}: {e.strerror}", where="CMD") from e


_RUN_OPTIONS = [
    click.option("--project", help="The environments' project."),
    click.option("--no-global", is_flag=True, help="Leave out the global secrets."),
    click.option("--merge", multiple=True, help="Another environment whose secrets come in first (repeatable)."),
    click.option("--dry-run", is_flag=True, help="Print the names that would be set (values masked)."),
    click.option("--unmask", is_flag=True, help="With --dry-run: print the values too."),
    click.argument("command", nargs=-1, type=click.UNPROCESSED),
]


@env.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("name")
def env_run(name: str, project: str | None, no_global: bool, merge: tuple[str, ...], dry_run: bool, unmask: bool,
            command: tuple[str, ...]) -> None:  # fmt: skip
    """Run a local command with an environment's secrets as environment variables: env run ENV -- CMD."""
    run_with_secrets([*merge, name], project, not no_global, dry_run, unmask, command)


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--env", "env_name", help="The environment whose secrets to add.")
def run_cmd(env_name: str | None, project: str | None, no_global: bool, merge: tuple[str, ...], dry_run: bool,
            unmask: bool, command: tuple[str, ...]) -> None:  # fmt: skip
    """Run a local command with secrets as environment variables: zlayer run [--env E] -- CMD."""
    run_with_secrets([*merge, *([env_name] if env_name else [])], project, not no_global, dry_run, unmask, command)


for _opt in reversed(_RUN_OPTIONS):
    env_run = _opt(env_run)
    run_cmd = _opt(run_cmd)


# ---------------------------------------------------------------------------------------------------- variables
@click.group("variable")
def variable() -> None:
    """Plain (unencrypted) variables, per scope."""


@variable.command("list")
@click.option("--scope")
@output_option()
def variable_list(scope: str | None, output: str) -> None:
    rows = run(lambda c: c.request("GET", "/api/v1/variables", params={"scope": scope}))
    if output != "table":
        print_data(rows, output)
        return
    print_table(["NAME", "VALUE", "SCOPE"], [[v["name"], v["value"], v.get("scope") or ""] for v in rows])


variable.add_command(variable_list, "ls")


@variable.command("set")
@click.argument("name")
@click.argument("value")
@click.option("--scope")
def variable_set(name: str, value: str, scope: str | None) -> None:
    async def go(c: Any) -> None:
        from zlayer.errors import NotFoundError

        try:
            await c.request("PATCH", f"/api/v1/variables/{name}", json_body={"value": value}, params={"scope": scope})
        except NotFoundError:
            await c.request("POST", "/api/v1/variables", json_body={"name": name, "value": value, "scope": scope})

    run(go)
    click.echo(f"{name} set")


@variable.command("get")
@click.argument("name")
@click.option("--scope")
def variable_get(name: str, scope: str | None) -> None:
    got = run(lambda c: c.request("GET", f"/api/v1/variables/{name}", params={"scope": scope}))
    click.echo(got["value"])


@variable.command("unset")
@click.argument("name")
@click.option("--scope")
def variable_unset(name: str, scope: str | None) -> None:
    run(lambda c: c.request("DELETE", f"/api/v1/variables/{name}", params={"scope": scope}))
    click.echo(f"{name} unset")
