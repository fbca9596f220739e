/* OOM kills of a container's memory cgroup, as the kernel counts them: the oom_kill line of memory.events (v2) or
 * of memory.oom_control (v1, kernel 4.13 and later). The monitor reads the counter when it creates the cgroup and
 * again when the init has exited; a rise means the kernel's OOM killer ended a process of the container during
 * its life — what Docker reports as State.OOMKilled. Whether the init itself died of it or a child did (a shell's
 * child killed, the shell exiting 137) the exit record says the same, as Docker's does. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "zlayer/shim.h"

/* Lines of "key value" (either file's format; the kernel writes them, but a cgroup directory is a path the caller
 * names, so the text is treated as outside input). Only an exact "oom_kill" key with a decimal value counts. */
int oom_parse_kills(const char *text, size_t len, uint64_t *out)
{
    static const char key[] = "oom_kill";
    const size_t klen = sizeof(key) - 1;
    size_t i = 0;
    while (i < len) {
        size_t eol = i;
        while (eol < len && text[eol] != '\n')
            eol++;
        if (eol - i >= klen + 1 && memcmp(text + i, key, klen) == 0 && text[i + klen] == ' ') {
            uint64_t v = 0;
            size_t k = i + klen + 1;
            if (k == eol)
                return -1;
            for (; k < eol; k++) {
                unsigned d = (unsigned char)text[k] - '0';
                if (d > 9 || v > (UINT64_MAX - d) / 10)
                    return -1;
                v = v * 10 + d;
            }
            *out = v;
            return 0;
        }
        i = eol + 1;
    }
    return -1;
}

/* dir's counter: memory.events when v2 is 1, memory.oom_control when 0, whichever exists when -1. */
int oom_read_kills(const char *dir, int v2, uint64_t *out)
{
    static const char *const names[] = {"memory.oom_control", "memory.events"};
    for (int k = 0; k < 2; k++) {
        if (v2 >= 0 && k != v2)
            continue;
        char path[700], buf[2048];
        if (snprintf(path, sizeof(path), "%s/%s", dir, names[k]) >= (int)sizeof(path))
            return -1;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t r;
        do
            r = read(fd, buf, sizeof(buf));
        while (r < 0 && errno == EINTR);
        close(fd);
        if (r > 0 && oom_parse_kills(buf, (size_t)r, out) == 0)
            return 0;
    }
    return -1;
}

int cgroups_oom_kills(const struct zl_cgroups *cg, uint64_t *out)
{
    const char *d = cgroups_path_of(cg, "memory");
    return d ? oom_read_kills(d, cg->v2, out) : -1;
}

/* zlayer-shim oom-kills DIR: the counter of one memory cgroup directory (v1 or v2), for operators and tests. */
int cmd_oom_kills(const char *dir)
{
    uint64_t n;
    if (oom_read_kills(dir, -1, &n)) {
        fprintf(stderr, "zlayer-shim: %s: no oom_kill counter (memory.events or memory.oom_control)\n", dir);
        return 1;
    }
    printf("%llu\n", (unsigned long long)n);
    return 0;
}
