/* Listener life cycle, backend tables (swapped whole, refcounted), balancing, worker threads and stats. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "l4_internal.h"
#include "zlayer/fdpool.h"
#include "zlayer/netaddr.h"

double l4_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int l4_create(const l4_config_t *cfg, l4_listener_t **out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (cfg->protocol != L4_TCP && cfg->protocol != L4_UDP) {
        snprintf(err, errlen, "protocol must be tcp or udp");
        return -1;
    }
    if (memchr(cfg->host, 0, sizeof(cfg->host)) == NULL || zl_parse_addr(cfg->host, cfg->port, &ss, &sl) < 0) {
        snprintf(err, errlen, "listen address %.64s:%d is not a numeric IP address and port", cfg->host, cfg->port);
        return -1;
    }
    if (cfg->workers < 1 || cfg->workers > 256) {
        snprintf(err, errlen, "workers must be 1..256, got %d", cfg->workers);
        return -1;
    }
    if (cfg->proxy_protocol < 0 || cfg->proxy_protocol > 2) {
        snprintf(err, errlen, "proxy_protocol must be 0, 1 or 2, got %d", cfg->proxy_protocol);
        return -1;
    }
    l4_listener_t *l = calloc(1, sizeof(*l));
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    l->cfg = *cfg;
    if (l->cfg.session_timeout <= 0)
        l->cfg.session_timeout = 60.0;
    if (l->cfg.connect_timeout <= 0)
        l->cfg.connect_timeout = 5.0;
    if (l->cfg.handshake_timeout <= 0)
        l->cfg.handshake_timeout = 10.0;
    l->port = cfg->port;
    pthread_mutex_init(&l->lock, NULL);
    l->table = calloc(1, sizeof(l4_table_t));
    if (!l->table) {
        free(l);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_store(&l->table->refs, 1);
    *out = l;
    return 0;
}

void l4_backend_put(l4_backend_t *b)
{
    if (b && atomic_fetch_sub(&b->refs, 1) == 1)
        free(b);
}

void l4_table_put(l4_table_t *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    for (size_t i = 0; i < t->n; i++)
        l4_backend_put(t->b[i]);
    free(t);
}

l4_table_t *l4_table_get(l4_listener_t *l)
{
    pthread_mutex_lock(&l->lock);
    l4_table_t *t = l->table;
    atomic_fetch_add(&t->refs, 1);
    pthread_mutex_unlock(&l->lock);
    return t;
}

SSL_CTX *l4_ssl_get(l4_listener_t *l)
{
    pthread_mutex_lock(&l->lock);
    SSL_CTX *ctx = l->ssl;
    if (ctx)
        SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&l->lock);
    return ctx;
}

int l4_set_backends(l4_listener_t *l, const char *const *hosts, const int *ports, size_t n, char *err, size_t errlen)
{
    l4_table_t *t = calloc(1, sizeof(*t) + n * sizeof(l4_backend_t *));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_store(&t->refs, 1);
    l4_table_t *old = l4_table_get(l);
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t sl;
        if (strlen(hosts[i]) >= 64 || zl_parse_addr(hosts[i], ports[i], &ss, &sl) < 0 || ports[i] == 0) {
            snprintf(err, errlen, "backend %zu: %.64s:%d is not a numeric IP address and port 1-65535", i, hosts[i],
                     ports[i]);
            l4_table_put(old);
            l4_table_put(t);
            return -1;
        }
        l4_backend_t *b = NULL;
        /* Keep the same backend object across swaps so its counters (and least-conn's view) survive. */
        for (size_t j = 0; j < old->n; j++)
            if (old->b[j]->port == ports[i] && strcmp(old->b[j]->host, hosts[i]) == 0) {
                b = old->b[j];
                atomic_fetch_add(&b->refs, 1);
                break;
            }
        if (!b) {
            b = calloc(1, sizeof(*b));
            if (!b) {
                snprintf(err, errlen, "out of memory");
                l4_table_put(old);
                l4_table_put(t);
                return -1;
            }
            b->addr = ss;
            b->addrlen = sl;
            snprintf(b->host, sizeof(b->host), "%s", hosts[i]);
            b->port = ports[i];
            atomic_store(&b->refs, 1);
            atomic_store(&b->healthy, 1);
        }
        t->b[t->n++] = b;
    }
    l4_table_put(old);
    pthread_mutex_lock(&l->lock);
    old = l->table;
    l->table = t;
    pthread_mutex_unlock(&l->lock);
    l4_table_put(old);
    return 0;
}

