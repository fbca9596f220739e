/* TUN offloads: the virtio-net header in front of each TUN read and write (IFF_VNET_HDR).
 *
 * Read side: with TUNSETOFFLOAD(TSO) the kernel hands over TCP super-packets of up to 64 KiB and checksums left to
 * do; wg_tso_split cuts them into MSS-sized segments with their IP and TCP headers and checksums fixed, as the NIC
 * would. Write side: wg_tun_put coalesces consecutive in-order segments of one TCP flow back into one super-packet
 * written with a GSO header (what GRO does in a NIC driver), so the kernel takes ~40 segments per write. Every
 * length is checked before it is read: the input is a packet from the TUN or one a peer sent (after decryption). */
#include <linux/virtio_net.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "wg_int.h"

uint32_t wg_csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
    uint64_t acc = sum;
    while (len >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        acc += (uint64_t)a + b;
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        uint32_t a;
        memcpy(&a, p, 4);
        acc += a;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t a;
        memcpy(&a, p, 2);
        acc += a;
        p += 2;
        len -= 2;
    }
    if (len)
        acc += *p; /* the odd byte is the high-order byte of a word in network order: low in memory order */
    while (acc >> 32)
        acc = (acc & 0xffffffffu) + (acc >> 32);
    return (uint32_t)acc;
}

uint16_t wg_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

/* The TCP/UDP pseudo-header sum of a v4 or v6 packet for an L4 length of l4len. */
static uint32_t pseudo_sum(const uint8_t *ip, int v6, uint8_t proto, size_t l4len)
{
    uint8_t tail[8] = {0};
    uint32_t sum;
    if (v6) {
        sum = wg_csum_add(0, ip + 8, 32);
        put32(tail, (uint32_t)l4len);
        tail[7] = proto;
        return wg_csum_add(sum, tail, 8);
    }
    sum = wg_csum_add(0, ip + 12, 8);
    tail[1] = proto;
    put16(tail + 2, (uint16_t)l4len);
    return wg_csum_add(sum, tail, 4);
}

static void ipv4_csum(uint8_t *ip, size_t ihl)
{
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~wg_csum_fold(wg_csum_add(0, ip, ihl));
    memcpy(ip + 10, &c, 2);
}

/* Where the TCP header of a plain (no IPv4 options are fine, no IPv6 extension headers) TCP packet starts, with
 * its length; 0 when the packet is not such. */
static int tcp_layout(const uint8_t *p, size_t len, size_t *iphl, size_t *thl)
{
    int v6;
    if (len >= 20 && (p[0] >> 4) == 4) {
        *iphl = (size_t)(p[0] & 15) * 4;
        if (*iphl < 20 || p[9] != 6 || (be16(p + 6) & 0x3fff))
            return -1;
        v6 = 0;
    } else if (len >= 40 && (p[0] >> 4) == 6) {
        *iphl = 40;
        if (p[6] != 6)
            return -1;
        v6 = 1;
    } else {
        return -1;
    }
    if (*iphl + 20 > len)
        return -1;
    *thl = (size_t)(p[*iphl + 12] >> 4) * 4;
    if (*thl < 20 || *iphl + *thl > len)
        return -1;
    return v6;
}

