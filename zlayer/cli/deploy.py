"""``zlayer deploy`` and ``zlayer up``: send a spec to the daemon and follow its events until it runs."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import click

from zlayer.cli.common import cli_ctx, discover_spec, make_client
from zlayer.errors import DaemonError, SpecError
from zlayer.spec.problem import Problem


def print_plan(path: Path, text: str) -> None:
    from zlayer.spec.loader import parse_deployable

    spec = parse_deployable(text)
    click.echo(f"Deployment: {spec.deployment}")
    click.echo(f"Version: {spec.version}")
    click.echo(f"Services: {len(spec.services)}")
    for name in spec.service_order():
        s = spec.services[name]
        mode, low, high = s.replicas_hint()
        scale = {"fixed": f"fixed ({low} replicas)", "manual": "manual"}.get(mode, f"adaptive ({low}-{high} replicas)")
        click.echo(f"  {name}:")
        click.echo(f"    Image: {s.image.name}")
        click.echo(f"    Type: {s.rtype}" + (f" (schedule {s.schedule})" if s.schedule else ""))
        if s.rtype == "service":
            click.echo(f"    Scale: {scale}")
        for ep in s.endpoints:
            click.echo(f"    Endpoint: - {ep.name} ({ep.protocol.upper()}:{ep.port}, {ep.expose})")
        if s.depends:
            click.echo("    Dependencies: " + ", ".join(f"{d.service} ({d.condition})" for d in s.depends))
        click.echo(f"    Plan: {'register job' if s.rtype != 'service' else f'run {s.initial_replicas} replica(s)'}")


def in_file(err: SpecError, path: Path) -> SpecError:
    """Name the user's file where the parser (local or the daemon's) only knew ``<string>``."""
    err.message = err.message.replace("<string>", str(path))
    err.problems = [
        p._replace(file=str(path)) if isinstance(p, Problem) and p.file == "<string>" else p for p in err.problems
    ]
    if err.where in (None, "<string>", str(path)) and str(path) in err.message:
        err.where = None
    elif err.where is None:
        err.where = str(path)
    return err


def _with_pull_policy(text: str, policy: str) -> str:
    import yaml

    doc = yaml.safe_load(text)
    for svc in (doc.get("services") or {}).values():
        if isinstance(svc, dict) and isinstance(svc.get("image"), dict):
            svc["image"]["pull_policy"] = policy
    return str(yaml.safe_dump(doc, sort_keys=False))


SETTLED = ("running", "failed", "stopped")


async def follow_until_settled(client: Any, name: str, since: str, timeout: float = 600.0) -> dict[str, Any]:
    """Print the events of the deploy submitted at ``since`` as the daemon streams them (SSE), until the deployment
    is running or failed; returns its final details."""
    try:
        async with asyncio.timeout(timeout):
            mine = False  # the stream starts with the deployment's history: print from this deploy on
            async for ev in client.events(name):
                mine = mine or (ev["kind"] == "deploy" and ev["timestamp"] >= since)
                if not mine:
                    continue
                click.echo(f"  {ev['kind']}: {ev['message']}")
                if ev["kind"] == "deleted":
                    break
                if ev["kind"] in ("deploy_done", "deploy_failed"):
                    details: dict[str, Any] = await client.status(name)
                    if details["status"] in SETTLED:
                        return details
    except TimeoutError:
        raise DaemonError(f"deployment {name} did not settle within {timeout:g}s") from None
    raise DaemonError(f"deployment {name} was removed while it was being deployed")


def _report(details: dict[str, Any]) -> None:
    for h in details["service_health"]:
        click.echo(f"  {h['name']}: {h['health']} ({h['replicas_running']}/{h['replicas_desired']} replicas)")
    if details["status"] == "failed":
        raise DaemonError(f"deployment {details['name']} failed: {details.get('status_message') or ''}")
    click.echo(f"Deployment {details['name']} is {details['status']}")


def deploy_and_follow(spec: str | None, pull: str | None, foreground: bool) -> None:
    """Shared body of deploy and up: submit, follow until running (exit 0) or failed (non-zero, with the reason).
    ``foreground`` (up without -b/-d) then stays until Ctrl+C, which stops and removes the deployment."""
    from zlayer.spec.loader import check_spec_text, read_spec_text

    path = discover_spec(spec)
    source, text = read_spec_text(path)
    check_spec_text(text, source)  # every problem at the user's lines before a daemon is contacted (or started)
    if pull:
        text = _with_pull_policy(text, pull)

    async def go() -> None:
        client = make_client()
        try:
            try:
                created = await client.deploy(text)
            except SpecError as e:
                raise in_file(e, path) from None
            name = created["name"]
            click.echo(f"Deploying {name} from {path}")
            details = await follow_until_settled(client, name, created["updated_at"])
            _report(details)
            if not foreground:
                return
            click.echo("Running in the foreground; Ctrl+C stops and removes it")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                click.echo(f"Stopping {name} ...")
                await asyncio.shield(client.stop(name))
                raise
        finally:
            await client.close()

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(go())


def _background_options(fn: Any) -> Any:
    """ZLayer's -b/-d are global: accepted after the subcommand too (`zlayer up -b`)."""
    fn = click.option("-d", "--detach", is_flag=True, help="Return once the deployment is running.")(fn)
    return click.option("-b", "--background", is_flag=True, help="Return once the deployment is running.")(fn)


@click.command("deploy")
@click.argument("spec", required=False)
@click.option("--dry-run", is_flag=True, help="Only validate and print the plan; the daemon is not contacted.")
@_background_options
def deploy(spec: str | None, dry_run: bool, background: bool, detach: bool) -> None:
    """Deploy a spec (auto-discovered in the current directory) and return once it runs (non-zero exit if it fails)."""
    if dry_run:
        from zlayer.spec.loader import read_spec_text

        path = discover_spec(spec)
        try:
            print_plan(path, read_spec_text(path)[1])
        except SpecError as e:
            in_file(e, path)
            if e.problems and "\n" not in e.message:  # (a message of several lines already lists them)
                for p in e.problems:
                    click.echo(f"  {p}", err=True)
            raise
        return
    deploy_and_follow(spec, None, foreground=False)


@click.command("up")
@click.argument("spec", required=False)
@click.option("--pull", "pull", flag_value="always", help="Pull every image again (pull_policy always).")
@click.option("--no-pull", "pull", flag_value="never", help="Never pull (pull_policy never).")
@_background_options
def up(spec: str | None, pull: str | None, background: bool, detach: bool) -> None:
    """Deploy a spec and stay in the foreground; Ctrl+C tears it down (-b returns once it runs)."""
    c = cli_ctx()
    deploy_and_follow(spec, pull, foreground=not (background or detach or c.background or c.detach))
