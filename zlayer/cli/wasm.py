"""`zlayer wasm ...`: build, inspect, validate, export and push WebAssembly programs, in-process (no daemon).

``build`` finds the toolchain for the source directory: C through clang with the WASI sysroot (Debian's
``wasi-libc``), Rust through cargo where a ``wasm32-wasip1``/``wasm32-wasi`` standard library is installed, Python
through ``componentize-py`` (components only); a missing toolchain is named, with the package that provides it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click

from zlayer.cli.context import CliContext
from zlayer.errors import UsageError

WASI_SYSROOTS = ("/usr/share/wasi-sysroot", "/usr")  # upstream wasi-sdk's, then Debian's (wasi-libc)


def _store(ctx: click.Context) -> Any:
    from zlayer.images import ImageStore

    obj: CliContext = ctx.find_root().obj
    return ImageStore(obj.paths.sub("images"))


@click.group("wasm")
def wasm() -> None:
    """WebAssembly programs: build, export, push, validate, info."""


def _detect_language(src: Path) -> str:
    if (src / "Cargo.toml").exists():
        return "rust"
    if any(src.glob("*.c")):
        return "c"
    if any(src.glob("*.py")):
        return "python"
    raise UsageError(f"{src}: no Cargo.toml, *.c or *.py to build", where="DIR", hint="pass --language")


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UsageError(f"the {tool} toolchain is not installed", hint=f"install {package}")
    return path


def _run(argv: list[str], cwd: Path | None = None) -> None:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"{Path(argv[0]).name} failed (exit {r.returncode}):\n{(r.stderr or r.stdout).strip()}")


def _build_c(src: Path, out: Path, target: str, optimize: bool) -> None:
    if target == "wasip2":
        raise UsageError(
            "C to a WASIp2 component needs wasm-tools and the WASIp1 adapter module, which this node does not have",
            where="--target",
            hint="build --target wasip1 (a module), or write the component in Python (componentize-py)",
        )
    clang = _need("clang", "clang (Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)")
    _need("wasm-ld", "lld")
    if not any(
        Path(r, "include", "wasm32-wasi", "stdio.h").exists() or Path(r, "include", "stdio.h").exists()
        for r in WASI_SYSROOTS
    ):
        raise UsageError("the WASI C library (sysroot) is not installed", hint="install wasi-libc")
    sources = sorted(str(p) for p in src.glob("*.c"))
    argv = [clang, "--target=wasm32-wasi", "-O2" if optimize else "-O0", *sources, "-o", str(out)]
    if optimize:
        argv.append("-Wl,--strip-all")
    _run(argv)


def _rust_target() -> str | None:
    try:
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for t in ("wasm32-wasip1", "wasm32-wasi"):
        if Path(sysroot.strip(), "lib", "rustlib", t).is_dir():
            return t
    return None


def _build_rust(src: Path, out: Path, target: str, optimize: bool) -> None:
    _need("cargo", "cargo and rustc (Debian: apt-get install cargo)")
    triple = "wasm32-wasip2" if target == "wasip2" else _rust_target()
    if triple is None or not _rust_target():
        raise UsageError(
            "Rust has no wasm32-wasi standard library installed",
            hint="rustup target add wasm32-wasip1 (or Debian's libstd-rust-dev-wasm32)",
        )
    profile = ["--release"] if optimize else []
    _run(["cargo", "build", "--target", triple, *profile], cwd=src)
    built = sorted((src / "target" / triple / ("release" if optimize else "debug")).glob("*.wasm"))
    if not built:
        raise UsageError(f"cargo built no .wasm under {src / 'target' / triple}")
    shutil.copyfile(built[0], out)


def _build_python(src: Path, out: Path, target: str, wit: Path | None, world: str | None) -> None:
    if target != "wasip2":
        raise UsageError("Python builds to a WASIp2 component only", where="--target", hint="--target wasip2")
    cpy = _need("componentize-py", "componentize-py (pip install componentize-py)")
    mod = next((p.stem for p in sorted(src.glob("*.py")) if p.stem in ("app", "main")), None) or next(
        p.stem for p in sorted(src.glob("*.py"))
    )
    argv = [cpy]
    if wit is not None:
        argv += ["-d", str(wit)]
    if world:
        argv += ["-w", world]
    _run([*argv, "componentize", "-p", str(src), mod, "-o", str(out)], cwd=src)


@wasm.command("build")
@click.argument("context", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-l", "--language", type=click.Choice(["c", "rust", "python"]), help="Source language [detected].")
@click.option("-t", "--target", type=click.Choice(["wasip1", "wasip2"]), default="wasip1", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Output file [DIR/NAME.wasm].")
@click.option("--optimize", is_flag=True, help="Optimize for size and speed (-O2, stripped; cargo --release).")
@click.option("--wit", type=click.Path(exists=True, path_type=Path), help="WIT directory (Python components).")
@click.option("--world", help="WIT world to build (Python components).")
def wasm_build(
    context: Path,
    language: str | None,
    target: str,
    output: Path | None,
    optimize: bool,
    wit: Path | None,
    world: str | None,
) -> None:
    """Build the program in CONTEXT to a .wasm module (wasip1) or component (wasip2)."""
    lang = language or _detect_language(context)
    out = output or context / f"{context.resolve().name}.wasm"
    if lang == "c":
        _build_c(context, out, target, optimize)
    elif lang == "rust":
        _build_rust(context, out, target, optimize)
    else:
        _build_python(context, out, target, wit, world)
    from zlayer.runtime.wasm.binary import inspect_wasm

    info = inspect_wasm(out)
    click.echo(f"Built {out} ({info.kind}, {info.wasi}, {info.size} bytes)")


@wasm.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def wasm_validate(file: Path) -> None:
    """Check that FILE is a valid WASM module or component."""
    from zlayer.runtime.wasm.binary import inspect_wasm

    info = inspect_wasm(file)
    click.echo(f"{file}: valid {info.kind} ({info.wasi}, world {info.world})")


@wasm.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def wasm_info(file: Path, output: str) -> None:
    """Show FILE's kind, WASI version, world, imports, exports and size."""
    from zlayer.runtime.wasm.binary import inspect_wasm

    info = inspect_wasm(file)
    if output == "json":
        click.echo(json.dumps(info.as_dict(), indent=2))
        return
    click.echo(
        f"File:    {file}\nKind:    {info.kind}\nWASI:    {info.wasi}\nWorld:   {info.world}\nSize:    {info.size}"
    )
    click.echo(f"Imports ({len(info.imports)}):")
    for name in info.imports:
        click.echo(f"  {name}")
    click.echo(f"Exports ({len(info.exports)}):")
    for name in info.exports:
        click.echo(f"  {name}")


