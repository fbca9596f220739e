/* One HTTP/2 stream: routed like an HTTP/1.1 request (:authority, path prefix), relayed as an HTTP/1.1 request over
 * the worker's upstream connections (l7_up.c), the response head turned into a HEADERS frame (lowercase names,
 * hop-by-hop fields dropped) and its body (length-delimited, chunked or close-delimited) into DATA frames. Request
 * DATA is consumed from the client's window only once written upstream. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "l7_h2.h"

#define PUTS(st, lit) buf_put(&(st)->ob, &(st)->olen, &(st)->ocap, lit, sizeof(lit) - 1)
#define PUTN(st, p, n) buf_put(&(st)->ob, &(st)->olen, &(st)->ocap, p, n)

static ssize_t data_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)id;
    (void)ud;
    h2stream_t *st = src->ptr;
    size_t n = st->de - st->ds < length ? st->de - st->ds : length;
    if (n == 0 && !st->resp_done) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    memcpy(buf, st->db + st->ds, n);
    st->ds += n;
    st->out_bytes += n;
    if (st->ds == st->de) {
        st->ds = st->de = 0;
        if (st->resp_done) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            st->eof_given = 1;
        }
    }
    return (ssize_t)n;
}

void st_respond(h2stream_t *st, int status, const char *body)
{
    h2conn_t *hc = st->hc;
    up_close(st->a.up);
    st->a.up = NULL;
    if (st->submitted) {
        nghttp2_submit_rst_stream(hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    size_t bl = strlen(body);
    char code[8], len[24];
    snprintf(code, sizeof(code), "%d", status);
    snprintf(len, sizeof(len), "%zu", bl);
    nghttp2_nv nva[] = {
        {(uint8_t *)":status", (uint8_t *)code, 7, strlen(code), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-length", (uint8_t *)len, 14, strlen(len), NGHTTP2_NV_FLAG_NONE},
    };
    st->status = status;
    st->resp_head = st->resp_done = st->submitted = 1;
    st->ds = 0;
    st->de = bl < DBUF ? bl : DBUF;
    memcpy(st->db, body, st->de);
    st->out_bytes += 64;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_cb};
    if (nghttp2_submit_response(hc->s, st->id, nva, 3, st->is_head || bl == 0 ? NULL : &prd) != 0)
        nghttp2_submit_rst_stream(hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* ---------------------------------------------------------------- request */

static int build_request(h2stream_t *st, const route_t *r)
{
    h2conn_t *hc = st->hc;
    const char *path = st->path, *host = st->authority ? st->authority : "";
    size_t pl = strlen(path), hl = strlen(host), xl = st->xff ? strlen(st->xff) : 0;
    st->olen = st->ooff = 0;
    int e = PUTN(st, st->method, strlen(st->method)) | PUTS(st, " ");
    if (r->strip && r->plen > 1) {
        const char *rest = path + r->plen;
        size_t rl = pl - r->plen;
        if (r->prefix[r->plen - 1] == '/' || rl == 0 || rest[0] != '/')
            e |= PUTS(st, "/");
        e |= PUTN(st, rest, rl);
    } else {
        e |= PUTN(st, path, pl);
    }
    e |= PUTS(st, " HTTP/1.1\r\nHost: ") | PUTN(st, host, hl) | PUTS(st, "\r\n");
    if (st->hlen)
        e |= PUTN(st, st->hdrs, st->hlen);
    if (st->cookie)
        e |= PUTS(st, "cookie: ") | PUTN(st, st->cookie, st->cookielen) | PUTS(st, "\r\n");
    char *fwd = malloc(FWD_MAX(xl, hl));
    e |= !fwd || PUTN(st, fwd, forwarded(fwd, st->xff, xl, hc->ip, host, hl, 1));
    free(fwd);
    if (!st->req_end && !st->has_cl) {
        st->chunked_up = 1;
        e |= PUTS(st, "Transfer-Encoding: chunked\r\n");
    }
    e |= PUTS(st, "\r\n");
    st->in_bytes += st->olen;
    return e ? -1 : 0;
}

