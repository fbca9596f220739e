"""systemd's notify protocol: ``READY=1`` once the API answers, ``STOPPING=1`` on the way out, ``WATCHDOG=1`` while
the event loop turns.

Under ``Type=notify`` systemd hands the daemon a datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` in the
abstract namespace); without one every call here does nothing, so the daemon runs the same outside systemd. The
watchdog pings come from the daemon's own loop, so a wedged loop stops them and systemd restarts the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger("zlayer.daemon")


def _address() -> str | bytes | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return None
    return b"\0" + path[1:].encode() if path[0] == "@" else path


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) to systemd; False when there is no one to tell."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:  # systemd gone or the socket replaced: the daemon runs on, it only cannot say so
        log.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the ``WATCHDOG_USEC`` systemd asks for (as sd_watchdog_enabled advises), or None when it asks none of us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog(interval: float) -> None:
    """Ping systemd's watchdog every ``interval`` seconds for as long as the loop runs this task."""
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)
