/* Output queues: what goes to a peer is a list of pieces pointing into the connection's buffers (heads are relayed
 * from where they were read, no copy per request), written with one writev — or gathered into TLS records. */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "l7_int.h"

void oq_reset(outq_t *q) { q->n = q->i = 0; }

void oq_add(outq_t *q, const void *b, size_t n)
{
    if (n == 0)
        return;
    if (q->n > 0 && (char *)q->v[q->n - 1].iov_base + q->v[q->n - 1].iov_len == (const char *)b) {
        q->v[q->n - 1].iov_len += n;
        return;
    }
    if (q->n == MAXIOV)
        return; /* cannot happen: a head has at most L7_MAX_HEADERS lines */
    q->v[q->n].iov_base = (void *)b;
    q->v[q->n].iov_len = n;
    q->n++;
}

int oq_empty(const outq_t *q) { return q->i >= q->n; }

void oq_add_line(outq_t *q, const char *b, const l7_hdr_t *hd)
{
    size_t n = hd->line_len;
    if (b[hd->line_off + n - 2] == '\r') {
        oq_add(q, b + hd->line_off, n);
        return;
    }
    oq_add(q, b + hd->line_off, n - 1);
    oq_add(q, "\r\n", 2);
}

void oq_add_head(outq_t *q, const char *b, const l7_resp_t *r, size_t h)
{
    if (!r->bare_lf) {
        oq_add(q, b, h);
        return;
    }
    oq_add(q, b, r->status_len);
    oq_add(q, "\r\n", 2);
    for (int i = 0; i < r->nhdr; i++)
        oq_add_line(q, b, &r->hdr[i]);
    oq_add(q, "\r\n", 2);
}

/* Drops the first w bytes of the queue (written). */
static void oq_consume(outq_t *q, size_t w)
{
    while (w > 0 && q->i < q->n) {
        if (w >= q->v[q->i].iov_len) {
            w -= q->v[q->i].iov_len;
            q->i++;
        } else {
            q->v[q->i].iov_base = (char *)q->v[q->i].iov_base + w;
            q->v[q->i].iov_len -= w;
            w = 0;
        }
    }
}

int oq_flush(outq_t *q, int fd, int *wr, uint64_t *count)
{
    while (q->i < q->n) {
        ssize_t w = writev(fd, &q->v[q->i], q->n - q->i);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            *wr = 0;
            return 0;
        }
        if (w < 0)
            return -1;
        if (count)
            *count += (uint64_t)w;
        oq_consume(q, (size_t)w);
    }
    oq_reset(q);
    return 1;
}

/* Copies up to cap bytes from the head of the queue into rec (they count as taken); returns how many. */
static size_t oq_gather(outq_t *q, char *rec, size_t cap)
{
    size_t len = 0;
    while (q->i < q->n && len < cap) {
        size_t take = q->v[q->i].iov_len < cap - len ? q->v[q->i].iov_len : cap - len;
        memcpy(rec + len, q->v[q->i].iov_base, take);
        len += take;
        oq_consume(q, take);
    }
    return len;
}

int oq_flush_tls(outq_t *q, SSL *ssl, char *rec, size_t cap, size_t *pending, int *wr, int *wr_wants_read,
                 uint64_t *count)
{
    while (q->i < q->n || *pending) {
        if (!*pending)
            *pending = oq_gather(q, rec, cap);
        int r = tls_write(ssl, rec, *pending, wr_wants_read);
        if (r < 0)
            return -1;
        if (r == 0) {
            *wr = 0;
            return 0;
        }
        if (count)
            *count += (uint64_t)r;
        *pending = 0; /* SSL_write without partial writes: all of it or nothing */
    }
    oq_reset(q);
    return 1;
}

ssize_t rd(int fd, char *b, size_t n, int *flag)
{
    for (;;) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            *flag = 0;
        else if (r > 0 && (size_t)r < n && *flag != RD_HUP)
            *flag = 0; /* drained: edge-triggered epoll reports the next arrival (saves a read per request) */
        return r;
    }
}

void io_event(uint32_t ev, int *rd, int *wr, int *rd_wants_write, int *wr_wants_read)
{
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            *rd = RD_HUP;
        else if (!*rd)
            *rd = 1;
        if (*wr_wants_read) {
            *wr_wants_read = 0;
            *wr = 1;
        }
    }
    if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
        *wr = 1;
        if (*rd_wants_write) {
            *rd_wants_write = 0;
            *rd = 1;
        }
    }
}
