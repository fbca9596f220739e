"""`zlayer image ...`, `zlayer import`, `zlayer export`, `zlayer system prune`: the local image store, in-process."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import click

from zlayer.cli.common import output_option, print_data
from zlayer.cli.context import CliContext


def _store(ctx: click.Context) -> Any:
    from zlayer.images import ImageStore

    obj: CliContext = ctx.obj
    return ImageStore(obj.paths.sub("images"))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1000
    return f"{n}B"


def _image_json(image: Any) -> dict[str, Any]:
    return {
        "reference": image.reference,
        "digest": image.digest,
        "id": image.id,
        "size": image.size,
        "platform": image.platform,
        "created": image.image_config.get("created"),
        "wasm": image.is_wasm,
    }


@click.group("image")
def image() -> None:
    """Manage images in the local store."""


@image.command("ls")
@output_option()
@click.pass_context
def image_ls(ctx: click.Context, output: str) -> None:
    """List local images."""
    images = [_image_json(i) for i in _store(ctx).list()]
    if output != "table":
        print_data(images, output)
        return
    from zlayer.cli.common import print_table

    print_table(
        ("REFERENCE", "IMAGE ID", "PLATFORM", "SIZE", "CREATED"),
        [(i["reference"], i["id"][7:19], i["platform"], _size(i["size"]), i["created"] or "") for i in images],
    )


image.add_command(image_ls, "list")


@image.command("inspect")
@click.argument("reference")
@click.pass_context
def image_inspect(ctx: click.Context, reference: str) -> None:
    """Show an image's manifest and config as JSON."""
    img = _store(ctx).get(reference)
    out = {**_image_json(img), "manifest": img.manifest, "config": img.image_config}
    out["layers"] = [str(d) for d in img.layer_dirs]
    if img.is_wasm:
        out["wasi_version"] = img.wasi_version
        out["wasm_modules"] = [str(p) for p in img.wasm_modules]
    click.echo(json.dumps(out, indent=2))


@image.command("rm")
@click.argument("references", nargs=-1, required=True)
@click.option("--force", "-f", is_flag=True, help="Remove even if a container uses it.")
@click.pass_context
def image_rm(ctx: click.Context, references: tuple[str, ...], force: bool) -> None:
    """Remove images from the local store (their data goes at the next `zlayer system prune`)."""
    store = _store(ctx)
    for ref in references:
        for name in store.remove(ref, force=force):
            click.echo(f"Untagged: {name}")


image.add_command(image_rm, "remove")


@image.command("tag")
@click.argument("source")
@click.argument("target")
@click.pass_context
def image_tag(ctx: click.Context, source: str, target: str) -> None:
    """Give a local image another name."""
    click.echo(_store(ctx).tag(source, target))


def _copy_capped(src: Any, dest: Path, limit: int, what: str) -> None:
    """Copy ``src`` to ``dest``, refusing past ``limit`` bytes: an archive larger than an image may unpack to is
    refused before it fills the disk."""
    from zlayer.errors import ImageError
    from zlayer.images.manifest import size_text

    done = 0
    with open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            done += len(chunk)
            if done > limit:
                raise ImageError(
                    f"import {what}: more than {size_text(limit)}, what an image may unpack to at most",
                    hint="if the image is trusted, raise the limit: ZLAYER_MAX_IMAGE_SIZE",
                )
            out.write(chunk)


