"""The HTTP/1.1 server of the Docker Engine API shim, on its unix socket.

Docker's API needs what ASGI cannot give: a *hijacked* connection (attach and exec start answer ``101 UPGRADED``, or
``200`` on old clients, and from then on the socket carries the container's raw stdio both ways, half-closed by the
client at the end of its input). So the shim parses requests with h11 (the parser uvicorn uses) and keeps the socket:
a handler returns a :class:`Response` (JSON, bytes or a streamed body) or a :class:`Hijack` that gets the reader and
writer. Every failure is Docker's ``{"message": ...}`` with Docker's status; a handler's bug is a 500 with the
message, logged, never a dropped connection or a dead daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from zlayer.errors import ZLayerError
from zlayer.limits import MAX_JSON_BYTES, json_limit_problem

log = logging.getLogger("zlayer.dockerapi")

API_VERSION = "1.43"  # the newest Engine API version the shim serves (Docker 24)
MIN_API_VERSION = "1.24"  # the oldest (Docker 1.12), as dockerd's default minimum
MAX_BODY = 8 << 30  # an image archive (`docker load`) or a copied tar may be large; JSON is bounded apart
_VERSIONED = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


class DockerError(Exception):
    """An answer in Docker's error shape: ``status`` and ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def from_zlayer(err: ZLayerError) -> DockerError:
    """A zlayer error as Docker says it: its status (404 unknown, 409 conflict, 400 bad input, 500 the node) and the
    message with the hint."""
    status = err.http_status if err.http_status in (400, 401, 403, 404, 409, 413, 422, 500, 502, 507) else 500
    if status in (413, 422):
        status = 400
    msg = err.message + (f" ({err.hint})" if err.hint else "")
    return DockerError(status, msg)


@dataclass
class Request:
    method: str
    path: str  # without the /v1.xx prefix
    version: tuple[int, int]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)

    def q(self, name: str, default: str = "") -> str:
        got = self.query.get(name)
        return got[-1] if got else default

    def flag(self, name: str, default: bool = False) -> bool:
        got = self.query.get(name)
        if not got:
            return default
        return got[-1].lower() not in ("0", "false", "no", "")

    def integer(self, name: str, default: int | None = None) -> int | None:
        got = self.q(name)
        if got == "":
            return default
        try:
            return int(got)
        except ValueError:
            raise DockerError(400, f"invalid value for {name}: {got!r} is not an integer") from None

    def json(self, *, required: bool = False) -> Any:
        if not self.body.strip():
            if required:
                raise DockerError(400, "request body is empty; a JSON object is expected")
            return {}
        if len(self.body) > MAX_JSON_BYTES:
            raise DockerError(413, f"request body too large (at most {MAX_JSON_BYTES} bytes of JSON)")
        problem = json_limit_problem(self.body)
        if problem is not None:
            raise DockerError(400, f"request body: {problem}")
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise DockerError(400, f"invalid JSON in the request body: {e}") from None

    def filters(self) -> dict[str, list[str]]:
        """Docker's ``filters`` query: ``{"name": ["a"]}`` or the old ``{"name": {"a": true}}``."""
        raw = self.q("filters")
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise DockerError(400, f"invalid filter: {raw!r} is not JSON") from None
        if not isinstance(doc, dict):
            raise DockerError(400, "invalid filter: expected a JSON object")
        out: dict[str, list[str]] = {}
        for k, v in doc.items():
            if isinstance(v, dict):
                out[k] = [str(x) for x, on in v.items() if on]
            elif isinstance(v, list):
                out[k] = [str(x) for x in v]
            else:
                raise DockerError(400, f"invalid filter {k!r}")
        return out


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    stream: AsyncIterator[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(doc).encode() + b"\n")


def no_content(status: int = 204) -> Response:
    return Response(status, b"", content_type="")


HijackFn = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@dataclass
class Hijack:
    """Take the connection over: ``run(reader, writer, already_read)``; ``content_type`` is the raw stream's."""

    run: HijackFn
    content_type: str = "application/vnd.docker.raw-stream"


Handler = Callable[[Request], Awaitable[Response | Hijack]]


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        rx = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)",
                                                                          pattern)) + "$")  # fmt: skip

        def add(fn: Handler) -> Handler:
            self.routes.append((method, rx, fn))
            return fn

        return add

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for m, rx, fn in self.routes:
            got = rx.match(path)
            if got is None:
                continue
            if m == method or (method == "HEAD" and m == "GET"):
                return fn, {k: unquote(v) for k, v in got.groupdict().items()}
            allowed = True
        if allowed:
            raise DockerError(405, f"method {method} is not allowed on {path}")
        raise DockerError(404, "page not found")


