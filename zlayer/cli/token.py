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
