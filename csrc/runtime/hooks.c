/* OCI hooks: createRuntime (and the deprecated prestart) once the namespaces exist, before the init sets up its
 * root; poststart after the exec; poststop after the exit. Each runs in the runtime's namespaces with the OCI
 * state JSON on stdin and an optional timeout (seconds). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zlayer/shim.h"

static const char **strings(const struct jdoc *d, const struct jnode *arr, const char *first)
{
    int n = arr ? arr->count : 0;
    const char **out = calloc((size_t)n + 2, sizeof(*out));
    if (!out)
        return NULL;
    int k = 0;
    if (first)
        out[k++] = first;
    for (const struct jnode *a = json_first(d, arr); a; a = json_next(d, a))
        out[k++] = a->str;
    return out;
}

static int run_one(const struct jdoc *d, const struct jnode *h, const char *kind, int idx, const char *state,
                   struct zl_err *e)
{
    const struct jnode *path = json_get(d, h, "path"), *tmo = json_get(d, h, "timeout");
    const struct jnode *args = json_get(d, h, "args");
    const char **argv = strings(d, args, args && args->count ? NULL : path->str);
    const char **envp = strings(d, json_get(d, h, "env"), NULL);
    int in[2];
    if (!argv || !envp || pipe2(in, O_CLOEXEC) < 0) {
        free(argv);
        free(envp);
        return zl_fail(e, "hooks.%s[%d]: out of resources", kind, idx);
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execve(path->str, (char *const *)argv, (char *const *)envp);
        _exit(127);
    }
    free(argv);
    free(envp);
    close(in[0]);
    if (pid < 0) {
        close(in[1]);
        return zl_fail_errno(e, "hooks.%s[%d]: fork", kind, idx);
    }
    signal(SIGPIPE, SIG_IGN);
    write_all(in[1], state, strlen(state));
    close(in[1]);
    int timeout_ms = tmo && tmo->type == J_NUM && tmo->is_int && !tmo->is_neg && tmo->u > 0 && tmo->u < 86400
                         ? (int)tmo->u * 1000
                         : -1;
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd >= 0) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        int r;
        do
            r = poll(&p, 1, timeout_ms);
        while (r < 0 && errno == EINTR);
        close(pfd);
        if (r == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return zl_fail(e, "hooks.%s[%d] (%s) timed out after %d s", kind, idx, path->str, timeout_ms / 1000);
        }
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return zl_fail(e, "hooks.%s[%d] (%s) failed with %s %d", kind, idx, path->str,
                       WIFEXITED(status) ? "exit code" : "signal",
                       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return 0;
}

int hooks_run(const struct zl_config *c, const char *kind, const char *id, const char *status, pid_t pid,
              struct zl_err *e)
{
    if (!c->hooks)
        return 0;
    char state[9000], eid[600], ebundle[8300];
    json_escape(eid, sizeof(eid), id);
    json_escape(ebundle, sizeof(ebundle), c->bundle);
    snprintf(state, sizeof(state), "{\"ociVersion\":\"1.0.2\",\"id\":\"%s\",\"status\":\"%s\",\"pid\":%d,\"bundle\":\"%s\"}",
             eid, status, (int)pid, ebundle);
    const char *kinds[2] = {kind, strcmp(kind, "createRuntime") == 0 ? "prestart" : NULL};
    for (int k = 0; k < 2 && kinds[k]; k++) {
        int i = 0;
        for (const struct jnode *h = json_first(&c->doc, json_get(&c->doc, c->hooks, kinds[k])); h;
             h = json_next(&c->doc, h), i++)
            if (run_one(&c->doc, h, kinds[k], i, state, e))
                return -1;
    }
    return 0;
}
