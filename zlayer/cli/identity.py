"""``zlayer auth``, ``user``, ``group``, ``permission`` and ``audit``: accounts, groups, grants and the audit log of
a daemon, over its API (ZLayer's commands and flags). ``auth login`` keeps the session's bearer token in
``~/.zlayer/session.json`` (0600); commands sent to a daemon over TCP (``--host``) use it when no ``--token`` is
given. Over the unix socket (root's) the caller is the node's admin, as in ZLayer."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from zlayer.cli.common import cli_ctx, output_option, print_data, print_table, run, warn_if_secret_in_argv
from zlayer.errors import UsageError


def session_file() -> Path:
    return Path(os.environ.get("ZLAYER_SESSION_FILE") or Path.home() / ".zlayer" / "session.json")


def _save_session(data: dict[str, Any]) -> Path:
    from zlayer.paths import private_dir, write_atomic

    path = session_file()
    private_dir(path.parent)
    write_atomic(path, json.dumps(data) + "\n")
    return path


def _password(given: str | None, env: str, *, confirm: bool = True, prompt: str = "Password") -> str:
    if given:
        warn_if_secret_in_argv("password", env)
        return given
    if os.environ.get(env):
        return os.environ[env]
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _show(data: Any, output: str, columns: list[str], rows: Callable[[Any], list[list[Any]]]) -> None:
    """A listing: whole values as json/yaml, else a table of ``rows(data)``."""
    if output != "table":
        print_data(data, output)
    else:
        print_table(columns, rows(data))


def _user_rows(users: list[dict[str, Any]]) -> list[list[Any]]:
    return [[u["id"], u["email"], u["display_name"], u["role"], "yes" if u["is_active"] else "no",
             u.get("last_login_at") or ""] for u in users]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- auth
@click.group("auth")
def auth() -> None:
    """Sign in to a daemon: bootstrap the first admin, log in and out, whoami."""


@auth.command("bootstrap")
@click.option(
    "--email", envvar="ZLAYER_BOOTSTRAP_EMAIL", required=True, help="The admin's email [env ZLAYER_BOOTSTRAP_EMAIL]."
)
@click.option("--password", help="[env ZLAYER_BOOTSTRAP_PASSWORD; prompted when neither is given]")
@click.option("--display-name", envvar="ZLAYER_BOOTSTRAP_DISPLAY_NAME", help="Shown name [default: the email's user].")
def bootstrap(email: str, password: str | None, display_name: str | None) -> None:
    """Create the first admin account (refused once any account exists) and sign in as it."""
    pw = _password(password, "ZLAYER_BOOTSTRAP_PASSWORD")
    body = {"email": email, "password": pw, "display_name": display_name}
    got = run(lambda c: c.request("POST", "/auth/bootstrap", json_body=body))
    path = _save_session({"host": cli_ctx().host, "email": email, "token": got["token"], "csrf": got["csrf_token"]})
    click.echo(f"Created admin {got['user']['email']} ({got['user']['id']}); session saved in {path}")


@auth.command("login")
@click.option("--email", required=True)
@click.option("--password", help="[env ZLAYER_PASSWORD; prompted when neither is given]")
def login(email: str, password: str | None) -> None:
    """Sign in with email and password; the session is kept in ~/.zlayer/session.json (0600)."""
    pw = _password(password, "ZLAYER_PASSWORD", confirm=False)
    got = run(lambda c: c.request("POST", "/auth/login", json_body={"email": email, "password": pw}))
    path = _save_session({"host": cli_ctx().host, "email": email, "token": got["token"], "csrf": got["csrf_token"]})
    click.echo(f"Logged in as {got['user']['email']} ({got['user']['role']}); session saved in {path}")


@auth.command("logout")
def logout() -> None:
    """End the saved session: the daemon stops taking its token, and the file is removed."""
    path = session_file()
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and isinstance(saved.get("token"), str):
        from zlayer.client import Client
        from zlayer.errors import ZLayerError

        c = cli_ctx()
        client = Client(socket=c.paths.socket, host=saved.get("host"), token=saved["token"],
                        data_dir=c.paths.data_dir, auto_start=False)  # fmt: skip

        async def go() -> None:
            try:
                await client.request("POST", "/auth/logout")
            except ZLayerError as e:  # the daemon is away: the file goes anyway, the token expires in a day
                click.echo(f"zlayer: warning: the daemon was not told: {e}", err=True)
            finally:
                await client.close()

        import asyncio

        asyncio.run(go())
    try:
        path.unlink()
    except FileNotFoundError:
        click.echo("not logged in")
        return
    click.echo(f"Logged out ({path} removed)")


@auth.command("whoami")
@output_option()
def whoami(output: str) -> None:
    """Who the daemon takes you for."""
    me = run(lambda c: c.request("GET", "/auth/me"))
    if output != "table":
        print_data(me, output)
        return
    click.echo(f"{me['email']} ({me['role']}) id {me['id']}")


# ---------------------------------------------------------------------------------------------------- users
@click.group("user")
def user() -> None:
    """Manage accounts (admin only)."""


@user.command("ls")
@output_option()
def user_ls(output: str) -> None:
    """List accounts."""
    users = run(lambda c: c.request("GET", "/api/v1/users"))
    _show(users, output, ["ID", "EMAIL", "NAME", "ROLE", "ACTIVE", "LAST LOGIN"], _user_rows)


user.add_command(user_ls, "list")


@user.command("create")
@click.option("--email", required=True)
@click.option("--password", help="[env ZLAYER_PASSWORD; prompted when neither is given]")
@click.option("--role", type=click.Choice(["admin", "user"]), default="user", show_default=True)
@click.option("--display-name")
def user_create(email: str, password: str | None, role: str, display_name: str | None) -> None:
    """Create an account."""
    pw = _password(password, "ZLAYER_PASSWORD")
    body = {"email": email, "password": pw, "role": role, "display_name": display_name}
    got = run(lambda c: c.request("POST", "/api/v1/users", json_body=body))
    click.echo(f"Created user {got['email']} ({got['role']}) id {got['id']}")


@user.command("set-role")
@click.argument("id")
@click.option("--role", type=click.Choice(["admin", "user"]), required=True)
def user_set_role(id: str, role: str) -> None:
    """Change an account's role."""
    got = run(lambda c: c.request("PATCH", f"/api/v1/users/{id}", json_body={"role": role}))
    click.echo(f"{got['email']} is now {got['role']}")


