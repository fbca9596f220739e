"""The WireGuard handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, the mac1/mac2 fields and cookie replies, as the
WireGuard paper (section 5) and the protocol page specify them.

Pure functions over bytes and small state objects; the interface (``zlayer.overlay.interface``) decides when to run
them and hands the resulting session keys to the C data path. Curve25519 and ChaCha20-Poly1305 come from
``cryptography``; BLAKE2s (hash, keyed MAC, HMAC) from ``hashlib``; XChaCha20-Poly1305 for cookies is HChaCha20 (here)
in front of ChaCha20-Poly1305. The upper-case names (HASH, MAC, HMAC, KDF, AEAD, XAEAD) are the paper's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

MSG_INITIATION, MSG_RESPONSE, MSG_COOKIE, MSG_DATA = 1, 2, 3, 4
INITIATION_LEN, RESPONSE_LEN, COOKIE_LEN = 148, 92, 64
COOKIE_SECRET_LIFETIME = 120.0  # R_m changes every two minutes
COOKIE_LIFETIME = 120.0 - 5.0  # a received cookie is used until it is almost two minutes old

_EMPTY_KEY = bytes(32)
_CHAIN0 = hashlib.blake2s(CONSTRUCTION).digest()
_HASH0 = hashlib.blake2s(_CHAIN0 + IDENTIFIER).digest()


class HandshakeError(Exception):
    """A handshake message that does not verify (wrong key, altered, replayed, for nobody here): dropped."""


def HASH(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def MAC(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def HMAC(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def KDF(key: bytes, data: bytes, n: int) -> list[bytes]:
    """HKDF with HMAC-BLAKE2s: n 32-byte outputs."""
    t0 = HMAC(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = HMAC(t0, prev + bytes([i]))
        out.append(prev)
    return out


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


def AEAD(key: bytes, counter: int, plain: bytes, auth: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plain, auth)


def AEAD_open(key: bytes, counter: int, sealed: bytes, auth: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), sealed, auth)
    except InvalidTag:
        raise HandshakeError("authentication failed") from None


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """The HChaCha20 subkey (XChaCha20's first step): words 0-3 and 12-15 of the ChaCha20 state after its 20 rounds,
    without the final addition of the input. Taken from OpenSSL's ChaCha20 block (whose 16-byte nonce is exactly
    state words 12-15) by subtracting the input words back out."""
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(bytes(64))
    out = struct.unpack("<16I", block)
    state_in = (*_SIGMA, *struct.unpack("<4I", nonce16))
    words = [out[i] for i in (0, 1, 2, 3, 12, 13, 14, 15)]
    return struct.pack("<8I", *((w - x) & 0xFFFFFFFF for w, x in zip(words, state_in, strict=True)))


def XAEAD(key: bytes, nonce24: bytes, plain: bytes, auth: bytes) -> bytes:
    return ChaCha20Poly1305(hchacha20(key, nonce24[:16])).encrypt(b"\x00" * 4 + nonce24[16:], plain, auth)


def XAEAD_open(key: bytes, nonce24: bytes, sealed: bytes, auth: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(hchacha20(key, nonce24[:16])).decrypt(b"\x00" * 4 + nonce24[16:], sealed, auth)
    except InvalidTag:
        raise HandshakeError("cookie reply does not verify") from None


def tai64n(now: float | None = None) -> bytes:
    """TAI64N label of now (12 bytes, big-endian), rounded down to 2^24 ns as wireguard-go does, so that it says
    little about this host's clock."""
    ns = time.time_ns() if now is None else int(now * 1e9)
    ns -= ns % 0x1000000
    return struct.pack(">QI", 0x400000000000000A + ns // 1_000_000_000, ns % 1_000_000_000)


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def generate_private_key() -> bytes:
    return private_bytes(X25519PrivateKey.generate())


def public_key_of(private: bytes) -> bytes:
    return public_bytes(X25519PrivateKey.from_private_bytes(private).public_key())


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise HandshakeError("peer key is a low-order point") from None
    return shared


@dataclass
class Identity:
    """This interface's static key pair and what derives from it."""

    private: bytes
    public: bytes = b""
    mac1_key: bytes = b""
    cookie_key: bytes = b""
    _key: X25519PrivateKey | None = None

    def __post_init__(self) -> None:
        self._key = X25519PrivateKey.from_private_bytes(self.private)
        self.public = public_bytes(self._key.public_key())
        self.mac1_key = HASH(LABEL_MAC1 + self.public)
        self.cookie_key = HASH(LABEL_COOKIE + self.public)

    @property
    def key(self) -> X25519PrivateKey:
        assert self._key is not None
        return self._key


@dataclass
class Keys:
    """The transport keys a completed handshake yields (the data path's session)."""

    local_index: int
    remote_index: int
    send: bytes
    recv: bytes
    initiator: bool


@dataclass
class Initiation:
    """An initiation this side sent, kept until its response (or the next retry)."""

    local_index: int
    chain: bytes
    hash: bytes
    ephemeral: X25519PrivateKey
    mac1: bytes = b""


@dataclass
class ReceivedInitiation:
    """A verified initiation: who sent it, its TAI64N timestamp, and the state the response continues from."""

    peer_public: bytes
    timestamp: bytes
    sender_index: int
    chain: bytes
    hash: bytes
    ephemeral_public: bytes


def _peer_mac_fields(msg: bytes, peer_public: bytes, cookie: bytes | None) -> tuple[bytes, bytes]:
    mac1 = MAC(HASH(LABEL_MAC1 + peer_public), msg)
    mac2 = MAC(cookie, msg + mac1) if cookie else bytes(16)
    return mac1, mac2


def create_initiation(
    me: Identity, peer_public: bytes, static_dh: bytes, local_index: int, cookie: bytes | None
) -> tuple[bytes, Initiation]:
    """The 148-byte initiation to peer_public (static_dh is DH(me, peer), computed once per peer)."""
    h = HASH(_HASH0 + peer_public)
    eph = X25519PrivateKey.generate()
    epub = public_bytes(eph.public_key())
    c = KDF(_CHAIN0, epub, 1)[0]
    h = HASH(h + epub)
    c, k = KDF(c, _dh(eph, peer_public), 2)
    enc_static = AEAD(k, 0, me.public, h)
    h = HASH(h + enc_static)
    c, k = KDF(c, static_dh, 2)
    enc_ts = AEAD(k, 0, tai64n(), h)
    h = HASH(h + enc_ts)
    body = struct.pack("<II", MSG_INITIATION, local_index) + epub + enc_static + enc_ts
    mac1, mac2 = _peer_mac_fields(body, peer_public, cookie)
    return body + mac1 + mac2, Initiation(local_index, c, h, eph, mac1)


def consume_initiation(
    me: Identity, msg: bytes, static_dh_of: Callable[[bytes], bytes | None] | None = None
) -> ReceivedInitiation:
    """Verifies an initiation addressed to me (mac1 already checked) up to the sender's static key and timestamp.
    ``static_dh_of(peer_public)`` may give DH(me, peer) computed before (it does not change), saving one X25519."""
    if len(msg) != INITIATION_LEN or msg[0] != MSG_INITIATION:
        raise HandshakeError("not an initiation")
    sender = struct.unpack_from("<I", msg, 4)[0]
    epub, enc_static, enc_ts = msg[8:40], msg[40:88], msg[88:116]
    h = HASH(_HASH0 + me.public)
    c = KDF(_CHAIN0, epub, 1)[0]
    h = HASH(h + epub)
    c, k = KDF(c, _dh(me.key, epub), 2)
    peer_public = AEAD_open(k, 0, enc_static, h)
    h = HASH(h + enc_static)
    static_dh = static_dh_of(peer_public) if static_dh_of else None
    c, k = KDF(c, static_dh or _dh(me.key, peer_public), 2)
    ts = AEAD_open(k, 0, enc_ts, h)
    h = HASH(h + enc_ts)
    return ReceivedInitiation(peer_public, ts, sender, c, h, epub)


def create_response(got: ReceivedInitiation, psk: bytes, local_index: int, cookie: bytes | None) -> tuple[bytes, Keys]:
    """The 92-byte response to a verified initiation, and the responder's session keys."""
    eph = X25519PrivateKey.generate()
    epub = public_bytes(eph.public_key())
    c = KDF(got.chain, epub, 1)[0]
    h = HASH(got.hash + epub)
    c = KDF(c, _dh(eph, got.ephemeral_public), 1)[0]
    c = KDF(c, _dh(eph, got.peer_public), 1)[0]
    c, t, k = KDF(c, psk or _EMPTY_KEY, 3)
    h = HASH(h + t)
    enc_empty = AEAD(k, 0, b"", h)
    body = struct.pack("<III", MSG_RESPONSE, local_index, got.sender_index) + epub + enc_empty
    mac1, mac2 = _peer_mac_fields(body, got.peer_public, cookie)
    recv, send = KDF(c, b"", 2)
    return body + mac1 + mac2, Keys(local_index, got.sender_index, send, recv, initiator=False)


def consume_response(me: Identity, sent: Initiation, psk: bytes, msg: bytes) -> Keys:
    """Verifies the response to our initiation (mac1 already checked) and gives the initiator's session keys."""
    if len(msg) != RESPONSE_LEN or msg[0] != MSG_RESPONSE:
        raise HandshakeError("not a response")
    sender, receiver = struct.unpack_from("<II", msg, 4)
    if receiver != sent.local_index:
        raise HandshakeError("response to another initiation")
    epub, enc_empty = msg[12:44], msg[44:60]
    c = KDF(sent.chain, epub, 1)[0]
    h = HASH(sent.hash + epub)
    c = KDF(c, _dh(sent.ephemeral, epub), 1)[0]
    c = KDF(c, _dh(me.key, epub), 1)[0]
    c, t, k = KDF(c, psk or _EMPTY_KEY, 3)
    h = HASH(h + t)
    AEAD_open(k, 0, enc_empty, h)
    send, recv = KDF(c, b"", 2)
    return Keys(sent.local_index, sender, send, recv, initiator=True)


def mac1_ok(me: Identity, msg: bytes) -> bool:
    """Whether the mac1 of an initiation or response is ours (cheap: no DH), checked before anything else."""
    return hmac.compare_digest(MAC(me.mac1_key, msg[:-32]), msg[-32:-16])


@dataclass
class CookieChecker:
    """The responder's side of cookies: the secret R_m (changed every two minutes), mac2 checks and cookie replies
    for a sender that must prove it owns its address before its handshake is worked on (under load)."""

    me: Identity
    _secret: bytes = b""
    _secret_at: float = -1e9

    def _cookie(self, host: str, port: int) -> bytes:
        now = time.monotonic()
        if now - self._secret_at >= COOKIE_SECRET_LIFETIME:
            self._secret, self._secret_at = os.urandom(32), now
        return MAC(self._secret, host.encode() + struct.pack(">H", port))

    def mac2_ok(self, msg: bytes, host: str, port: int) -> bool:
        return hmac.compare_digest(MAC(self._cookie(host, port), msg[:-16]), msg[-16:])

    def reply(self, msg: bytes, host: str, port: int) -> bytes:
        """The 64-byte cookie reply to a handshake message from host:port."""
        sender = struct.unpack_from("<I", msg, 4)[0]
        nonce = os.urandom(24)
        sealed = XAEAD(self.me.cookie_key, nonce, self._cookie(host, port), msg[-32:-16])
        return struct.pack("<II", MSG_COOKIE, sender) + nonce + sealed


def consume_cookie_reply(peer_public: bytes, last_mac1: bytes, msg: bytes) -> bytes:
    """The cookie a peer's reply carries (XChaCha20-Poly1305 under HASH(LABEL_COOKIE || its public key), bound to
    the mac1 we last sent it)."""
    if len(msg) != COOKIE_LEN or msg[0] != MSG_COOKIE:
        raise HandshakeError("not a cookie reply")
    return XAEAD_open(HASH(LABEL_COOKIE + peer_public), msg[8:32], msg[32:64], last_mac1)


@dataclass
class ReceivedCookie:
    value: bytes
    at: float = field(default_factory=time.monotonic)

    def fresh(self) -> bytes | None:
        return self.value if time.monotonic() - self.at < COOKIE_LIFETIME else None
