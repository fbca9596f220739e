"""An exec with its stdio attached (``zlayer exec -i``/``-t``): ``zlayer-shim exec`` with pipes to the caller, or on
a terminal of the container's own devpts whose master the shim hands over on a console socket (the OCI
``--console-socket`` contract, SCM_RIGHTS), as ``runc exec -t`` does."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
import tempfile
import termios
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from zlayer.errors import RuntimeFailure
from zlayer.runtime.linux import shim
from zlayer.runtime.linux.cgroups import OomWatch
from zlayer.runtime.protocol import ExecResult, Stream

HANDOVER_TIMEOUT = 30.0  # seconds the shim has to join the container and send the terminal


class ShimExecSession:
    """One running ``zlayer-shim exec`` (implements :class:`zlayer.runtime.protocol.ExecSession`)."""

    def __init__(self, proc: asyncio.subprocess.Process, oom: OomWatch, master: int | None) -> None:
        self._proc = proc
        self._oom = oom
        self._master = master

    @classmethod
    async def start(
        cls,
        container_id: str,
        state_root: Path,
        argv: Sequence[str],
        oom: OomWatch,
        *,
        stdin: bool,
        tty: bool,
        size: tuple[int, int] | None = None,
        env: Sequence[str] = (),
        cwd: str | None = None,
        user: str | None = None,
    ) -> ShimExecSession:
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        if not tty:
            proc = await shim.exec(container_id, state_root, argv, env=env, cwd=cwd, user=user,
                                   stdin=pipe if stdin else devnull)  # fmt: skip
            return cls(proc, oom, None)
        with tempfile.TemporaryDirectory(prefix="zlayer-exec-") as d:  # mode 0700: nobody else can connect
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(f"{d}/console.sock")
                listener.listen(1)
                listener.setblocking(False)
                proc = await shim.exec(container_id, state_root, argv, env=env, cwd=cwd, user=user, tty=True,
                                       console_socket=Path(f"{d}/console.sock"), console_size=size,
                                       stdin=devnull)  # fmt: skip
                master = await cls._take_terminal(listener, proc, container_id)
            finally:
                listener.close()
        os.set_blocking(master, False)
        return cls(proc, oom, master)

    @staticmethod
    async def _take_terminal(listener: socket.socket, proc: asyncio.subprocess.Process, container_id: str) -> int:
        loop = asyncio.get_running_loop()
        accepted = asyncio.ensure_future(loop.sock_accept(listener))
        ended = asyncio.ensure_future(proc.wait())
        await asyncio.wait({accepted, ended}, timeout=HANDOVER_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not accepted.done():
            accepted.cancel()
            if not ended.done():
                ended.cancel()
                proc.kill()
            err = (await proc.stderr.read()).decode(errors="replace").strip() if proc.stderr else ""
            raise shim.exec_failure(err.removeprefix("zlayer-shim: ") or f"exec in container {container_id}: "
                                    "no terminal came from the container")  # fmt: skip
        ended.cancel()
        conn, _ = accepted.result()
        with conn:
            conn.settimeout(HANDOVER_TIMEOUT)
            _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, conn, 16, 1)
        if not fds:
            raise RuntimeFailure(f"exec in container {container_id}: the shim sent no terminal")
        return fds[0]

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        if self._master is not None:
            async for piece in self._terminal():
                yield "stdout", piece
            if self._proc.stderr is not None and (err := await self._proc.stderr.read()):
                yield "stderr", err  # the shim's own complaint (exit code 255)
            return
        queue: asyncio.Queue[tuple[Stream, bytes] | None] = asyncio.Queue(64)

        async def pump(name: Stream, reader: asyncio.StreamReader | None) -> None:
            while reader is not None and (piece := await reader.read(65536)):
                await queue.put((name, piece))
            await queue.put(None)

        tasks = [asyncio.ensure_future(pump("stdout", self._proc.stdout)),
                 asyncio.ensure_future(pump("stderr", self._proc.stderr))]  # fmt: skip
        try:
            left = len(tasks)
            while left:
                item = await queue.get()
                if item is None:
                    left -= 1
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    async def _terminal(self) -> AsyncIterator[bytes]:
        assert self._master is not None
        while True:
            try:
                piece = os.read(self._master, 65536)
            except BlockingIOError:
                await shim._readable(self._master)
                continue
            except OSError:  # EIO: the last process holding the terminal is gone
                return
            if not piece:
                return
            yield piece

    async def write(self, data: bytes) -> None:
        if self._master is not None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._master, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                except OSError:
                    return
            return
        if self._proc.stdin is None or self._proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self._master is not None:
            await self.write(b"\x04")  # the line discipline's EOF (VEOF) at the start of a line
        elif self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    def resize(self, rows: int, cols: int) -> None:
        if self._master is not None and 0 < rows < 65536 and 0 < cols < 65536:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def wait(self) -> ExecResult:
        code = await self._proc.wait()
        if self._master is not None:
            os.close(self._master)
            self._master = None
        return ExecResult(code, b"", b"", oom_killed=self._oom.killed())

    def kill(self) -> None:
        # The shim forwards HUP and TERM to the process (as a terminal hangs up on its session); SIGKILL would only
        # end the shim and leave the process behind in the container.
        for sig in (signal.SIGHUP, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)
