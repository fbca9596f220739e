/* A packet from the TUN to its peer: route by destination over the allowed IPs, encrypt under the peer's current
 * session (or stage it and ask Python for a handshake), and batch the datagram for sendmmsg, runs of equal-size
 * datagrams to one peer as one UDP_SEGMENT message. Also the AEAD (ChaCha20-Poly1305 from OpenSSL). */
#include <errno.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wg_int.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

static void nonce_of(uint64_t counter, uint8_t nonce[12])
{
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(counter >> (8 * i));
}

static int init(EVP_CIPHER_CTX *ctx, const uint8_t *key, const uint8_t *nonce, int enc)
{
    /* the first use sets the cipher up; later ones only change key and nonce (no provider fetch per packet) */
    const EVP_CIPHER *c = EVP_CIPHER_CTX_get0_cipher(ctx) ? NULL : EVP_chacha20_poly1305();
    return EVP_CipherInit_ex(ctx, c, NULL, key, nonce, enc) == 1 ? 0 : -1;
}

/* Encrypts the packet's pieces plus zero padding up to padded bytes into out, tag after. */
static int seal_padded(EVP_CIPHER_CTX *ctx, const uint8_t key[WG_KEY_LEN], uint64_t counter, const wg_pkt_t *p,
                       size_t padded, uint8_t *out)
{
    static const uint8_t zeros[16];
    uint8_t nonce[12];
    int n;
    size_t len = p ? p->head_len + p->body_len : 0;
    nonce_of(counter, nonce);
    if (init(ctx, key, nonce, 1) != 0)
        return -1;
    if (p && p->head_len && EVP_EncryptUpdate(ctx, out, &n, p->head, (int)p->head_len) != 1)
        return -1;
    if (p && p->body_len && EVP_EncryptUpdate(ctx, out + p->head_len, &n, p->body, (int)p->body_len) != 1)
        return -1;
    if (padded > len && EVP_EncryptUpdate(ctx, out + len, &n, zeros, (int)(padded - len)) != 1)
        return -1;
    if (EVP_EncryptFinal_ex(ctx, out + padded, &n) != 1)
        return -1;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, WG_TAG, out + padded) == 1 ? 0 : -1;
}

int wg_seal(EVP_CIPHER_CTX *ctx, const uint8_t key[WG_KEY_LEN], uint64_t counter, const uint8_t *in, size_t len,
            uint8_t *out)
{
    wg_pkt_t p = {in, len, NULL, 0};
    return seal_padded(ctx, key, counter, &p, len, out);
}

int wg_open(EVP_CIPHER_CTX *ctx, const uint8_t key[WG_KEY_LEN], uint64_t counter, uint8_t *buf, size_t len)
{
    uint8_t nonce[12];
    int n;
    if (len < WG_TAG)
        return -1;
    nonce_of(counter, nonce);
    if (init(ctx, key, nonce, 0) != 0)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, WG_TAG, buf + len - WG_TAG) != 1)
        return -1;
    if (len > WG_TAG && EVP_DecryptUpdate(ctx, buf, &n, buf, (int)(len - WG_TAG)) != 1)
        return -1;
    return EVP_DecryptFinal_ex(ctx, buf + len - WG_TAG, &n) == 1 ? 0 : -1;
}

/* The endpoint as the socket takes it: an IPv4 address becomes v4-mapped on a dual-stack IPv6 socket. */
static socklen_t map_addr(const wg_dev_t *d, const struct sockaddr_storage *src, socklen_t len,
                          struct sockaddr_storage *out)
{
    memcpy(out, src, len);
    if (d->family == AF_INET6 && src->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)src;
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
        in_port_t port = v4->sin_port;
        struct in_addr a = v4->sin_addr;
        memset(v6, 0, sizeof(*v6));
        v6->sin6_family = AF_INET6;
        v6->sin6_port = port;
        v6->sin6_addr.s6_addr[10] = 0xff;
        v6->sin6_addr.s6_addr[11] = 0xff;
        memcpy(&v6->sin6_addr.s6_addr[12], &a, 4);
        return sizeof(*v6);
    }
    return len;
}

