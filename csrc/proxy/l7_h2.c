/* zlayer L7 HTTP/2 front end (TLS + ALPN "h2"): one nghttp2 server session per client connection, driven from the
 * worker's edge-triggered epoll loop. Every stream is routed like an HTTP/1.1 request (:authority, path prefix) and
 * relayed as an HTTP/1.1 request over the worker's pooled keep-alive upstream connections (as nginx does); the
 * response head becomes a HEADERS frame (lowercase names, hop-by-hop fields dropped) and its body (length-delimited,
 * chunked or close-delimited) DATA frames through a deferred data provider, so client flow control paces the
 * upstream reads. Request DATA is consumed from the client's window only once written upstream. */
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "l7_h2.h"

#define IBUF 16384
#define DBUF 16384
#define MAX_REQ_HEAD 65536
#define RD_HUP 2

typedef struct h2conn h2conn_t;
typedef struct h2stream h2stream_t;

typedef struct h2up {
    int type;
    int fd;
    h2stream_t *st;
    int connecting, rd, wr, reused, idle;
    struct sockaddr_storage addr;
    socklen_t alen;
    double idle_since;
    double connect_deadline; /* while connecting: past it, the backend counts as failed */
    struct h2up *next, *inext, *iprev;
} h2up_t;

#define IDLE_MAX 256 /* idle upstream connections an h2 worker keeps registered to itself (no epoll_ctl to reuse) */

struct h2stream {
    h2conn_t *hc;
    int32_t id;
    char *method, *path, *authority, *xff, *cookie;
    size_t cookielen;
    char *hdrs;
    size_t hlen, hcap;
    int has_cl, req_end, started, chunked_up, can_retry, is_head, too_big;
    void *t, *rt, *be;
    int tries;
    struct timespec t0;
    double deadline;
    h2up_t *up;
    char *ob;
    size_t olen, ooff, ocap, unconsumed;
    int up_eof, resp_head, resp_done, resp_mode, deferred, up_keep, submitted, eof_given;
    int64_t resp_left;
    l7_dechunk_t dck;
    int status;
    uint64_t in_bytes, out_bytes;
    size_t fuzz_fed;
    l7_resp_t resp;
    size_t is, ie, ds, de;
    char ib[IBUF];
    char db[DBUF];
    h2stream_t *next, *prev;
};

struct h2conn {
    int type;
    int fd;
    SSL *ssl;
    struct worker *w;
    l7_proxy_t *p;
    int port;
    char ip[64];
    nghttp2_session *s;
    int rd, wr, rd_wants_write, wr_wants_read, closed, fuzz, dirty;
    h2conn_t *dnext; /* tl_dirty: upstream bytes moved, frames to send after this epoll batch */
    char *ob;
    size_t olen, ooff, ocap, wpending;
    h2stream_t *streams;
    int nstreams;
    double deadline;
    const uint8_t *fuzz_up;
    size_t fuzz_upn;
    h2conn_t *next, *prev;
};

static __thread h2conn_t *tl_conns, *tl_dead, *tl_dirty;
static __thread h2up_t *tl_dead_ups, *tl_idle;
static __thread int tl_nidle;

static void idle_remove(h2up_t *u)
{
    if (u->iprev)
        u->iprev->inext = u->inext;
    else
        tl_idle = u->inext;
    if (u->inext)
        u->inext->iprev = u->iprev;
    u->inext = u->iprev = NULL;
    u->idle = 0;
    tl_nidle--;
}

static double now_of(h2conn_t *hc) { return hc->w ? l7x_now(hc->w) : 0.0; }

/* ---------------------------------------------------------------- chunked decoding */

enum { DC_SIZE, DC_EXT, DC_SIZE_LF, DC_DATA, DC_DATA_CR, DC_DATA_LF, DC_TRAILER, DC_TRAILER_LINE, DC_END_LF, DC_DONE };

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

