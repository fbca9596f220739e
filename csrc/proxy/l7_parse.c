/* A strict, small HTTP/1.x head parser (requests from clients, responses from backends) and a chunked-body framer.
 * Requests end every line with CRLF (responses may use a bare LF, as some upstreams do); no obsolete line folding,
 * token-only header names, no control bytes in values; a request with both Content-Length and Transfer-Encoding,
 * two Content-Lengths, or a coding other than "chunked" is rejected. */
#include <string.h>
#include <strings.h>

#include "l7.h"

static const unsigned char TCHAR[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1,
    ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1,
    ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1,
    ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1,
    ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static int name_is(const char *b, const l7_hdr_t *h, const char *name, size_t n)
{
    return h->name_len == n && strncasecmp(b + h->name_off, name, n) == 0;
}

static int parse_digits(const char *s, size_t n, int64_t *out)
{
    int64_t v = 0;
    if (n == 0 || n > 18)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* Connection: comma-separated tokens. */
static void conn_tokens(const char *v, size_t n, int *close, int *keep, int *upgrade)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        size_t l = i - s;
        if (l == 5 && strncasecmp(v + s, "close", 5) == 0)
            *close = 1;
        else if (l == 10 && strncasecmp(v + s, "keep-alive", 10) == 0)
            *keep = 1;
        else if (upgrade && l == 7 && strncasecmp(v + s, "upgrade", 7) == 0)
            *upgrade = 1;
    }
}

/* Finds the end of the head (the first empty line). Requests must end every line with CRLF; a response (lf_ok) may
 * end lines with a bare LF, as nginx and curl accept from upstreams, and *bare_lf says one did.
 * Returns head length, 0, or error. */
static int find_head(const char *buf, size_t len, int lf_ok, int *bare_lf)
{
    size_t i = 0;
    size_t lim = len < L7_MAX_HEAD ? len : L7_MAX_HEAD;
    *bare_lf = 0;
    for (;;) {
        const char *nl = memchr(buf + i, '\n', lim - i);
        if (nl == NULL)
            return len >= L7_MAX_HEAD ? L7_TOO_BIG : L7_NEED_MORE;
        size_t at = (size_t)(nl - buf);
        int cr = at > i && buf[at - 1] == '\r';
        if (!cr) {
            if (!lf_ok)
                return L7_BAD;
            *bare_lf = 1;
        }
        if (at - i == (size_t)cr) /* empty line */
            return i == 0 ? L7_BAD : (int)(at + 1);
        i = at + 1;
        if (i >= lim)
            return len >= L7_MAX_HEAD ? L7_TOO_BIG : L7_NEED_MORE;
    }
}

/* Length of the line at `pos` without its end (CRLF or LF) and, in *next, where the next line starts. */
static size_t line_at(const char *buf, size_t pos, size_t head, size_t *next)
{
    const char *nl = memchr(buf + pos, '\n', head - pos);
    size_t end = (size_t)(nl - buf);
    *next = end + 1;
    return end - pos - (end > pos && buf[end - 1] == '\r');
}

/* Parses header lines from `pos` to the empty line. Returns 0 or an error. */
static int parse_headers(const char *buf, size_t pos, size_t head, l7_hdr_t *hdr, int *nhdr)
{
    int n = 0;
    for (;;) {
        const char *line = buf + pos;
        size_t next;
        size_t ll = line_at(buf, pos, head, &next);
        if (ll == 0)
            break;
        size_t k = 0;
        while (k < ll && TCHAR[(unsigned char)line[k]])
            k++;
        if (k == 0 || k == ll || line[k] != ':')
            return L7_BAD; /* includes obs-fold (line starts with SP/HT) and space before ':' */
        if (n == L7_MAX_HEADERS)
            return L7_TOO_BIG;
        size_t vs = k + 1;
        while (vs < ll && (line[vs] == ' ' || line[vs] == '\t'))
            vs++;
        size_t ve = ll;
        while (ve > vs && (line[ve - 1] == ' ' || line[ve - 1] == '\t'))
            ve--;
        for (size_t j = vs; j < ve; j++) {
            unsigned char c = (unsigned char)line[j];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return L7_BAD;
        }
        hdr[n].name_off = (uint16_t)pos;
        hdr[n].name_len = (uint16_t)k;
        hdr[n].val_off = (uint16_t)(pos + vs);
        hdr[n].val_len = (uint16_t)(ve - vs);
        hdr[n].line_off = (uint16_t)pos;
        hdr[n].line_len = (uint16_t)(next - pos);
        n++;
        pos = next;
    }
    *nhdr = n;
    return 0;
}

static int parse_version(const char *v, size_t n, int *minor)
{
    if (n != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1'))
        return -1;
    *minor = v[7] - '0';
    return 0;
}

/* host [":" port] of an http(s) URI (RFC 3986 reg-name, IPv4, [IPv6]); no userinfo, which RFC 9110 §4.2.4 says to
 * treat as an error. */
static int valid_authority(const char *a, size_t n)
{
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)a[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch && strchr("-._~:[]%!$&'()*+,;=", ch))))
            return -1;
    }
    return 0;
}

