"""The node's log store: one CRI-format file per replica (``<log_dir>/<id>.log``, rotated to ``.1``, ``.2``), whichever
driver ran it. A line is ``<RFC 3339 nanosecond UTC timestamp> <stdout|stderr> <F|P> <message>``; the Linux shim
writes them in C, the WASM worker with :class:`CriWriter`, and ``zlayer logs`` reads both through :func:`stream`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from zlayer.runtime.protocol import LogLine, Stream


def parse_cri(line: str) -> LogLine | None:
    parts = line.rstrip("\n").split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("stdout", "stderr"):
        return None
    msg = parts[3] if len(parts) == 4 else ""
    return LogLine(timestamp=parts[0], stream=parts[1], message=msg)  # type: ignore[arg-type]


def rfc3339_now() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def log_files(base: Path) -> list[Path]:
    """The rotated files oldest first, then ``base``."""
    rotated = sorted(
        (p for p in base.parent.glob(base.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, base]


def read_lines(base: Path) -> list[LogLine]:
    out: list[LogLine] = []
    for f in log_files(base):
        with contextlib.suppress(OSError), open(f, errors="replace") as fh:
            out.extend(x for x in map(parse_cri, fh) if x is not None)
    return out


async def stream(
    base: Path, *, tail: int | None, follow: bool, since: str | None, ended: Callable[[], bool]
) -> AsyncIterator[LogLine]:
    """The lines of ``base`` oldest first; with ``follow``, new ones as they are written until ``ended()`` says the
    writer is gone and nothing more came."""
    import asyncio  # here: the WASM worker imports this module for CriWriter and starts faster without asyncio

    lines = read_lines(base)
    if since:
        lines = [x for x in lines if x.timestamp >= since]
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    for line in lines:
        yield line
    if not follow:
        return
    pos = base.stat().st_size if base.exists() else 0
    ino = base.stat().st_ino if base.exists() else 0
    buf = ""
    while True:
        try:
            stt = base.stat()
            if stt.st_ino != ino:  # rotated: read the new file from its start
                ino, pos = stt.st_ino, 0
            with open(base, errors="replace") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
        except OSError:
            chunk = ""
        buf += chunk
        *done, buf = buf.split("\n")
        for text in done:
            if (x := parse_cri(text)) is not None:
                yield x
        if not chunk:
            if ended():
                return
            await asyncio.sleep(0.1)


class CriWriter:
    """Writes one replica's two output streams into its log file as CRI lines: whole lines as ``F``, a line longer
    than ``max_line`` in ``P`` pieces, a last line without newline flushed at :meth:`close`. Not thread-safe by
    itself: the WASM worker calls it from the thread running the guest only."""

    def __init__(self, path: Path, max_line: int = 16 * 1024) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.max_line = max_line
        self._partial: dict[Stream, bytes] = {"stdout": b"", "stderr": b""}

    def _emit(self, stream_: Stream, tag: str, data: bytes) -> None:
        text = data.decode(errors="replace").replace("\n", " ")
        os.write(self.fd, f"{rfc3339_now()} {stream_} {tag} {text}\n".encode())

    def write(self, stream_: Stream, data: bytes) -> None:
        buf = self._partial[stream_] + data
        *whole, rest = buf.split(b"\n")
        for line in whole:
            self._emit(stream_, "F", line)
        while len(rest) > self.max_line:
            self._emit(stream_, "P", rest[: self.max_line])
            rest = rest[self.max_line :]
        self._partial[stream_] = rest

    def close(self) -> None:
        for s, rest in self._partial.items():
            if rest:
                self._emit(s, "F", rest)
        self._partial = {"stdout": b"", "stderr": b""}
        os.close(self.fd)


__all__ = ["CriWriter", "log_files", "parse_cri", "read_lines", "rfc3339_now", "stream"]
