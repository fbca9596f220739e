/* zlayer L7 HTTP/2 front end (TLS + ALPN "h2"), client connections: one nghttp2 server session per connection,
 * driven from the worker's edge-triggered epoll loop; the request headers a stream collects; reads, frame writes,
 * idle and stream timeouts, GOAWAY at shutdown. The streams themselves: l7_h2_stream.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "l7_h2.h"

int buf_put(char **b, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 1024;
        while (nc < *len + n)
            nc *= 2;
        char *nb = realloc(*b, nc);
        if (!nb)
            return -1;
        *b = nb;
        *cap = nc;
    }
    memcpy(*b + *len, p, n);
    *len += n;
    return 0;
}

double h2_now(const h2conn_t *hc) { return hc->w ? hc->w->now : 0.0; }

static int name_is(const uint8_t *n, size_t nl, const char *lit)
{
    size_t l = strlen(lit);
    return nl == l && memcmp(n, lit, l) == 0;
}

/* ---------------------------------------------------------------- request headers */

static int dup_into(char **dst, const uint8_t *v, size_t n)
{
    if (*dst)
        return -1; /* a repeated pseudo-header */
    *dst = malloc(n + 1);
    if (!*dst)
        return -1;
    memcpy(*dst, v, n);
    (*dst)[n] = 0;
    return memchr(v, 0, n) ? -1 : 0;
}

/* appends sep and v to a growing header value (cookie crumbs, X-Forwarded-For hops) */
static int join_into(char **dst, size_t *len, const char *sep, const uint8_t *v, size_t vl)
{
    size_t sl = *len ? strlen(sep) : 0;
    char *n = realloc(*dst, *len + sl + vl + 1);
    if (!n)
        return -1;
    *dst = n;
    memcpy(n + *len, sep, sl);
    memcpy(n + *len + sl, v, vl);
    *len += sl + vl;
    n[*len] = 0;
    return 0;
}

/* A regular header of the request: joined, dropped (hop-by-hop and forwarding ones) or kept as a line. */
static int keep_header(h2stream_t *st, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl)
{
    static const char *const DROP[] = {"connection",        "keep-alive",       "proxy-connection", "te",
                                       "upgrade",           "transfer-encoding", "trailer",         "http2-settings",
                                       "x-forwarded-proto", "x-forwarded-host", "forwarded"};
    if (name_is(name, nl, "cookie"))
        return join_into(&st->cookie, &st->cookielen, "; ", value, vl);
    if (name_is(name, nl, "x-forwarded-for")) {
        size_t xl = st->xff ? strlen(st->xff) : 0;
        return join_into(&st->xff, &xl, ", ", value, vl);
    }
    for (size_t k = 0; k < sizeof(DROP) / sizeof(DROP[0]); k++)
        if (name_is(name, nl, DROP[k]))
            return 0;
    if (name_is(name, nl, "content-length"))
        st->has_cl = 1;
    char **h = &st->hdrs;
    return buf_put(h, &st->hlen, &st->hcap, name, nl) | buf_put(h, &st->hlen, &st->hcap, ": ", 2) |
           buf_put(h, &st->hlen, &st->hcap, value, vl) | buf_put(h, &st->hlen, &st->hcap, "\r\n", 2);
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl, const uint8_t *value,
                     size_t vl, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    h2stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || st->started)
        return 0; /* trailers are not relayed */
    if (st->hlen + nl + vl + st->cookielen > MAX_REQ_HEAD) {
        st->too_big = 1;
        return 0;
    }
    int bad = 0;
    if (name_is(name, nl, ":method"))
        bad = dup_into(&st->method, value, vl);
    else if (name_is(name, nl, ":path"))
        bad = dup_into(&st->path, value, vl);
    else if (name_is(name, nl, ":authority") || (name_is(name, nl, "host") && !st->authority))
        bad = dup_into(&st->authority, value, vl);
    else if (!(nl > 0 && name[0] == ':') && !name_is(name, nl, "host"))
        bad = keep_header(st, name, nl, value, vl);
    return bad ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    h2conn_t *hc = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2stream_t *st = malloc(sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    memset(st, 0, offsetof(h2stream_t, ib));
    st->next = st->prev = NULL;
    st->hc = hc;
    st->id = f->hd.stream_id;
    st->next = hc->streams;
    if (hc->streams)
        hc->streams->prev = st;
    hc->streams = st;
    hc->nstreams++;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
    (void)flags;
    (void)ud;
    h2stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || !st->a.up || st->submitted) {
        nghttp2_session_consume(s, id, len); /* nobody takes it: give the window back at once */
        return 0;
    }
    return st_data(st, data, len) < 0 ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    h2stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st)
        return 0;
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS && !st->started) {
        st->req_end = end;
        st_start(st);
        return 0;
    }
    if (end && !st->req_end && st_end(st) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    h2conn_t *hc = ud;
    h2stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    st_free(hc, st, code == NGHTTP2_NO_ERROR && st->eof_given);
    return 0;
}