def _fetch_url(url: str, username: str | None, password: str | None, dest: Path, limit: int) -> None:
    from zlayer.errors import ImageError

    request = urllib.request.Request(url)
    if username:
        import base64

        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            _copy_capped(resp, dest, limit, url)
    except urllib.error.HTTPError as e:
        raise ImageError(f"import {url}: the server answered {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ImageError(f"import {url}: cannot download: {getattr(e, 'reason', e)}") from e


@click.command("import")
@click.argument("source")
@click.option("-t", "--tag", help="Name for the imported image.")
@click.option("-c", "--change", "changes", multiple=True, help="Dockerfile instruction to apply (CMD, ENV, ...).")
@click.option("-u", "--username", envvar="ZLAYER_REGISTRY_USERNAME", help="User for a URL import (basic auth).")
@click.option("-p", "--password", envvar="ZLAYER_REGISTRY_PASSWORD", help="Password for a URL import.")
@click.pass_context
def import_(
    ctx: click.Context,
    source: str,
    tag: str | None,
    changes: tuple[str, ...],
    username: str | None,
    password: str | None,
) -> None:
    """Import an image from an OCI archive, a `docker save` archive or a root filesystem tarball.

    SOURCE is a file, an http(s) URL, or - for standard input.
    """
    from zlayer.errors import NotFoundError
    from zlayer.images import import_archive

    store = _store(ctx)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        if source == "-":
            path = Path(tmp) / "stdin.tar"
            _copy_capped(sys.stdin.buffer, path, store.limits.image, "from standard input")
        elif source.startswith(("http://", "https://")):
            path = Path(tmp) / "download.tar"
            _fetch_url(source, username, password, path, store.limits.image)
        else:
            path = Path(source)
            if not path.is_file():
                raise NotFoundError(f"import: {source}: no such file")
        img = import_archive(store, path, tag=tag, changes=list(changes))
    click.echo(f"Imported {img.reference} (image ID {img.id})")


@click.command("export")
@click.argument("reference")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Archive to write.")
@click.option("--gzip", "compress", is_flag=True, help="Compress the archive with gzip.")
@click.pass_context
def export(ctx: click.Context, reference: str, output: str, compress: bool) -> None:
    """Write a local image as an OCI archive."""
    from zlayer.images import export_archive

    export_archive(_store(ctx), reference, Path(output), compress=compress)
    click.echo(f"Exported {reference} to {output} ({_size(os.path.getsize(output))})")


@click.group("system")
def system() -> None:
    """Housekeeping of the local node."""


@system.command("prune")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def prune(ctx: click.Context, yes: bool) -> None:
    """Delete image data that no image refers to, and leftovers of interrupted pulls."""
    if not yes and sys.stdin.isatty():
        click.confirm("Remove all unreferenced image data?", abort=True)
    items, freed = _store(ctx).prune()
    click.echo(f"Removed {items} unreferenced items, freed {_size(freed)}")


class _LayerProgress:
    """A rich progress bar per layer; silent when not on a terminal or with --quiet."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        if enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=False
            )

    def __enter__(self) -> _LayerProgress:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, digest: str, done: int, total: int) -> None:
        if not self.progress:
            return
        task = self.tasks.get(digest)
        if task is None:
            task = self.tasks[digest] = self.progress.add_task(digest[7:19], total=total or None)
        self.progress.update(task, completed=done, total=total or None)


def _credentials(username: str | None, password: str | None) -> Any:
    from zlayer.images import Credentials

    return Credentials(username, password or "") if username else None


def _spec_images() -> list[tuple[str, str]]:
    from zlayer.spec import load_spec
    from zlayer.spec.discovery import discover_spec_path

    spec = load_spec(discover_spec_path(None))
    return [(svc.image.name, str(svc.image.pull_policy)) for svc in spec.services.values()]


@click.command("pull")
@click.argument("reference", required=False)
@click.option(
    "-u", "--username", envvar="ZLAYER_REGISTRY_USERNAME", help="Registry user [env ZLAYER_REGISTRY_USERNAME]."
)
@click.option(
    "-p", "--password", envvar="ZLAYER_REGISTRY_PASSWORD", help="Registry password [env ZLAYER_REGISTRY_PASSWORD]."
)
@click.option("--platform", help="os/arch[/variant] to pull from a multi-platform image [default: this host].")
@click.option(
    "--policy",
    type=click.Choice(["always", "newer", "if_not_present", "never"]),
    default="always",
    show_default=True,
    help="When to contact the registry.",
)
@click.option("--insecure", multiple=True, help="Registry host to reach over plain HTTP (loopback always is).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.pass_context
def pull_cmd(
    ctx: click.Context,
    reference: str | None,
    username: str | None,
    password: str | None,
    platform: str | None,
    policy: str,
    insecure: tuple[str, ...],
    quiet: bool,
) -> None:
    """Pull an image from a registry into the local store.

    With no REFERENCE, pulls every image of the deployment spec in the current directory.
    """
    import asyncio

    from zlayer.images import pull

    store = _store(ctx)
    wanted = [(reference, policy)] if reference else _spec_images()
    creds = _credentials(username, password)
    for ref, pol in wanted:
        with _LayerProgress(enabled=not quiet and sys.stderr.isatty()) as progress:
            image = asyncio.run(
                pull(store, ref, policy=pol, platform=platform, credentials=creds, insecure=insecure, progress=progress)
            )
        click.echo(f"{image.reference}: digest {image.digest}, image ID {image.id}")


@image.command("push")
@click.argument("reference")
@click.argument("target", required=False)
@click.option("-u", "--username", envvar="ZLAYER_REGISTRY_USERNAME", help="Registry user.")
@click.option("-p", "--password", envvar="ZLAYER_REGISTRY_PASSWORD", help="Registry password.")
@click.option("--insecure", multiple=True, help="Registry host to reach over plain HTTP (loopback always is).")
@click.pass_context
def image_push(
    ctx: click.Context,
    reference: str,
    target: str | None,
    username: str | None,
    password: str | None,
    insecure: tuple[str, ...],
) -> None:
    """Push a local image to its registry (or to TARGET)."""
    import asyncio

    from zlayer.images import push

    digest = asyncio.run(
        push(_store(ctx), reference, target=target, credentials=_credentials(username, password), insecure=insecure)
    )
    click.echo(f"Pushed {target or reference}: {digest}")
