/* zlayer L7 (HTTP/1.1) reverse proxy data plane: public API (used by zlayer/proxy/_l7.pyx) and the parser. */
#ifndef ZLAYER_L7_H
#define ZLAYER_L7_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define L7_MAX_HEAD 16384
#define L7_MAX_HEADERS 100
#define L7_NBUCKETS 12 /* LATENCY_BUCKETS of zlayer/proxy/l7.py; +Inf is the 13th slot */

/* ---- parser (l7_parse.c) ---- */
typedef struct {
    uint16_t name_off, name_len, val_off, val_len, line_off, line_len; /* line includes its CRLF (or LF) */
} l7_hdr_t;

typedef struct {
    uint16_t method_len, target_off, target_len; /* the request-target as sent */
    uint16_t path_off, path_len; /* its origin-form part: the target itself, or what follows an absolute-form's
                                  * authority (empty, or "?query", for "http://host" and "http://host?query") */
    uint16_t auth_off, auth_len; /* absolute-form ("http://host:port/path"): the authority, which overrides Host;
                                  * auth_len 0 for origin-form and "*" */
    int minor;
    int nhdr;
    l7_hdr_t hdr[L7_MAX_HEADERS];
    int64_t content_length; /* -1: none */
    int chunked, is_head, conn_close, conn_keepalive, conn_upgrade;
    int host_idx, xff_idx;
    size_t head_len;
} l7_req_t;

typedef struct {
    int status, minor, nhdr;
    l7_hdr_t hdr[L7_MAX_HEADERS];
    int64_t content_length;
    int chunked, conn_close, conn_keepalive;
    int bare_lf;         /* some line of the head ended in LF alone: re-emit it with CRLF */
    uint16_t status_len; /* status line without its line end */
    size_t head_len;
} l7_resp_t;

enum { L7_NEED_MORE = 0, L7_BAD = -400, L7_TOO_BIG = -431 };

/* >0 head length; 0 need more; L7_BAD; L7_TOO_BIG. */
int l7_parse_request(const char *buf, size_t len, l7_req_t *r);
int l7_parse_response(const char *buf, size_t len, l7_resp_t *r);

typedef struct {
    int state;
    int digits;
    uint64_t remaining;
} l7_chunk_t;

/* Feeds chunked-encoding bytes; returns bytes consumed (stops right after the end), -1 on malformed input. */
ssize_t l7_chunk_feed(l7_chunk_t *c, const char *buf, size_t len, int *done);
/* The same, decoding: the payload is appended to out (*olen bytes used of cap; stops when it is full); chunk
 * framing and trailers are consumed and dropped. */
ssize_t l7_chunk_decode(l7_chunk_t *c, const char *buf, size_t len, char *out, size_t cap, size_t *olen, int *done);

/* ---- proxy (the other files: see l7_int.h) ---- */
typedef struct l7_proxy l7_proxy_t;

typedef struct {
    int workers;
    double header_timeout, idle_timeout, connect_timeout, response_timeout;
} l7_config_t;

typedef struct {
    const char *key;    /* "service#endpoint": stats identity */
    int port;           /* listener port this route belongs to */
    const char *host;   /* NULL/"" any, "*.suffix" wildcard, else exact */
    const char *prefix; /* path prefix */
    int strip_prefix;
    int group;          /* index into groups */
    int strategy;       /* L7_ROUND_ROBIN or L7_LEAST_CONNECTIONS: how the group's backend is chosen */
} l7_route_def_t;

enum { L7_ROUND_ROBIN = 0, L7_LEAST_CONNECTIONS = 1 };

typedef struct {
    const char *host; /* numeric IP */
    int port;
    int healthy;
} l7_backend_def_t;

typedef struct {
    uint64_t requests, status[5], bytes_in, bytes_out, active, buckets[L7_NBUCKETS + 1], latency_ns;
} l7_route_stats_t;

int l7_create(const l7_config_t *cfg, l7_proxy_t **out, char *err, size_t errlen);
/* Opens (idempotent) a listener on host:port for every worker; returns the bound port or -1. */
int l7_listen(l7_proxy_t *p, const char *host, int port, int tls, char *err, size_t errlen);
/* Closes the listener on host:port in every worker (each drains its accept queue first; accepted connections stay)
 * and returns once they are closed: the number of sockets closed, 0 when none listened there. */
int l7_unlisten(l7_proxy_t *p, const char *host, int port);
/* Handover between data-plane processes: a listening socket received from the predecessor, taken by the next
 * l7_listen of its address (ownership passes); and the listening sockets of p (still owned by p), at most cap. */
void l7_inherit_fd(int fd);
size_t l7_listening_fds(l7_proxy_t *p, int *out, size_t cap);
/* Replaces the certificate table (TLS listeners pick one by SNI: exact name, then *.suffix, else the first). */
int l7_set_certificates(l7_proxy_t *p, const char *const *domains, const char *const *certs, const char *const *keys,
                        size_t n, char *err, size_t errlen);
int l7_start(l7_proxy_t *p, char *err, size_t errlen);
/* Builds and swaps in a new table; groups[i] has ngroup_backends[i] backends, group_names[i] its name. */
int l7_apply(l7_proxy_t *p, const l7_route_def_t *routes, size_t nroutes, const char *const *group_names,
             const l7_backend_def_t *const *groups, const size_t *ngroup_backends, size_t ngroups, char *err,
             size_t errlen);
int l7_set_health(l7_proxy_t *p, const char *group, const char *host, int port, int healthy);
/* Copies stats of every route key ever seen; returns the total count (may exceed cap). */
size_t l7_stats(l7_proxy_t *p, char (*keys)[128], l7_route_stats_t *out, size_t cap);
/* In-flight requests per backend of the current table: "group|ip:port" strings. */
size_t l7_backend_active(l7_proxy_t *p, char (*keys)[192], uint64_t *active, size_t cap);
int l7_set_challenge(l7_proxy_t *p, const char *token, const char *keyauth);
void l7_remove_challenge(l7_proxy_t *p, const char *token);
void l7_destroy(l7_proxy_t *p);
#endif
