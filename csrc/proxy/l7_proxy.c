/* zlayer L7 HTTP/1.1 reverse proxy: one edge-triggered epoll loop per worker thread, each with its own SO_REUSEPORT
 * listener socket per address; routes and backend groups in an immutable, refcounted table swapped whole; per-worker
 * pool of keep-alive upstream connections; request and response heads relayed with writev straight from the
 * per-connection buffers (no allocation per request). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "zlayer/netaddr.h"
#include "l7.h"
#include "l7_h2.h"

#define CBUF (L7_MAX_HEAD + 8192)
#define UBUF 32768
#define MAXIOV 256
#define POOL_MAX 1024
#define EJECT_SECONDS 5.0

static const double BUCKETS[L7_NBUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};

enum { T_LISTEN = 1, T_CLIENT, T_UP, T_WAKE };

typedef struct {
    struct sockaddr_storage addr;
    socklen_t alen;
    char name[64];
    _Atomic int healthy;
    _Atomic uint64_t active;
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

typedef struct chal {
    char token[256];
    char keyauth[512];
    struct chal *next;
} chal_t;

struct worker;
struct conn;

typedef struct {
    char name[256];
    SSL_CTX *ctx;
} cert_t;

typedef struct lsock {
    int type;
    int fd, port, tls;
    int wi;        /* the worker whose epoll set holds it */
    int closing;   /* under p->mu: l7_unlisten asked its worker to close it */
    char host[64]; /* as given to l7_listen */
    struct lsock *next;
} lsock_t;

typedef struct upstream {
    int type;
    int fd;
    struct conn *c;
    struct worker *w;
    struct sockaddr_storage addr;
    socklen_t alen;
    int connecting, rd, wr, reused;
    double idle_since;
    double connect_deadline; /* while connecting: past it, the backend counts as failed */
    struct upstream *next, *prev; /* pool or graveyard */
} upstream_t;

typedef struct {
    struct iovec v[MAXIOV];
    int n, i;
} outq_t;

enum { P_HEAD, P_PROXY, P_CLOSING, P_TUNNEL };

/* How a response body is framed: none, Content-Length, chunked, or ended by the backend's close. An HTTP/1.1 client
 * that keeps its connection gets a close-delimited body re-framed in chunks (RS_RECHUNK), as nginx does: closing
 * the client instead would leave its pipelined requests unanswered. */
enum resp_mode { RS_NONE, RS_LENGTH, RS_CHUNKED, RS_CLOSE, RS_RECHUNK };

typedef struct conn {
    int type;
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
    group_t *g;
    backend_t *be;
    int tries, upgrade, tunnel;
    upstream_t *up;
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
    char xbuf[2 * L7_MAX_HEAD + 512]; /* XFF value + Host twice + fixed text: at most 2 heads */
    char rbuf[1024];
    char ckbuf[24]; /* RS_RECHUNK: the size line of the chunk in flight */
    char tls_out[16384];
    char cbuf[CBUF];
    char ubuf[UBUF];
} conn_t;

typedef struct worker {
    struct l7_proxy *p;
    int epfd, wakefd;
    pthread_t th;
    int started;
    table_t *t;
    uint64_t gen;
    double now, last_scan;
    conn_t *conns;
    conn_t *dead_conns;
    upstream_t *pool, *dead_ups;
    int npool;
    uint64_t ls_gen;
    int wake_tag;
} worker_t;

struct l7_proxy {
    l7_config_t cfg;
    worker_t *w;
    int nw;
    _Atomic int stop;
    pthread_mutex_t mu;
    table_t *t;
    _Atomic uint64_t gen;
    lsock_t *ls;
    _Atomic uint64_t ls_gen;  /* bumped when listeners are to be closed */
    _Atomic int ls_pending;   /* listeners marked closing and not closed yet */
    rstats_t *stats;
    chal_t *chal;
    _Atomic int nchal;
    cert_t *certs;
    size_t ncerts;
    SSL_CTX *base_ctx;
};

/* ---------------------------------------------------------------- tables */

static void table_unref(table_t *t)
{
    if (t == NULL || atomic_fetch_sub(&t->ref, 1) != 1)
        return;
    for (size_t i = 0; i < t->nr; i++) {
        free(t->r[i].host);
        free(t->r[i].prefix);
    }
    for (size_t i = 0; i < t->ng; i++)
        free(t->g[i].b);
    free(t->r);
    free(t->g);
    free(t);
}

static table_t *table_get(l7_proxy_t *p)
{
    pthread_mutex_lock(&p->mu);
    table_t *t = p->t;
    if (t)
        atomic_fetch_add(&t->ref, 1);
    pthread_mutex_unlock(&p->mu);
    return t;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static rstats_t *stats_for(l7_proxy_t *p, const char *key)
{
    for (rstats_t *s = p->stats; s; s = s->next)
        if (strcmp(s->key, key) == 0)
            return s;
    rstats_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    snprintf(s->key, sizeof(s->key), "%s", key);
    s->next = p->stats;
    p->stats = s;
    return s;
}

int l7_apply(l7_proxy_t *p, const l7_route_def_t *routes, size_t nroutes, const char *const *group_names,
             const l7_backend_def_t *const *groups, const size_t *ngb, size_t ngroups, char *err, size_t errlen)
{
    table_t *t = calloc(1, sizeof(*t));
    if (!t)
        goto oom;
    atomic_init(&t->ref, 1);
    t->r = calloc(nroutes + 1, sizeof(route_t));
    t->g = calloc(ngroups + 1, sizeof(group_t));
    if (!t->r || !t->g)
        goto oom;
    t->ng = ngroups;
    for (size_t i = 0; i < ngroups; i++) {
        group_t *g = &t->g[i];
        snprintf(g->name, sizeof(g->name), "%s", group_names[i]);
        g->b = calloc(ngb[i] + 1, sizeof(backend_t));
        if (!g->b)
            goto oom;
        g->n = ngb[i];
        for (size_t j = 0; j < ngb[i]; j++) {
            backend_t *b = &g->b[j];
            if (zl_parse_addr(groups[i][j].host, groups[i][j].port, &b->addr, &b->alen) < 0) {
                snprintf(err, errlen, "backend %.64s:%d of %.128s is not a numeric IP address and port",
                         groups[i][j].host, groups[i][j].port, group_names[i]);
                goto fail;
            }
            snprintf(b->name, sizeof(b->name), "%s:%d", groups[i][j].host, groups[i][j].port);
            atomic_init(&b->healthy, groups[i][j].healthy ? 1 : 0);
        }
    }
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < nroutes; i++) {
        const l7_route_def_t *d = &routes[i];
        route_t *r = &t->r[t->nr];
        if (d->group < 0 || (size_t)d->group >= ngroups) {
            pthread_mutex_unlock(&p->mu);
            snprintf(err, errlen, "route %.128s names backend group %d of %zu", d->key, d->group, ngroups);
            goto fail;
        }
        r->port = d->port;
        const char *h = d->host ? d->host : "";
        if (h[0] == 0 || strcmp(h, "*") == 0) {
            r->hostkind = 0;
            r->host = strdup("");
        } else if (h[0] == '*' && h[1] == '.') {
            r->hostkind = 1;
            r->host = strdup(h + 1); /* ".suffix" */
        } else {
            r->hostkind = 2;
            r->host = strdup(h);
        }
        r->prefix = strdup(d->prefix && d->prefix[0] ? d->prefix : "/");
        r->st = stats_for(p, d->key);
        t->nr++;
        if (!r->host || !r->prefix || !r->st) {
            pthread_mutex_unlock(&p->mu);
            goto oom;
        }
        r->hostlen = strlen(r->host);
        r->plen = strlen(r->prefix);
        r->strip = d->strip_prefix;
        r->g = &t->g[d->group];
        if (d->strategy == L7_LEAST_CONNECTIONS)
            r->g->least = 1;
    }
    table_t *old = p->t;
    p->t = t;
    atomic_fetch_add(&p->gen, 1);
    pthread_mutex_unlock(&p->mu);
    table_unref(old);
    return 0;
oom:
    snprintf(err, errlen, "out of memory building the route table");
fail:
    if (t) {
        if (!t->r) {
            free(t->g);
            free(t);
        } else {
            t->ref = 1;
            table_unref(t);
        }
    }
    return -1;
}

