"""Active backend health checks: tcp_connect, udp_probe (request, expect regex) and http (GET, status).

ZLayer's numbers: a check every 5 s with a 2 s timeout; 3 consecutive failures make a backend unhealthy, one success
makes it healthy again. Results go to the data planes through a callback; nothing here is on the traffic path.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from zlayer.proxy.models import HealthCheckSpec

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 2.0
UNHEALTHY_AFTER = 3


async def tcp_connect(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def udp_probe(host: str, port: int, request: str, expect: str | None, timeout: float) -> bool:
    """Sends ``request``; healthy when a reply comes within the timeout and matches ``expect`` (a regex) if given."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        transport, proto = await loop.create_datagram_endpoint(_UdpProbe, remote_addr=(host, port), family=family)
    except OSError:
        return False
    try:
        transport.sendto(request.encode())
        reply = await asyncio.wait_for(proto.reply, timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        transport.close()
    return expect is None or re.search(expect, reply.decode(errors="replace")) is not None


async def http_check(host: str, port: int, path: str, expect_status: int | None, timeout: float) -> bool:
    """GET ``path`` over HTTP/1.1; healthy on ``expect_status`` (or any status below 500 when None)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: zlayer-health\r\nConnection: close\r\n\r\n"
        writer.write(head.encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False
    status = int(parts[1])
    return status == expect_status if expect_status is not None else status < 500


async def check(spec: HealthCheckSpec, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
    if spec.kind == "udp_probe":
        return await udp_probe(host, port, spec.request, spec.expect, timeout)
    if spec.kind == "http":
        return await http_check(host, port, spec.path, spec.expect_status, timeout)
    return await tcp_connect(host, port, timeout)


@dataclass
class BackendHealth:
    """What the checker knows about one backend of one group."""

    healthy: bool = True
    consecutive_failures: int = 0

    def record(self, ok: bool) -> bool:
        """Applies one result; returns True when the healthy flag changed."""
        before = self.healthy
        if ok:
            self.consecutive_failures = 0
            self.healthy = True
        else:
            self.consecutive_failures += 1
            if self.consecutive_failures >= UNHEALTHY_AFTER:
                self.healthy = False
        return before != self.healthy


class HealthChecker:
    """Checks every backend of every registered group each ``interval`` (at most 64 checks at once)."""

    def __init__(
        self,
        on_change: Callable[[str, str, int, bool], None],
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.on_change = on_change
        self.interval = interval
        self.timeout = timeout
        self._groups: dict[str, tuple[HealthCheckSpec, list[tuple[str, int]]]] = {}
        self.state: dict[tuple[str, str, int], BackendHealth] = {}
        self._task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(64)
        self._known: dict[tuple[str, str, int], bool] = {}

    def seed(self, known: Mapping[tuple[str, str, int], bool]) -> None:
        """Last known health of backends (from a re-adopted data plane): a backend registered later starts with it
        instead of healthy, and keeps it until its first check."""
        self._known = dict(known)

    def _initial(self, key: tuple[str, str, int]) -> BackendHealth:
        if self._known.get(key, True):
            return BackendHealth()
        return BackendHealth(healthy=False, consecutive_failures=UNHEALTHY_AFTER)

    def set_group(self, group: str, spec: HealthCheckSpec, backends: list[tuple[str, int]]) -> None:
        self._groups[group] = (spec, list(backends))
        keep = {(group, h, p) for h, p in backends}
        for key in [k for k in self.state if k[0] == group and k not in keep]:
            del self.state[key]
        for h, p in backends:
            if (group, h, p) not in self.state:
                self.state[(group, h, p)] = self._initial((group, h, p))

    def remove_group(self, group: str) -> None:
        self._groups.pop(group, None)
        for key in [k for k in self.state if k[0] == group]:
            del self.state[key]

    def health(self, group: str, host: str, port: int) -> BackendHealth:
        return self.state.get((group, host, port)) or BackendHealth()

    async def run_once(self) -> None:
        jobs = []
        for group, (spec, backends) in list(self._groups.items()):
            if spec.kind == "none":
                continue
            for host, port in backends:
                jobs.append(self._one(group, spec, host, port))
        await asyncio.gather(*jobs)

    async def _one(self, group: str, spec: HealthCheckSpec, host: str, port: int) -> None:
        async with self._sem:
            ok = await check(spec, host, port, self.timeout)
        state = self.state.get((group, host, port))
        if state is None:  # the backend went away while it was checked
            return
        state.record(ok)
        self.on_change(group, host, port, state.healthy)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="zlayer-proxy-health")

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


__all__ = ["BackendHealth", "HealthChecker", "check", "http_check", "tcp_connect", "udp_probe"]