int l4_set_health(l4_listener_t *l, const char *host, int port, int healthy)
{
    l4_table_t *t = l4_table_get(l);
    int found = -1;
    for (size_t i = 0; i < t->n; i++)
        if (t->b[i]->port == port && strcmp(t->b[i]->host, host) == 0) {
            atomic_store(&t->b[i]->healthy, healthy ? 1 : 0);
            if (healthy)
                atomic_store(&t->b[i]->consecutive_failures, 0);
            found = 0;
        }
    l4_table_put(t);
    return found;
}

l4_backend_t *l4_pick(l4_listener_t *l, l4_table_t *t, uint64_t *tried)
{
    size_t n = t->n;
    if (n == 0)
        return NULL;
    size_t start = (size_t)atomic_fetch_add(&l->rr, 1) % n;
    l4_backend_t *best = NULL;
    size_t besti = 0;
    /* Two passes: healthy backends first; when none is healthy, any untried one (as ZLayer's stream proxy does). */
    for (int pass = 0; pass < 2 && !best; pass++) {
        for (size_t k = 0; k < n; k++) {
            size_t i = (start + k) % n;
            if (i < 64 && (*tried & (1ULL << i)))
                continue;
            l4_backend_t *b = t->b[i];
            if (pass == 0 && !atomic_load(&b->healthy))
                continue;
            if (!best || (l->cfg.strategy == L4_LEAST_CONN && atomic_load(&b->active) < atomic_load(&best->active))) {
                best = b;
                besti = i;
            }
            if (l->cfg.strategy != L4_LEAST_CONN)
                break;
        }
    }
    if (best && besti < 64)
        *tried |= 1ULL << besti; /* beyond 64 backends, retries are bounded by the caller's attempt count */
    return best;
}

int l4_set_tls(l4_listener_t *l, const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = NULL;
    if (cert_file && key_file) {
        ctx = SSL_CTX_new(TLS_server_method());
        if (!ctx) {
            snprintf(err, errlen, "SSL_CTX_new failed");
            return -1;
        }
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                  SSL_MODE_RELEASE_BUFFERS);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
            snprintf(err, errlen, "%s: cannot load certificate chain (%s)", cert_file,
                     ERR_reason_error_string(ERR_get_error()));
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return -1;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(err, errlen, "%s: cannot load private key or it does not match %s (%s)", key_file, cert_file,
                     ERR_reason_error_string(ERR_get_error()));
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return -1;
        }
    }
    pthread_mutex_lock(&l->lock);
    SSL_CTX *old = l->ssl;
    l->ssl = ctx;
    pthread_mutex_unlock(&l->lock);
    if (old)
        SSL_CTX_free(old);
    return 0;
}

static zl_fdpool_t l4_inherited = ZL_FDPOOL_INIT;

void l4_inherit_fd(int fd)
{
    zl_fdpool_put(&l4_inherited, fd);
}

size_t l4_listening_fds(l4_listener_t *l, int *out, size_t cap)
{
    size_t n = 0;
    for (int i = 0; l->workers && i < l->nworkers && n < cap; i++)
        if (l->workers[i].lfd >= 0)
            out[n++] = l->workers[i].lfd;
    return n;
}

