/* The device's tables: peers, sessions (by local index), allowed IPs, the handshake queue for Python, counters. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "wg_int.h"

int64_t wg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int wg_worker_init(wg_worker_t *w)
{
    memset(w, 0, sizeof(*w));
    w->ctx = EVP_CIPHER_CTX_new();
    w->out = malloc((size_t)WG_BATCH * WG_BUF);
    w->tunbuf = malloc(WG_VNET_LEN + WG_BUF);
    w->scratch = malloc(WG_BUF + 64);
    w->open_peer = -1;
    if (!w->ctx || !w->out || !w->tunbuf || !w->scratch)
        return -1;
    return 0;
}

void wg_worker_free(wg_worker_t *w)
{
    if (w->ctx)
        EVP_CIPHER_CTX_free(w->ctx);
    free(w->out);
    free(w->tunbuf);
    free(w->scratch);
    memset(w, 0, sizeof(*w));
}

static void session_free(wg_session_t *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->replay_lock);
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

/* Index table: linear probing on the low bits of the (random) local index; a freed slot is re-packed. */
static size_t index_slot(uint32_t idx)
{
    return (idx * 2654435761u) & (WG_INDEX_SLOTS - 1);
}

wg_session_t *wg_lookup_index(wg_dev_t *d, uint32_t idx)
{
    size_t i = index_slot(idx);
    for (size_t n = 0; n < WG_INDEX_SLOTS; n++, i = (i + 1) & (WG_INDEX_SLOTS - 1)) {
        wg_session_t *s = d->index[i];
        if (!s)
            return NULL;
        if (s->local_index == idx)
            return s;
    }
    return NULL;
}

static int index_insert(wg_dev_t *d, wg_session_t *s)
{
    size_t i = index_slot(s->local_index);
    for (size_t n = 0; n < WG_INDEX_SLOTS; n++, i = (i + 1) & (WG_INDEX_SLOTS - 1)) {
        if (!d->index[i]) {
            d->index[i] = s;
            return 0;
        }
        if (d->index[i]->local_index == s->local_index)
            return -1;
    }
    return -1;
}

static void index_remove(wg_dev_t *d, wg_session_t *s)
{
    size_t i = index_slot(s->local_index);
    size_t n;
    for (n = 0; n < WG_INDEX_SLOTS; n++, i = (i + 1) & (WG_INDEX_SLOTS - 1)) {
        if (!d->index[i])
            return;
        if (d->index[i] == s)
            break;
    }
    if (n == WG_INDEX_SLOTS)
        return;
    d->index[i] = NULL;
    /* re-insert the rest of the cluster so that lookups do not stop at the hole */
    for (size_t j = (i + 1) & (WG_INDEX_SLOTS - 1); d->index[j]; j = (j + 1) & (WG_INDEX_SLOTS - 1)) {
        wg_session_t *t = d->index[j];
        d->index[j] = NULL;
        index_insert(d, t);
    }
}

static void drop_session(wg_dev_t *d, wg_session_t **slot)
{
    if (*slot) {
        index_remove(d, *slot);
        session_free(*slot);
        *slot = NULL;
    }
}

static void drop_sessions(wg_dev_t *d, wg_peer_t *p)
{
    drop_session(d, &p->current);
    drop_session(d, &p->previous);
    drop_session(d, &p->next);
    drop_session(d, &p->retired);
}

static void drop_staged(wg_dev_t *d, wg_peer_t *p)
{
    pthread_mutex_lock(&p->staged_lock);
    for (uint32_t i = 0; i < p->staged_count; i++) {
        uint32_t at = (p->staged_head + i) % WG_STAGED_MAX;
        free(p->staged[at]);
        p->staged[at] = NULL;
    }
    atomic_fetch_add(&d->c.drop_staged, p->staged_count);
    p->staged_count = 0;
    p->staged_head = 0;
    pthread_mutex_unlock(&p->staged_lock);
}

