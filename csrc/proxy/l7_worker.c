/* Life cycle: the proxy and its worker threads (one edge-triggered epoll loop each), listeners (one SO_REUSEPORT
 * socket per worker and address, closed by the worker that polls it), accepting, timeouts, and the end of the
 * objects closed during an event batch. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "zlayer/fdpool.h"
#include "zlayer/netaddr.h"
#include "l7_int.h"

double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

table_t *worker_table(worker_t *w, l7_proxy_t *p)
{
    if (!w)
        return table_get(p);
    if (w->t)
        atomic_fetch_add(&w->t->ref, 1);
    return w->t;
}

void epoll_forget(worker_t *w, int fd) { epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL); }

static void on_accept(worker_t *w, lsock_t *l)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        if (fd < 0)
            return;
        h1_accept(w, fd, &ss, l->port, l->tls);
    }
}

static void reap(worker_t *w)
{
    h2_reap(w);
    while (w->dead_conns) {
        conn_t *c = w->dead_conns;
        w->dead_conns = c->next;
        free(c);
    }
    up_reap(w);
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
        epoll_forget(w, l->fd);
        close(l->fd);
        free(l);
        atomic_fetch_sub(&p->ls_pending, 1);
    }
}

static void dispatch(worker_t *w, void *obj, uint32_t events)
{
    switch (*(int *)obj) {
    case T_WAKE: {
        uint64_t v;
        if (read(w->wakefd, &v, sizeof(v)) < 0) { /* level-triggered: empty it or spin */
        }
        break;
    }
    case T_LISTEN:
        on_accept(w, obj);
        break;
    case T_CLIENT:
        h1_event(obj, events);
        break;
    case T_UP:
        up_event(obj, events);
        break;
    case T_H2:
        h2_event(obj, events);
        break;
    }
}

/* Between event batches: a newer table, listeners to close, timeouts, frames queued by upstream events. */
static void housekeeping(worker_t *w)
{
    l7_proxy_t *p = w->p;
    uint64_t lg = atomic_load(&p->ls_gen); /* after the batch: none of its events still points at one */
    if (lg != w->ls_gen) {
        w->ls_gen = lg;
        close_listeners(w);
    }
    if (w->now - w->last_scan >= 0.25) {
        w->last_scan = w->now;
        h1_scan(w);
        pool_expire(w, 0);
        h2_scan(w);
    }
    h2_flush_dirty(w);
    reap(w);
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
        for (int i = 0; i < n; i++)
            dispatch(w, evs[i].data.ptr, evs[i].events);
        housekeeping(w);
    }
    h2_shutdown(w);
    while (w->conns)
        h1_close(w->conns);
    pool_expire(w, 1);
    reap(w);
    table_unref(w->t);
    w->t = NULL;
    return NULL;
}

static void wake_all(l7_proxy_t *p)
{
    for (int i = 0; i < p->nw; i++) {
        uint64_t one = 1;
        if (p->w[i].started && p->w[i].wakefd >= 0 && write(p->w[i].wakefd, &one, sizeof(one)) < 0) {
        }
    }
}

int l7_create(const l7_config_t *cfg, l7_proxy_t **out, char *err, size_t errlen)
{
    if (cfg->workers < 1 || cfg->workers > 256) {
        snprintf(err, errlen, "workers must be 1..256, got %d", cfg->workers);
        return -1;
    }
    l7_proxy_t *p = calloc(1, sizeof(*p));
    if (p) {
        p->cfg = *cfg;
        pthread_mutex_init(&p->mu, NULL);
        p->base_ctx = tls_new_ctx(p);
        p->w = calloc((size_t)cfg->workers, sizeof(worker_t));
    }
    if (!p || !p->base_ctx || !p->w) {
        snprintf(err, errlen, "out of memory or no TLS context");
        l7_destroy(p);
        return -1;
    }
    for (int i = 0; i < cfg->workers; i++, p->nw++) {
        worker_t *w = &p->w[i];
        w->p = p;
        w->wake_tag = T_WAKE;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->wake_tag};
        if (w->epfd < 0 || w->wakefd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wakefd, &ev) < 0) {
            snprintf(err, errlen, "epoll: %s", strerror(errno));
            p->nw++;
            l7_destroy(p);
            return -1;
        }
    }
    *out = p;
    return 0;
}

static zl_fdpool_t l7_inherited = ZL_FDPOOL_INIT;

/* A listening socket on ss (port *bound, 0: any, set to the one bound) in worker wi's epoll set. Under p->mu. */
static int listen_one(l7_proxy_t *p, struct sockaddr_storage *ss, socklen_t sl, int *bound, const char *host, int tls,
                      int wi)
{
    int one = 1;
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)*bound);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)*bound);
    int fd = *bound ? zl_fdpool_take(&l7_inherited, ss, SOCK_STREAM) : -1;
    int inherited = fd >= 0;
    if (!inherited) {
        fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof(got);
    lsock_t *l = NULL;
    if ((!inherited && bind(fd, (struct sockaddr *)ss, sl) < 0) || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&got, &gl) < 0 || !(l = calloc(1, sizeof(*l)))) {
        close(fd);
        return -1;
    }
    *bound = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                            : ((struct sockaddr_in6 *)&got)->sin6_port);
    *l = (lsock_t){.type = T_LISTEN, .fd = fd, .port = *bound, .tls = tls, .wi = wi, .next = p->ls};
    snprintf(l->host, sizeof(l->host), "%s", host);
    p->ls = l;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = l};
    return epoll_ctl(p->w[wi].epfd, EPOLL_CTL_ADD, fd, &ev);
}

void l7_inherit_fd(int fd)
{
    zl_fdpool_put(&l7_inherited, fd);
}

size_t l7_listening_fds(l7_proxy_t *p, int *out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&p->mu);
    for (lsock_t *l = p->ls; l && n < cap; l = l->next)
        if (!l->closing)
            out[n++] = l->fd;
    pthread_mutex_unlock(&p->mu);
    return n;
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
        if (listen_one(p, &ss, sl, &bound, host, tls, i) < 0) {
            snprintf(err, errlen, "cannot listen on %.64s:%d: %s", host, bound, strerror(errno));
            pthread_mutex_unlock(&p->mu);
            return -1;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return bound;
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
            epoll_forget(&p->w[l->wi], l->fd);
            close(l->fd);
            free(l);
        }
    }
    atomic_fetch_add(&p->ls_gen, 1);
    pthread_mutex_unlock(&p->mu);
    wake_all(p);
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
    wake_all(p);
    for (int i = 0; i < p->nw; i++) {
        if (p->w[i].started)
            pthread_join(p->w[i].th, NULL);
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
    stats_free(p->stats);
    acme_free(p->chal);
    table_unref(p->t);
    tls_free_certs(p->certs, p->ncerts);
    SSL_CTX_free(p->base_ctx);
    free(p->w);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
