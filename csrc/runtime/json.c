/* A strict JSON (RFC 8259) parser for config.json and state.json: the text is copied, strings are unescaped in
 * place (an unescaped string is never longer than its escaped form), and values become a flat array of nodes
 * linked by index. Depth and size are bounded; every error names line:column. Fuzzed by fuzz/json_fuzz.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zlayer/shim.h"

#define MAX_DEPTH 64
#define MAX_TEXT (16u << 20)

struct parser {
    struct jdoc *doc;
    size_t pos;
    struct zl_err *e;
    int depth;
};

static int perr(struct parser *p, const char *what)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < p->pos && i < p->doc->len; i++) {
        if (p->doc->orig[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    return zl_fail(p->e, "invalid JSON at line %zu column %zu: %s", line, col, what);
}

static void skip_ws(struct parser *p)
{
    const char *b = p->doc->buf;
    while (p->pos < p->doc->len && (b[p->pos] == ' ' || b[p->pos] == '\t' || b[p->pos] == '\n' || b[p->pos] == '\r'))
        p->pos++;
}

static int new_node(struct parser *p, enum jtype t)
{
    struct jdoc *d = p->doc;
    if (d->n == d->cap) {
        int ncap = d->cap ? d->cap * 2 : 64;
        if (ncap > (1 << 24))
            return perr(p, "too many values");
        struct jnode *nn = realloc(d->nodes, (size_t)ncap * sizeof(*nn));
        if (!nn)
            return perr(p, "out of memory");
        d->nodes = nn;
        d->cap = ncap;
    }
    struct jnode *n = &d->nodes[d->n];
    memset(n, 0, sizeof(*n));
    n->type = t;
    n->next = n->child = -1;
    n->raw_start = p->pos;
    return d->n++;
}

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

static int read_u4(struct parser *p, unsigned *out)
{
    const char *b = p->doc->buf;
    if (p->doc->len - p->pos < 4)
        return perr(p, "short \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(b[p->pos + (size_t)i]);
        if (h < 0)
            return perr(p, "bad hex digit in \\u escape");
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

/* Parses the string starting at the opening quote; result is unescaped in place and NUL-terminated. */
static int parse_string(struct parser *p, const char **out, size_t *outlen)
{
    char *b = p->doc->buf;
    size_t w = ++p->pos; /* after the quote */
    char *start = b + w;
    for (;;) {
        if (p->pos >= p->doc->len)
            return perr(p, "unterminated string");
        unsigned char c = (unsigned char)b[p->pos];
        if (c == '"') {
            b[w] = '\0';
            *outlen = (size_t)(b + w - start);
            *out = start;
            p->pos++;
            return 0;
        }
        if (c < 0x20)
            return perr(p, "control character in string");
        if (c != '\\') {
            b[w++] = (char)c;
            p->pos++;
            continue;
        }
        p->pos++;
        if (p->pos >= p->doc->len)
            return perr(p, "unterminated escape");
        char esc = b[p->pos++];
        switch (esc) {
        case '"': b[w++] = '"'; break;
        case '\\': b[w++] = '\\'; break;
        case '/': b[w++] = '/'; break;
        case 'b': b[w++] = '\b'; break;
        case 'f': b[w++] = '\f'; break;
        case 'n': b[w++] = '\n'; break;
        case 'r': b[w++] = '\r'; break;
        case 't': b[w++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (read_u4(p, &cp))
                return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->doc->len - p->pos < 2 || b[p->pos] != '\\' || b[p->pos + 1] != 'u')
                    return perr(p, "unpaired surrogate");
                p->pos += 2;
                if (read_u4(p, &lo))
                    return -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return perr(p, "bad low surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return perr(p, "unpaired surrogate");
            }
            /* 6 (or 12) escaped bytes become at most 4: the write head stays behind the read head */
            if (cp < 0x80) {
                b[w++] = (char)cp;
            } else if (cp < 0x800) {
                b[w++] = (char)(0xC0 | (cp >> 6));
                b[w++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                b[w++] = (char)(0xE0 | (cp >> 12));
                b[w++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                b[w++] = (char)(0x80 | (cp & 0x3F));
            } else {
                b[w++] = (char)(0xF0 | (cp >> 18));
                b[w++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                b[w++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                b[w++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return perr(p, "unknown escape");
        }
    }
}

static int parse_value(struct parser *p);

static int parse_number(struct parser *p, int idx)
{
    const char *b = p->doc->buf;
    size_t s = p->pos, len = p->doc->len;
    int neg = 0, frac = 0;
    if (p->pos < len && b[p->pos] == '-') {
        neg = 1;
        p->pos++;
    }
    if (p->pos >= len || b[p->pos] < '0' || b[p->pos] > '9')
        return perr(p, "bad number");
    if (b[p->pos] == '0') {
        p->pos++;
    } else {
        while (p->pos < len && b[p->pos] >= '0' && b[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < len && b[p->pos] == '.') {
        frac = 1;
        p->pos++;
        if (p->pos >= len || b[p->pos] < '0' || b[p->pos] > '9')
            return perr(p, "bad fraction");
        while (p->pos < len && b[p->pos] >= '0' && b[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < len && (b[p->pos] == 'e' || b[p->pos] == 'E')) {
        frac = 1;
        p->pos++;
        if (p->pos < len && (b[p->pos] == '+' || b[p->pos] == '-'))
            p->pos++;
        if (p->pos >= len || b[p->pos] < '0' || b[p->pos] > '9')
            return perr(p, "bad exponent");
        while (p->pos < len && b[p->pos] >= '0' && b[p->pos] <= '9')
            p->pos++;
    }
    char tmp[64];
    size_t n = p->pos - s;
    struct jnode *nd = &p->doc->nodes[idx];
    nd->is_neg = neg;
    if (n >= sizeof(tmp)) {
        nd->d = neg ? -1e308 : 1e308; /* absurdly long: keep a value, never an integer */
        return 0;
    }
    memcpy(tmp, b + s, n);
    tmp[n] = '\0';
    nd->d = strtod(tmp, NULL);
    if (!frac) {
        errno = 0;
        unsigned long long u = strtoull(tmp + neg, NULL, 10);
        if (errno == 0 && (!neg || u <= (1ULL << 63))) {
            nd->is_int = 1;
            nd->u = u;
        }
    }
    return 0;
}

static int parse_container(struct parser *p, int idx, char close)
{
    int last = -1;
    int count = 0;
    if (++p->depth > MAX_DEPTH)
        return perr(p, "nested too deeply");
    p->pos++; /* [ or { */
    skip_ws(p);
    if (p->pos < p->doc->len && p->doc->buf[p->pos] == close) {
        p->pos++;
        p->depth--;
        return 0;
    }
    for (;;) {
        const char *key = NULL;
        size_t klen = 0;
        skip_ws(p);
        if (close == '}') {
            if (p->pos >= p->doc->len || p->doc->buf[p->pos] != '"')
                return perr(p, "expected a member name");
            if (parse_string(p, &key, &klen))
                return -1;
            skip_ws(p);
            if (p->pos >= p->doc->len || p->doc->buf[p->pos] != ':')
                return perr(p, "expected ':'");
            p->pos++;
            skip_ws(p);
        }
        int child = parse_value(p);
        if (child < 0)
            return -1;
        p->doc->nodes[child].key = key;
        if (last < 0)
            p->doc->nodes[idx].child = child;
        else
            p->doc->nodes[last].next = child;
        last = child;
        count++;
        skip_ws(p);
        if (p->pos >= p->doc->len)
            return perr(p, "unexpected end of input");
        char c = p->doc->buf[p->pos];
        if (c == ',') {
            p->pos++;
            continue;
        }
        if (c == close) {
            p->pos++;
            break;
        }
        return perr(p, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    p->doc->nodes[idx].count = count;
    p->depth--;
    return 0;
}

static int lit(struct parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->doc->len - p->pos < n || memcmp(p->doc->buf + p->pos, word, n) != 0)
        return perr(p, "unexpected character");
    p->pos += n;
    return 0;
}

/* Returns the node index, or -1. */
static int parse_value(struct parser *p)
{
    skip_ws(p);
    if (p->pos >= p->doc->len) {
        perr(p, "unexpected end of input");
        return -1;
    }
    char c = p->doc->buf[p->pos];
    int idx, r = 0;
    switch (c) {
    case '{': idx = new_node(p, J_OBJ); if (idx < 0) return -1; r = parse_container(p, idx, '}'); break;
    case '[': idx = new_node(p, J_ARR); if (idx < 0) return -1; r = parse_container(p, idx, ']'); break;
    case '"':
        idx = new_node(p, J_STR);
        if (idx < 0)
            return -1;
        {
            const char *s;
            size_t l;
            r = parse_string(p, &s, &l);
            if (!r) {
                p->doc->nodes[idx].str = s;
                p->doc->nodes[idx].len = l;
            }
        }
        break;
    case 't': idx = new_node(p, J_TRUE); if (idx < 0) return -1; r = lit(p, "true"); break;
    case 'f': idx = new_node(p, J_FALSE); if (idx < 0) return -1; r = lit(p, "false"); break;
    case 'n': idx = new_node(p, J_NULL); if (idx < 0) return -1; r = lit(p, "null"); break;
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            idx = new_node(p, J_NUM);
            if (idx < 0)
                return -1;
            r = parse_number(p, idx);
        } else {
            perr(p, "unexpected character");
            return -1;
        }
    }
    if (r)
        return -1;
    p->doc->nodes[idx].raw_end = p->pos;
    return idx;
}

int json_parse(struct jdoc *doc, const char *text, size_t len, struct zl_err *e)
{
    memset(doc, 0, sizeof(*doc));
    if (len > MAX_TEXT)
        return zl_fail(e, "JSON document too large (%zu bytes)", len);
    doc->buf = malloc(len + 1);
    if (!doc->buf)
        return zl_fail(e, "out of memory");
    memcpy(doc->buf, text, len);
    doc->buf[len] = '\0';
    doc->orig = text;
    doc->len = len;
    struct parser p = {.doc = doc, .pos = 0, .e = e, .depth = 0};
    int root = parse_value(&p);
    if (root < 0)
        goto fail;
    skip_ws(&p);
    if (p.pos != len) {
        perr(&p, "trailing characters after the document");
        goto fail;
    }
    doc->orig = NULL; /* callers may free their text */
    return 0;
fail:
    json_free(doc);
    return -1;
}

void json_free(struct jdoc *doc)
{
    free(doc->buf);
    free(doc->nodes);
    memset(doc, 0, sizeof(*doc));
}

const struct jnode *json_root(const struct jdoc *doc)
{
    return doc->n > 0 ? &doc->nodes[0] : NULL;
}

const struct jnode *json_first(const struct jdoc *doc, const struct jnode *n)
{
    if (!n || (n->type != J_ARR && n->type != J_OBJ) || n->child < 0)
        return NULL;
    return &doc->nodes[n->child];
}

const struct jnode *json_next(const struct jdoc *doc, const struct jnode *n)
{
    return n && n->next >= 0 ? &doc->nodes[n->next] : NULL;
}

const struct jnode *json_get(const struct jdoc *doc, const struct jnode *obj, const char *key)
{
    if (!obj || obj->type != J_OBJ)
        return NULL;
    for (const struct jnode *c = json_first(doc, obj); c; c = json_next(doc, c))
        if (c->key && strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

int json_read_file(struct jdoc *doc, const char *path, struct zl_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return zl_fail_errno(e, "cannot open %s", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size > (off_t)MAX_TEXT) {
        close(fd);
        return zl_fail(e, "%s: not a readable file or larger than 16 MiB", path);
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *text = malloc(cap);
    if (!text) {
        close(fd);
        return zl_fail(e, "out of memory");
    }
    for (;;) {
        if (len == cap) {
            close(fd);
            free(text);
            return zl_fail(e, "%s changed while being read", path);
        }
        ssize_t r = read(fd, text + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = errno;
            close(fd);
            free(text);
            errno = err;
            return zl_fail_errno(e, "cannot read %s", path);
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    struct zl_err pe;
    int rc = json_parse(doc, text, len, &pe);
    free(text);
    if (rc)
        return zl_fail(e, "%s: %s", path, pe.msg);
    return 0;
}
