"""Node-to-node calls: how one node's API asks another's for what only the owner of a replica can do (its logs, an
exec in it), and how the owner knows the caller is a member of the cluster.

Each node has an Ed25519 key of its own, ``DATA/cluster/peer.key`` (0600, made the first time the node is in a
cluster), and publishes its public half under ``/zlayer/peers/<node id>`` (outside ``/zlayer/cluster/``, so the
write wakes no node's watch) each time it enters the cluster, with where its API takes such calls (its overlay
address, when the API listens on every address and the overlay is up) and the SHA-256 of its API's TLS certificate
(when it serves TLS), which callers pin.

A call carries one **peer credential** (header ``X-ZLayer-Peer``): ``BODY.SIG``, BODY the base64url of compact JSON
``{iss, aud, m, p, act, iat, exp, jti}`` — the sending node, the receiving node, the HTTP method (``WEBSOCKET`` for an
upgrade), the path with its query, the user the sender acted for, and a lifetime of :data:`TTL` seconds — and SIG
Ed25519 over BODY by the sender's key. The receiver (:meth:`PeerAuth.verify`) checks that it is the audience, the
method and path are the request's own, the time is within the lifetime, the ``jti`` is new to it (a credential
is used once), the issuer is a registered node of the cluster and the signature verifies against the key that node
published. The key and the registration are in etcd, which only members reach; a removed node's record is gone,
so its credentials are refused from then on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from zlayer.errors import AuthError, ZLayerError
from zlayer.paths import private_dir, write_atomic
from zlayer.state.etcd import EtcdClient, EtcdError

log = logging.getLogger("zlayer.cluster")

PEERS = "/zlayer/peers/"
NODES = "/zlayer/cluster/nodes/"
HEADER = "x-zlayer-peer"
TTL = 30.0  # a credential's lifetime: long enough for a clock a little off, short enough to be worth little
SKEW = 30.0  # an issue time this far in the future is still taken (clocks differ between nodes)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PeerClaims:
    issuer: str  # the node that sent the call
    actor: str  # who that node acted for (its user, as it authenticated them)


def cert_sha256(cert: Path | None) -> str:
    """The hex SHA-256 of a PEM certificate's DER form ("" without one): what callers pin."""
    if cert is None:
        return ""
    with contextlib.suppress(OSError, ValueError, ssl.SSLError):
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
    return ""


