"""The daemon's DNS server: service names of the asking container's deployment resolve to replica addresses.

Names (as ZLayer registers them): ``{service}``, ``{service}.service.local`` (every replica, one A record each) and
``{replica}.{service}.service.local``. The asker is identified by its source address, so a container only sees the
services of its own deployment. Anything else is forwarded to the node's resolvers; with none it is NXDOMAIN.
In a cluster the daemon's lookup (zlayer.daemon.wiring) answers with the overlay addresses of the deployment's
replicas on every node (zlayer.overlay.cluster), also on ZLayer's port 15353 of 127.0.0.1 and the node's overlay
address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from collections.abc import Callable
from typing import Any

from zlayer.net.ports import bound_socket

TYPE_A, CLASS_IN = 1, 1
RCODE_NXDOMAIN, RCODE_SERVFAIL, RCODE_FORMERR = 3, 2, 1

Lookup = Callable[[str, str], list[str]]  # (asker ip, qname) -> addresses


def parse_query(data: bytes) -> tuple[int, int, str, int, int, int]:
    """(id, flags, qname, qtype, qclass, end offset of the question); ValueError when malformed."""
    if len(data) < 12:
        raise ValueError("short packet")
    qid, flags, qd = struct.unpack("!HHH", data[:6])
    if qd != 1:
        raise ValueError("expected one question")
    labels, pos = [], 12
    while True:
        if pos >= len(data):
            raise ValueError("truncated name")
        n = data[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(data):
            raise ValueError("bad label")
        labels.append(data[pos : pos + n].decode("ascii", "replace"))
        pos += n
    if pos + 4 > len(data):
        raise ValueError("truncated question")
    qtype, qclass = struct.unpack("!HH", data[pos : pos + 4])
    return qid, flags, ".".join(labels).lower(), qtype, qclass, pos + 4


def build_answer(query: bytes, qend: int, addrs: list[str], qtype: int, rcode: int = 0, ttl: int = 5) -> bytes:
    qid, flags = struct.unpack("!HH", query[:4])
    answers = [a for a in addrs if qtype == TYPE_A] if rcode == 0 else []
    rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # response, authoritative, RD copied, RA
    header = struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0)
    body = query[12:qend]
    for a in answers:
        body += struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4) + socket.inet_aton(a)
    return header + body


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: Any = None
        self.pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = asyncio.ensure_future(self.server.handle(data, addr, self.transport))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future[bytes]) -> None:
        self.fut = fut

    def datagram_received(self, reply: bytes, _: Any) -> None:
        if not self.fut.done():
            self.fut.set_result(reply)


class DnsServer:
    """A UDP DNS server answering from ``lookup`` and forwarding the rest to ``upstreams``."""

    def __init__(self, lookup: Lookup, upstreams: list[str] | None = None) -> None:
        self.lookup = lookup
        self.upstreams = upstreams or []
        self.transport: Any = None

    async def start(self, host: str, port: int, netns: str | None = None) -> None:
        sock = bound_socket("udp", host, port, netns)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)

    async def handle(self, data: bytes, addr: Any, transport: Any) -> None:
        try:
            _, _, qname, qtype, _, qend = parse_query(data)
        except ValueError:
            if len(data) >= 12:
                transport.sendto(data[:2] + struct.pack("!H", 0x8000 | RCODE_FORMERR) + bytes(8), addr)
            return
        addrs = self.lookup(addr[0], qname.rstrip("."))
        if addrs:
            transport.sendto(build_answer(data, qend, addrs, qtype), addr)
            return
        reply = await self._forward(data)
        transport.sendto(reply if reply is not None else build_answer(data, qend, [], qtype, RCODE_NXDOMAIN), addr)

    async def _forward(self, data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        for up in self.upstreams:
            fut: asyncio.Future[bytes] = loop.create_future()
            with contextlib.suppress(OSError, TimeoutError):
                tr, _ = await loop.create_datagram_endpoint(functools.partial(_Reply, fut), remote_addr=(up, 53))
                try:
                    tr.sendto(data)
                    return await asyncio.wait_for(fut, 2.0)
                finally:
                    tr.close()
        return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def service_records(members: dict[str, tuple[str, str]], leases: dict[str, str]) -> Callable[[str, str], list[str]]:
    """The lookup used by the daemon: names of the asker's deployment from the node network's members."""

    def lookup(asker: str, qname: str) -> list[str]:
        me = next((c for c, ip in leases.items() if ip == asker), None)
        if me is None or me not in members:
            return []
        deployment = members[me][0]
        out: list[str] = []
        for c, (dep, svc) in sorted(members.items()):
            if dep != deployment or c not in leases:
                continue
            replica = c.rsplit("-", 1)[-1]
            if qname in (svc, f"{svc}.service.local", f"{replica}.{svc}.service.local") and (
                qname != f"{replica}.{svc}.service.local" or c.endswith(f"-{replica}")
            ):
                out.append(leases[c])
        return out

    return lookup
