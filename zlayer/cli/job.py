"""``zlayer job``: trigger jobs and look at their executions; ``zlayer job cron``: cron jobs."""

from __future__ import annotations

import json
from typing import Any

import click

from zlayer.cli.common import output_option, print_data, print_table, run


@click.group("job")
def job() -> None:
    """Run jobs and inspect their executions."""


@job.command("ls")
@output_option()
def ls(output: str) -> None:
    """List jobs and cron jobs of every deployment, with their last execution."""

    async def go(client: Any) -> list[dict[str, Any]]:
        rows = []
        for d in await client.deployments():
            spec = await client.request("GET", f"/api/v1/deployments/{d['name']}/spec")
            for name, svc in (spec["spec"].get("services") or {}).items():
                rtype = svc.get("rtype", "service")
                if rtype in ("job", "cron"):
                    last = await client.job_executions(name, limit=1)
                    rows.append({"deployment": d["name"], "name": name, "type": rtype,
                                 "schedule": svc.get("schedule"), "last": last[0] if last else None})  # fmt: skip
        return rows

    data = run(go)
    if output != "table":
        print_data(data, output)
        return
    print_table(
        ["DEPLOYMENT", "JOB", "TYPE", "SCHEDULE", "LAST STATUS", "LAST RUN"],
        [(r["deployment"], r["name"], r["type"], r["schedule"] or "", (r["last"] or {}).get("status", ""),
          (r["last"] or {}).get("started_at", "")) for r in data],
    )  # fmt: skip


job.add_command(ls, "list")


@job.command("trigger")
@click.argument("name")
@click.option("--deployment", help="Deployment the job belongs to.")
def trigger(name: str, deployment: str | None) -> None:
    """Start an execution of a job; prints its execution id."""
    res = run(lambda c: c.trigger_job(name, deployment))
    click.echo(f"Triggered {name}: execution {res['execution_id']}")


@job.command("status")
@click.argument("name")
@click.option("--deployment", help="Deployment the job belongs to.")
@output_option()
def status(name: str, deployment: str | None, output: str) -> None:
    """Executions of a job (NAME), or one execution (its id)."""

    async def go(client: Any) -> list[dict[str, Any]]:
        from zlayer.errors import NotFoundError

        try:
            return [await client.job_execution(name)]
        except NotFoundError:
            result: list[dict[str, Any]] = await client.job_executions(name)
            return result

    execs = run(go)
    if output != "table":
        print_data(execs[0] if len(execs) == 1 and execs[0]["id"] == name else execs, output)
        return
    if len(execs) == 1 and execs[0]["id"] == name:
        click.echo(json.dumps(execs[0], indent=2))
        return
    print_table(
        ["EXECUTION", "STATUS", "TRIGGER", "EXIT", "STARTED", "DURATION"],
        [(e["id"], e["status"], e["trigger"], e.get("exit_code"), e.get("started_at"),
          f"{e['duration_ms']} ms" if e.get("duration_ms") is not None else "") for e in execs],
    )  # fmt: skip


@job.group("cron")
def cron() -> None:
    """Cron jobs: schedules and their state."""


@cron.command("ls")
@output_option()
def cron_ls(output: str) -> None:
    """List cron jobs."""
    data = run(lambda c: c.cron_jobs())
    if output != "table":
        print_data(data, output)
        return
    print_table(
        ["NAME", "SCHEDULE", "ENABLED", "LAST RUN", "NEXT RUN"],
        [(r["name"], r["schedule"], r["enabled"], r.get("last_run"), r.get("next_run")) for r in data],
    )


cron.add_command(cron_ls, "list")


@cron.command("status")
@click.argument("name")
@click.option("--deployment", help="Deployment the cron job belongs to.")
@output_option()
def cron_status(name: str, deployment: str | None, output: str) -> None:
    """One cron job's schedule, switch and runs."""

    async def go(client: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await client.cron_job(name, deployment), await client.job_executions(name, limit=5)

    info, execs = run(go)
    if output != "table":
        print_data({**info, "executions": execs}, output)
        return
    click.echo(f"{info['name']}: schedule {info['schedule']!r}, {'enabled' if info['enabled'] else 'disabled'}")
    click.echo(f"  last run: {info.get('last_run') or '-'}   next run: {info.get('next_run') or '-'}")
    for e in execs:
        click.echo(f"  {e['id']}  {e['status']}  exit {e.get('exit_code')}  {e.get('started_at')}")
