/* zlayer L7 HTTP/2 front end (TLS + ALPN "h2"), shared by its two files: l7_h2.c (client connections: the nghttp2
 * server session, its callbacks, reads, writes, timeouts) and l7_h2_stream.c (one stream: routed like an HTTP/1.1
 * request, relayed as one over the worker's upstream connections, its response head turned into a HEADERS frame
 * and its body into DATA frames through a deferred data provider, so client flow control paces upstream reads). */
#ifndef ZLAYER_L7_H2_H
#define ZLAYER_L7_H2_H
#include <nghttp2/nghttp2.h>

#include "l7_int.h"

#define IBUF 16384
#define DBUF 16384
#define MAX_REQ_HEAD 65536

typedef struct h2conn h2conn_t;
typedef struct h2stream h2stream_t;

struct h2stream {
    h2conn_t *hc;
    int32_t id;
    char *method, *path, *authority, *xff, *cookie;
    size_t cookielen;
    char *hdrs;
    size_t hlen, hcap;
    int has_cl, req_end, started, chunked_up, can_retry, is_head, too_big;
    table_t *t;
    route_t *rt;
    attach_t a;
    struct timespec t0;
    double deadline;
    char *ob; /* the HTTP/1.1 request toward the backend */
    size_t olen, ooff, ocap, unconsumed;
    int up_eof, resp_head, resp_done, resp_mode, deferred, up_keep, submitted, eof_given;
    int64_t resp_left;
    l7_chunk_t dck;
    int status;
    uint64_t in_bytes, out_bytes;
    size_t fuzz_fed;
    l7_resp_t resp;
    size_t is, ie, ds, de; /* ib: bytes from the backend; db: body bytes for DATA frames */
    char ib[IBUF];
    char db[DBUF];
    h2stream_t *next, *prev;
};

struct h2conn {
    int type; /* T_H2 */
    int fd;
    SSL *ssl;
    worker_t *w; /* NULL in the fuzz target */
    l7_proxy_t *p;
    int port;
    char ip[64];
    nghttp2_session *s;
    int rd, wr, rd_wants_write, wr_wants_read, closed, fuzz, dirty;
    h2conn_t *dnext; /* on w->h2dirty: upstream bytes moved, frames to send after this epoll batch */
    char *ob;
    size_t olen, ooff, ocap, wpending;
    h2stream_t *streams;
    int nstreams;
    double deadline;
    const uint8_t *fuzz_up;
    size_t fuzz_upn;
    h2conn_t *next, *prev;
};

int buf_put(char **b, size_t *len, size_t *cap, const void *p, size_t n);
double h2_now(const h2conn_t *hc);
int hc_flush(h2conn_t *hc);

/* ---- l7_h2_stream.c ---- */
void st_start(h2stream_t *st);                     /* the request head is complete: route it, queue it upstream */
int st_pump(h2stream_t *st);                       /* moves bytes both ways; 1 if anything moved */
void st_respond(h2stream_t *st, int status, const char *body); /* a response made here */
void st_free(h2conn_t *hc, h2stream_t *st, int ok);
int st_data(h2stream_t *st, const uint8_t *data, size_t len); /* request DATA toward the backend */
int st_end(h2stream_t *st);                                   /* the client ended the request */
extern const up_ops_t h2_up_ops;
#endif
