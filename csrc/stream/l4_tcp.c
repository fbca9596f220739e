/* TCP relay: accept, connect a backend (retrying the next on failure), then move bytes both ways.
 *
 * Each direction starts with read/write through a 16 KiB buffer; once it has moved splice_threshold bytes and a
 * read fills the whole buffer (a bulk flow), it switches to splice through its own pipe (zero copy), as HAProxy's
 * splice-auto does. A TLS client side never splices (the bytes must go through OpenSSL). epoll is level-triggered;
 * an fd with nothing to wait for is removed from the set so HUP/ERR cannot spin the loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "l4_internal.h"

#define PIPE_SIZE (64 * 1024) /* the default pipe size, as HAProxy uses; larger pipes measured slower here */
#define MAX_ATTEMPTS 4
#define PASSIVE_EJECT_AFTER 3

typedef struct {
    char *buf;
    size_t off, len;
    int pipe[2];
    size_t plen;
    int splice, want_splice;
    int eof, shut;
    uint64_t read_bytes;
} l4_dir_t;

struct l4_conn {
    l4_ref_t cref, bref;
    int cfd, bfd;
    uint32_t cmask, bmask;
    int creg, breg;
    int connected;
    SSL *ssl;
    int ssl_read_wants_write, ssl_write_wants_read;
    l4_dir_t c2b, b2c;
    l4_table_t *table;
    l4_backend_t *backend;
    uint64_t tried;
    int attempts;
    double deadline, last, created;
    int closed;
    l4_conn_t *prev, *next;
};

static void dir_free(l4_dir_t *d)
{
    free(d->buf);
    if (d->splice) {
        close(d->pipe[0]);
        close(d->pipe[1]);
    }
}

static void set_mask(l4_worker_t *w, int fd, l4_ref_t *ref, uint32_t want, uint32_t *cur, int *reg)
{
    if (fd < 0 || (want == *cur && (*reg || want == 0)))
        return;
    struct epoll_event ev = {.events = want, .data.ptr = ref};
    if (want == 0) {
        if (*reg)
            epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
        *reg = 0;
    } else if (*reg) {
        epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &ev);
    } else {
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
        *reg = 1;
    }
    *cur = want;
}

static void conn_close(l4_worker_t *w, l4_conn_t *c)
{
    l4_listener_t *l = w->l;
    if (c->creg)
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->cfd, NULL);
    if (c->breg)
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->bfd, NULL);
    if (c->ssl) {
        if (!SSL_is_init_finished(c->ssl))
            atomic_fetch_add(&l->st.tls_errors, 1);
        SSL_free(c->ssl);
    }
    close(c->cfd);
    if (c->bfd >= 0)
        close(c->bfd);
    if (c->backend)
        atomic_fetch_sub(&c->backend->active, 1);
    l4_table_put(c->table);
    dir_free(&c->c2b);
    dir_free(&c->b2c);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    atomic_fetch_sub(&l->st.connections_active, 1);
    /* Freed after the current epoll batch: a later event of the same batch may still point at it. */
    c->closed = 1;
    c->next = w->dead;
    w->dead = c;
}

void l4_tcp_reap(l4_worker_t *w)
{
    while (w->dead) {
        l4_conn_t *c = w->dead;
        w->dead = c->next;
        free(c);
    }
}

static void backend_failed(l4_listener_t *l, l4_backend_t *b)
{
    atomic_fetch_add(&l->st.connect_errors, 1);
    atomic_fetch_add(&b->failures, 1);
    /* Passive ejection: a backend refusing several connections in a row stops being picked until a health check
     * (or Python) marks it healthy again. */
    if (atomic_fetch_add(&b->consecutive_failures, 1) + 1 >= PASSIVE_EJECT_AFTER)
        atomic_store(&b->healthy, 0);
}

/* Opens a connection to the next backend; -1 when none is left to try. */
static int connect_next(l4_worker_t *w, l4_conn_t *c)
{
    l4_listener_t *l = w->l;
    for (;;) {
        if (c->bfd >= 0) {
            if (c->breg)
                epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->bfd, NULL);
            close(c->bfd);
            c->bfd = -1;
            c->breg = 0;
            c->bmask = 0;
        }
        if (c->backend) {
            atomic_fetch_sub(&c->backend->active, 1);
            c->backend = NULL;
        }
        if (c->attempts >= MAX_ATTEMPTS)
            return -1;
        l4_backend_t *b = l4_pick(l, c->table, &c->tried);
        if (!b) {
            if (c->attempts == 0)
                atomic_fetch_add(&l->st.no_backend, 1);
            return -1;
        }
        c->attempts++;
        int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int r = connect(fd, (struct sockaddr *)&b->addr, b->addrlen);
        if (r < 0 && errno != EINPROGRESS) {
            close(fd);
            backend_failed(l, b);
            continue;
        }
        c->bfd = fd;
        c->backend = b;
        c->connected = r == 0;
        atomic_fetch_add(&b->active, 1);
        atomic_fetch_add(&b->total, 1);
        c->deadline = l4_now() + l->cfg.connect_timeout;
        return 0;
    }
}

