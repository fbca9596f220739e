"""Typed face of the L4 stream proxy data plane (csrc/stream/, built as zlayer.proxy._l4)."""

from collections.abc import Iterable
from os import PathLike
from typing import Literal, TypedDict

class ListenerStats(TypedDict):
    connections_total: int  # TCP connections accepted, or UDP sessions opened
    connections_active: int
    bytes_in: int  # client -> backend
    bytes_out: int  # backend -> client
    bytes_spliced: int
    connect_errors: int
    no_backend: int
    tls_errors: int
    udp_sessions_total: int
    udp_sessions_active: int
    udp_datagrams_in: int
    udp_datagrams_out: int

class BackendStats(TypedDict):
    host: str
    port: int
    healthy: bool
    consecutive_failures: int
    active: int
    total: int
    failures: int
    bytes_in: int  # received from the backend
    bytes_out: int  # sent to the backend

class Listener:
    """A TCP or UDP port served by ``workers`` threads (epoll, SO_REUSEPORT, GIL released).

    ``set_backends`` swaps the whole backend table atomically (open connections keep the backend they have; a backend
    kept across swaps keeps its counters); ``set_health`` flips one backend in place; ``set_tls`` swaps the
    certificate (``None, None`` turns TLS off for new connections). Errors raise :class:`zlayer.errors.ProxyError`.
    """

    protocol: str
    host: str
    def __init__(
        self,
        protocol: Literal["tcp", "udp"],
        host: str,
        port: int,
        *,
        workers: int = 1,
        proxy_protocol: int = 0,
        strategy: Literal["round_robin", "least_connections"] = "round_robin",
        splice_threshold: int = 65536,
        session_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        idle_timeout: float = 0.0,
        handshake_timeout: float = 10.0,
    ) -> None: ...
    @property
    def port(self) -> int: ...
    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def drain(self, grace: float = 30.0) -> None:
        """Closes the listening sockets, lets open connections finish (up to ``grace`` s), then stops (blocks)."""
    def stop_accepting(self) -> None:
        """TCP: takes what waits in the backlog, closes the listening sockets (returns once closed, at most 2 s);
        open connections go on. Follow with ``drain`` or ``stop``."""
    def hurry(self) -> None:
        """Ends a ``drain`` running in another thread within 0.25 s (what is still open is closed)."""
    def set_backends(self, backends: Iterable[tuple[str, int]]) -> None: ...
    def set_health(self, host: str, port: int, healthy: bool) -> bool: ...
    def set_tls(self, cert_file: str | PathLike[str] | None, key_file: str | PathLike[str] | None) -> None: ...
    def stats(self) -> ListenerStats: ...
    def backends(self) -> list[BackendStats]: ...

def proxy_header(version: int, src: tuple[str, int], dst: tuple[str, int]) -> bytes: ...
def inherit_fds(fds: Iterable[int]) -> None: ...
def listening_fds(listener: Listener) -> list[int]: ...
