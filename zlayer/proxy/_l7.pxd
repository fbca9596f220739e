# C declarations of the L7 data plane (csrc/proxy/l7.h).
from libc.stdint cimport uint64_t


cdef extern from "l7.h" nogil:
    ctypedef struct l7_proxy_t:
        pass

    enum:
        L7_NBUCKETS

    ctypedef struct l7_config_t:
        int workers
        double header_timeout, idle_timeout, connect_timeout, response_timeout

    ctypedef struct l7_route_def_t:
        const char *key
        int port
        const char *host
        const char *prefix
        int strip_prefix
        int group
        int strategy

    ctypedef struct l7_backend_def_t:
        const char *host
        int port
        int healthy

    ctypedef struct l7_route_stats_t:
        uint64_t requests
        uint64_t status[5]
        uint64_t bytes_in, bytes_out, active
        uint64_t buckets[13]
        uint64_t latency_ns

    int l7_create(const l7_config_t *cfg, l7_proxy_t **out, char *err, size_t errlen)
    int l7_listen(l7_proxy_t *p, const char *host, int port, int tls, char *err, size_t errlen)
    int l7_set_certificates(l7_proxy_t *p, const char *const *domains, const char *const *certs,
                            const char *const *keys, size_t n, char *err, size_t errlen)
    int l7_unlisten(l7_proxy_t *p, const char *host, int port)
    void l7_inherit_fd(int fd)
    size_t l7_listening_fds(l7_proxy_t *p, int *out, size_t cap)
    int l7_start(l7_proxy_t *p, char *err, size_t errlen)
    int l7_apply(l7_proxy_t *p, const l7_route_def_t *routes, size_t nroutes, const char *const *group_names,
                 const l7_backend_def_t *const *groups, const size_t *ngroup_backends, size_t ngroups, char *err,
                 size_t errlen)
    int l7_set_health(l7_proxy_t *p, const char *group, const char *host, int port, int healthy)
    size_t l7_stats(l7_proxy_t *p, char (*keys)[128], l7_route_stats_t *out, size_t cap)
    size_t l7_backend_active(l7_proxy_t *p, char (*keys)[192], uint64_t *active, size_t cap)
    int l7_set_challenge(l7_proxy_t *p, const char *token, const char *keyauth)
    void l7_remove_challenge(l7_proxy_t *p, const char *token)
    void l7_destroy(l7_proxy_t *p)