void wg_tso_split(wg_dev_t *d, wg_worker_t *w, uint8_t *buf, size_t len, wg_segment_fn each)
{
    struct virtio_net_hdr h;
    if (len < sizeof(h)) {
        atomic_fetch_add(&d->c.drop_malformed, 1);
        return;
    }
    memcpy(&h, buf, sizeof(h));
    uint8_t *p = buf + sizeof(h);
    size_t plen = len - sizeof(h);
    uint8_t gso = h.gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
    if (gso == VIRTIO_NET_HDR_GSO_NONE) {
        if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
            size_t start = h.csum_start, at = (size_t)h.csum_start + h.csum_offset;
            if (start > plen || at + 2 > plen) {
                atomic_fetch_add(&d->c.drop_malformed, 1);
                return;
            }
            /* the field holds the pseudo-header sum already */
            uint16_t c = (uint16_t)~wg_csum_fold(wg_csum_add(0, p + start, plen - start));
            memcpy(p + at, &c, 2);
        }
        wg_pkt_t one = {p, plen, NULL, 0};
        each(d, w, &one);
        return;
    }
    size_t iphl, thl;
    int v6 = tcp_layout(p, plen, &iphl, &thl);
    if ((gso != VIRTIO_NET_HDR_GSO_TCPV4 && gso != VIRTIO_NET_HDR_GSO_TCPV6) || v6 < 0 || h.gso_size == 0 ||
        v6 != (gso == VIRTIO_NET_HDR_GSO_TCPV6)) {
        atomic_fetch_add(&d->c.drop_malformed, 1);
        return;
    }
    atomic_fetch_add(&d->c.tso_reads, 1);
    size_t hdr = iphl + thl, payload = plen - hdr, mss = h.gso_size;
    uint32_t seq0 = be32(p + iphl + 4);
    uint16_t id0 = be16(p + 4);
    uint8_t flags0 = p[iphl + 13];
    uint8_t *s = w->scratch; /* the segment's headers; its payload stays where it is in buf */
    size_t k = 0;
    for (size_t off = 0; off < payload || (payload == 0 && off == 0); off += mss, k++) {
        size_t n = payload - off < mss ? payload - off : mss;
        const uint8_t *body = p + hdr + off;
        memcpy(s, p, hdr);
        if (v6) {
            put16(s + 4, (uint16_t)(thl + n));
        } else {
            put16(s + 2, (uint16_t)(hdr + n));
            put16(s + 4, (uint16_t)(id0 + k));
            ipv4_csum(s, iphl);
        }
        uint8_t *t = s + iphl;
        put32(t + 4, seq0 + (uint32_t)off);
        int last = off + n >= payload;
        t[13] = flags0;
        if (!last)
            t[13] &= (uint8_t)~0x09; /* FIN, PSH only on the last segment */
        if (k)
            t[13] &= (uint8_t)~0x80; /* CWR only on the first */
        t[16] = t[17] = 0;
        /* headers are a whole number of 32-bit words, so the payload's sum adds on at an even offset */
        uint32_t sum = wg_csum_add(wg_csum_add(pseudo_sum(s, v6, 6, thl + n), t, thl), body, n);
        uint16_t c = (uint16_t)~wg_csum_fold(sum);
        memcpy(t + 16, &c, 2);
        wg_pkt_t seg = {s, hdr, body, n};
        each(d, w, &seg);
        if (payload == 0)
            break;
    }
}

static void tun_write_one(wg_dev_t *d, const uint8_t *pkt, size_t len)
{
    ssize_t r;
    if (d->vnet_hdr) {
        struct virtio_net_hdr h = {.flags = VIRTIO_NET_HDR_F_DATA_VALID}; /* authenticated: no checksum to verify */
        struct iovec v[2] = {{&h, sizeof(h)}, {(void *)pkt, len}};
        r = writev(d->tun_fd, v, 2);
        len += sizeof(h);
    } else {
        r = write(d->tun_fd, pkt, len);
    }
    if (r != (ssize_t)len)
        atomic_fetch_add(&d->c.drop_send_errors, 1);
}

