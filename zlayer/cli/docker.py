"""``zlayer docker``: Docker's verbs where one maps onto a zlayer command (ZLayer's Docker CLI emulation, as far as
this node's commands go). Each is that command under Docker's name — containers through ZLayer's container API
(``zlayer container …``: standalone containers on the node's runtime and network), images through the local store
(``zlayer image …``), builds through ``zlayer build`` — plus ``run``, which is ``container create`` followed, without
``-d``, by the container's end, output and exit code. Everything else Docker does, Debian's ``docker`` client does
against ``zlayer serve --docker-socket``."""

from __future__ import annotations

import sys
from typing import Any

import click

from zlayer.cli import container as ct
from zlayer.cli.build import build
from zlayer.cli.common import run as run_client
from zlayer.cli.image import image, image_push, image_rm, image_tag, pull_cmd


@click.group("docker")
def docker() -> None:
    """Docker's verbs on this node's containers and images (for the whole Docker CLI: serve --docker-socket)."""


@docker.command("run", context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Print the container's id and return at once.")
@click.option("--rm", "remove", is_flag=True, help="Without -d: remove the container once it has ended.")
def run(detach: bool, remove: bool, **options: Any) -> None:
    """Create and start a container from IMAGE; without -d, wait for it to end, print its output and exit with
    its exit code (its output is printed at its end, not streamed)."""
    if detach and remove:
        raise click.UsageError("--rm goes with a run that waits for the end (without -d)")
    info = ct._call("POST", "/api/v1/containers", ct.create_body(**options))
    cid = info["id"]
    if detach:
        click.echo(cid)
        return
    res = ct._call("GET", f"/api/v1/containers/{cid}/wait")
    for line in run_client(lambda c: c.logs(cid)).splitlines(keepends=True):  # `[stream] message` each
        stream, _, message = line.partition("] ")
        (sys.stderr if stream == "[stderr" else sys.stdout).write(message)
    if remove:
        run_client(lambda c: c.remove_container(cid))
    sys.exit(int(res["exit_code"]))


run.params.extend(ct.create.params)  # container create's options and arguments, as docker run takes them

for name, command in {
    "ps": ct.ls, "inspect": ct.inspect, "logs": ct.logs, "stats": ct.stats, "rm": ct.rm, "create": ct.create,
    "start": ct.container.commands["start"], "pause": ct.container.commands["pause"],
    "unpause": ct.container.commands["unpause"], "stop": ct.stop, "restart": ct.restart, "kill": ct.kill,
    "wait": ct.wait, "rename": ct.rename, "update": ct.update, "top": ct.top, "diff": ct.diff, "cp": ct.cp,
    "container": ct.container, "images": image.commands["ls"], "image": image, "rmi": image_rm, "tag": image_tag,
    "push": image_push, "pull": pull_cmd, "build": build,
}.items():  # fmt: skip
    docker.add_command(command, name)


__all__ = ["docker"]
