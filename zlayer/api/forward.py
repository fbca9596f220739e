"""Calls to the node that owns a replica: its logs (once, or followed) and an exec in it (the whole output, or
attached over a WebSocket), asked of the owner's API with a peer credential (:mod:`zlayer.cluster.peer`) and
answered here as if the replica were this node's. The user's rights were checked here, by the route; the owner
checks only that the caller is a member, on its routes under ``/api/v1/cluster/peer/`` (:mod:`zlayer.api.peer`).

Where: the owner's overlay address when it published one (its API listens on every address) and this node's
overlay is up (the call then runs inside WireGuard), else its advertise address; ``https`` with the certificate it
published pinned when its API serves TLS. A node that does not answer within :data:`CONNECT` seconds per address,
or that the cluster has marked dead, is a :class:`NodeUnreachable` naming the node, its address and the replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from fastapi import WebSocket
from yarl import URL

from zlayer.api.context import ApiContext
from zlayer.cluster.peer import HEADER
from zlayer.errors import ConflictError, NotFoundError, UsageError, ZLayerError
from zlayer.security.rbac import Actor
from zlayer.state import ContainerRecord

PREFIX = "/api/v1/cluster/peer"
CONNECT = 2.5  # seconds to reach an address of the owner before trying the next (or saying it does not answer)
LOGS_TIMEOUT = 30.0  # a non-followed read of logs
KEEPALIVE = 15.0  # a followed log stream sends an empty line this often; twice that without one: the owner is gone


class NodeUnreachable(ZLayerError):
    """The node that runs a replica cannot be asked now."""

    code = "node_unreachable"
    http_status = 502


def replica_name(rec: ContainerRecord) -> str:
    return f"replica {rec.replica} of {rec.deployment}/{rec.service} ({rec.id})"


@dataclass(frozen=True)
class Owner:
    node: str
    address: str  # advertise address and API port, for messages
    bases: tuple[str, ...]  # URLs to try, in order
    fingerprint: str  # hex SHA-256 of its API certificate, or ""
    what: str  # the replica, for messages

    def ssl(self) -> aiohttp.Fingerprint | bool:
        """The owner's certificate pinned by its published digest (``True``: the usual checks, for plain HTTP)."""
        return aiohttp.Fingerprint(bytes.fromhex(self.fingerprint)) if self.fingerprint else True

    def unreachable(self, why: str) -> NodeUnreachable:
        return NodeUnreachable(f"node {self.node} ({self.address}), where {self.what} runs, {why}",
                               where=f"node {self.node}", hint="zlayer node ls shows the nodes' status")  # fmt: skip


async def owner(c: ApiContext, node: str, rec: ContainerRecord) -> Owner:
    """How to reach node ``node`` for replica ``rec`` (NodeUnreachable at once when the cluster knows it cannot)."""
    what = replica_name(rec)
    cluster, peers = c.cluster, c.peer
    if cluster is None or peers is None or not cluster.in_cluster:
        raise NodeUnreachable(f"{what} runs on node {node}, and this node is not in its cluster now")
    try:
        entry = await cluster.entry(node)
    except NotFoundError:
        raise NodeUnreachable(f"{what} was on node {node}, which is no longer in the cluster") from None
    except ZLayerError as e:
        raise NodeUnreachable(f"{what} runs on node {node}, and the cluster's state cannot be read now: {e}") from e
    address = f"{entry.node.advertise_addr}:{entry.api_port}"
    published = await peers.peer(node)
    fingerprint = str(published.get("tls_sha256") or "")
    scheme = "https" if fingerprint else "http"
    bases = [f"{scheme}://{_host(entry.node.advertise_addr)}:{entry.api_port}"]
    overlay = str(published.get("overlay") or "")
    if overlay and getattr(c.overlay, "up", False):
        bases.insert(0, f"{scheme}://{_host(overlay)}:{entry.api_port}")
    found = Owner(node, address, tuple(bases), fingerprint, what)
    if entry.node.status == "dead":
        raise found.unreachable("is dead (it stopped renewing its lease); its replicas come back when it does")
    if not published.get("public_key"):
        raise found.unreachable("has published no peer key (it has not started in the cluster since it joined)")
    return found


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def _target(path: str, params: dict[str, Any] | None = None) -> str:
    query = urlencode({k: ("true" if v is True else "false" if v is False else v) for k, v in (params or {}).items()
                       if v is not None})  # fmt: skip
    return path + (f"?{query}" if query else "")