void wg_tun_flush(wg_dev_t *d, wg_worker_t *w)
{
    if (!w->tun_len)
        return;
    uint8_t *p = w->tunbuf + WG_VNET_LEN;
    size_t len = w->tun_len;
    w->tun_len = 0;
    if (w->tun_segs <= 1) {
        tun_write_one(d, p, len);
        return;
    }
    size_t iphl, thl;
    int v6 = tcp_layout(p, len, &iphl, &thl);
    if (v6 < 0) /* cannot happen: checked when the first segment came */
        return;
    if (v6) {
        put16(p + 4, (uint16_t)(len - 40));
    } else {
        put16(p + 2, (uint16_t)len);
        ipv4_csum(p, iphl);
    }
    /* CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel finishes it per segment */
    uint16_t c = wg_csum_fold(pseudo_sum(p, v6, 6, len - iphl));
    memcpy(p + iphl + 16, &c, 2);
    struct virtio_net_hdr h = {
        .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
        .gso_type = v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4,
        .hdr_len = (uint16_t)(iphl + thl),
        .gso_size = (uint16_t)w->tun_seg,
        .csum_start = (uint16_t)iphl,
        .csum_offset = 16,
    };
    memcpy(w->tunbuf, &h, sizeof(h));
    if (write(d->tun_fd, w->tunbuf, WG_VNET_LEN + len) != (ssize_t)(WG_VNET_LEN + len))
        atomic_fetch_add(&d->c.drop_send_errors, 1);
    else
        atomic_fetch_add(&d->c.coalesced_writes, 1);
}

/* Whether segment q (a TCP packet of layout iphl/thl with n payload bytes) continues the pending super-packet. */
static int continues(const wg_worker_t *w, const uint8_t *q, size_t iphl, size_t thl, size_t n)
{
    const uint8_t *p = w->tunbuf + WG_VNET_LEN;
    size_t piphl, pthl;
    int v6 = tcp_layout(p, w->tun_len, &piphl, &pthl);
    if (v6 < 0 || piphl != iphl || pthl != thl || n > w->tun_seg || w->tun_segs >= 64)
        return 0;
    if (w->tun_len + n > 65535 - WG_VNET_LEN)
        return 0;
    if (v6) {
        if (memcmp(p, q, 4) || p[7] != q[7] || memcmp(p + 8, q + 8, 32))
            return 0;
    } else if (p[1] != q[1] || p[8] != q[8] || (p[6] & 0x40) != (q[6] & 0x40) || memcmp(p + 12, q + 12, 8) ||
               iphl != 20) {
        return 0;
    }
    const uint8_t *pt = p + iphl, *qt = q + iphl;
    return memcmp(pt, qt, 4) == 0 && be32(qt + 4) == w->tun_next_seq && memcmp(pt + 8, qt + 8, 4) == 0 &&
           pt[13] == 0x10 && (qt[13] == 0x10 || qt[13] == 0x18) && memcmp(pt + 14, qt + 14, 2) == 0 &&
           memcmp(pt + 20, qt + 20, thl - 20) == 0;
}

void wg_tun_put(wg_dev_t *d, wg_worker_t *w, const uint8_t *pkt, size_t len)
{
    if (!d->vnet_hdr) {
        tun_write_one(d, pkt, len);
        return;
    }
    size_t iphl, thl;
    int v6 = tcp_layout(pkt, len, &iphl, &thl);
    size_t n = v6 < 0 ? 0 : len - iphl - thl;
    if (w->tun_len && n && continues(w, pkt, iphl, thl, n)) {
        memcpy(w->tunbuf + WG_VNET_LEN + w->tun_len, pkt + iphl + thl, n);
        w->tun_len += n;
        w->tun_segs++;
        w->tun_next_seq += (uint32_t)n;
        if (n < w->tun_seg || pkt[iphl + 13] != 0x10)
            wg_tun_flush(d, w); /* a short segment or a PSH ends the run, as in GRO */
        return;
    }
    wg_tun_flush(d, w);
    if (!n || pkt[iphl + 13] != 0x10 || len > WG_BUF) {
        tun_write_one(d, pkt, len);
        return;
    }
    memcpy(w->tunbuf + WG_VNET_LEN, pkt, len);
    w->tun_len = len;
    w->tun_seg = n;
    w->tun_segs = 1;
    w->tun_next_seq = be32(pkt + iphl + 4) + (uint32_t)n;
}