int l7_set_health(l7_proxy_t *p, const char *group, const char *host, int port, int healthy)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int found = -1;
    if (zl_parse_addr(host, port, &ss, &sl) < 0)
        return -1;
    table_t *t = table_get(p);
    if (!t)
        return -1;
    for (size_t i = 0; i < t->ng; i++) {
        if (strcmp(t->g[i].name, group) != 0)
            continue;
        for (size_t j = 0; j < t->g[i].n; j++) {
            backend_t *b = &t->g[i].b[j];
            if (b->alen == sl && memcmp(&b->addr, &ss, sl) == 0) {
                atomic_store(&b->healthy, healthy ? 1 : 0);
                if (healthy)
                    atomic_store(&b->ejected_until_ms, 0);
                found = 0;
            }
        }
    }
    table_unref(t);
    return found;
}

size_t l7_stats(l7_proxy_t *p, char (*keys)[128], l7_route_stats_t *out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&p->mu);
    for (rstats_t *s = p->stats; s; s = s->next, n++) {
        if (n >= cap)
            continue;
        memcpy(keys[n], s->key, 128);
        l7_route_stats_t *o = &out[n];
        o->requests = atomic_load_explicit(&s->requests, memory_order_relaxed);
        for (int i = 0; i < 5; i++)
            o->status[i] = atomic_load_explicit(&s->status[i], memory_order_relaxed);
        o->bytes_in = atomic_load_explicit(&s->bytes_in, memory_order_relaxed);
        o->bytes_out = atomic_load_explicit(&s->bytes_out, memory_order_relaxed);
        o->active = atomic_load_explicit(&s->active, memory_order_relaxed);
        for (int i = 0; i <= L7_NBUCKETS; i++)
            o->buckets[i] = atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        o->latency_ns = atomic_load_explicit(&s->latency_ns, memory_order_relaxed);
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

size_t l7_backend_active(l7_proxy_t *p, char (*keys)[192], uint64_t *active, size_t cap)
{
    size_t n = 0;
    table_t *t = table_get(p);
    if (!t)
        return 0;
    for (size_t i = 0; i < t->ng; i++)
        for (size_t j = 0; j < t->g[i].n; j++, n++)
            if (n < cap) {
                snprintf(keys[n], 192, "%s|%s", t->g[i].name, t->g[i].b[j].name);
                active[n] = atomic_load(&t->g[i].b[j].active);
            }
    table_unref(t);
    return n;
}

int l7_set_challenge(l7_proxy_t *p, const char *token, const char *keyauth)
{
    if (strlen(token) >= 256 || strlen(keyauth) >= 512)
        return -1;
    pthread_mutex_lock(&p->mu);
    chal_t *c;
    for (c = p->chal; c; c = c->next)
        if (strcmp(c->token, token) == 0)
            break;
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c) {
            pthread_mutex_unlock(&p->mu);
            return -1;
        }
        c->next = p->chal;
        p->chal = c;
        atomic_fetch_add(&p->nchal, 1);
    }
    snprintf(c->token, sizeof(c->token), "%s", token);
    snprintf(c->keyauth, sizeof(c->keyauth), "%s", keyauth);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void l7_remove_challenge(l7_proxy_t *p, const char *token)
{
    pthread_mutex_lock(&p->mu);
    for (chal_t **pp = &p->chal; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->token, token) == 0) {
            chal_t *c = *pp;
            *pp = c->next;
            free(c);
            atomic_fetch_sub(&p->nchal, 1);
            break;
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/* ---------------------------------------------------------------- connections */

static SSL_CTX *cert_lookup(l7_proxy_t *p, const char *name)
{
    SSL_CTX *found = NULL;
    if (p->ncerts == 0)
        return NULL;
    size_t nl = name ? strlen(name) : 0;
    for (size_t i = 0; i < p->ncerts && name && !found; i++)
        if (strcasecmp(p->certs[i].name, name) == 0)
            found = p->certs[i].ctx;
    for (size_t i = 0; i < p->ncerts && name && !found; i++) {
        const char *cn = p->certs[i].name;
        size_t cl = strlen(cn);
        if (cn[0] == '*' && cn[1] == '.' && nl > cl - 1 && strcasecmp(name + nl - (cl - 1), cn + 1) == 0)
            found = p->certs[i].ctx;
    }
    return found ? found : p->certs[0].ctx;
}

static int on_sni(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    l7_proxy_t *p = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    pthread_mutex_lock(&p->mu);
    SSL_CTX *ctx = cert_lookup(p, name);
    if (ctx && ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx); /* copies the certificate state: only when SNI picks another one */
    pthread_mutex_unlock(&p->mu);
    return ctx ? SSL_TLSEXT_ERR_OK : SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char H1[] = "\x02h2\x08http/1.1"; /* h2 is served by l7_h2.c */
    if (SSL_select_next_proto((unsigned char **)out, outlen, H1, sizeof(H1) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *new_ctx(l7_proxy_t *p)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    /* Resumption by stateless tickets only: no per-handshake insert into (and periodic flush of) a locked cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"zlayer-l7", 9);
    SSL_CTX_set_read_ahead(ctx, 1); /* one read() per burst of records, not a header read then a body read */
    SSL_CTX_set_tlsext_servername_callback(ctx, on_sni);
    SSL_CTX_set_tlsext_servername_arg(ctx, p);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    return ctx;
}

int l7_set_certificates(l7_proxy_t *p, const char *const *domains, const char *const *certs, const char *const *keys,
                        size_t n, char *err, size_t errlen)
{
    cert_t *t = calloc(n + 1, sizeof(cert_t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(t[i].name, sizeof(t[i].name), "%s", domains[i]);
        t[i].ctx = new_ctx(p);
        if (!t[i].ctx || SSL_CTX_use_certificate_chain_file(t[i].ctx, certs[i]) != 1 ||
            SSL_CTX_use_PrivateKey_file(t[i].ctx, keys[i], SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(t[i].ctx) != 1) {
            char e[160];
            ERR_error_string_n(ERR_get_error(), e, sizeof(e));
            snprintf(err, errlen, "certificate %.200s / key %.200s for %.128s: %s", certs[i], keys[i], domains[i], e);
            ERR_clear_error();
            for (size_t j = 0; j <= i; j++)
                SSL_CTX_free(t[j].ctx);
            free(t);
            return -1;
        }
    }
    pthread_mutex_lock(&p->mu);
    cert_t *old = p->certs;
    size_t oldn = p->ncerts;
    p->certs = t;
    p->ncerts = n;
    pthread_mutex_unlock(&p->mu);
    for (size_t j = 0; j < oldn; j++)
        SSL_CTX_free(old[j].ctx); /* connections hold their own reference */
    free(old);
    return 0;
}

/* SSL_read with rd()'s contract: >0 bytes, 0 at the peer's close_notify, -1 with errno EAGAIN (and *rd cleared,
 * *rd_wants_write set when the TLS layer must write first) or EIO. Shared with the HTTP/2 connections. */
ssize_t l7x_ssl_read(SSL *ssl, char *b, size_t n, int *rd, int *rd_wants_write)
{
    ERR_clear_error();
    int r = SSL_read(ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
        *rd = 0;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        *rd = 0;
        *rd_wants_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        errno = EIO;
        return -1;
    }
}

/* Reads from the client (TLS or plain) with the same contract as rd(). */
static ssize_t c_read(conn_t *c, char *b, size_t n)
{
    if (!c->ssl) {
        for (;;) {
            ssize_t r = read(c->fd, b, n);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && errno == EAGAIN)
                c->rd = 0;
            else if (r > 0 && (size_t)r < n)
                c->rd = 0;
            return r;
        }
    }
    return l7x_ssl_read(c->ssl, b, n, &c->rd, &c->rd_wants_write);
}

static void oq_reset(outq_t *q) { q->n = q->i = 0; }

static void oq_add(outq_t *q, const void *b, size_t n)
{
    if (n == 0)
        return;
    if (q->n > 0 && (char *)q->v[q->n - 1].iov_base + q->v[q->n - 1].iov_len == (const char *)b) {
        q->v[q->n - 1].iov_len += n;
        return;
    }
    if (q->n == MAXIOV)
        return; /* cannot happen: a head has at most L7_MAX_HEADERS lines */
    q->v[q->n].iov_base = (void *)b;
    q->v[q->n].iov_len = n;
    q->n++;
}

static int oq_empty(const outq_t *q) { return q->i >= q->n; }

/* Writes what it can: 1 all written, 0 would block, -1 error. */
static int oq_flush(outq_t *q, int fd, int *wr, uint64_t *count)
{
    while (q->i < q->n) {
        ssize_t w = writev(fd, &q->v[q->i], q->n - q->i);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                *wr = 0;
                return 0;
            }
            return -1;
        }
        if (count)
            *count += (uint64_t)w;
        size_t left = (size_t)w;
        while (left > 0 && q->i < q->n) {
            if (left >= q->v[q->i].iov_len) {
                left -= q->v[q->i].iov_len;
                q->i++;
            } else {
                q->v[q->i].iov_base = (char *)q->v[q->i].iov_base + left;
                q->v[q->i].iov_len -= left;
                left = 0;
            }
        }
    }
    oq_reset(q);
    return 1;
}

/* oq_flush for a TLS client: records of up to 16 KiB gathered from the queue. */
static int oq_flush_tls(conn_t *c, outq_t *q, uint64_t *count)
{
    while (q->i < q->n || c->tls_pending) {
        if (!c->tls_pending) {
            size_t len = 0;
            int i = q->i;
            while (i < q->n && len < sizeof(c->tls_out)) {
                size_t take = q->v[i].iov_len;
                if (take > sizeof(c->tls_out) - len)
                    take = sizeof(c->tls_out) - len;
                memcpy(c->tls_out + len, q->v[i].iov_base, take);
                len += take;
                if (take == q->v[i].iov_len) {
                    i++;
                } else {
                    q->v[i].iov_base = (char *)q->v[i].iov_base + take;
                    q->v[i].iov_len -= take;
                }
            }
            q->i = i;
            c->tls_pending = len;
        }
        ERR_clear_error();
        int r = SSL_write(c->ssl, c->tls_out, (int)c->tls_pending);
        if (r > 0) {
            if (count)
                *count += (uint64_t)r;
            c->tls_pending = 0;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE) {
            c->wr = 0;
            return 0;
        }
        if (e == SSL_ERROR_WANT_READ) {
            c->wr = 0;
            c->wr_wants_read = 1;
            return 0;
        }
        return -1;
    }
    oq_reset(q);
    return 1;
}

static int cl_empty(const conn_t *c) { return oq_empty(&c->oq_cl) && !c->tls_pending; }

static int c_flush(conn_t *c, uint64_t *count)
{
    return c->ssl ? oq_flush_tls(c, &c->oq_cl, count) : oq_flush(&c->oq_cl, c->fd, &c->wr, count);
}

static void up_close(upstream_t *u)
{
    if (u->fd < 0)
        return;
    /* Out of epoll before close: a child forked meanwhile may hold the fd open, and epoll would keep reporting it
     * with a pointer the reaper has freed. */
    epoll_ctl(u->w->epfd, EPOLL_CTL_DEL, u->fd, NULL);
    close(u->fd);
    u->fd = -1;
    u->c = NULL;
    u->next = u->w->dead_ups;
    u->w->dead_ups = u;
}

static void pool_remove(worker_t *w, upstream_t *u)
{
    if (u->prev)
        u->prev->next = u->next;
    else
        w->pool = u->next;
    if (u->next)
        u->next->prev = u->prev;
    u->next = u->prev = NULL;
    w->npool--;
}

static void pool_put(worker_t *w, upstream_t *u)
{
    if (w->npool >= POOL_MAX) {
        up_close(u);
        return;
    }
    u->c = NULL;
    u->idle_since = w->now;
    u->prev = NULL;
    u->next = w->pool;
    if (w->pool)
        w->pool->prev = u;
    w->pool = u;
    w->npool++;
}

/* Ends one request in its route's stats (HTTP/1.1 and h2 streams alike). */
static void route_account(rstats_t *s, int ok, int status, const struct timespec *t0, uint64_t in, uint64_t out)
{
    atomic_fetch_sub_explicit(&s->active, 1, memory_order_relaxed);
    if (ok) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        uint64_t ns =
            (uint64_t)(t1.tv_sec - t0->tv_sec) * 1000000000ull + (uint64_t)t1.tv_nsec - (uint64_t)t0->tv_nsec;
        double sec = (double)ns / 1e9;
        int b = 0;
        while (b < L7_NBUCKETS && sec > BUCKETS[b])
            b++;
        atomic_fetch_add_explicit(&s->requests, 1, memory_order_relaxed);
        if (status >= 100 && status < 600)
            atomic_fetch_add_explicit(&s->status[status / 100 - 1], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->buckets[b], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->latency_ns, ns, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&s->bytes_in, in, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->bytes_out, out, memory_order_relaxed);
}

static void request_end(conn_t *c, int ok)
{
    if (c->rt)
        route_account(c->rt->st, ok, c->status, &c->t0, c->req_bytes, c->resp_bytes);
    if (c->be)
        atomic_fetch_sub_explicit(&c->be->active, 1, memory_order_relaxed);
    c->be = NULL;
    c->rt = NULL;
    c->g = NULL;
    table_unref(c->t);
    c->t = NULL;
}

/* Takes a finished connection off the worker's list; it is freed at the end of the event batch (reap). */
static void conn_retire(conn_t *c)
{
    worker_t *w = c->w;
    c->closed = 1;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = w->dead_conns;
    c->prev = NULL;
    w->dead_conns = c;
}

static void conn_close(conn_t *c)
{
    if (c->closed)
        return;
    if (c->t)
        request_end(c, 0);
    if (c->up)
        up_close(c->up);
    c->up = NULL;
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, c->fd, NULL); /* see up_close */
    close(c->fd);
    conn_retire(c);
}

static const char R400[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
                           "Connection: close\r\n\r\nbad request\n";
static const char R408[] = "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n"
                           "Connection: close\r\n\r\nrequest timeout\n";
static const char R431[] = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
                           "Content-Length: 32\r\nConnection: close\r\n\r\nrequest header fields too large\n";
static const char R502[] = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
                           "Connection: close\r\n\r\nbad gateway\n";
static const char R504[] = "HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n"
                           "Connection: close\r\n\r\ngateway timeout\n";

/* Answers the current request with a canned response and closes the connection after it. */
static void fail_with(conn_t *c, const char *resp, size_t n, int status)
{
    if (c->t) {
        c->status = status;
        c->resp_bytes = n;
        request_end(c, 1);
    }
    if (c->up)
        up_close(c->up);
    c->up = NULL;
    oq_reset(&c->oq_cl);
    oq_add(&c->oq_cl, resp, n);
    c->phase = P_CLOSING;
    c->keep = 0;
}

#define FAIL(c, R, st) fail_with((c), (R), sizeof(R) - 1, (st))

/* A response we generate for a request that may keep the connection (no body left unread). */
static void answer(conn_t *c, int status, const char *reason, const char *body)
{
    int closing = !c->keep || !c->req_done;
    int n = snprintf(c->rbuf, sizeof(c->rbuf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s", status, reason,
                     strlen(body), closing ? "Connection: close\r\n" : "", c->req.is_head ? "" : body);
    if (n < 0 || (size_t)n >= sizeof(c->rbuf))
        n = (int)sizeof(c->rbuf) - 1;
    c->status = status;
    c->resp_bytes = (uint64_t)n;
    if (c->t)
        request_end(c, 1);
    c->cs += c->req.head_len;
    oq_reset(&c->oq_cl);
    oq_add(&c->oq_cl, c->rbuf, (size_t)n);
    if (closing) {
        c->phase = P_CLOSING;
        c->keep = 0;
    } else {
        c->resp_done = c->resp_head = 1;
        c->req_done = 1;
        c->phase = P_PROXY; /* finishes once flushed */
    }
}

static backend_t *pick_g(group_t *g, double now, backend_t *avoid)
{
    if (!g || g->n == 0)
        return NULL;
    uint64_t now_ms = (uint64_t)(now * 1000.0);
    uint64_t start = atomic_fetch_add_explicit(&g->rr, 1, memory_order_relaxed);
    backend_t *fallback = NULL, *best = NULL;
    uint64_t best_active = UINT64_MAX;
    for (size_t k = 0; k < g->n; k++) {
        backend_t *b = &g->b[(start + k) % g->n];
        if (b == avoid || !atomic_load_explicit(&b->healthy, memory_order_relaxed))
            continue;
        if (atomic_load_explicit(&b->ejected_until_ms, memory_order_relaxed) > now_ms) {
            if (!fallback)
                fallback = b;
            continue;
        }
        if (!g->least)
            return b;
        uint64_t a = atomic_load_explicit(&b->active, memory_order_relaxed);
        if (a < best_active) {
            best = b;
            best_active = a;
        }
    }
    return best ? best : fallback;
}

static backend_t *pick(conn_t *c, backend_t *avoid) { return pick_g(c->g, c->w->now, avoid); }

static int up_connect(conn_t *c, int fresh)
{
    worker_t *w = c->w;
    backend_t *b = c->be;
    for (upstream_t *u = fresh ? NULL : w->pool; u; u = u->next) {
        if (u->alen == b->alen && memcmp(&u->addr, &b->addr, b->alen) == 0) {
            pool_remove(w, u);
            u->c = c;
            u->reused = 1;
            c->up = u;
            return 0;
        }
    }
    int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    upstream_t *u = calloc(1, sizeof(*u));
    if (!u) {
        close(fd);
        return -1;
    }
    u->type = T_UP;
    u->fd = fd;
    u->w = w;
    u->c = c;
    u->addr = b->addr;
    u->alen = b->alen;
    int r = connect(fd, (struct sockaddr *)&b->addr, b->alen);
    if (r < 0 && errno != EINPROGRESS) {
        free(u);
        close(fd);
        return -1;
    }
    u->connecting = r < 0;
    u->wr = !u->connecting;
    u->connect_deadline = w->now + w->p->cfg.connect_timeout;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = u};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        free(u);
        close(fd);
        return -1;
    }
    c->up = u;
    return 0;
}

/* Chooses a backend and an upstream connection, retrying refused connects on the other backends. */
static int attach_backend(conn_t *c, backend_t *avoid)
{
    for (;;) {
        backend_t *b = pick(c, avoid);
        if (!b || c->tries >= (int)c->g->n + 1)
            return -1;
        c->tries++;
        if (c->be)
            atomic_fetch_sub_explicit(&c->be->active, 1, memory_order_relaxed);
        c->be = b;
        atomic_fetch_add_explicit(&b->active, 1, memory_order_relaxed);
        if (up_connect(c, 0) == 0)
            return 0;
        atomic_store(&b->ejected_until_ms, (uint64_t)((c->w->now + EJECT_SECONDS) * 1000.0));
        avoid = b;
    }
}

static const route_t *route_match(const table_t *t, int port, const char *host, size_t hl, const char *path,
                                  size_t pl)
{
    const route_t *best = NULL;
    int bestkind = -1;
    size_t bestlen = 0;
    for (size_t i = 0; i < t->nr; i++) {
        const route_t *r = &t->r[i];
        if (r->port != port || r->hostkind < bestkind)
            continue;
        if (r->hostkind == 2 && (r->hostlen != hl || strncasecmp(r->host, host, hl) != 0))
            continue;
        if (r->hostkind == 1 && (hl <= r->hostlen || strncasecmp(host + hl - r->hostlen, r->host, r->hostlen) != 0))
            continue;
        if (pl < r->plen || memcmp(path, r->prefix, r->plen) != 0)
            continue;
        if (r->plen > 1 && r->prefix[r->plen - 1] != '/' && pl > r->plen && path[r->plen] != '/' &&
            path[r->plen] != '?')
            continue;
        if (r->hostkind > bestkind || r->plen > bestlen) {
            best = r;
            bestkind = r->hostkind;
            bestlen = r->plen;
        }
    }
    return best;
}

static int is_hop(const char *b, const l7_hdr_t *h)
{
    static const struct {
        const char *n;
        size_t l;
    } H[] = {{"connection", 10},        {"keep-alive", 10},        {"proxy-connection", 16},
             {"te", 2},                 {"upgrade", 7},            {"x-forwarded-for", 15},
             {"x-forwarded-proto", 17}, {"x-forwarded-host", 16}, {"forwarded", 9},
             {"trailer", 7}};
    for (size_t i = 0; i < sizeof(H) / sizeof(H[0]); i++)
        if (h->name_len == H[i].l && strncasecmp(b + h->name_off, H[i].n, H[i].l) == 0)
            return 1;
    return 0;
}

static int challenge(conn_t *c, const char *path, size_t pl)
{
    static const char WK[] = "/.well-known/acme-challenge/";
    if (atomic_load_explicit(&c->w->p->nchal, memory_order_relaxed) == 0 || pl <= sizeof(WK) - 1 ||
        memcmp(path, WK, sizeof(WK) - 1) != 0)
        return 0;
    const char *tok = path + sizeof(WK) - 1;
    size_t tl = pl - (sizeof(WK) - 1);
    char body[512];
    int found = 0;
    l7_proxy_t *p = c->w->p;
    pthread_mutex_lock(&p->mu);
    for (chal_t *ch = p->chal; ch; ch = ch->next)
        if (strlen(ch->token) == tl && memcmp(ch->token, tok, tl) == 0) {
            snprintf(body, sizeof(body), "%s", ch->keyauth);
            found = 1;
        }
    pthread_mutex_unlock(&p->mu);
    if (found)
        answer(c, 200, "OK", body);
    return found;
}

/* A complete request head is at cbuf[cs..]: route it and queue it for the backend. */
static void start_request(conn_t *c)
{
    l7_req_t *q = &c->req;
    const char *base = c->cbuf + c->cs;
    clock_gettime(CLOCK_MONOTONIC, &c->t0);
    c->keep = q->minor == 1 ? !q->conn_close : (q->conn_keepalive && !q->conn_close);
    c->req_done = !q->chunked && q->content_length <= 0;
    c->req_left = q->content_length > 0 ? q->content_length : 0;
    memset(&c->req_ck, 0, sizeof(c->req_ck));
    c->req_bytes = q->head_len;
    c->resp_bytes = 0;
    c->resp_head = c->resp_done = 0;
    c->status = 0;
    c->tries = 0;
    c->tunnel = 0;
    c->us = c->ue = 0;
    const char *host = "";
    size_t hl = 0;
    if (q->auth_len) { /* absolute-form: its authority is the host (RFC 9112 §3.2.2) */
        host = base + q->auth_off;
        hl = q->auth_len;
    } else if (q->host_idx >= 0) {
        host = base + q->hdr[q->host_idx].val_off;
        hl = q->hdr[q->host_idx].val_len;
    }
    size_t mhl = hl; /* host without :port for matching */
    if (mhl && host[0] != '[') {
        const char *colon = memchr(host, ':', mhl);
        if (colon)
            mhl = (size_t)(colon - host);
    } else if (mhl) {
        const char *rb = memchr(host, ']', mhl);
        if (rb)
            mhl = (size_t)(rb - host + 1);
    }
    const char *path = base + q->path_off;
    size_t pl = q->path_len;
    int root = pl == 0 || path[0] == '?'; /* "http://host" or "http://host?q": the path is "/" */
    if (challenge(c, path, pl))
        return;
    if (c->w->t == NULL) {
        answer(c, 404, "Not Found", "no route\n");
        return;
    }
    const route_t *r = root ? route_match(c->w->t, c->port, host, mhl, "/", 1)
                            : route_match(c->w->t, c->port, host, mhl, path, pl);
    if (!r) {
        answer(c, 404, "Not Found", "no route\n");
        return;
    }
    c->t = c->w->t;
    atomic_fetch_add(&c->t->ref, 1);
    c->rt = (route_t *)r;
    c->g = r->g;
    atomic_fetch_add_explicit(&r->st->active, 1, memory_order_relaxed);
    if (attach_backend(c, NULL) < 0) {
        answer(c, 503, "Service Unavailable", "no healthy backend\n");
        return;
    }
    /* request line in origin-form, possibly without the route's prefix */
    outq_t *o = &c->oq_up;
    oq_reset(o);
    size_t line_end = q->hdr[0].line_off;
    if (q->nhdr == 0)
        line_end = q->head_len - 2;
    size_t target_end = (size_t)q->target_off + q->target_len;
    oq_add(o, base, (size_t)q->target_off);
    if (r->strip && r->plen > 1) {
        const char *rest = path + r->plen;
        size_t rl = pl - r->plen;
        if (r->prefix[r->plen - 1] == '/' || rl == 0 || rest[0] != '/')
            oq_add(o, "/", 1);
        oq_add(o, rest, rl);
    } else {
        if (root)
            oq_add(o, "/", 1);
        oq_add(o, path, pl);
    }
    oq_add(o, base + target_end, line_end - target_end);
    if (q->auth_len) { /* the backend gets the authority as Host, in place of the client's */
        oq_add(o, "Host: ", 6);
        oq_add(o, host, hl);
        oq_add(o, "\r\n", 2);
    }
    c->upgrade = 0;
    for (int i = 0; i < q->nhdr; i++) {
        const l7_hdr_t *hd = &q->hdr[i];
        if (q->auth_len && i == q->host_idx)
            continue;
        if (!is_hop(base, hd))
            oq_add(o, base + hd->line_off, hd->line_len);
        else if (q->conn_upgrade && c->req_done && hd->name_len == 7 && strncasecmp(base + hd->name_off, "upgrade", 7) == 0) {
            oq_add(o, base + hd->line_off, hd->line_len); /* WebSocket: Upgrade goes through */
            c->upgrade = 1;
        }
    }
    char *x = c->xbuf;
    size_t xl = 0;
    size_t il = strlen(c->ip);
    int six = memchr(c->ip, ':', il) != NULL;
#define PUT(p, n) (memcpy(x + xl, (p), (n)), xl += (n))
#define PUTS(lit) PUT(lit, sizeof(lit) - 1)
    PUTS("X-Forwarded-For: ");
    if (q->xff_idx >= 0) {
        PUT(base + q->hdr[q->xff_idx].val_off, q->hdr[q->xff_idx].val_len);
        PUTS(", ");
    }
    PUT(c->ip, il);
    if (c->ssl)
        PUTS("\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ");
    else
        PUTS("\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
    PUT(host, hl);
    PUTS("\r\nForwarded: for=");
    if (six)
        PUTS("\"[");
    PUT(c->ip, il);
    if (six)
        PUTS("]\"");
    PUTS(";host=\"");
    PUT(host, hl);
    if (c->ssl)
        PUTS("\";proto=https\r\n");
    else
        PUTS("\";proto=http\r\n");
    if (c->upgrade)
        PUTS("Connection: Upgrade\r\n");
    else if (q->minor == 0)
        PUTS("Connection: keep-alive\r\n");
    PUTS("\r\n");
#undef PUT
#undef PUTS
    oq_add(o, x, xl);
    c->can_retry = c->req_done;
    if (c->can_retry) {
        memcpy(c->oq_saved.v, o->v, (size_t)o->n * sizeof(struct iovec));
        c->oq_saved.n = o->n;
        c->oq_saved.i = 0;
    }
    c->cs += q->head_len;
    c->phase = P_PROXY;
}

/* Queues request body bytes available in cbuf. */
static int pump_request_body(conn_t *c)
{
    size_t avail = c->ce - c->cs;
    if (avail == 0)
        return 0;
    size_t take;
    if (c->req.chunked) {
        int done;
        ssize_t n = l7_chunk_feed(&c->req_ck, c->cbuf + c->cs, avail, &done);
        if (n < 0)
            return -1;
        take = (size_t)n;
        if (done)
            c->req_done = 1;
    } else {
        take = avail < (size_t)c->req_left ? avail : (size_t)c->req_left;
        c->req_left -= (int64_t)take;
        if (c->req_left == 0)
            c->req_done = 1;
    }
    oq_add(&c->oq_up, c->cbuf + c->cs, take);
    c->cs += take;
    c->req_bytes += take;
    return 1;
}

/* Queues a header line toward the client; a line that came with a bare LF goes out with CRLF. */
static void oq_add_line(outq_t *q, const char *b, const l7_hdr_t *hd)
{
    size_t n = hd->line_len;
    if (b[hd->line_off + n - 2] == '\r') {
        oq_add(q, b + hd->line_off, n);
        return;
    }
    oq_add(q, b + hd->line_off, n - 1);
    oq_add(q, "\r\n", 2);
}

/* Queues a whole 1xx head toward the client as it came, or re-ended with CRLF if it used bare LFs. */
static void oq_add_head(outq_t *q, const char *b, const l7_resp_t *r, size_t h)
{
    if (!r->bare_lf) {
        oq_add(q, b, h);
        return;
    }
    oq_add(q, b, r->status_len);
    oq_add(q, "\r\n", 2);
    for (int i = 0; i < r->nhdr; i++)
        oq_add_line(q, b, &r->hdr[i]);
    oq_add(q, "\r\n", 2);
}

/* Queues response bytes from ubuf toward the client. -1: bad response. */
static int pump_response(conn_t *c)
{
    int interim = 0; /* a 1xx head queued: the client must get it now (a "100 Continue" is what it waits for) */
    while (!c->resp_head) {
        int h = l7_parse_response(c->ubuf + c->us, c->ue - c->us, &c->resp);
        if (h == 0)
            return c->ue - c->us >= L7_MAX_HEAD ? -1 : interim;
        if (h < 0)
            return -1;
        const char *b = c->ubuf + c->us;
        l7_resp_t *r = &c->resp;
        if (r->status >= 100 && r->status < 200) {
            if (r->status == 101) {
                if (!c->upgrade)
                    return -1; /* an upgrade nobody asked for */
                oq_add_head(&c->oq_cl, b, r, (size_t)h);
                c->us += (size_t)h;
                c->status = 101;
                c->resp_head = c->resp_done = 1;
                c->tunnel = 1;
                c->up_keep = 0;
                return 1;
            }
            oq_add_head(&c->oq_cl, b, r, (size_t)h);
            c->us += (size_t)h;
            interim = 1;
            continue;
        }
        c->status = r->status;
        c->up_keep = (r->minor == 1 ? !r->conn_close : r->conn_keepalive && !r->conn_close);
        if (c->req.is_head || r->status == 204 || r->status == 304)
            c->resp_mode = RS_NONE;
        else if (r->chunked)
            c->resp_mode = RS_CHUNKED;
        else if (r->content_length >= 0)
            c->resp_mode = RS_LENGTH;
        else if (c->keep && c->req.minor == 1)
            c->resp_mode = RS_RECHUNK;
        else
            c->resp_mode = RS_CLOSE;
        if (c->resp_mode == RS_CLOSE)
            c->keep = 0;
        if (c->resp_mode >= RS_CLOSE)
            c->up_keep = 0;
        c->resp_left = r->content_length > 0 ? r->content_length : 0;
        memset(&c->resp_ck, 0, sizeof(c->resp_ck));
        int status_cr = b[r->status_len] == '\r';
        size_t skip = 0;
        if (c->resp_mode == RS_RECHUNK && r->minor == 0) { /* chunks need a 1.1 status line (RFC 9112 §6.1) */
            oq_add(&c->oq_cl, "HTTP/1.1", 8);
            skip = 8;
        }
        oq_add(&c->oq_cl, b + skip, r->status_len - skip + (status_cr ? 2u : 0u));
        if (!status_cr)
            oq_add(&c->oq_cl, "\r\n", 2);
        for (int i = 0; i < r->nhdr; i++) {
            const l7_hdr_t *hd = &r->hdr[i];
            if ((hd->name_len == 10 && (strncasecmp(b + hd->name_off, "connection", 10) == 0 ||
                                        strncasecmp(b + hd->name_off, "keep-alive", 10) == 0)))
                continue;
            oq_add_line(&c->oq_cl, b, hd);
        }
        if (c->resp_mode == RS_RECHUNK)
            oq_add(&c->oq_cl, "Transfer-Encoding: chunked\r\n", 28);
        if (!c->keep)
            oq_add(&c->oq_cl, "Connection: close\r\n\r\n", 21);
        else if (c->req.minor == 0)
            oq_add(&c->oq_cl, "Connection: keep-alive\r\n\r\n", 26);
        else
            oq_add(&c->oq_cl, "\r\n", 2);
        c->us += (size_t)h;
        c->resp_head = 1;
        if (c->resp_mode == RS_NONE || (c->resp_mode == RS_LENGTH && c->resp_left == 0))
            c->resp_done = 1;
    }
    size_t avail = c->ue - c->us;
    if (c->resp_done || avail == 0)
        return 0;
    size_t take = avail;
    if (c->resp_mode == RS_RECHUNK) {
        int n = snprintf(c->ckbuf, sizeof(c->ckbuf), "%zx\r\n", take);
        oq_add(&c->oq_cl, c->ckbuf, (size_t)n);
        oq_add(&c->oq_cl, c->ubuf + c->us, take);
        oq_add(&c->oq_cl, "\r\n", 2);
        c->us += take;
        return 1;
    }
    if (c->resp_mode == RS_LENGTH) {
        if ((uint64_t)take > (uint64_t)c->resp_left)
            take = (size_t)c->resp_left;
        c->resp_left -= (int64_t)take;
        if (c->resp_left == 0)
            c->resp_done = 1;
    } else if (c->resp_mode == RS_CHUNKED) {
        int done;
        ssize_t n = l7_chunk_feed(&c->resp_ck, c->ubuf + c->us, avail, &done);
        if (n < 0)
            return -1;
        take = (size_t)n;
        if (done)
            c->resp_done = 1;
    }
    oq_add(&c->oq_cl, c->ubuf + c->us, take);
    c->us += take;
    return 1;
}

/* Gives the upstream back to the pool when its exchange ended cleanly (else closes it). */
static void release_up(conn_t *c)
{
    upstream_t *u = c->up;
    c->up = NULL;
    if (u) {
        if (c->up_keep && c->req_done && c->us == c->ue && !u->connecting)
            pool_put(c->w, u);
        else
            up_close(u);
    }
}

/* The exchange is over: pool the upstream, account, and go back to reading the next request. */
static void finish(conn_t *c)
{
    release_up(c);
    if (c->t)
        request_end(c, 1);
    c->phase = P_HEAD;
    c->us = c->ue = 0;
    if (c->cs == c->ce)
        c->cs = c->ce = 0;
    c->deadline = c->w->now + c->w->p->cfg.idle_timeout;
}

/* A readable flag that a short read must not clear: the peer's FIN came with the data (one edge for both). */
#define RD_HUP 2

static ssize_t rd(int fd, char *b, size_t n, int *flag)
{
    for (;;) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            *flag = 0;
        else if (r > 0 && (size_t)r < n && *flag != RD_HUP)
            *flag = 0; /* drained: edge-triggered epoll reports the next arrival (saves a read per request) */
        return r;
    }
}

/* A pooled upstream the backend had already closed: send the (bodiless) request again on a new connection. */
static int retry_fresh(conn_t *c)
{
    upstream_t *u = c->up;
    if (!u || !u->reused || !c->can_retry || c->resp_head || c->ue != c->us || !cl_empty(c))
        return -1;
    up_close(u);
    c->up = NULL;
    c->can_retry = 0;
    c->oq_up = c->oq_saved;
    return up_connect(c, 1);
}

/* The TLS handshake chose h2: l7_h2.c takes the socket and TLS state (with any bytes read already); c goes. */
static void h2_handoff(conn_t *c, size_t got)
{
    worker_t *w = c->w;
    c->ce += got;
    l7_h2_adopt(w, w->p, c->fd, c->ssl, c->ip, c->port, c->cbuf + c->cs, c->ce - c->cs);
    c->ssl = NULL;
    conn_retire(c);
}

static void drive(conn_t *c)
{
    worker_t *w = c->w;
    const l7_config_t *cfg = &w->p->cfg;
    for (int guard = 0; guard < 10000 && !c->closed; guard++) {
        if (c->phase == P_CLOSING) {
            uint64_t n = 0;
            int f = c_flush(c, &n);
            if (f != 0) {
                shutdown(c->fd, SHUT_WR);
                conn_close(c);
            }
            return;
        }
        if (c->phase == P_HEAD) {
            if (c->ce > c->cs) {
                int h = l7_parse_request(c->cbuf + c->cs, c->ce - c->cs, &c->req);
                if (h > 0) {
                    c->resp_mode = RS_NONE;
                    start_request(c);
                    c->deadline = w->now + cfg->response_timeout;
                    continue;
                }
                if (h == L7_BAD) {
                    FAIL(c, R400, 400);
                    continue;
                }
                if (h == L7_TOO_BIG) {
                    FAIL(c, R431, 431);
                    continue;
                }
            }
            if (!c->rd)
                return;
            if (c->ce == CBUF || (c->cs > 0 && c->ce - c->cs < L7_MAX_HEAD && CBUF - c->ce < 4096)) {
                memmove(c->cbuf, c->cbuf + c->cs, c->ce - c->cs);
                c->ce -= c->cs;
                c->cs = 0;
            }
            ssize_t r = c_read(c, c->cbuf + c->ce, CBUF - c->ce);
            if (r != 0 && c->ssl && c->t == NULL && l7_h2_selected(c->ssl)) {
                h2_handoff(c, r > 0 ? (size_t)r : 0);
                return;
            }
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                conn_close(c);
                return;
            }
            if (r > 0) {
                if (c->ce == c->cs)
                    c->deadline = w->now + cfg->header_timeout;
                c->ce += (size_t)r;
            }
            continue;
        }
        if (c->phase == P_TUNNEL) { /* WebSocket after 101: bytes both ways until either side closes */
            upstream_t *u = c->up;
            int progress = 0;
            if (!oq_empty(&c->oq_up) && u->wr) {
                if (oq_flush(&c->oq_up, u->fd, &u->wr, NULL) < 0) {
                    conn_close(c);
                    return;
                }
            }
            if (!cl_empty(c) && c->wr) {
                if (c_flush(c, NULL) < 0) {
                    conn_close(c);
                    return;
                }
            }
            if (oq_empty(&c->oq_up)) {
                if (c->cs < c->ce) {
                    oq_add(&c->oq_up, c->cbuf + c->cs, c->ce - c->cs);
                    c->cs = c->ce;
                    progress = 1;
                } else if (c->rd) {
                    c->cs = c->ce = 0;
                    ssize_t r = c_read(c, c->cbuf, CBUF);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) {
                        conn_close(c);
                        return;
                    }
                    if (r > 0) {
                        c->ce = (size_t)r;
                        progress = 1;
                    }
                }
            }
            if (cl_empty(c)) {
                if (c->us < c->ue) {
                    oq_add(&c->oq_cl, c->ubuf + c->us, c->ue - c->us);
                    c->us = c->ue;
                    progress = 1;
                } else if (u->rd) {
                    c->us = c->ue = 0;
                    ssize_t r = rd(u->fd, c->ubuf, UBUF, &u->rd);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) {
                        conn_close(c);
                        return;
                    }
                    if (r > 0) {
                        c->ue = (size_t)r;
                        progress = 1;
                    }
                }
            }
            if (!progress)
                return;
            c->deadline = w->now + cfg->idle_timeout;
            continue;
        }
        /* P_PROXY */
        int progress = 0;
        upstream_t *u = c->up;
        if (u && !u->connecting && u->wr && !oq_empty(&c->oq_up)) {
            int f = oq_flush(&c->oq_up, u->fd, &u->wr, NULL);
            if (f < 0 && retry_fresh(c) == 0)
                continue;
            if (f < 0) {
                if (!c->resp_head && c->status == 0) {
                    FAIL(c, R502, 502);
                    continue;
                }
                conn_close(c);
                return;
            }
            progress |= f;
        }
        if (u && oq_empty(&c->oq_up) && !c->req_done) {
            if (c->cs < c->ce) {
                int pr = pump_request_body(c);
                if (pr < 0) {
                    FAIL(c, R400, 400);
                    continue;
                }
                progress |= pr;
            } else if (c->rd) {
                c->cs = c->ce = 0;
                ssize_t r = c_read(c, c->cbuf, CBUF);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    conn_close(c);
                    return;
                }
                if (r > 0) {
                    c->ce = (size_t)r;
                    progress = 1;
                }
            }
        }
        if (!cl_empty(c) && c->wr) {
            int f = c_flush(c, &c->resp_bytes);
            if (f < 0) {
                conn_close(c);
                return;
            }
            progress |= f;
        }
        if (cl_empty(c) && !c->resp_done && u) {
            int pr = c->us < c->ue ? pump_response(c) : 0;
            if (pr < 0) {
                if (!c->resp_head) {
                    FAIL(c, R502, 502);
                    continue;
                }
                conn_close(c);
                return;
            }
            if (pr > 0 || (c->resp_head && !cl_empty(c))) {
                progress = 1;
            } else if (u->rd && !u->connecting) {
                if (c->us == c->ue)
                    c->us = c->ue = 0;
                else if (c->us > 0) {
                    memmove(c->ubuf, c->ubuf + c->us, c->ue - c->us);
                    c->ue -= c->us;
                    c->us = 0;
                }
                ssize_t r = c->ue < UBUF ? rd(u->fd, c->ubuf + c->ue, UBUF - c->ue, &u->rd) : -2;
                if (r > 0) {
                    c->ue += (size_t)r;
                    progress = 1;
                } else if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    if (c->resp_head && c->resp_mode >= RS_CLOSE) {
                        if (c->resp_mode == RS_RECHUNK)
                            oq_add(&c->oq_cl, "0\r\n\r\n", 5);
                        c->resp_done = 1;
                        c->up_keep = 0;
                        progress = 1;
                    } else if (!c->resp_head && !cl_empty(c)) {
                        conn_close(c);
                        return;
                    } else if (!c->resp_head && retry_fresh(c) == 0) {
                        continue;
                    } else if (!c->resp_head) {
                        if (c->be && !u->reused)
                            atomic_store(&c->be->ejected_until_ms, (uint64_t)((w->now + EJECT_SECONDS) * 1000.0));
                        FAIL(c, R502, 502);
                        continue;
                    } else {
                        if (c->be)
                            atomic_store(&c->be->ejected_until_ms, (uint64_t)((w->now + EJECT_SECONDS) * 1000.0));
                        conn_close(c);
                        return;
                    }
                }
            }
        }
        if (c->resp_done && cl_empty(c) && c->tunnel) {
            if (c->t)
                request_end(c, 1);
            c->phase = P_TUNNEL;
            c->deadline = w->now + cfg->idle_timeout;
            continue;
        }
        if (c->resp_done && cl_empty(c)) {
            if (!c->req_done) {
                c->keep = 0;
                c->up_keep = 0;
            }
            if (!c->keep) {
                /* The client's "Connection: close" says nothing about the backend: keep that one pooled (a new
                 * backend connection per client connection cost TLS handshakes/s about half of nginx's). */
                release_up(c);
                if (c->t)
                    request_end(c, 1);
                shutdown(c->fd, SHUT_WR);
                conn_close(c);
                return;
            }
            finish(c);
            continue;
        }
        if (progress)
            c->deadline = w->now + cfg->response_timeout;
        else
            return;
    }
}

