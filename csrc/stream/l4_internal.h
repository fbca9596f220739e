/* Shared between the files of csrc/stream/ only (the public face is include/zlayer/l4.h). */
#ifndef ZLAYER_L4_INTERNAL_H
#define ZLAYER_L4_INTERNAL_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "zlayer/l4.h"

#define L4_BUFSZ (16 * 1024)
#define L4_UDP_BUCKETS 4096
#define L4_UDP_BATCH 16 /* datagrams per recvmmsg/sendmmsg; the worker's buffer holds this many 64 KiB slots */

enum { REF_LISTEN = 1, REF_EVENT, REF_CLIENT, REF_BACKEND, REF_UDP_SESSION };

typedef struct l4_backend {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[64];
    int port;
    atomic_int refs;
    atomic_int healthy;
    atomic_uint consecutive_failures;
    atomic_uint_fast64_t active, total, failures, bytes_in, bytes_out;
} l4_backend_t;

typedef struct l4_table {
    atomic_int refs;
    size_t n;
    l4_backend_t *b[];
} l4_table_t;

typedef struct {
    int kind;
    void *obj;
} l4_ref_t;

struct l4_worker;

struct l4_listener {
    l4_config_t cfg;
    int port;
    pthread_mutex_t lock; /* guards table and ssl pointers (held for a few instructions) */
    l4_table_t *table;
    SSL_CTX *ssl;
    atomic_uint_fast64_t rr;
    atomic_int running;
    atomic_int draining;    /* set by l4_stop_accepting before it wakes the workers */
    atomic_int accepting;   /* workers whose listening socket is still open */
    _Atomic double drain_deadline; /* monotonic seconds; l4_hurry pulls it to 0 */
    struct l4_worker *workers;
    int nworkers;
    struct {
        atomic_uint_fast64_t connections_total, connections_active, bytes_in, bytes_out, bytes_spliced;
        atomic_uint_fast64_t connect_errors, no_backend, tls_errors;
        atomic_uint_fast64_t udp_sessions_total, udp_sessions_active, udp_datagrams_in, udp_datagrams_out;
    } st;
};

typedef struct l4_conn l4_conn_t;
typedef struct l4_usess l4_usess_t;

typedef struct l4_worker {
    l4_listener_t *l;
    pthread_t thread;
    int started;
    int epfd, lfd, evfd;
    l4_ref_t lref, evref;
    l4_conn_t *conns;            /* TCP: every open connection (for timeouts and shutdown) */
    double accept_paused_until;  /* TCP: >0 while accepting is paused for lack of descriptors */
    l4_conn_t *dead;             /* TCP: closed during the current epoll batch, freed after it */
    l4_usess_t **buckets;        /* UDP: sessions by client address */
    l4_usess_t *sessions;        /* UDP: every session */
    char *udpbuf;
} l4_worker_t;

double l4_now(void);
l4_table_t *l4_table_get(l4_listener_t *l);
void l4_table_put(l4_table_t *t);
void l4_backend_put(l4_backend_t *b);
/* Picks a backend of t, skipping those whose bit is set in tried; NULL when none is left. */
l4_backend_t *l4_pick(l4_listener_t *l, l4_table_t *t, uint64_t *tried);
SSL_CTX *l4_ssl_get(l4_listener_t *l);

void l4_tcp_accept(l4_worker_t *w);
void l4_tcp_event(l4_worker_t *w, l4_ref_t *ref, uint32_t events);
void l4_tcp_sweep(l4_worker_t *w, double now);
void l4_tcp_close_all(l4_worker_t *w);
void l4_tcp_reap(l4_worker_t *w);

void l4_udp_listen_event(l4_worker_t *w);
void l4_udp_session_event(l4_worker_t *w, l4_usess_t *s);
void l4_udp_sweep(l4_worker_t *w, double now);
void l4_udp_close_all(l4_worker_t *w);

#endif