@user.command("set-password")
@click.argument("id", required=False)
@click.option("--email", help="The account, by email (in place of ID).")
@click.option("--password", help="The new password [env ZLAYER_PASSWORD].")
@click.option("--password-file", type=click.Path(dir_okay=False), help="Read the new password from a file.")
@click.option("--random", "random_", is_flag=True, help="Generate one and print it.")
@click.option("--no-confirm", is_flag=True, help="Do not ask for the password twice.")
@click.option("--current-password", help="Your current password (changing your own, not as admin).")
def user_set_password(id: str | None, email: str | None, password: str | None, password_file: str | None,
                      random_: bool, no_confirm: bool, current_password: str | None) -> None:  # fmt: skip
    """Set an account's password."""
    ref = id or email
    if not ref:
        raise UsageError("name the account: ID or --email", where="ID")
    if sum(bool(x) for x in (password, password_file, random_)) > 1:
        raise UsageError("give one of --password, --password-file, --random", where="--password")
    if random_:
        pw = secrets.token_urlsafe(18)
    elif password_file:
        pw = Path(password_file).read_text().rstrip("\n")
    else:
        pw = _password(password, "ZLAYER_PASSWORD", confirm=not no_confirm, prompt="New password")
    body = {"new_password": pw, "current_password": current_password}
    run(lambda c: c.request("POST", f"/api/v1/users/{ref}/password", json_body=body))
    click.echo(f"Password set for {ref}" + (f": {pw}" if random_ else ""))


@user.command("delete")
@click.argument("id")
def user_delete(id: str) -> None:
    """Delete an account (its grants and API keys go too)."""
    run(lambda c: c.request("DELETE", f"/api/v1/users/{id}"))
    click.echo(f"Deleted user {id}")


# ---------------------------------------------------------------------------------------------------- groups
@click.group("group")
def group() -> None:
    """Manage groups of accounts (admin only)."""


@group.command("list")
@output_option()
def group_list(output: str) -> None:
    """List groups and their members."""
    groups = run(lambda c: c.request("GET", "/api/v1/groups"))
    _show(
        groups,
        output,
        ["ID", "NAME", "MEMBERS", "DESCRIPTION"],
        lambda gs: [[g["id"], g["name"], len(g.get("members") or []), g.get("description") or ""] for g in gs],
    )


group.add_command(group_list, "ls")


@group.command("create")
@click.option("--name", required=True)
@click.option("--description")
def group_create(name: str, description: str | None) -> None:
    """Create a group."""
    got = run(lambda c: c.request("POST", "/api/v1/groups", json_body={"name": name, "description": description}))
    click.echo(f"Created group {got['name']} id {got['id']}")


