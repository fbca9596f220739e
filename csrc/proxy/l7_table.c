/* Route tables: built whole from Python's definitions (l7_apply), swapped under the proxy's lock and read by the
 * workers without one (each holds a reference); choosing a backend of a group; health; per-route stats. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "zlayer/netaddr.h"
#include "l7_int.h"

static const double BUCKETS[L7_NBUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};

void table_unref(table_t *t)
{
    if (t == NULL || atomic_fetch_sub(&t->ref, 1) != 1)
        return;
    for (size_t i = 0; i < t->nr; i++) {
        free(t->r[i].host);
        free(t->r[i].prefix);
    }
    for (size_t i = 0; i < t->ng; i++) {
        for (size_t j = 0; j < t->g[i].n; j++) {
            bcount_t *c = t->g[i].b[j].cnt;
            if (c != NULL && atomic_fetch_sub(&c->ref, 1) == 1)
                free(c);
        }
        free(t->g[i].b);
    }
    free(t->r);
    free(t->g);
    free(t);
}

table_t *table_get(l7_proxy_t *p)
{
    pthread_mutex_lock(&p->mu);
    table_t *t = p->t;
    if (t)
        atomic_fetch_add(&t->ref, 1);
    pthread_mutex_unlock(&p->mu);
    return t;
}

/* under p->mu */
static rstats_t *stats_for(l7_proxy_t *p, const char *key)
{
    for (rstats_t *s = p->stats; s; s = s->next)
        if (strcmp(s->key, key) == 0)
            return s;
    rstats_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    snprintf(s->key, sizeof(s->key), "%s", key);
    s->next = p->stats;
    p->stats = s;
    return s;
}

void stats_free(rstats_t *s)
{
    while (s) {
        rstats_t *n = s->next;
        free(s);
        s = n;
    }
}

/* The in-flight count of backend b of group name: the one the same backend has in table old, or a new one. */
static bcount_t *count_for(const table_t *old, const char *name, const backend_t *b)
{
    for (size_t i = 0; old != NULL && i < old->ng; i++) {
        if (strcmp(old->g[i].name, name) != 0)
            continue;
        for (size_t j = 0; j < old->g[i].n; j++) {
            const backend_t *o = &old->g[i].b[j];
            if (o->cnt != NULL && o->alen == b->alen && memcmp(&o->addr, &b->addr, b->alen) == 0) {
                atomic_fetch_add(&o->cnt->ref, 1);
                return o->cnt;
            }
        }
    }
    bcount_t *c = calloc(1, sizeof(*c));
    if (c != NULL)
        atomic_init(&c->ref, 1);
    return c;
}

static int build_groups(table_t *t, const table_t *old, const char *const *names,
                        const l7_backend_def_t *const *groups, const size_t *ngb, size_t ngroups, char *err,
                        size_t errlen)
{
    for (size_t i = 0; i < ngroups; i++, t->ng++) {
        group_t *g = &t->g[i];
        snprintf(g->name, sizeof(g->name), "%s", names[i]);
        g->b = calloc(ngb[i] + 1, sizeof(backend_t));
        if (!g->b) {
            snprintf(err, errlen, "out of memory building the route table");
            return -1;
        }
        g->n = ngb[i];
        for (size_t j = 0; j < ngb[i]; j++) {
            backend_t *b = &g->b[j];
            const l7_backend_def_t *d = &groups[i][j];
            if (zl_parse_addr(d->host, d->port, &b->addr, &b->alen) < 0) {
                snprintf(err, errlen, "backend %.64s:%d of %.128s is not a numeric IP address and port", d->host,
                         d->port, names[i]);
                t->ng++;
                return -1;
            }
            snprintf(b->name, sizeof(b->name), "%s:%d", d->host, d->port);
            atomic_init(&b->healthy, d->healthy ? 1 : 0);
            b->cnt = count_for(old, g->name, b);
            if (b->cnt == NULL) {
                snprintf(err, errlen, "out of memory building the route table");
                t->ng++;
                return -1;
            }
        }
    }
    return 0;
}

