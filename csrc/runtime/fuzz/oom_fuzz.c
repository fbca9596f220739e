/* libFuzzer target for oom.c's reading of memory.events / memory.oom_control text: any bytes, no NUL assumed.
 * A value it reports must be the digits that follow the first exact "oom_kill " line start. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zlayer/shim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t n = 0;
    if (oom_parse_kills((const char *)data, size, &n) == 0) {
        const char *t = (const char *)data;
        size_t i = 0;
        while (!(size - i > 9 && memcmp(t + i, "oom_kill ", 9) == 0 && (i == 0 || t[i - 1] == '\n'))) {
            const char *nl = memchr(t + i, '\n', size - i);
            if (!nl)
                abort(); /* reported a count without such a line */
            i = (size_t)(nl - t) + 1;
        }
        uint64_t v = 0;
        for (i += 9; i < size && t[i] != '\n'; i++)
            v = v * 10 + (uint64_t)(t[i] - '0');
        if (v != n)
            abort();
    }
    return 0;
}
