/* A datagram from the UDP socket: handshake messages go to Python's queue, data messages are decrypted here, checked
 * against the replay window and the peer's allowed IPs, and written to the TUN. Everything else is dropped and
 * counted. Lengths are checked before every read. */
#include <string.h>

#include "wg_int.h"

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* RFC 6479 window of WG_REPLAY_WINDOW counters behind the greatest seen; called only after the tag verified, so
 * a forged packet cannot move the window. Returns 1 when the counter is new (and records it). */
int wg_replay_check(wg_replay_t *r, uint64_t counter)
{
    if (counter >= WG_REJECT_AFTER_MESSAGES)
        return 0;
    counter++;
    if (counter + WG_REPLAY_WINDOW < r->top)
        return 0;
    uint64_t index = counter >> 6;
    if (counter > r->top) {
        uint64_t current = r->top >> 6;
        uint64_t diff = index - current;
        if (diff > WG_REPLAY_WORDS)
            diff = WG_REPLAY_WORDS;
        for (uint64_t i = 1; i <= diff; i++)
            r->bitmap[(current + i) & (WG_REPLAY_WORDS - 1)] = 0;
        r->top = counter;
    }
    index &= WG_REPLAY_WORDS - 1;
    uint64_t bit = 1ULL << (counter & 63);
    if (r->bitmap[index] & bit)
        return 0;
    r->bitmap[index] |= bit;
    return 1;
}

/* Length of the IP packet at the start of a decrypted payload (the rest is padding), or 0 when it is none. */
size_t wg_inner_len(const uint8_t *pkt, size_t len)
{
    size_t n;
    if (len >= 20 && (pkt[0] >> 4) == 4) {
        n = (size_t)pkt[2] << 8 | pkt[3];
        if (n < 20 || (size_t)(pkt[0] & 15) * 4 < 20)
            return 0;
    } else if (len >= 40 && (pkt[0] >> 4) == 6) {
        n = 40 + ((size_t)pkt[4] << 8 | pkt[5]);
    } else {
        return 0;
    }
    return n <= len ? n : 0;
}

static int same_addr(const struct sockaddr_storage *a, socklen_t alen, const void *b, uint32_t blen)
{
    return alen == blen && memcmp(a, b, blen) == 0;
}

static void roam(wg_peer_t *p, const void *from, uint32_t fromlen)
{
    if (fromlen > sizeof(p->endpoint))
        return;
    pthread_mutex_lock(&p->ep_lock);
    if (!same_addr(&p->endpoint, p->endpoint_len, from, fromlen)) {
        memset(&p->endpoint, 0, sizeof(p->endpoint));
        memcpy(&p->endpoint, from, fromlen);
        p->endpoint_len = fromlen;
    }
    pthread_mutex_unlock(&p->ep_lock);
}

static void rx_data(wg_dev_t *d, uint8_t *buf, size_t len, const void *from, uint32_t fromlen)
{
    wg_session_t *s = wg_lookup_index(d, le32(buf + 4));
    int64_t now = d->rxw.now;
    if (!s || !wg_session_usable(d, s, now)) {
        atomic_fetch_add(&d->c.drop_unknown_index, 1);
        return;
    }
    uint64_t counter = le64(buf + 8);
    if (counter >= WG_REJECT_AFTER_MESSAGES) {
        atomic_fetch_add(&d->c.drop_replay, 1);
        return;
    }
    uint8_t *payload = buf + WG_HDR_DATA;
    size_t plen = len - WG_HDR_DATA;
    if (wg_open(d->rxw.ctx, s->recv_key, counter, payload, plen) != 0) {
        atomic_fetch_add(&d->c.drop_auth, 1);
        return;
    }
    plen -= WG_TAG;
    pthread_mutex_lock(&s->replay_lock);
    int fresh = wg_replay_check(&s->replay, counter);
    pthread_mutex_unlock(&s->replay_lock);
    if (!fresh) {
        atomic_fetch_add(&d->c.drop_replay, 1);
        return;
    }
    wg_peer_t *p = &d->peers[s->peer];
    if (!s->initiator && p->next == s)
        wg_promote_next(d, p, s);
    roam(p, from, fromlen);
    atomic_fetch_add(&p->rx_bytes, len);
    atomic_store(&p->last_rx_ns, now);
    if (plen == 0) {
        atomic_fetch_add(&d->c.rx_keepalives, 1);
        return;
    }
    size_t ilen = wg_inner_len(payload, plen);
    if (!ilen) {
        atomic_fetch_add(&d->c.drop_malformed, 1);
        return;
    }
    if (wg_route(d, payload, ilen, 1) != s->peer) {
        atomic_fetch_add(&d->c.drop_allowed_ips, 1);
        return;
    }
    atomic_store(&p->last_rx_data_ns, now);
    atomic_fetch_add(&d->c.rx_data_packets, 1);
    wg_tun_put(d, &d->rxw, payload, ilen);
}

void wg_rx_datagram(wg_dev_t *d, uint8_t *buf, size_t len, const void *from, uint32_t fromlen)
{
    d->rxw.now = wg_now();
    wg_rx_one(d, buf, len, from, fromlen);
}

/* The receive worker's entry: the clock is read once per batch (d->rxw.now). */
void wg_rx_one(wg_dev_t *d, uint8_t *buf, size_t len, const void *from, uint32_t fromlen)
{
    atomic_fetch_add(&d->c.rx_datagrams, 1);
    if (len < 4 || buf[1] || buf[2] || buf[3]) {
        atomic_fetch_add(&d->c.drop_malformed, 1);
        return;
    }
    switch (buf[0]) {
    case WG_MSG_INITIATION:
        if (len == 148)
            return wg_queue_handshake(d, buf, len, from, fromlen);
        break;
    case WG_MSG_RESPONSE:
        if (len == 92)
            return wg_queue_handshake(d, buf, len, from, fromlen);
        break;
    case WG_MSG_COOKIE:
        if (len == 64)
            return wg_queue_handshake(d, buf, len, from, fromlen);
        break;
    case WG_MSG_DATA:
        if (len >= WG_MIN_DATA)
            return rx_data(d, buf, len, from, fromlen);
        break;
    }
    atomic_fetch_add(&d->c.drop_malformed, 1);
}