/* The connect to c's backend failed (refused, unreachable) or timed out: the backend is ejected and the request
 * goes to another one; with none left the client gets 503 (refused) or 504 (timed out) and the close. */
static void connect_failed(conn_t *c, int timed_out)
{
    backend_t *bad = c->be;
    atomic_store(&bad->ejected_until_ms, (uint64_t)((c->w->now + EJECT_SECONDS) * 1000.0));
    up_close(c->up);
    c->up = NULL;
    if (attach_backend(c, bad) < 0) {
        if (c->rt && timed_out)
            answer(c, 504, "Gateway Timeout", "upstream connect timed out\n");
        else if (c->rt)
            answer(c, 503, "Service Unavailable", "no healthy backend\n");
        c->phase = P_CLOSING;
        c->keep = 0;
    }
    /* the queued request head still points into cbuf and xbuf: it goes to the new backend */
    drive(c);
}

static void up_event(upstream_t *u, uint32_t ev)
{
    if (u->fd < 0)
        return;
    if (u->c == NULL) { /* idle in the pool: the backend closed it or sent garbage */
        if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
            return; /* only writable: re-armed by l7x_pool_give */
        pool_remove(u->w, u);
        up_close(u);
        return;
    }
    conn_t *c = u->c;
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        u->rd = RD_HUP;
    else if ((ev & EPOLLIN) && !u->rd)
        u->rd = 1;
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        u->wr = 1;
    if (u->connecting && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int e = 0;
        socklen_t el = sizeof(e);
        getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &e, &el);
        if (e != 0) {
            connect_failed(c, 0);
            return;
        }
        u->connecting = 0;
    }
    drive(c);
}

