"""``zlayer logs``: a service's output, from every replica or one."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from zlayer.cli.common import resolve_deployment, run
from zlayer.errors import UsageError


@click.command("logs")
@click.argument("service_arg", metavar="SERVICE", required=False)
@click.option("-s", "--service", help="Service name (or give it as the argument).")
@click.option("-d", "--deployment", help="Deployment [default: the discovered spec's, or the only one].")
@click.option("-n", "--lines", default=100, show_default=True, help="Lines per replica.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-i", "--instance", help="Only this replica (number or container id).")
def logs(
    service_arg: str | None, service: str | None, deployment: str | None, lines: int, follow: bool, instance: str | None
) -> None:
    """Print the logs of a service's replicas as [stdout]/[stderr] lines."""
    name = service or service_arg
    if not name:
        raise UsageError("which service? pass SERVICE or -s/--service")

    async def go(client: Any) -> None:
        dep = await resolve_deployment(client, deployment)
        async for line in client.service_logs(dep, name, lines=lines, follow=follow, instance=instance):
            click.echo(line)

    with contextlib.suppress(KeyboardInterrupt):
        run(go)