static int tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int valid_request(const h2stream_t *st)
{
    const char *m = st->method, *p = st->path, *a = st->authority;
    if (!m || !*m || !p || (p[0] != '/' && strcmp(p, "*") != 0))
        return 0;
    for (; *m; m++)
        if (!tchar((unsigned char)*m))
            return 0;
    for (; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return 0;
    for (; a && *a; a++) {
        unsigned char ch = (unsigned char)*a;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("-._~:[]%!$&'()*+,;=@", ch)))
            return 0;
    }
    return 1;
}

void st_start(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    st->started = 1;
    clock_gettime(CLOCK_MONOTONIC, &st->t0);
    st->deadline = h2_now(hc) + hc->p->cfg.response_timeout;
    if (st->too_big) {
        st_respond(st, 431, "request header fields too large\n");
        return;
    }
    if (!valid_request(st)) {
        st_respond(st, strcmp(st->method ? st->method : "", "CONNECT") == 0 ? 501 : 400, "bad request\n");
        return;
    }
    st->is_head = strcmp(st->method, "HEAD") == 0;
    const char *host = st->authority ? st->authority : "";
    st->t = worker_table(hc->w, hc->p);
    const route_t *r = st->t ? route_match(st->t, hc->port, host, host_len(host, strlen(host)), st->path,
                                           strlen(st->path))
                             : NULL;
    if (!r) {
        st_respond(st, 404, "no route\n");
        return;
    }
    st->rt = (route_t *)r;
    st->a.g = r->g;
    atomic_fetch_add_explicit(&r->st->active, 1, memory_order_relaxed);
    if (up_attach(hc->w, &st->a, NULL, st, &h2_up_ops) < 0)
        st_respond(st, 503, "no healthy backend\n");
    else if (build_request(st, r) < 0)
        st_respond(st, 502, "bad gateway\n");
    else
        st->can_retry = st->req_end;
}

int st_data(h2stream_t *st, const uint8_t *data, size_t len)
{
    int e = 0;
    if (st->chunked_up) {
        char sz[24];
        int n = snprintf(sz, sizeof(sz), "%zx\r\n", len);
        e |= PUTN(st, sz, (size_t)n) | PUTN(st, data, len) | PUTS(st, "\r\n");
    } else {
        e |= PUTN(st, data, len);
    }
    st->in_bytes += len;
    st->unconsumed += len;
    return e ? -1 : 0;
}