static void on_accept(worker_t *w, lsock_t *l)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        conn_t *c = malloc(sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        memset(c, 0, offsetof(conn_t, xbuf));
        c->type = T_CLIENT;
        c->fd = fd;
        c->w = w;
        c->port = l->port;
        c->rd = c->wr = 1;
        if (l->tls) {
            /* Starts on the first certificate's context, so the common one-certificate case never switches. */
            pthread_mutex_lock(&w->p->mu);
            c->ssl = SSL_new(w->p->ncerts ? w->p->certs[0].ctx : w->p->base_ctx);
            pthread_mutex_unlock(&w->p->mu);
            if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
                SSL_free(c->ssl);
                close(fd);
                free(c);
                continue;
            }
            SSL_set_accept_state(c->ssl);
        }
        c->phase = P_HEAD;
        c->deadline = w->now + w->p->cfg.header_timeout;
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
                inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], c->ip, sizeof(c->ip));
            else
                inet_ntop(AF_INET6, &a->sin6_addr, c->ip, sizeof(c->ip));
        } else {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->ip, sizeof(c->ip));
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            conn_close(c);
            continue;
        }
        drive(c);
    }
}

static void scan_timeouts(worker_t *w)
{
    for (conn_t *c = w->conns, *n; c; c = n) {
        n = c->next;
        if (c->phase == P_PROXY && c->up && c->up->connecting && c->up->connect_deadline <= w->now) {
            connect_failed(c, 1);
            continue;
        }
        if (c->deadline <= 0 || c->deadline > w->now)
            continue;
        if (c->phase == P_HEAD) {
            if (c->ce > c->cs) {
                FAIL(c, R408, 408);
                drive(c);
            } else {
                conn_close(c);
            }
        } else if (c->phase == P_PROXY && !c->resp_head) {
            FAIL(c, R504, 504);
            drive(c);
        } else {
            conn_close(c);
        }
    }
    for (upstream_t *u = w->pool, *n; u; u = n) {
        n = u->next;
        if (w->now - u->idle_since > 30.0) {
            pool_remove(w, u);
            up_close(u);
        }
    }
}