/* ---------------------------------------------------------------- client connection */

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;
static pthread_once_t cb_once = PTHREAD_ONCE_INIT;

static void cb_init(void)
{
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_option_new(&options);
    nghttp2_option_set_no_auto_window_update(options, 1);
}

static int session_new(h2conn_t *hc)
{
    pthread_once(&cb_once, cb_init);
    if (!callbacks || !options || nghttp2_session_server_new2(&hc->s, callbacks, hc, options) != 0)
        return -1;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, L7_H2_MAX_STREAMS},
                                   {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_REQ_HEAD}};
    if (nghttp2_submit_settings(hc->s, NGHTTP2_FLAG_NONE, iv, 2) != 0)
        return -1;
    /* streams keep the default 64 KiB window (request bytes are consumed once written upstream); the connection's
     * is larger than all of them together, so one stream whose backend reads slowly never stalls the others */
    return nghttp2_session_set_local_window_size(hc->s, NGHTTP2_FLAG_NONE, 0, 16 << 20) == 0 ? 0 : -1;
}

static void hc_close(h2conn_t *hc)
{
    if (hc->closed)
        return;
    hc->closed = 1;
    while (hc->streams)
        st_free(hc, hc->streams, 0);
    nghttp2_session_del(hc->s);
    hc->s = NULL;
    SSL_free(hc->ssl);
    hc->ssl = NULL;
    if (hc->fd >= 0) {
        epoll_forget(hc->w, hc->fd);
        close(hc->fd);
    }
    hc->fd = -1;
    free(hc->ob);
    hc->ob = NULL;
    if (hc->fuzz)
        return;
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        hc->w->h2conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    hc->prev = NULL;
    hc->next = hc->w->h2dead;
    hc->w->h2dead = hc;
}

/* Frames nghttp2 has ready, serialized into ob (up to 64 KiB at a time). 1 if any, -1 error. */
static int hc_serialize(h2conn_t *hc)
{
    int got = 0;
    while (hc->olen < 65536) {
        const uint8_t *d;
        ssize_t n = nghttp2_session_mem_send(hc->s, &d);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got = 1;
        if (!hc->fuzz && buf_put(&hc->ob, &hc->olen, &hc->ocap, d, (size_t)n) < 0)
            return -1;
    }
    return got;
}

/* Serializes frames nghttp2 has ready and writes them to the client. 1 wrote something, 0 nothing, -1 error. */
int hc_flush(h2conn_t *hc)
{
    int wrote = 0;
    for (;;) {
        int s = hc_serialize(hc);
        if (s < 0)
            return -1;
        wrote |= s && hc->fuzz;
        if (hc->ooff == hc->olen) {
            hc->ooff = hc->olen = 0;
            return wrote;
        }
        if (!hc->wr)
            return wrote;
        size_t len = hc->wpending ? hc->wpending : hc->olen - hc->ooff;
        int r = tls_write(hc->ssl, hc->ob + hc->ooff, len, &hc->wr_wants_read);
        if (r < 0)
            return -1;
        if (r == 0) { /* TLS wants the same bytes again once the socket allows */
            hc->wr = 0;
            hc->wpending = len;
            return wrote;
        }
        hc->ooff += (size_t)r;
        hc->wpending = 0;
        wrote = 1;
    }
}

/* Reads what the client sent into the session: 1 some, 0 none, -1 the connection is closed. */
static int hc_read(h2conn_t *hc)
{
    if (!hc->rd || hc->fuzz)
        return 0;
    char buf[16384];
    ssize_t r = tls_read(hc->ssl, buf, sizeof(buf), &hc->rd, &hc->rd_wants_write);
    if (r > 0 && nghttp2_session_mem_recv(hc->s, (const uint8_t *)buf, (size_t)r) < 0) {
        hc_flush(hc); /* the GOAWAY nghttp2 queued, best effort */
        hc_close(hc);
        return -1;
    }
    if (r == 0 || (r < 0 && errno != EAGAIN)) {
        hc_close(hc);
        return -1;
    }
    return r > 0;
}

static void hc_drive(h2conn_t *hc)
{
    for (int guard = 0; guard < 10000 && !hc->closed; guard++) {
        int progress = hc_read(hc);
        if (progress < 0)
            return;
        for (h2stream_t *st = hc->streams; st; st = st->next)
            progress |= st_pump(st);
        int f = hc_flush(hc);
        if (f < 0 ||
            (!nghttp2_session_want_read(hc->s) && !nghttp2_session_want_write(hc->s) && hc->ooff == hc->olen)) {
            hc_close(hc);
            return;
        }
        if (!(progress | f))
            break;
    }
    if (hc->w && !hc->closed)
        hc->deadline = hc->nstreams ? 0 : hc->w->now + hc->p->cfg.idle_timeout;
}

