"""Exec with its stdio attached, over a WebSocket (``zlayer exec -i``/``-t``). ZLayer's exec routes answer a POST
with the command's whole output once it has ended; the same paths also take a WebSocket, for a command whose input
the client feeds while it runs and whose output arrives as it is written.

Frames. The client's first is text, JSON ``{"command": [...], "stdin": bool, "tty": bool, "rows": R, "cols": C,
"replica": N}`` (:class:`~zlayer.api.models.ExecStreamRequest`); after it, binary ``\\x00`` + bytes is input
(``\\x00`` alone ends it) and text ``{"resize": [rows, cols]}`` resizes the terminal. The daemon sends binary
``\\x01`` + bytes (stdout) and ``\\x02`` + bytes (stderr), then text ``{"exit_code": N, "oom_killed": bool}``, and
closes. A refusal is one text frame with the API's error body (``{"error", "code", "message", ...}``), then the
close. A client that goes away hangs the command up (SIGHUP, then SIGTERM), as a terminal does. A replica of another
node of the cluster: the frames go through this node to that node's API and back as they are
(:func:`zlayer.api.forward.relay_exec`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from zlayer.api import forward
from zlayer.api.app import error_body
from zlayer.api.auth import actor_of
from zlayer.api.context import ApiContext
from zlayer.api.models import ExecStreamRequest
from zlayer.errors import InternalError, UsageError, ZLayerError
from zlayer.limits import json_limit_problem, load_json
from zlayer.runtime.protocol import ContainerId, ExecSession
from zlayer.state import ContainerRecord

log = logging.getLogger("zlayer.api")
STDIN, STDOUT, STDERR = b"\x00", b"\x01", b"\x02"
Target = Callable[[ExecStreamRequest], Awaitable[tuple[str, ContainerRecord]]]  # (node: "" for this one, replica)
_GONE = (WebSocketDisconnect, OSError, RuntimeError)  # what sending to a client that left raises


async def serve(ws: WebSocket, c: ApiContext, target: Target) -> None:
    """Run one exec for ``ws``: ``target`` picks the replica from the request (raising the API's errors)."""
    await ws.accept()
    try:
        first = _within_limits(await ws.receive_text())
        req = ExecStreamRequest.model_validate_json(first)
        node, rec = await target(req)
        if node:
            await forward.relay_exec(ws, c, node, rec, first, actor_of(ws))
            return
        size = (req.rows, req.cols) if req.rows and req.cols else None
        driver = await c.driver(rec.id)
        session = await driver.exec_session(ContainerId.parse(rec.id), req.command, stdin=req.stdin, tty=req.tty,
                                            size=size)  # fmt: skip
    except _GONE:
        return
    except (ValidationError, ZLayerError) as e:
        await _refuse(ws, e if isinstance(e, ZLayerError) else _invalid(e))
        return
    except Exception as e:  # a bug: the client gets the API's 500 body, the log the traceback, the daemon lives on
        log.error("exec session failed to start", exc_info=e)
        await _refuse(ws, InternalError(f"{type(e).__name__}: {e}"))
        return
    feeder = asyncio.ensure_future(_feed(ws, session))
    try:
        async for stream, piece in session.output():
            await ws.send_bytes((STDOUT if stream == "stdout" else STDERR) + piece)
    except _GONE:
        session.kill()
    finally:
        feeder.cancel()
    res = await session.wait()
    await c.manager.exec_done(rec, req.command, res)
    with contextlib.suppress(*_GONE):
        await ws.send_text(json.dumps({"exit_code": res.exit_code, "oom_killed": res.oom_killed}))
        await ws.close()


async def _refuse(ws: WebSocket, err: ZLayerError) -> None:
    with contextlib.suppress(*_GONE):
        await ws.send_text(json.dumps(error_body(err.http_status, err.to_json())))
        await ws.close()


def _within_limits(text: str) -> str:
    """The first frame is checked as every JSON body is (size, nesting) before a parser sees it."""
    problem = json_limit_problem(text.encode())
    if problem is not None:
        raise UsageError(f"invalid exec request: {problem}", where="body")
    return text


def _invalid(e: ValidationError) -> UsageError:
    first = e.errors()[0]
    return UsageError(f"invalid exec request: {first['msg']}", where=".".join(map(str, first["loc"])) or None)


async def _feed(ws: WebSocket, session: ExecSession) -> None:
    while True:
        try:
            msg = await ws.receive()
        except _GONE:
            msg = {"type": "websocket.disconnect"}
        if msg["type"] == "websocket.disconnect":
            session.kill()
            return
        data, text = msg.get("bytes"), msg.get("text")
        if data is not None and data[:1] == STDIN:
            await (session.write(data[1:]) if len(data) > 1 else session.close_stdin())
        elif text:
            with contextlib.suppress(ZLayerError, ValueError, TypeError, KeyError):
                rows, cols = load_json(text, where="resize frame")["resize"]
                session.resize(int(rows), int(cols))