static void reap(worker_t *w)
{
    l7_h2_reap();
    while (w->dead_conns) {
        conn_t *c = w->dead_conns;
        w->dead_conns = c->next;
        free(c);
    }
    while (w->dead_ups) {
        upstream_t *u = w->dead_ups;
        w->dead_ups = u->next;
        free(u);
    }
}

/* Closes this worker's listeners that l7_unlisten marked, between event batches (no event of this batch can still
 * point at them), after accepting what already waits in their queues. */
static void close_listeners(worker_t *w)
{
    l7_proxy_t *p = w->p;
    lsock_t *mine = NULL;
    pthread_mutex_lock(&p->mu);
    for (lsock_t **pp = &p->ls; *pp;) {
        lsock_t *l = *pp;
        if (l->closing && l->wi == (int)(w - p->w)) {
            *pp = l->next;
            l->next = mine;
            mine = l;
        } else {
            pp = &l->next;
        }
    }
    pthread_mutex_unlock(&p->mu);
    while (mine) { /* outside the lock: a TLS handshake driven from on_accept takes it for SNI */
        lsock_t *l = mine;
        mine = l->next;
        on_accept(w, l);
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, l->fd, NULL);
        close(l->fd);
        free(l);
        atomic_fetch_sub(&p->ls_pending, 1);
    }
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    l7_proxy_t *p = w->p;
    struct epoll_event evs[256];
    w->now = mono();
    w->last_scan = w->now;
    while (!atomic_load(&p->stop)) {
        int n = epoll_wait(w->epfd, evs, 256, 250);
        w->now = mono();
        /* Checked after the wait: a table swapped while this worker slept applies to the events it woke for. */
        uint64_t gen = atomic_load(&p->gen);
        if (gen != w->gen) {
            table_t *old = w->t;
            w->t = table_get(p);
            w->gen = gen;
            table_unref(old);
        }
        for (int i = 0; i < n; i++) {
            int type = *(int *)evs[i].data.ptr;
            if (type == T_WAKE) {
                uint64_t v;
                if (read(w->wakefd, &v, sizeof(v)) < 0) { /* level-triggered: empty it or spin */
                }
            } else if (type == T_LISTEN)
                on_accept(w, evs[i].data.ptr);
            else if (type == T_CLIENT) {
                conn_t *c = evs[i].data.ptr;
                if (c->closed)
                    continue;
                if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                    if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                        c->rd = RD_HUP;
                    else if (!c->rd)
                        c->rd = 1;
                    if (c->wr_wants_read) {
                        c->wr_wants_read = 0;
                        c->wr = 1;
                    }
                }
                if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
                    c->wr = 1;
                    if (c->rd_wants_write) {
                        c->rd_wants_write = 0;
                        c->rd = 1;
                    }
                }
                drive(c);
            } else if (type == T_UP) {
                up_event(evs[i].data.ptr, evs[i].events);
            } else if (type == L7_T_H2 || type == L7_T_H2UP) {
                l7_h2_event(evs[i].data.ptr, evs[i].events);
            }
        }
        uint64_t lg = atomic_load(&p->ls_gen); /* after the batch: none of its events still points at one */
        if (lg != w->ls_gen) {
            w->ls_gen = lg;
            close_listeners(w);
        }
        if (w->now - w->last_scan >= 0.25) {
            w->last_scan = w->now;
            scan_timeouts(w);
            l7_h2_scan(w);
        }
        reap(w);
    }
    l7_h2_shutdown(w);
    while (w->conns)
        conn_close(w->conns);
    while (w->pool) {
        upstream_t *u = w->pool;
        pool_remove(w, u);
        up_close(u);
    }
    reap(w);
    table_unref(w->t);
    w->t = NULL;
    return NULL;
}

