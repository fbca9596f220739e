"""``zlayer token``: mint and read API bearer tokens locally (HS256 JWTs signed with the node's secret)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import click

from zlayer.cli.common import cli_ctx, output_option, print_data, warn_if_secret_in_argv
from zlayer.errors import UsageError


def _secret(given: str | None) -> str:
    if given:
        return given
    env = os.environ.get("ZLAYER_JWT_SECRET")
    if env:
        return env
    from zlayer.tokens import SECRET_FILE

    path = cli_ctx().paths.data_dir / SECRET_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except PermissionError as e:
        raise UsageError(f"cannot read the node's secret {path}: permission denied", where=str(path),
                         hint="run as root, or pass --secret / ZLAYER_JWT_SECRET") from e  # fmt: skip
    if not text:
        raise UsageError(f"no signing secret: {path} does not exist", where=str(path),
                         hint="start the daemon once (zlayer serve), or pass --secret / ZLAYER_JWT_SECRET")  # fmt: skip
    return text


@click.group("token")
def token() -> None:
    """Create and inspect API bearer tokens."""


@token.command("create")
@click.option("-s", "--subject", default="dev", show_default=True, help="Who the token is for (sub claim).")
@click.option("--secret", help="Signing secret [default: ZLAYER_JWT_SECRET, else the node's DATA/jwt_secret].")
@click.option("-H", "--hours", default=24, show_default=True, type=int, help="Lifetime in hours.")
@click.option("-r", "--roles", default="admin", show_default=True, help="Comma-separated roles.")
@click.option("--quiet", is_flag=True, help="Print only the token.")
def create(subject: str, secret: str | None, hours: int, roles: str, quiet: bool) -> None:
    """Mint a token the daemon's TCP API accepts (Authorization: Bearer TOKEN)."""
    from zlayer.tokens import create_token

    if secret:
        warn_if_secret_in_argv("secret", "ZLAYER_JWT_SECRET")
    if hours <= 0:
        raise UsageError("--hours must be positive", where="--hours")
    tok = create_token(_secret(secret), subject, hours * 3600, [r.strip() for r in roles.split(",") if r.strip()])
    if quiet:
        click.echo(tok)
        return
    click.echo(f"Token for {subject} (roles {roles}, valid {hours} h):")
    click.echo(tok)


@token.command("decode")
@click.argument("value")
@click.option("--json", "as_json", is_flag=True, help="Print the claims as JSON (as --output json).")
@output_option()
def decode(value: str, as_json: bool, output: str) -> None:
    """Show a token's claims (without checking its signature)."""
    from zlayer.tokens import decode_token

    claims = decode_token(value)
    if as_json or output != "table":
        print_data(claims, "json" if as_json else output)
        return
    for k, v in claims.items():
        if k in ("exp", "iat") and isinstance(v, int):
            v = f"{v} ({datetime.fromtimestamp(v, UTC).isoformat()})"
        click.echo(f"{k}: {v}")


@token.command("show")
def show() -> None:
    """Print the node's local admin token (DATA/admin_bearer.token)."""
    from zlayer.tokens import BEARER_FILE

    path = cli_ctx().paths.data_dir / BEARER_FILE
    try:
        click.echo(path.read_text().strip())
    except FileNotFoundError as e:
        raise UsageError(f"{path} does not exist", where=str(path), hint="start the daemon first") from e


@token.command("info")
@output_option()
def info(output: str) -> None:
    """Who the daemon takes the token in use for (--token, ZLAYER_API_TOKEN, the `auth login` session, or the unix
    socket's local admin)."""
    from zlayer.cli.common import run

    me = run(lambda c: c.request("GET", "/auth/me"))
    if output != "table":
        print_data(me, output)
        return
    click.echo(f"{me['email']} ({me['role']}) id {me['id']}")


@token.group("key")
def key() -> None:
    """API keys: a key id and secret that `POST /auth/token` exchanges for a bearer token (admin only)."""


@key.command("create")
@click.option("--name", default="key", show_default=True, help="What the key is for.")
@click.option("-r", "--roles", default="user", show_default=True,
              help="Comma-separated: admin, operator, user (the owner's grants), reader.")  # fmt: skip
@click.option("-H", "--hours", type=float, help="Lifetime in hours [default: until revoked].")
@click.option("--owner", help="The account the key acts for (id or email) [default: the caller's].")
@click.option("--quiet", is_flag=True, help="Print only KEY_ID:SECRET.")
def key_create(name: str, roles: str, hours: float | None, owner: str | None, quiet: bool) -> None:
    """Create an API key; its secret is shown this once."""
    from zlayer.cli.common import run

    body = {"name": name, "roles": [r.strip() for r in roles.split(",") if r.strip()], "hours": hours,
            "owner": owner}  # fmt: skip
    got = run(lambda c: c.request("POST", "/api/v1/api-keys", json_body=body))
    if quiet:
        click.echo(f"{got['id']}:{got['secret']}")
        return
    click.echo(f"API key {got['id']} ({', '.join(got['roles'])}) for {got['owner_id']}")
    click.echo(f"secret (shown once): {got['secret']}")
    click.echo('exchange: POST /auth/token {"api_key": KEY_ID, "api_secret": SECRET}')


@key.command("ls")
@output_option()
def key_ls(output: str) -> None:
    """List API keys (never their secrets)."""
    from zlayer.cli.common import print_table, run

    keys = run(lambda c: c.request("GET", "/api/v1/api-keys"))
    if output != "table":
        print_data(keys, output)
        return

    def expires(k: dict[str, object]) -> str:
        at = k["expires_at"]
        return datetime.fromtimestamp(float(at), UTC).isoformat() if isinstance(at, int | float) else "never"

    rows = [[k["id"], k["name"], k["owner_id"], ",".join(k["roles"]), expires(k)] for k in keys]
    print_table(["ID", "NAME", "OWNER", "ROLES", "EXPIRES"], rows)


@key.command("revoke")
@click.argument("key_id")
def key_revoke(key_id: str) -> None:
    """Revoke an API key: the tokens it was exchanged for stop working at once."""
    from zlayer.cli.common import run

    run(lambda c: c.request("DELETE", f"/api/v1/api-keys/{key_id}"))
    click.echo(f"Revoked {key_id}")
