/* libFuzzer target of the HTTP/2 front end (csrc/proxy/l7_h2.c): the input's first two bytes give the length of an
 * upstream HTTP/1.1 response that follows them; the rest is what a client sends after the connection preface. Both
 * go through a server-side nghttp2 session wired to the proxy's own callbacks (header collection, routing against a
 * real route table, HTTP/1.1 request building, response head and chunked body relaying). Built and run by
 * tests/integration/proxy_l7/test_fuzz_h2.py with clang -fsanitize=fuzzer,address,undefined. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "l7.h"
#include "l7_h2.h"

static l7_proxy_t *P;

static void setup(void)
{
    char err[256];
    l7_config_t cfg = {.workers = 1, .header_timeout = 5, .idle_timeout = 5, .connect_timeout = 5,
                       .response_timeout = 5};
    if (l7_create(&cfg, &P, err, sizeof(err)) != 0) {
        fprintf(stderr, "l7_create: %s\n", err);
        abort();
    }
    l7_route_def_t routes[] = {
        {"a#h2", 443, "a.test", "/", 0, 0},
        {"w#api", 443, "*.w.test", "/api", 1, 1},
        {"any#h2", 443, NULL, "/", 0, 0},
        {"down#h2", 443, NULL, "/down", 0, 2},
    };
    l7_backend_def_t g0[] = {{"127.0.0.1", 9, 1}, {"::1", 9, 1}};
    l7_backend_def_t g1[] = {{"127.0.0.1", 10, 1}};
    l7_backend_def_t g2[] = {{"127.0.0.1", 11, 0}};
    const l7_backend_def_t *groups[] = {g0, g1, g2};
    const char *names[] = {"G0", "G1", "G2"};
    size_t ng[] = {2, 1, 1};
    if (l7_apply(P, routes, 4, names, groups, ng, 3, err, sizeof(err)) != 0) {
        fprintf(stderr, "l7_apply: %s\n", err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!P)
        setup();
    if (size < 2)
        return 0;
    size_t un = (size_t)data[0] << 8 | data[1];
    data += 2;
    size -= 2;
    if (un > size)
        un = size;
    /* exact-size heap copies so ASan sees any read past either end */
    uint8_t *up = malloc(un ? un : 1), *cl = malloc(size - un ? size - un : 1);
    if (!up || !cl)
        abort();
    memcpy(up, data, un);
    memcpy(cl, data + un, size - un);
    l7_h2_fuzz_one(P, 443, cl, size - un, up, un);
    free(up);
    free(cl);
    return 0;
}
