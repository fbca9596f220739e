/* libFuzzer target of the L7 parser: the first byte picks request head, response head or chunked framing (fed in
 * pieces the size of the next byte, as a socket would deliver them). Built and run by
 * tests/integration/proxy_l7/test_fuzz.py with clang -fsanitize=fuzzer,address. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "l7.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t mode = data[0] % 3;
    size_t step = data[1] ? data[1] : 1;
    data += 2;
    size -= 2;
    /* an exact-size heap copy so ASan sees any read past the end */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    if (mode == 0) {
        static l7_req_t r;
        for (size_t n = step < size ? step : size; ; n = n + step < size ? n + step : size) {
            int h = l7_parse_request(buf, n, &r);
            if (h > 0) {
                if ((size_t)h > n || r.head_len != (size_t)h || r.target_off + r.target_len > (size_t)h)
                    abort();
                size_t te = (size_t)r.target_off + r.target_len;
                if (r.path_off < r.target_off || (size_t)r.path_off + r.path_len != te)
                    abort(); /* the origin-form part ends the target */
                if (r.auth_len && (r.auth_off < r.target_off || (size_t)r.auth_off + r.auth_len != r.path_off ||
                                   memchr(buf + r.auth_off, '@', r.auth_len)))
                    abort(); /* the authority precedes it, without userinfo */
                if (!r.auth_len && r.path_off != r.target_off)
                    abort();
                if (r.path_len && buf[r.path_off] != '/' && buf[r.path_off] != '?' && buf[r.path_off] != '*')
                    abort();
                for (int i = 0; i < r.nhdr; i++)
                    if ((size_t)r.hdr[i].line_off + r.hdr[i].line_len > (size_t)h ||
                        (size_t)r.hdr[i].val_off + r.hdr[i].val_len > (size_t)h)
                        abort();
                if (r.chunked && r.content_length >= 0)
                    abort(); /* smuggling guard */
                break;
            }
            if (h < 0 || n == size)
                break;
        }
    } else if (mode == 1) {
        static l7_resp_t r;
        int h = l7_parse_response(buf, size, &r);
        if (h > 0) {
            if ((size_t)h > size || r.status_len >= (size_t)h)
                abort();
            if (buf[r.status_len] != '\r' && buf[r.status_len] != '\n')
                abort();
            for (int i = 0; i < r.nhdr; i++) {
                const l7_hdr_t *hd = &r.hdr[i];
                if ((size_t)hd->line_off + hd->line_len > (size_t)h ||
                    (size_t)hd->val_off + hd->val_len > (size_t)h || hd->line_len < 3 || buf[hd->line_off + hd->line_len - 1] != '\n')
                    abort(); /* the proxy re-ends each line from these offsets */
                if (!r.bare_lf && buf[hd->line_off + hd->line_len - 2] != '\r')
                    abort();
            }
        }
    } else {
        l7_chunk_t ck;
        memset(&ck, 0, sizeof(ck));
        size_t off = 0;
        while (off < size) {
            size_t n = size - off < step ? size - off : step;
            int done;
            ssize_t used = l7_chunk_feed(&ck, buf + off, n, &done);
            if (used < 0 || (size_t)used > n)
                break;
            off += (size_t)used;
            if (done)
                break;
            if (used == 0)
                abort(); /* no progress on non-empty input */
        }
    }
    free(buf);
    return 0;
}
