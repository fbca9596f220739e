"""``zlayer container``: the containers the daemon runs (ls, inspect, logs, stats, rm), and standalone ones (create,
start, stop, restart, kill, pause, unpause, wait, rename, update, top, diff, prune, cp)."""

from __future__ import annotations

import json
from pathlib import Path
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


# ----------------------------------------------------------------------------- standalone containers (ZLayer's API)


def _call(method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    return run(lambda c: c.request(method, path, json_body=body, params=params))


@container.command("create", context_settings={"allow_interspersed_args": False})  # options stop at IMAGE
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--name", help="The container's name [default: generated].")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="An environment variable (repeatable).")
@click.option("-p", "--publish", "ports", multiple=True, metavar="[HOST:]CONTAINER[/PROTO]",
              help="Publish a port (repeatable); without HOST a free port is picked.")  # fmt: skip
@click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro]",
              help="A bind mount (SRC absolute) or a named volume (repeatable).")  # fmt: skip
@click.option("--restart", type=click.Choice(["no", "always", "unless_stopped", "on_failure"]), default="no",
              show_default=True)  # fmt: skip
@click.option("--memory", help="Memory limit, e.g. 256Mi.")
@click.option("--cpus", type=float, help="CPU limit in cores.")
@click.option("--pull", "pull_policy", type=click.Choice(["always", "if_not_present", "never", "newer"]))
def create(image: str, command: tuple[str, ...], name: str | None, env: tuple[str, ...], ports: tuple[str, ...],
           volumes: tuple[str, ...], restart: str, memory: str | None, cpus: float | None,
           pull_policy: str | None) -> None:  # fmt: skip
    """Create and start a standalone container from IMAGE (COMMAND replaces its entrypoint)."""
    body = create_body(image, command, name, env, ports, volumes, restart, memory, cpus, pull_policy)
    info = _call("POST", "/api/v1/containers", body)
    click.echo(info["id"])


def create_body(image: str, command: tuple[str, ...], name: str | None, env: tuple[str, ...], ports: tuple[str, ...],
                volumes: tuple[str, ...], restart: str, memory: str | None, cpus: float | None,
                pull_policy: str | None) -> dict[str, Any]:  # fmt: skip
    """The API's create request from ``container create``'s options (``docker run`` takes the same)."""
    body: dict[str, Any] = {"image": image, "restart_policy": {"kind": restart}}
    for key, value in (("name", name), ("pull_policy", pull_policy)):
        if value:
            body[key] = value
    if command:
        body["command"] = list(command)
    if env:
        body["env"] = dict(e.partition("=")[::2] for e in env)
    mappings = []
    for p in ports:
        spec, _, proto = p.partition("/")
        host, _, inner = spec.rpartition(":")
        if not inner.isdigit() or (host and not host.isdigit()):
            raise click.BadParameter(f"{p!r}: expected [HOST:]CONTAINER[/tcp|udp]", param_hint="--publish")
        mappings.append({"container_port": int(inner), "protocol": proto or "tcp",
                         **({"host_port": int(host)} if host else {})})  # fmt: skip
    if mappings:
        body["ports"] = mappings
    mounts = []
    for v in volumes:
        parts = v.split(":")
        if len(parts) not in (2, 3):
            raise click.BadParameter(f"{v!r}: expected SRC:DST[:ro]", param_hint="--volume")
        mounts.append({"type": "bind" if parts[0].startswith("/") else "volume", "source": parts[0],
                       "target": parts[1], "readonly": parts[2:] == ["ro"]})  # fmt: skip
    if mounts:
        body["volumes"] = mounts
    if memory or cpus:
        body["resources"] = {k: v for k, v in (("memory", memory), ("cpu", cpus)) if v}
    return body


def _simple(verb: str, help_text: str) -> None:
    @container.command(verb, help=help_text)
    @click.argument("container_id")
    def cmd(container_id: str) -> None:
        _call("POST", f"/api/v1/containers/{container_id}/{verb}")
        click.echo(container_id)


_simple("start", "Start a stopped standalone container.")
_simple("pause", "Freeze every process of a container.")
_simple("unpause", "Thaw a paused container.")


@container.command("stop")
@click.argument("container_id")
@click.option("-t", "--timeout", type=int, help="Seconds before SIGKILL [default: 10].")
def stop(container_id: str, timeout: int | None) -> None:
    """Stop a standalone container (its stop signal, SIGKILL after the timeout)."""
    _call("POST", f"/api/v1/containers/{container_id}/stop", {"timeout": timeout})
    click.echo(container_id)


@container.command("restart")
@click.argument("container_id")
@click.option("-t", "--timeout", type=int, help="Seconds before SIGKILL [default: 10].")
def restart(container_id: str, timeout: int | None) -> None:
    """Stop and start a standalone container again."""
    _call("POST", f"/api/v1/containers/{container_id}/restart", {"timeout": timeout})
    click.echo(container_id)


@container.command("kill")
@click.argument("container_id")
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="The signal to send.")
def kill(container_id: str, sig: str) -> None:
    """Send a signal to a standalone container's main process."""
    _call("POST", f"/api/v1/containers/{container_id}/kill", {"signal": sig})
    click.echo(container_id)


@container.command("wait")
@click.argument("container_id")
def wait(container_id: str) -> None:
    """Wait until a standalone container exits; print its exit code."""
    res = _call("GET", f"/api/v1/containers/{container_id}/wait")
    click.echo(res["exit_code"])