@wasm.command("export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--name", "name", required=True, help="Image name NAME:TAG in the local store.")
@click.pass_context
def wasm_export(ctx: click.Context, file: Path, name: str) -> None:
    """Store FILE as a WASM OCI artifact named NAME:TAG in the local image store."""
    from zlayer.runtime.wasm.artifact import export_artifact

    image = export_artifact(_store(ctx), file, name)
    click.echo(f"{image.reference}: digest {image.digest}")


@wasm.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("reference")
@click.option("-u", "--username", envvar="ZLAYER_REGISTRY_USERNAME", help="Registry user.")
@click.option("-p", "--password", envvar="ZLAYER_REGISTRY_PASSWORD", help="Registry password.")
@click.option("--insecure", multiple=True, help="Registry host to reach over plain HTTP (loopback always is).")
@click.pass_context
def wasm_push(
    ctx: click.Context,
    file: Path,
    reference: str,
    username: str | None,
    password: str | None,
    insecure: tuple[str, ...],
) -> None:
    """Push FILE to REFERENCE as a WASM OCI artifact (the layout wkg and ORAS read; kept in the local store too)."""
    import asyncio

    from zlayer.images import Credentials, push
    from zlayer.runtime.wasm.artifact import export_artifact

    store = _store(ctx)
    export_artifact(store, file, reference)
    creds = Credentials(username, password or "") if username else None
    digest = asyncio.run(push(store, reference, credentials=creds, insecure=insecure))
    click.echo(f"Pushed {reference}: {digest}")


__all__ = ["wasm"]