@group.command("delete")
@click.argument("id")
def group_delete(id: str) -> None:
    """Delete a group (its grants go too)."""
    run(lambda c: c.request("DELETE", f"/api/v1/groups/{id}"))
    click.echo(f"Deleted group {id}")


@group.group("member")
def member() -> None:
    """Add users to groups and remove them."""


@member.command("add")
@click.option("--group", "group_ref", required=True, help="Group id or name.")
@click.option("--user", "user_ref", required=True, help="User id or email.")
def member_add(group_ref: str, user_ref: str) -> None:
    run(lambda c: c.request("POST", f"/api/v1/groups/{group_ref}/members", json_body={"user_id": user_ref}))
    click.echo(f"Added {user_ref} to {group_ref}")


@member.command("remove")
@click.option("--group", "group_ref", required=True, help="Group id or name.")
@click.option("--user", "user_ref", required=True, help="User id or email.")
def member_remove(group_ref: str, user_ref: str) -> None:
    run(lambda c: c.request("DELETE", f"/api/v1/groups/{group_ref}/members/{user_ref}"))
    click.echo(f"Removed {user_ref} from {group_ref}")


# ---------------------------------------------------------------------------------------------------- grants
@click.group("permission")
def permission() -> None:
    """Grant levels (read, execute, write) on resources to users and groups (admin only)."""


@permission.command("list")
@click.option("--user", "user_ref", help="A user's grants, with its groups'.")
@click.option("--group", "group_ref", help="A group's grants.")
@output_option()
def permission_list(user_ref: str | None, group_ref: str | None, output: str) -> None:
    params = {"user": user_ref, "group": group_ref}
    grants = run(lambda c: c.request("GET", "/api/v1/permissions", params=params))
    _show(
        grants,
        output,
        ["ID", "SUBJECT", "RESOURCE", "LEVEL", "CREATED"],
        lambda gs: [
            [
                g["id"],
                f"{g['subject_kind']}:{g['subject_id']}",
                f"{g['resource_kind']}:{g['resource_id'] or '*'}",
                g["level"],
                g["created_at"],
            ]
            for g in gs
        ],
    )


permission.add_command(permission_list, "ls")


@permission.command("grant")
@click.option("--subject-kind", type=click.Choice(["user", "group"]), required=True)
@click.option("--subject", required=True, help="User id or email, group id or name.")
@click.option("--resource-kind", type=click.Choice(["deployment", "environment", "project", "secret", "node"]),
              required=True)  # fmt: skip
@click.option("--resource", help="The resource's id [default: every resource of the kind].")
@click.option("--level", type=click.Choice(["read", "execute", "write"]), required=True)
def permission_grant(subject_kind: str, subject: str, resource_kind: str, resource: str | None, level: str) -> None:
    body = {"subject_kind": subject_kind, "subject_id": subject, "resource_kind": resource_kind,
            "resource_id": resource, "level": level}  # fmt: skip
    got = run(lambda c: c.request("POST", "/api/v1/permissions", json_body=body))
    click.echo(f"Granted {level} on {resource_kind}:{resource or '*'} to {subject_kind} {subject} (id {got['id']})")


@permission.command("revoke")
@click.argument("id")
def permission_revoke(id: str) -> None:
    run(lambda c: c.request("DELETE", f"/api/v1/permissions/{id}"))
    click.echo(f"Revoked {id}")


# ---------------------------------------------------------------------------------------------------- audit
@click.group("audit")
def audit() -> None:
    """The daemon's audit log (admin only)."""


@audit.command("tail")
@click.option("--user", "user_ref", help="Only this user's entries (id or email).")
@click.option("--resource", help="Only this resource kind (deployments, secrets, deployment, ...).")
@click.option("--since", help="RFC 3339 time: entries at or after it.")
@click.option("--until", help="RFC 3339 time: entries at or before it.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@output_option()
def audit_tail(user_ref: str | None, resource: str | None, since: str | None, until: str | None, limit: int,
               output: str) -> None:  # fmt: skip
    """The latest entries, oldest first: who did what to which resource, from where, when."""
    params = {"user": user_ref, "resource_kind": resource, "since": since, "until": until, "limit": limit}
    entries = list(reversed(run(lambda c: c.request("GET", "/api/v1/audit", params=params))))
    _show(
        entries,
        output,
        ["TIME", "USER", "ACTION", "RESOURCE", "FROM", "DETAILS"],
        lambda es: [
            [
                e["created_at"],
                e["user_id"],
                e["action"],
                f"{e['resource_kind']}:{e.get('resource_id') or ''}",
                e.get("ip") or "",
                json.dumps(e["details"]) if e.get("details") else "",
            ]
            for e in es
        ],
    )