class PeerAuth:
    """This node's peer key, and a :class:`~zlayer.cluster.membership.MembershipHook` that publishes it."""

    def __init__(self, directory: Path, *, wildcard: bool = False, tls_cert: Path | None = None,
                 overlay: Any = None) -> None:  # fmt: skip
        self.directory = directory
        self.wildcard = wildcard  # the API listens on every address (then also on the overlay's)
        self.tls_cert = tls_cert
        self.overlay = overlay  # the node's OverlayNode (its address once up), or None
        self.cluster: Any = None  # the node's ClusterNode: its etcd client as it is now (a revived member: a new one)
        self.node_id = ""
        self._client: EtcdClient | None = None
        self._key: Ed25519PrivateKey | None = None
        self._seen: dict[str, float] = {}  # jti -> expiry, of the credentials taken
        self._keys: dict[str, tuple[str, Ed25519PublicKey]] = {}  # node -> (published text, key)

    @property
    def client(self) -> EtcdClient | None:
        current = getattr(self.cluster, "client", None)
        return current if current is not None else self._client

    # the key -------------------------------------------------------------------------------------------------

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            path = self.directory / "peer.key"
            try:
                seed = base64.b64decode(path.read_text().strip())
            except FileNotFoundError:
                private_dir(self.directory)
                seed = os.urandom(32)
                write_atomic(path, base64.b64encode(seed).decode() + "\n")
                os.chmod(path, 0o600)
            self._key = Ed25519PrivateKey.from_private_bytes(seed)
        return self._key

    def public_b64(self) -> str:
        return base64.b64encode(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    # MembershipHook ----------------------------------------------------------------------------------------------

    def join_fields(self) -> dict[str, Any]:
        return {}

    async def entered(self, client: EtcdClient, node_id: str, how: str) -> None:
        self.node_id, self._client = node_id, client
        overlay = getattr(self.overlay, "address", None) if getattr(self.overlay, "up", False) else None
        entry = {"public_key": self.public_b64(), "overlay": overlay if self.wildcard and overlay else "",
                 "tls_sha256": cert_sha256(self.tls_cert)}  # fmt: skip
        try:
            await client.put(PEERS + node_id, entry)
        except EtcdError as e:  # the node runs on; calls from other nodes to it are refused until it is published
            log.error("cluster: cannot publish this node's peer key: %s", e)

    async def admitted(self, client: EtcdClient, node_id: str, request: Any) -> None:
        return None

    async def left(self, client: EtcdClient, node_id: str, removed: bool) -> None:
        with contextlib.suppress(EtcdError):
            await client.delete(PEERS + node_id)

    # sending ---------------------------------------------------------------------------------------------------

    def sign(self, audience: str, method: str, target: str, actor: str) -> str:
        """A credential for one call to node ``audience``: ``method`` and ``target`` (path and query, as sent)."""
        now = time.time()
        claims = {"iss": self.node_id, "aud": audience, "m": method.upper(), "p": target, "act": actor[:200],
                  "iat": int(now), "exp": int(now + TTL), "jti": secrets.token_urlsafe(16)}  # fmt: skip
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{_b64(self.key.sign(body.encode()))}"

    async def peer(self, node_id: str) -> dict[str, Any]:
        """What node ``node_id`` published (empty when nothing)."""
        if self.client is None:
            return {}
        with contextlib.suppress(EtcdError, ValueError):
            kv = await self.client.get(PEERS + node_id)
            doc = kv.json() if kv is not None else {}
            return doc if isinstance(doc, dict) else {}
        return {}

    # receiving ---------------------------------------------------------------------------------------------------

    async def verify(self, credential: str, method: str, target: str, now: float | None = None) -> PeerClaims:
        """The claims of a credential sent to this node for ``method target``; AuthError saying why not."""
        if self.client is None or not self.node_id:
            raise AuthError("this node is not in a cluster: it takes no calls from other nodes")
        body, sep, sig = credential.partition(".")
        try:
            claims = json.loads(_unb64(body))
            signature = _unb64(sig)
            if not sep or not isinstance(claims, dict):
                raise ValueError("not BODY.SIG")
            issuer, exp, iat = str(claims["iss"]), float(claims["exp"]), float(claims["iat"])
            jti = str(claims["jti"])
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise AuthError("not a peer credential") from None
        now = time.time() if now is None else now
        if claims.get("aud") != self.node_id:
            raise AuthError(f"the peer credential is for node {claims.get('aud')!r}, not this one ({self.node_id})")
        if claims.get("m") != method.upper() or claims.get("p") != target:
            raise AuthError("the peer credential was issued for another request")
        if not iat - SKEW <= now < exp or exp - iat > TTL + 1:
            raise AuthError("the peer credential has expired (or its node's clock is far off)")
        key = await self._key_of(issuer)
        try:
            key.verify(signature, body.encode())
        except InvalidSignature:
            raise AuthError(f"the peer credential's signature is not node {issuer}'s") from None
        self._seen = {j: e for j, e in self._seen.items() if e > now}
        if jti in self._seen:
            raise AuthError("the peer credential was used already")
        self._seen[jti] = exp
        return PeerClaims(issuer, str(claims.get("act") or ""))

    async def _key_of(self, node_id: str) -> Ed25519PublicKey:
        assert self.client is not None
        try:
            record, entry = await self.client.get(NODES + node_id), await self.client.get(PEERS + node_id)
        except EtcdError as e:
            raise AuthError(f"cannot check the calling node {node_id} now: {e}") from e
        if record is None or entry is None:
            raise AuthError(f"node {node_id!r} is not a member of this cluster")
        try:
            text = str(entry.json()["public_key"])
            cached = self._keys.get(node_id)
            if cached is None or cached[0] != text:
                cached = (text, Ed25519PublicKey.from_public_bytes(base64.b64decode(text)))
                self._keys[node_id] = cached
        except (ZLayerError, ValueError, KeyError, TypeError, binascii.Error):
            raise AuthError(f"node {node_id}'s published peer key is unusable") from None
        return cached[1]


__all__ = ["HEADER", "PEERS", "TTL", "PeerAuth", "PeerClaims", "cert_sha256"]
