"""``zlayer stop``: stop the replicas of a deployment (or one service), keeping the deployment."""

from __future__ import annotations

from typing import Any

import click

from zlayer.cli.common import deployment_from_spec, discover_spec, run


@click.command("stop")
@click.argument("deployment", required=False)
@click.option("-s", "--service", help="Only this service.")
@click.option("-f", "--force", is_flag=True, help="Kill at once instead of waiting for a graceful stop.")
@click.option("-t", "--timeout", default=30, show_default=True, help="Seconds to wait before killing.")
def stop(deployment: str | None, service: str | None, force: bool, timeout: int) -> None:
    """Scale a deployment's services (or one) to zero replicas; `zlayer deploy` or scale brings them back."""
    name = deployment or deployment_from_spec(discover_spec(None))

    async def go(client: Any) -> list[str]:
        names = [service] if service else [s["name"] for s in await client.services(name)]
        params = {"stop_timeout": 0 if force else timeout}
        for svc in names:
            await client.request("POST", f"/api/v1/deployments/{name}/services/{svc}/scale",
                                 json_body={"replicas": 0}, params=params)  # fmt: skip
        return names

    for svc in run(go):
        click.echo(f"Stopped {name}/{svc}")