def _version(path: str) -> tuple[str, tuple[int, int]]:
    m = _VERSIONED.match(path)
    if m is None:
        return path, tuple(int(x) for x in API_VERSION.split("."))  # type: ignore[return-value]
    ver = (int(m[1]), int(m[2]))
    top = tuple(int(x) for x in API_VERSION.split("."))
    low = tuple(int(x) for x in MIN_API_VERSION.split("."))
    if ver > top:
        raise DockerError(400, f"client version {m[1]}.{m[2]} is too new. Maximum supported API version is "
                               f"{API_VERSION}")  # fmt: skip
    if ver < low:
        raise DockerError(400, f"client version {m[1]}.{m[2]} is too old. Minimum supported API version is "
                               f"{MIN_API_VERSION}, please upgrade your client to a newer version")  # fmt: skip
    return m[3], ver


class Server:
    """Serves a :class:`Router` on a listening unix socket."""

    def __init__(self, router: Router, server_header: str) -> None:
        self.router = router
        self.server_header = server_header
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self, sock: Any) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=1 << 20)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    def _base_headers(self) -> list[tuple[str, str]]:
        return [("Api-Version", API_VERSION), ("Docker-Experimental", "false"), ("Ostype", "linux"),
                ("Server", self.server_header)]  # fmt: skip

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("docker API connection failed")
        finally:
            if task is not None:
                self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        while True:
            req_event: h11.Request | None = None
            chunks: list[bytes] = []
            size = 0
            too_big = False
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await reader.read(1 << 16)
                    conn.receive_data(data)
                    if not data and conn.their_state is h11.IDLE:
                        return
                    continue
                if isinstance(ev, h11.ConnectionClosed):
                    return
                if isinstance(ev, h11.Request):
                    req_event = ev
                elif isinstance(ev, h11.Data):
                    size += len(ev.data)
                    if size > MAX_BODY:
                        too_big = True
                    else:
                        chunks.append(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    break
            assert req_event is not None
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req_event.headers}
            target = req_event.target.decode("latin-1")
            split = urlsplit(target)
            method = req_event.method.decode()
            try:
                if too_big:
                    raise DockerError(413, f"request body too large (at most {MAX_BODY} bytes)")
                path, ver = _version(split.path)
                fn, params = self.router.find(method, path)
                req = Request(method, path, ver, parse_qs(split.query, keep_blank_values=True), headers,
                              b"".join(chunks), params)  # fmt: skip
                result = await fn(req)
            except DockerError as e:
                result = json_response({"message": e.message}, e.status)
            except ZLayerError as e:
                d = from_zlayer(e)
                result = json_response({"message": d.message}, d.status)
            except Exception as e:
                log.exception("docker API %s %s failed", method, target)
                result = json_response({"message": f"{type(e).__name__}: {e}"}, 500)
            if isinstance(result, Hijack):
                await self._hijack(conn, reader, writer, headers, result)
                return
            await self._respond(conn, writer, method, result)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, method: str, r: Response) -> None:
        headers = [*self._base_headers(), *r.headers]
        if r.content_type:
            headers.append(("Content-Type", r.content_type))
        if r.stream is None:
            headers.append(("Content-Length", str(len(r.body))))
            writer.write(conn.send(h11.Response(status_code=r.status, headers=headers)) or b"")
            if method != "HEAD" and r.body:
                writer.write(conn.send(h11.Data(data=r.body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return
        writer.write(conn.send(h11.Response(status_code=r.status, headers=headers)) or b"")
        await writer.drain()
        stream = r.stream
        try:
            async for piece in stream:
                if piece:
                    writer.write(conn.send(h11.Data(data=piece)) or b"")
                    await writer.drain()
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    async def _hijack(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        h: Hijack,
    ) -> None:
        upgrade = "upgrade" in headers.get("connection", "").lower() and headers.get("upgrade", "")
        head = "HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n" if upgrade else "HTTP/1.1 200 OK\r\n"
        head += f"Content-Type: {h.content_type}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self._base_headers()) + "\r\n"
        writer.write(head.encode("latin-1"))
        await writer.drain()
        rest = b""
        with contextlib.suppress(Exception):
            rest = bytes(conn.trailing_data[0])
        await h.run(reader, writer, rest)
        with contextlib.suppress(Exception):
            await writer.drain()


async def json_lines(items: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for doc in items:
        yield json.dumps(doc).encode() + b"\r\n"


__all__ = [
    "API_VERSION",
    "MIN_API_VERSION",
    "DockerError",
    "Hijack",
    "Request",
    "Response",
    "Router",
    "Server",
    "json_response",
    "no_content",
]
