/* state_root/<id>/state.json: the shim's record of a container, rewritten on each transition by write-temp +
 * rename in the state directory. A crash at any point leaves the old or the new file, never a torn one. The
 * file is not fsynced: it describes processes, which do not survive the power loss fsync would guard against. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zlayer/shim.h"

unsigned long long proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t r = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (r <= 0)
        return 0;
    buf[r] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p += 2; /* field 3 (state) */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

static void opt_time(char *out, size_t len, const char *key, const char *v, int last)
{
    snprintf(out, len, "\"%s\":\"%s\"%s", key, v, last ? "" : ",");
}

int state_format(const struct zl_state *s, char *out, size_t outlen)
{
    char id[600], bundle[8300], logp[8300], cg[ZL_MAX_CGROUPS * 1100 + 8];
    char created[64], started[64], finished[64], exitbuf[128];
    json_escape(id, sizeof(id), s->id);
    json_escape(bundle, sizeof(bundle), s->bundle);
    json_escape(logp, sizeof(logp), s->log_path);
    size_t w = 0;
    cg[w++] = '[';
    for (int i = 0; s->cg && i < s->cg->n; i++) {
        char esc[1100];
        json_escape(esc, sizeof(esc), s->cg->paths[i]);
        w += (size_t)snprintf(cg + w, sizeof(cg) - w, "%s\"%s\"", i ? "," : "", esc);
    }
    snprintf(cg + w, sizeof(cg) - w, "]");
    opt_time(created, sizeof(created), "created_at", s->created, 0);
    opt_time(started, sizeof(started), "started_at", s->started, 0);
    opt_time(finished, sizeof(finished), "finished_at", s->finished, 0);
    if (s->exited)
        snprintf(exitbuf, sizeof(exitbuf), "\"exit_code\":%d,\"exit_signal\":%s%.0d,\"oom_killed\":%s,", s->exit_code,
                 s->exit_signal ? "" : "null", s->exit_signal, s->oom_killed ? "true" : "false");
    else
        snprintf(exitbuf, sizeof(exitbuf), "\"exit_code\":null,\"exit_signal\":null,\"oom_killed\":false,");
    int n = snprintf(out, outlen,
                     "{\"ociVersion\":\"1.0.2\",\"id\":\"%s\",\"status\":\"%s\",\"pid\":%d,\"pid_start_time\":%llu,"
                     "\"shim_pid\":%d,\"shim_start_time\":%llu,\"bundle\":\"%s\",\"log_path\":\"%s\",%s%s%s%s"
                     "\"cgroup_paths\":%s}\n",
                     id, s->status, (int)s->pid, s->pid_start, (int)s->shim_pid, s->shim_start, bundle, logp, created,
                     started, finished, exitbuf, cg);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

int state_write(int dirfd, const struct zl_state *s, struct zl_err *e)
{
    static char buf[65536];
    int n = state_format(s, buf, sizeof(buf));
    if (n < 0)
        return zl_fail(e, "state.json would be too large");
    int fd = openat(dirfd, "state.json.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return zl_fail_errno(e, "cannot write state.json");
    if (write_all(fd, buf, (size_t)n) < 0) {
        close(fd);
        return zl_fail_errno(e, "cannot write state.json");
    }
    close(fd);
    if (renameat(dirfd, "state.json.tmp", dirfd, "state.json") < 0)
        return zl_fail_errno(e, "cannot rename state.json");
    return 0;
}