int wg_create_on(const wg_config_t *cfg, int tun_fd, int vnet_hdr, int udp_fd, wg_dev_t **out, char *err,
                 size_t errlen)
{
    wg_dev_t *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    d->cfg = *cfg;
    if (d->cfg.mtu <= 0)
        d->cfg.mtu = 1420;
    if (d->cfg.reject_after_time <= 0)
        d->cfg.reject_after_time = 180.0;
    if (d->cfg.rekey_after_messages == 0)
        d->cfg.rekey_after_messages = 1ULL << 60;
    d->reject_after_ns = (int64_t)(d->cfg.reject_after_time * 1e9);
    d->tun_fd = tun_fd;
    d->udp_fd = udp_fd;
    d->vnet_hdr = vnet_hdr;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    d->family = (udp_fd >= 0 && getsockname(udp_fd, (struct sockaddr *)&ss, &sl) == 0) ? ss.ss_family : AF_INET;
    d->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    d->netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&d->lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&d->hs_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->hs_cond, &ca);
    pthread_condattr_destroy(&ca);
    d->peers = calloc(WG_MAX_PEERS, sizeof(wg_peer_t));
    d->hs = calloc(WG_HS_QUEUE, sizeof(wg_hs_msg_t));
    if (d->stop_fd < 0 || !d->peers || !d->hs || wg_worker_init(&d->rxw) || wg_worker_init(&d->txw)) {
        snprintf(err, errlen, "cannot set the device up: out of memory or descriptors");
        wg_destroy(d);
        return -1;
    }
    for (int i = 0; i < WG_MAX_PEERS; i++) {
        pthread_mutex_init(&d->peers[i].ep_lock, NULL);
        pthread_mutex_init(&d->peers[i].staged_lock, NULL);
    }
    if (udp_fd >= 0)
        wg_probe_offloads(d);
    *out = d;
    return 0;
}

void wg_destroy(wg_dev_t *d)
{
    if (!d)
        return;
    wg_stop(d);
    if (d->peers) {
        for (int i = 0; i < WG_MAX_PEERS; i++) {
            wg_peer_t *p = &d->peers[i];
            drop_sessions(d, p);
            drop_staged(d, p);
            pthread_mutex_destroy(&p->ep_lock);
            pthread_mutex_destroy(&p->staged_lock);
        }
        free(d->peers);
    }
    free(d->allowed);
    free(d->hs);
    wg_worker_free(&d->rxw);
    wg_worker_free(&d->txw);
    if (d->stop_fd >= 0)
        close(d->stop_fd);
    if (d->owns_tun && d->tun_fd >= 0)
        close(d->tun_fd);
    if (d->owns_udp && d->udp_fd >= 0)
        close(d->udp_fd);
    if (d->netns_fd >= 0)
        close(d->netns_fd);
    pthread_rwlock_destroy(&d->lock);
    pthread_mutex_destroy(&d->hs_lock);
    pthread_cond_destroy(&d->hs_cond);
    free(d);
}

static wg_peer_t *peer_at(wg_dev_t *d, int peer)
{
    if (peer < 0 || peer >= WG_MAX_PEERS)
        return NULL;
    return &d->peers[peer];
}

int wg_peer_add(wg_dev_t *d, int peer)
{
    wg_peer_t *p = peer_at(d, peer);
    if (!p)
        return -1;
    pthread_rwlock_wrlock(&d->lock);
    if (!p->present) {
        p->present = 1;
        p->endpoint_len = 0;
        atomic_store(&p->rx_bytes, 0);
        atomic_store(&p->tx_bytes, 0);
        atomic_store(&p->last_tx_ns, 0);
        atomic_store(&p->last_rx_ns, 0);
        atomic_store(&p->last_tx_data_ns, 0);
        atomic_store(&p->last_rx_data_ns, 0);
        atomic_store(&p->want_handshake, 0);
    }
    pthread_rwlock_unlock(&d->lock);
    return 0;
}

void wg_peer_remove(wg_dev_t *d, int peer)
{
    wg_peer_t *p = peer_at(d, peer);
    if (!p)
        return;
    pthread_rwlock_wrlock(&d->lock);
    drop_sessions(d, p);
    drop_staged(d, p);
    p->present = 0;
    p->endpoint_len = 0;
    /* its allowed IPs go with it */
    size_t k = 0;
    for (size_t i = 0; i < d->n_allowed; i++)
        if (d->allowed[i].peer != peer)
            d->allowed[k++] = d->allowed[i];
    d->n_allowed = k;
    pthread_rwlock_unlock(&d->lock);
}