/* Moves what it can in one direction. Returns -1 when the connection must close. */
static int dir_move(l4_worker_t *w, l4_conn_t *c, l4_dir_t *d, int c2b)
{
    l4_listener_t *l = w->l;
    int src = c2b ? c->cfd : c->bfd, dst = c2b ? c->bfd : c->cfd;
    SSL *rssl = c2b ? c->ssl : NULL, *wssl = c2b ? NULL : c->ssl;
    if (!c->connected)
        return 0; /* nothing may be read from a client before a backend is there to take it: backpressure */
    for (int round = 0; round < 32; round++) {
        int progress = 0;
        ssize_t n;
        if (d->splice && d->plen) {
            n = splice(d->pipe[0], NULL, dst, NULL, d->plen, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->plen -= (size_t)n;
                progress = 1;
                atomic_fetch_add(c2b ? &l->st.bytes_in : &l->st.bytes_out, (uint64_t)n);
                atomic_fetch_add(c2b ? &c->backend->bytes_out : &c->backend->bytes_in, (uint64_t)n);
                atomic_fetch_add(&l->st.bytes_spliced, (uint64_t)n);
            } else if (n < 0 && errno != EAGAIN)
                return -1;
        } else if (!d->splice && d->len > d->off) {
            if (wssl) {
                ERR_clear_error();
                int r = SSL_write(wssl, d->buf + d->off, (int)(d->len - d->off));
                if (r > 0)
                    n = r;
                else {
                    int e = SSL_get_error(wssl, r);
                    if (e == SSL_ERROR_WANT_READ)
                        c->ssl_write_wants_read = 1;
                    else if (e != SSL_ERROR_WANT_WRITE)
                        return -1;
                    n = 0;
                }
            } else {
                n = send(dst, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN)
                    return -1;
            }
            if (n > 0) {
                d->off += (size_t)n;
                if (d->off == d->len)
                    d->off = d->len = 0;
                progress = 1;
                atomic_fetch_add(c2b ? &l->st.bytes_in : &l->st.bytes_out, (uint64_t)n);
                atomic_fetch_add(c2b ? &c->backend->bytes_out : &c->backend->bytes_in, (uint64_t)n);
            }
        }
        int pending = d->splice ? d->plen > 0 : d->len > d->off;
        if (!pending && d->want_splice && !d->splice) {
            if (pipe2(d->pipe, O_NONBLOCK | O_CLOEXEC) == 0) {
                fcntl(d->pipe[1], F_SETPIPE_SZ, PIPE_SIZE);
                d->splice = 1;
            }
            d->want_splice = 0;
        }
        if (!pending && !d->eof) {
            if (d->splice) {
                n = splice(src, NULL, d->pipe[1], NULL, PIPE_SIZE, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n > 0) {
                    d->plen += (size_t)n;
                    progress = 1;
                } else if (n == 0)
                    d->eof = 1;
                else if (errno != EAGAIN)
                    return -1;
            } else if (rssl) {
                ERR_clear_error();
                int r = SSL_read(rssl, d->buf, L4_BUFSZ);
                if (r > 0) {
                    d->len = (size_t)r;
                    d->off = 0;
                    progress = 1;
                } else {
                    int e = SSL_get_error(rssl, r);
                    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && r == 0))
                        d->eof = 1;
                    else if (e == SSL_ERROR_WANT_WRITE)
                        c->ssl_read_wants_write = 1;
                    else if (e != SSL_ERROR_WANT_READ)
                        return -1;
                }
            } else {
                n = recv(src, d->buf, L4_BUFSZ, 0);
                if (n > 0) {
                    d->len = (size_t)n;
                    d->off = 0;
                    progress = 1;
                    d->read_bytes += (uint64_t)n;
                    if (!c->ssl && l->cfg.splice_threshold >= 0 && n == L4_BUFSZ &&
                        d->read_bytes >= (uint64_t)l->cfg.splice_threshold)
                        d->want_splice = 1;
                } else if (n == 0)
                    d->eof = 1;
                else if (errno != EAGAIN)
                    return -1;
            }
            pending = d->splice ? d->plen > 0 : d->len > d->off;
        }
        if (d->eof && !pending && !d->shut) {
            if (wssl)
                SSL_shutdown(wssl); /* close_notify; the socket's own shutdown follows */
            shutdown(dst, SHUT_WR);
            d->shut = 1;
        }
        if (!progress)
            break;
    }
    return 0;
}

