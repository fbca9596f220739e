"""``zlayer down``: delete a deployment (name from the argument or the discovered spec)."""

from __future__ import annotations

from typing import Any

import click

from zlayer.cli.common import deployment_from_spec, discover_spec, run


@click.command("down")
@click.argument("deployment", required=False)
def down(deployment: str | None) -> None:
    """Stop and remove every replica of a deployment and forget it."""
    name = deployment or deployment_from_spec(discover_spec(None))

    async def go(client: Any) -> None:
        await client.stop(name)

    run(go)
    click.echo(f"Deployment {name} removed")
