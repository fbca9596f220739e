"""Typed face of the WireGuard data path (csrc/wg/, built as zlayer.overlay._wg)."""

from collections.abc import Iterable
from typing import TypedDict

MAX_PEERS: int

class PeerInfo(TypedDict):
    present: bool
    endpoint: tuple[str, int] | None  # follows authenticated packets (roaming)
    rx_bytes: int
    tx_bytes: int
    last_tx_ns: int  # CLOCK_MONOTONIC (time.monotonic_ns), 0 = never
    last_rx_ns: int
    last_tx_data_ns: int
    last_rx_data_ns: int
    want_handshake: bool  # a packet waited with no session, or the send counter passed REKEY_AFTER_MESSAGES
    has_current: bool
    current_initiator: bool
    current_created_ns: int
    current_send_counter: int
    staged: int

class DeviceStats(TypedDict):
    rx_datagrams: int
    rx_data_packets: int
    rx_keepalives: int
    tx_datagrams: int
    tx_data_packets: int
    tx_keepalives: int
    handshake_queued: int
    drop_malformed: int
    drop_unknown_index: int
    drop_auth: int
    drop_replay: int
    drop_allowed_ips: int
    drop_no_peer: int
    drop_handshake_queue: int
    drop_staged: int
    drop_send_errors: int
    gso_sends: int
    gro_receives: int
    tso_reads: int
    coalesced_writes: int
    handshake_backlog: int
    vnet_hdr: bool
    udp_gso: bool
    udp_gro: bool

def sockaddr(host: str, port: int) -> bytes: ...
def from_sockaddr(sa: bytes) -> tuple[str, int] | None: ...

class Device:
    """A TUN interface and a UDP socket moved by two C worker threads (GIL released). Peers are slots
    0..MAX_PEERS-1; Python gives them endpoints, allowed IPs and session keys, and takes handshake messages from
    ``wait``. Errors raise :class:`zlayer.errors.OverlayError`."""

    ifname: str
    def __init__(
        self,
        ifname: str,
        listen_port: int = 0,
        *,
        mtu: int = 1420,
        offload: bool = True,
        reject_after_time: float = 180.0,
        rekey_after_messages: int = 1 << 60,
    ) -> None: ...
    @property
    def listen_port(self) -> int: ...
    @property
    def ifindex(self) -> int: ...
    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def set_listen_port(self, port: int) -> None: ...
    def set_fwmark(self, mark: int) -> None: ...
    def add_peer(self, peer: int) -> None: ...
    def remove_peer(self, peer: int) -> None: ...
    def set_endpoint(self, peer: int, host: str, port: int) -> None: ...
    def set_allowed_ips(self, entries: Iterable[tuple[int, str]]) -> None: ...
    def install_session(
        self,
        peer: int,
        local_index: int,
        remote_index: int,
        send_key: bytes,
        recv_key: bytes,
        initiator: bool,
        created_ns: int,
    ) -> int:
        """An initiator's session is current at once and the staged packets go out (their count is returned); a
        responder's waits until the peer's first data under it."""
    def clear_sessions(self, peer: int) -> None: ...
    def send_keepalive(self, peer: int) -> bool: ...
    def peer_info(self, peer: int) -> PeerInfo: ...
    def send_to(self, host: str, port: int, msg: bytes) -> bool: ...
    def wait(self, timeout: float, cap: int = 256) -> list[tuple[bytes, tuple[str, int] | None, int]]:
        """Handshake messages queued by the receive worker (bytes, source, CLOCK_MONOTONIC ns), after waiting up to
        ``timeout`` s for one (or for a peer wanting a handshake, or ``wake``)."""
    def wake(self) -> None: ...
    def stats(self) -> DeviceStats: ...