ssize_t l7_dechunk(l7_dechunk_t *st, const char *in, size_t n, char *out, size_t outcap, size_t *used, int *done)
{
    size_t i = 0, o = 0;
    *done = 0;
    while (i < n && st->state != DC_DONE) {
        char ch = in[i];
        switch (st->state) {
        case DC_SIZE: {
            int v = hexval(ch);
            if (v >= 0) {
                if (++st->digits > 15)
                    return -1;
                st->left = st->left * 16 + (uint64_t)v;
                i++;
            } else if (st->digits == 0) {
                return -1;
            } else if (ch == ';' || ch == ' ' || ch == '\t') {
                st->state = DC_EXT;
                i++;
            } else if (ch == '\r') {
                st->state = DC_SIZE_LF;
                i++;
            } else {
                return -1;
            }
            break;
        }
        case DC_EXT:
            if (ch == '\r')
                st->state = DC_SIZE_LF;
            else if (ch == '\n' || (unsigned char)ch < 0x09)
                return -1;
            i++;
            break;
        case DC_SIZE_LF:
            if (ch != '\n')
                return -1;
            i++;
            st->digits = 0;
            st->state = st->left ? DC_DATA : DC_TRAILER;
            break;
        case DC_DATA: {
            size_t take = n - i;
            if (take > st->left)
                take = (size_t)st->left;
            if (take > outcap - o)
                take = outcap - o;
            if (take == 0)
                goto out; /* output full */
            memcpy(out + o, in + i, take);
            o += take;
            i += take;
            st->left -= take;
            if (st->left == 0)
                st->state = DC_DATA_CR;
            break;
        }
        case DC_DATA_CR:
            if (ch != '\r')
                return -1;
            st->state = DC_DATA_LF;
            i++;
            break;
        case DC_DATA_LF:
            if (ch != '\n')
                return -1;
            st->state = DC_SIZE;
            i++;
            break;
        case DC_TRAILER: /* start of a trailer line or the final CRLF */
            if (ch == '\r')
                st->state = DC_END_LF;
            else if (ch == '\n')
                return -1;
            else
                st->state = DC_TRAILER_LINE;
            i++;
            break;
        case DC_TRAILER_LINE:
            if (ch == '\n')
                st->state = DC_TRAILER;
            i++;
            break;
        case DC_END_LF:
            if (ch != '\n')
                return -1;
            st->state = DC_DONE;
            i++;
            break;
        }
    }
out:
    *used = i;
    *done = st->state == DC_DONE;
    return (ssize_t)o;
}

/* ---------------------------------------------------------------- helpers */

static int buf_put(char **b, size_t *len, size_t *cap, const void *p, size_t n)
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

#define PUTS(st, lit) buf_put(&(st)->ob, &(st)->olen, &(st)->ocap, lit, sizeof(lit) - 1)
#define PUTN(st, p, n) buf_put(&(st)->ob, &(st)->olen, &(st)->ocap, p, n)

static int tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int valid_method(const char *m)
{
    if (!m || !*m)
        return 0;
    for (; *m; m++)
        if (!tchar((unsigned char)*m))
            return 0;
    return 1;
}

static int valid_path(const char *p)
{
    if (!p || (p[0] != '/' && strcmp(p, "*") != 0))
        return 0;
    for (; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

static int valid_authority(const char *a)
{
    for (; a && *a; a++) {
        unsigned char ch = (unsigned char)*a;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("-._~:[]%!$&'()*+,;=@", ch)))
            return 0;
    }
    return 1;
}

static int name_is(const uint8_t *n, size_t nl, const char *lit)
{
    size_t l = strlen(lit);
    return nl == l && memcmp(n, lit, l) == 0;
}

/* Set by the first h2 connection of a worker thread: closed sockets leave its epoll set explicitly (a process
 * forked meanwhile may hold the socket open, and epoll would keep reporting it with a freed pointer). */
static __thread int tl_epfd = -1;

static void fd_close(int fd)
{
    if (tl_epfd >= 0)
        epoll_ctl(tl_epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
}

static void up_free(h2up_t *u)
{
    if (!u)
        return;
    if (u->fd >= 0)
        fd_close(u->fd);
    u->fd = -1;
    u->st = NULL;
    u->next = tl_dead_ups;
    tl_dead_ups = u;
}

static void st_up_close(h2stream_t *st)
{
    if (st->up)
        up_free(st->up);
    st->up = NULL;
}

/* The exchange with the backend is over: a clean keep-alive connection goes back to the worker's pool. */
static void st_up_release(h2stream_t *st)
{
    h2up_t *u = st->up;
    if (!u)
        return;
    h2conn_t *hc = st->hc;
    if (u->fd >= 0 && hc->w && st->up_keep && st->req_end && st->ooff == st->olen && st->is == st->ie &&
        !u->connecting && tl_nidle < IDLE_MAX) {
        u->st = NULL;
        u->idle = 1;
        u->rd = 0;
        u->idle_since = l7x_now(hc->w);
        u->iprev = NULL;
        u->inext = tl_idle;
        if (tl_idle)
            tl_idle->iprev = u;
        tl_idle = u;
        tl_nidle++;
        st->up = NULL;
        return;
    }
    if (u->fd >= 0 && hc->w && st->up_keep && st->req_end && st->ooff == st->olen && st->is == st->ie &&
        !u->connecting) {
        socklen_t al;
        const struct sockaddr_storage *a = l7x_backend_addr(st->be, &al);
        l7x_pool_give(hc->w, u->fd, a, al);
        u->fd = -1;
    }
    st_up_close(st);
}

static ssize_t data_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)id;
    (void)ud;
    h2stream_t *st = src->ptr;
    size_t avail = st->de - st->ds;
    if (avail == 0) {
        if (st->resp_done) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            st->eof_given = 1;
            return 0;
        }
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
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

