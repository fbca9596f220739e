/* HTTP/1.1 client connections, relay: the state machine of a connection (read a head, proxy the exchange, tunnel
 * after a 101, close after a canned answer) and the response pump. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "l7_int.h"

/* what a step of the state machine tells the loop */
enum { X_NONE = 0, X_PROGRESS = 1, X_AGAIN = 2, X_STOP = 3 };

ssize_t h1_read(conn_t *c, char *b, size_t n)
{
    return c->ssl ? tls_read(c->ssl, b, n, &c->rd, &c->rd_wants_write) : rd(c->fd, b, n, &c->rd);
}

int h1_cl_empty(const conn_t *c) { return oq_empty(&c->oq_cl) && !c->tls_pending; }

int h1_flush(conn_t *c, uint64_t *count)
{
    if (!c->ssl)
        return oq_flush(&c->oq_cl, c->fd, &c->wr, count);
    return oq_flush_tls(&c->oq_cl, c->ssl, c->tls_out, sizeof(c->tls_out), &c->tls_pending, &c->wr,
                        &c->wr_wants_read, count);
}

/* The response head from ubuf toward the client: status line (HTTP/1.1 when re-chunked), headers less the
 * connection's own, and how this connection goes on. */
static void queue_response_head(conn_t *c, const char *b, const l7_resp_t *r)
{
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
        if (hd->name_len == 10 && (strncasecmp(b + hd->name_off, "connection", 10) == 0 ||
                                   strncasecmp(b + hd->name_off, "keep-alive", 10) == 0))
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
}

/* One response head from ubuf: 1 final or 101 queued, 2 an interim (1xx) queued, 0 need more, -1 bad. */
static int response_head(conn_t *c)
{
    int h = l7_parse_response(c->ubuf + c->us, c->ue - c->us, &c->resp);
    if (h == 0)
        return c->ue - c->us >= L7_MAX_HEAD ? -1 : 0;
    if (h < 0)
        return -1;
    const char *b = c->ubuf + c->us;
    l7_resp_t *r = &c->resp;
    c->us += (size_t)h;
    if (r->status == 101 && !c->upgrade)
        return -1; /* an upgrade nobody asked for */
    if (r->status >= 100 && r->status < 200) {
        oq_add_head(&c->oq_cl, b, r, (size_t)h);
        if (r->status != 101)
            return 2;
        c->status = 101;
        c->resp_head = c->resp_done = c->tunnel = 1;
        c->up_keep = 0;
        return 1;
    }
    c->status = r->status;
    c->resp_mode = resp_mode(r, c->req.is_head, &c->up_keep);
    if (c->resp_mode == RS_CLOSE && c->keep && c->req.minor == 1)
        c->resp_mode = RS_RECHUNK;
    if (c->resp_mode == RS_CLOSE)
        c->keep = 0;
    c->resp_left = r->content_length > 0 ? r->content_length : 0;
    memset(&c->resp_ck, 0, sizeof(c->resp_ck));
    queue_response_head(c, b, r);
    c->resp_head = 1;
    c->resp_done = c->resp_mode == RS_NONE || (c->resp_mode == RS_LENGTH && c->resp_left == 0);
    return 1;
}

/* Queues response bytes from ubuf toward the client: 1 queued, 0 nothing (yet), -1 a bad response. */
int h1_pump_response(conn_t *c)
{
    int interim = 0; /* a 1xx head queued: the client must get it now (a "100 Continue" is what it waits for) */
    while (!c->resp_head) {
        int h = response_head(c);
        if (h <= 0)
            return h < 0 ? -1 : interim;
        interim = h == 2;
        if (h == 1)
            break;
    }
    size_t avail = c->ue - c->us;
    if (c->resp_done || avail == 0)
        return 1;
    if (c->resp_mode == RS_RECHUNK) {
        int n = snprintf(c->ckbuf, sizeof(c->ckbuf), "%zx\r\n", avail);
        oq_add(&c->oq_cl, c->ckbuf, (size_t)n);
        oq_add(&c->oq_cl, c->ubuf + c->us, avail);
        oq_add(&c->oq_cl, "\r\n", 2);
        c->us += avail;
        return 1;
    }
    int done;
    ssize_t take = body_take(c->resp_mode, &c->resp_left, &c->resp_ck, c->ubuf + c->us, avail, NULL, 0, NULL, &done);
    if (take < 0)
        return -1;
    if (done)
        c->resp_done = 1;
    oq_add(&c->oq_cl, c->ubuf + c->us, (size_t)take);
    c->us += (size_t)take;
    return 1;
}

/* A pooled upstream the backend had already closed: send the (bodiless) request again on a new connection. */
static int retry_fresh(conn_t *c)
{
    upstream_t *u = c->a.up;
    if (!u || !u->reused || !c->can_retry || c->resp_head || c->ue != c->us || !h1_cl_empty(c))
        return -1;
    c->can_retry = 0;
    c->oq_up = c->oq_saved;
    return up_reconnect(c->w, &c->a, c, &h1_up_ops);
}

