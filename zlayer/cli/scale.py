"""``zlayer scale``: set a service's replica count (for an adaptive service, a count the autoscaler may move again)."""

from __future__ import annotations

from typing import Any

import click

from zlayer.cli.common import resolve_deployment, run


@click.command("scale")
@click.argument("service")
@click.argument("replicas", type=click.IntRange(min=0))
@click.option("-d", "--deployment", help="Deployment [default: the discovered spec's, or the only one].")
def scale(service: str, replicas: int, deployment: str | None) -> None:
    """Scale SERVICE to REPLICAS and wait until it runs them. An adaptive service takes a count within its
    scale.min..max (or 0, which stops it); the autoscaler may move it again after its cooldown."""

    async def go(client: Any) -> tuple[str, dict[str, Any]]:
        dep = await resolve_deployment(client, deployment)
        return dep, await client.scale(dep, service, replicas)

    dep, got = run(go)
    bounds = f" (adaptive {got['min_replicas']}-{got['max_replicas']})" if got.get("scale_mode") == "adaptive" else ""
    click.echo(f"Scaled {dep}/{service}: {got['replicas']}/{got['desired_replicas']} replicas running{bounds}")
