"""The SDK's own HTTP/1.1 over the daemon's unix socket: every body framing a server may use, cut-off answers and
a missing socket each give the Client's errors, not a traceback from the transport."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from zlayer.client import Client
from zlayer.errors import DaemonError, NotFoundError

Answer = Callable[[bytes], bytes]


def serve(tmp_path: Path, answer: Answer, go: Callable[[Client], Awaitable[None]]) -> list[bytes]:
    """Runs ``go`` against a unix-socket server that replies ``answer(request head + body)`` and closes."""
    sock = tmp_path / "d.sock"
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")), 0
        )
        req = head + (await reader.readexactly(length) if length else b"")
        seen.append(req)
        writer.write(answer(req))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, str(sock))
        async with server, Client(socket=sock, auto_start=False, timeout=5) as client:
            await go(client)

    asyncio.run(main())
    return seen


def test_json_with_length_chunked_and_until_close(tmp_path: Path) -> None:
    bodies = {
        b"/len": b'HTTP/1.1 200 OK\r\nContent-Length: 9\r\nContent-Type: application/json\r\n\r\n{"a": 1} ',
        b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"b"\r\n3\r\n: 2\r\n1;x=y\r\n}\r\n0\r\n\r\n',
        b"/close": b'HTTP/1.0 200 OK\r\n\r\n{"c": 3}',
        b"/none": b"HTTP/1.1 204 No Content\r\n\r\n",
    }
    got: dict[str, object] = {}

    async def go(client: Client) -> None:
        for path in ("/len", "/chunked", "/close", "/none"):
            got[path] = await client.request("GET", path, params={"x": "a b", "f": True, "skip": None})
        got["post"] = await client.request("POST", "/len", json_body={"spec": "é"})

    seen = serve(tmp_path, lambda req: bodies[req.split(b" ")[1].split(b"?")[0]], go)
    assert got == {"/len": {"a": 1}, "/chunked": {"b": 2}, "/close": {"c": 3}, "/none": None, "post": {"a": 1}}
    assert seen[0].startswith(b"GET /len?x=a+b&f=true HTTP/1.1\r\n")
    assert seen[-1].endswith(b'\r\n\r\n{"spec": "\\u00e9"}') and b"Content-Type: application/json" in seen[-1]


def test_error_statuses_become_the_daemons_errors(tmp_path: Path) -> None:
    body = b'{"code": "not_found", "message": "no such thing"}'
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def go(client: Client) -> None:
        with pytest.raises(NotFoundError, match="no such thing") as e:
            await client.request("GET", "/api/v1/deployments/x")
        assert e.value.code == "not_found"

    serve(tmp_path, lambda _: answer, go)


def test_cut_off_and_garbage_answers_are_clear_errors(tmp_path: Path) -> None:
    answers = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", b"SSH-2.0-OpenSSH\r\n\r\n"])

    async def go(client: Client) -> None:
        with pytest.raises(DaemonError, match="short of its Content-Length"):
            await client.request("GET", "/a")
        with pytest.raises(DaemonError, match="not an HTTP answer"):
            await client.request("GET", "/b")

    serve(tmp_path, lambda _: next(answers), go)


def test_event_stream_lines_and_a_missing_socket(tmp_path: Path) -> None:
    sse = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(p), p) for p in (b"data: {\"seq\"", b": 1}\n\ndata:", b'{"seq": 2}\r\n\r\n')
    ) + b"0\r\n\r\n"  # fmt: skip
    lines: list[str] = []

    async def go(client: Client) -> None:
        async for data in client.stream("/events", {"after": 0}):
            lines.append(data)

    serve(tmp_path, lambda _: sse, go)
    assert lines == ['{"seq": 1}', '{"seq": 2}']

    async def missing() -> None:
        async with Client(socket=tmp_path / "nobody.sock", auto_start=False) as client:
            await client.request("GET", "/health/ready")

    with pytest.raises(DaemonError, match="no zlayer daemon is listening"):
        asyncio.run(missing())