/* The exchange is over: pool the upstream (if it is clean), account, and go back to reading the next request. */
static void finish(conn_t *c, int next)
{
    up_release(c->a.up, c->up_keep && c->req_done && c->us == c->ue);
    c->a.up = NULL;
    if (c->t)
        h1_request_end(c, 1);
    if (!next)
        return;
    c->phase = P_HEAD;
    c->us = c->ue = 0;
    if (c->cs == c->ce)
        c->cs = c->ce = 0;
    c->deadline = c->w->now + c->w->p->cfg.idle_timeout;
}

/* The TLS handshake chose h2: l7_h2.c takes the socket and TLS state (with any bytes read already); c goes. */
static void h2_handoff(conn_t *c, size_t got)
{
    c->ce += got;
    h2_adopt(c->w, c->fd, c->ssl, c->ip, c->port, c->cbuf + c->cs, c->ce - c->cs);
    c->ssl = NULL;
    h1_retire(c);
}

static int step_closing(conn_t *c)
{
    if (h1_flush(c, NULL) != 0) {
        shutdown(c->fd, SHUT_WR);
        h1_close(c);
    }
    return 0;
}

static int step_head(conn_t *c)
{
    if (c->ce > c->cs) {
        int h = l7_parse_request(c->cbuf + c->cs, c->ce - c->cs, &c->req);
        if (h > 0) {
            h1_request(c);
            c->deadline = c->w->now + c->w->p->cfg.response_timeout;
        } else if (h < 0) {
            h1_fail(c, h == L7_TOO_BIG ? 431 : 400);
        }
        if (h != 0)
            return 1;
    }
    if (!c->rd)
        return 0;
    if (c->ce == CBUF || (c->cs > 0 && c->ce - c->cs < L7_MAX_HEAD && CBUF - c->ce < 4096)) {
        memmove(c->cbuf, c->cbuf + c->cs, c->ce - c->cs);
        c->ce -= c->cs;
        c->cs = 0;
    }
    ssize_t r = h1_read(c, c->cbuf + c->ce, CBUF - c->ce);
    if (r != 0 && c->ssl && c->t == NULL && tls_h2_selected(c->ssl)) {
        h2_handoff(c, r > 0 ? (size_t)r : 0);
        return 0;
    }
    if (r == 0 || (r < 0 && errno != EAGAIN)) {
        h1_close(c);
        return 0;
    }
    if (r > 0) {
        if (c->ce == c->cs)
            c->deadline = c->w->now + c->w->p->cfg.header_timeout;
        c->ce += (size_t)r;
    }
    return 1;
}

/* After a 101: what one side sent goes to the other; X_STOP once either side closed. */
static int tunnel_move(conn_t *c, outq_t *q, int out_fd, int *out_wr, char *buf, size_t cap, size_t *s, size_t *e,
                       int from_client)
{
    int f = 0;
    if (!(from_client ? oq_empty(q) : h1_cl_empty(c)) && *out_wr)
        f = from_client ? oq_flush(q, out_fd, out_wr, NULL) : h1_flush(c, NULL);
    if (f < 0)
        return X_STOP;
    if (!(from_client ? oq_empty(q) : h1_cl_empty(c)))
        return f > 0 ? X_PROGRESS : X_NONE;
    if (*s < *e) {
        oq_add(q, buf + *s, *e - *s);
        *s = *e;
        return X_PROGRESS;
    }
    upstream_t *u = c->a.up;
    if (!(from_client ? c->rd : u->rd))
        return X_NONE;
    *s = *e = 0;
    ssize_t r = from_client ? h1_read(c, buf, cap) : rd(u->fd, buf, cap, &u->rd);
    if (r == 0 || (r < 0 && errno != EAGAIN))
        return X_STOP;
    *e = r > 0 ? (size_t)r : 0;
    return r > 0 ? X_PROGRESS : X_NONE;
}

static int step_tunnel(conn_t *c)
{
    upstream_t *u = c->a.up;
    int a = tunnel_move(c, &c->oq_up, u->fd, &u->wr, c->cbuf, CBUF, &c->cs, &c->ce, 1);
    int b = a == X_STOP ? X_STOP : tunnel_move(c, &c->oq_cl, c->fd, &c->wr, c->ubuf, UBUF, &c->us, &c->ue, 0);
    if (b == X_STOP) {
        h1_close(c);
        return 0;
    }
    if (!(a | b))
        return 0;
    c->deadline = c->w->now + c->w->p->cfg.idle_timeout;
    return 1;
}

/* A write toward the backend failed: a stale pooled connection is retried, else 502 (or the close). */
static int send_failed(conn_t *c)
{
    if (retry_fresh(c) == 0)
        return X_AGAIN;
    if (!c->resp_head && c->status == 0) {
        h1_fail(c, 502);
        return X_AGAIN;
    }
    h1_close(c);
    return X_STOP;
}

