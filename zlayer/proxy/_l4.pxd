# C declarations of the L4 data plane (include/zlayer/l4.h).
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "zlayer/l4.h" nogil:
    ctypedef struct l4_listener_t:
        pass

    enum:
        L4_TCP
        L4_UDP
        L4_ROUND_ROBIN
        L4_LEAST_CONN

    ctypedef struct l4_config_t:
        int protocol
        char host[64]
        int port
        int workers
        int proxy_protocol
        int strategy
        long splice_threshold
        double session_timeout
        double connect_timeout
        double idle_timeout
        double handshake_timeout

    ctypedef struct l4_stats_t:
        uint64_t connections_total, connections_active, bytes_in, bytes_out, bytes_spliced
        uint64_t connect_errors, no_backend, tls_errors
        uint64_t udp_sessions_total, udp_sessions_active, udp_datagrams_in, udp_datagrams_out

    ctypedef struct l4_backend_info_t:
        char host[64]
        int port
        int healthy
        uint32_t consecutive_failures
        uint64_t active, total, failures, bytes_in, bytes_out

    int l4_create(const l4_config_t *cfg, l4_listener_t **out, char *err, size_t errlen)
    int l4_set_tls(l4_listener_t *l, const char *cert_file, const char *key_file, char *err, size_t errlen)
    int l4_set_backends(l4_listener_t *l, const char *const *hosts, const int *ports, size_t n, char *err,
                        size_t errlen)
    int l4_set_health(l4_listener_t *l, const char *host, int port, int healthy)
    int l4_start(l4_listener_t *l, char *err, size_t errlen)
    void l4_stop(l4_listener_t *l)
    void l4_drain(l4_listener_t *l, double grace)
    void l4_stop_accepting(l4_listener_t *l)
    void l4_inherit_fd(int fd)
    size_t l4_listening_fds(l4_listener_t *l, int *out, size_t cap)
    void l4_hurry(l4_listener_t *l)
    void l4_destroy(l4_listener_t *l)
    int l4_port(const l4_listener_t *l)
    void l4_get_stats(l4_listener_t *l, l4_stats_t *out)
    size_t l4_get_backends(l4_listener_t *l, l4_backend_info_t *out, size_t cap)
    size_t l4_proxy_header(int version, const void *src, const void *dst, char *buf, size_t cap)
