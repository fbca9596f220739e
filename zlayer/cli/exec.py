"""``zlayer exec``: run a command inside a replica of a service."""

from __future__ import annotations

import sys
from typing import Any

import click

from zlayer.client._cli import resolve_deployment, run
from zlayer.errors import UsageError


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("service")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.option("--deployment", help="Deployment [default: the discovered spec's, or the only one].")
@click.option("-r", "--replica", type=int, help="Replica number [default: the first healthy one].")
def exec_(service: str, cmd: tuple[str, ...], deployment: str | None, replica: int | None) -> None:
    """Run CMD (after --) in a replica of SERVICE; exits with the command's exit code."""
    if not cmd:
        raise UsageError("no command given", hint="zlayer exec SERVICE -- CMD ARGS...")

    async def go(client: Any) -> dict[str, Any]:
        dep = await resolve_deployment(client, deployment)
        result: dict[str, Any] = await client.exec(dep, service, list(cmd), replica=replica)
        return result

    res = run(go)
    sys.stdout.write(res["stdout"])
    sys.stderr.write(res["stderr"])
    if res.get("oom_killed"):
        click.secho("zlayer: OOMKilled: the kernel's OOM killer ended a process of the container at its memory limit "
                    f"(exit code {res['exit_code']})", fg="red", err=True)  # fmt: skip
    sys.exit(res["exit_code"])