/* A response made here (404, 502, 503, 504, 400): text/plain with a length. */
static void respond(h2stream_t *st, int status, const char *body)
{
    h2conn_t *hc = st->hc;
    st_up_close(st);
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
    st->resp_head = st->resp_done = 1;
    st->submitted = 1;
    st->ds = 0;
    st->de = bl < DBUF ? bl : DBUF;
    memcpy(st->db, body, st->de);
    st->out_bytes += 64;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_cb};
    if (nghttp2_submit_response(hc->s, st->id, nva, 3, st->is_head || bl == 0 ? NULL : &prd) != 0)
        nghttp2_submit_rst_stream(hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* ---------------------------------------------------------------- upstream */

static int up_open(h2stream_t *st, int fresh)
{
    h2conn_t *hc = st->hc;
    if (!fresh && !hc->fuzz) {
        socklen_t al;
        const struct sockaddr_storage *a = l7x_backend_addr(st->be, &al);
        for (h2up_t *u = tl_idle; u; u = u->inext) {
            if (u->alen == al && memcmp(&u->addr, a, al) == 0) {
                idle_remove(u);
                u->st = st;
                u->reused = 1;
                st->up = u;
                return 0;
            }
        }
    }
    h2up_t *u = calloc(1, sizeof(*u));
    if (!u)
        return -1;
    u->type = L7_T_H2UP;
    u->st = st;
    u->fd = -1;
    if (hc->fuzz) {
        st->up = u;
        return 0;
    }
    socklen_t al;
    const struct sockaddr_storage *a = l7x_backend_addr(st->be, &al);
    int fd = fresh ? -1 : l7x_pool_take(hc->w, a, al);
    int op = EPOLL_CTL_MOD;
    if (fd >= 0) {
        u->reused = 1;
        u->wr = 1;
    } else {
        fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            free(u);
            return -1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int r = connect(fd, (const struct sockaddr *)a, al);
        if (r < 0 && errno != EINPROGRESS) {
            close(fd);
            free(u);
            return -1;
        }
        u->connecting = r < 0;
        u->wr = !u->connecting;
        u->connect_deadline = now_of(hc) + l7x_cfg(hc->p)->connect_timeout;
        op = EPOLL_CTL_ADD;
    }
    u->fd = fd;
    u->addr = *a;
    u->alen = al;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = u};
    if (epoll_ctl(l7x_epfd(hc->w), op, fd, &ev) < 0) {
        close(fd);
        free(u);
        return -1;
    }
    st->up = u;
    return 0;
}

/* Picks a backend and connects (or takes a pooled connection), trying the others on a refused connect. */
static int attach(h2stream_t *st, void *avoid)
{
    h2conn_t *hc = st->hc;
    for (;;) {
        if (st->tries >= (int)l7x_group_size(st->rt) + 1)
            return -1;
        void *b = l7x_pick(now_of(hc), st->rt, avoid);
        if (!b)
            return -1;
        st->tries++;
        if (st->be)
            l7x_backend_release(st->be);
        st->be = b;
        if (up_open(st, 0) == 0)
            return 0;
        l7x_eject(now_of(hc), b);
        avoid = b;
    }
}

/* ---------------------------------------------------------------- request */