int wg_peer_set_endpoint(wg_dev_t *d, int peer, const void *sa, uint32_t salen)
{
    wg_peer_t *p = peer_at(d, peer);
    if (!p || salen > sizeof(p->endpoint))
        return -1;
    pthread_rwlock_rdlock(&d->lock);
    pthread_mutex_lock(&p->ep_lock);
    memset(&p->endpoint, 0, sizeof(p->endpoint));
    memcpy(&p->endpoint, sa, salen);
    p->endpoint_len = salen;
    pthread_mutex_unlock(&p->ep_lock);
    pthread_rwlock_unlock(&d->lock);
    return 0;
}

static int cmp_allowed(const void *a, const void *b)
{
    const wg_allowed_ip_t *x = a, *y = b;
    return y->cidr - x->cidr; /* longest prefix first */
}

int wg_set_allowed_ips(wg_dev_t *d, const wg_allowed_ip_t *entries, size_t n, char *err, size_t errlen)
{
    wg_allowed_ip_t *t = NULL;
    if (n) {
        t = malloc(n * sizeof(*t));
        if (!t) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const wg_allowed_ip_t *e = &entries[i];
        int maxc = e->family == 4 ? 32 : 128;
        if ((e->family != 4 && e->family != 6) || e->cidr < 0 || e->cidr > maxc || !peer_at(d, e->peer)) {
            snprintf(err, errlen, "allowed IP %zu: family %d, /%d, peer %d is not valid", i, e->family, e->cidr,
                     e->peer);
            free(t);
            return -1;
        }
        t[i] = *e;
        /* keep only the prefix bits so that a lookup compares whole bytes */
        int full = e->cidr / 8, rem = e->cidr % 8, len = e->family == 4 ? 4 : 16;
        if (full < len) {
            t[i].addr[full] &= (uint8_t)(0xff << (8 - rem));
            memset(t[i].addr + full + 1, 0, (size_t)(len - full - 1));
        }
    }
    if (n)
        qsort(t, n, sizeof(*t), cmp_allowed);
    pthread_rwlock_wrlock(&d->lock);
    free(d->allowed);
    d->allowed = t;
    d->n_allowed = n;
    pthread_rwlock_unlock(&d->lock);
    return 0;
}

static int prefix_match(const wg_allowed_ip_t *e, const uint8_t *addr)
{
    int full = e->cidr / 8, rem = e->cidr % 8;
    if (memcmp(e->addr, addr, (size_t)full) != 0)
        return 0;
    if (rem && ((addr[full] ^ e->addr[full]) & (uint8_t)(0xff << (8 - rem))))
        return 0;
    return 1;
}

int wg_route(wg_dev_t *d, const uint8_t *pkt, size_t len, int by_source)
{
    int fam;
    const uint8_t *addr;
    if (len >= 20 && (pkt[0] >> 4) == 4) {
        fam = 4;
        addr = pkt + (by_source ? 12 : 16);
    } else if (len >= 40 && (pkt[0] >> 4) == 6) {
        fam = 6;
        addr = pkt + (by_source ? 8 : 24);
    } else {
        return -1;
    }
    for (size_t i = 0; i < d->n_allowed; i++) {
        const wg_allowed_ip_t *e = &d->allowed[i];
        if (e->family == fam && prefix_match(e, addr))
            return d->peers[e->peer].present ? e->peer : -1;
    }
    return -1;
}

int wg_session_usable(const wg_dev_t *d, const wg_session_t *s, int64_t now)
{
    return s && now - s->created_ns < d->reject_after_ns;
}

