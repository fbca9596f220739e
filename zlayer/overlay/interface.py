"""A WireGuard interface: the C data path (``zlayer.overlay._wg``) plus what is rare enough for Python — the
handshakes, cookie replies under load, the protocol's timers, and the peer table the UAPI socket edits.

One thread per interface waits (GIL released) on the device for handshake messages, or for a peer that has a packet
and no session, at most a tick at a time, and runs the timers between. Every peer field is changed under one lock,
by that thread or by a UAPI request.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import struct
import threading
import time
from dataclasses import dataclass, field

from zlayer.errors import OverlayError
from zlayer.overlay import noise

log = logging.getLogger("zlayer.overlay")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Endpoint = tuple[str, int]

TICK = 0.1
UNDER_LOAD_BACKLOG = 64  # queued handshake messages from which mac2 (a cookie) is required, as wireguard-go's /8
UNDER_LOAD_HOLD = 1.0
INITIATIONS_PER_SECOND = 20  # per source address while under load (the paper's token bucket)
INITIATION_BURST = 5
MIN_INITIATION_INTERVAL = 0.020  # a peer's initiations closer than this are a flood (wireguard-go)
HEALTHY_HANDSHAKE_AGE = 180.0  # ZLayer's peer health threshold (seconds since the last handshake)


@dataclass(frozen=True)
class Timers:
    """The protocol's constants (WireGuard paper §6.1). Only tests shorten them."""

    rekey_after_messages: int = 1 << 60
    rekey_after_time: float = 120.0
    reject_after_time: float = 180.0
    rekey_attempt_time: float = 90.0
    rekey_timeout: float = 5.0
    keepalive_timeout: float = 10.0


@dataclass
class Peer:
    public: bytes
    slot: int
    static_dh: bytes
    psk: bytes = bytes(32)
    endpoint: Endpoint | None = None
    allowed_ips: list[Network] = field(default_factory=list)
    persistent_keepalive: int = 0
    # handshake in flight (we initiated)
    initiation: noise.Initiation | None = None
    initiation_sent_at: float = 0.0
    attempt_started_at: float | None = None
    retry_jitter: float = 0.0
    cookie: noise.ReceivedCookie | None = None
    last_mac1: bytes = b""
    # what the responder side remembers
    last_timestamp: bytes = b""
    last_initiation_at: float = -1e9
    # sessions
    local_indices: list[int] = field(default_factory=list)
    last_session_at: float | None = None
    last_handshake_wall_ns: int = 0
    new_handshake_for_tx: int = 0
    rekey_for_rx: int = 0
    handshakes: int = 0

    @property
    def key_hex(self) -> str:
        return self.public.hex()


@dataclass(frozen=True)
class PeerStatus:
    """What ``wg show`` says of a peer, and its health: ZLayer counts a peer healthy while its last handshake is at
    most ``HEALTHY_HANDSHAKE_AGE`` seconds old (sessions are renewed every two minutes while traffic flows, and a
    persistent keepalive keeps one alive when it does not)."""

    public_key: bytes
    endpoint: Endpoint | None
    allowed_ips: list[Network]
    persistent_keepalive: int
    last_handshake_ns: int  # wall clock, 0 = never
    last_handshake_age: float | None
    healthy: bool
    rx_bytes: int
    tx_bytes: int
    handshakes: int


@dataclass
class _Bucket:
    tokens: float
    at: float