static int build_request(h2stream_t *st, const char *prefix, size_t plen, int strip)
{
    h2conn_t *hc = st->hc;
    const char *path = st->path;
    size_t pl = strlen(path);
    const char *host = st->authority ? st->authority : "";
    size_t hl = strlen(host);
    st->olen = st->ooff = 0;
    int e = PUTN(st, st->method, strlen(st->method)) | PUTS(st, " ");
    if (strip && plen > 1) {
        const char *rest = path + plen;
        size_t rl = pl - plen;
        if (prefix[plen - 1] == '/' || rl == 0 || rest[0] != '/')
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
    size_t il = strlen(hc->ip);
    int six = memchr(hc->ip, ':', il) != NULL;
    e |= PUTS(st, "X-Forwarded-For: ");
    if (st->xff)
        e |= PUTN(st, st->xff, strlen(st->xff)) | PUTS(st, ", ");
    e |= PUTN(st, hc->ip, il) | PUTS(st, "\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ") | PUTN(st, host, hl);
    e |= PUTS(st, "\r\nForwarded: for=");
    if (six)
        e |= PUTS(st, "\"[");
    e |= PUTN(st, hc->ip, il);
    if (six)
        e |= PUTS(st, "]\"");
    e |= PUTS(st, ";host=\"") | PUTN(st, host, hl) | PUTS(st, "\";proto=https\r\n");
    if (!st->req_end && !st->has_cl) {
        st->chunked_up = 1;
        e |= PUTS(st, "Transfer-Encoding: chunked\r\n");
    }
    e |= PUTS(st, "\r\n");
    st->in_bytes += st->olen;
    return e ? -1 : 0;
}

/* The request head is complete: route it, pick a backend, queue the HTTP/1.1 request. */
static void start_stream(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    st->started = 1;
    clock_gettime(CLOCK_MONOTONIC, &st->t0);
    st->deadline = now_of(hc) + l7x_cfg(hc->p)->response_timeout;
    if (st->too_big) {
        respond(st, 431, "request header fields too large\n");
        return;
    }
    if (!valid_method(st->method) || !valid_path(st->path) || !valid_authority(st->authority)) {
        respond(st, strcmp(st->method ? st->method : "", "CONNECT") == 0 ? 501 : 400,
                "bad request\n");
        return;
    }
    st->is_head = strcmp(st->method, "HEAD") == 0;
    const char *host = st->authority ? st->authority : "";
    size_t hl = strlen(host), mhl = hl;
    if (mhl && host[0] != '[') {
        const char *colon = memchr(host, ':', mhl);
        if (colon)
            mhl = (size_t)(colon - host);
    } else if (mhl) {
        const char *rb = memchr(host, ']', mhl);
        if (rb)
            mhl = (size_t)(rb - host + 1);
    }
    st->t = l7x_table(hc->w, hc->p);
    const char *prefix = "/";
    size_t plen = 1;
    int strip = 0;
    void *rt = l7x_route(st->t, hc->port, host, mhl, st->path, strlen(st->path), &prefix, &plen, &strip);
    if (!rt) {
        respond(st, 404, "no route\n");
        return;
    }
    st->rt = rt;
    l7x_route_begin(rt);
    if (attach(st, NULL) < 0) {
        respond(st, 503, "no healthy backend\n");
        return;
    }
    if (build_request(st, prefix, plen, strip) < 0) {
        respond(st, 502, "bad gateway\n");
        return;
    }
    st->can_retry = st->req_end;
}

/* ---------------------------------------------------------------- response */

static const char *const HOP[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                  "upgrade",    "te",         "trailer"};

static int st_head(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    for (;;) {
        int h = l7_parse_response(st->ib + st->is, st->ie - st->is, &st->resp);
        if (h == 0)
            return st->ie - st->is >= L7_MAX_HEAD ? -1 : 0;
        if (h < 0)
            return -1;
        l7_resp_t *r = &st->resp;
        if (r->status >= 100 && r->status < 200) {
            if (r->status == 101)
                return -1;
            st->is += (size_t)h;
            if (r->status == 100 && !st->req_end) { /* a client holding its body for "100-continue" gets it */
                nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE};
                nghttp2_submit_headers(hc->s, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
            }
            continue;
        }
        const char *b = st->ib + st->is;
        st->status = r->status;
        st->up_keep = r->minor == 1 ? !r->conn_close : r->conn_keepalive && !r->conn_close;
        if (st->is_head || r->status == 204 || r->status == 304)
            st->resp_mode = 0;
        else if (r->chunked)
            st->resp_mode = 2;
        else if (r->content_length >= 0)
            st->resp_mode = 1;
        else
            st->resp_mode = 3;
        if (st->resp_mode == 3)
            st->up_keep = 0;
        st->resp_left = r->content_length > 0 ? r->content_length : 0;
        memset(&st->dck, 0, sizeof(st->dck));
        nghttp2_nv nva[L7_MAX_HEADERS + 1];
        char names[L7_MAX_HEAD];
        size_t nn = 0, used = 0;
        char code[8];
        snprintf(code, sizeof(code), "%03d", r->status % 1000);
        nva[nn++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE};
        for (int i = 0; i < r->nhdr; i++) {
            const l7_hdr_t *hd = &r->hdr[i];
            int hop = 0;
            for (size_t k = 0; k < sizeof(HOP) / sizeof(HOP[0]); k++)
                if (hd->name_len == strlen(HOP[k]) && strncasecmp(b + hd->name_off, HOP[k], hd->name_len) == 0)
                    hop = 1;
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
        st->is += (size_t)h;
        st->out_bytes += (uint64_t)h;
        st->resp_head = 1;
        st->submitted = 1;
        if (st->resp_mode == 0 || (st->resp_mode == 1 && st->resp_left == 0))
            st->resp_done = 1;
        nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_cb};
        int rv = nghttp2_submit_response(hc->s, st->id, nva, nn, st->resp_mode == 0 ? NULL : &prd);
        if (rv != 0) {
            nghttp2_submit_rst_stream(hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
            st->up_keep = 0;
            st->resp_done = 1;
        }
        return 1;
    }
}

/* The backend ended the connection (or failed): finish, retry, 502 or reset depending on how far it got. */
static void st_up_gone(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    h2up_t *u = st->up;
    if (st->resp_head && st->resp_mode == 3) {
        if (st->is == st->ie) {
            st->resp_done = 1;
            st->up_keep = 0;
        }
        return;
    }
    if (!st->resp_head) {
        if (u && u->reused && st->can_retry && st->is == st->ie && !hc->fuzz) {
            st_up_close(st);
            st->ooff = 0;
            st->can_retry = 0;
            if (up_open(st, 1) == 0)
                return;
        }
        if (st->be && u && !u->reused)
            l7x_eject(now_of(hc), st->be);
        respond(st, 502, "bad gateway\n");
        return;
    }
    if (st->be)
        l7x_eject(now_of(hc), st->be);
    st_up_close(st);
    st->resp_done = 1;
    nghttp2_submit_rst_stream(hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* Moves bytes: request toward the backend, response from it into DATA. 1 if anything moved. */
static int st_pump(h2stream_t *st)
{
    h2conn_t *hc = st->hc;
    h2up_t *u = st->up;
    int progress = 0;
    if (!u)
        return 0;
    if (st->is > 0 && (st->is == st->ie || st->ie == IBUF)) {
        memmove(st->ib, st->ib + st->is, st->ie - st->is);
        st->ie -= st->is;
        st->is = 0;
    }
    if (hc->fuzz) {
        if (st->ooff < st->olen) {
            st->ooff = st->olen;
            progress = 1;
        }
        if (st->fuzz_fed < hc->fuzz_upn && st->ie < IBUF) {
            size_t n = hc->fuzz_upn - st->fuzz_fed;
            if (n > IBUF - st->ie)
                n = IBUF - st->ie;
            if (n > 997)
                n = 997; /* odd pieces, as a socket would deliver */
            memcpy(st->ib + st->ie, hc->fuzz_up + st->fuzz_fed, n);
            st->ie += n;
            st->fuzz_fed += n;
            progress = 1;
        } else if (st->fuzz_fed == hc->fuzz_upn && !st->up_eof) {
            st->up_eof = 1;
            progress = 1;
        }
    } else {
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
            size_t want = IBUF - st->ie;
            ssize_t r = read(u->fd, st->ib + st->ie, want);
            if (r > 0) {
                st->ie += (size_t)r;
                progress = 1;
                if ((size_t)r < want && u->rd != RD_HUP)
                    u->rd = 0;
            } else if (r < 0 && errno == EAGAIN) {
                u->rd = 0;
            } else if (r == 0 || errno != EINTR) {
                st->up_eof = 1;
                progress = 1;
            }
        }
    }
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
            respond(st, 502, "bad gateway\n");
            return 1;
        }
        progress |= h;
    }
    while (st->resp_head && !st->resp_done && st->is < st->ie && st->de < DBUF) {
        size_t avail = st->ie - st->is, room = DBUF - st->de;
        if (st->resp_mode == 2) {
            size_t used;
            int done;
            ssize_t n = l7_dechunk(&st->dck, st->ib + st->is, avail, st->db + st->de, room, &used, &done);
            if (n < 0) {
                st->up_eof = 1;
                st->resp_mode = 1; /* a broken body: reset below like a backend dying mid-response */
                st->resp_left = 1;
                st->is = st->ie;
                break;
            }
            st->de += (size_t)n;
            st->is += used;
            if (done)
                st->resp_done = 1;
            if (n == 0 && used == 0)
                break;
        } else {
            size_t take = avail < room ? avail : room;
            if (st->resp_mode == 1 && (uint64_t)take > (uint64_t)st->resp_left)
                take = (size_t)st->resp_left;
            memcpy(st->db + st->de, st->ib + st->is, take);
            st->de += take;
            st->is += take;
            if (st->resp_mode == 1) {
                st->resp_left -= (int64_t)take;
                if (st->resp_left == 0)
                    st->resp_done = 1;
            }
        }
        progress = 1;
    }
    if (st->up_eof && !st->resp_done && st->up)
        st_up_gone(st);
    if (st->resp_done && st->up)
        st_up_release(st);
    if (st->deferred && (st->de > st->ds || st->resp_done)) {
        st->deferred = 0;
        nghttp2_session_resume_data(hc->s, st->id);
        progress = 1;
    }
    return progress;
}

/* ---------------------------------------------------------------- nghttp2 callbacks */

static void st_free(h2conn_t *hc, h2stream_t *st, int ok)
{
    st_up_close(st);
    if (st->rt)
        l7x_route_end(st->rt, ok && st->status != 0, st->status, &st->t0, st->in_bytes, st->out_bytes);
    if (st->be)
        l7x_backend_release(st->be);
    if (st->t)
        l7x_table_unref(st->t);
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
    if (nl > 0 && name[0] == ':') {
        if (name_is(name, nl, ":method"))
            bad = dup_into(&st->method, value, vl);
        else if (name_is(name, nl, ":path"))
            bad = dup_into(&st->path, value, vl);
        else if (name_is(name, nl, ":authority"))
            bad = dup_into(&st->authority, value, vl);
        return bad ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
    }
    if (name_is(name, nl, "host")) {
        if (!st->authority)
            bad = dup_into(&st->authority, value, vl);
        return bad ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
    }
    if (name_is(name, nl, "cookie")) {
        char *nc = realloc(st->cookie, st->cookielen + vl + 3);
        if (!nc)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        st->cookie = nc;
        if (st->cookielen) {
            memcpy(nc + st->cookielen, "; ", 2);
            st->cookielen += 2;
        }
        memcpy(nc + st->cookielen, value, vl);
        st->cookielen += vl;
        return 0;
    }
    if (name_is(name, nl, "x-forwarded-for")) {
        size_t ol = st->xff ? strlen(st->xff) : 0;
        char *nx = realloc(st->xff, ol + vl + 3);
        if (!nx)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        st->xff = nx;
        if (ol) {
            memcpy(nx + ol, ", ", 2);
            ol += 2;
        }
        memcpy(nx + ol, value, vl);
        nx[ol + vl] = 0;
        return 0;
    }
    static const char *const DROP[] = {"connection",        "keep-alive",       "proxy-connection", "te",
                                       "upgrade",           "transfer-encoding", "trailer",         "http2-settings",
                                       "x-forwarded-proto", "x-forwarded-host", "forwarded"};
    for (size_t k = 0; k < sizeof(DROP) / sizeof(DROP[0]); k++)
        if (name_is(name, nl, DROP[k]))
            return 0;
    if (name_is(name, nl, "content-length"))
        st->has_cl = 1;
    if (buf_put(&st->hdrs, &st->hlen, &st->hcap, name, nl) || buf_put(&st->hdrs, &st->hlen, &st->hcap, ": ", 2) ||
        buf_put(&st->hdrs, &st->hlen, &st->hcap, value, vl) || buf_put(&st->hdrs, &st->hlen, &st->hcap, "\r\n", 2))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
    (void)flags;
    (void)ud;
    h2stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || !st->up || st->submitted) {
        nghttp2_session_consume(s, id, len); /* nobody takes it: give the window back at once */
        return 0;
    }
    int e = 0;
    if (st->chunked_up) {
        char sz[24];
        int n = snprintf(sz, sizeof(sz), "%zx\r\n", len);
        e |= PUTN(st, sz, (size_t)n) | PUTN(st, data, len) | PUTS(st, "\r\n");
    } else {
        e |= PUTN(st, data, len);
    }
    if (e)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->in_bytes += len;
    st->unconsumed += len;
    return 0;
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
        start_stream(st);
        return 0;
    }
    if (end && !st->req_end) {
        st->req_end = 1;
        if (st->chunked_up && st->up && !st->submitted && PUTS(st, "0\r\n\r\n"))
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
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

/* ---------------------------------------------------------------- client connection */

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
    if (hc->ssl)
        SSL_free(hc->ssl);
    hc->ssl = NULL;
    if (hc->fd >= 0)
        fd_close(hc->fd);
    hc->fd = -1;
    free(hc->ob);
    hc->ob = NULL;
    if (hc->fuzz)
        return;
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        tl_conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    hc->prev = NULL;
    hc->next = tl_dead;
    tl_dead = hc;
}

