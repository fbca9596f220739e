/* zlayer L7 data plane (csrc/proxy/): the map of the component and what its files share. The public face is l7.h.
 *
 * One edge-triggered epoll loop per worker thread; routes and backend groups live in an immutable, refcounted table
 * swapped whole; no Python runs per request. One file per concern:
 *   l7_parse.c   HTTP/1.x head parser and the one chunked-coding decoder (outside input: fuzzed)
 *   l7_table.c   route tables: routes, backend groups, choosing a backend, health, per-route stats
 *   l7_acme.c    ACME http-01 challenge tokens, answered before routing
 *   l7_tls.c     certificates (SNI), ALPN, TLS reads and writes of client connections
 *   l7_io.c      output queues gathered with writev, plain reads
 *   l7_up.c      upstream connections for both front ends: connect, events, keep-alive pool, backend attach
 *   l7_xchg.c    what an HTTP/1.1 request and an h2 stream share: host matching, forwarded headers, response framing
 *   l7_h1.c      HTTP/1.1 requests: routed and queued toward the backend; answers made here
 *   l7_h1_relay.c  HTTP/1.1 connections' state machine and response pump; l7_h1_conn.c their life and timeouts
 *   l7_h2.c      HTTP/2 front end over TLS (nghttp2), each stream relayed as an HTTP/1.1 request (l7_h2_stream.c)
 *   l7_worker.c  life cycle: proxy, listeners, worker threads, accept, timeouts
 */
#ifndef ZLAYER_L7_INT_H
#define ZLAYER_L7_INT_H
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "l7.h"

#define EJECT_SECONDS 5.0
#define POOL_MAX 1024
#define POOL_IDLE_SECONDS 30.0
#define MAXIOV 256

/* epoll tags: the first int of every object registered in a worker's epoll set */
enum { T_LISTEN = 1, T_CLIENT, T_UP, T_WAKE, T_H2 };

/* A readable flag that a short read must not clear: the peer's FIN came with the data (one edge for both). */
#define RD_HUP 2

struct worker;

/* ---- l7_table.c ---- */
/* A backend's requests in flight. The same backend (group and address) in successive tables shares one: a request
 * holds the table it started on, so a count per table would lose it at the next swap (a draining replica would
 * read idle while it still serves, least-connections would forget the load). Freed with the last table using it. */
typedef struct {
    _Atomic uint64_t active;
    _Atomic long ref;
} bcount_t;

typedef struct {
    struct sockaddr_storage addr;
    socklen_t alen;
    char name[64];
    _Atomic int healthy;
    bcount_t *cnt;
    _Atomic uint64_t ejected_until_ms;
} backend_t;

typedef struct {
    char name[128];
    backend_t *b;
    size_t n;
    _Atomic uint64_t rr;
    int least; /* least-connections: the healthy backend with the fewest in-flight requests (rr breaks ties) */
} group_t;

typedef struct rstats {
    char key[128];
    _Atomic uint64_t requests, status[5], bytes_in, bytes_out, active, buckets[L7_NBUCKETS + 1], latency_ns;
    struct rstats *next;
} rstats_t;

typedef struct {
    int port, hostkind; /* 0 any, 1 *.suffix, 2 exact */
    char *host;
    size_t hostlen;
    char *prefix;
    size_t plen;
    int strip;
    group_t *g;
    rstats_t *st;
} route_t;

typedef struct {
    _Atomic long ref;
    route_t *r;
    size_t nr;
    group_t *g;
    size_t ng;
} table_t;

table_t *table_get(l7_proxy_t *p); /* the current table with a reference, or NULL */
void table_unref(table_t *t);
/* best route for host (without port) and path, or NULL */
const route_t *route_match(const table_t *t, int port, const char *host, size_t hl, const char *path, size_t pl);
/* a healthy backend of g other than avoid (ejected ones only when nothing else is left), or NULL */
backend_t *backend_pick(group_t *g, double now, const backend_t *avoid);
void backend_eject(backend_t *b, double now);
/* one request ended on its route: ok counts it (status, latency since t0) */
void route_account(rstats_t *s, int ok, int status, const struct timespec *t0, uint64_t in, uint64_t out);
void stats_free(rstats_t *s);

