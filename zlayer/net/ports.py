"""Who holds which port of this node, and the admission check that keeps two owners off one port.

Endpoints (the proxy's listeners), ``port_mappings`` (DNAT of a host port) and the daemon's own listeners (API,
metrics) all take ports of the node. Two of them on one port do not fail loudly: the proxy's listeners share a port
(SO_REUSEPORT) and split the traffic, a DNAT rule silently takes a port from whatever listens on it. So a deployment
is admitted only when none of its claims meets one that is held, and the refusal names the holder.

Claims meet when they are on the same transport and port and their addresses overlap (equal, or one is the
wildcard). HTTP routes are the exception: several of them share one listener as long as they are on the same
address, agree on TLS and differ in host or path prefix (the proxy tells them apart by those).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zlayer.errors import ConflictError

WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class PortClaim:
    """One port an owner takes: ``protocol`` is the transport (tcp/udp), ``address`` the bind address (a wildcard
    for every address). ``route`` is set for HTTP routes: (tls, host, path prefix)."""

    owner: str  # in the user's words: "deployment 'shop' (service 'web', endpoint 'http')", "the zlayer API ..."
    protocol: str
    address: str
    port: int
    where: str = ""  # the spec field that makes the claim
    route: tuple[bool, str, str] | None = None

    def meets(self, other: PortClaim) -> bool:
        if (self.protocol, self.port) != (other.protocol, other.port):
            return False
        if self.address != other.address and self.address not in WILDCARDS and other.address not in WILDCARDS:
            return False
        if self.route is not None and other.route is not None and self.address == other.address:
            (tls, host, path), (other_tls, other_host, other_path) = self.route, other.route
            return tls != other_tls or (host.lower(), path) == (other_host.lower(), other_path)
        return True

    @property
    def label(self) -> str:
        shown = "every address" if self.address in WILDCARDS else self.address
        return f"{self.protocol} port {self.port} on {shown}"


def admit(claims: list[PortClaim], held: Iterable[PortClaim], probe: Iterable[PortClaim] = ()) -> None:
    """Raise ConflictError for the first claim that meets a held one (or an earlier claim of the same request), or,
    for the claims in ``probe``, a port some other program on this host listens on."""
    taken = list(held)
    for claim in claims:
        for other in taken:
            if claim.meets(other):
                raise _refused(claim, other.owner)
        taken.append(claim)
    for claim in probe:
        holder = _outside_holder(claim)
        if holder is not None:
            raise _refused(claim, holder)


def _refused(claim: PortClaim, holder: str) -> ConflictError:
    return ConflictError(
        f"{claim.label} is already taken by {holder}",
        where=claim.where or None,
        hint="pick another port, or remove what holds it first",
    )


def bound_socket(protocol: str, address: str, port: int, netns: str | None = None) -> socket.socket:
    """A socket bound to ``address:port`` (SO_REUSEADDR: connections closing in TIME_WAIT hold nothing), made in
    the named network namespace when given (a socket keeps the namespace it was made in). OSError when taken."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    if netns:
        from pyroute2.netns import popns, pushns

        pushns(netns)
        try:
            sock = socket.socket(family, kind)
        finally:
            popns()
    else:
        sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except BaseException:
        sock.close()
        raise
    return sock


def hold(claim: PortClaim, netns: str | None = None) -> socket.socket:
    """Take the claim's port for as long as the returned socket is open (TCP: listening, so that a bind of it by
    anyone fails, as Docker holds the host ports it maps). ConflictError naming the holder when it is taken."""
    try:
        sock = bound_socket(claim.protocol, claim.address, claim.port, netns)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise ConflictError(f"cannot take {claim.label}: {e.strerror}", where=claim.where or None) from None
        holder = _process_on(claim.protocol, claim.port, netns) or "another program on this host"
        raise _refused(claim, holder) from None
    if claim.protocol != "udp":
        sock.listen(1)
    return sock


def _outside_holder(claim: PortClaim) -> str | None:
    """Who else on this host listens on the claim's port (a bind of it fails), or None when it is free."""
    try:
        bound_socket(claim.protocol, claim.address, claim.port).close()
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            return None  # an address this node does not have: the proxy reports that when it binds
        return _process_on(claim.protocol, claim.port) or "another program on this host"
    return None


def _process_on(protocol: str, port: int, netns: str | None = None) -> str | None:
    """``pid N (name)`` of a process with a socket bound to ``port`` in this network namespace (or the named one),
    if one is seen."""
    inodes: set[str] = set()
    for table in (protocol, f"{protocol}6"):
        with contextlib.suppress(OSError):
            for line in _read_net(table, netns).splitlines()[1:]:
                fields = line.split()
                listening = protocol == "udp" or fields[3] == "0A"
                if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port and listening:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        if int(pid) == os.getpid():
                            return "a listener of this daemon that is still closing (try again shortly)"
                        return _describe(pid)
    return None


def _describe(pid: str) -> str:
    """Who process ``pid`` is, in a refusal: a zlayer daemon's proxy (its data-plane process, which holds the
    endpoints' listeners) by its run dir, anything else by pid and name."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    if "zlayer.proxy.dataplane" in argv and "--run-dir" in argv[:-1]:
        run_dir = argv[argv.index("--run-dir") + 1]
        return f"the proxy of the zlayer daemon with run dir {run_dir} (its data-plane process, pid {pid})"
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    return f"another program on this host (pid {pid}, {name})"


def _read_net(table: str, netns: str | None) -> str:
    """``/proc/net/<table>`` of this thread's network namespace, or of the named one."""
    if not netns:
        return Path(f"/proc/thread-self/net/{table}").read_text()
    from pyroute2.netns import popns, pushns

    pushns(netns)
    try:
        return Path(f"/proc/thread-self/net/{table}").read_text()
    finally:
        popns()


__all__ = ["PortClaim", "admit", "bound_socket", "hold"]