/* Serializes frames nghttp2 has ready and writes them to the client. 1 wrote something, 0 nothing, -1 error. */
static int hc_flush(h2conn_t *hc)
{
    int wrote = 0;
    for (;;) {
        while (hc->olen < 65536) {
            const uint8_t *d;
            ssize_t n = nghttp2_session_mem_send(hc->s, &d);
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            if (hc->fuzz) {
                wrote = 1;
                continue;
            }
            if (buf_put(&hc->ob, &hc->olen, &hc->ocap, d, (size_t)n) < 0)
                return -1;
        }
        if (hc->ooff == hc->olen) {
            hc->ooff = hc->olen = 0;
            return wrote;
        }
        if (!hc->wr)
            return wrote;
        size_t len = hc->wpending ? hc->wpending : hc->olen - hc->ooff;
        ERR_clear_error();
        int r = SSL_write(hc->ssl, hc->ob + hc->ooff, (int)len);
        if (r > 0) {
            hc->ooff += (size_t)r;
            hc->wpending = 0;
            wrote = 1;
            continue;
        }
        int e = SSL_get_error(hc->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            hc->wr = 0;
            hc->wr_wants_read = e == SSL_ERROR_WANT_READ;
            hc->wpending = len;
            return wrote;
        }
        return -1;
    }
}