static int open_socket(l4_listener_t *l, int port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (zl_parse_addr(l->cfg.host, port, &ss, &sl) < 0) {
        snprintf(err, errlen, "bad listen address %s:%d", l->cfg.host, port);
        return -1;
    }
    int type = l->cfg.protocol == L4_TCP ? SOCK_STREAM : SOCK_DGRAM;
    int fd = port ? zl_fdpool_take(&l4_inherited, &ss, type) : -1;
    if (fd >= 0) /* handed over by the predecessor data-plane process: bound (and listening) already */
        return type == SOCK_STREAM && listen(fd, 4096) < 0 ? (close(fd), -1) : fd;
    fd = socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (type == SOCK_DGRAM) {
        int sz = 4 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
        snprintf(err, errlen, "bind %s:%d (%s): %s", l->cfg.host, port, type == SOCK_STREAM ? "tcp" : "udp",
                 strerror(errno));
        close(fd);
        return -1;
    }
    if (type == SOCK_STREAM && listen(fd, 4096) < 0) {
        snprintf(err, errlen, "listen %s:%d: %s", l->cfg.host, port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void *worker_main(void *arg)
{
    l4_worker_t *w = arg;
    struct epoll_event evs[256];
    double next_sweep = l4_now() + 1.0;
    for (;;) {
        int n = epoll_wait(w->epfd, evs, 256, 250);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            l4_ref_t *ref = evs[i].data.ptr;
            switch (ref->kind) {
            case REF_EVENT: {
                uint64_t v;
                if (read(w->evfd, &v, sizeof(v)) < 0 || !atomic_load(&w->l->draining))
                    return NULL;
                if (w->lfd >= 0) { /* drain: take no new connection, let the open ones finish */
                    if (w->accept_paused_until == 0) {
                        l4_tcp_accept(w); /* what already waits in the backlog would be reset by close() */
                        epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->lfd, NULL);
                    }
                    close(w->lfd);
                    w->lfd = -1;
                    atomic_fetch_sub(&w->l->accepting, 1);
                }
                break;
            }
            case REF_LISTEN:
                if (w->l->cfg.protocol == L4_TCP)
                    l4_tcp_accept(w);
                else
                    l4_udp_listen_event(w);
                break;
            case REF_UDP_SESSION:
                l4_udp_session_event(w, ref->obj);
                break;
            default:
                l4_tcp_event(w, ref, evs[i].events);
            }
        }
        if (w->l->cfg.protocol == L4_TCP)
            l4_tcp_reap(w);
        double now = l4_now();
        if (w->lfd < 0 && (!w->conns || now >= atomic_load(&w->l->drain_deadline)))
            return NULL;
        if (now >= next_sweep) {
            next_sweep = now + 0.25;
            if (w->l->cfg.protocol == L4_TCP)
                l4_tcp_sweep(w, now);
            else
                l4_udp_sweep(w, now);
        }
    }
    return NULL;
}

static void worker_cleanup(l4_worker_t *w)
{
    if (w->l->cfg.protocol == L4_TCP)
        l4_tcp_close_all(w);
    else
        l4_udp_close_all(w);
    if (w->lfd >= 0)
        close(w->lfd);
    if (w->evfd >= 0)
        close(w->evfd);
    if (w->epfd >= 0)
        close(w->epfd);
    w->lfd = w->evfd = w->epfd = -1;
    free(w->buckets);
    free(w->udpbuf);
    w->buckets = NULL;
    w->udpbuf = NULL;
}

int l4_start(l4_listener_t *l, char *err, size_t errlen)
{
    if (atomic_load(&l->running)) {
        snprintf(err, errlen, "listener already started");
        return -1;
    }
    l->workers = calloc((size_t)l->cfg.workers, sizeof(l4_worker_t));
    if (!l->workers) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    l->nworkers = l->cfg.workers;
    int port = l->cfg.port;
    for (int i = 0; i < l->nworkers; i++) {
        l4_worker_t *w = &l->workers[i];
        w->l = l;
        w->lfd = w->evfd = w->epfd = -1;
    }
    for (int i = 0; i < l->nworkers; i++) {
        l4_worker_t *w = &l->workers[i];
        w->lfd = open_socket(l, port, err, errlen);
        if (w->lfd < 0)
            goto fail;
        if (port == 0) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            getsockname(w->lfd, (struct sockaddr *)&ss, &sl);
            port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                 : ((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (l->cfg.protocol == L4_UDP) {
            w->buckets = calloc(L4_UDP_BUCKETS, sizeof(l4_usess_t *));
            w->udpbuf = malloc((size_t)L4_UDP_BATCH * 65536);
        }
        if (w->epfd < 0 || w->evfd < 0 || (l->cfg.protocol == L4_UDP && (!w->buckets || !w->udpbuf))) {
            snprintf(err, errlen, "worker set-up failed: %s", strerror(errno));
            goto fail;
        }
        w->lref.kind = REF_LISTEN;
        w->evref.kind = REF_EVENT;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->lref};
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd, &ev);
        ev.data.ptr = &w->evref;
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev);
    }
    l->port = port;
    atomic_store(&l->accepting, l->nworkers);
    atomic_store(&l->running, 1);
    for (int i = 0; i < l->nworkers; i++) {
        if (pthread_create(&l->workers[i].thread, NULL, worker_main, &l->workers[i]) != 0) {
            snprintf(err, errlen, "pthread_create failed");
            l4_stop(l);
            return -1;
        }
        l->workers[i].started = 1;
    }
    return 0;
fail:
    for (int i = 0; i < l->nworkers; i++)
        worker_cleanup(&l->workers[i]);
    free(l->workers);
    l->workers = NULL;
    l->nworkers = 0;
    return -1;
}

