"""``zlayer deploy`` and ``zlayer up``: send a spec to the daemon and follow it until it runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import click

from zlayer.client._cli import cli_ctx, discover_spec, make_client
from zlayer.errors import DaemonError, SpecError


def print_plan(path: Path, text: str) -> None:
    from zlayer.agent.specload import parse_deployment

    parsed = parse_deployment(text)
    click.echo(f"Deployment: {parsed.name}")
    click.echo(f"Version: {parsed.spec.get('version')}")
    click.echo(f"Services: {len(parsed.services)}")
    for name in parsed.order:
        s = parsed.services[name]
        scale = {"fixed": f"fixed ({s.replicas} replicas)", "manual": "manual"}.get(
            s.scale_mode, f"adaptive ({(parsed.spec['services'][name].get('scale') or {}).get('min', 1)}-"
            f"{(parsed.spec['services'][name].get('scale') or {}).get('max', 10)} replicas)"
        )  # fmt: skip
        click.echo(f"  {name}:")
        click.echo(f"    Image: {s.image}")
        click.echo(f"    Type: {s.rtype}" + (f" (schedule {s.schedule})" if s.schedule else ""))
        if s.rtype == "service":
            click.echo(f"    Scale: {scale}")
        for ep in s.endpoints:
            click.echo(f"    Endpoint: - {ep.name} ({ep.protocol.upper()}:{ep.port}, {ep.expose})")
        if s.depends:
            click.echo("    Dependencies: " + ", ".join(f"{d.service} ({d.condition})" for d in s.depends))
        click.echo(f"    Plan: {'register job' if s.rtype != 'service' else f'run {s.replicas} replica(s)'}")


def in_file(err: SpecError, path: Path) -> SpecError:
    """Name the user's file where the parser (local or the daemon's) only knew ``<string>``."""
    err.message = err.message.replace("<string>", str(path))
    for p in err.problems:
        raw = getattr(p, "raw", None)
        if isinstance(raw, dict) and raw.get("file") == "<string>":
            raw["file"] = str(path)
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


async def follow_until_settled(client: Any, name: str, timeout: float = 600.0) -> dict[str, Any]:
    """Print deployment events until it is running or failed; returns the final details."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        for ev in await client.request(
            "GET", f"/api/v1/deployments/{name}/events", params={"after": seen, "follow": False}
        ):
            seen = ev["seq"]
            click.echo(f"  {ev['kind']}: {ev['message']}")
        details: dict[str, Any] = await client.status(name)
        if details["status"] in ("running", "failed", "stopped"):
            return details
        await asyncio.sleep(0.05)  # two small requests on the unix socket: cheap, and the answer comes sooner
    raise DaemonError(f"deployment {name} did not settle within {timeout:g}s")


def _report(details: dict[str, Any]) -> None:
    for h in details["service_health"]:
        click.echo(f"  {h['name']}: {h['health']} ({h['replicas_running']}/{h['replicas_desired']} replicas)")
    if details["status"] == "failed":
        raise DaemonError(f"deployment {details['name']} failed: {details.get('status_message') or ''}")
    click.echo(f"Deployment {details['name']} is {details['status']}")


def deploy_and_follow(spec: str | None, pull: str | None, foreground_action: str) -> None:
    """Shared body of deploy and up. ``foreground_action`` is what Ctrl+C does: ``detach`` or ``down``."""
    path = discover_spec(spec)
    text = path.read_text()
    if pull:
        text = _with_pull_policy(text, pull)
    c = cli_ctx()
    background = c.background or c.detach

    async def go() -> None:
        client = make_client()
        try:
            try:
                created = await client.deploy(text)
            except SpecError as e:
                raise in_file(e, path) from None
            name = created["name"]
            click.echo(f"Deploying {name} from {path}")
            details = await follow_until_settled(client, name)
            _report(details)
            if background:
                return
            click.echo("Running in the foreground; Ctrl+C " + ("stops and removes it" if foreground_action == "down"
                       else "detaches (the deployment keeps running)"))  # fmt: skip
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if foreground_action == "down":
                    click.echo(f"Stopping {name} ...")
                    await asyncio.shield(client.stop(name))
                raise
        finally:
            await client.close()

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(go())


@click.command("deploy")
@click.argument("spec", required=False)
@click.option("--dry-run", is_flag=True, help="Only validate and print the plan; the daemon is not contacted.")
def deploy(spec: str | None, dry_run: bool) -> None:
    """Deploy a spec (auto-discovered in the current directory) to the daemon."""
    if dry_run:
        path = discover_spec(spec)
        try:
            print_plan(path, path.read_text())
        except SpecError as e:
            in_file(e, path)
            if e.problems and "\n" not in e.message:  # (a message of several lines already lists them)
                for p in e.problems:
                    click.echo(f"  {p}", err=True)
            raise
        return
    deploy_and_follow(spec, None, "detach")


@click.command("up")
@click.argument("spec", required=False)
@click.option("--pull", "pull", flag_value="always", help="Pull every image again (pull_policy always).")
@click.option("--no-pull", "pull", flag_value="never", help="Never pull (pull_policy never).")
def up(spec: str | None, pull: str | None) -> None:
    """Deploy a spec and stay in the foreground; Ctrl+C tears it down (-b returns once it runs)."""
    deploy_and_follow(spec, pull, "down")
