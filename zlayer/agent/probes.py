"""Health checks and init actions: TCP connect, HTTP GET, and commands run inside the container.

HTTP is spoken directly over asyncio streams (one GET, read the status line) so a probe costs one connection and no
client library; ``localhost``/``127.0.0.1`` in a URL are rewritten to the replica's address as ZLayer does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from zlayer.errors import RuntimeFailure

if TYPE_CHECKING:
    from zlayer.spec.models import HealthSpec, InitStep

ExecFn = Callable[[list[str]], Awaitable[tuple[int, str]]]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str = ""


def _why(e: BaseException) -> str:
    """An exception as a reason: its text, else its kind (TimeoutError() and the like have no text)."""
    if isinstance(e, TimeoutError):
        return str(e) or "timed out"
    return str(e) or type(e).__name__


async def tcp_probe(host: str, port: int, timeout: float) -> ProbeResult:
    # asyncio.timeout rather than wait_for (no extra task per probe), and no wait for the close to complete: with
    # fifty replicas checked every second this is most of what an idle daemon does.
    try:
        async with asyncio.timeout(timeout):
            _, w = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as e:
        return ProbeResult(False, f"tcp {host}:{port}: {_why(e)}")
    w.close()
    return ProbeResult(True, f"tcp {host}:{port} open")


def rewrite_url(url: str, ip: str) -> str:
    if not ip:
        return url
    parts = urlsplit(url)
    if parts.hostname in ("localhost", "127.0.0.1"):
        netloc = ip + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


async def http_status(url: str, timeout: float) -> int:
    """GET ``url`` and return the status code; raises OSError/TimeoutError/ValueError on failure."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", ""):
        raise ValueError(f"only http:// URLs can be probed, got {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query

    async def go() -> int:
        r, w = await asyncio.open_connection(host, port)
        try:
            w.write(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nUser-Agent: zlayer-health\r\n\r\n".encode())
            await w.drain()
            line = await r.readline()
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                raise ValueError(f"not an HTTP response: {line[:60]!r}")
            return int(fields[1])
        finally:
            w.close()

    return await asyncio.wait_for(go(), timeout)


async def http_probe(url: str, expect: int | None, timeout: float) -> ProbeResult:
    try:
        status = await http_status(url, timeout)
    except (OSError, TimeoutError, ValueError) as e:
        return ProbeResult(False, f"GET {url}: {_why(e)}")
    ok = status == expect if expect is not None else 200 <= status < 300
    return ProbeResult(ok, f"GET {url}: {status}")


async def run_health_check(health: HealthSpec, ip: str, port: int, exec_fn: ExecFn) -> ProbeResult:
    """One check of a replica: tcp/http against its address (a tcp check on port 0 checks ``port``, the service's
    backend port), command inside it (exit 0 = healthy)."""
    from zlayer.spec.models import CommandCheck, HttpCheck

    check, timeout = health.check, health.timeout_seconds
    if isinstance(check, HttpCheck):
        return await http_probe(rewrite_url(check.url, ip), check.expect_status, timeout)
    if isinstance(check, CommandCheck):
        try:
            code, out = await asyncio.wait_for(exec_fn(["/bin/sh", "-c", check.command]), timeout)
        except TimeoutError:
            return ProbeResult(False, f"command timed out after {timeout:g}s")
        except Exception as e:
            return ProbeResult(False, f"command could not run: {e}")
        return ProbeResult(code == 0, f"exit {code}: {out.strip()[-200:]}")
    return await tcp_probe(ip or "127.0.0.1", check.port or port, timeout)


async def _wait_loop(fn: Callable[[], Awaitable[ProbeResult]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    last = ProbeResult(False, "not tried")
    while True:
        last = await fn()
        if last.ok:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeFailure(f"{what} not ready after {limit:g}s: {last.detail}")
        await asyncio.sleep(min(2.0, remaining))  # ZLayer retries every 2 s; the last try lands on the deadline


async def run_init_step(step: InitStep, exec_fn: ExecFn | None) -> None:
    """Run one init step; raises RuntimeFailure saying which step and why."""
    p = step.with_
    where = f"init step {step.id!r} ({step.uses})"
    if step.uses == "init.wait_tcp":
        if "host" not in p or not isinstance(p.get("port"), int):
            raise RuntimeFailure(f"{where}: missing 'host' or invalid 'port' parameter")
        limit = float(p.get("timeout", 30))
        await _wait_loop(
            lambda: tcp_probe(str(p["host"]), int(p["port"]), 5.0), limit, f"{where}: {p['host']}:{p['port']}"
        )
    elif step.uses == "init.wait_http":
        if "url" not in p:
            raise RuntimeFailure(f"{where}: missing 'url' parameter")
        expect = p.get("expect_status")
        limit = float(p.get("timeout", 30))
        await _wait_loop(lambda: http_probe(str(p["url"]), expect, 5.0), limit, f"{where}: {p['url']}")
    elif step.uses == "init.run":
        if "command" not in p:
            raise RuntimeFailure(f"{where}: missing 'command' parameter")
        if exec_fn is None:
            raise RuntimeFailure(f"{where}: the container is not running")
        limit = float(p.get("timeout", 300))
        try:
            code, out = await asyncio.wait_for(exec_fn(["/bin/sh", "-c", str(p["command"])]), limit)
        except TimeoutError:
            raise RuntimeFailure(f"{where}: timed out after {limit:g}s") from None
        if code != 0:
            raise RuntimeFailure(f"{where}: exited {code}: {out.strip()[-400:]}")
    else:
        raise RuntimeFailure(f"{where}: unknown action {step.uses!r}")


__all__ = ["ExecFn", "ProbeResult", "http_probe", "http_status", "run_health_check", "run_init_step", "tcp_probe"]
