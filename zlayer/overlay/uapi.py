"""The cross-platform userspace API of WireGuard: a unix socket ``<dir>/<ifname>.sock`` (``/var/run/wireguard`` by
default) taking ``get=1`` and ``set=1`` requests in WireGuard's key=value text format, so that ``wg show`` and
``wg set`` from wireguard-tools drive a zlayer interface as they drive wireguard-go.

Keys are hex on this socket. A request that cannot be applied answers ``errno=-EINVAL`` (or ``-EADDRINUSE`` for a
port), as wireguard-go does; what came before the bad line stays applied, as there.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
from pathlib import Path

from zlayer.errors import OverlayError
from zlayer.overlay.interface import Interface, Peer
from zlayer.paths import bind_unix

log = logging.getLogger("zlayer.overlay")

DEFAULT_DIR = Path("/var/run/wireguard")
MAX_REQUEST = 1 << 20


class UapiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _key(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise UapiError(errno.EINVAL, f"{what} is not hex") from None
    if len(raw) != 32:
        raise UapiError(errno.EINVAL, f"{what} is not 32 bytes")
    return raw


def _int(value: str, what: str, top: int) -> int:
    if not value.isdigit() or int(value) > top:
        raise UapiError(errno.EINVAL, f"{what} must be 0..{top}")
    return int(value)


def parse_endpoint(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise UapiError(errno.EINVAL, f"endpoint {value!r} has no port")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UapiError(errno.EINVAL, f"endpoint {value!r} is not a numeric address") from None
    return host, _int(port, "endpoint port", 65535)


def format_endpoint(ep: tuple[str, int]) -> str:
    return f"[{ep[0]}]:{ep[1]}" if ":" in ep[0] else f"{ep[0]}:{ep[1]}"


def get(iface: Interface) -> str:
    """The ``get=1`` answer (without the final errno line)."""
    lines = []
    with iface.lock:
        if iface.identity is not None:
            lines.append(f"private_key={iface.identity.private.hex()}")
        lines.append(f"listen_port={iface.listen_port}")
        if iface.fwmark:
            lines.append(f"fwmark={iface.fwmark}")
        for peer in iface.peers.values():
            st = iface.peer_status(peer)
            lines.append(f"public_key={peer.public.hex()}")
            lines.append(f"preshared_key={peer.psk.hex()}")
            lines.append("protocol_version=1")
            if st.endpoint:
                lines.append(f"endpoint={format_endpoint(st.endpoint)}")
            lines.append(f"last_handshake_time_sec={st.last_handshake_ns // 1_000_000_000}")
            lines.append(f"last_handshake_time_nsec={st.last_handshake_ns % 1_000_000_000}")
            lines.append(f"tx_bytes={st.tx_bytes}")
            lines.append(f"rx_bytes={st.rx_bytes}")
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
            lines.extend(f"allowed_ip={net}" for net in peer.allowed_ips)
    return "".join(line + "\n" for line in lines)


def apply_set(iface: Interface, lines: list[str]) -> None:
    """Applies a ``set=1`` request's lines in order; raises UapiError at the first bad one."""
    peer: Peer | None = None
    skip_peer = False  # update_only on a peer that does not exist, or remove
    with iface.lock:
        for line in lines:
            key, sep, value = line.partition("=")
            if not sep:
                raise UapiError(errno.EINVAL, f"line {line!r} is not key=value")
            if key == "public_key":
                public = _key(value, "public_key")
                peer = iface.peer(public, create=False)
                skip_peer = False
                if peer is None:
                    if iface.identity is not None and public == iface.identity.public:
                        skip_peer = True  # our own key is never a peer
                    else:
                        peer = iface.peer(public)
                continue
            if peer is None and not skip_peer:
                _device_key(iface, key, value)
                continue
            if skip_peer:
                continue
            assert peer is not None
            if key == "update_only":
                continue
            if key == "remove":
                if value == "true":
                    iface.remove_peer(peer.public)
                    peer, skip_peer = None, True
            elif key == "preshared_key":
                iface.set_psk(peer, _key(value, "preshared_key"))
            elif key == "endpoint":
                iface.set_endpoint(peer, parse_endpoint(value))
            elif key == "persistent_keepalive_interval":
                iface.set_persistent_keepalive(peer, _int(value, "persistent_keepalive_interval", 65535))
            elif key == "replace_allowed_ips":
                if value == "true":
                    iface.set_allowed_ips(peer, [], replace=True)
            elif key == "allowed_ip":
                try:
                    net = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise UapiError(errno.EINVAL, f"allowed_ip {value!r} is not a CIDR") from None
                iface.set_allowed_ips(peer, [net], replace=False)
            elif key == "protocol_version":
                if value != "1":
                    raise UapiError(errno.EINVAL, f"protocol_version {value} is not 1")
            else:
                raise UapiError(errno.EINVAL, f"unknown peer key {key!r}")


def _device_key(iface: Interface, key: str, value: str) -> None:
    if key == "private_key":
        iface.set_private_key(_key(value, "private_key"))
    elif key == "listen_port":
        try:
            iface.set_listen_port(_int(value, "listen_port", 65535))
        except OverlayError as e:
            raise UapiError(errno.EADDRINUSE, str(e)) from None
    elif key == "fwmark":
        iface.set_fwmark(_int(value, "fwmark", 0xFFFFFFFF))
    elif key == "replace_peers":
        if value == "true":
            iface.clear_peers()
    else:
        raise UapiError(errno.EINVAL, f"unknown interface key {key!r}")


def handle(iface: Interface, request: str) -> str:
    """One request (its lines up to the blank one) to its full answer."""
    lines = request.split("\n")
    op, rest = lines[0], [line for line in lines[1:] if line]
    try:
        if op == "get=1":
            return get(iface) + "errno=0\n\n"
        if op == "set=1":
            apply_set(iface, rest)
            return "errno=0\n\n"
        raise UapiError(errno.EINVAL, f"unknown operation {op!r}")
    except UapiError as e:
        log.info("%s: UAPI request refused: %s", iface.ifname, e)
        return f"errno=-{e.code}\n\n"
    except OverlayError as e:
        log.info("%s: UAPI request refused: %s", iface.ifname, e)
        return f"errno=-{errno.EINVAL}\n\n"


class UapiServer:
    """Serves ``<directory>/<ifname>.sock`` (0600, root's) for an interface, one thread per connection."""

    def __init__(self, iface: Interface, directory: Path = DEFAULT_DIR) -> None:
        self.iface = iface
        self.path = directory / f"{iface.ifname}.sock"
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(0.5)
            probe.connect(str(self.path))
            probe.close()
            raise OverlayError(f"{self.path} is served by another process", where=iface.ifname)
        except (FileNotFoundError, ConnectionRefusedError):
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        self.sock = bind_unix(self.path, 0o600)
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._serve, name=f"uapi-{iface.ifname}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    while b"\n\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                        if len(buf) > MAX_REQUEST:
                            conn.sendall(f"errno=-{errno.EINVAL}\n\n".encode())
                            return
                    request, _, buf = buf.partition(b"\n\n")
                    answer = handle(self.iface, request.decode(errors="replace"))
                    conn.sendall(answer.encode())
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        try:
            if self.path.exists():
                os.unlink(self.path)
        except OSError:
            pass