/* ---- l7_acme.c ---- */
typedef struct chal {
    char token[256];
    char keyauth[512];
    struct chal *next;
} chal_t;

/* 1 and the key authorization in body when path is an http-01 challenge this proxy holds */
int acme_lookup(l7_proxy_t *p, const char *path, size_t pl, char *body, size_t cap);
void acme_free(chal_t *c);

/* ---- l7_tls.c ---- */
typedef struct {
    char name[256];
    SSL_CTX *ctx;
} cert_t;

SSL_CTX *tls_new_ctx(l7_proxy_t *p);
SSL *tls_new_ssl(l7_proxy_t *p, int fd); /* server side, on the first certificate's context (SNI may switch it) */
void tls_free_certs(cert_t *c, size_t n);
/* SSL_read with rd()'s contract: >0 bytes, 0 at the peer's close_notify, -1 with errno EAGAIN (and *rd cleared,
 * *rd_wants_write set when the TLS layer must write first) or EIO. */
ssize_t tls_read(SSL *ssl, char *b, size_t n, int *rd, int *rd_wants_write);
/* SSL_write of b[0..n): >0 written, 0 would block (*wants_read when TLS must read first), -1 error */
int tls_write(SSL *ssl, const char *b, size_t n, int *wants_read);
int tls_h2_selected(SSL *ssl); /* 1 if ALPN chose "h2" */

/* ---- l7_io.c ---- */
typedef struct {
    struct iovec v[MAXIOV];
    int n, i;
} outq_t;

void oq_reset(outq_t *q);
void oq_add(outq_t *q, const void *b, size_t n);
int oq_empty(const outq_t *q);
/* A header line toward a client; one that came with a bare LF goes out with CRLF. */
void oq_add_line(outq_t *q, const char *b, const l7_hdr_t *hd);
/* A whole response head as it came, or re-ended with CRLF if it used bare LFs. */
void oq_add_head(outq_t *q, const char *b, const l7_resp_t *r, size_t h);
/* Writes what it can: 1 all written, 0 would block (*wr cleared), -1 error. */
int oq_flush(outq_t *q, int fd, int *wr, uint64_t *count);
/* oq_flush through TLS: records of up to sizeof(rec) bytes gathered from the queue; *pending = bytes of rec handed
 * to SSL_write and not yet accepted. */
int oq_flush_tls(outq_t *q, SSL *ssl, char *rec, size_t cap, size_t *pending, int *wr, int *wr_wants_read,
                 uint64_t *count);
/* An epoll event of a client connection (plain or TLS): which ways it may read and write now. A TLS read that had
 * to write first resumes once writable, a TLS write that had to read first once readable. */
void io_event(uint32_t ev, int *rd, int *wr, int *rd_wants_write, int *wr_wants_read);
/* read() that clears *flag once drained (edge-triggered epoll reports the next arrival) unless it is RD_HUP */
ssize_t rd(int fd, char *b, size_t n, int *flag);

/* ---- l7_up.c ---- */
/* What an upstream connection tells the request (HTTP/1.1 connection or h2 stream) that holds it. */
typedef struct {
    void (*ready)(void *owner);                 /* readable, writable or connected */
    void (*failed)(void *owner, int timed_out); /* the connect was refused or timed out */
} up_ops_t;

typedef struct upstream {
    int type; /* T_UP */
    int fd, closed;
    struct worker *w; /* NULL: a socketless upstream of the h2 fuzz target */
    void *owner;      /* NULL while pooled */
    const up_ops_t *ops;
    struct sockaddr_storage addr;
    socklen_t alen;
    int connecting, rd, wr, reused;
    double idle_since;
    double connect_deadline; /* while connecting: past it, the backend counts as failed */
    struct upstream *next, *prev; /* pool or graveyard */
} upstream_t;

/* One request's hold on a backend: shared by HTTP/1.1 connections and h2 streams. */
typedef struct {
    group_t *g;
    backend_t *be; /* its active count raised while held */
    int tries;
    upstream_t *up;
} attach_t;

