"""``zlayer exec``: run a command inside a replica of a service, with its stdio attached."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import click

from zlayer.cli.common import resolve_deployment, run
from zlayer.errors import UsageError


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("service")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.option("--deployment", help="Deployment [default: the discovered spec's, or the only one].")
@click.option("-r", "--replica", type=int, help="Replica number [default: the first healthy one].")
@click.option("-i", "--interactive", is_flag=True, help="Attach stdin (it is whenever stdin is not a terminal).")
@click.option("-t", "--tty", is_flag=True, help="Run CMD on a terminal (a shell, a full-screen program).")
def exec_(
    service: str, cmd: tuple[str, ...], deployment: str | None, replica: int | None, interactive: bool, tty: bool
) -> None:
    """Run CMD (after --) in a replica of SERVICE; its output as it comes, its input from stdin when that is a pipe
    or a file (or with -i); exits with the command's exit code."""
    if not cmd:
        raise UsageError("no command given", hint="zlayer exec SERVICE -- CMD ARGS...")
    on_terminal = _isatty(0)
    attach = interactive or not on_terminal

    def output(stream: str, data: bytes) -> None:
        out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        out.write(data)
        out.flush()

    async def go(client: Any) -> dict[str, Any]:
        dep = await resolve_deployment(client, deployment)
        size = shutil.get_terminal_size() if tty else None
        result: dict[str, Any] = await client.exec_attached(
            dep, service, list(cmd), output, replica=replica, stdin=_stdin_chunks() if attach else None, tty=tty,
            size=(size.lines, size.columns) if size else None, resizes=_resizes() if tty and _isatty(1) else None,
        )  # fmt: skip
        return result

    with _raw_terminal(tty and attach and on_terminal):
        res = run(go)
    if res.get("oom_killed"):
        click.secho("zlayer: OOMKilled: the kernel's OOM killer ended a process of the container at its memory limit "
                    f"(exit code {res['exit_code']})", fg="red", err=True)  # fmt: skip
    sys.exit(res["exit_code"])


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


async def _stdin_chunks() -> AsyncIterator[bytes]:
    """Our stdin as it arrives. A daemon thread reads it (a pipe, a file, a terminal alike), so a command that ends
    without reading it all does not keep us waiting on input that never comes."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            if not chunk:
                return

    threading.Thread(target=reader, name="exec stdin", daemon=True).start()
    while chunk := await queue.get():
        yield chunk


async def _resizes() -> AsyncIterator[tuple[int, int]]:
    """Our terminal's size each time it changes (SIGWINCH), for the remote one to follow."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGWINCH, queue.put_nowait, None)
    try:
        while True:
            await queue.get()
            size = shutil.get_terminal_size()
            yield size.lines, size.columns
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    """Our terminal in raw mode while a remote terminal runs: keys go through as typed (Ctrl+C to the command)."""
    if not enabled:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
