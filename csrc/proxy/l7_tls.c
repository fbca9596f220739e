/* TLS of client connections: certificates chosen by SNI (exact name, then *.suffix, else the first), ALPN (h2 or
 * http/1.1), and reads and writes with the contracts the relays expect. */
#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "l7_int.h"

/* under p->mu */
static SSL_CTX *cert_lookup(l7_proxy_t *p, const char *name)
{
    if (p->ncerts == 0)
        return NULL;
    size_t nl = name ? strlen(name) : 0;
    for (size_t i = 0; i < p->ncerts && name; i++)
        if (strcasecmp(p->certs[i].name, name) == 0)
            return p->certs[i].ctx;
    for (size_t i = 0; i < p->ncerts && name; i++) {
        const char *cn = p->certs[i].name;
        size_t cl = strlen(cn);
        if (cn[0] == '*' && cn[1] == '.' && nl > cl - 1 && strcasecmp(name + nl - (cl - 1), cn + 1) == 0)
            return p->certs[i].ctx;
    }
    return p->certs[0].ctx;
}

static int on_sni(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    l7_proxy_t *p = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    pthread_mutex_lock(&p->mu);
    SSL_CTX *ctx = cert_lookup(p, name);
    if (ctx && ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx); /* copies the certificate state: only when SNI picks another one */
    pthread_mutex_unlock(&p->mu);
    return ctx ? SSL_TLSEXT_ERR_OK : SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char H1[] = "\x02h2\x08http/1.1"; /* h2 is served by l7_h2.c */
    if (SSL_select_next_proto((unsigned char **)out, outlen, H1, sizeof(H1) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *tls_new_ctx(l7_proxy_t *p)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    /* Resumption by stateless tickets only: no per-handshake insert into (and periodic flush of) a locked cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"zlayer-l7", 9);
    SSL_CTX_set_read_ahead(ctx, 1); /* one read() per burst of records, not a header read then a body read */
    SSL_CTX_set_tlsext_servername_callback(ctx, on_sni);
    SSL_CTX_set_tlsext_servername_arg(ctx, p);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    return ctx;
}

void tls_free_certs(cert_t *c, size_t n)
{
    for (size_t j = 0; j < n; j++)
        SSL_CTX_free(c[j].ctx); /* connections hold their own reference */
    free(c);
}

static int load_cert(l7_proxy_t *p, cert_t *t, const char *domain, const char *cert, const char *key, char *err,
                     size_t errlen)
{
    snprintf(t->name, sizeof(t->name), "%s", domain);
    t->ctx = tls_new_ctx(p);
    if (t->ctx && SSL_CTX_use_certificate_chain_file(t->ctx, cert) == 1 &&
        SSL_CTX_use_PrivateKey_file(t->ctx, key, SSL_FILETYPE_PEM) == 1 && SSL_CTX_check_private_key(t->ctx) == 1)
        return 0;
    char e[160];
    ERR_error_string_n(ERR_get_error(), e, sizeof(e));
    snprintf(err, errlen, "certificate %.200s / key %.200s for %.128s: %s", cert, key, domain, e);
    ERR_clear_error();
    return -1;
}

int l7_set_certificates(l7_proxy_t *p, const char *const *domains, const char *const *certs, const char *const *keys,
                        size_t n, char *err, size_t errlen)
{
    cert_t *t = calloc(n + 1, sizeof(cert_t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (load_cert(p, &t[i], domains[i], certs[i], keys[i], err, errlen) < 0) {
            tls_free_certs(t, i + 1);
            return -1;
        }
    }
    pthread_mutex_lock(&p->mu);
    cert_t *old = p->certs;
    size_t oldn = p->ncerts;
    p->certs = t;
    p->ncerts = n;
    pthread_mutex_unlock(&p->mu);
    tls_free_certs(old, oldn);
    return 0;
}

SSL *tls_new_ssl(l7_proxy_t *p, int fd)
{
    /* Starts on the first certificate's context, so the common one-certificate case never switches. */
    pthread_mutex_lock(&p->mu);
    SSL *ssl = SSL_new(p->ncerts ? p->certs[0].ctx : p->base_ctx);
    pthread_mutex_unlock(&p->mu);
    if (ssl && SSL_set_fd(ssl, fd) == 1) {
        SSL_set_accept_state(ssl);
        return ssl;
    }
    SSL_free(ssl);
    return NULL;
}

ssize_t tls_read(SSL *ssl, char *b, size_t n, int *rd, int *rd_wants_write)
{
    ERR_clear_error();
    int r = SSL_read(ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
        *rd = 0;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        *rd = 0;
        *rd_wants_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        errno = EIO;
        return -1;
    }
}

int tls_write(SSL *ssl, const char *b, size_t n, int *wants_read)
{
    ERR_clear_error();
    int r = SSL_write(ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        *wants_read = e == SSL_ERROR_WANT_READ;
        return 0;
    }
    return -1;
}

int tls_h2_selected(SSL *ssl)
{
    const unsigned char *a;
    unsigned int al;
    SSL_get0_alpn_selected(ssl, &a, &al);
    return al == 2 && a[0] == 'h' && a[1] == '2';
}