def _actor(actor: Actor) -> str:
    return actor.name


async def _request(
    c: ApiContext,
    o: Owner,
    method: str,
    target: str,
    actor: Actor,
    *,
    body: Any = None,
    read: float | None = None,
    total: float | None = None,
) -> tuple[aiohttp.ClientSession, aiohttp.ClientResponse]:
    """An open response of the owner (the caller releases it and closes the session); its errors raised as ours."""
    timeout = aiohttp.ClientTimeout(total=total, connect=CONNECT, sock_connect=CONNECT, sock_read=read)
    http = aiohttp.ClientSession(timeout=timeout)
    failures = []
    try:
        for base in o.bases:
            headers = {HEADER: c.peer.sign(o.node, method, target, _actor(actor))}
            try:
                resp = await http.request(method, URL(base + target, encoded=True), headers=headers, json=body,
                                          ssl=o.ssl())  # fmt: skip
            except aiohttp.ServerFingerprintMismatch:
                failures.append(f"{base}: its TLS certificate is not the one it published")
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                failures.append(f"{base}: {_why(e)}")
                continue
            if resp.status >= 400:
                data = await _error_body(resp)
                resp.release()
                raise _remote_error(o, resp.status, data)
            return http, resp
        raise o.unreachable(f"does not answer ({'; '.join(failures)})")
    except BaseException:
        await http.close()
        raise


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {CONNECT:g} s"
    return str(e) or type(e).__name__


