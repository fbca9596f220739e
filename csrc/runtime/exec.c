/* exec: run one more process in a running container — its namespaces (setns), its cgroups, and the same
 * seccomp filter, capabilities, no_new_privs and user as its init (from the bundle's config.json), with the
 * caller's overrides of argv, env, cwd and user. Foreground: our exit code is the process's (128+signal). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sched.h>
#include <unistd.h>

#include "zlayer/shim.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

int process_finish(const struct zl_process *p, const struct zl_bpf *bpf, struct zl_err *e);

static volatile pid_t g_child;

static void forward(int sig)
{
    if (g_child > 0)
        kill(g_child, sig);
}

static const struct {
    const char *name;
    int flag;
} NS_ORDER[] = {{"user", CLONE_NEWUSER}, {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"net", CLONE_NEWNET},
                {"cgroup", CLONE_NEWCGROUP}, {"mnt", CLONE_NEWNS}};

static int die(const char *id, const char *msg)
{
    fprintf(stderr, "zlayer-shim: exec in container %s: %s\n", id, msg);
    return 255;
}

static int merge_env(struct zl_process *p, struct zl_opts *o)
{
    const char **env = calloc((size_t)(p->n_env + o->n_env + 1), sizeof(*env));
    if (!env)
        return -1;
    int n = 0;
    for (int i = 0; i < p->n_env; i++) {
        const char *eq = strchr(p->env[i], '=');
        size_t kl = eq ? (size_t)(eq - p->env[i]) + 1 : strlen(p->env[i]);
        int overridden = 0;
        for (int k = 0; k < o->n_env; k++)
            overridden |= strncmp(o->env[k], p->env[i], kl) == 0;
        if (!overridden)
            env[n++] = p->env[i];
    }
    for (int k = 0; k < o->n_env; k++)
        env[n++] = o->env[k];
    free(p->env);
    p->env = env;
    p->n_env = n;
    return 0;
}

int cmd_exec(struct zl_opts *o)
{
    struct zl_err e = {{0}};
    char path[4300], cache[4300];
    struct jdoc st;
    snprintf(path, sizeof(path), "%s/%s/state.json", o->root, o->id);
    if (json_read_file(&st, path, &e)) {
        if (errno == ENOENT)
            return die(o->id, "no such container");
        return die(o->id, e.msg);
    }
    const struct jnode *root = json_root(&st);
    const struct jnode *status = json_get(&st, root, "status"), *pidn = json_get(&st, root, "pid"),
                       *startn = json_get(&st, root, "pid_start_time"), *bundle = json_get(&st, root, "bundle"),
                       *cgs = json_get(&st, root, "cgroup_paths");
    if (!status || status->type != J_STR || !pidn || pidn->type != J_NUM || !bundle || bundle->type != J_STR)
        return die(o->id, "state.json is incomplete");
    pid_t pid = (pid_t)pidn->u;
    if (strcmp(status->str, "running") != 0 || pid <= 0 ||
        (startn && startn->type == J_NUM && proc_start_time(pid) != startn->u))
        return die(o->id, "the container is not running");
    struct zl_config c;
    if (config_load(&c, bundle->str, &e))
        return die(o->id, e.msg);
    struct zl_process *p = &c.proc;
    p->args = (const char **)o->argv;
    p->n_args = o->argc;
    p->terminal = o->tty;
    if (o->cwd)
        p->cwd = o->cwd;
    if (o->user) {
        char *end;
        unsigned long uid = strtoul(o->user, &end, 10), gid = uid;
        if (end == o->user || (*end && *end != ':'))
            return die(o->id, "--user must be uid[:gid] (numbers)");
        if (*end == ':') {
            char *g = end + 1;
            gid = strtoul(g, &end, 10);
            if (end == g || *end)
                return die(o->id, "--user must be uid[:gid] (numbers)");
        }
        p->uid = (uint32_t)uid;
        p->gid = (uint32_t)gid;
        p->n_groups = 0;
    }
    if (merge_env(p, o))
        return die(o->id, "out of memory");
    struct zl_bpf bpf;
    snprintf(cache, sizeof(cache), "%s/.seccomp-cache", o->root);
    if (seccomp_prepare(&c, cache, &bpf, &e))
        return die(o->id, e.msg);
    int nsfd[6];
    for (size_t i = 0; i < 6; i++) {
        char a[64], b[64];
        struct stat sa, sb;
        nsfd[i] = -1;
        snprintf(a, sizeof(a), "/proc/%d/ns/%s", (int)pid, NS_ORDER[i].name);
        snprintf(b, sizeof(b), "/proc/self/ns/%s", NS_ORDER[i].name);
        if (stat(a, &sa) < 0 || stat(b, &sb) < 0 || sa.st_ino == sb.st_ino)
            continue;
        nsfd[i] = open(a, O_RDONLY | O_CLOEXEC);
        if (nsfd[i] < 0)
            return die(o->id, "cannot open the container's namespaces");
    }
    char pns[64];
    snprintf(pns, sizeof(pns), "/proc/%d/ns/pid", (int)pid);
    int pidns = open(pns, O_RDONLY | O_CLOEXEC);
    if (pidns < 0 || setns(pidns, CLONE_NEWPID) < 0)
        return die(o->id, "cannot join the container's pid namespace");
    close(pidns);
    int console = -1;
    if (o->tty) {
        if (!o->console_socket)
            return die(o->id, "--tty needs --console-socket to hand over the terminal");
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", o->console_socket);
        console = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (console < 0 || connect(console, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            return die(o->id, "cannot connect to the console socket");
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        return die(o->id, "socketpair failed");
    pid_t child = fork();
    if (child < 0)
        return die(o->id, "fork failed");
    if (child == 0) {
        close(sp[0]);
        int fail = 0;
        /* cgroups first: their paths are host paths, gone once we are in the container's mounts */
        for (const struct jnode *cg = json_first(&st, cgs); cg && !fail; cg = json_next(&st, cg)) {
            /* v1: "tasks" moves just this thread and skips the global threadgroup lock (see cgroups.c) */
            char f[700];
            snprintf(f, sizeof(f), "%s/tasks", cg->type == J_STR ? cg->str : "/nonexistent");
            if (access(f, F_OK) < 0)
                snprintf(f, sizeof(f), "%s/cgroup.procs", cg->type == J_STR ? cg->str : "/nonexistent");
            fail = write_file(f, "0", &e);
        }
        for (size_t i = 0; i < 6 && !fail; i++)
            if (nsfd[i] >= 0 && setns(nsfd[i], NS_ORDER[i].flag) < 0)
                fail = zl_fail_errno(&e, "cannot join the %s namespace", NS_ORDER[i].name);
        char exe[4096];
        if (!fail && console >= 0) {
            /* after joining the mount namespace: the pty comes from the container's own devpts */
            int master = pty_become_console(0, &e);
            struct winsize ws = {.ws_row = o->rows, .ws_col = o->cols}; /* sized before the process can ask */
            if (master < 0)
                fail = -1;
            else if (o->rows && ioctl(master, TIOCSWINSZ, &ws) < 0)
                fail = zl_fail_errno(&e, "cannot size the terminal");
            else if (send_fd(console, master) < 0)
                fail = zl_fail_errno(&e, "cannot send the terminal to the console socket");
            if (master >= 0)
                close(master);
            close(console);
        }
        if (!fail)
            fail = caps_find_executable(p, exe, sizeof(exe), &e);
        if (!fail && chdir(p->cwd) < 0)
            fail = zl_fail_errno(&e, "cannot enter the working directory %s", p->cwd);
        if (!fail)
            fail = caps_apply_rlimits(p, &e) || process_finish(p, &bpf, &e);
        if (!fail) {
            syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
            execve(exe, (char *const *)p->args, (char *const *)p->env);
            zl_fail_errno(&e, "cannot execute %s", exe);
        }
        if (send(sp[1], e.msg, strlen(e.msg), MSG_NOSIGNAL) < 0) {
            /* the parent is gone */
        }
        _exit(127);
    }
    close(sp[1]);
    if (console >= 0)
        close(console);
    g_child = child;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
    char msg[1100];
    ssize_t n;
    do
        n = recv(sp[0], msg, sizeof(msg) - 1, 0);
    while (n < 0 && errno == EINTR);
    int wst = 0;
    while (waitpid(child, &wst, 0) < 0 && errno == EINTR)
        ;
    if (n > 0) {
        msg[n] = '\0';
        return die(o->id, msg);
    }
    if (WIFSIGNALED(wst))
        return 128 + WTERMSIG(wst);
    return WEXITSTATUS(wst);
}
