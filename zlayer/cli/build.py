"""`zlayer build`: build an image from a Dockerfile on this node, in-process (as ZLayer's CLI does), into the local
image store; the steps run on zlayer's own runtime."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from zlayer.cli.context import CliContext


class _Lines:
    """Progress as plain lines (a pipe, a log file, CI)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.label = ""

    def step(self, stage: str, number: int, total: int, text: str) -> None:
        self.label = f"[{stage} {number}/{total}]"
        if not self.quiet:
            click.echo(f"{self.label} {text}", err=True)

    def cached(self) -> None:
        if not self.quiet:
            click.echo(f"{self.label} CACHED", err=True)

    def output(self, line: str) -> None:
        if not self.quiet:
            click.echo(f"{self.label} | {line}", err=True)

    def done(self, seconds: float) -> None:
        if not self.quiet:
            click.echo(f"built in {seconds:.2f}s", err=True)


class _Live(_Lines):
    """Progress on a terminal: each step and its output as it comes, with a spinner on the step that runs."""

    def __init__(self) -> None:
        super().__init__(False)
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.status: Any = self.console.status("")
        self.status.start()

    def step(self, stage: str, number: int, total: int, text: str) -> None:
        self.label = f"[{stage} {number}/{total}]"
        self.console.print(f"[bold]{self.label}[/bold] {_markup(text)}")
        self.status.update(f"{self.label} {_markup(text)}")

    def cached(self) -> None:
        self.console.print(f"[bold]{self.label}[/bold] [green]CACHED[/green]")

    def output(self, line: str) -> None:
        self.console.print(f"[dim]  {_markup(line)}[/dim]")

    def done(self, seconds: float) -> None:
        self.status.stop()
        self.console.print(f"built in {seconds:.2f}s")

    def stop(self) -> None:
        self.status.stop()


def _markup(text: str) -> str:
    from rich.markup import escape

    from zlayer.errors import escape_controls

    return str(escape(escape_controls(text)))


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not key:
            raise click.UsageError(f"{what} {item!r}: expected NAME=value")
        if not eq:
            env = os.environ.get(key)
            if env is None:
                continue  # Docker: --build-arg NAME without a value takes it from the environment, if set
            value = env
        out[key] = value
    return out