/* ---------------------------------------------------------------- glue for l7_h2.c */

double l7x_now(struct worker *w) { return w->now; }
int l7x_epfd(struct worker *w) { return w->epfd; }
const l7_config_t *l7x_cfg(l7_proxy_t *p) { return &p->cfg; }

void *l7x_table(struct worker *w, l7_proxy_t *p)
{
    if (!w)
        return table_get(p);
    if (w->t)
        atomic_fetch_add(&w->t->ref, 1);
    return w->t;
}

void l7x_table_unref(void *t) { table_unref(t); }

void *l7x_route(void *t, int port, const char *host, size_t hl, const char *path, size_t pl, const char **prefix,
                size_t *plen, int *strip)
{
    const route_t *r = t ? route_match(t, port, host, hl, path, pl) : NULL;
    if (r) {
        *prefix = r->prefix;
        *plen = r->plen;
        *strip = r->strip;
    }
    return (void *)r;
}

size_t l7x_group_size(void *route) { return ((route_t *)route)->g->n; }

void *l7x_pick(double now, void *route, void *avoid)
{
    backend_t *b = pick_g(((route_t *)route)->g, now, avoid);
    if (b)
        atomic_fetch_add_explicit(&b->active, 1, memory_order_relaxed);
    return b;
}

void l7x_backend_release(void *be) { atomic_fetch_sub_explicit(&((backend_t *)be)->active, 1, memory_order_relaxed); }