void h2_adopt(worker_t *w, int fd, SSL *ssl, const char *ip, int port, const char *pre, size_t n)
{
    h2conn_t *hc = calloc(1, sizeof(*hc));
    if (!hc || session_new(hc) < 0) {
        if (hc)
            nghttp2_session_del(hc->s);
        free(hc);
        SSL_free(ssl);
        epoll_forget(w, fd);
        close(fd);
        return;
    }
    hc->type = T_H2;
    hc->fd = fd;
    hc->ssl = ssl;
    hc->w = w;
    hc->p = w->p;
    hc->port = port;
    snprintf(hc->ip, sizeof(hc->ip), "%s", ip);
    hc->rd = hc->wr = 1;
    hc->next = w->h2conns;
    if (w->h2conns)
        w->h2conns->prev = hc;
    w->h2conns = hc;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = hc};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ||
        (n && nghttp2_session_mem_recv(hc->s, (const uint8_t *)pre, n) < 0)) {
        hc_close(hc);
        return;
    }
    hc_drive(hc);
}

void h2_event(void *obj, uint32_t ev)
{
    h2conn_t *hc = obj;
    if (hc->closed)
        return;
    io_event(ev, &hc->rd, &hc->wr, &hc->rd_wants_write, &hc->wr_wants_read);
    hc_drive(hc);
}

static void goaway_close(h2conn_t *hc)
{
    nghttp2_submit_goaway(hc->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(hc->s), NGHTTP2_NO_ERROR,
                          NULL, 0);
    hc_flush(hc);
    hc_close(hc);
}

/* Streams past their connect or response deadline get 504 (or another backend); 1 if any did. */
static int streams_scan(h2conn_t *hc, double now)
{
    int any = 0;
    for (h2stream_t *st = hc->streams; st; st = st->next) {
        upstream_t *u = st->a.up;
        if (!st->started || st->resp_head)
            continue;
        if (u && u->connecting && u->connect_deadline <= now) {
            h2_up_ops.failed(st, 1);
            any = 1;
        } else if (st->deadline > 0 && st->deadline <= now) {
            st_respond(st, 504, "gateway timeout\n");
            any = 1;
        }
    }
    return any;
}

void h2_scan(worker_t *w)
{
    for (h2conn_t *hc = w->h2conns, *n; hc; hc = n) {
        n = hc->next;
        if (hc->nstreams == 0 && hc->deadline > 0 && hc->deadline <= w->now)
            goaway_close(hc);
        else if (streams_scan(hc, w->now))
            hc_drive(hc);
    }
}

void h2_flush_dirty(worker_t *w)
{
    while (w->h2dirty) {
        h2conn_t *hc = w->h2dirty;
        w->h2dirty = hc->dnext;
        hc->dirty = 0;
        if (!hc->closed)
            hc_drive(hc);
    }
}

void h2_reap(worker_t *w)
{
    while (w->h2dead) {
        h2conn_t *hc = w->h2dead;
        w->h2dead = hc->next;
        free(hc);
    }
}

void h2_shutdown(worker_t *w)
{
    while (w->h2conns) {
        w->h2conns->wr = 1;
        goaway_close(w->h2conns);
    }
    h2_flush_dirty(w);
    h2_reap(w);
}

/* ---------------------------------------------------------------- fuzzing */

static void fuzz_turns(h2conn_t *hc, int turns)
{
    for (int i = 0; i < turns; i++) {
        int progress = 0;
        for (h2stream_t *st = hc->streams; st; st = st->next)
            progress |= st_pump(st);
        int f = hc_flush(hc);
        if (f < 0 || !(progress | f))
            break;
    }
}

int l7_h2_fuzz_one(l7_proxy_t *p, int port, const uint8_t *client, size_t n, const uint8_t *upstream, size_t un)
{
    static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    h2conn_t *hc = calloc(1, sizeof(*hc));
    if (!hc)
        return 0;
    *hc = (h2conn_t){.type = T_H2, .fd = -1, .fuzz = 1, .p = p, .port = port, .fuzz_up = upstream, .fuzz_upn = un};
    snprintf(hc->ip, sizeof(hc->ip), "2001:db8::1");
    if (session_new(hc) < 0) {
        nghttp2_session_del(hc->s);
        free(hc);
        return 0;
    }
    /* in two pieces: frames split across reads */
    size_t half = n / 2;
    if (nghttp2_session_mem_recv(hc->s, (const uint8_t *)PREFACE, sizeof(PREFACE) - 1) >= 0 &&
        nghttp2_session_mem_recv(hc->s, client, half) >= 0) {
        fuzz_turns(hc, 50);
        if (nghttp2_session_mem_recv(hc->s, client + half, n - half) >= 0)
            fuzz_turns(hc, 200);
    }
    hc_close(hc);
    free(hc);
    return 0;
}
