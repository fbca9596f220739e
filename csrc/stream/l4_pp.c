/* PROXY protocol v1 (text) and v2 (binary) headers written to a backend before the client's bytes (haproxy's
 * proxy-protocol.txt). Only written, never parsed: the addresses come from the kernel (getpeername/getsockname). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "l4_internal.h"

static const char PP2_SIG[12] = {'\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};

size_t l4_proxy_header(int version, const void *srcp, const void *dstp, char *buf, size_t cap)
{
    const struct sockaddr *src = srcp, *dst = dstp;
    int fam = (src && dst && src->sa_family == dst->sa_family) ? src->sa_family : AF_UNSPEC;
    if (fam != AF_INET && fam != AF_INET6)
        fam = AF_UNSPEC;
    if (version == 1) {
        if (fam == AF_UNSPEC) {
            if (cap < 15)
                return 0;
            memcpy(buf, "PROXY UNKNOWN\r\n", 15);
            return 15;
        }
        char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
        unsigned sp, dp;
        if (fam == AF_INET) {
            const struct sockaddr_in *a = srcp, *b = dstp;
            inet_ntop(AF_INET, &a->sin_addr, s, sizeof(s));
            inet_ntop(AF_INET, &b->sin_addr, d, sizeof(d));
            sp = ntohs(a->sin_port);
            dp = ntohs(b->sin_port);
        } else {
            const struct sockaddr_in6 *a = srcp, *b = dstp;
            inet_ntop(AF_INET6, &a->sin6_addr, s, sizeof(s));
            inet_ntop(AF_INET6, &b->sin6_addr, d, sizeof(d));
            sp = ntohs(a->sin6_port);
            dp = ntohs(b->sin6_port);
        }
        int n = snprintf(buf, cap, "PROXY %s %s %s %u %u\r\n", fam == AF_INET ? "TCP4" : "TCP6", s, d, sp, dp);
        return (n > 0 && (size_t)n < cap) ? (size_t)n : 0;
    }
    if (version != 2)
        return 0;
    size_t alen = fam == AF_INET ? 12 : fam == AF_INET6 ? 36 : 0;
    if (cap < 16 + alen)
        return 0;
    memcpy(buf, PP2_SIG, 12);
    buf[12] = fam == AF_UNSPEC ? 0x20 : 0x21; /* version 2; LOCAL when the addresses are unknown, else PROXY */
    buf[13] = fam == AF_INET ? 0x11 : fam == AF_INET6 ? 0x21 : 0x00; /* family, SOCK_STREAM */
    buf[14] = (char)(alen >> 8);
    buf[15] = (char)(alen & 0xff);
    char *p = buf + 16;
    if (fam == AF_INET) {
        const struct sockaddr_in *a = srcp, *b = dstp;
        memcpy(p, &a->sin_addr, 4);
        memcpy(p + 4, &b->sin_addr, 4);
        memcpy(p + 8, &a->sin_port, 2);
        memcpy(p + 10, &b->sin_port, 2);
    } else if (fam == AF_INET6) {
        const struct sockaddr_in6 *a = srcp, *b = dstp;
        memcpy(p, &a->sin6_addr, 16);
        memcpy(p + 16, &b->sin6_addr, 16);
        memcpy(p + 32, &a->sin6_port, 2);
        memcpy(p + 34, &b->sin6_port, 2);
    }
    return 16 + alen;
}