void l7x_eject(double now, void *be)
{
    atomic_store(&((backend_t *)be)->ejected_until_ms, (uint64_t)((now + EJECT_SECONDS) * 1000.0));
}

const struct sockaddr_storage *l7x_backend_addr(void *be, socklen_t *alen)
{
    *alen = ((backend_t *)be)->alen;
    return &((backend_t *)be)->addr;
}

void l7x_route_begin(void *route)
{
    atomic_fetch_add_explicit(&((route_t *)route)->st->active, 1, memory_order_relaxed);
}

void l7x_route_end(void *route, int ok, int status, const struct timespec *t0, uint64_t in, uint64_t out)
{
    route_account(((route_t *)route)->st, ok, status, t0, in, out);
}

int l7x_pool_take(struct worker *w, const struct sockaddr_storage *a, socklen_t al)
{
    for (upstream_t *u = w->pool; u; u = u->next) {
        if (u->alen == al && memcmp(&u->addr, a, al) == 0) {
            pool_remove(w, u);
            int fd = u->fd;
            u->fd = -1;
            u->next = w->dead_ups;
            w->dead_ups = u;
            return fd;
        }
    }
    return -1;
}

void l7x_pool_give(struct worker *w, int fd, const struct sockaddr_storage *a, socklen_t al)
{
    upstream_t *u = calloc(1, sizeof(*u));
    if (!u) {
        close(fd);
        return;
    }
    u->type = T_UP;
    u->fd = fd;
    u->w = w;
    u->addr = *a;
    u->alen = al;
    u->wr = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = u};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
        close(fd);
        free(u);
        return;
    }
    pool_put(w, u); /* closes it when the pool is full */
}

