/* What an HTTP/1.1 request and an h2 stream do alike on their way to a backend and back: the host they route on,
 * the forwarding headers the backend gets, and how the response body is framed and moved. */
#include <string.h>

#include "l7_int.h"

size_t host_len(const char *host, size_t hl)
{
    if (hl && host[0] == '[') {
        const char *rb = memchr(host, ']', hl);
        return rb ? (size_t)(rb - host + 1) : hl;
    }
    const char *colon = hl ? memchr(host, ':', hl) : NULL;
    return colon ? (size_t)(colon - host) : hl;
}

#define PUT(p, n) (memcpy(out + l, (p), (n)), l += (n))
#define PUTS(lit) PUT(lit, sizeof(lit) - 1)

size_t forwarded(char *out, const char *xff, size_t xl, const char *ip, const char *host, size_t hl, int tls)
{
    size_t l = 0, il = strlen(ip);
    int six = memchr(ip, ':', il) != NULL;
    PUTS("X-Forwarded-For: ");
    if (xl) {
        PUT(xff, xl);
        PUTS(", ");
    }
    PUT(ip, il);
    if (tls)
        PUTS("\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ");
    else
        PUTS("\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
    PUT(host, hl);
    PUTS("\r\nForwarded: for=");
    if (six)
        PUTS("\"[");
    PUT(ip, il);
    if (six)
        PUTS("]\"");
    PUTS(";host=\"");
    PUT(host, hl);
    if (tls)
        PUTS("\";proto=https\r\n");
    else
        PUTS("\";proto=http\r\n");
    return l;
}

#undef PUT
#undef PUTS

int resp_mode(const l7_resp_t *r, int is_head, int *up_keep)
{
    *up_keep = r->minor == 1 ? !r->conn_close : r->conn_keepalive && !r->conn_close;
    if (is_head || r->status == 204 || r->status == 304)
        return RS_NONE;
    if (r->chunked)
        return RS_CHUNKED;
    if (r->content_length >= 0)
        return RS_LENGTH;
    *up_keep = 0;
    return RS_CLOSE;
}

ssize_t body_take(int mode, int64_t *left, l7_chunk_t *ck, const char *in, size_t n, char *out, size_t cap,
                  size_t *olen, int *done)
{
    *done = 0;
    if (mode == RS_CHUNKED)
        return out ? l7_chunk_decode(ck, in, n, out, cap, olen, done) : l7_chunk_feed(ck, in, n, done);
    size_t take = n;
    if (out && take > cap - *olen)
        take = cap - *olen;
    if (mode == RS_LENGTH) {
        if ((uint64_t)take > (uint64_t)*left)
            take = (size_t)*left;
        *left -= (int64_t)take;
        *done = *left == 0;
    }
    if (out) {
        memcpy(out + *olen, in, take);
        *olen += take;
    }
    return (ssize_t)take;
}