@container.command("rename")
@click.argument("container_id")
@click.argument("new_name")
def rename(container_id: str, new_name: str) -> None:
    """Rename a standalone container."""
    _call("POST", f"/api/v1/containers/{container_id}/rename", params={"name": new_name})


@container.command("update")
@click.argument("container_id")
@click.option("--restart", type=click.Choice(["no", "always", "unless-stopped", "on-failure"]), required=True)
@click.option("--max-retries", type=int, default=0, help="With on-failure: restarts at most this many times.")
def update(container_id: str, restart: str, max_retries: int) -> None:
    """Change a standalone container's restart policy."""
    _call("POST", f"/api/v1/containers/{container_id}/update",
          {"RestartPolicy": {"Name": restart, "MaximumRetryCount": max_retries}})  # fmt: skip


@container.command("top")
@click.argument("container_id")
def top(container_id: str) -> None:
    """The processes running in a container."""
    res = _call("GET", f"/api/v1/containers/{container_id}/top")
    print_table(res["Titles"], [tuple(p) for p in res["Processes"]])


@container.command("diff")
@click.argument("container_id")
def diff(container_id: str) -> None:
    """What a container changed in its filesystem: A added, C changed, D deleted."""
    for ch in _call("GET", f"/api/v1/containers/{container_id}/changes"):
        click.echo(f"{'CAD'[ch['Kind']]} {ch['Path']}")


@container.command("prune")
def prune() -> None:
    """Remove every stopped standalone container."""
    res = _call("POST", "/api/v1/containers/prune")
    for cid in res["ContainersDeleted"]:
        click.echo(f"Deleted {cid}")


# ----------------------------------------------------------------------------- cp (the archive routes)


def _split_ref(arg: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` or a local path (one with a ``:`` is written ``./a:b`` or absolute, as for docker cp)."""
    head, sep, tail = arg.partition(":")
    if sep and head and "/" not in head and not head.startswith("."):
        return head, tail or "/"
    return None, arg


def _is_dir(headers: dict[str, str]) -> bool:
    import base64

    doc = json.loads(base64.b64decode(headers.get("x-docker-container-path-stat", "") or "e30="))
    return bool(int(doc.get("mode", 0)) & (1 << 31))  # Go's os.ModeDir, as Docker sends it


def _tar_of(src: str, arcname: str, keep_owner: bool) -> bytes:
    import io
    import tarfile

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if not keep_owner:  # as docker cp: the copy belongs to the container's root unless --archive
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(src, arcname=arcname, filter=owner)
    return buf.getvalue()


def _extract(data: bytes, dest: Path) -> None:
    """The tar of one path (its top entry named after it) to ``dest``: into it when it is a directory, else as it."""
    import io
    import shutil
    import tarfile
    import tempfile

    from zlayer.errors import UsageError

    if dest.is_dir():
        parent, into_dir = dest, True
    else:
        parent, into_dir = dest.parent, False
        if not parent.is_dir():
            raise UsageError(f"no such directory: {parent}", where=str(dest))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        if into_dir:
            tar.extractall(parent, filter="data")
            return
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".zlayer-cp-"))
        try:
            tar.extractall(tmp, filter="data")
            top = tmp / names[0].split("/", 1)[0] if names else None
            if top is None or not top.exists():
                raise UsageError("the container sent an empty archive", where=str(dest))
            if dest.exists() and not dest.is_dir():
                dest.unlink()
            top.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@container.command("cp")
@click.argument("src")
@click.argument("dest")
@click.option("-a", "--archive", "keep_owner", is_flag=True, help="Keep the files' owner (uid:gid) when copying in.")
def cp(src: str, dest: str, keep_owner: bool) -> None:
    """Copy files between a container and this machine, as docker cp.

    \b
    zlayer container cp CONTAINER:SRC_PATH DEST_PATH|-
    zlayer container cp SRC_PATH|- CONTAINER:DEST_PATH
    A directory DEST receives the copy inside it; - is a tar on stdout (from) or stdin (to)."""
    import os
    import sys

    from zlayer.errors import UsageError

    (from_c, from_path), (to_c, to_path) = _split_ref(src), _split_ref(dest)
    if (from_c is None) == (to_c is None):
        raise UsageError("copying needs exactly one CONTAINER:PATH, the source or the destination",
                         hint="zlayer container cp CONTAINER:SRC DEST, or cp SRC CONTAINER:DEST")  # fmt: skip
    if from_c is not None:
        url = f"/api/v1/containers/{from_c}/archive"
        data, _ = run(lambda c: c.transfer("GET", url, params={"path": from_path}))
        if dest == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            _extract(data, Path(dest))
        return
    assert to_c is not None
    url = f"/api/v1/containers/{to_c}/archive"
    if src == "-":
        run(lambda c: c.transfer("PUT", url, body=sys.stdin.buffer.read(), params={"path": to_path}))
        return
    if not os.path.lexists(src):
        raise UsageError(f"no such file or directory: {src}", where=src)

    async def put(c: Any) -> None:
        from zlayer.errors import NotFoundError

        target = to_path.rstrip("/") or "/"
        try:
            _, headers = await c.transfer("HEAD", url, params={"path": target})
            into = _is_dir(headers)
        except NotFoundError:
            if to_path.endswith("/"):
                raise UsageError(f"no such directory in the container: {to_path}", where=dest) from None
            into = False
        if into:
            base = os.path.basename(os.path.normpath(src))
            await c.transfer("PUT", url, body=_tar_of(src, base, keep_owner), params={"path": target})
        else:
            parent, name = os.path.split(target)
            await c.transfer("PUT", url, body=_tar_of(src, name, keep_owner), params={"path": parent or "/"})

    run(put)