int wg_send_to(wg_dev_t *d, const void *sa, uint32_t salen, const uint8_t *msg, size_t len)
{
    struct sockaddr_storage src, to;
    if (salen > sizeof(src))
        return -1;
    memset(&src, 0, sizeof(src));
    memcpy(&src, sa, salen);
    socklen_t tolen = map_addr(d, &src, salen, &to);
    return sendto(d->udp_fd, msg, len, 0, (struct sockaddr *)&to, tolen) == (ssize_t)len ? 0 : -1;
}

static void stage(wg_dev_t *d, wg_peer_t *p, const wg_pkt_t *pkt)
{
    atomic_store(&p->want_handshake, 1);
    wg_wake(d);
    size_t len = pkt ? pkt->head_len + pkt->body_len : 0;
    if (!len || len > UINT16_MAX)
        return;
    uint8_t *copy = malloc(len);
    if (!copy) {
        atomic_fetch_add(&d->c.drop_staged, 1);
        return;
    }
    memcpy(copy, pkt->head, pkt->head_len);
    if (pkt->body_len)
        memcpy(copy + pkt->head_len, pkt->body, pkt->body_len);
    pthread_mutex_lock(&p->staged_lock);
    if (p->staged_count == WG_STAGED_MAX) { /* the oldest goes */
        free(p->staged[p->staged_head]);
        p->staged_head = (p->staged_head + 1) % WG_STAGED_MAX;
        p->staged_count--;
        atomic_fetch_add(&d->c.drop_staged, 1);
    }
    uint32_t at = (p->staged_head + p->staged_count) % WG_STAGED_MAX;
    p->staged[at] = copy;
    p->staged_len[at] = (uint16_t)len;
    p->staged_count++;
    pthread_mutex_unlock(&p->staged_lock);
}

static void put_header(uint8_t *out, uint32_t remote, uint64_t counter)
{
    out[0] = WG_MSG_DATA;
    out[1] = out[2] = out[3] = 0;
    for (int i = 0; i < 4; i++)
        out[4 + i] = (uint8_t)(remote >> (8 * i));
    for (int i = 0; i < 8; i++)
        out[8 + i] = (uint8_t)(counter >> (8 * i));
}

/* Room for a datagram of dlen bytes to peer in w's batch: the tail of the open GSO message, or a new message. */
static uint8_t *batch_slot(wg_dev_t *d, wg_worker_t *w, int peer, const struct sockaddr_storage *ep, socklen_t eplen,
                           size_t dlen)
{
    if (w->nmsg && w->open_peer == peer && d->udp_gso && dlen <= w->open_seg && w->open_count < WG_MAX_SEGS &&
        w->iov[w->nmsg - 1].iov_len + dlen <= WG_BUF - 64) {
        struct iovec *v = &w->iov[w->nmsg - 1];
        uint8_t *at = (uint8_t *)v->iov_base + v->iov_len;
        v->iov_len += dlen;
        w->open_count++;
        if (dlen < w->open_seg)
            w->open_peer = -1; /* a short datagram ends a GSO run */
        return at;
    }
    if (w->nmsg == WG_BATCH)
        wg_tx_flush(d, w);
    size_t i = w->nmsg++;
    w->iov[i].iov_base = w->out + i * WG_BUF;
    w->iov[i].iov_len = dlen;
    memset(&w->msgs[i], 0, sizeof(w->msgs[i]));
    w->msgs[i].msg_hdr.msg_namelen = map_addr(d, ep, eplen, &w->addrs[i]);
    w->msgs[i].msg_hdr.msg_name = &w->addrs[i];
    w->msgs[i].msg_hdr.msg_iov = &w->iov[i];
    w->msgs[i].msg_hdr.msg_iovlen = 1;
    w->seg[i] = (uint16_t)dlen;
    w->open_peer = peer;
    w->open_seg = dlen;
    w->open_count = 1;
    return w->iov[i].iov_base;
}

/* A message of several datagrams goes out as one UDP_SEGMENT send: the kernel cuts it at seg bytes. */
static void mark_gso(wg_dev_t *d, wg_worker_t *w, size_t i)
{
    struct msghdr *h = &w->msgs[i].msg_hdr;
    if (w->iov[i].iov_len <= w->seg[i])
        return;
    h->msg_control = w->ctrl[i].buf;
    h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *c = CMSG_FIRSTHDR(h);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &w->seg[i], sizeof(uint16_t));
    atomic_fetch_add(&d->c.gso_sends, 1);
}

