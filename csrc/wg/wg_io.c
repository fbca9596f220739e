/* The device's descriptors and its two workers. TUN: IFF_TUN | IFF_NO_PI, with IFF_VNET_HDR and
 * TUNSETOFFLOAD(CSUM, TSO4, TSO6) when asked and the kernel has them; MTU set and link up by ioctl. UDP: a dual-stack
 * socket (IPv4-only where IPv6 is off) with 7 MiB buffers, UDP_GRO on receive and UDP_SEGMENT tried on send. */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "wg_int.h"

#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define SOCKBUF (7 << 20)

static int open_tun(const wg_config_t *cfg, int *vnet, int *ifindex, char *err, size_t errlen)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open /dev/net/tun: %s", strerror(errno));
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", cfg->ifname);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (cfg->offload ? IFF_VNET_HDR : 0);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0 && cfg->offload) {
        ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
        *vnet = 0;
        if (ioctl(fd, TUNSETIFF, &ifr) != 0)
            goto fail;
    } else if (ifr.ifr_flags & IFF_VNET_HDR) {
        *vnet = 1;
        int sz = WG_VNET_LEN;
        if (ioctl(fd, TUNSETVNETHDRSZ, &sz) != 0)
            goto fail;
        /* TSO: 64 KiB TCP segments from the kernel, cut here; without it the header stays, offload-free */
        if (ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) != 0)
            ioctl(fd, TUNSETOFFLOAD, 0);
    } else if (!(ifr.ifr_flags & IFF_TUN)) {
        goto fail;
    }
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        goto fail;
    struct ifreq q;
    memset(&q, 0, sizeof(q));
    snprintf(q.ifr_name, IFNAMSIZ, "%s", ifr.ifr_name);
    q.ifr_mtu = cfg->mtu > 0 ? cfg->mtu : 1420;
    int ok = ioctl(s, SIOCSIFMTU, &q) == 0;
    if (ok && ioctl(s, SIOCGIFFLAGS, &q) == 0) {
        q.ifr_flags |= IFF_UP;
        ok = ioctl(s, SIOCSIFFLAGS, &q) == 0;
    }
    if (ok && ioctl(s, SIOCGIFINDEX, &q) == 0)
        *ifindex = q.ifr_ifindex;
    close(s);
    if (!ok)
        goto fail;
    return fd;
fail:
    snprintf(err, errlen, "cannot set TUN interface %s up: %s", cfg->ifname, strerror(errno));
    close(fd);
    return -1;
}

static int open_udp(int port, int *family, char *err, size_t errlen)
{
    int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int zero = 0, big = SOCKBUF;
    if (fd >= 0 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) == 0) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
            *family = AF_INET6;
            goto bound;
        }
        if (errno == EADDRINUSE)
            goto fail;
    }
    if (fd >= 0)
        close(fd);
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto fail;
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(fd, (struct sockaddr *)&a4, sizeof(a4)) != 0)
        goto fail;
    *family = AF_INET;
bound:
    /* as wireguard-go: big buffers so that a burst of 64 KiB GSO sends does not drop (FORCE needs CAP_NET_ADMIN) */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    return fd;