/* Picks a backend of a->g other than avoid and an upstream connection to it (pooled or new), trying the others when
 * a connect is refused at once; 0, or -1 when none is left. */
int up_attach(struct worker *w, attach_t *a, backend_t *avoid, void *owner, const up_ops_t *ops);
/* The connect of a->up failed: eject its backend, attach another one (-1 when none is left). */
int up_reattach(struct worker *w, attach_t *a, void *owner, const up_ops_t *ops);
/* A new connection to a->be (the pooled one went stale): 0 or -1. */
int up_reconnect(struct worker *w, attach_t *a, void *owner, const up_ops_t *ops);
void up_detach(attach_t *a); /* closes the upstream (if any) and releases the backend */
/* The exchange ended: a clean keep-alive connection (reusable) goes to the worker's pool, else it is closed. */
void up_release(upstream_t *u, int reusable);
void up_close(upstream_t *u);
void up_event(upstream_t *u, uint32_t ev);
void pool_expire(struct worker *w, int all);
void up_reap(struct worker *w);

/* ---- l7_xchg.c ---- */
/* How a response body is framed: none, Content-Length, chunked, or ended by the backend's close. An HTTP/1.1 client
 * that keeps its connection gets a close-delimited body re-framed in chunks (RS_RECHUNK), as nginx does: closing
 * the client instead would leave its pipelined requests unanswered. */
enum resp_mode { RS_NONE, RS_LENGTH, RS_CHUNKED, RS_CLOSE, RS_RECHUNK };

size_t host_len(const char *host, size_t hl); /* host without ":port" (IPv6 literals keep their brackets) */
/* The forwarding headers (X-Forwarded-For/-Proto/-Host, Forwarded) ending in CRLF; out must hold
 * FWD_MAX(xff_len, host_len) bytes. Returns the length. */
#define FWD_MAX(xl, hl) ((xl) + 2 * (hl) + 2 * INET6_ADDRSTRLEN + 128)
size_t forwarded(char *out, const char *xff, size_t xl, const char *ip, const char *host, size_t hl, int tls);
/* Mode of a final response head to a request (HEAD or not); *up_keep: the backend connection may be reused. */
int resp_mode(const l7_resp_t *r, int is_head, int *up_keep);
/* Moves framed body bytes of a LENGTH or CHUNKED body: returns bytes of in[0..n) that belong to it (at most
 * *left for LENGTH), -1 malformed; *done once it ended. CHUNKED with out: the payload is decoded into out (at most
 * cap bytes, *olen set) instead of passing through. */
ssize_t body_take(int mode, int64_t *left, l7_chunk_t *ck, const char *in, size_t n, char *out, size_t cap,
                  size_t *olen, int *done);

/* ---- l7_h1.c (requests), l7_h1_relay.c (state machine, response pump), l7_h1_conn.c (accept, events, timeouts) */
#define CBUF (L7_MAX_HEAD + 8192)
#define UBUF 32768

enum { P_HEAD, P_PROXY, P_CLOSING, P_TUNNEL };

typedef struct conn {
    int type; /* T_CLIENT */
    int fd, port, closed;
    SSL *ssl;
    int rd_wants_write, wr_wants_read;
    size_t tls_pending; /* bytes of tls_out handed to SSL_write and not yet accepted */
    struct worker *w;
    char ip[INET6_ADDRSTRLEN];
    int phase, rd, wr, keep;
    double deadline;
    struct conn *next, *prev;
    /* request */
    size_t cs, ce;
    l7_req_t req;
    int req_done;
    int64_t req_left;
    l7_chunk_t req_ck;
    uint64_t req_bytes, resp_bytes;
    struct timespec t0;
    table_t *t;
    route_t *rt;
    attach_t a;
    int upgrade, tunnel;
    int up_keep;
    /* response */
    size_t us, ue;
    int resp_head, resp_done, resp_mode; /* enum resp_mode */
    int status;
    int64_t resp_left;
    l7_chunk_t resp_ck;
    l7_resp_t resp;
    outq_t oq_up, oq_cl, oq_saved; /* oq_saved: the request as first queued, to resend on a fresh connection */
    int can_retry;
    char xbuf[2 * L7_MAX_HEAD + 512]; /* FWD_MAX of a head (XFF and host share it) and a Connection line */
    char rbuf[1024];
    char ckbuf[24]; /* RS_RECHUNK: the size line of the chunk in flight */
    char tls_out[16384];
    char cbuf[CBUF];
    char ubuf[UBUF];
} conn_t;