static void hc_drive(h2conn_t *hc)
{
    for (int guard = 0; guard < 10000 && !hc->closed; guard++) {
        int progress = 0;
        if (hc->rd && !hc->fuzz) {
            char buf[16384];
            ssize_t r = l7x_ssl_read(hc->ssl, buf, sizeof(buf), &hc->rd, &hc->rd_wants_write);
            if (r > 0) {
                if (nghttp2_session_mem_recv(hc->s, (const uint8_t *)buf, (size_t)r) < 0) {
                    hc_flush(hc); /* the GOAWAY nghttp2 queued, best effort */
                    hc_close(hc);
                    return;
                }
                progress = 1;
            } else if (r == 0 || errno != EAGAIN) {
                hc_close(hc);
                return;
            }
        }
        for (h2stream_t *st = hc->streams; st; st = st->next)
            progress |= st_pump(st);
        int f = hc_flush(hc);
        if (f < 0) {
            hc_close(hc);
            return;
        }
        progress |= f;
        if (!nghttp2_session_want_read(hc->s) && !nghttp2_session_want_write(hc->s) && hc->ooff == hc->olen) {
            hc_close(hc);
            return;
        }
        if (!progress)
            break;
    }
    if (hc->w && !hc->closed)
        hc->deadline = hc->nstreams ? 0 : l7x_now(hc->w) + l7x_cfg(hc->p)->idle_timeout;
}