/* ---------------------------------------------------------------- life cycle */

int l7_create(const l7_config_t *cfg, l7_proxy_t **out, char *err, size_t errlen)
{
    if (cfg->workers < 1 || cfg->workers > 256) {
        snprintf(err, errlen, "workers must be 1..256, got %d", cfg->workers);
        return -1;
    }
    l7_proxy_t *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    p->cfg = *cfg;
    pthread_mutex_init(&p->mu, NULL);
    p->base_ctx = new_ctx(p);
    if (!p->base_ctx) {
        free(p);
        snprintf(err, errlen, "cannot create a TLS context");
        return -1;
    }
    p->nw = cfg->workers;
    p->w = calloc((size_t)p->nw, sizeof(worker_t));
    if (!p->w) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < p->nw; i++) {
        worker_t *w = &p->w[i];
        w->p = p;
        w->wake_tag = T_WAKE;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->wake_tag};
        if (w->epfd < 0 || w->wakefd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wakefd, &ev) < 0) {
            snprintf(err, errlen, "epoll: %s", strerror(errno));
            p->nw = i + 1;
            l7_destroy(p);
            return -1;
        }
    }
    *out = p;
    return 0;
}

int l7_listen(l7_proxy_t *p, const char *host, int port, int tls, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (zl_parse_addr(host, port, &ss, &sl) < 0) {
        snprintf(err, errlen, "listen address %.64s:%d is not a numeric IP address and port", host, port);
        return -1;
    }
    int bound = port;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->nw; i++) {
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0)
            goto fail;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)bound);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)bound);
        if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 4096) < 0) {
            close(fd);
            goto fail;
        }
        if (bound == 0) {
            struct sockaddr_storage got;
            socklen_t gl = sizeof(got);
            getsockname(fd, (struct sockaddr *)&got, &gl);
            bound = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                                   : ((struct sockaddr_in6 *)&got)->sin6_port);
        }
        lsock_t *l = calloc(1, sizeof(*l));
        if (!l) {
            close(fd);
            goto fail;
        }
        l->type = T_LISTEN;
        l->fd = fd;
        l->port = bound;
        l->tls = tls;
        l->wi = i;
        snprintf(l->host, sizeof(l->host), "%s", host);
        l->next = p->ls;
        p->ls = l;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = l};
        if (epoll_ctl(p->w[i].epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            goto fail;
    }
    pthread_mutex_unlock(&p->mu);
    return bound;
fail:
    snprintf(err, errlen, "cannot listen on %.64s:%d: %s", host, bound, strerror(errno));
    pthread_mutex_unlock(&p->mu);
    return -1;
}

int l7_unlisten(l7_proxy_t *p, const char *host, int port)
{
    int n = 0;
    pthread_mutex_lock(&p->mu);
    for (lsock_t **pp = &p->ls; *pp;) {
        lsock_t *l = *pp;
        if (l->port != port || strcmp(l->host, host) != 0 || l->closing) {
            pp = &l->next;
            continue;
        }
        n++;
        if (p->w[l->wi].started) {
            l->closing = 1;
            atomic_fetch_add(&p->ls_pending, 1);
            pp = &l->next;
        } else { /* no worker loop polls it yet */
            *pp = l->next;
            epoll_ctl(p->w[l->wi].epfd, EPOLL_CTL_DEL, l->fd, NULL);
            close(l->fd);
            free(l);
        }
    }
    atomic_fetch_add(&p->ls_gen, 1);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nw; i++) {
        uint64_t one = 1;
        if (p->w[i].started && write(p->w[i].wakefd, &one, sizeof(one)) < 0) {
        }
    }
    for (int spins = 0; atomic_load(&p->ls_pending) > 0 && !atomic_load(&p->stop) && spins < 5000; spins++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return n;
}

int l7_start(l7_proxy_t *p, char *err, size_t errlen)
{
    for (int i = 0; i < p->nw; i++) {
        if (p->w[i].started)
            continue;
        int r = pthread_create(&p->w[i].th, NULL, worker_main, &p->w[i]);
        if (r != 0) {
            snprintf(err, errlen, "cannot start a worker thread: %s", strerror(r));
            return -1;
        }
        p->w[i].started = 1;
    }
    return 0;
}

void l7_destroy(l7_proxy_t *p)
{
    if (!p)
        return;
    atomic_store(&p->stop, 1);
    for (int i = 0; i < p->nw; i++) {
        uint64_t one = 1;
        if (p->w[i].wakefd >= 0 && write(p->w[i].wakefd, &one, sizeof(one)) < 0) {
        }
    }
    for (int i = 0; i < p->nw; i++)
        if (p->w[i].started)
            pthread_join(p->w[i].th, NULL);
    for (int i = 0; i < p->nw; i++) {
        if (p->w[i].epfd >= 0)
            close(p->w[i].epfd);
        if (p->w[i].wakefd >= 0)
            close(p->w[i].wakefd);
    }
    while (p->ls) {
        lsock_t *l = p->ls;
        p->ls = l->next;
        close(l->fd);
        free(l);
    }
    while (p->stats) {
        rstats_t *s = p->stats;
        p->stats = s->next;
        free(s);
    }
    while (p->chal) {
        chal_t *c = p->chal;
        p->chal = c->next;
        free(c);
    }
    table_unref(p->t);
    for (size_t j = 0; j < p->ncerts; j++)
        SSL_CTX_free(p->certs[j].ctx);
    free(p->certs);
    SSL_CTX_free(p->base_ctx);
    free(p->w);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