static void conn_update(l4_worker_t *w, l4_conn_t *c)
{
    uint32_t cm = 0, bm = 0;
    if (!c->connected) {
        bm = EPOLLOUT;
    } else {
        int c2b_pending = c->c2b.splice ? c->c2b.plen > 0 : c->c2b.len > c->c2b.off;
        int b2c_pending = c->b2c.splice ? c->b2c.plen > 0 : c->b2c.len > c->b2c.off;
        if (c2b_pending)
            bm |= EPOLLOUT;
        else if (!c->c2b.eof)
            cm |= EPOLLIN;
        if (b2c_pending)
            cm |= EPOLLOUT;
        else if (!c->b2c.eof)
            bm |= EPOLLIN;
        if (c->ssl_read_wants_write)
            cm |= EPOLLOUT;
        if (c->ssl_write_wants_read)
            cm |= EPOLLIN;
    }
    set_mask(w, c->cfd, &c->cref, cm, &c->cmask, &c->creg);
    set_mask(w, c->bfd, &c->bref, bm, &c->bmask, &c->breg);
}

/* Runs both directions; closes the connection when it is finished or broken. */
static void conn_pump(l4_worker_t *w, l4_conn_t *c)
{
    c->ssl_read_wants_write = c->ssl_write_wants_read = 0;
    c->last = l4_now();
    if (dir_move(w, c, &c->c2b, 1) < 0 || dir_move(w, c, &c->b2c, 0) < 0 || (c->c2b.shut && c->b2c.shut)) {
        conn_close(w, c);
        return;
    }
    conn_update(w, c);
}

static void connect_failed(l4_worker_t *w, l4_conn_t *c)
{
    backend_failed(w->l, c->backend);
    if (connect_next(w, c) < 0) {
        conn_close(w, c);
        return;
    }
    conn_pump(w, c);
}

void l4_tcp_accept(l4_worker_t *w)
{
    l4_listener_t *l = w->l;
    for (int k = 0; k < 64; k++) {
        struct sockaddr_storage peer, local;
        socklen_t pl = sizeof(peer), ll = sizeof(local);
        int fd = accept4(w->lfd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: the pending connection stays readable, so level-triggered epoll would spin.
                 * Stop listening for a moment; the sweep resumes it. */
                epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->lfd, NULL);
                w->accept_paused_until = l4_now() + 0.1;
            }
            return;
        }
        l4_conn_t *c = calloc(1, sizeof(*c));
        char *b1 = malloc(L4_BUFSZ), *b2 = malloc(L4_BUFSZ);
        if (!c || !b1 || !b2) {
            free(c);
            free(b1);
            free(b2);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->cfd = fd;
        c->bfd = -1;
        c->created = l4_now();
        c->c2b.buf = b1;
        c->b2c.buf = b2;
        c->cref = (l4_ref_t){REF_CLIENT, c};
        c->bref = (l4_ref_t){REF_BACKEND, c};
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        atomic_fetch_add(&l->st.connections_total, 1);
        atomic_fetch_add(&l->st.connections_active, 1);
        if (l->cfg.proxy_protocol && getsockname(fd, (struct sockaddr *)&local, &ll) == 0)
            c->c2b.len = l4_proxy_header(l->cfg.proxy_protocol, &peer, &local, c->c2b.buf, L4_BUFSZ);
        SSL_CTX *ctx = l4_ssl_get(l);
        if (ctx) {
            c->ssl = SSL_new(ctx);
            SSL_CTX_free(ctx);
            if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
                conn_close(w, c);
                continue;
            }
            SSL_set_accept_state(c->ssl);
        }
        c->table = l4_table_get(l);
        if (connect_next(w, c) < 0) {
            conn_close(w, c);
            continue;
        }
        conn_pump(w, c);
    }
}

void l4_tcp_event(l4_worker_t *w, l4_ref_t *ref, uint32_t events)
{
    l4_conn_t *c = ref->obj;
    if (c->closed)
        return;
    if (ref->kind == REF_BACKEND && !c->connected) {
        int err = 0;
        socklen_t el = sizeof(err);
        if ((events & (EPOLLERR | EPOLLHUP)) || getsockopt(c->bfd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            connect_failed(w, c);
            return;
        }
        c->connected = 1;
        atomic_store(&c->backend->consecutive_failures, 0);
    }
    conn_pump(w, c);
}

void l4_tcp_sweep(l4_worker_t *w, double now)
{
    if (w->accept_paused_until > 0 && now >= w->accept_paused_until && w->lfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->lref};
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd, &ev);
        w->accept_paused_until = 0;
    }
    double idle = w->l->cfg.idle_timeout;
    for (l4_conn_t *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (!c->connected && now >= c->deadline)
            connect_failed(w, c);
        else if (idle > 0 && now - c->last >= idle)
            conn_close(w, c);
        else if (c->ssl && now - c->created >= w->l->cfg.handshake_timeout && !SSL_is_init_finished(c->ssl))
            conn_close(w, c); /* a client holding a TLS listener's connection open without ever finishing */
    }
}

void l4_tcp_close_all(l4_worker_t *w)
{
    while (w->conns)
        conn_close(w, w->conns);
    l4_tcp_reap(w);
}
