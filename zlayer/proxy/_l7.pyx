# cython: language_level=3
"""Python face of the L7 HTTP/1.1 proxy data plane (csrc/proxy/). See _l7.pyi for the typed API."""

from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from zlayer.proxy._l7 cimport *

from zlayer.errors import ProxyError


cdef class Proxy:
    """HTTP/1.1 reverse proxy served by worker threads (one epoll loop each); see _l7.pyi."""

    cdef l7_proxy_t *_p
    cdef dict _ports
    cdef bint _started

    def __cinit__(self, int workers=1, double header_timeout=30.0, double idle_timeout=60.0,
                  double connect_timeout=5.0, double response_timeout=60.0):
        cdef l7_config_t cfg
        cdef char err[256]
        memset(&cfg, 0, sizeof(cfg))
        cfg.workers = workers
        cfg.header_timeout = header_timeout
        cfg.idle_timeout = idle_timeout
        cfg.connect_timeout = connect_timeout
        cfg.response_timeout = response_timeout
        if l7_create(&cfg, &self._p, err, sizeof(err)) != 0:
            raise ProxyError(err.decode(errors="replace"))
        self._ports = {}

    def __dealloc__(self):
        if self._p is not NULL:
            with nogil:
                l7_destroy(self._p)
            self._p = NULL

    def _check(self):
        if self._p is NULL:
            raise ProxyError("the L7 proxy is closed")

    def set_certificates(self, certificates):
        """certificates: (domain, cert_file, key_file) rows; TLS listeners choose one by SNI."""
        cdef char err[768]
        cdef size_t n = len(certificates)
        cdef const char **d = <const char **>calloc(n + 1, sizeof(char *))
        cdef const char **c = <const char **>calloc(n + 1, sizeof(char *))
        cdef const char **k = <const char **>calloc(n + 1, sizeof(char *))
        cdef int r
        self._check()
        keep = []
        try:
            if d is NULL or c is NULL or k is NULL:
                raise MemoryError()
            for i, (domain, cert, key) in enumerate(certificates):
                row = (str(domain).encode(), str(cert).encode(), str(key).encode())
                keep.append(row)
                d[i] = row[0]
                c[i] = row[1]
                k[i] = row[2]
            with nogil:
                r = l7_set_certificates(self._p, d, c, k, n, err, sizeof(err))
            if r != 0:
                raise ProxyError(err.decode(errors="replace"))
        finally:
            free(<void *>d)
            free(<void *>c)
            free(<void *>k)

    def listen(self, str host, int port, bint tls=False):
        cdef char err[256]
        cdef int r
        self._check()
        key = (host, port)
        if port and key in self._ports:
            return self._ports[key]
        hb = host.encode()
        r = l7_listen(self._p, hb, port, 1 if tls else 0, err, sizeof(err))
        if r < 0:
            raise ProxyError(err.decode(errors="replace"), where=f"http {host}:{port}")
        self._ports[(host, r)] = r
        if port:
            self._ports[key] = r
        return r

    def unlisten(self, str host, int port):
        """Closes the listener on host:port (every worker's socket; accepted connections stay); False if none."""
        cdef int r
        cdef const char *h
        self._check()
        hb = host.encode()
        h = hb
        with nogil:
            r = l7_unlisten(self._p, h, port)
        self._ports.pop((host, port), None)
        return r > 0

    def start(self):
        cdef char err[256]
        self._check()
        if l7_start(self._p, err, sizeof(err)) != 0:
            raise ProxyError(err.decode(errors="replace"))
        self._started = True

    def apply(self, routes, groups):
        """routes: (key, port, host|None, prefix, strip_prefix, group_index[, strategy]); groups: (name, [(ip, port,
        healthy)]). strategy is "round_robin" (default) or "least_connections"."""
        cdef char err[512]
        cdef size_t nr = len(routes)
        cdef size_t ng = len(groups)
        cdef l7_route_def_t *rd = NULL
        cdef const char **gnames = NULL
        cdef l7_backend_def_t **gb = NULL
        cdef size_t *gn = NULL
        cdef int r
        self._check()
        keep = []
        try:
            rd = <l7_route_def_t *>calloc(nr + 1, sizeof(l7_route_def_t))
            gnames = <const char **>calloc(ng + 1, sizeof(char *))
            gb = <l7_backend_def_t **>calloc(ng + 1, sizeof(l7_backend_def_t *))
            gn = <size_t *>calloc(ng + 1, sizeof(size_t))
            if rd is NULL or gnames is NULL or gb is NULL or gn is NULL:
                raise MemoryError()
            for i, row in enumerate(routes):
                key, port, host, prefix, strip, group = row[:6]
                strategy = row[6] if len(row) > 6 else "round_robin"
                if strategy not in ("round_robin", "least_connections"):
                    raise ProxyError(f"unknown load-balancing strategy {strategy!r}", where=str(key))
                kb = str(key).encode()
                pb = str(prefix or "/").encode()
                hb = str(host).encode() if host else b""
                keep.extend((kb, pb, hb))
                if len(kb) >= 128:
                    raise ProxyError(f"route key {key!r} is too long")
                rd[i].key = kb
                rd[i].port = int(port)
                rd[i].host = hb
                rd[i].prefix = pb
                rd[i].strip_prefix = 1 if strip else 0
                rd[i].group = int(group)
                rd[i].strategy = 1 if strategy == "least_connections" else 0
            for i, (name, backends) in enumerate(groups):
                nb = str(name).encode()
                keep.append(nb)
                gnames[i] = nb
                gn[i] = len(backends)
                gb[i] = <l7_backend_def_t *>calloc(len(backends) + 1, sizeof(l7_backend_def_t))
                if gb[i] is NULL:
                    raise MemoryError()
                for j, (h, p, healthy) in enumerate(backends):
                    hb = str(h).encode()
                    keep.append(hb)
                    gb[i][j].host = hb
                    gb[i][j].port = int(p)
                    gb[i][j].healthy = 1 if healthy else 0
            with nogil:
                r = l7_apply(self._p, rd, nr, gnames, <const l7_backend_def_t *const *>gb, gn, ng, err, sizeof(err))
            if r != 0:
                raise ProxyError(err.decode(errors="replace"))
        finally:
            if gb is not NULL:
                for i in range(ng):
                    free(gb[i])
            free(rd)
            free(<void *>gnames)
            free(gb)
            free(gn)

    def set_health(self, str group, str host, int port, bint healthy):
        self._check()
        return l7_set_health(self._p, group.encode(), host.encode(), port, 1 if healthy else 0) == 0

    cdef size_t _read_stats(self, char (**keys)[128], l7_route_stats_t **st) except? 0:
        """Every route's counters in one call (buffers the caller frees); returns how many."""
        cdef size_t cap = 64
        cdef size_t n
        self._check()
        while True:
            keys[0] = <char (*)[128]>calloc(cap, 128)
            st[0] = <l7_route_stats_t *>calloc(cap, sizeof(l7_route_stats_t))
            if keys[0] is NULL or st[0] is NULL:
                free(keys[0])
                free(st[0])
                raise MemoryError()
            n = l7_stats(self._p, keys[0], st[0], cap)
            if n <= cap:
                return n
            free(keys[0])
            free(st[0])
            cap = n + 16

    def stats(self):
        cdef char (*keys)[128]
        cdef l7_route_stats_t *st
        cdef size_t n = self._read_stats(&keys, &st)
        out = {}
        try:
            for i in range(n):
                s = st[i]
                out[(<bytes>keys[i]).decode(errors="replace")] = {
                    "requests": s.requests,
                    "status": [s.status[k] for k in range(5)],
                    "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out,
                    "active": s.active,
                    "buckets": [s.buckets[k] for k in range(L7_NBUCKETS + 1)],
                    "latency_sum": s.latency_ns / 1e9,
                }
        finally:
            free(keys)
            free(st)
        return out

    def requests(self):
        cdef char (*keys)[128]
        cdef l7_route_stats_t *st
        cdef size_t n = self._read_stats(&keys, &st)
        out = {}
        try:
            for i in range(n):
                out[(<bytes>keys[i]).decode(errors="replace")] = st[i].requests
        finally:
            free(keys)
            free(st)
        return out

    def backend_active(self):
        cdef size_t cap = 256
        cdef size_t n
        cdef char (*keys)[192]
        cdef uint64_t *act
        self._check()
        while True:
            keys = <char (*)[192]>calloc(cap, 192)
            act = <uint64_t *>calloc(cap, sizeof(uint64_t))
            if keys is NULL or act is NULL:
                free(keys)
                free(act)
                raise MemoryError()
            n = l7_backend_active(self._p, keys, act, cap)
            if n <= cap:
                break
            free(keys)
            free(act)
            cap = n + 16
        out = {}
        try:
            for i in range(n):
                out[(<bytes>keys[i]).decode(errors="replace")] = act[i]
        finally:
            free(keys)
            free(act)
        return out

    def set_challenge(self, str token, str key_authorization):
        self._check()
        if l7_set_challenge(self._p, token.encode(), key_authorization.encode()) != 0:
            raise ProxyError("ACME token or key authorization is too long", where=token[:64])

    def remove_challenge(self, str token):
        self._check()
        l7_remove_challenge(self._p, token.encode())

    def close(self):
        if self._p is not NULL:
            with nogil:
                l7_destroy(self._p)
            self._p = NULL


def inherit_fds(fds):
    """Listening sockets handed over by a predecessor data-plane process (owned from now on); the next listen of
    each one's address takes it instead of binding."""
    for fd in fds:
        l7_inherit_fd(int(fd))


def listening_fds(Proxy proxy):
    """The descriptors of ``proxy``'s listening sockets (still its own: dup them to hand them over)."""
    cdef int fds[1024]
    cdef size_t n = l7_listening_fds(proxy._p, fds, 1024)
    return [fds[i] for i in range(n)]