class Interface:
    """A WireGuard interface named ``ifname``: create it, give it a private key and peers (directly or through the
    UAPI socket, ``zlayer.overlay.uapi``), ``start`` it, ``close`` it."""

    def __init__(
        self,
        ifname: str,
        *,
        private_key: bytes | None = None,
        listen_port: int = 0,
        mtu: int = 1420,
        offload: bool = True,
        timers: Timers | None = None,
    ) -> None:
        from zlayer.overlay._wg import Device

        self.ifname = ifname
        self.timers = timers or Timers()
        self.device = Device(
            ifname,
            listen_port,
            mtu=mtu,
            offload=offload,
            reject_after_time=self.timers.reject_after_time,
            rekey_after_messages=self.timers.rekey_after_messages,
        )
        self.lock = threading.RLock()
        self.identity: noise.Identity | None = None
        self.peers: dict[bytes, Peer] = {}
        self.fwmark = 0
        self.handshake_stats = {"initiations": 0, "responses": 0, "cookie_replies_sent": 0, "dropped": 0}
        self._pending: dict[int, Peer] = {}  # local index of an initiation in flight -> its peer
        self._indices: set[int] = set()
        self._cookies: noise.CookieChecker | None = None
        self._under_load_until = 0.0
        self._buckets: dict[str, _Bucket] = {}
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        if private_key is not None:
            self.set_private_key(private_key)

    # ---- configuration (UAPI and callers) -------------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        return int(self.device.listen_port)

    def set_listen_port(self, port: int) -> None:
        self.device.set_listen_port(port)

    def set_fwmark(self, mark: int) -> None:
        """Marks the tunnel's own UDP packets (policy routing keeps them off the tunnel)."""
        self.device.set_fwmark(mark)
        self.fwmark = mark

    def set_private_key(self, private_key: bytes | None) -> None:
        with self.lock:
            if not private_key or private_key == bytes(32):
                self.identity = None
                self._cookies = None
            else:
                if len(private_key) != 32:
                    raise OverlayError("a private key is 32 bytes", where=self.ifname)
                self.identity = noise.Identity(private_key)
                self._cookies = noise.CookieChecker(self.identity)
            # a new identity makes every session and every precomputed DH stale
            for peer in list(self.peers.values()):
                if self.identity and peer.public == self.identity.public:
                    self.remove_peer(peer.public)
                    continue
                peer.static_dh = self._static_dh(peer.public)
                self._reset_sessions(peer)

    def _static_dh(self, public: bytes) -> bytes:
        if self.identity is None:
            return b""
        try:
            return noise._dh(self.identity.key, public)
        except noise.HandshakeError:
            return b""

    def peer(self, public: bytes, *, create: bool = True) -> Peer | None:
        with self.lock:
            found = self.peers.get(public)
            if found or not create:
                return found
            if len(public) != 32:
                raise OverlayError("a public key is 32 bytes", where=self.ifname)
            used = {p.slot for p in self.peers.values()}
            from zlayer.overlay._wg import MAX_PEERS

            slot = next((i for i in range(MAX_PEERS) if i not in used), None)
            if slot is None:
                raise OverlayError(f"the interface has {MAX_PEERS} peers, the most it takes", where=self.ifname)
            new = Peer(public=public, slot=slot, static_dh=self._static_dh(public))
            self.device.add_peer(slot)
            self.peers[public] = new
            return new

    def remove_peer(self, public: bytes) -> None:
        with self.lock:
            gone = self.peers.pop(public, None)
            if gone is None:
                return
            self.device.remove_peer(gone.slot)
            self._forget_indices(gone)
            self._push_allowed_ips()

    def clear_peers(self) -> None:
        with self.lock:
            for public in list(self.peers):
                self.remove_peer(public)

    def set_endpoint(self, peer: Peer, endpoint: Endpoint) -> None:
        with self.lock:
            self.device.set_endpoint(peer.slot, endpoint[0], endpoint[1])
            peer.endpoint = endpoint

    def set_allowed_ips(self, peer: Peer, nets: list[Network], *, replace: bool) -> None:
        with self.lock:
            if replace:
                peer.allowed_ips = []
            for net in nets:
                # an address belongs to one peer: the last to claim it takes it (as wg does)
                for other in self.peers.values():
                    if net in other.allowed_ips and other is not peer:
                        other.allowed_ips.remove(net)
                if net not in peer.allowed_ips:
                    peer.allowed_ips.append(net)
            self._push_allowed_ips()

    def _push_allowed_ips(self) -> None:
        self.device.set_allowed_ips([(p.slot, str(n)) for p in self.peers.values() for n in p.allowed_ips])

    def set_persistent_keepalive(self, peer: Peer, seconds: int) -> None:
        with self.lock:
            was = peer.persistent_keepalive
            peer.persistent_keepalive = seconds
            if seconds and not was and self._thread is not None:
                self._keepalive_or_handshake(peer)

    def set_psk(self, peer: Peer, psk: bytes) -> None:
        with self.lock:
            peer.psk = psk

    # ---- life ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.device.start()
        self._thread = threading.Thread(target=self._run, name=f"wg-{self.ifname}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self.device.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.device.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                msgs = self.device.wait(TICK)
            except OverlayError:
                return
            if self._closed.is_set():
                return
            backlog = len(msgs) + int(self.device.stats()["handshake_backlog"]) if msgs else 0
            now = time.monotonic()
            if backlog >= UNDER_LOAD_BACKLOG:
                self._under_load_until = now + UNDER_LOAD_HOLD
            under_load = now < self._under_load_until
            for data, source, _ in msgs:
                if source is None:
                    continue
                try:
                    with self.lock:
                        self._handle(data, source, under_load)
                except (noise.HandshakeError, OverlayError) as e:
                    self.handshake_stats["dropped"] += 1
                    log.debug("%s: handshake message from %s:%d dropped: %s", self.ifname, *source, e)
                except Exception:  # a bug must cost one message, not the interface
                    self.handshake_stats["dropped"] += 1
                    log.exception("%s: handshake message from %s:%d dropped", self.ifname, *source)
            try:
                with self.lock:
                    self._tick()
            except Exception:
                log.exception("%s: timers", self.ifname)

    # ---- handshake messages -------------------------------------------------------------------------------

    def _allowed_under_load(self, host: str) -> bool:
        now = time.monotonic()
        b = self._buckets.get(host)
        if b is None:
            if len(self._buckets) > 4096:
                self._buckets.clear()
            b = self._buckets[host] = _Bucket(INITIATION_BURST, now)
        b.tokens = min(INITIATION_BURST, b.tokens + (now - b.at) * INITIATIONS_PER_SECOND)
        b.at = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def _handle(self, data: bytes, source: Endpoint, under_load: bool) -> None:
        me = self.identity
        if me is None or self._cookies is None:
            raise noise.HandshakeError("no private key")
        kind = data[0]
        if kind == noise.MSG_COOKIE:
            return self._handle_cookie(data)
        if not noise.mac1_ok(me, data):
            raise noise.HandshakeError("mac1 is not ours")
        if under_load:
            if not self._cookies.mac2_ok(data, *source):
                self.device.send_to(source[0], source[1], self._cookies.reply(data, *source))
                self.handshake_stats["cookie_replies_sent"] += 1
                return
            if kind == noise.MSG_INITIATION and not self._allowed_under_load(source[0]):
                raise noise.HandshakeError("initiation rate limit")
        if kind == noise.MSG_INITIATION:
            self._handle_initiation(me, data, source)
        elif kind == noise.MSG_RESPONSE:
            self._handle_response(me, data, source)

    def _handle_initiation(self, me: noise.Identity, data: bytes, source: Endpoint) -> None:
        got = noise.consume_initiation(me, data, lambda public: p.static_dh if (p := self.peers.get(public)) else None)
        peer = self.peers.get(got.peer_public)
        if peer is None:
            raise noise.HandshakeError("initiation from a key that is no peer here")
        now = time.monotonic()
        if got.timestamp <= peer.last_timestamp:
            raise noise.HandshakeError("replayed initiation (timestamp not newer)")
        if now - peer.last_initiation_at < MIN_INITIATION_INTERVAL:
            raise noise.HandshakeError("initiation flood")
        peer.last_timestamp = got.timestamp
        peer.last_initiation_at = now
        index = self._new_index()
        cookie = peer.cookie.fresh() if peer.cookie else None
        msg, keys = noise.create_response(got, peer.psk, index, cookie)
        peer.last_mac1 = msg[-32:-16]
        self.set_endpoint(peer, source)
        self._install(peer, keys)
        self.device.send_to(source[0], source[1], msg)
        self.handshake_stats["responses"] += 1

    def _handle_response(self, me: noise.Identity, data: bytes, source: Endpoint) -> None:
        receiver = struct.unpack_from("<I", data, 8)[0]
        peer = self._pending.get(receiver)
        if peer is None or peer.initiation is None or peer.initiation.local_index != receiver:
            raise noise.HandshakeError("response to no initiation in flight")
        keys = noise.consume_response(me, peer.initiation, peer.psk, data)
        self._pending.pop(receiver, None)
        peer.initiation = None
        peer.attempt_started_at = None
        self.set_endpoint(peer, source)
        sent = self._install(peer, keys)
        if sent == 0:  # confirm the session to the responder, which may not send under it before we do
            self.device.send_keepalive(peer.slot)

    def _handle_cookie(self, data: bytes) -> None:
        receiver = struct.unpack_from("<I", data, 4)[0]
        peer = self._pending.get(receiver)
        if peer is None:
            peer = next((p for p in self.peers.values() if receiver in p.local_indices), None)
        if peer is None or not peer.last_mac1:
            raise noise.HandshakeError("cookie reply for nothing we sent")
        peer.cookie = noise.ReceivedCookie(noise.consume_cookie_reply(peer.public, peer.last_mac1, data))

    def _new_index(self) -> int:
        while True:
            index = random.getrandbits(32)
            if index not in self._indices:
                self._indices.add(index)
                return index

    def _forget_indices(self, peer: Peer) -> None:
        for index in peer.local_indices:
            self._indices.discard(index)
        peer.local_indices.clear()
        if peer.initiation is not None:
            self._pending.pop(peer.initiation.local_index, None)
            self._indices.discard(peer.initiation.local_index)
            peer.initiation = None

    def _install(self, peer: Peer, keys: noise.Keys) -> int:
        sent = self.device.install_session(
            peer.slot, keys.local_index, keys.remote_index, keys.send, keys.recv, keys.initiator, time.monotonic_ns()
        )
        peer.local_indices.append(keys.local_index)
        while len(peer.local_indices) > 4:  # current, previous, next and one retired live in the data path
            self._indices.discard(peer.local_indices.pop(0))
        peer.last_session_at = time.monotonic()
        peer.last_handshake_wall_ns = time.time_ns()
        peer.handshakes += 1
        return int(sent)

    def _reset_sessions(self, peer: Peer) -> None:
        self.device.clear_sessions(peer.slot)
        self._forget_indices(peer)
        peer.last_session_at = None

    # ---- timers (paper §6) ---------------------------------------------------------------------------------

    def initiate(self, peer: Peer) -> bool:
        """Sends a handshake initiation to the peer now (unless one went out less than REKEY_TIMEOUT ago)."""
        with self.lock:
            me = self.identity
            now = time.monotonic()
            if me is None or peer.endpoint is None or not peer.static_dh:
                return False
            if peer.initiation is not None and now - peer.initiation_sent_at < self.timers.rekey_timeout:
                return False
            if peer.initiation is not None:
                self._pending.pop(peer.initiation.local_index, None)
                self._indices.discard(peer.initiation.local_index)
            if peer.attempt_started_at is None:
                peer.attempt_started_at = now
            cookie = peer.cookie.fresh() if peer.cookie else None
            msg, state = noise.create_initiation(me, peer.public, peer.static_dh, self._new_index(), cookie)
            peer.initiation = state
            peer.last_mac1 = state.mac1
            peer.initiation_sent_at = now
            peer.retry_jitter = random.uniform(0, 0.333)
            self._pending[state.local_index] = peer
            self.device.send_to(peer.endpoint[0], peer.endpoint[1], msg)
            self.handshake_stats["initiations"] += 1
            return True

    def _keepalive_or_handshake(self, peer: Peer) -> None:
        if not self.device.send_keepalive(peer.slot):
            self.initiate(peer)

    def _tick(self) -> None:
        t = self.timers
        now = time.monotonic()
        now_ns = time.monotonic_ns()
        for peer in list(self.peers.values()):
            info = self.device.peer_info(peer.slot)
            if info["endpoint"] is not None:
                peer.endpoint = info["endpoint"]  # roaming: the data path follows authenticated packets
            created = info["current_created_ns"]
            age = (now_ns - created) / 1e9 if info["has_current"] else None
            # a retry of the initiation in flight, until REKEY_ATTEMPT_TIME
            if peer.initiation is not None and now - peer.initiation_sent_at >= t.rekey_timeout + peer.retry_jitter:
                if peer.attempt_started_at is not None and now - peer.attempt_started_at >= t.rekey_attempt_time:
                    self._pending.pop(peer.initiation.local_index, None)
                    self._indices.discard(peer.initiation.local_index)
                    peer.initiation = None
                    peer.attempt_started_at = None
                else:
                    self.initiate(peer)
            want = info["want_handshake"]
            if age is not None and info["current_initiator"]:
                # the initiator rekeys: after sending past REKEY_AFTER_TIME, or receiving near REJECT_AFTER_TIME
                if age >= t.rekey_after_time and info["last_tx_data_ns"] > created + int(t.rekey_after_time * 1e9):
                    want = True
                limit = t.reject_after_time - t.keepalive_timeout - t.rekey_timeout
                if age >= limit and info["last_rx_data_ns"] > created + int(limit * 1e9):
                    want = True
            # data sent and nothing heard back for KEEPALIVE + REKEY_TIMEOUT: the peer may have lost our session
            tx_data = info["last_tx_data_ns"]
            if (
                tx_data > info["last_rx_ns"]
                and tx_data != peer.new_handshake_for_tx
                and now_ns - tx_data >= int((t.keepalive_timeout + t.rekey_timeout) * 1e9)
            ):
                peer.new_handshake_for_tx = tx_data
                want = True
            if want and peer.initiation is None:
                self.initiate(peer)
            # passive keepalive: data came in and we have sent nothing for KEEPALIVE_TIMEOUT
            rx_data = info["last_rx_data_ns"]
            if rx_data > info["last_tx_ns"] and now_ns - rx_data >= int(t.keepalive_timeout * 1e9):
                self.device.send_keepalive(peer.slot)
            if peer.persistent_keepalive and now_ns - info["last_tx_ns"] >= peer.persistent_keepalive * 1_000_000_000:
                self._keepalive_or_handshake(peer)
            # no new session for three REJECT_AFTER_TIMEs: the keys go
            if peer.last_session_at is not None and now - peer.last_session_at >= 3 * t.reject_after_time:
                self._reset_sessions(peer)

    # ---- reading -----------------------------------------------------------------------------------------

    def peer_status(self, peer: Peer) -> PeerStatus:
        info = self.device.peer_info(peer.slot)
        age = (time.time_ns() - peer.last_handshake_wall_ns) / 1e9 if peer.last_handshake_wall_ns else None
        return PeerStatus(
            public_key=peer.public,
            endpoint=info["endpoint"] or peer.endpoint,
            allowed_ips=list(peer.allowed_ips),
            persistent_keepalive=peer.persistent_keepalive,
            last_handshake_ns=peer.last_handshake_wall_ns,
            last_handshake_age=age,
            healthy=age is not None and age <= HEALTHY_HANDSHAKE_AGE,
            rx_bytes=info["rx_bytes"],
            tx_bytes=info["tx_bytes"],
            handshakes=peer.handshakes,
        )

    def peer_statuses(self) -> list[PeerStatus]:
        with self.lock:
            return [self.peer_status(p) for p in self.peers.values()]