def _secrets(values: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for item in values:
        fields = dict(f.partition("=")[::2] for f in item.split(","))
        sid, src = fields.get("id"), fields.get("src") or fields.get("source")
        if not sid or not src:
            raise click.UsageError(f"--secret {item!r}: expected id=NAME,src=FILE")
        if not Path(src).is_file():
            raise click.UsageError(f"--secret {item!r}: {src} is not a file")
        out[sid] = Path(src)
    return out


@click.command("build")
@click.argument("context", default=".", type=click.Path(file_okay=False, exists=True))
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False), help="Dockerfile [CONTEXT/Dockerfile].")
@click.option("-z", "--zimagefile", type=click.Path(dir_okay=False), help="A ZImagefile to build instead.")
@click.option("--runtime", "runtime_name", help="Build with a runtime template (zlayer runtimes lists them).")
@click.option("--runtime-auto", is_flag=True, help="Build with the runtime template the context's files call for.")
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image (repeatable).")
@click.option("--build-arg", "build_args", multiple=True, help="NAME=value for an ARG (repeatable).")
@click.option("--target", help="Build up to this stage (name or index).")
@click.option("--platform", help="os/arch[/variant] of the base images [default: this host].")
@click.option("--no-cache", is_flag=True, help="Run every step again; nothing is taken from the cache.")
@click.option("--push", is_flag=True, help="Push the image to the registry of each tag once built.")
@click.option("--secret", "secrets", multiple=True, help="id=NAME,src=FILE for RUN --mount=type=secret (repeatable).")
@click.option("--insecure", multiple=True, help="Registry host to reach over plain HTTP (loopback always is).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@click.pass_context
def build(
    ctx: click.Context,
    context: str,
    dockerfile: str | None,
    zimagefile: str | None,
    runtime_name: str | None,
    runtime_auto: bool,
    tags: tuple[str, ...],
    build_args: tuple[str, ...],
    target: str | None,
    platform: str | None,
    no_cache: bool,
    push: bool,
    secrets: tuple[str, ...],
    insecure: tuple[str, ...],
    quiet: bool,
) -> None:
    """Build an image from CONTEXT into the local store: a runtime template (--runtime), a ZImagefile (-z), a
    Dockerfile (-f), else the context's ZImagefile or Dockerfile, else the runtime template its files call for.

    Each RUN step runs on zlayer's own runtime over overlayfs snapshots of the store's layers; every step is cached
    by its inputs, so a rebuild runs only what changed. Progress goes to stderr; the image ID to stdout.
    """
    import asyncio

    from zlayer.builder import Builder, BuildOptions
    from zlayer.errors import UsageError
    from zlayer.images import ImageStore

    if os.geteuid() != 0:
        raise UsageError("zlayer build needs root: its steps run in namespaces over overlayfs mounts")
    obj: CliContext = ctx.obj
    opts = BuildOptions(
        context=Path(context),
        dockerfile=Path(dockerfile) if dockerfile else None,
        zimagefile=Path(zimagefile) if zimagefile else None,
        runtime=runtime_name,
        runtime_auto=runtime_auto,
        tags=list(tags),
        build_args=_pairs(build_args, "--build-arg"),
        target=target,
        platform=platform,
        no_cache=no_cache,
        secrets=_secrets(secrets),
        insecure=insecure,
    )
    if push and not tags:
        raise UsageError("--push needs a name to push to: give one with -t")
    progress: _Lines = _Live() if sys.stderr.isatty() and not quiet else _Lines(quiet)
    store = ImageStore(obj.paths.sub("images"))
    try:
        image = asyncio.run(Builder(store, obj.paths.sub("builder"), progress).build(opts))
    finally:
        if isinstance(progress, _Live):
            progress.stop()
    if image is None:  # a ZImagefile's wasm: build with oci: false made its program's file only
        if push:
            raise UsageError("--push: this ZImagefile's wasm: build has oci: false, so there is no image to push")
        if not quiet:
            click.echo("built the WASM program alone (oci: false): no image in the store", err=True)
        return
    if push:
        from zlayer.images import push as push_image

        for tag in tags:
            digest = asyncio.run(push_image(store, tag, insecure=insecure))
            if not quiet:
                click.echo(f"pushed {tag}: {digest}", err=True)
    if not quiet:
        click.echo(f"built {', '.join(tags) or 'an unnamed image'}: image ID {image.id}", err=True)
    click.echo(image.id)


@click.command("runtimes")
def runtimes() -> None:
    """List the runtime templates `zlayer build --runtime` takes, and the files that select each."""
    from zlayer.builder.templates import TEMPLATES
    from zlayer.cli.common import print_table

    print_table(("NAME", "DESCRIPTION", "DETECTED BY"),
                [(t.name, t.description, ", ".join(t.detect)) for t in TEMPLATES.values()])  # fmt: skip


class _Prefixed(_Lines):
    """One image's progress in a pipeline: plain lines, each led by the image's name (builds run side by side)."""

    def __init__(self, name: str, quiet: bool) -> None:
        super().__init__(quiet)
        self.name = name

    def step(self, stage: str, number: int, total: int, text: str) -> None:
        self.label = f"[{self.name}] [{stage} {number}/{total}]"
        if not self.quiet:
            click.echo(f"{self.label} {text}", err=True)

    def done(self, seconds: float) -> None:
        if not self.quiet:
            click.echo(f"[{self.name}] built in {seconds:.2f}s", err=True)


@click.command("pipeline")
@click.option("-f", "--file", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="The pipeline [ZPipeline.yaml, ZPipeline.yml, zlayer-pipeline.yaml or .yml here].")  # fmt: skip
@click.option("--set", "sets", multiple=True, help="NAME=VALUE for a ${NAME} variable, over vars: (repeatable).")
@click.option("--push", is_flag=True, help="Push every image's tags once all are built (as push.after_all).")
@click.option("--fail-fast/--no-fail-fast", default=True, show_default=True,
              help="On a failed image, cancel the builds still running; else build what does not need it.")  # fmt: skip
@click.option("--only", help="Build only these images (a,b); what they depend on is taken from the local store.")
@click.option("--platform", help="os/arch[/variant] to build every image for [default: this host].")
@click.option("--no-tui", is_flag=True, help="Plain progress lines (the only kind a pipeline prints).")
@click.option("--insecure", multiple=True, help="Registry host to reach over plain HTTP (loopback always is).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary.")
@click.pass_context
def pipeline(
    ctx: click.Context,
    file: Path | None,
    sets: tuple[str, ...],
    push: bool,
    fail_fast: bool,
    only: str | None,
    platform: str | None,
    no_tui: bool,
    insecure: tuple[str, ...],
    quiet: bool,
) -> None:
    """Build the images of a ZPipeline in dependency order: each starts once the images it depends_on are built,
    so independent images build side by side, each as `zlayer build` builds it, into the local store.

    Progress goes to stderr, one line per step led by the image's name; the summary (each image's status, time
    and image ID or error) to stdout. Exits 1 when an image was not built (or not pushed).
    """
    import asyncio

    from zlayer.builder.pipeline import find_pipeline, load_pipeline, run_pipeline
    from zlayer.cli.common import print_table
    from zlayer.errors import UsageError
    from zlayer.images import ImageStore

    if os.geteuid() != 0:
        raise UsageError("zlayer pipeline needs root: its steps run in namespaces over overlayfs mounts")
    obj: CliContext = ctx.obj
    path = file if file is not None else find_pipeline(Path.cwd())
    plan = load_pipeline(path, _pairs(sets, "--set"), platform)
    names = [n.strip() for n in only.split(",") if n.strip()] if only else []
    store = ImageStore(obj.paths.sub("images"))
    results = asyncio.run(run_pipeline(plan, store, obj.paths.sub("builder"), lambda n: _Prefixed(n, quiet),
                                       only=names, fail_fast=fail_fast, push=push, insecure=insecure))  # fmt: skip
    rows = []
    for r in results:
        said = r.image_id or "-"
        if r.error:
            said = r.error.splitlines()[0] if len(r.error.splitlines()) == 1 else r.error.replace("\n", " | ")
        rows.append((r.name, r.status, f"{r.seconds:.1f}s", ", ".join(r.pushed) or "-", said))
    print_table(("IMAGE", "STATUS", "TIME", "PUSHED", "IMAGE ID / ERROR"), rows)
    if any(r.status != "built" for r in results):
        raise SystemExit(1)