int wg_peer_install_session(wg_dev_t *d, int peer, uint32_t local_index, uint32_t remote_index,
                            const uint8_t send_key[WG_KEY_LEN], const uint8_t recv_key[WG_KEY_LEN], int initiator,
                            int64_t created_ns)
{
    wg_peer_t *p = peer_at(d, peer);
    if (!p || !p->present)
        return -1;
    wg_session_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    s->local_index = local_index;
    s->remote_index = remote_index;
    memcpy(s->send_key, send_key, WG_KEY_LEN);
    memcpy(s->recv_key, recv_key, WG_KEY_LEN);
    s->initiator = initiator;
    s->peer = peer;
    s->created_ns = created_ns;
    pthread_mutex_init(&s->replay_lock, NULL);
    pthread_rwlock_wrlock(&d->lock);
    if (wg_lookup_index(d, local_index) || index_insert(d, s) != 0) {
        pthread_rwlock_unlock(&d->lock);
        session_free(s);
        return -1;
    }
    drop_session(d, &p->retired);
    if (initiator) {
        drop_session(d, &p->previous);
        if (p->next) {
            /* both sides initiated at once: the peer made this session current when our response reached it and
               sends under it, so it stays (as previous) to receive on, as the kernel's WireGuard keeps it; the
               old current goes */
            p->previous = p->next;
            p->next = NULL;
            drop_session(d, &p->current);
        } else {
            p->previous = p->current;
        }
        p->current = s;
    } else {
        /* until the initiator sends under it, the old current session keeps carrying data */
        drop_session(d, &p->next);
        p->next = s;
    }
    atomic_store(&p->want_handshake, 0);
    pthread_rwlock_unlock(&d->lock);
    if (!initiator)
        return 0;
    /* send what waited for this session */
    int sent = 0;
    for (;;) {
        uint8_t *pkt = NULL;
        uint16_t len = 0;
        pthread_mutex_lock(&p->staged_lock);
        if (p->staged_count) {
            pkt = p->staged[p->staged_head];
            len = p->staged_len[p->staged_head];
            p->staged[p->staged_head] = NULL;
            p->staged_head = (p->staged_head + 1) % WG_STAGED_MAX;
            p->staged_count--;
        }
        pthread_mutex_unlock(&p->staged_lock);
        if (!pkt)
            break;
        wg_pkt_t one = {pkt, len, NULL, 0};
        pthread_rwlock_rdlock(&d->lock); /* the route table and the session stay while it is sent */
        wg_send_plain(d, NULL, &one);
        pthread_rwlock_unlock(&d->lock);
        free(pkt);
        sent++;
    }
    return sent;
}

void wg_promote_next(wg_dev_t *d, wg_peer_t *p, wg_session_t *s)
{
    /* called by the receive worker under the read lock: the swap of pointers is the one write it makes to the
     * table, so it takes the peer's endpoint mutex to serialise with the other workers' readers of current. */
    (void)d;
    pthread_mutex_lock(&p->ep_lock);
    if (p->next == s) {
        wg_session_t *old_prev = p->previous;
        p->previous = p->current;
        p->current = s;
        p->next = NULL;
        p->retired = old_prev; /* freed by Python's next write (a session installed or cleared) */
    }
    pthread_mutex_unlock(&p->ep_lock);
}

void wg_peer_clear_sessions(wg_dev_t *d, int peer)
{
    wg_peer_t *p = peer_at(d, peer);
    if (!p)
        return;
    pthread_rwlock_wrlock(&d->lock);
    drop_sessions(d, p);
    pthread_rwlock_unlock(&d->lock);
    drop_staged(d, p);
}

int wg_peer_send_keepalive(wg_dev_t *d, int peer)
{
    wg_peer_t *p = peer_at(d, peer);
    if (!p || !p->present)
        return -1;
    pthread_rwlock_rdlock(&d->lock);
    int r = wg_encrypt_to_peer(d, NULL, peer, NULL);
    pthread_rwlock_unlock(&d->lock);
    return r;
}

int wg_peer_info(wg_dev_t *d, int peer, wg_peer_info_t *out)
{
    memset(out, 0, sizeof(*out));
    wg_peer_t *p = peer_at(d, peer);
    if (!p)
        return -1;
    pthread_rwlock_rdlock(&d->lock);
    out->present = p->present;
    pthread_mutex_lock(&p->ep_lock);
    if (p->endpoint_len <= sizeof(out->endpoint)) {
        memcpy(out->endpoint, &p->endpoint, p->endpoint_len);
        out->endpoint_len = p->endpoint_len;
    }
    wg_session_t *cur = p->current;
    pthread_mutex_unlock(&p->ep_lock);
    out->rx_bytes = atomic_load(&p->rx_bytes);
    out->tx_bytes = atomic_load(&p->tx_bytes);
    out->last_tx_ns = atomic_load(&p->last_tx_ns);
    out->last_rx_ns = atomic_load(&p->last_rx_ns);
    out->last_tx_data_ns = atomic_load(&p->last_tx_data_ns);
    out->last_rx_data_ns = atomic_load(&p->last_rx_data_ns);
    out->want_handshake = atomic_exchange(&p->want_handshake, 0);
    if (cur && wg_session_usable(d, cur, wg_now())) {
        out->has_current = 1;
        out->current_initiator = cur->initiator;
        out->current_created_ns = cur->created_ns;
        out->current_send_counter = atomic_load(&cur->send_counter);
    }
    pthread_mutex_lock(&p->staged_lock);
    out->staged = p->staged_count;
    pthread_mutex_unlock(&p->staged_lock);
    pthread_rwlock_unlock(&d->lock);
    return 0;
}