fail:
    snprintf(err, errlen, "cannot bind UDP port %d: %s", port, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

int wg_set_fwmark(wg_dev_t *d, uint32_t mark)
{
    d->fwmark = mark;
    return setsockopt(d->udp_fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
}

void wg_probe_offloads(wg_dev_t *d)
{
    int one = 1;
    d->udp_gro = d->cfg.offload && setsockopt(d->udp_fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
    /* UDP_SEGMENT is per message; the option form only tells whether the kernel knows it */
    int seg = 0;
    d->udp_gso = d->cfg.offload && setsockopt(d->udp_fd, SOL_UDP, UDP_SEGMENT, &seg, sizeof(seg)) == 0;
}

int wg_create(const wg_config_t *cfg, wg_dev_t **out, char *err, size_t errlen)
{
    int vnet = 0, ifindex = 0, family = AF_INET;
    if (!cfg->ifname[0] || strlen(cfg->ifname) >= IFNAMSIZ) {
        snprintf(err, errlen, "interface name %.20s is empty or longer than %d bytes", cfg->ifname, IFNAMSIZ - 1);
        return -1;
    }
    if (cfg->listen_port < 0 || cfg->listen_port > 65535) {
        snprintf(err, errlen, "listen port %d is out of range", cfg->listen_port);
        return -1;
    }
    int tun = open_tun(cfg, &vnet, &ifindex, err, errlen);
    if (tun < 0)
        return -1;
    int udp = open_udp(cfg->listen_port, &family, err, errlen);
    if (udp < 0) {
        close(tun);
        return -1;
    }
    if (wg_create_on(cfg, tun, vnet, udp, out, err, errlen) != 0) {
        close(tun);
        close(udp);
        return -1;
    }
    (*out)->owns_tun = (*out)->owns_udp = 1;
    (*out)->ifindex = ifindex;
    return 0;
}

void wg_flush(wg_dev_t *d)
{
    wg_tx_flush(d, &d->txw);
    wg_tun_flush(d, &d->rxw);
}

static void tun_read(wg_dev_t *d, uint8_t *buf, size_t len)
{
    if (d->vnet_hdr) {
        wg_tso_split(d, &d->txw, buf, len, wg_send_plain);
    } else {
        wg_pkt_t one = {buf, len, NULL, 0};
        wg_send_plain(d, &d->txw, &one);
    }
}

void wg_tx_tun_read(wg_dev_t *d, uint8_t *buf, size_t len)
{
    d->txw.now = wg_now();
    tun_read(d, buf, len);
}

static int wait_readable(wg_dev_t *d, int fd)
{
    struct pollfd pf[2] = {{.fd = fd, .events = POLLIN}, {.fd = d->stop_fd, .events = POLLIN}};
    while (poll(pf, 2, -1) < 0)
        if (errno != EINTR)
            return -1;
    return pf[1].revents ? -1 : 0;
}

/* Splits a received datagram that UDP GRO coalesced (gso bytes each) and hands each piece over. */
static void rx_message(wg_dev_t *d, uint8_t *buf, size_t len, struct msghdr *h)
{
    size_t seg = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof(v));
            seg = v > 0 ? (size_t)v : 0;
        }
    if (!seg || seg >= len) {
        wg_rx_one(d, buf, len, h->msg_name, h->msg_namelen);
        return;
    }
    atomic_fetch_add(&d->c.gro_receives, 1);
    for (size_t off = 0; off < len; off += seg)
        wg_rx_one(d, buf + off, len - off < seg ? len - off : seg, h->msg_name, h->msg_namelen);
}

static void *rx_main(void *arg)
{
    wg_dev_t *d = arg;
    wg_worker_t *w = &d->rxw;
    static __thread struct mmsghdr msgs[WG_BATCH];
    static __thread struct iovec iov[WG_BATCH];
    static __thread struct sockaddr_storage from[WG_BATCH];
    static __thread union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[WG_BATCH];
    uint8_t *bufs = w->out; /* the receive worker sends nothing: its batch memory holds received datagrams */
    for (;;) {
        for (int i = 0; i < WG_BATCH; i++) {
            iov[i].iov_base = bufs + (size_t)i * WG_BUF;
            iov[i].iov_len = WG_BUF;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctrl[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i].buf);
        }
        int n = recvmmsg(d->udp_fd, msgs, WG_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED)
                usleep(1000);
            if (wait_readable(d, d->udp_fd) != 0)
                break;
            continue;
        }
        pthread_rwlock_rdlock(&d->lock);
        w->now = wg_now();
        for (int i = 0; i < n; i++)
            rx_message(d, iov[i].iov_base, msgs[i].msg_len, &msgs[i].msg_hdr);
        wg_tun_flush(d, w);
        pthread_rwlock_unlock(&d->lock);
    }
    return NULL;
}