/* under p->mu (stats_for) */
static int build_route(l7_proxy_t *p, table_t *t, const l7_route_def_t *d, char *err, size_t errlen)
{
    route_t *r = &t->r[t->nr];
    if (d->group < 0 || (size_t)d->group >= t->ng) {
        snprintf(err, errlen, "route %.128s names backend group %d of %zu", d->key, d->group, t->ng);
        return -1;
    }
    const char *h = d->host ? d->host : "";
    r->port = d->port;
    if (h[0] == 0 || strcmp(h, "*") == 0) {
        r->hostkind = 0;
        r->host = strdup("");
    } else if (h[0] == '*' && h[1] == '.') {
        r->hostkind = 1;
        r->host = strdup(h + 1); /* ".suffix" */
    } else {
        r->hostkind = 2;
        r->host = strdup(h);
    }
    r->prefix = strdup(d->prefix && d->prefix[0] ? d->prefix : "/");
    r->st = stats_for(p, d->key);
    t->nr++;
    if (!r->host || !r->prefix || !r->st) {
        snprintf(err, errlen, "out of memory building the route table");
        return -1;
    }
    r->hostlen = strlen(r->host);
    r->plen = strlen(r->prefix);
    r->strip = d->strip_prefix;
    r->g = &t->g[d->group];
    if (d->strategy == L7_LEAST_CONNECTIONS)
        r->g->least = 1;
    return 0;
}

int l7_apply(l7_proxy_t *p, const l7_route_def_t *routes, size_t nroutes, const char *const *group_names,
             const l7_backend_def_t *const *groups, const size_t *ngb, size_t ngroups, char *err, size_t errlen)
{
    table_t *t = calloc(1, sizeof(*t));
    if (t) {
        atomic_init(&t->ref, 1);
        t->r = calloc(nroutes + 1, sizeof(route_t));
        t->g = calloc(ngroups + 1, sizeof(group_t));
    }
    if (!t || !t->r || !t->g) {
        snprintf(err, errlen, "out of memory building the route table");
        table_unref(t);
        return -1;
    }
    table_t *prev = table_get(p); /* counts of backends it shares with the new table carry over */
    int rc = build_groups(t, prev, group_names, groups, ngb, ngroups, err, errlen);
    table_unref(prev);
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < nroutes && rc == 0; i++)
        rc = build_route(p, t, &routes[i], err, errlen);
    table_t *old = rc == 0 ? p->t : t;
    if (rc == 0) {
        p->t = t;
        atomic_fetch_add(&p->gen, 1);
    }
    pthread_mutex_unlock(&p->mu);
    table_unref(old);
    return rc;
}

int l7_set_health(l7_proxy_t *p, const char *group, const char *host, int port, int healthy)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int found = -1;
    if (zl_parse_addr(host, port, &ss, &sl) < 0)
        return -1;
    table_t *t = table_get(p);
    if (!t)
        return -1;
    for (size_t i = 0; i < t->ng; i++) {
        if (strcmp(t->g[i].name, group) != 0)
            continue;
        for (size_t j = 0; j < t->g[i].n; j++) {
            backend_t *b = &t->g[i].b[j];
            if (b->alen == sl && memcmp(&b->addr, &ss, sl) == 0) {
                atomic_store(&b->healthy, healthy ? 1 : 0);
                if (healthy)
                    atomic_store(&b->ejected_until_ms, 0);
                found = 0;
            }
        }
    }
    table_unref(t);
    return found;
}

static void stats_copy(const rstats_t *s, l7_route_stats_t *o)
{
    o->requests = atomic_load_explicit(&s->requests, memory_order_relaxed);
    for (int i = 0; i < 5; i++)
        o->status[i] = atomic_load_explicit(&s->status[i], memory_order_relaxed);
    o->bytes_in = atomic_load_explicit(&s->bytes_in, memory_order_relaxed);
    o->bytes_out = atomic_load_explicit(&s->bytes_out, memory_order_relaxed);
    o->active = atomic_load_explicit(&s->active, memory_order_relaxed);
    for (int i = 0; i <= L7_NBUCKETS; i++)
        o->buckets[i] = atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    o->latency_ns = atomic_load_explicit(&s->latency_ns, memory_order_relaxed);
}