int st_end(h2stream_t *st)
{
    st->req_end = 1;
    if (st->chunked_up && st->a.up && !st->submitted && PUTS(st, "0\r\n\r\n"))
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- response */

/* The final response head as a HEADERS frame: names lowercased, hop-by-hop fields dropped. */
static void submit_head(h2stream_t *st, const char *b, const l7_resp_t *r)
{
    static const char *const HOP[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                      "upgrade",    "te",         "trailer"};
    nghttp2_nv nva[L7_MAX_HEADERS + 1];
    char names[L7_MAX_HEAD], code[8];
    size_t nn = 0, used = 0;
    snprintf(code, sizeof(code), "%03d", r->status % 1000);
    nva[nn++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (int i = 0; i < r->nhdr; i++) {
        const l7_hdr_t *hd = &r->hdr[i];
        int hop = 0;
        for (size_t k = 0; k < sizeof(HOP) / sizeof(HOP[0]); k++)
            hop |= hd->name_len == strlen(HOP[k]) && strncasecmp(b + hd->name_off, HOP[k], hd->name_len) == 0;
        if (hop || hd->name_len == 0 || used + hd->name_len > sizeof(names))
            continue;
        char *nm = names + used;
        for (size_t k = 0; k < hd->name_len; k++) {
            char ch = b[hd->name_off + k];
            nm[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        used += hd->name_len;
        nva[nn++] = (nghttp2_nv){(uint8_t *)nm, (uint8_t *)(b + hd->val_off), hd->name_len, hd->val_len,
                                 NGHTTP2_NV_FLAG_NONE};
    }
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_cb};
    if (nghttp2_submit_response(st->hc->s, st->id, nva, nn, st->resp_mode == RS_NONE ? NULL : &prd) != 0) {
        nghttp2_submit_rst_stream(st->hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        st->up_keep = 0;
        st->resp_done = 1;
    }
}

/* Response heads from ib: 1 the final one submitted, 0 need more, -1 bad (or a 101, which h2 has no use for). */
static int st_head(h2stream_t *st)
{
    for (;;) {
        int h = l7_parse_response(st->ib + st->is, st->ie - st->is, &st->resp);
        if (h == 0)
            return st->ie - st->is >= L7_MAX_HEAD ? -1 : 0;
        const l7_resp_t *r = &st->resp;
        if (h < 0 || r->status == 101)
            return -1;
        const char *b = st->ib + st->is;
        st->is += (size_t)h;
        if (r->status >= 200) {
            st->status = r->status;
            st->resp_mode = resp_mode(r, st->is_head, &st->up_keep);
            st->resp_left = r->content_length > 0 ? r->content_length : 0;
            memset(&st->dck, 0, sizeof(st->dck));
            st->out_bytes += (uint64_t)h;
            st->resp_head = st->submitted = 1;
            st->resp_done = st->resp_mode == RS_NONE || (st->resp_mode == RS_LENGTH && st->resp_left == 0);
            submit_head(st, b, r);
            return 1;
        }
        if (r->status == 100 && !st->req_end) { /* a client holding its body for "100-continue" gets it */
            nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE};
            nghttp2_submit_headers(st->hc->s, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
        }
    }
}

/* The backend ended the connection (or failed): finish, retry, 502 or reset depending on how far it got. */
static void st_up_gone(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    upstream_t *u = st->a.up;
    if (st->resp_head && st->resp_mode == RS_CLOSE) {
        if (st->is == st->ie) {
            st->resp_done = 1;
            st->up_keep = 0;
        }
        return;
    }
    if (!st->resp_head) {
        int reused = u->reused;
        if (reused && st->can_retry && st->is == st->ie && !hc->fuzz) {
            st->ooff = 0;
            st->can_retry = 0;
            st->up_eof = 0;
            if (up_reconnect(hc->w, &st->a, st, &h2_up_ops) == 0)
                return;
        }
        if (st->a.be && !reused)
            backend_eject(st->a.be, h2_now(hc));
        st_respond(st, 502, "bad gateway\n");
        return;
    }
    if (st->a.be)
        backend_eject(st->a.be, h2_now(hc));
    up_close(st->a.up);
    st->a.up = NULL;
    st->resp_done = 1;
    nghttp2_submit_rst_stream(hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* The fuzz target's stand-in for the socket: the request "goes out" at once, the upstream bytes come in pieces. */
static int fuzz_io(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    int progress = 0;
    if (st->ooff < st->olen) {
        st->ooff = st->olen;
        progress = 1;
    }
    if (st->fuzz_fed < hc->fuzz_upn && st->ie < IBUF) {
        size_t n = hc->fuzz_upn - st->fuzz_fed;
        n = n < IBUF - st->ie ? n : IBUF - st->ie;
        n = n < 997 ? n : 997; /* odd pieces, as a socket would deliver */
        memcpy(st->ib + st->ie, hc->fuzz_up + st->fuzz_fed, n);
        st->ie += n;
        st->fuzz_fed += n;
        progress = 1;
    } else if (st->fuzz_fed == hc->fuzz_upn && !st->up_eof) {
        st->up_eof = 1;
        progress = 1;
    }
    return progress;
}

/* Writes the request toward the backend and reads its answer into ib. */
static int socket_io(h2stream_t *st)
{
    upstream_t *u = st->a.up;
    int progress = 0;
    if (!u->connecting && u->wr && st->ooff < st->olen) {
        ssize_t n = write(u->fd, st->ob + st->ooff, st->olen - st->ooff);
        if (n > 0) {
            st->ooff += (size_t)n;
            progress = 1;
        } else if (n < 0 && errno == EAGAIN) {
            u->wr = 0;
        } else if (n < 0 && errno != EINTR) {
            st->up_eof = 1;
        }
    }
    if (u->rd && !u->connecting && st->ie < IBUF && !st->up_eof) {
        ssize_t r = rd(u->fd, st->ib + st->ie, IBUF - st->ie, &u->rd);
        if (r > 0)
            st->ie += (size_t)r;
        if (r == 0 || (r < 0 && errno != EAGAIN))
            st->up_eof = 1;
        progress |= r > 0 || st->up_eof;
    }
    return progress;
}

/* Body bytes of ib decoded into db for DATA frames; 1 if any moved. */
static int st_body(h2stream_t *st)
{
    int progress = 0;
    while (st->resp_head && !st->resp_done && st->is < st->ie && st->de < DBUF) {
        int done;
        size_t before = st->de;
        ssize_t used = body_take(st->resp_mode, &st->resp_left, &st->dck, st->ib + st->is, st->ie - st->is, st->db,
                                 DBUF, &st->de, &done);
        if (used < 0) { /* a broken body: reset below like a backend dying mid-response */
            st->up_eof = 1;
            st->resp_mode = RS_LENGTH;
            st->resp_left = 1;
            st->is = st->ie;
            break;
        }
        st->is += (size_t)used;
        if (done)
            st->resp_done = 1;
        if (used == 0 && st->de == before)
            break;
        progress = 1;
    }
    return progress;
}

int st_pump(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    if (!st->a.up)
        return 0;
    if (st->is > 0 && (st->is == st->ie || st->ie == IBUF)) {
        memmove(st->ib, st->ib + st->is, st->ie - st->is);
        st->ie -= st->is;
        st->is = 0;
    }
    int progress = hc->fuzz ? fuzz_io(st) : socket_io(st);
    if (st->ooff == st->olen && st->olen > 0) {
        if (!st->can_retry)
            st->olen = st->ooff = 0;
        if (st->unconsumed) {
            nghttp2_session_consume(hc->s, st->id, st->unconsumed);
            st->unconsumed = 0;
            progress = 1;
        }
    }
    if (!st->resp_head && st->is < st->ie) {
        int h = st_head(st);
        if (h < 0) {
            st_respond(st, 502, "bad gateway\n");
            return 1;
        }
        progress |= h;
    }
    progress |= st_body(st);
    if (st->up_eof && !st->resp_done && st->a.up)
        st_up_gone(st);
    if (st->resp_done && st->a.up) {
        up_release(st->a.up, st->up_keep && st->req_end && st->ooff == st->olen && st->is == st->ie);
        st->a.up = NULL;
    }
    if (st->deferred && (st->de > st->ds || st->resp_done)) {
        st->deferred = 0;
        nghttp2_session_resume_data(hc->s, st->id);
        progress = 1;
    }
    return progress;
}

void st_free(h2conn_t *hc, h2stream_t *st, int ok)
{
    if (st->rt)
        route_account(st->rt->st, ok && st->status != 0, st->status, &st->t0, st->in_bytes, st->out_bytes);
    up_detach(&st->a);
    table_unref(st->t);
    if (st->prev)
        st->prev->next = st->next;
    else
        hc->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    hc->nstreams--;
    free(st->method);
    free(st->path);
    free(st->authority);
    free(st->xff);
    free(st->cookie);
    free(st->hdrs);
    free(st->ob);
    free(st);
}

/* ---------------------------------------------------------------- upstream events */

static void mark_dirty(h2conn_t *hc)
{
    /* responses of many streams that arrive in one epoll batch leave in one TLS write (h2_flush_dirty) */
    if (hc->dirty || !hc->w)
        return;
    hc->dirty = 1;
    hc->dnext = hc->w->h2dirty;
    hc->w->h2dirty = hc;
}

static void h2_up_ready(void *owner)
{
    h2stream_t *st = owner;
    st_pump(st);
    mark_dirty(st->hc);
}

/* The stream's backend refused the connect or let it time out: it is ejected and the stream tries another one;
 * with none left it gets 503 (refused) or 504 (timed out). */
static void h2_up_failed(void *owner, int timed_out)
{
    h2stream_t *st = owner;
    if (up_reattach(st->hc->w, &st->a, st, &h2_up_ops) < 0)
        st_respond(st, timed_out ? 504 : 503, timed_out ? "upstream connect timed out\n" : "no healthy backend\n");
    if (st->a.up)
        st_pump(st);
    mark_dirty(st->hc);
}

const up_ops_t h2_up_ops = {h2_up_ready, h2_up_failed};
