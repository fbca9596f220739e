/* zlayer L7 HTTP/2 (over TLS, chosen by ALPN "h2") front end: nghttp2 server sessions in the worker's epoll loop,
 * each stream relayed as an HTTP/1.1 request over the worker's pooled upstream connections (l7_h2.c).
 * Also declares the small glue l7_proxy.c exports to it (routing, balancing, stats, upstream pool). */
#ifndef ZLAYER_L7_H2_H
#define ZLAYER_L7_H2_H
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "l7.h"

/* epoll tags of h2 objects (first int of the object, as l7_proxy.c's own tags) */
#define L7_T_H2 16
#define L7_T_H2UP 17
#define L7_H2_MAX_STREAMS 128

struct worker;

/* ---- l7_h2.c ---- */
/* 1 if the TLS connection negotiated "h2". */
int l7_h2_selected(SSL *ssl);
/* Takes over a client connection whose TLS handshake chose h2: fd is re-pointed in epoll; pre[0..n) are bytes already
 * read from it (the start of the client preface). Closes fd/ssl itself on failure. */
void l7_h2_adopt(struct worker *w, l7_proxy_t *p, int fd, SSL *ssl, const char *ip, int port, const char *pre,
                 size_t n);
/* epoll event of an L7_T_H2 or L7_T_H2UP object. */
void l7_h2_event(void *obj, uint32_t events);
/* Timeouts of this worker's h2 connections and streams (worker thread). */
void l7_h2_scan(struct worker *w);
/* After each epoll batch: sends what upstream events queued on h2 connections, frees closed h2 objects. */
void l7_h2_reap(void);
/* Worker exit: GOAWAY to every h2 client of this worker, then close them. */
void l7_h2_shutdown(struct worker *w);
/* Fuzzing: runs bytes through a server session with the callbacks of the proxy (routing against p's table, request
 * building, response relaying of `upstream` fed to every routed stream), no sockets. Returns 0. */
int l7_h2_fuzz_one(l7_proxy_t *p, int port, const uint8_t *client, size_t n, const uint8_t *upstream, size_t un);
/* Chunked transfer-coding decoder: state lives in *st (zero to start). Copies payload of in[0..n) to out (at most
 * outcap); *used = input consumed, returns payload bytes written, -1 malformed; *done set after the last chunk and
 * trailers. */
typedef struct {
    int state;
    uint64_t left;
    int digits;
} l7_dechunk_t;
ssize_t l7_dechunk(l7_dechunk_t *st, const char *in, size_t n, char *out, size_t outcap, size_t *used, int *done);

/* ---- glue exported by l7_proxy.c ---- */
ssize_t l7x_ssl_read(SSL *ssl, char *b, size_t n, int *rd, int *rd_wants_write);
double l7x_now(struct worker *w);
int l7x_epfd(struct worker *w);
const l7_config_t *l7x_cfg(l7_proxy_t *p);
/* the worker's current route table (w NULL: the proxy's), with a reference; NULL if none */
void *l7x_table(struct worker *w, l7_proxy_t *p);
void l7x_table_unref(void *t);
/* best route for host (without port) and path, or NULL; prefix/plen/strip describe its prefix handling */
void *l7x_route(void *t, int port, const char *host, size_t hl, const char *path, size_t pl, const char **prefix,
                size_t *plen, int *strip);
size_t l7x_group_size(void *route);
/* a healthy backend of the route's group other than avoid (its active count raised), or NULL */
void *l7x_pick(double now, void *route, void *avoid);
void l7x_backend_release(void *be);
void l7x_eject(double now, void *be);
const struct sockaddr_storage *l7x_backend_addr(void *be, socklen_t *alen);
/* per-route stats: begin raises active; end lowers it and, if ok, counts the request (status, latency) */
void l7x_route_begin(void *route);
void l7x_route_end(void *route, int ok, int status, const struct timespec *t0, uint64_t in, uint64_t out);
/* a pooled idle upstream connection to addr (its fd, now owned by the caller, still in epoll), or -1 */
int l7x_pool_take(struct worker *w, const struct sockaddr_storage *a, socklen_t al);
/* gives an idle keep-alive upstream connection (registered in epoll) to the worker's pool */
void l7x_pool_give(struct worker *w, int fd, const struct sockaddr_storage *a, socklen_t al);
#endif
