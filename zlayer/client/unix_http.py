"""HTTP/1.1 to the daemon over its unix socket, on asyncio streams alone.

The CLI talks to a local daemon on every command; aiohttp costs about 300 ms to import (it builds its TLS contexts
and loads the CA store at import time), which is most of a ``zlayer ps``. Over a unix socket none of that is needed:
one request per connection (``Connection: close``), bodies by Content-Length, chunked or until close, and
server-sent events read line by line. TCP daemons (``--host``) still go through aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

MAX_HEAD = 65536


class TransportError(Exception):
    """The socket could not be reached, or the answer was cut off or malformed."""

    def __init__(self, message: str, *, connect: bool = False) -> None:
        super().__init__(message)
        self.connect = connect


class Response:
    """An answer whose body is read on demand (whole with :meth:`read`, in pieces with :meth:`chunks`)."""

    def __init__(self, status: int, headers: dict[str, str], reader: asyncio.StreamReader) -> None:
        self.status = status
        self.headers = headers
        self._reader = reader

    async def chunks(self) -> AsyncIterator[bytes]:
        r = self._reader
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await r.readuntil(b"\n")
                    size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
                    if size == 0:
                        while (await r.readuntil(b"\n")).strip():  # trailers, then the empty line
                            pass
                        return
                    yield await r.readexactly(size)
                    await r.readexactly(2)
            elif "content-length" in self.headers:
                left = int(self.headers["content-length"])
                while left > 0:
                    piece = await r.read(min(left, 65536))
                    if not piece:
                        raise TransportError(f"the answer ended {left} bytes short of its Content-Length")
                    left -= len(piece)
                    yield piece
            else:
                while piece := await r.read(65536):
                    yield piece
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as e:
            raise TransportError(f"the answer was cut off: {e}") from e
        except ValueError as e:
            raise TransportError(f"malformed chunked body: {e}") from e

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def lines(self) -> AsyncIterator[bytes]:
        buf = b""
        async for piece in self.chunks():
            buf += piece
            *done, buf = buf.split(b"\n")
            for line in done:
                yield line
        if buf:
            yield buf


class UnixHTTP:
    """Requests to one unix socket; ``headers`` go with every request (e.g. Authorization)."""

    def __init__(self, path: Path, headers: dict[str, str] | None = None) -> None:
        self.path = path
        self.headers = headers or {}
        self._open: set[asyncio.StreamWriter] = set()

    async def send(self, method: str, target: str, body: bytes | None = None) -> tuple[Response, asyncio.StreamWriter]:
        """Sends one request; returns the response (head read) and the writer to close when done with it."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_HEAD)
        except OSError as e:
            raise TransportError(e.strerror or str(e), connect=True) from e
        self._open.add(writer)
        head = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close", "Accept: */*"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as e:
            self._close(writer)
            raise TransportError(f"no answer: {e}") from e
        status_line, *fields = raw.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self._close(writer)
            raise TransportError(f"not an HTTP answer: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for field in fields:
            name, sep, value = field.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return Response(int(parts[1]), headers, reader), writer

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        resp, writer = await self.send(method, target, body)
        try:
            return resp.status, await resp.read()
        finally:
            self._close(writer)

    async def close(self) -> None:
        for writer in list(self._open):
            self._close(writer)
