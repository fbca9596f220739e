/* Upstream connections, for HTTP/1.1 connections and h2 streams alike: a backend is picked for a request and an
 * idle keep-alive connection to it taken from the worker's pool, or a new one connected (non-blocking, with a
 * deadline); events go to whoever holds the connection (its up_ops_t), and a clean one goes back to the pool. */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "l7_int.h"

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

void up_close(upstream_t *u)
{
    if (!u || u->closed)
        return;
    u->closed = 1;
    u->owner = NULL;
    if (!u->w) { /* fuzzing: no socket, no epoll event can still point at it */
        free(u);
        return;
    }
    if (u->fd >= 0) {
        epoll_forget(u->w, u->fd);
        close(u->fd);
    }
    u->fd = -1;
    u->next = u->w->dead_ups; /* freed after the epoll batch: an event of it may still be queued */
    u->w->dead_ups = u;
}

void up_release(upstream_t *u, int reusable)
{
    if (!u)
        return;
    worker_t *w = u->w;
    if (!reusable || u->connecting || u->rd == RD_HUP || !w || u->fd < 0 || w->npool >= POOL_MAX) {
        up_close(u);
        return;
    }
    u->owner = NULL;
    u->idle_since = w->now;
    u->prev = NULL;
    u->next = w->pool;
    if (w->pool)
        w->pool->prev = u;
    w->pool = u;
    w->npool++;
}

static upstream_t *pool_take(worker_t *w, const backend_t *b)
{
    for (upstream_t *u = w->pool; u; u = u->next) {
        if (u->alen == b->alen && memcmp(&u->addr, &b->addr, b->alen) == 0) {
            pool_remove(w, u);
            u->reused = 1;
            return u;
        }
    }
    return NULL;
}

static upstream_t *up_connect(worker_t *w, const backend_t *b)
{
    int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    upstream_t *u = fd >= 0 ? calloc(1, sizeof(*u)) : NULL;
    if (!u) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    u->type = T_UP;
    u->fd = fd;
    u->w = w;
    u->addr = b->addr;
    u->alen = b->alen;
    int r = connect(fd, (const struct sockaddr *)&b->addr, b->alen);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = u};
    if ((r < 0 && errno != EINPROGRESS) || epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        free(u);
        return NULL;
    }
    u->connecting = r < 0;
    u->wr = !u->connecting;
    u->connect_deadline = w->now + w->p->cfg.connect_timeout;
    return u;
}

/* A connection to b for owner: pooled unless fresh, else new; NULL when the connect failed at once. */
static upstream_t *up_open(worker_t *w, const backend_t *b, int fresh, void *owner, const up_ops_t *ops)
{
    upstream_t *u = NULL;
    if (!w) /* fuzzing: a socketless stand-in */
        u = calloc(1, sizeof(*u));
    else
        u = fresh ? NULL : pool_take(w, b);
    if (!u && w)
        u = up_connect(w, b);
    if (!u)
        return NULL;
    if (!w) {
        u->type = T_UP;
        u->fd = -1;
    }
    u->owner = owner;
    u->ops = ops;
    return u;
}

static double now_of(worker_t *w) { return w ? w->now : 0.0; }

int up_attach(worker_t *w, attach_t *a, backend_t *avoid, void *owner, const up_ops_t *ops)
{
    for (;;) {
        backend_t *b = backend_pick(a->g, now_of(w), avoid);
        if (!b || a->tries >= (int)a->g->n + 1)
            return -1;
        a->tries++;
        if (a->be)
            atomic_fetch_sub_explicit(&a->be->cnt->active, 1, memory_order_relaxed);
        a->be = b;
        atomic_fetch_add_explicit(&b->cnt->active, 1, memory_order_relaxed);
        a->up = up_open(w, b, 0, owner, ops);
        if (a->up)
            return 0;
        backend_eject(b, now_of(w));
        avoid = b;
    }
}

int up_reattach(worker_t *w, attach_t *a, void *owner, const up_ops_t *ops)
{
    backend_t *bad = a->be;
    backend_eject(bad, now_of(w));
    up_close(a->up);
    a->up = NULL;
    return up_attach(w, a, bad, owner, ops);
}

int up_reconnect(worker_t *w, attach_t *a, void *owner, const up_ops_t *ops)
{
    up_close(a->up);
    a->up = up_open(w, a->be, 1, owner, ops);
    return a->up ? 0 : -1;
}

void up_detach(attach_t *a)
{
    up_close(a->up);
    a->up = NULL;
    if (a->be)
        atomic_fetch_sub_explicit(&a->be->cnt->active, 1, memory_order_relaxed);
    a->be = NULL;
}

void up_event(upstream_t *u, uint32_t ev)
{
    if (u->closed)
        return;
    if (u->owner == NULL) { /* idle in the pool: the backend closed it or sent garbage */
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            pool_remove(u->w, u);
            up_close(u);
        } else if (ev & EPOLLOUT) {
            u->wr = 1; /* the edge comes once: the next request on it must know */
        }
        return;
    }
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
            u->ops->failed(u->owner, 0);
            return;
        }
        u->connecting = 0;
    }
    u->ops->ready(u->owner);
}

void pool_expire(worker_t *w, int all)
{
    for (upstream_t *u = w->pool, *n; u; u = n) {
        n = u->next;
        if (all || w->now - u->idle_since > POOL_IDLE_SECONDS) {
            pool_remove(w, u);
            up_close(u);
        }
    }
}

void up_reap(worker_t *w)
{
    while (w->dead_ups) {
        upstream_t *u = w->dead_ups;
        w->dead_ups = u->next;
        free(u);
    }
}