void wg_tx_flush(wg_dev_t *d, wg_worker_t *w)
{
    for (size_t i = 0; i < w->nmsg; i++)
        mark_gso(d, w, i);
    size_t done = 0;
    while (done < w->nmsg) {
        int n = sendmmsg(d->udp_fd, w->msgs + done, (unsigned)(w->nmsg - done), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
            struct pollfd pf = {.fd = d->udp_fd, .events = POLLOUT};
            if (poll(&pf, 1, 100) > 0)
                continue;
        }
        if (n <= 0) {
            /* skip the message the kernel refused (an unreachable endpoint) and go on with the rest */
            atomic_fetch_add(&d->c.drop_send_errors, 1);
            done++;
            continue;
        }
        done += (size_t)n;
    }
    w->nmsg = 0;
    w->open_peer = -1;
}

int wg_encrypt_to_peer(wg_dev_t *d, wg_worker_t *w, int peer, const wg_pkt_t *pkt)
{
    size_t len = pkt ? pkt->head_len + pkt->body_len : 0;
    wg_peer_t *p = &d->peers[peer];
    struct sockaddr_storage ep;
    socklen_t eplen;
    pthread_mutex_lock(&p->ep_lock);
    wg_session_t *s = p->current;
    memcpy(&ep, &p->endpoint, sizeof(ep));
    eplen = p->endpoint_len;
    pthread_mutex_unlock(&p->ep_lock);
    if (!eplen) {
        atomic_fetch_add(&d->c.drop_no_peer, 1);
        return -1;
    }
    int64_t now = w ? w->now : wg_now();
    if (!wg_session_usable(d, s, now)) {
        stage(d, p, pkt);
        return -1;
    }
    uint64_t counter = atomic_fetch_add(&s->send_counter, 1);
    if (counter >= WG_REJECT_AFTER_MESSAGES) {
        stage(d, p, pkt);
        return -1;
    }
    if (counter >= d->cfg.rekey_after_messages && !atomic_load(&p->want_handshake)) {
        atomic_store(&p->want_handshake, 1);
        wg_wake(d);
    }
    size_t padded = (len + 15) & ~(size_t)15;
    if (padded > (size_t)d->cfg.mtu)
        padded = len > (size_t)d->cfg.mtu ? len : (size_t)d->cfg.mtu;
    size_t dlen = WG_HDR_DATA + padded + WG_TAG;
    if (dlen > WG_BUF - 64) {
        atomic_fetch_add(&d->c.drop_malformed, 1);
        return -1;
    }
    uint8_t local[WG_HDR_DATA + 2048];
    uint8_t *out;
    EVP_CIPHER_CTX *tmp = NULL;
    if (w) {
        out = batch_slot(d, w, peer, &ep, eplen, dlen);
    } else {
        if (dlen > sizeof(local))
            return -1;
        out = local;
        tmp = EVP_CIPHER_CTX_new();
        if (!tmp)
            return -1;
    }
    put_header(out, s->remote_index, counter);
    int r = seal_padded(w ? w->ctx : tmp, s->send_key, counter, pkt, padded, out + WG_HDR_DATA);
    if (tmp)
        EVP_CIPHER_CTX_free(tmp);
    if (r != 0) {
        atomic_fetch_add(&d->c.drop_send_errors, 1);
        return -1;
    }
    if (!w && wg_send_to(d, &ep, eplen, out, dlen) != 0)
        atomic_fetch_add(&d->c.drop_send_errors, 1);
    atomic_fetch_add(&p->tx_bytes, dlen);
    atomic_store(&p->last_tx_ns, now);
    atomic_fetch_add(&d->c.tx_datagrams, 1);
    if (len) {
        atomic_store(&p->last_tx_data_ns, now);
        atomic_fetch_add(&d->c.tx_data_packets, 1);
    } else {
        atomic_fetch_add(&d->c.tx_keepalives, 1);
    }
    return 0;
}

void wg_send_plain(wg_dev_t *d, wg_worker_t *w, const wg_pkt_t *pkt)
{
    int peer = wg_route(d, pkt->head, pkt->head_len, 0);
    if (peer < 0) {
        atomic_fetch_add(&d->c.drop_no_peer, 1);
        return;
    }
    wg_encrypt_to_peer(d, w, peer, pkt);
}
