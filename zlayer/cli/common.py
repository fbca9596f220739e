"""Helpers shared by the CLI commands that talk to the daemon: the client, spec discovery, names and output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from zlayer.errors import NotFoundError, SpecError, UsageError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FORMATS = ("table", "json", "yaml")


def cli_ctx() -> Any:
    return click.get_current_context().find_root().obj


def warn_if_secret_in_argv(param: str, env: str) -> None:
    """A secret given as an option stands in the process's command line, which every user of the host can read
    (ps, /proc/PID/cmdline); say so and name the variable that keeps it private."""
    from click.core import ParameterSource

    if click.get_current_context().get_parameter_source(param) is ParameterSource.COMMANDLINE:
        option = "--" + param.replace("_", "-")
        click.echo(f"zlayer: warning: {option} on the command line is visible to every user of this host (ps); "
                   f"set {env} instead", err=True)  # fmt: skip


def make_client(auto_start: bool = True) -> Any:
    from zlayer.client import Client

    c = cli_ctx()
    token = c.token or _session_token(c.host)
    return Client(socket=c.paths.socket, host=c.host, token=token, data_dir=c.paths.data_dir, auto_start=auto_start,
                  on_start=lambda notice: click.echo(f"zlayer: {notice}", err=True))  # fmt: skip


def _session_token(host: str | None) -> str | None:
    """The token ``zlayer auth login`` saved for ``host`` (a daemon over TCP; the unix socket needs none)."""
    if host is None or os.environ.get("ZLAYER_API_TOKEN"):
        return None
    from zlayer.cli.identity import session_file

    try:
        saved = json.loads(session_file().read_text())
    except (OSError, ValueError):
        return None
    token = saved.get("token") if isinstance(saved, dict) and saved.get("host") == host else None
    return token if isinstance(token, str) else None


def run(fn: Callable[[Any], Awaitable[T]], auto_start: bool = True) -> T:
    """Run ``fn(client)`` on a fresh event loop and close the client afterwards."""

    async def go() -> T:
        client = make_client(auto_start)
        try:
            return await fn(client)
        finally:
            await client.close()

    return asyncio.run(go())


def discover_spec(explicit: str | None, cwd: Path | None = None) -> Path:
    """ZLayer's rule (spec-and-cli.md §11), as :func:`zlayer.spec.discovery.discover_spec_path` applies it."""
    from zlayer.spec.discovery import discover_spec_path

    return discover_spec_path(explicit, cwd=cwd)


def deployment_from_spec(path: Path) -> str:
    from zlayer.spec.loader import read_spec_document

    _, doc = read_spec_document(path)
    name = doc.get("deployment")
    if not name:
        raise UsageError("the spec has no `deployment` name", where=str(path))
    return str(name)


async def resolve_deployment(client: Any, explicit: str | None) -> str:
    """``--deployment``, else the discovered spec's name, else the only deployment the daemon has."""
    if explicit:
        return explicit
    try:
        return deployment_from_spec(discover_spec(None))
    except (NotFoundError, UsageError, SpecError):
        pass
    deps = await client.deployments()
    if len(deps) == 1:
        return str(deps[0]["name"])
    if not deps:
        raise NotFoundError("the daemon has no deployments")
    raise UsageError("several deployments exist: " + ", ".join(d["name"] for d in deps), hint="pass --deployment")


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Every listing's table. On a terminal it may fit the width (rich); on a pipe every value is printed whole, in
    columns two spaces apart, so ``zlayer image ls | grep NAME`` finds what it looks for (as docker and kubectl)."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not sys.stdout.isatty():
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        for line in [list(columns), *cells]:
            click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col)
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def output_option(*aliases: str) -> Callable[[F], F]:
    """``--output/-o table|json|yaml``, which every listing takes (the README's promise); ``aliases`` are other
    names ZLayer's CLI gives the option on that command (``ps --format``). The value arrives as ``output``."""
    option: Callable[[F], F] = click.option(
        "--output",
        "-o",
        *aliases,
        "output",
        type=click.Choice(OUTPUT_FORMATS),
        default="table",
        show_default=True,
        help="table for people; json or yaml with every value whole, for programs.",
    )
    return option


def print_data(data: Any, fmt: str) -> None:
    if fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        click.echo(json.dumps(data, indent=2))


def age(ts: str) -> str:
    from datetime import UTC, datetime

    if not ts:
        return ""
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    secs = int((datetime.now(UTC) - then).total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit}"
    return f"{max(secs, 0)}s"
