/* zlayer-shim command line:
 *   zlayer-shim create --root DIR --bundle DIR [--log FILE [--log-max-size N] [--log-max-files N]] [--tty]
 *                      [--console-socket PATH] [--stdio-fds IN,OUT,ERR] [--pid-file FILE] ID
 *       create the container and its monitor; prints {"pid":N} once the init waits for start
 *   zlayer-shim run --root DIR --bundle DIR [--log FILE] [--tty --console-socket PATH] ID
 *       create, start and wait in the foreground (stdio passed through); exit code = the container's
 *   zlayer-shim exec --root DIR [--env K=V]... [--cwd DIR] [--user UID[:GID]]
 *                    [--tty --console-socket PATH [--console-size ROWS,COLS]] ID -- ARGV...
 *   zlayer-shim oom-kills CGROUP_DIR
 *       the OOM-kill counter of a memory cgroup directory (v1 or v2)
 * start / state / kill / delete need no program: see zlayer/runtime/linux/shim.py (ctl.sock, state.json). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "zlayer/shim.h"

static int usage(void)
{
    fprintf(stderr, "usage: zlayer-shim create|run|exec --root DIR [options] ID [-- ARGV...]\n"
                    "       zlayer-shim oom-kills CGROUP_DIR\n");
    return 2;
}

static int valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 128 || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || strchr("-_.+", ch)))
            return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "--version") == 0) {
        printf("zlayer-shim 0.1\n");
        return 0;
    }
    /* What the shim builds for a container (cgroups, mount points, the process's own umask unless
     * process.user.umask says otherwise) gets the standard 022, as under runc, whatever the caller's umask (the
     * daemon keeps 077 for its own files). What the shim keeps for itself (state, logs) has explicit 0700/0600. */
    umask(022);
    const char *cmd = argv[1];
    if (strcmp(cmd, "oom-kills") == 0)
        return argc == 3 ? cmd_oom_kills(argv[2]) : usage();
    struct zl_opts o;
    memset(&o, 0, sizeof(o));
    o.root = "/run/zlayer/containers";
    const char **env = calloc((size_t)argc, sizeof(*env));
    if (!env)
        return 1;
    o.env = env;
    int i = 2;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-') {
            if (o.id)
                return usage();
            o.id = a;
            continue;
        }
        if (strcmp(a, "--tty") == 0 || strcmp(a, "-t") == 0) {
            o.tty = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "zlayer-shim: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--root") == 0)
            o.root = v;
        else if (strcmp(a, "--bundle") == 0 || strcmp(a, "-b") == 0)
            o.bundle = v;
        else if (strcmp(a, "--log") == 0)
            o.log = v;
        else if (strcmp(a, "--log-max-size") == 0)
            o.log_max_size = strtoull(v, NULL, 10);
        else if (strcmp(a, "--log-max-files") == 0)
            o.log_max_files = atoi(v);
        else if (strcmp(a, "--console-socket") == 0)
            o.console_socket = v;
        else if (strcmp(a, "--pid-file") == 0)
            o.pid_file = v;
        else if (strcmp(a, "--cwd") == 0)
            o.cwd = v;
        else if (strcmp(a, "--user") == 0)
            o.user = v;
        else if (strcmp(a, "--env") == 0 || strcmp(a, "-e") == 0)
            env[o.n_env++] = v;
        else if (strcmp(a, "--console-size") == 0) {
            unsigned r, c;
            char end;
            if (sscanf(v, "%u,%u%c", &r, &c, &end) != 2 || !r || !c || r > 65535 || c > 65535) {
                fprintf(stderr, "zlayer-shim: --console-size must be ROWS,COLS (1-65535 each)\n");
                return 2;
            }
            o.rows = (unsigned short)r;
            o.cols = (unsigned short)c;
        } else if (strcmp(a, "--stdio-fds") == 0) {
            if (sscanf(v, "%d,%d,%d", &o.stdio_fds[0], &o.stdio_fds[1], &o.stdio_fds[2]) != 3)
                return usage();
            o.have_stdio = 1;
        } else {
            fprintf(stderr, "zlayer-shim: unknown option %s\n", a);
            return 2;
        }
    }
    if (!o.id || !valid_id(o.id)) {
        fprintf(stderr, "zlayer-shim: a container id of 1-128 characters [A-Za-z0-9_.+-] is required\n");
        return 2;
    }
    if (strcmp(cmd, "exec") == 0) {
        if (i >= argc) {
            fprintf(stderr, "zlayer-shim: exec needs a command after --\n");
            return 2;
        }
        o.argv = argv + i;
        o.argc = argc - i;
        return cmd_exec(&o);
    }
    if (!o.bundle)
        o.bundle = ".";
    if (strcmp(cmd, "create") == 0)
        return cmd_create(&o, 0);
    if (strcmp(cmd, "run") == 0) {
        if (!o.log && !o.have_stdio && !o.tty) {
            o.have_stdio = 1;
            o.stdio_fds[0] = 0;
            o.stdio_fds[1] = 1;
            o.stdio_fds[2] = 2;
        }
        return cmd_create(&o, 1);
    }
    return usage();
}