void h1_accept(struct worker *w, int fd, const struct sockaddr_storage *ss, int port, int tls);
void h1_event(conn_t *c, uint32_t ev);
void h1_drive(conn_t *c);
void h1_close(conn_t *c);
void h1_retire(conn_t *c); /* off the worker's list, freed after the event batch (the h2 handoff keeps fd and TLS) */
void h1_scan(struct worker *w); /* header, idle, connect and response timeouts */
/* l7_h1.c: request side */
void h1_request(conn_t *c); /* a complete request head is at cbuf[cs..]: route it and queue it upstream */
void h1_fail(conn_t *c, int status); /* a canned 400, 408, 431, 502 or 504, then the close */
void h1_answer(conn_t *c, int status, const char *reason, const char *body);
void h1_request_end(conn_t *c, int ok);
int h1_pump_request_body(conn_t *c);
extern const up_ops_t h1_up_ops;
/* l7_h1_relay.c: byte pumps */
int h1_pump_response(conn_t *c);
ssize_t h1_read(conn_t *c, char *b, size_t n);
int h1_flush(conn_t *c, uint64_t *count);
int h1_cl_empty(const conn_t *c);

/* ---- l7_h2.c ---- */
#define L7_H2_MAX_STREAMS 128
/* Takes over a client connection whose TLS handshake chose h2 (fd already in epoll; pre[0..n) read already). */
void h2_adopt(struct worker *w, int fd, SSL *ssl, const char *ip, int port, const char *pre, size_t n);
void h2_event(void *hc, uint32_t events);
void h2_scan(struct worker *w);
void h2_flush_dirty(struct worker *w); /* after each epoll batch: frames that upstream events queued */
void h2_reap(struct worker *w);
void h2_shutdown(struct worker *w); /* GOAWAY to every h2 client of the worker, then close them */
/* Fuzzing: bytes through a server session wired to the proxy's callbacks, upstream fed to every routed stream. */
int l7_h2_fuzz_one(l7_proxy_t *p, int port, const uint8_t *client, size_t n, const uint8_t *upstream, size_t un);

/* ---- l7_worker.c ---- */
typedef struct lsock {
    int type; /* T_LISTEN */
    int fd, port, tls;
    int wi;        /* the worker whose epoll set holds it */
    int closing;   /* under p->mu: l7_unlisten asked its worker to close it */
    char host[64]; /* as given to l7_listen */
    struct lsock *next;
} lsock_t;

struct h2conn;

typedef struct worker {
    struct l7_proxy *p;
    int epfd, wakefd;
    pthread_t th;
    int started;
    table_t *t;
    uint64_t gen;
    double now, last_scan;
    conn_t *conns, *dead_conns;
    upstream_t *pool, *dead_ups;
    int npool;
    struct h2conn *h2conns, *h2dead, *h2dirty;
    uint64_t ls_gen;
    int wake_tag;
} worker_t;

struct l7_proxy {
    l7_config_t cfg;
    worker_t *w;
    int nw;
    _Atomic int stop;
    pthread_mutex_t mu; /* guards t, ls, stats, chal, certs */
    table_t *t;
    _Atomic uint64_t gen;
    lsock_t *ls;
    _Atomic uint64_t ls_gen; /* bumped when listeners are to be closed */
    _Atomic int ls_pending;  /* listeners marked closing and not closed yet */
    rstats_t *stats;
    chal_t *chal;
    _Atomic int nchal;
    cert_t *certs;
    size_t ncerts;
    SSL_CTX *base_ctx;
};

double mono(void);
/* w's table with a reference (w NULL: the proxy's), or NULL */
table_t *worker_table(worker_t *w, l7_proxy_t *p);
void epoll_forget(worker_t *w, int fd); /* out of epoll before close: a forked child may hold the fd open */
#endif
