/* ACME http-01 challenges: tokens Python sets while an order is pending, answered on every HTTP listener before
 * routing (GET /.well-known/acme-challenge/TOKEN gives the key authorization). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "l7_int.h"

int l7_set_challenge(l7_proxy_t *p, const char *token, const char *keyauth)
{
    if (strlen(token) >= 256 || strlen(keyauth) >= 512)
        return -1;
    pthread_mutex_lock(&p->mu);
    chal_t *c;
    for (c = p->chal; c; c = c->next)
        if (strcmp(c->token, token) == 0)
            break;
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c) {
            pthread_mutex_unlock(&p->mu);
            return -1;
        }
        c->next = p->chal;
        p->chal = c;
        atomic_fetch_add(&p->nchal, 1);
    }
    snprintf(c->token, sizeof(c->token), "%s", token);
    snprintf(c->keyauth, sizeof(c->keyauth), "%s", keyauth);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void l7_remove_challenge(l7_proxy_t *p, const char *token)
{
    pthread_mutex_lock(&p->mu);
    for (chal_t **pp = &p->chal; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->token, token) == 0) {
            chal_t *c = *pp;
            *pp = c->next;
            free(c);
            atomic_fetch_sub(&p->nchal, 1);
            break;
        }
    }
    pthread_mutex_unlock(&p->mu);
}

int acme_lookup(l7_proxy_t *p, const char *path, size_t pl, char *body, size_t cap)
{
    static const char WK[] = "/.well-known/acme-challenge/";
    if (atomic_load_explicit(&p->nchal, memory_order_relaxed) == 0 || pl <= sizeof(WK) - 1 ||
        memcmp(path, WK, sizeof(WK) - 1) != 0)
        return 0;
    const char *tok = path + sizeof(WK) - 1;
    size_t tl = pl - (sizeof(WK) - 1);
    int found = 0;
    pthread_mutex_lock(&p->mu);
    for (chal_t *ch = p->chal; ch && !found; ch = ch->next)
        if (strlen(ch->token) == tl && memcmp(ch->token, tok, tl) == 0) {
            snprintf(body, cap, "%s", ch->keyauth);
            found = 1;
        }
    pthread_mutex_unlock(&p->mu);
    return found;
}

void acme_free(chal_t *c)
{
    while (c) {
        chal_t *n = c->next;
        free(c);
        c = n;
    }
}
