"""``zlayer runtime``: the OCI runtime command line (create, start, state, kill, delete, run) over zlayer-shim.

Takes a standard OCI bundle (``config.json`` + rootfs, e.g. from ``runc spec``), so the same bundle runs under
zlayer, runc and crun alike. ``--root`` is the state directory, as runc's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from zlayer.runtime.linux import shim


def _root(ctx: click.Context) -> Path:
    root: Path = ctx.obj["root"]
    return root


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@click.group("runtime")
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="State directory of the containers [default RUN_DIR/runtime, e.g. /var/run/zlayer/runtime].",
)
@click.pass_context
def runtime(ctx: click.Context, root: str | None) -> None:
    """Run OCI bundles directly with zlayer's runtime (the runc command set)."""
    parent = ctx.obj
    if root is None:
        from zlayer.paths import Paths

        paths = getattr(parent, "paths", None) or Paths.resolve()
        root = str(paths.run_dir / "runtime")
    ctx.obj = {"root": Path(root).absolute(), "parent": parent}


@runtime.command("create")
@click.option("-b", "--bundle", type=click.Path(file_okay=False, exists=True), default=".", show_default=True)
@click.option("--console-socket", type=click.Path(), help="Unix socket that receives the pty master (terminal).")
@click.option("--pid-file", type=click.Path(dir_okay=False), help="Write the container's pid here.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Log the container's output here instead.")
@click.argument("container_id")
@click.pass_context
def create(
    ctx: click.Context,
    bundle: str,
    console_socket: str | None,
    pid_file: str | None,
    log_path: str | None,
    container_id: str,
) -> None:
    """Create a container from BUNDLE; it waits for `start`. Its stdio is this command's (as runc's)."""
    st = _run(
        shim.create(
            container_id,
            Path(bundle),
            _root(ctx),
            Path(log_path) if log_path else None,
            console_socket=Path(console_socket) if console_socket else None,
            pid_file=Path(pid_file) if pid_file else None,
            stdio=None if log_path or console_socket else (0, 1, 2),
        )
    )
    del st


@runtime.command("start")
@click.argument("container_id")
@click.pass_context
def start(ctx: click.Context, container_id: str) -> None:
    """Start a created container."""
    _run(shim.start(container_id, _root(ctx)))


@runtime.command("state")
@click.argument("container_id")
@click.pass_context
def state(ctx: click.Context, container_id: str) -> None:
    """Print the container's state as the OCI runtime spec defines it (JSON)."""
    st = _run(shim.state(container_id, _root(ctx)))
    click.echo(json.dumps(st.oci_state(), indent=2))


@runtime.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List containers: ID, PID, STATUS, BUNDLE, CREATED."""
    rows = _run(shim.list_containers(_root(ctx)))
    click.echo(f"{'ID':<24} {'PID':>8} {'STATUS':<8} {'BUNDLE':<40} CREATED")
    for st in rows:
        click.echo(f"{st.id:<24} {st.pid:>8} {st.status:<8} {st.bundle!s:<40} {st.created_at}")


@runtime.command("kill")
@click.option("-a", "--all", "all_", is_flag=True, help="Signal every process of the container.")
@click.argument("container_id")
@click.argument("signal", default="TERM")
@click.pass_context
def kill(ctx: click.Context, all_: bool, container_id: str, signal: str) -> None:
    """Send SIGNAL (name or number, default TERM) to the container."""
    _run(shim.kill(container_id, _root(ctx), signal, all=all_))


@runtime.command("delete")
@click.option("-f", "--force", is_flag=True, help="Kill the container first if it is running.")
@click.argument("container_id")
@click.pass_context
def delete(ctx: click.Context, force: bool, container_id: str) -> None:
    """Delete a stopped container (cgroups and state); with --force also a running one."""
    _run(shim.delete(container_id, _root(ctx), force=force))


@runtime.command("pause")
@click.argument("container_id")
@click.pass_context
def pause(ctx: click.Context, container_id: str) -> None:
    """Freeze every process of the container."""
    _run(shim.pause(container_id, _root(ctx)))


@runtime.command("resume")
@click.argument("container_id")
@click.pass_context
def resume(ctx: click.Context, container_id: str) -> None:
    """Thaw a paused container."""
    _run(shim.unpause(container_id, _root(ctx)))


@runtime.command("run")
@click.option("-b", "--bundle", type=click.Path(file_okay=False, exists=True), default=".", show_default=True)
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Log the output here instead of passing it.")
@click.argument("container_id")
@click.pass_context
def run(ctx: click.Context, bundle: str, log_path: str | None, container_id: str) -> None:
    """Create, start and wait for a container in the foreground; exits with its exit code."""
    args = shim.run_argv(container_id, Path(bundle), _root(ctx), Path(log_path) if log_path else None)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(args[0], args)


@runtime.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("-e", "--env", multiple=True, help="KEY=VALUE added to the environment.")
@click.option("--cwd", help="Working directory inside the container.")
@click.option("-u", "--user", help="uid[:gid] to run as.")
@click.argument("container_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(
    ctx: click.Context,
    env: tuple[str, ...],
    cwd: str | None,
    user: str | None,
    container_id: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND inside a running container (its namespaces, cgroups, seccomp and capabilities)."""
    args = shim.exec_argv(container_id, _root(ctx), list(command), env=list(env), cwd=cwd, user=user)
    sys.stdout.flush()
    os.execv(args[0], args)