int l7_h2_selected(SSL *ssl)
{
    const unsigned char *a;
    unsigned int al;
    SSL_get0_alpn_selected(ssl, &a, &al);
    return al == 2 && a[0] == 'h' && a[1] == '2';
}

void l7_h2_adopt(struct worker *w, l7_proxy_t *p, int fd, SSL *ssl, const char *ip, int port, const char *pre,
                 size_t n)
{
    tl_epfd = l7x_epfd(w);
    h2conn_t *hc = calloc(1, sizeof(*hc));
    if (!hc || session_new(hc) < 0) {
        if (hc)
            nghttp2_session_del(hc->s);
        free(hc);
        SSL_free(ssl);
        fd_close(fd);
        return;
    }
    hc->type = L7_T_H2;
    hc->fd = fd;
    hc->ssl = ssl;
    hc->w = w;
    tl_epfd = l7x_epfd(w);
    hc->p = p;
    hc->port = port;
    snprintf(hc->ip, sizeof(hc->ip), "%s", ip);
    hc->rd = hc->wr = 1;
    hc->next = tl_conns;
    if (tl_conns)
        tl_conns->prev = hc;
    tl_conns = hc;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = hc};
    if (epoll_ctl(l7x_epfd(w), EPOLL_CTL_MOD, fd, &ev) < 0 ||
        (n && nghttp2_session_mem_recv(hc->s, (const uint8_t *)pre, n) < 0)) {
        hc_close(hc);
        return;
    }
    hc_drive(hc);
}

/* The stream's backend refused the connect or let it time out: it is ejected and the stream tries another one;
 * with none left it gets 503 (refused) or 504 (timed out). */
static void connect_failed(h2stream_t *st, int timed_out)
{
    void *bad = st->be;
    l7x_eject(now_of(st->hc), bad);
    st_up_close(st);
    if (attach(st, bad) < 0)
        respond(st, timed_out ? 504 : 503, timed_out ? "upstream connect timed out\n" : "no healthy backend\n");
}

void l7_h2_event(void *obj, uint32_t ev)
{
    if (*(int *)obj == L7_T_H2) {
        h2conn_t *hc = obj;
        if (hc->closed)
            return;
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            hc->rd = 1;
            if (hc->wr_wants_read) {
                hc->wr_wants_read = 0;
                hc->wr = 1;
            }
        }
        if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
            hc->wr = 1;
            if (hc->rd_wants_write) {
                hc->rd_wants_write = 0;
                hc->rd = 1;
            }
        }
        hc_drive(hc);
        return;
    }
    h2up_t *u = obj;
    if (u->fd >= 0 && u->idle) { /* idle: the backend closed it or sent garbage */
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            idle_remove(u);
            up_free(u);
        }
        return;
    }
    if (u->fd < 0 || !u->st)
        return;
    h2stream_t *st = u->st;
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
        if (e != 0)
            connect_failed(st, 0);
        else
            u->connecting = 0;
    }
    /* responses of many streams that arrive in one epoll batch leave in one TLS write (l7_h2_reap) */
    h2conn_t *hc = st->hc;
    if (st->up)
        st_pump(st);
    if (!hc->dirty) {
        hc->dirty = 1;
        hc->dnext = tl_dirty;
        tl_dirty = hc;
    }
}

