"""``zlayer status``: is the daemon running, and what does it run (never starts a daemon)."""

from __future__ import annotations

import sys
from typing import Any

import click

from zlayer.cli.common import cli_ctx, output_option, print_data, print_table, run


@click.command("status")
@click.argument("deployment", required=False)
@output_option()
def status(deployment: str | None, output: str) -> None:
    """Show the daemon (pid, socket, API address) and its deployments with per-service health."""
    from zlayer.client import read_daemon_info
    from zlayer.config import probe_socket
    from zlayer.errors import NotFoundError

    c = cli_ctx()
    sock = c.paths.socket
    if c.host is None and not probe_socket(sock):
        reason = "no socket" if not sock.exists() else "socket exists but nothing answers"
        if output != "table":
            print_data({"daemon": {"running": False, "reason": reason, "socket_path": str(sock)}, "deployments": []},
                       output)  # fmt: skip
        else:
            click.echo(f"Daemon: not running ({reason} at {sock})")
        sys.exit(1)
    info = read_daemon_info(c.paths) or {}

    async def go(client: Any) -> list[dict[str, Any]]:
        names = [deployment] if deployment else [d["name"] for d in await client.deployments()]
        out = [await client.status(n) for n in names]
        for d in out:
            d["containers"] = [x for x in await client.ps() if x.get("deployment") == d["name"]]
            for h in d["service_health"]:  # from the service's details: its scale block, the autoscaler's word,
                try:  # and placement's reason for replicas that have no node (a cluster's leader)
                    got = await client.service(d["name"], h["name"])
                except NotFoundError:  # removed since the deployment was read
                    continue
                h["scale"] = {k: got.get(k) for k in ("scale_mode", "min_replicas", "max_replicas", "autoscale")}
                message = got.get("status_message") or ""
                if h["health"] not in ("healthy", "stopped") and message.startswith("unschedulable:"):
                    h["status_message"] = message
        return out

    deps = run(go, auto_start=False)
    if output != "table":
        print_data({"daemon": {"running": True, **info}, "deployments": deps}, output)
        return
    click.echo(f"Daemon: running (pid {info.get('pid', '?')}, since {info.get('started_at', '?')})")
    click.echo(f"  socket: {info.get('socket_path', sock)}   api: {info.get('api_bind') or 'unix socket only'}")
    if not deps:
        click.echo("No deployments")
        return
    for d in deps:
        msg = f" — {d['status_message']}" if d.get("status_message") else ""
        click.echo(f"\nDeployment {d['name']}: {d['status']}{msg}")
        runtimes: dict[str, set[str]] = {}
        for ct in d["containers"]:
            if ct.get("runtime"):
                runtimes.setdefault(ct.get("service") or "", set()).add(ct["runtime"])
        print_table(
            ["SERVICE", "HEALTH", "REPLICAS", "RUNTIME", "SCALE"],
            [(h["name"], h["health"], f"{h['replicas_running']}/{h['replicas_desired']}",
              ",".join(sorted(runtimes.get(h["name"], ()))), _scale(h)) for h in d["service_health"]],
        )  # fmt: skip
        for h in d["service_health"]:
            if h.get("status_message"):
                click.echo(f"  {h['name']}: pending: {h['status_message']}")
            auto = (h.get("scale") or {}).get("autoscale")
            if auto:
                last = f"; last scale {auto['last_scale']}" if auto.get("last_scale") else ""
                click.echo(f"  {h['name']} autoscaler: {auto['reason']}{last}")
        for ct in d["containers"]:
            if ct["state"] in ("backoff", "failed", "exited") or ct.get("restarts") or ct.get("oom_killed"):
                code = f", last exit code {ct['exit_code']}" if ct.get("exit_code") is not None else ""
                click.echo(f"  {ct['id']}: {ct['state']}{', OOMKilled' if ct.get('oom_killed') else ''}, "
                           f"restarts {ct.get('restarts', 0)}{code}")  # fmt: skip
                for line in (ct.get("last_error") or "").splitlines():
                    click.echo(f"    {line}")


def _scale(h: dict[str, Any]) -> str:
    sc = h.get("scale") or {}
    mode = sc.get("scale_mode")
    if mode == "adaptive":
        return f"adaptive {sc.get('min_replicas')}-{sc.get('max_replicas')}"
    return str(mode or "-")
