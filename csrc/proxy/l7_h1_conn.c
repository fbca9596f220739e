/* HTTP/1.1 client connections, life: accepted from a listener, driven by epoll events, bounded by timeouts (header,
 * idle, connect, response), closed — and what their upstream connection tells them. */
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "l7_int.h"

/* Takes a finished connection off the worker's list; it is freed at the end of the event batch (reap). */
void h1_retire(conn_t *c)
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

void h1_close(conn_t *c)
{
    if (c->closed)
        return;
    if (c->t)
        h1_request_end(c, 0);
    up_close(c->a.up);
    c->a.up = NULL;
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    epoll_forget(c->w, c->fd);
    close(c->fd);
    h1_retire(c);
}

static void h1_up_ready(void *owner) { h1_drive(owner); }

/* The connect to c's backend failed (refused, unreachable) or timed out: the backend is ejected and the request
 * goes to another one; with none left the client gets 503 (refused) or 504 (timed out) and the close. */
static void h1_up_failed(void *owner, int timed_out)
{
    conn_t *c = owner;
    if (up_reattach(c->w, &c->a, c, &h1_up_ops) < 0) {
        if (c->rt && timed_out)
            h1_answer(c, 504, "Gateway Timeout", "upstream connect timed out\n");
        else if (c->rt)
            h1_answer(c, 503, "Service Unavailable", "no healthy backend\n");
        c->phase = P_CLOSING;
        c->keep = 0;
    }
    /* the queued request head still points into cbuf and xbuf: it goes to the new backend */
    h1_drive(c);
}

const up_ops_t h1_up_ops = {h1_up_ready, h1_up_failed};

void h1_event(conn_t *c, uint32_t ev)
{
    if (c->closed)
        return;
    io_event(ev, &c->rd, &c->wr, &c->rd_wants_write, &c->wr_wants_read);
    h1_drive(c);
}

static void peer_ip(const struct sockaddr_storage *ss, char *ip, size_t cap)
{
    if (ss->ss_family != AF_INET6) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, (socklen_t)cap);
        return;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
        inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], ip, (socklen_t)cap);
    else
        inet_ntop(AF_INET6, &a->sin6_addr, ip, (socklen_t)cap);
}

void h1_accept(worker_t *w, int fd, const struct sockaddr_storage *ss, int port, int tls)
{
    conn_t *c = malloc(sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    memset(c, 0, offsetof(conn_t, xbuf));
    c->type = T_CLIENT;
    c->fd = fd;
    c->w = w;
    c->port = port;
    c->rd = c->wr = 1;
    if (tls && !(c->ssl = tls_new_ssl(w->p, fd))) {
        close(fd);
        free(c);
        return;
    }
    c->phase = P_HEAD;
    c->deadline = w->now + w->p->cfg.header_timeout;
    peer_ip(ss, c->ip, sizeof(c->ip));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        h1_close(c);
        return;
    }
    h1_drive(c);
}

void h1_scan(worker_t *w)
{
    for (conn_t *c = w->conns, *n; c; c = n) {
        n = c->next;
        upstream_t *u = c->a.up;
        if (c->phase == P_PROXY && u && u->connecting && u->connect_deadline <= w->now) {
            h1_up_failed(c, 1);
            continue;
        }
        if (c->deadline <= 0 || c->deadline > w->now)
            continue;
        if (c->phase == P_HEAD && c->ce > c->cs)
            h1_fail(c, 408);
        else if (c->phase == P_PROXY && !c->resp_head)
            h1_fail(c, 504);
        else {
            h1_close(c);
            continue;
        }
        h1_drive(c);
    }
}
