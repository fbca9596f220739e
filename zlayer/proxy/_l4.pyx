# cython: language_level=3
"""Python face of the L4 stream proxy data plane (csrc/stream/). See _l4.pyi for the typed API."""

from libc.stdlib cimport free, malloc
from libc.string cimport memset, strncpy

from zlayer.proxy._l4 cimport *

from zlayer.errors import ProxyError

_STATS_FIELDS = (
    "connections_total", "connections_active", "bytes_in", "bytes_out", "bytes_spliced", "connect_errors",
    "no_backend", "tls_errors", "udp_sessions_total", "udp_sessions_active", "udp_datagrams_in", "udp_datagrams_out",
)


cdef class Listener:
    """One TCP or UDP listening port served by worker threads; see _l4.pyi."""

    cdef l4_listener_t *_l
    cdef readonly str protocol
    cdef readonly str host
    cdef bint _running

    def __cinit__(self, str protocol, str host, int port, *, int workers=1, int proxy_protocol=0,
                  str strategy="round_robin", long splice_threshold=65536, double session_timeout=60.0,
                  double connect_timeout=5.0, double idle_timeout=0.0, double handshake_timeout=10.0):
        cdef l4_config_t cfg
        cdef char err[256]
        memset(&cfg, 0, sizeof(cfg))
        if protocol not in ("tcp", "udp"):
            raise ProxyError(f"stream protocol must be tcp or udp, got {protocol!r}")
        if strategy not in ("round_robin", "least_connections"):
            raise ProxyError(f"strategy must be round_robin or least_connections, got {strategy!r}")
        hb = host.encode()
        if len(hb) >= 64:
            raise ProxyError(f"listen address {host!r} is too long")
        cfg.protocol = L4_TCP if protocol == "tcp" else L4_UDP
        strncpy(cfg.host, hb, 63)
        cfg.port = port
        cfg.workers = workers
        cfg.proxy_protocol = proxy_protocol
        cfg.strategy = L4_ROUND_ROBIN if strategy == "round_robin" else L4_LEAST_CONN
        cfg.splice_threshold = splice_threshold
        cfg.session_timeout = session_timeout
        cfg.connect_timeout = connect_timeout
        cfg.idle_timeout = idle_timeout
        cfg.handshake_timeout = handshake_timeout
        if l4_create(&cfg, &self._l, err, sizeof(err)) != 0:
            raise ProxyError(err.decode(errors="replace"), where=f"{protocol} {host}:{port}")
        self.protocol = protocol
        self.host = host

    def __dealloc__(self):
        if self._l is not NULL:
            with nogil:
                l4_destroy(self._l)
            self._l = NULL

    @property
    def port(self):
        return l4_port(self._l)

    @property
    def running(self):
        return self._running

    def start(self):
        cdef char err[256]
        cdef int r
        with nogil:
            r = l4_start(self._l, err, sizeof(err))
        if r != 0:
            raise ProxyError(err.decode(errors="replace"), where=f"{self.protocol} {self.host}:{self.port}")
        self._running = True

    def stop(self):
        with nogil:
            l4_stop(self._l)
        self._running = False

    def drain(self, double grace=30.0):
        with nogil:
            l4_drain(self._l, grace)
        self._running = False

    def stop_accepting(self):
        with nogil:
            l4_stop_accepting(self._l)

    def hurry(self):
        l4_hurry(self._l)

    def set_backends(self, backends):
        cdef list items = [(str(h).encode(), int(p)) for h, p in backends]
        cdef size_t n = len(items)
        cdef const char **hosts = <const char **>malloc((n + 1) * sizeof(char *))
        cdef int *ports = <int *>malloc((n + 1) * sizeof(int))
        cdef char err[256]
        cdef int r
        if hosts is NULL or ports is NULL:
            free(hosts)
            free(ports)
            raise MemoryError()
        try:
            for i in range(n):
                hosts[i] = <const char *>items[i][0]
                ports[i] = items[i][1]
            r = l4_set_backends(self._l, hosts, ports, n, err, sizeof(err))
        finally:
            free(hosts)
            free(ports)
        if r != 0:
            raise ProxyError(err.decode(errors="replace"), where=f"{self.protocol} {self.host}:{self.port}")

    def set_health(self, str host, int port, bint healthy):
        return l4_set_health(self._l, host.encode(), port, 1 if healthy else 0) == 0

    def set_tls(self, cert_file, key_file):
        cdef char err[512]
        cdef int r
        if cert_file is None or key_file is None:
            r = l4_set_tls(self._l, NULL, NULL, err, sizeof(err))
        else:
            cb = str(cert_file).encode()
            kb = str(key_file).encode()
            r = l4_set_tls(self._l, cb, kb, err, sizeof(err))
        if r != 0:
            raise ProxyError(err.decode(errors="replace"), where=f"{self.protocol} {self.host}:{self.port}")

    def stats(self):
        cdef l4_stats_t s
        l4_get_stats(self._l, &s)
        return {
            "connections_total": s.connections_total, "connections_active": s.connections_active,
            "bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "bytes_spliced": s.bytes_spliced,
            "connect_errors": s.connect_errors, "no_backend": s.no_backend, "tls_errors": s.tls_errors,
            "udp_sessions_total": s.udp_sessions_total, "udp_sessions_active": s.udp_sessions_active,
            "udp_datagrams_in": s.udp_datagrams_in, "udp_datagrams_out": s.udp_datagrams_out,
        }

    def backends(self):
        cdef size_t cap = 64
        cdef size_t total
        cdef l4_backend_info_t *buf
        while True:
            buf = <l4_backend_info_t *>malloc(cap * sizeof(l4_backend_info_t))
            if buf is NULL:
                raise MemoryError()
            total = l4_get_backends(self._l, buf, cap)
            if total <= cap:
                break
            free(buf)
            cap = total + 16
        try:
            return [
                {
                    "host": buf[i].host.decode(), "port": buf[i].port, "healthy": bool(buf[i].healthy),
                    "consecutive_failures": buf[i].consecutive_failures, "active": buf[i].active,
                    "total": buf[i].total, "failures": buf[i].failures, "bytes_in": buf[i].bytes_in,
                    "bytes_out": buf[i].bytes_out,
                }
                for i in range(total)
            ]
        finally:
            free(buf)


def proxy_header(int version, tuple src, tuple dst):
    """The PROXY protocol header the proxy writes for a connection from src to dst ((ip, port) pairs)."""
    import socket
    cdef char buf[128]
    cdef size_t n
    fam = socket.AF_INET6 if ":" in src[0] else socket.AF_INET
    sa = _sockaddr(fam, src)
    da = _sockaddr(fam, dst)
    cdef const char *sp = sa
    cdef const char *dp = da
    n = l4_proxy_header(version, sp, dp, buf, sizeof(buf))
    return buf[:n]


def _sockaddr(fam, addr):
    import socket
    import struct
    if fam == socket.AF_INET:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", addr[1]) + socket.inet_pton(fam, addr[0]) + bytes(8)
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", addr[1], 0) + socket.inet_pton(fam, addr[0])
            + bytes(4))


def inherit_fds(fds):
    """Listening sockets handed over by a predecessor data-plane process (owned from now on); the next start of a
    listener on each one's address takes it instead of binding."""
    for fd in fds:
        l4_inherit_fd(int(fd))


def listening_fds(Listener listener):
    """The descriptors of ``listener``'s sockets (still its own: dup them to hand them over)."""
    cdef int fds[1024]
    cdef size_t n = l4_listening_fds(listener._l, fds, 1024)
    return [fds[i] for i in range(n)]
