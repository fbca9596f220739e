/* Listening sockets inherited from a predecessor process (the proxy's data plane handed over in an upgrade):
 * a plane that opens an address takes the matching inherited socket instead of binding a new one, so the accept
 * queue the predecessor was serving lives on and no connection attempt is refused. Shared by the L4 and L7 planes
 * (each extension holds its own pool). */
#ifndef ZLAYER_FDPOOL_H
#define ZLAYER_FDPOOL_H

#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ZL_FDPOOL_MAX 256

typedef struct {
    pthread_mutex_t mu;
    int n;
    int fds[ZL_FDPOOL_MAX];
} zl_fdpool_t;

#define ZL_FDPOOL_INIT {PTHREAD_MUTEX_INITIALIZER, 0, {0}}

/* Takes ownership of fd (closed at once when the pool is full). */
static inline void zl_fdpool_put(zl_fdpool_t *p, int fd)
{
    pthread_mutex_lock(&p->mu);
    if (p->n < ZL_FDPOOL_MAX)
        p->fds[p->n++] = fd;
    else
        close(fd);
    pthread_mutex_unlock(&p->mu);
}

static inline int zl_same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

/* An inherited socket of this type bound to *want (port included), removed from the pool; -1 when none. */
static inline int zl_fdpool_take(zl_fdpool_t *p, const struct sockaddr_storage *want, int type)
{
    int found = -1;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n; i++) {
        struct sockaddr_storage got;
        socklen_t gl = sizeof(got);
        int t = 0;
        socklen_t tl = sizeof(t);
        memset(&got, 0, sizeof(got));
        if (getsockopt(p->fds[i], SOL_SOCKET, SO_TYPE, &t, &tl) < 0 || t != type ||
            getsockname(p->fds[i], (struct sockaddr *)&got, &gl) < 0 || !zl_same_addr(&got, want))
            continue;
        found = p->fds[i];
        p->fds[i] = p->fds[--p->n];
        break;
    }
    pthread_mutex_unlock(&p->mu);
    if (found >= 0) { /* as a socket of our own: non-blocking, closed on exec */
        fcntl(found, F_SETFL, fcntl(found, F_GETFL) | O_NONBLOCK);
        fcntl(found, F_SETFD, FD_CLOEXEC);
    }
    return found;
}

#endif
