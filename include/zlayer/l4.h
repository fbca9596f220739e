/* zlayer L4 stream proxy: the C data plane behind zlayer.proxy._l4.
 *
 * One listener = one bound port (TCP or UDP) served by N worker threads, each with its own SO_REUSEPORT socket and
 * epoll loop. Python configures a listener and swaps its backend table and TLS certificate atomically; no Python
 * runs per connection or per datagram. Files: csrc/stream/l4_core.c (listener, tables, workers, stats),
 * l4_tcp.c (TCP relay: read/write then splice, TLS termination), l4_udp.c (UDP sessions), l4_pp.c (PROXY header).
 */
#ifndef ZLAYER_L4_H
#define ZLAYER_L4_H

#include <stddef.h>
#include <stdint.h>

typedef struct l4_listener l4_listener_t;

enum { L4_TCP = 1, L4_UDP = 2 };
enum { L4_ROUND_ROBIN = 0, L4_LEAST_CONN = 1 };

typedef struct {
    int protocol;             /* L4_TCP or L4_UDP */
    char host[64];            /* numeric bind address (IPv4 or IPv6) */
    int port;                 /* 0 = pick a free port (read it back with l4_port) */
    int workers;              /* worker threads, >= 1 */
    int proxy_protocol;       /* TCP: 0 none, 1 PROXY v1 text, 2 PROXY v2 binary */
    int strategy;             /* L4_ROUND_ROBIN or L4_LEAST_CONN */
    long splice_threshold;    /* TCP: bytes one direction moves with read/write before it switches to splice; <0 never */
    double session_timeout;   /* UDP: seconds a client session may stay idle */
    double connect_timeout;   /* TCP: seconds to connect to a backend before trying the next one */
    double idle_timeout;      /* TCP: close a connection idle this long; 0 = never */
    double handshake_timeout; /* TCP with TLS: close a client that has not finished its handshake by then (10 s) */
} l4_config_t;

typedef struct {
    uint64_t connections_total, connections_active, bytes_in, bytes_out, bytes_spliced;
    uint64_t connect_errors, no_backend, tls_errors;
    uint64_t udp_sessions_total, udp_sessions_active, udp_datagrams_in, udp_datagrams_out;
} l4_stats_t;

typedef struct {
    char host[64];
    int port;
    int healthy;
    uint32_t consecutive_failures;
    uint64_t active, total, failures, bytes_in, bytes_out;
} l4_backend_info_t;

/* Every function returning int gives 0 on success and -1 with a message in err on failure. */
int l4_create(const l4_config_t *cfg, l4_listener_t **out, char *err, size_t errlen);
int l4_set_tls(l4_listener_t *l, const char *cert_file, const char *key_file, char *err, size_t errlen);
int l4_set_backends(l4_listener_t *l, const char *const *hosts, const int *ports, size_t n, char *err, size_t errlen);
int l4_set_health(l4_listener_t *l, const char *host, int port, int healthy);
int l4_start(l4_listener_t *l, char *err, size_t errlen);
void l4_stop(l4_listener_t *l);
/* TCP: every worker accepts what waits in its backlog and closes its listening socket; returns when all have (at
 * most 2 s). Open connections go on. Then call l4_drain (or l4_stop). */
void l4_stop_accepting(l4_listener_t *l);
/* Handover between data-plane processes: a listening socket received from the predecessor, taken by the next
 * l4_start on its address (ownership passes); and the listening sockets of l (still owned by l), at most cap. */
void l4_inherit_fd(int fd);
size_t l4_listening_fds(l4_listener_t *l, int *out, size_t cap);
/* Stops taking connections, lets the open ones finish for up to grace seconds, then stops (TCP; UDP just stops).
 * Blocks until the workers are gone. */
void l4_drain(l4_listener_t *l, double grace);
/* Ends a running l4_drain (from another thread) within a quarter second, closing what is still open. */
void l4_hurry(l4_listener_t *l);
void l4_destroy(l4_listener_t *l);
int l4_port(const l4_listener_t *l);
void l4_get_stats(l4_listener_t *l, l4_stats_t *out);
size_t l4_get_backends(l4_listener_t *l, l4_backend_info_t *out, size_t cap);

/* PROXY protocol header for a connection from src to dst (both sockaddr_in/in6 or NULL); returns its length, or 0
 * when buf is too small. version 1 = text, 2 = binary. Exposed for tests. */
size_t l4_proxy_header(int version, const void *src, const void *dst, char *buf, size_t cap);

#endif
