# cython: language_level=3
"""Python face of the WireGuard data path (csrc/wg/). See _wg.pyi for the typed API."""

import ipaddress
import socket
import struct

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset, strncpy

from zlayer.overlay._wg cimport *

from zlayer.errors import OverlayError

MAX_PEERS = WG_MAX_PEERS


def sockaddr(str host, int port):
    """struct sockaddr_in / sockaddr_in6 bytes of a numeric address."""
    ip = ipaddress.ip_address(host.strip("[]"))
    if not 0 < port < 65536:
        raise OverlayError(f"endpoint port {port} is out of range", where=host)
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + ip.packed + bytes(8)
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + ip.packed + struct.pack("=I", 0)


def from_sockaddr(bytes sa):
    """(host, port) of struct sockaddr bytes; a v4-mapped IPv6 address comes back as IPv4."""
    if len(sa) < 8:
        return None
    family = struct.unpack("=H", sa[:2])[0]
    port = struct.unpack("!H", sa[2:4])[0]
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(sa[4:8])), port
    if family == socket.AF_INET6 and len(sa) >= 24:
        ip = ipaddress.IPv6Address(sa[8:24])
        return (str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)), port
    return None


cdef class Device:
    """One WireGuard interface: a TUN device and a UDP socket with their worker threads; see _wg.pyi."""

    cdef wg_dev_t *_d
    cdef readonly str ifname
    cdef bint _running

    def __cinit__(self, str ifname, int listen_port=0, *, int mtu=1420, bint offload=True,
                  double reject_after_time=180.0, unsigned long long rekey_after_messages=1 << 60):
        cdef wg_config_t cfg
        cdef char err[256]
        cdef int r
        memset(&cfg, 0, sizeof(cfg))
        nb = ifname.encode()
        if not nb or len(nb) > 15:
            raise OverlayError(f"interface name {ifname!r} must be 1 to 15 bytes")
        strncpy(cfg.ifname, nb, 15)
        cfg.listen_port = listen_port
        cfg.mtu = mtu
        cfg.offload = 1 if offload else 0
        cfg.reject_after_time = reject_after_time
        cfg.rekey_after_messages = rekey_after_messages
        with nogil:
            r = wg_create(&cfg, &self._d, err, sizeof(err))
        if r != 0:
            raise OverlayError(err.decode(errors="replace"), where=ifname)
        self.ifname = ifname

    def __dealloc__(self):
        if self._d is not NULL:
            with nogil:
                wg_destroy(self._d)
            self._d = NULL

    cdef wg_dev_t *_dev(self) except NULL:
        if self._d is NULL:
            raise OverlayError("the interface is closed", where=self.ifname)
        return self._d

    def close(self):
        if self._d is not NULL:
            with nogil:
                wg_destroy(self._d)
            self._d = NULL
        self._running = False

    @property
    def listen_port(self):
        return wg_listen_port(self._dev())

    @property
    def ifindex(self):
        return wg_ifindex(self._dev())

    @property
    def running(self):
        return self._running

    def start(self):
        cdef char err[256]
        cdef int r
        cdef wg_dev_t *d = self._dev()
        with nogil:
            r = wg_start(d, err, sizeof(err))
        if r != 0:
            raise OverlayError(err.decode(errors="replace"), where=self.ifname)
        self._running = True

    def stop(self):
        cdef wg_dev_t *d = self._dev()
        with nogil:
            wg_stop(d)
        self._running = False

    def set_listen_port(self, int port):
        cdef char err[256]
        cdef int r
        cdef wg_dev_t *d = self._dev()
        with nogil:
            r = wg_set_listen_port(d, port, err, sizeof(err))
        if r != 0:
            raise OverlayError(err.decode(errors="replace"), where=self.ifname)

    def set_fwmark(self, unsigned int mark):
        if wg_set_fwmark(self._dev(), mark) != 0:
            raise OverlayError(f"cannot set fwmark {mark} on the UDP socket", where=self.ifname)

    def add_peer(self, int peer):
        if wg_peer_add(self._dev(), peer) != 0:
            raise OverlayError(f"peer slot {peer} is out of range (0..{WG_MAX_PEERS - 1})", where=self.ifname)

    def remove_peer(self, int peer):
        cdef wg_dev_t *d = self._dev()
        with nogil:
            wg_peer_remove(d, peer)

    def set_endpoint(self, int peer, str host, int port):
        cdef bytes sa = sockaddr(host, port)
        if wg_peer_set_endpoint(self._dev(), peer, <const char *>sa, len(sa)) != 0:
            raise OverlayError(f"cannot set the endpoint of peer slot {peer}", where=self.ifname)

    def set_allowed_ips(self, entries):
        cdef list items = [(int(slot), ipaddress.ip_network(cidr, strict=False)) for slot, cidr in entries]
        cdef size_t n = len(items)
        cdef wg_allowed_ip_t *t = <wg_allowed_ip_t *>malloc((n + 1) * sizeof(wg_allowed_ip_t))
        cdef char err[256]
        cdef int r
        cdef bytes packed
        if t is NULL:
            raise MemoryError()
        try:
            memset(t, 0, (n + 1) * sizeof(wg_allowed_ip_t))
            for i in range(n):
                peer, net = items[i]
                packed = net.network_address.packed
                t[i].family = net.version
                memcpy(t[i].addr, <const char *>packed, len(packed))
                t[i].cidr = net.prefixlen
                t[i].peer = peer
            r = wg_set_allowed_ips(self._dev(), t, n, err, sizeof(err))
        finally:
            free(t)
        if r != 0:
            raise OverlayError(err.decode(errors="replace"), where=self.ifname)

    def install_session(self, int peer, unsigned int local_index, unsigned int remote_index, bytes send_key,
                        bytes recv_key, bint initiator, long long created_ns):
        if len(send_key) != WG_KEY_LEN or len(recv_key) != WG_KEY_LEN:
            raise OverlayError("session keys are 32 bytes", where=self.ifname)
        cdef const uint8_t *sk = send_key
        cdef const uint8_t *rk = recv_key
        cdef wg_dev_t *d = self._dev()
        cdef int r
        with nogil:
            r = wg_peer_install_session(d, peer, local_index, remote_index, sk, rk, 1 if initiator else 0,
                                        created_ns)
        if r < 0:
            raise OverlayError(f"cannot install a session for peer slot {peer} (index {local_index} taken?)",
                               where=self.ifname)
        return r

    def clear_sessions(self, int peer):
        cdef wg_dev_t *d = self._dev()
        with nogil:
            wg_peer_clear_sessions(d, peer)

    def send_keepalive(self, int peer):
        cdef wg_dev_t *d = self._dev()
        cdef int r
        with nogil:
            r = wg_peer_send_keepalive(d, peer)
        return r == 0

    def peer_info(self, int peer):
        cdef wg_peer_info_t i
        wg_peer_info(self._dev(), peer, &i)
        return {
            "present": bool(i.present),
            "endpoint": from_sockaddr(bytes(i.endpoint[:i.endpoint_len])) if i.endpoint_len else None,
            "rx_bytes": i.rx_bytes,
            "tx_bytes": i.tx_bytes,
            "last_tx_ns": i.last_tx_ns,
            "last_rx_ns": i.last_rx_ns,
            "last_tx_data_ns": i.last_tx_data_ns,
            "last_rx_data_ns": i.last_rx_data_ns,
            "want_handshake": bool(i.want_handshake),
            "has_current": bool(i.has_current),
            "current_initiator": bool(i.current_initiator),
            "current_created_ns": i.current_created_ns,
            "current_send_counter": i.current_send_counter,
            "staged": i.staged,
        }

    def send_to(self, str host, int port, bytes msg):
        cdef bytes sa = sockaddr(host, port)
        cdef const uint8_t *m = msg
        return wg_send_to(self._dev(), <const char *>sa, len(sa), m, len(msg)) == 0

    def wait(self, double timeout, int cap=256):
        cdef wg_hs_msg_t *out = <wg_hs_msg_t *>malloc(cap * sizeof(wg_hs_msg_t))
        cdef size_t n
        cdef wg_dev_t *d = self._dev()
        if out is NULL:
            raise MemoryError()
        try:
            with nogil:
                n = wg_wait(d, timeout, out, cap)
            return [
                (bytes(out[i].data[:out[i].len]), from_sockaddr(bytes(out[i].from_[:out[i].from_len])),
                 out[i].received_ns)
                for i in range(n)
            ]
        finally:
            free(out)

    def wake(self):
        if self._d is not NULL:
            wg_wake(self._d)

    def stats(self):
        cdef wg_stats_t s
        wg_get_stats(self._dev(), &s)
        return {
            "rx_datagrams": s.rx_datagrams, "rx_data_packets": s.rx_data_packets, "rx_keepalives": s.rx_keepalives,
            "tx_datagrams": s.tx_datagrams, "tx_data_packets": s.tx_data_packets, "tx_keepalives": s.tx_keepalives,
            "handshake_queued": s.handshake_queued, "drop_malformed": s.drop_malformed,
            "drop_unknown_index": s.drop_unknown_index, "drop_auth": s.drop_auth, "drop_replay": s.drop_replay,
            "drop_allowed_ips": s.drop_allowed_ips, "drop_no_peer": s.drop_no_peer,
            "drop_handshake_queue": s.drop_handshake_queue, "drop_staged": s.drop_staged,
            "drop_send_errors": s.drop_send_errors, "gso_sends": s.gso_sends, "gro_receives": s.gro_receives,
            "tso_reads": s.tso_reads, "coalesced_writes": s.coalesced_writes,
            "handshake_backlog": s.handshake_backlog, "vnet_hdr": bool(s.vnet_hdr), "udp_gso": bool(s.udp_gso),
            "udp_gro": bool(s.udp_gro),
        }
