/* HTTP/1.1 client connections, request side: a parsed request head is routed (ACME challenges first), given a
 * backend, and queued toward it in origin-form with the forwarding headers — straight from the connection's buffer,
 * no copy; and the responses made here (4xx/5xx) for requests that go nowhere. */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "l7_int.h"

/* The responses made here for requests that cannot go on; the connection closes after them. */
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

void h1_request_end(conn_t *c, int ok)
{
    if (c->rt)
        route_account(c->rt->st, ok, c->status, &c->t0, c->req_bytes, c->resp_bytes);
    if (c->a.be)
        atomic_fetch_sub_explicit(&c->a.be->cnt->active, 1, memory_order_relaxed);
    c->a.be = NULL;
    c->rt = NULL;
    table_unref(c->t);
    c->t = NULL;
}

void h1_fail(conn_t *c, int status)
{
    static const struct {
        int status;
        const char *resp;
        size_t n;
    } R[] = {{400, R400, sizeof(R400) - 1}, {408, R408, sizeof(R408) - 1}, {431, R431, sizeof(R431) - 1},
             {502, R502, sizeof(R502) - 1}, {504, R504, sizeof(R504) - 1}};
    size_t k = 0;
    while (k < sizeof(R) / sizeof(R[0]) - 1 && R[k].status != status)
        k++;
    if (c->t) {
        c->status = status;
        c->resp_bytes = R[k].n;
        h1_request_end(c, 1);
    }
    up_close(c->a.up);
    c->a.up = NULL;
    oq_reset(&c->oq_cl);
    oq_add(&c->oq_cl, R[k].resp, R[k].n);
    c->phase = P_CLOSING;
    c->keep = 0;
}

void h1_answer(conn_t *c, int status, const char *reason, const char *body)
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
        h1_request_end(c, 1);
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

/* The request line in origin-form, without the route's prefix when it strips it. */
static void queue_request_line(conn_t *c, const route_t *r, const char *path, size_t pl, int root)
{
    const l7_req_t *q = &c->req;
    const char *base = c->cbuf + c->cs;
    outq_t *o = &c->oq_up;
    size_t line_end = q->nhdr ? q->hdr[0].line_off : q->head_len - 2;
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
}

/* Header lines as they came, less the hop-by-hop ones (Upgrade goes through for a WebSocket handshake); an
 * absolute-form target's authority replaces Host. */
static void queue_headers(conn_t *c, const char *host, size_t hl)
{
    const l7_req_t *q = &c->req;
    const char *base = c->cbuf + c->cs;
    outq_t *o = &c->oq_up;
    if (q->auth_len) {
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
        else if (q->conn_upgrade && c->req_done && hd->name_len == 7 &&
                 strncasecmp(base + hd->name_off, "upgrade", 7) == 0) {
            oq_add(o, base + hd->line_off, hd->line_len);
            c->upgrade = 1;
        }
    }
}

static void queue_forwarded(conn_t *c, const char *host, size_t hl)
{
    const l7_req_t *q = &c->req;
    const char *base = c->cbuf + c->cs;
    const char *xff = q->xff_idx >= 0 ? base + q->hdr[q->xff_idx].val_off : "";
    size_t xl = q->xff_idx >= 0 ? q->hdr[q->xff_idx].val_len : 0;
    size_t n = forwarded(c->xbuf, xff, xl, c->ip, host, hl, c->ssl != NULL);
    static const char UPG[] = "Connection: Upgrade\r\n\r\n", KA[] = "Connection: keep-alive\r\n\r\n";
    const char *end = c->upgrade ? UPG : q->minor == 0 ? KA : "\r\n";
    size_t el = strlen(end);
    memcpy(c->xbuf + n, end, el);
    oq_add(&c->oq_up, c->xbuf, n + el);
}

static void reset_exchange(conn_t *c)
{
    const l7_req_t *q = &c->req;
    clock_gettime(CLOCK_MONOTONIC, &c->t0);
    c->keep = q->minor == 1 ? !q->conn_close : (q->conn_keepalive && !q->conn_close);
    c->req_done = !q->chunked && q->content_length <= 0;
    c->req_left = q->content_length > 0 ? q->content_length : 0;
    memset(&c->req_ck, 0, sizeof(c->req_ck));
    c->req_bytes = q->head_len;
    c->resp_bytes = 0;
    c->resp_head = c->resp_done = 0;
    c->resp_mode = RS_NONE;
    c->status = 0;
    c->a.tries = 0;
    c->tunnel = 0;
    c->us = c->ue = 0;
}

/* Routes the request: NULL when it was answered here (challenge, no route, no backend). */
static const route_t *route(conn_t *c, const char *host, size_t hl, const char *path, size_t pl, int root)
{
    char body[512];
    if (acme_lookup(c->w->p, path, pl, body, sizeof(body))) {
        h1_answer(c, 200, "OK", body);
        return NULL;
    }
    size_t mhl = host_len(host, hl);
    const route_t *r = !c->w->t ? NULL
                       : root   ? route_match(c->w->t, c->port, host, mhl, "/", 1)
                                : route_match(c->w->t, c->port, host, mhl, path, pl);
    if (!r) {
        h1_answer(c, 404, "Not Found", "no route\n");
        return NULL;
    }
    c->t = c->w->t;
    atomic_fetch_add(&c->t->ref, 1);
    c->rt = (route_t *)r;
    c->a.g = r->g;
    atomic_fetch_add_explicit(&r->st->active, 1, memory_order_relaxed);
    if (up_attach(c->w, &c->a, NULL, c, &h1_up_ops) < 0) {
        h1_answer(c, 503, "Service Unavailable", "no healthy backend\n");
        return NULL;
    }
    return r;
}

void h1_request(conn_t *c)
{
    const l7_req_t *q = &c->req;
    const char *base = c->cbuf + c->cs;
    reset_exchange(c);
    const char *host = "";
    size_t hl = 0;
    if (q->auth_len) { /* absolute-form: its authority is the host (RFC 9112 §3.2.2) */
        host = base + q->auth_off;
        hl = q->auth_len;
    } else if (q->host_idx >= 0) {
        host = base + q->hdr[q->host_idx].val_off;
        hl = q->hdr[q->host_idx].val_len;
    }
    const char *path = base + q->path_off;
    size_t pl = q->path_len;
    int root = pl == 0 || path[0] == '?'; /* "http://host" or "http://host?q": the path is "/" */
    const route_t *r = route(c, host, hl, path, pl, root);
    if (!r)
        return;
    oq_reset(&c->oq_up);
    queue_request_line(c, r, path, pl, root);
    queue_headers(c, host, hl);
    queue_forwarded(c, host, hl);
    c->can_retry = c->req_done;
    if (c->can_retry) {
        memcpy(c->oq_saved.v, c->oq_up.v, (size_t)c->oq_up.n * sizeof(struct iovec));
        c->oq_saved.n = c->oq_up.n;
        c->oq_saved.i = 0;
    }
    c->cs += q->head_len;
    c->phase = P_PROXY;
}

int h1_pump_request_body(conn_t *c)
{
    size_t avail = c->ce - c->cs;
    if (avail == 0)
        return 0;
    int done;
    ssize_t take = body_take(c->req.chunked ? RS_CHUNKED : RS_LENGTH, &c->req_left, &c->req_ck, c->cbuf + c->cs,
                             avail, NULL, 0, NULL, &done);
    if (take < 0)
        return -1;
    if (done)
        c->req_done = 1;
    oq_add(&c->oq_up, c->cbuf + c->cs, (size_t)take);
    c->cs += (size_t)take;
    c->req_bytes += (uint64_t)take;
    return 1;
}