static void *tx_main(void *arg)
{
    wg_dev_t *d = arg;
    uint8_t *buf = malloc(WG_VNET_LEN + WG_BUF);
    if (!buf)
        return NULL;
    for (;;) {
        int got = 0;
        pthread_rwlock_rdlock(&d->lock);
        d->txw.now = wg_now();
        /* a batch: as many TUN reads as are ready, up to what one sendmmsg carries */
        while (got < WG_BATCH) {
            ssize_t n = read(d->tun_fd, buf, WG_VNET_LEN + WG_BUF);
            if (n <= 0)
                break;
            tun_read(d, buf, (size_t)n);
            got++;
        }
        wg_tx_flush(d, &d->txw);
        pthread_rwlock_unlock(&d->lock);
        if (got < WG_BATCH && wait_readable(d, d->tun_fd) != 0)
            break;
    }
    free(buf);
    return NULL;
}

int wg_start(wg_dev_t *d, char *err, size_t errlen)
{
    if (d->running)
        return 0;
    uint64_t v;
    while (read(d->stop_fd, &v, sizeof(v)) > 0)
        ;
    if (pthread_create(&d->rx_thread, NULL, rx_main, d) != 0) {
        snprintf(err, errlen, "cannot start the receive worker: %s", strerror(errno));
        return -1;
    }
    pthread_setname_np(d->rx_thread, "wg-rx"); /* as top -H and perf show them */
    if (pthread_create(&d->tx_thread, NULL, tx_main, d) != 0) {
        snprintf(err, errlen, "cannot start the send worker: %s", strerror(errno));
        v = 1;
        if (write(d->stop_fd, &v, sizeof(v)) < 0)
            abort();
        pthread_join(d->rx_thread, NULL);
        return -1;
    }
    pthread_setname_np(d->tx_thread, "wg-tx");
    d->running = 1;
    return 0;
}

void wg_stop(wg_dev_t *d)
{
    if (!d->running)
        return;
    uint64_t v = 1;
    if (write(d->stop_fd, &v, sizeof(v)) < 0)
        abort();
    pthread_join(d->rx_thread, NULL);
    pthread_join(d->tx_thread, NULL);
    d->running = 0;
    wg_wake(d);
}

/* The socket of a new listen port is made in the device's network namespace, whichever thread asks (a UAPI request
 * is served by a thread of the host's namespace when the device was made in another): a helper thread enters it. */
typedef struct {
    int netns_fd, port, family, fd;
    char err[256];
} rebind_t;

static void *rebind_main(void *arg)
{
    rebind_t *r = arg;
    if (r->netns_fd >= 0 && setns(r->netns_fd, CLONE_NEWNET) != 0) {
        snprintf(r->err, sizeof(r->err), "cannot enter the interface's network namespace: %s", strerror(errno));
        return NULL;
    }
    r->fd = open_udp(r->port, &r->family, r->err, sizeof(r->err));
    return NULL;
}

int wg_set_listen_port(wg_dev_t *d, int port, char *err, size_t errlen)
{
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "listen port %d is out of range", port);
        return -1;
    }
    if (port && port == wg_listen_port(d))
        return 0;
    rebind_t r = {.netns_fd = d->netns_fd, .port = port, .fd = -1};
    pthread_t t;
    if (pthread_create(&t, NULL, rebind_main, &r) != 0) {
        snprintf(err, errlen, "cannot start a thread: %s", strerror(errno));
        return -1;
    }
    pthread_join(t, NULL);
    if (r.fd < 0) {
        snprintf(err, errlen, "%s", r.err);
        return -1;
    }
    int was = d->running;
    wg_stop(d);
    if (d->owns_udp)
        close(d->udp_fd);
    d->udp_fd = r.fd;
    d->family = r.family;
    d->owns_udp = 1;
    wg_probe_offloads(d);
    if (d->fwmark)
        wg_set_fwmark(d, d->fwmark);
    return was ? wg_start(d, err, errlen) : 0;
}