/* The request-target buf[ts..te): origin-form ("/path?q"), asterisk-form ("*") or absolute-form
 * ("http://authority/path?q", RFC 9112 §3.2.2, which a server must accept). Authority-form (CONNECT) is refused. */
static int parse_target(const char *buf, size_t ts, size_t te, l7_req_t *r)
{
    r->auth_off = r->auth_len = 0;
    r->path_off = (uint16_t)ts;
    r->path_len = (uint16_t)(te - ts);
    if (buf[ts] == '/' || (te - ts == 1 && buf[ts] == '*'))
        return 0;
    size_t s = ts;
    if (te - s > 7 && strncasecmp(buf + s, "http://", 7) == 0)
        s += 7;
    else if (te - s > 8 && strncasecmp(buf + s, "https://", 8) == 0)
        s += 8;
    else
        return -1;
    size_t e = s;
    while (e < te && buf[e] != '/' && buf[e] != '?')
        e++;
    if (valid_authority(buf + s, e - s) < 0)
        return -1;
    r->auth_off = (uint16_t)s;
    r->auth_len = (uint16_t)(e - s);
    r->path_off = (uint16_t)e;
    r->path_len = (uint16_t)(te - e);
    return 0;
}

/* METHOD SP request-target SP HTTP/1.x, the line being buf[0..ll). */
static int parse_request_line(const char *buf, size_t ll, l7_req_t *r)
{
    size_t m = 0;
    while (m < ll && TCHAR[(unsigned char)buf[m]])
        m++;
    if (m == 0 || m >= ll || buf[m] != ' ')
        return L7_BAD;
    size_t ts = m + 1, te = ts;
    while (te < ll && (unsigned char)buf[te] > 0x20 && (unsigned char)buf[te] < 0x7f)
        te++;
    if (te == ts || te >= ll || buf[te] != ' ' || parse_target(buf, ts, te, r) < 0 ||
        parse_version(buf + te + 1, ll - te - 1, &r->minor) < 0)
        return L7_BAD;
    r->method_len = (uint16_t)m;
    r->target_off = (uint16_t)ts;
    r->target_len = (uint16_t)(te - ts);
    r->is_head = m == 4 && memcmp(buf, "HEAD", 4) == 0;
    return 0;
}

/* The fields the proxy acts on: framing (one Content-Length or "chunked", never both), Host (exactly one for
 * HTTP/1.1), Connection tokens, the first X-Forwarded-For. */
static int request_fields(const char *buf, l7_req_t *r)
{
    int te_seen = 0;
    r->content_length = -1;
    r->chunked = r->conn_close = r->conn_keepalive = r->conn_upgrade = 0;
    r->host_idx = r->xff_idx = -1;
    for (int i = 0; i < r->nhdr; i++) {
        const l7_hdr_t *h = &r->hdr[i];
        const char *v = buf + h->val_off;
        if (name_is(buf, h, "content-length", 14)) {
            if (r->content_length >= 0 || parse_digits(v, h->val_len, &r->content_length) < 0)
                return L7_BAD;
        } else if (name_is(buf, h, "transfer-encoding", 17)) {
            if (te_seen || h->val_len != 7 || strncasecmp(v, "chunked", 7) != 0)
                return L7_BAD;
            te_seen = 1;
        } else if (name_is(buf, h, "host", 4)) {
            if (r->host_idx >= 0)
                return L7_BAD;
            r->host_idx = i;
        } else if (name_is(buf, h, "connection", 10)) {
            conn_tokens(v, h->val_len, &r->conn_close, &r->conn_keepalive, &r->conn_upgrade);
        } else if (name_is(buf, h, "x-forwarded-for", 15) && r->xff_idx < 0) {
            r->xff_idx = i;
        }
    }
    if ((te_seen && (r->content_length >= 0 || r->minor == 0)) || (r->minor == 1 && r->host_idx < 0))
        return L7_BAD;
    r->chunked = te_seen;
    return 0;
}

int l7_parse_request(const char *buf, size_t len, l7_req_t *r)
{
    int bare_lf;
    int head = find_head(buf, len, 0, &bare_lf);
    if (head <= 0)
        return head;
    size_t first;
    size_t ll = line_at(buf, 0, (size_t)head, &first);
    if (parse_request_line(buf, ll, r) < 0)
        return L7_BAD;
    int rc = parse_headers(buf, first, (size_t)head, r->hdr, &r->nhdr);
    if (rc < 0)
        return rc;
    if (request_fields(buf, r) < 0)
        return L7_BAD;
    r->head_len = (size_t)head;
    return head;
}