async def _error_body(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        data = json.loads(await resp.read())
        if isinstance(data, dict):
            return data
    return {}


def _remote_error(o: Owner, status: int, data: dict[str, Any]) -> ZLayerError:
    message = str(data.get("message") or f"HTTP {status}")
    hint = data.get("hint") if isinstance(data.get("hint"), str) else None
    if status in (401, 403):
        return NodeUnreachable(f"node {o.node} ({o.address}) refused this node's call for {o.what}: {message}",
                               where=f"node {o.node}")  # fmt: skip
    kind = {400: UsageError, 404: NotFoundError, 409: ConflictError}.get(status)
    if kind is not None:
        return kind(message, where=data.get("where") if isinstance(data.get("where"), str) else None, hint=hint)
    return o.unreachable(f"answered {status}: {message}")


def _container_path(rec: ContainerRecord, tail: str) -> str:
    return f"{PREFIX}/containers/{quote(rec.id, safe='')}/{tail}"


# ----------------------------------------------------------------------------------------------------- logs


async def logs(c: ApiContext, node: str, rec: ContainerRecord, tail: int | None, actor: Actor) -> list[str]:
    """The replica's last ``tail`` lines (all: None) as ``[stream] message``, from the node that runs it."""
    o = await owner(c, node, rec)
    target = _target(_container_path(rec, "logs"), {"tail": tail})
    http, resp = await _request(c, o, "GET", target, actor, total=LOGS_TIMEOUT)
    try:
        text = (await resp.read()).decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as e:
        raise o.unreachable(f"broke off while sending its logs: {_why(e)}") from e
    finally:
        resp.release()
        await http.close()
    return [line for line in text.split("\n") if line]


class LogStream:
    """A followed log of a replica on another node: its last lines, then each new one as it is written."""

    def __init__(self, owner: Owner, http: aiohttp.ClientSession, resp: aiohttp.ClientResponse) -> None:
        self.owner = owner
        self.http = http
        self.resp = resp

    async def lines(self) -> AsyncIterator[str]:
        """Each line, until the replica stops (its log ends, as a local one's does); a last ``[zlayer] ...`` line
        when the owner stops answering."""
        buf = b""
        try:
            async for chunk in self.resp.content.iter_any():
                buf += chunk
                *done, buf = buf.split(b"\n")
                for raw in done:
                    if raw:
                        yield raw.decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as e:
            yield f"[zlayer] {self.owner.unreachable(f'stopped answering ({_why(e)})')}"

    async def close(self) -> None:
        self.resp.release()
        await self.http.close()


async def follow(c: ApiContext, node: str, rec: ContainerRecord, tail: int, actor: Actor) -> LogStream:
    """Open the replica's followed log on its node (the last ``tail`` lines first)."""
    o = await owner(c, node, rec)
    target = _target(_container_path(rec, "logs"), {"tail": tail, "follow": True})
    http, resp = await _request(c, o, "GET", target, actor, read=2 * KEEPALIVE)
    return LogStream(o, http, resp)


# ----------------------------------------------------------------------------------------------------- exec


async def exec_(c: ApiContext, node: str, rec: ContainerRecord, command: list[str], actor: Actor) -> dict[str, Any]:
    """Run ``command`` in the replica on its node: ``{exit_code, stdout, stderr, oom_killed}``."""
    o = await owner(c, node, rec)
    http, resp = await _request(c, o, "POST", _container_path(rec, "exec"), actor, body={"command": command})
    try:
        data = json.loads(await resp.read())
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise o.unreachable(f"broke off during the exec: {_why(e)}") from e
    finally:
        resp.release()
        await http.close()
    if not isinstance(data, dict) or not isinstance(data.get("exit_code"), int):
        raise o.unreachable("answered the exec with something that is no exec result")
    return data


_GONE = (OSError, RuntimeError, aiohttp.ClientError)


async def relay_exec(ws: WebSocket, c: ApiContext, node: str, rec: ContainerRecord, first: str, actor: Actor) -> None:
    """An attached exec (``ws``, accepted, its first frame ``first`` read) run by the replica's node: the frames
    go through both ways as they are (:mod:`zlayer.api.exec_stream`), until the command's end or either side goes.
    Raises the errors of reaching the node, before anything is relayed."""
    o = await owner(c, node, rec)
    path = _container_path(rec, "exec")
    timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT, sock_connect=CONNECT))
    try:
        remote = None
        failures = []
        for base in o.bases:
            url = URL(base.replace("http", "ws", 1) + path, encoded=True)
            headers = {HEADER: c.peer.sign(o.node, "WEBSOCKET", path, _actor(actor))}
            try:
                remote = await http.ws_connect(url, headers=headers, ssl=o.ssl(),
                                               timeout=timeout, max_msg_size=0, autoping=True)  # fmt: skip
                break
            except aiohttp.WSServerHandshakeError as e:
                if e.status in (401, 403):
                    raise NodeUnreachable(f"node {o.node} ({o.address}) refused this node's call for {o.what}: "
                                          f"{e.message}", where=f"node {o.node}") from e  # fmt: skip
                failures.append(f"{base}: {_why(e)}")
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                failures.append(f"{base}: {_why(e)}")
        if remote is None:
            raise o.unreachable(f"does not answer ({'; '.join(failures)})")
        await remote.send_str(first)
        await _relay(ws, remote, o)
    finally:
        await http.close()


async def _relay(ws: WebSocket, remote: aiohttp.ClientWebSocketResponse, o: Owner) -> None:
    from zlayer.api.app import error_body

    async def upward() -> None:  # the client's input and resizes, to the owner
        while True:
            try:
                msg = await ws.receive()
            except _GONE:
                msg = {"type": "websocket.disconnect"}
            if msg["type"] == "websocket.disconnect":
                await remote.close()  # the owner hangs the command up
                return
            with contextlib.suppress(*_GONE):
                if msg.get("bytes") is not None:
                    await remote.send_bytes(msg["bytes"])
                elif msg.get("text") is not None:
                    await remote.send_str(msg["text"])

    feeder = asyncio.ensure_future(upward())
    ended = False
    try:
        async for msg in remote:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                ended = True  # the exit code, or the owner's refusal: either way its last word
                await ws.send_text(msg.data)
            else:
                break
        if not ended:
            if remote.close_code == 1008:  # refused before the exec began (its credential, or the request)
                why = f"refused this node's call for {o.what} (its log says why)"
                err = NodeUnreachable(f"node {o.node} ({o.address}) {why}", where=f"node {o.node}")
            else:
                err = o.unreachable("stopped answering before the command ended")
            await ws.send_text(json.dumps(error_body(err.http_status, err.to_json())))
        with contextlib.suppress(*_GONE):
            await ws.close()
    except _GONE:
        await remote.close()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, *_GONE):
            await feeder


__all__ = ["LogStream", "NodeUnreachable", "Owner", "exec_", "follow", "logs", "owner", "relay_exec"]
