/* libFuzzer target of the L4 relay: arbitrary client bytes into a plain listener (PROXY v2 to the backend, splice
 * after 1 KiB), a TLS-terminating listener (the bytes hit OpenSSL's record/handshake parsing and our error paths)
 * and a UDP listener, each in front of an echo backend, all in this process so ASan sees every worker thread.
 * The first input byte picks the listener. Needs ZLAYER_FUZZ_CERT and ZLAYER_FUZZ_KEY (PEM files).
 * Build: clang -g -fsanitize=fuzzer,address -Iinclude (every csrc/stream .c file) fuzz_relay.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "zlayer/l4.h"

static int tcp_port, tls_port, udp_port;

static void *echo_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        if (write(fd, buf, (size_t)n) < 0)
            break;
    close(fd);
    return NULL;
}

static void *tcp_backend(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_t t;
        if (pthread_create(&t, NULL, echo_conn, (void *)(intptr_t)fd) == 0)
            pthread_detach(t);
        else
            close(fd);
    }
    return NULL;
}

static void *udp_backend(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[65536];
    for (;;) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
        if (n >= 0)
            sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    }
    return NULL;
}

static int bound_socket(int type, int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, type, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || (type == SOCK_STREAM && listen(fd, 128) < 0))
        abort();
    getsockname(fd, (struct sockaddr *)&a, &al);
    *port = ntohs(a.sin_port);
    return fd;
}

static int listener(int protocol, int proxy_protocol, int tls, int backend_port)
{
    char err[512];
    l4_config_t cfg = {.protocol = protocol, .workers = 2, .proxy_protocol = proxy_protocol,
                       .splice_threshold = 1024, .session_timeout = 1.0, .connect_timeout = 1.0, .idle_timeout = 2.0};
    strcpy(cfg.host, "127.0.0.1");
    l4_listener_t *l;
    const char *host = "127.0.0.1";
    if (l4_create(&cfg, &l, err, sizeof(err)) < 0 || l4_set_backends(l, &host, &backend_port, 1, err, sizeof(err)) < 0)
        goto fail;
    if (tls && l4_set_tls(l, getenv("ZLAYER_FUZZ_CERT"), getenv("ZLAYER_FUZZ_KEY"), err, sizeof(err)) < 0)
        goto fail;
    if (l4_start(l, err, sizeof(err)) < 0)
        goto fail;
    return l4_port(l); /* the listener lives for the whole run */
fail:
    fprintf(stderr, "fuzz set-up: %s\n", err);
    abort();
}

static void init(void)
{
    int bport, uport;
    pthread_t t;
    int lfd = bound_socket(SOCK_STREAM, &bport);
    int ufd = bound_socket(SOCK_DGRAM, &uport);
    pthread_create(&t, NULL, tcp_backend, (void *)(intptr_t)lfd);
    pthread_detach(t);
    pthread_create(&t, NULL, udp_backend, (void *)(intptr_t)ufd);
    pthread_detach(t);
    tcp_port = listener(L4_TCP, 2, 0, bport);
    tls_port = listener(L4_TCP, 1, 1, bport);
    udp_port = listener(L4_UDP, 0, 0, uport);
}

static void set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init);
    if (size < 1)
        return 0;
    int which = data[0] % 3;
    data++;
    size--;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char buf[65536];
    if (which == 2) {
        a.sin_port = htons((uint16_t)udp_port);
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        set_timeouts(fd);
        sendto(fd, data, size, 0, (struct sockaddr *)&a, sizeof(a));
        if (recv(fd, buf, sizeof(buf), 0) >= 0 && size > 0 && size <= sizeof(buf) && memcmp(buf, data, size) != 0)
            abort(); /* a UDP echo must come back unchanged */
        close(fd);
        return 0;
    }
    a.sin_port = htons((uint16_t)(which == 0 ? tcp_port : tls_port));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    set_timeouts(fd);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        size_t off = 0;
        while (off < size) {
            ssize_t n = write(fd, data + off, size - off);
            if (n <= 0)
                break;
            off += (size_t)n;
        }
        shutdown(fd, SHUT_WR);
        while (read(fd, buf, sizeof(buf)) > 0) {
        }
    }
    close(fd);
    return 0;
}