void l4_stop_accepting(l4_listener_t *l)
{
    if (!l->workers || l->cfg.protocol != L4_TCP || atomic_load(&l->draining))
        return;
    atomic_store(&l->drain_deadline, 1e300);
    atomic_store(&l->draining, 1);
    for (int i = 0; i < l->nworkers; i++) {
        uint64_t one = 1;
        if (write(l->workers[i].evfd, &one, sizeof(one)) < 0)
            continue;
    }
    /* Bounded wait (2 s) for every worker to close its socket; new connections then go to the other listeners
     * bound to the port (SO_REUSEPORT), never to this one. */
    for (int i = 0; i < 4000 && atomic_load(&l->accepting) > 0; i++)
        usleep(500);
}

void l4_drain(l4_listener_t *l, double grace)
{
    if (!l->workers)
        return;
    if (l->cfg.protocol == L4_TCP) {
        l4_stop_accepting(l);
        atomic_store(&l->drain_deadline, l4_now() + grace);
    }
    l4_stop(l);
    atomic_store(&l->draining, 0);
}

void l4_hurry(l4_listener_t *l)
{
    atomic_store(&l->drain_deadline, 0.0);
}

void l4_stop(l4_listener_t *l)
{
    if (!l->workers)
        return;
    for (int i = 0; i < l->nworkers; i++) {
        uint64_t one = 1;
        if (l->workers[i].evfd >= 0 && write(l->workers[i].evfd, &one, sizeof(one)) < 0)
            continue;
    }
    for (int i = 0; i < l->nworkers; i++) {
        if (l->workers[i].started)
            pthread_join(l->workers[i].thread, NULL);
        worker_cleanup(&l->workers[i]);
    }
    free(l->workers);
    l->workers = NULL;
    l->nworkers = 0;
    atomic_store(&l->running, 0);
}

void l4_destroy(l4_listener_t *l)
{
    if (!l)
        return;
    l4_stop(l);
    l4_table_put(l->table);
    if (l->ssl)
        SSL_CTX_free(l->ssl);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

int l4_port(const l4_listener_t *l)
{
    return l->port;
}

void l4_get_stats(l4_listener_t *l, l4_stats_t *o)
{
    o->connections_total = atomic_load(&l->st.connections_total);
    o->connections_active = atomic_load(&l->st.connections_active);
    o->bytes_in = atomic_load(&l->st.bytes_in);
    o->bytes_out = atomic_load(&l->st.bytes_out);
    o->bytes_spliced = atomic_load(&l->st.bytes_spliced);
    o->connect_errors = atomic_load(&l->st.connect_errors);
    o->no_backend = atomic_load(&l->st.no_backend);
    o->tls_errors = atomic_load(&l->st.tls_errors);
    o->udp_sessions_total = atomic_load(&l->st.udp_sessions_total);
    o->udp_sessions_active = atomic_load(&l->st.udp_sessions_active);
    o->udp_datagrams_in = atomic_load(&l->st.udp_datagrams_in);
    o->udp_datagrams_out = atomic_load(&l->st.udp_datagrams_out);
}

size_t l4_get_backends(l4_listener_t *l, l4_backend_info_t *out, size_t cap)
{
    l4_table_t *t = l4_table_get(l);
    size_t n = t->n < cap ? t->n : cap;
    for (size_t i = 0; i < n; i++) {
        l4_backend_t *b = t->b[i];
        memcpy(out[i].host, b->host, sizeof(out[i].host));
        out[i].port = b->port;
        out[i].healthy = atomic_load(&b->healthy);
        out[i].consecutive_failures = atomic_load(&b->consecutive_failures);
        out[i].active = atomic_load(&b->active);
        out[i].total = atomic_load(&b->total);
        out[i].failures = atomic_load(&b->failures);
        out[i].bytes_in = atomic_load(&b->bytes_in);
        out[i].bytes_out = atomic_load(&b->bytes_out);
    }
    size_t total = t->n;
    l4_table_put(t);
    return total;
}
