/* UDP relay: one upstream socket per client address (a session), connected to the backend picked when the session
 * began; replies go back to the client from the listening socket. A session idle for session_timeout is closed.
 * Payloads are never looked at. Sessions are closed only by the sweep or at stop, never inside an epoll batch. */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "l4_internal.h"

struct l4_usess {
    l4_ref_t ref;
    int fd;
    struct sockaddr_storage client;
    socklen_t clen;
    double last;
    l4_backend_t *backend;
    l4_table_t *table;
    l4_usess_t *hnext, *prev, *next;
};

static unsigned addr_hash(const struct sockaddr_storage *a, socklen_t len)
{
    const unsigned char *p = (const unsigned char *)a;
    unsigned h = 2166136261u;
    for (socklen_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % L4_UDP_BUCKETS;
}

static int addr_eq(const struct sockaddr_storage *a, socklen_t al, const struct sockaddr_storage *b, socklen_t bl)
{
    if (al != bl || a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

static void key_of(const struct sockaddr_storage *a, struct sockaddr_storage *k)
{
    /* Hash only family, port and address: the rest of sockaddr_storage is not meaningful. */
    memset(k, 0, sizeof(*k));
    k->ss_family = a->ss_family;
    if (a->ss_family == AF_INET) {
        ((struct sockaddr_in *)k)->sin_port = ((const struct sockaddr_in *)a)->sin_port;
        ((struct sockaddr_in *)k)->sin_addr = ((const struct sockaddr_in *)a)->sin_addr;
    } else {
        ((struct sockaddr_in6 *)k)->sin6_port = ((const struct sockaddr_in6 *)a)->sin6_port;
        ((struct sockaddr_in6 *)k)->sin6_addr = ((const struct sockaddr_in6 *)a)->sin6_addr;
    }
}

static void sess_close(l4_worker_t *w, l4_usess_t *s)
{
    struct sockaddr_storage k;
    key_of(&s->client, &k);
    l4_usess_t **pp = &w->buckets[addr_hash(&k, s->clen)];
    while (*pp && *pp != s)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = s->hnext;
    if (s->prev)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    atomic_fetch_sub(&s->backend->active, 1);
    l4_table_put(s->table);
    atomic_fetch_sub(&w->l->st.udp_sessions_active, 1);
    free(s);
}

static l4_usess_t *sess_open(l4_worker_t *w, const struct sockaddr_storage *client, socklen_t clen, unsigned h)
{
    l4_listener_t *l = w->l;
    l4_table_t *t = l4_table_get(l);
    uint64_t tried = 0;
    l4_backend_t *b = l4_pick(l, t, &tried);
    if (!b) {
        atomic_fetch_add(&l->st.no_backend, 1);
        l4_table_put(t);
        return NULL;
    }
    int fd = socket(b->addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    l4_usess_t *s = calloc(1, sizeof(*s));
    if (fd < 0 || !s || connect(fd, (struct sockaddr *)&b->addr, b->addrlen) < 0) {
        if (fd >= 0)
            close(fd);
        free(s);
        atomic_fetch_add(&l->st.connect_errors, 1);
        l4_table_put(t);
        return NULL;
    }
    /* Replies can arrive in bursts faster than one epoll round drains them; the default buffer (~200 KiB, a few
     * hundred small datagrams) drops them. The limit costs nothing until used. */
    int sz = 2 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    s->ref = (l4_ref_t){REF_UDP_SESSION, s};
    s->fd = fd;
    s->client = *client;
    s->clen = clen;
    s->backend = b;
    s->table = t;
    s->hnext = w->buckets[h];
    w->buckets[h] = s;
    s->next = w->sessions;
    if (w->sessions)
        w->sessions->prev = s;
    w->sessions = s;
    atomic_fetch_add(&b->active, 1);
    atomic_fetch_add(&b->total, 1);
    atomic_fetch_add(&l->st.udp_sessions_total, 1);
    atomic_fetch_add(&l->st.udp_sessions_active, 1);
    atomic_fetch_add(&l->st.connections_total, 1);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->ref};
    epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
    return s;
}

/* Datagrams move in batches of L4_UDP_BATCH with recvmmsg/sendmmsg: one system call per batch, not per packet. */
typedef struct {
    struct mmsghdr m[L4_UDP_BATCH];
    struct iovec iov[L4_UDP_BATCH];
    struct sockaddr_storage addr[L4_UDP_BATCH];
} l4_batch_t;

static void batch_init(l4_worker_t *w, l4_batch_t *b, int with_addr)
{
    memset(b->m, 0, sizeof(b->m));
    for (int i = 0; i < L4_UDP_BATCH; i++) {
        b->iov[i].iov_base = w->udpbuf + (size_t)i * 65536;
        b->iov[i].iov_len = 65536;
        b->m[i].msg_hdr.msg_iov = &b->iov[i];
        b->m[i].msg_hdr.msg_iovlen = 1;
        if (with_addr) {
            b->m[i].msg_hdr.msg_name = &b->addr[i];
            b->m[i].msg_hdr.msg_namelen = sizeof(b->addr[i]);
        }
    }
}

void l4_udp_listen_event(l4_worker_t *w)
{
    l4_listener_t *l = w->l;
    double now = l4_now();
    l4_batch_t b;
    for (int round = 0; round < 4; round++) {
        batch_init(w, &b, 1);
        int got = recvmmsg(w->lfd, b.m, L4_UDP_BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0)
            return;
        for (int i = 0; i < got; i++) {
            struct sockaddr_storage *from = &b.addr[i], key;
            socklen_t fl = b.m[i].msg_hdr.msg_namelen;
            size_t n = b.m[i].msg_len;
            atomic_fetch_add(&l->st.udp_datagrams_in, 1);
            atomic_fetch_add(&l->st.bytes_in, (uint64_t)n);
            key_of(from, &key);
            unsigned h = addr_hash(&key, fl);
            l4_usess_t *s = w->buckets[h];
            while (s && !addr_eq(&s->client, s->clen, from, fl))
                s = s->hnext;
            if (!s && !(s = sess_open(w, from, fl, h)))
                continue;
            s->last = now;
            if (send(s->fd, b.iov[i].iov_base, n, 0) >= 0)
                atomic_fetch_add(&s->backend->bytes_out, (uint64_t)n);
        }
        if (got < L4_UDP_BATCH)
            return;
    }
}

void l4_udp_session_event(l4_worker_t *w, l4_usess_t *s)
{
    l4_listener_t *l = w->l;
    l4_batch_t b;
    for (int round = 0; round < 4; round++) {
        batch_init(w, &b, 0);
        /* EAGAIN, or ECONNREFUSED from an ICMP error: the session stays until it times out */
        int got = recvmmsg(s->fd, b.m, L4_UDP_BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0)
            return;
        s->last = l4_now();
        uint64_t bytes = 0;
        for (int i = 0; i < got; i++) {
            b.iov[i].iov_len = b.m[i].msg_len; /* send back exactly what came */
            b.m[i].msg_hdr.msg_name = &s->client;
            b.m[i].msg_hdr.msg_namelen = s->clen;
            bytes += b.m[i].msg_len;
        }
        atomic_fetch_add(&s->backend->bytes_in, bytes);
        int sent = 0;
        while (sent < got) {
            int r = sendmmsg(w->lfd, b.m + sent, (unsigned)(got - sent), MSG_DONTWAIT);
            if (r <= 0)
                break; /* the client's socket buffer is full: UDP may drop, as a router would */
            for (int i = sent; i < sent + r; i++) {
                atomic_fetch_add(&l->st.udp_datagrams_out, 1);
                atomic_fetch_add(&l->st.bytes_out, (uint64_t)b.m[i].msg_len);
            }
            sent += r;
        }
        if (got < L4_UDP_BATCH)
            return;
    }
}

void l4_udp_sweep(l4_worker_t *w, double now)
{
    double limit = w->l->cfg.session_timeout;
    for (l4_usess_t *s = w->sessions, *next; s; s = next) {
        next = s->next;
        if (now - s->last >= limit)
            sess_close(w, s);
    }
}

void l4_udp_close_all(l4_worker_t *w)
{
    while (w->sessions)
        sess_close(w, w->sessions);
}
