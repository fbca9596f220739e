"""The stdio of a container whose stdin stays open (``docker run -i``/``-it``, a spec's ``stdin_open``): the daemon
holds it instead of the shim's log.

With a terminal, the shim hands the pty master over on a console socket (SCM_RIGHTS) as it does for ``exec -t``;
without one, the container gets pipes as its fds 0-2 (``--stdio-fds``). :class:`Console` reads the output, writes it
to the container's log in the shim's CRI form (so ``logs`` reads it as any other container's) and hands it to every
attached client; :class:`AttachSession` is one client (an :class:`~zlayer.runtime.protocol.ExecSession`: output,
write, close stdin, resize). Such a container's stdio lives in this daemon: it ends with it, as a ``docker run -it``
container's session does with its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from zlayer.runtime.linux import shim
from zlayer.runtime.protocol import ContainerState, ExecResult, Stream


def _stamp() -> str:
    ns = time.time_ns()
    second = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{second}.{ns % 1_000_000_000:09d}Z"


class Console:
    """One container's stdio: ``master`` (a terminal) or the three pipe ends this side keeps."""

    def __init__(self, log_path: Path, *, master: int | None = None, pipes: tuple[int, int, int] | None = None) -> None:
        self.log_path = log_path
        self.master = master
        self.stdin_w, self.stdout_r, self.stderr_r = pipes if pipes is not None else (-1, -1, -1)
        self._subscribers: set[asyncio.Queue[tuple[Stream, bytes] | None]] = set()
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._log = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab", buffering=0)  # noqa: SIM115
        self.done = asyncio.Event()
        self._backlog: list[tuple[Stream, bytes]] | None = []  # what came before the first client (a prompt)
        for fd in (self.master, self.stdin_w, self.stdout_r, self.stderr_r):
            if fd is not None and fd >= 0:
                os.set_blocking(fd, False)
        sources = [("stdout", master)] if master is not None else [("stdout", self.stdout_r), ("stderr", self.stderr_r)]
        self._readers = [asyncio.ensure_future(self._pump(name, fd)) for name, fd in sources]  # type: ignore[arg-type]
        self._ended = asyncio.ensure_future(self._finish())

    async def _pump(self, stream: Stream, fd: int) -> None:
        while True:
            try:
                piece = os.read(fd, 65536)
            except BlockingIOError:
                await shim._readable(fd)
                continue
            except OSError:  # EIO: the terminal's last process is gone
                break
            if not piece:
                break
            self._record(stream, piece)
            if self._backlog is not None and sum(len(p) for _, p in self._backlog) < (1 << 20):
                self._backlog.append((stream, piece))
            for q in list(self._subscribers):
                q.put_nowait((stream, piece))
        self._record(stream, b"", flush=True)

    def _record(self, stream: str, piece: bytes, *, flush: bool = False) -> None:
        """Whole lines to the log as the shim writes them (``TIMESTAMP STREAM F TEXT``); a terminal's CRLF as LF."""
        buf = self._partial[stream] + piece
        *lines, rest = buf.split(b"\n")
        if flush and rest:
            lines, rest = [*lines, rest], b""
        self._partial[stream] = rest
        out = b"".join(f"{_stamp()} {stream} F ".encode() + line.rstrip(b"\r") + b"\n" for line in lines)
        if out:
            with contextlib.suppress(OSError):
                self._log.write(out)

    async def _finish(self) -> None:
        await asyncio.gather(*self._readers, return_exceptions=True)
        self.done.set()
        for q in list(self._subscribers):
            q.put_nowait(None)
        self.close()

    def subscribe(self) -> asyncio.Queue[tuple[Stream, bytes] | None]:
        q: asyncio.Queue[tuple[Stream, bytes] | None] = asyncio.Queue()
        for item in self._backlog or ():
            q.put_nowait(item)
        self._backlog = None
        if self.done.is_set():
            q.put_nowait(None)
        else:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[tuple[Stream, bytes] | None]) -> None:
        self._subscribers.discard(q)

    async def write(self, data: bytes) -> None:
        fd = self.master if self.master is not None else self.stdin_w
        if fd is None or fd < 0:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.005)
            except OSError:
                return

    async def close_stdin(self) -> None:
        if self.master is not None:
            await self.write(b"\x04")  # the line discipline's EOF
        elif self.stdin_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self.stdin_w)
            self.stdin_w = -1

    def resize(self, rows: int, cols: int) -> None:
        if self.master is not None and 0 < rows < 65536 and 0 < cols < 65536:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        for t in self._readers:
            t.cancel()
        for name in ("master", "stdin_w", "stdout_r", "stderr_r"):
            fd = getattr(self, name)
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None if name == "master" else -1)
        with contextlib.suppress(OSError):
            self._log.close()


class AttachSession:
    """One client attached to a :class:`Console` (the :class:`~zlayer.runtime.protocol.ExecSession` interface)."""

    def __init__(self, console: Console, wait: Callable[[], Awaitable[ContainerState]]) -> None:
        self._console = console
        self._queue = console.subscribe()
        self._wait = wait

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        try:
            while (item := await self._queue.get()) is not None:
                yield item
        finally:
            self._console.unsubscribe(self._queue)

    async def write(self, data: bytes) -> None:
        await self._console.write(data)

    async def close_stdin(self) -> None:
        await self._console.close_stdin()

    def resize(self, rows: int, cols: int) -> None:
        self._console.resize(rows, cols)

    async def wait(self) -> ExecResult:
        st = await self._wait()
        return ExecResult(st.exit_code if st.exit_code is not None else -1, b"", b"", oom_killed=st.oom_killed)

    def kill(self) -> None:
        """A client that goes away detaches; the container runs on."""
        self._console.unsubscribe(self._queue)


__all__ = ["AttachSession", "Console"]
