"""``zlayer container``: the containers the daemon runs (ls, inspect, logs, stats, rm)."""

from __future__ import annotations

import json
from typing import Any

import click

from zlayer.cli.common import output_option, print_data, print_table, run


@click.group("container")
def container() -> None:
    """Inspect and manage individual containers."""


@container.command("ls")
@output_option()
def ls(output: str) -> None:
    """List containers."""
    data = run(lambda c: c.ps())
    if output != "table":
        print_data(data, output)
        return
    print_table(
        ["ID", "DEPLOYMENT", "SERVICE", "IMAGE", "STATE", "PID", "IP", "RESTARTS"],
        [(c["id"], c.get("deployment"), c.get("service"), c["image"], c["state"], c.get("pid"), c.get("ipv4"),
          c.get("restarts")) for c in data],
    )  # fmt: skip


container.add_command(ls, "list")


@container.command("inspect")
@click.argument("container_id")
def inspect(container_id: str) -> None:
    """Show everything known about a container, as JSON."""
    click.echo(json.dumps(run(lambda c: c.container(container_id)), indent=2))


@container.command("logs")
@click.argument("container_id")
@click.option("--tail", type=int, help="Only the last N lines.")
def logs(container_id: str, tail: int | None) -> None:
    """Print a container's output."""
    click.echo(run(lambda c: c.logs(container_id, tail=tail)), nl=False)


@container.command("stats")
@click.argument("container_id")
@output_option()
def stats(container_id: str, output: str) -> None:
    """Resource use of a container now."""
    s: dict[str, Any] = run(lambda c: c.container_stats(container_id))
    if output != "table":
        print_data(s, output)
        return
    print_table(
        ["ID", "CPU TIME", "MEMORY", "LIMIT", "MEM %"],
        [(s["id"], f"{s['cpu_usage_usec'] / 1e6:.2f}s", s["memory_bytes"], s["memory_limit"] or "-",
          f"{s['memory_percent']:.1f}")],
    )  # fmt: skip


@container.command("rm")
@click.argument("container_id")
@click.option("--force", is_flag=True, help="Kill without a graceful stop.")
def rm(container_id: str, force: bool) -> None:
    """Stop and remove a container (its service replaces it on the next convergence)."""
    run(lambda c: c.remove_container(container_id, force=force))
    click.echo(f"Removed {container_id}")


container.add_command(rm, "remove")