size_t l7_stats(l7_proxy_t *p, char (*keys)[128], l7_route_stats_t *out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&p->mu);
    for (rstats_t *s = p->stats; s; s = s->next, n++) {
        if (n >= cap)
            continue;
        memcpy(keys[n], s->key, 128);
        stats_copy(s, &out[n]);
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

size_t l7_backend_active(l7_proxy_t *p, char (*keys)[192], uint64_t *active, size_t cap)
{
    size_t n = 0;
    table_t *t = table_get(p);
    if (!t)
        return 0;
    for (size_t i = 0; i < t->ng; i++)
        for (size_t j = 0; j < t->g[i].n; j++, n++)
            if (n < cap) {
                snprintf(keys[n], 192, "%s|%s", t->g[i].name, t->g[i].b[j].name);
                active[n] = atomic_load(&t->g[i].b[j].cnt->active);
            }
    table_unref(t);
    return n;
}

void route_account(rstats_t *s, int ok, int status, const struct timespec *t0, uint64_t in, uint64_t out)
{
    atomic_fetch_sub_explicit(&s->active, 1, memory_order_relaxed);
    if (ok) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        uint64_t ns =
            (uint64_t)(t1.tv_sec - t0->tv_sec) * 1000000000ull + (uint64_t)t1.tv_nsec - (uint64_t)t0->tv_nsec;
        double sec = (double)ns / 1e9;
        int b = 0;
        while (b < L7_NBUCKETS && sec > BUCKETS[b])
            b++;
        atomic_fetch_add_explicit(&s->requests, 1, memory_order_relaxed);
        if (status >= 100 && status < 600)
            atomic_fetch_add_explicit(&s->status[status / 100 - 1], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->buckets[b], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->latency_ns, ns, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&s->bytes_in, in, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->bytes_out, out, memory_order_relaxed);
}

backend_t *backend_pick(group_t *g, double now, const backend_t *avoid)
{
    if (!g || g->n == 0)
        return NULL;
    uint64_t now_ms = (uint64_t)(now * 1000.0);
    uint64_t start = atomic_fetch_add_explicit(&g->rr, 1, memory_order_relaxed);
    backend_t *fallback = NULL, *best = NULL;
    uint64_t best_active = UINT64_MAX;
    for (size_t k = 0; k < g->n; k++) {
        backend_t *b = &g->b[(start + k) % g->n];
        if (b == avoid || !atomic_load_explicit(&b->healthy, memory_order_relaxed))
            continue;
        if (atomic_load_explicit(&b->ejected_until_ms, memory_order_relaxed) > now_ms) {
            if (!fallback)
                fallback = b;
            continue;
        }
        if (!g->least)
            return b;
        uint64_t a = atomic_load_explicit(&b->cnt->active, memory_order_relaxed);
        if (a < best_active) {
            best = b;
            best_active = a;
        }
    }
    return best ? best : fallback;
}

void backend_eject(backend_t *b, double now)
{
    atomic_store(&b->ejected_until_ms, (uint64_t)((now + EJECT_SECONDS) * 1000.0));
}

static int host_matches(const route_t *r, const char *host, size_t hl)
{
    if (r->hostkind == 2)
        return r->hostlen == hl && strncasecmp(r->host, host, hl) == 0;
    if (r->hostkind == 1)
        return hl > r->hostlen && strncasecmp(host + hl - r->hostlen, r->host, r->hostlen) == 0;
    return 1;
}

/* a prefix matches whole path segments: "/api" takes "/api", "/api/x" and "/api?q", not "/apiary" */
static int prefix_matches(const route_t *r, const char *path, size_t pl)
{
    if (pl < r->plen || memcmp(path, r->prefix, r->plen) != 0)
        return 0;
    return r->plen <= 1 || r->prefix[r->plen - 1] == '/' || pl == r->plen || path[r->plen] == '/' ||
           path[r->plen] == '?';
}

const route_t *route_match(const table_t *t, int port, const char *host, size_t hl, const char *path, size_t pl)
{
    const route_t *best = NULL;
    int bestkind = -1;
    size_t bestlen = 0;
    for (size_t i = 0; i < t->nr; i++) {
        const route_t *r = &t->r[i];
        if (r->port != port || r->hostkind < bestkind || !host_matches(r, host, hl) || !prefix_matches(r, path, pl))
            continue;
        if (r->hostkind > bestkind || r->plen > bestlen) {
            best = r;
            bestkind = r->hostkind;
            bestlen = r->plen;
        }
    }
    return best;
}