void l7_h2_scan(struct worker *w)
{
    double now = l7x_now(w);
    for (h2up_t *u = tl_idle, *n; u; u = n) {
        n = u->inext;
        if (now - u->idle_since > 30.0) {
            idle_remove(u);
            up_free(u);
        }
    }
    for (h2conn_t *hc = tl_conns, *n; hc; hc = n) {
        n = hc->next;
        if (hc->nstreams == 0 && hc->deadline > 0 && hc->deadline <= now) {
            nghttp2_submit_goaway(hc->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(hc->s),
                                  NGHTTP2_NO_ERROR, NULL, 0);
            hc_flush(hc);
            hc_close(hc);
            continue;
        }
        int any = 0;
        for (h2stream_t *st = hc->streams; st; st = st->next) {
            if (st->started && !st->resp_head && st->up && st->up->connecting && st->up->connect_deadline <= now) {
                connect_failed(st, 1);
                if (st->up)
                    st_pump(st);
                any = 1;
            } else if (st->started && !st->resp_head && st->deadline > 0 && st->deadline <= now) {
                respond(st, 504, "gateway timeout\n");
                any = 1;
            }
        }
        if (any)
            hc_drive(hc);
    }
}

void l7_h2_reap(void)
{
    while (tl_dirty) {
        h2conn_t *hc = tl_dirty;
        tl_dirty = hc->dnext;
        hc->dirty = 0;
        if (!hc->closed)
            hc_drive(hc);
    }
    while (tl_dead) {
        h2conn_t *hc = tl_dead;
        tl_dead = hc->next;
        free(hc);
    }
    while (tl_dead_ups) {
        h2up_t *u = tl_dead_ups;
        tl_dead_ups = u->next;
        free(u);
    }
}

void l7_h2_shutdown(struct worker *w)
{
    (void)w;
    while (tl_conns) {
        h2conn_t *hc = tl_conns;
        nghttp2_submit_goaway(hc->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(hc->s),
                              NGHTTP2_NO_ERROR, NULL, 0);
        hc->wr = 1;
        hc_flush(hc);
        hc_close(hc);
    }
    while (tl_idle) {
        h2up_t *u = tl_idle;
        idle_remove(u);
        up_free(u);
    }
    l7_h2_reap();
}

/* ---------------------------------------------------------------- fuzzing */

int l7_h2_fuzz_one(l7_proxy_t *p, int port, const uint8_t *client, size_t n, const uint8_t *upstream, size_t un)
{
    static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    h2conn_t *hc = calloc(1, sizeof(*hc));
    if (!hc)
        return 0;
    hc->type = L7_T_H2;
    hc->fd = -1;
    hc->fuzz = 1;
    hc->p = p;
    hc->port = port;
    hc->fuzz_up = upstream;
    hc->fuzz_upn = un;
    snprintf(hc->ip, sizeof(hc->ip), "2001:db8::1");
    if (session_new(hc) < 0) {
        nghttp2_session_del(hc->s);
        free(hc);
        return 0;
    }
    int ok = nghttp2_session_mem_recv(hc->s, (const uint8_t *)PREFACE, sizeof(PREFACE) - 1) >= 0;
    /* in two pieces: frames split across reads */
    size_t half = n / 2;
    if (ok && nghttp2_session_mem_recv(hc->s, client, half) < 0)
        ok = 0;
    for (int i = 0; ok && i < 50; i++) {
        int progress = 0;
        for (h2stream_t *st = hc->streams; st; st = st->next)
            progress |= st_pump(st);
        if (hc_flush(hc) < 0)
            break;
        if (!progress)
            break;
    }
    if (ok && nghttp2_session_mem_recv(hc->s, client + half, n - half) < 0)
        ok = 0;
    for (int i = 0; ok && i < 200; i++) {
        int progress = 0;
        for (h2stream_t *st = hc->streams; st; st = st->next)
            progress |= st_pump(st);
        int f = hc_flush(hc);
        if (f < 0 || !(progress | f))
            break;
    }
    hc_close(hc);
    free(hc);
    l7_h2_reap();
    return 0;
}