/* Request bytes toward the backend: what is queued, then more body from the client. */
static int proxy_send(conn_t *c)
{
    upstream_t *u = c->a.up;
    int progress = X_NONE;
    if (u && !u->connecting && u->wr && !oq_empty(&c->oq_up)) {
        int f = oq_flush(&c->oq_up, u->fd, &u->wr, NULL);
        if (f < 0)
            return send_failed(c);
        progress = f;
    }
    if (!u || !oq_empty(&c->oq_up) || c->req_done)
        return progress;
    if (c->cs < c->ce) {
        int pr = h1_pump_request_body(c);
        if (pr < 0) {
            h1_fail(c, 400);
            return X_AGAIN;
        }
        return progress | pr;
    }
    if (!c->rd)
        return progress;
    c->cs = c->ce = 0;
    ssize_t r = h1_read(c, c->cbuf, CBUF);
    if (r == 0 || (r < 0 && errno != EAGAIN)) {
        h1_close(c);
        return X_STOP;
    }
    c->ce = r > 0 ? (size_t)r : 0;
    return r > 0 ? X_PROGRESS : progress;
}

/* The backend closed (or failed) during the exchange: end, retry, 502 or close depending on how far it got. */
static int up_gone(conn_t *c)
{
    int reused = c->a.up->reused;
    if (c->resp_head && c->resp_mode >= RS_CLOSE) {
        if (c->resp_mode == RS_RECHUNK)
            oq_add(&c->oq_cl, "0\r\n\r\n", 5);
        c->resp_done = 1;
        c->up_keep = 0;
        return X_PROGRESS;
    }
    if (!c->resp_head && h1_cl_empty(c) && retry_fresh(c) == 0)
        return X_AGAIN;
    if (!c->resp_head && h1_cl_empty(c)) {
        if (c->a.be && !reused)
            backend_eject(c->a.be, c->w->now);
        h1_fail(c, 502);
        return X_AGAIN;
    }
    if (c->resp_head && c->a.be)
        backend_eject(c->a.be, c->w->now);
    h1_close(c);
    return X_STOP;
}

/* Response bytes from the backend toward the client, once the client has taken what was queued. */
static int proxy_recv(conn_t *c)
{
    upstream_t *u = c->a.up;
    if (!h1_cl_empty(c) || c->resp_done || !u)
        return X_NONE;
    int pr = c->us < c->ue ? h1_pump_response(c) : 0;
    if (pr < 0 && !c->resp_head) {
        h1_fail(c, 502);
        return X_AGAIN;
    }
    if (pr < 0) {
        h1_close(c);
        return X_STOP;
    }
    if (pr > 0 || (c->resp_head && !h1_cl_empty(c)))
        return X_PROGRESS;
    if (!u->rd || u->connecting)
        return X_NONE;
    if (c->us > 0) {
        memmove(c->ubuf, c->ubuf + c->us, c->ue - c->us);
        c->ue -= c->us;
        c->us = 0;
    }
    if (c->ue == UBUF)
        return X_NONE; /* cannot happen: a head fits, and body bytes leave ubuf once queued */
    ssize_t r = rd(u->fd, c->ubuf + c->ue, UBUF - c->ue, &u->rd);
    if (r > 0)
        c->ue += (size_t)r;
    if (r > 0 || (r < 0 && errno == EAGAIN))
        return r > 0 ? X_PROGRESS : X_NONE;
    return up_gone(c);
}

/* The response is out: tunnel on after a 101, read the next request, or close. */
static int proxy_done(conn_t *c)
{
    if (!c->resp_done || !h1_cl_empty(c))
        return X_NONE;
    if (c->tunnel) {
        if (c->t)
            h1_request_end(c, 1);
        c->phase = P_TUNNEL;
        c->deadline = c->w->now + c->w->p->cfg.idle_timeout;
        return X_AGAIN;
    }
    if (!c->req_done)
        c->keep = c->up_keep = 0;
    /* The client's "Connection: close" says nothing about the backend: finish() keeps that one pooled (a new
     * backend connection per client connection cost TLS handshakes/s about half of nginx's). */
    finish(c, c->keep);
    if (c->keep)
        return X_AGAIN;
    shutdown(c->fd, SHUT_WR);
    h1_close(c);
    return X_STOP;
}

static int step_proxy(conn_t *c)
{
    int progress = proxy_send(c);
    if (progress >= X_AGAIN)
        return progress == X_AGAIN;
    if (!h1_cl_empty(c) && c->wr) {
        int f = h1_flush(c, &c->resp_bytes);
        if (f < 0) {
            h1_close(c);
            return 0;
        }
        progress |= f;
    }
    int r = proxy_recv(c);
    if (r >= X_AGAIN)
        return r == X_AGAIN;
    int d = proxy_done(c);
    if (d != X_NONE)
        return d == X_AGAIN;
    if (!(progress | r))
        return 0;
    c->deadline = c->w->now + c->w->p->cfg.response_timeout;
    return 1;
}

void h1_drive(conn_t *c)
{
    for (int guard = 0; guard < 10000 && !c->closed; guard++) {
        int again = c->phase == P_CLOSING ? step_closing(c)
                    : c->phase == P_HEAD  ? step_head(c)
                    : c->phase == P_TUNNEL ? step_tunnel(c)
                                           : step_proxy(c);
        if (!again)
            return;
    }
}

