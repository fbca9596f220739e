"""A ZImagefile's ``wasm:`` mode: the program compiled by ``zlayer wasm build`` (the same toolchains, the same
messages), with ZLayer's ``pre_build``/``post_build`` commands around it, run in the build context on this host with
``build_args`` in their environment; the ``.wasm`` then stored as a WASM OCI artifact under the build's tags (what
``zlayer wasm export`` makes), unless ``oci: false`` asks for the file alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from zlayer.builder.executor import BuildError, BuildOptions, Progress, _thread
from zlayer.builder.zimage import WasmBuild
from zlayer.images import ImageStore, LocalImage

TAIL_LINES = 10


def wasm_build_argv(w: WasmBuild, context: Path, out: Path) -> list[str]:
    """The ``zlayer wasm build`` command line of this build."""
    argv = [sys.executable, "-m", "zlayer", "wasm", "build", str(context), "-t", w.target, "-o", str(out)]
    if w.language:
        argv += ["-l", w.language]
    if w.optimize:
        argv.append("--optimize")
    if w.wit:
        argv += ["--wit", str(context / w.wit)]
    if w.world:
        argv += ["--world", w.world]
    return argv


def output_path(w: WasmBuild, context: Path) -> Path:
    return context / w.output if w.output else context / f"{context.name}.wasm"


async def build_wasm(w: WasmBuild, opts: BuildOptions, store: ImageStore, progress: Progress) -> LocalImage | None:
    """Build the program; the artifact in the store (None with ``oci: false``: the file at ``output`` only)."""
    context = opts.context.resolve()
    out = output_path(w, context)
    env = {**os.environ, **w.build_args}
    steps: list[tuple[str, list[str]]] = []
    for kind, commands in (("pre_build", w.pre_build), ("post_build", w.post_build)):
        for text, words in commands:
            steps.append((f"{kind}: {text}", list(words) if words is not None else ["/bin/sh", "-c", text]))
    build_argv = wasm_build_argv(w, context, out)
    steps.insert(len(w.pre_build), ("zlayer wasm build " + " ".join(build_argv[5:]), build_argv))
    for number, (shown, argv) in enumerate(steps, start=1):
        progress.step("wasm", number, len(steps), shown)
        code, tail = await _run(argv, context, env, progress.output)
        if code != 0:
            said = "\n".join(f"  {line}" for line in tail)
            raise BuildError(f"{w.file}:{w.line}: wasm: {shown}: exited with code {code}"
                             + (f"; its last output:\n{said}" if said else " (no output)"))  # fmt: skip
    if not out.is_file():
        raise BuildError(f"{w.file}:{w.line}: wasm: the build left no program at {out}",
                         hint="wasm.output names the file the build (or a post_build command) writes")  # fmt: skip
    if not w.oci:
        return None
    return await _thread(_store_artifact, store, out, opts.tags)


def _store_artifact(store: ImageStore, path: Path, tags: Sequence[str]) -> LocalImage:
    from zlayer.runtime.wasm.artifact import export_artifact

    if tags:
        name = tags[0]
    else:
        with open(path, "rb") as f:
            name = f"localhost/build-{hashlib.file_digest(f, 'sha256').hexdigest()[:12]}:latest"
    image = export_artifact(store, path, name)
    for tag in tags[1:]:
        store.set_name(tag, image.digest)
    return image


async def _run(
    argv: list[str], cwd: Path, env: dict[str, str], on_line: Callable[[str], None]
) -> tuple[int, list[str]]:
    """Run a command, its output (stdout and stderr as one) line by line to ``on_line``; cancelled, its whole
    process group is killed before the cancellation goes on."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                    start_new_session=True)  # fmt: skip
    except OSError as e:
        return 127, [f"{argv[0]}: {e.strerror}"]
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            on_line(line)
        return await proc.wait(), list(tail)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