void wg_queue_handshake(wg_dev_t *d, const uint8_t *buf, size_t len, const void *from, uint32_t fromlen)
{
    pthread_mutex_lock(&d->hs_lock);
    if (d->hs_count >= WG_HS_QUEUE) {
        pthread_mutex_unlock(&d->hs_lock);
        atomic_fetch_add(&d->c.drop_handshake_queue, 1);
        return;
    }
    wg_hs_msg_t *m = &d->hs[(d->hs_head + d->hs_count) % WG_HS_QUEUE];
    memcpy(m->data, buf, len);
    m->len = (uint32_t)len;
    memset(m->from, 0, sizeof(m->from));
    if (fromlen > sizeof(m->from))
        fromlen = sizeof(m->from);
    memcpy(m->from, from, fromlen);
    m->from_len = fromlen;
    m->received_ns = wg_now();
    d->hs_count++;
    pthread_cond_signal(&d->hs_cond);
    pthread_mutex_unlock(&d->hs_lock);
    atomic_fetch_add(&d->c.handshake_queued, 1);
}

void wg_wake(wg_dev_t *d)
{
    pthread_mutex_lock(&d->hs_lock);
    d->hs_wake = 1;
    pthread_cond_broadcast(&d->hs_cond);
    pthread_mutex_unlock(&d->hs_lock);
}

size_t wg_wait(wg_dev_t *d, double timeout, wg_hs_msg_t *out, size_t cap)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    int64_t ns = (int64_t)(timeout * 1e9) + until.tv_nsec;
    until.tv_sec += ns / 1000000000LL;
    until.tv_nsec = ns % 1000000000LL;
    pthread_mutex_lock(&d->hs_lock);
    while (!d->hs_count && !d->hs_wake)
        if (pthread_cond_timedwait(&d->hs_cond, &d->hs_lock, &until) == ETIMEDOUT)
            break;
    d->hs_wake = 0;
    size_t n = 0;
    while (n < cap && d->hs_count) {
        out[n++] = d->hs[d->hs_head];
        d->hs_head = (d->hs_head + 1) % WG_HS_QUEUE;
        d->hs_count--;
    }
    pthread_mutex_unlock(&d->hs_lock);
    return n;
}

void wg_get_stats(wg_dev_t *d, wg_stats_t *o)
{
    memset(o, 0, sizeof(*o));
#define C(f) o->f = atomic_load(&d->c.f)
    C(rx_datagrams);
    C(rx_data_packets);
    C(rx_keepalives);
    C(tx_datagrams);
    C(tx_data_packets);
    C(tx_keepalives);
    C(handshake_queued);
    C(drop_malformed);
    C(drop_unknown_index);
    C(drop_auth);
    C(drop_replay);
    C(drop_allowed_ips);
    C(drop_no_peer);
    C(drop_handshake_queue);
    C(drop_staged);
    C(drop_send_errors);
    C(gso_sends);
    C(gro_receives);
    C(tso_reads);
    C(coalesced_writes);
#undef C
    pthread_mutex_lock(&d->hs_lock);
    o->handshake_backlog = d->hs_count;
    pthread_mutex_unlock(&d->hs_lock);
    o->vnet_hdr = d->vnet_hdr;
    o->udp_gso = d->udp_gso;
    o->udp_gro = d->udp_gro;
}

int wg_listen_port(const wg_dev_t *d)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (d->udp_fd < 0 || getsockname(d->udp_fd, (struct sockaddr *)&ss, &sl) != 0)
        return 0;
    return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
}

int wg_ifindex(const wg_dev_t *d)
{
    return d->ifindex;
}