int l7_parse_response(const char *buf, size_t len, l7_resp_t *r)
{
    int head = find_head(buf, len, 1, &r->bare_lf);
    if (head <= 0)
        return head;
    size_t first;
    size_t ll = line_at(buf, 0, (size_t)head, &first);
    r->status_len = (uint16_t)ll;
    if (ll < 12 || parse_version(buf, 8, &r->minor) < 0 || buf[8] != ' ')
        return L7_BAD;
    if (buf[9] < '1' || buf[9] > '5' || buf[10] < '0' || buf[10] > '9' || buf[11] < '0' || buf[11] > '9')
        return L7_BAD;
    if (ll > 12 && buf[12] != ' ')
        return L7_BAD;
    for (size_t j = 13; j < ll; j++) { /* the reason phrase goes to the client as it is: no control bytes */
        unsigned char c = (unsigned char)buf[j];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return L7_BAD;
    }
    r->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    int rc = parse_headers(buf, first, (size_t)head, r->hdr, &r->nhdr);
    if (rc < 0)
        return L7_BAD;
    r->content_length = -1;
    r->chunked = r->conn_close = r->conn_keepalive = 0;
    for (int i = 0; i < r->nhdr; i++) {
        const l7_hdr_t *h = &r->hdr[i];
        const char *v = buf + h->val_off;
        if (name_is(buf, h, "content-length", 14)) {
            int64_t cl;
            if (parse_digits(v, h->val_len, &cl) < 0 || (r->content_length >= 0 && r->content_length != cl))
                return L7_BAD;
            r->content_length = cl;
        } else if (name_is(buf, h, "transfer-encoding", 17)) {
            if (h->val_len != 7 || strncasecmp(v, "chunked", 7) != 0)
                return L7_BAD;
            r->chunked = 1;
        } else if (name_is(buf, h, "connection", 10)) {
            conn_tokens(v, h->val_len, &r->conn_close, &r->conn_keepalive, NULL);
        }
    }
    if (r->chunked)
        r->content_length = -1;
    r->head_len = (size_t)head;
    return head;
}

enum { CK_SIZE, CK_EXT, CK_SIZE_LF, CK_DATA, CK_DATA_CR, CK_DATA_LF, CK_TR_START, CK_TR_LINE, CK_TR_LF, CK_END_LF,
       CK_DONE };

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

ssize_t l7_chunk_feed(l7_chunk_t *c, const char *buf, size_t len, int *done)
{
    return l7_chunk_decode(c, buf, len, NULL, 0, NULL, done);
}

/* One byte of everything but chunk data: the next state, or -1 when it is malformed. */
static int ck_byte(l7_chunk_t *c, char ch)
{
    int h;
    switch (c->state) {
    case CK_SIZE:
        if ((h = hexval(ch)) >= 0) {
            c->remaining = c->remaining * 16 + (uint64_t)h;
            return ++c->digits > 15 ? -1 : CK_SIZE;
        }
        if (c->digits == 0)
            return -1;
        return ch == '\r' ? CK_SIZE_LF : (ch == ';' || ch == ' ' || ch == '\t') ? CK_EXT : -1;
    case CK_EXT:
        if (ch == '\n' || ((unsigned char)ch < 0x20 && ch != '\t' && ch != '\r'))
            return -1;
        return ch == '\r' ? CK_SIZE_LF : CK_EXT;
    case CK_SIZE_LF:
        return ch != '\n' ? -1 : c->remaining ? CK_DATA : CK_TR_START;
    case CK_DATA_CR:
        return ch == '\r' ? CK_DATA_LF : -1;
    case CK_DATA_LF:
        c->digits = 0;
        c->remaining = 0;
        return ch == '\n' ? CK_SIZE : -1;
    case CK_TR_START: /* a trailer line (at most 64) or the final CRLF */
        if (ch == '\r')
            return CK_END_LF;
        return c->digits++ > 64 ? -1 : CK_TR_LINE;
    case CK_TR_LINE:
        return ch == '\n' ? -1 : ch == '\r' ? CK_TR_LF : CK_TR_LINE;
    case CK_TR_LF:
        return ch == '\n' ? CK_TR_START : -1;
    case CK_END_LF:
        return ch == '\n' ? CK_DONE : -1;
    }
    return -1;
}

/* Chunk data at buf[0..n): how much of it belongs to the current chunk (and fits in out). */
static size_t ck_data(l7_chunk_t *c, const char *buf, size_t n, char *out, size_t cap, size_t *olen)
{
    if (n > c->remaining)
        n = (size_t)c->remaining;
    if (out && n > cap - *olen)
        n = cap - *olen;
    if (out) {
        memcpy(out + *olen, buf, n);
        *olen += n;
    }
    c->remaining -= n;
    if (c->remaining == 0)
        c->state = CK_DATA_CR;
    return n;
}

ssize_t l7_chunk_decode(l7_chunk_t *c, const char *buf, size_t len, char *out, size_t cap, size_t *olen, int *done)
{
    size_t i = 0;
    *done = c->state == CK_DONE;
    while (i < len && !*done) {
        if (c->state == CK_DATA) {
            size_t n = ck_data(c, buf + i, len - i, out, cap, olen);
            if (n == 0)
                break; /* out is full */
            i += n;
            continue;
        }
        int next = ck_byte(c, buf[i++]);
        if (next < 0)
            return -1;
        c->state = next;
        *done = next == CK_DONE;
    }
    return (ssize_t)i;
}
