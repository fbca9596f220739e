/* create / run: the monitor and the container init.
 *
 *   caller ── zlayer-shim create ──fork──> monitor (setsid, stdio -> /dev/null; survives the caller)
 *                  │  (waits on a pipe        │ cgroups mkdir + limits, pipes or pty, ctl.sock
 *                  │   for "ok"/error)        └─clone3(new namespaces, CLONE_PIDFD)──> init
 *                                                 cgroup.procs <- pid, id maps, "G" ──>  setns paths, mounts,
 *                                                                                       pivot_root, sysctl,
 *                                         <── "R" (ready) or "E<why>" ─────────────────  rlimits, find exe
 *   start (ctl.sock) ──> "S" ──────────────────────────────────────────────────────────> caps, seccomp, execve
 *                        EOF on the sync socket = exec happened (it is close-on-exec)
 *
 * The monitor then logs the container's output, answers ctl.sock (start, wait, state), reaps the init through
 * its pidfd, records the exit in state.json and exits. Any set-up error kills the init, removes the cgroups and
 * the state directory, and reaches the caller as "container <id>: <cause>". */
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "zlayer/shim.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

struct ctx {
    struct zl_opts *o;
    struct zl_config c;
    struct zl_cgroups cg;
    struct zl_bpf bpf;
    char dir[4200];
    int dirfd;
    pid_t pid;
    int pidfd;
    int sync; /* monitor end of the SEQPACKET pair */
    int stdio[3];
    int pty_master;
    int tty;
    struct zl_log log;
    struct zl_stream so, se;
    struct zl_state st;
    int ctl;
    int waiters[64];
    int n_waiters;
    int started;
    int result_fd; /* create: the pipe to the waiting caller; the init must not keep it open */
    int keep_config; /* poststart/poststop hooks still need config.json */
    uint64_t oom_base; /* the memory cgroup's OOM-kill counter when it was created */
    int oom_known;
};

static volatile pid_t g_forward_pid;

static void forward_signal(int sig)
{
    if (g_forward_pid > 0)
        kill(g_forward_pid, sig);
}

/* ---------------------------------------------------------------- container init (never returns) */

static void init_fail(int sync, struct zl_err *e)
{
    char msg[1100];
    int n = snprintf(msg, sizeof(msg), "E%s", e->msg);
    if (send(sync, msg, (size_t)(n > 0 ? n : 1), MSG_NOSIGNAL) < 0) {
        /* nobody to tell */
    }
    _exit(127);
}

static int set_sysctls(const struct zl_config *c, struct zl_err *e)
{
    for (int i = 0; i < c->n_sysctl; i++) {
        char path[512];
        int n = snprintf(path, sizeof(path), "/proc/sys/%s", c->sysctl[i].key);
        for (int k = 10; k < n; k++)
            if (path[k] == '.')
                path[k] = '/';
        struct zl_err we;
        if (write_file(path, c->sysctl[i].value, &we))
            return zl_fail(e, "sysctl %s=%s: %s", c->sysctl[i].key, c->sysctl[i].value, strerror(errno));
    }
    return 0;
}

/* The security sequence shared with exec: after it only execve remains. */
int process_finish(const struct zl_process *p, const struct zl_bpf *bpf, struct zl_err *e);
int process_finish(const struct zl_process *p, const struct zl_bpf *bpf, struct zl_err *e)
{
    /* Ignored signals and the blocked mask survive execve: a daemon started under nohup (or one that ignores
     * SIGHUP itself) would hand that on, and a container's `trap ... HUP` or nginx's reload on SIGHUP would do
     * nothing. The process starts as a fresh one would: every signal at its default, none blocked. */
    /* Raw syscalls: the C library refuses to touch its own real-time signals (32, 33), which a parent may also
     * have left ignored. An all-zero kernel sigaction is SIG_DFL with no flags and an empty mask. */
    unsigned long dfl[4] = {0, 0, 0, 0}, none = 0;
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            syscall(SYS_rt_sigaction, sig, dfl, NULL, sizeof(none));
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(none));
    /* without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we still have it */
    if (!p->no_new_privs && seccomp_apply(bpf, e))
        return -1;
    if (caps_drop_bounding(p, e) || caps_apply_user_and_caps(p, e))
        return -1;
    if (p->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return zl_fail_errno(e, "prctl(PR_SET_NO_NEW_PRIVS)");
    if (p->no_new_privs && seccomp_apply(bpf, e))
        return -1;
    return 0;
}

static void container_init(struct ctx *x, int sync)
{
    struct zl_config *c = &x->c;
    struct zl_err e = {{0}};
    char go;
    if (x->result_fd >= 0)
        close(x->result_fd);
    close(x->ctl);
    if (read(sync, &go, 1) != 1 || go != 'G')
        _exit(1);
    if (!(c->clone_flags & CLONE_NEWUSER) && cgroups_enter_self(&x->cg, &e))
        init_fail(sync, &e);
    if (c->clone_flags & CLONE_NEWUSER) {
        if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) {
            zl_fail_errno(&e, "cannot become root in the new user namespace");
            init_fail(sync, &e);
        }
    }
    if (ns_join_paths(c, 0, CLONE_NEWPID, &e))
        init_fail(sync, &e);
    if ((c->clone_flags & CLONE_NEWCGROUP) && unshare(CLONE_NEWCGROUP) < 0) {
        zl_fail_errno(&e, "cannot create the cgroup namespace");
        init_fail(sync, &e);
    }
    setsid();
    for (int i = 0; i < 3; i++)
        if (x->stdio[i] >= 0 && dup2(x->stdio[i], i) < 0) {
            zl_fail_errno(&e, "cannot set up stdio");
            init_fail(sync, &e);
        }
    if (c->hostname && c->hostname[0] && sethostname(c->hostname, strlen(c->hostname)) < 0) {
        zl_fail_errno(&e, "cannot set the hostname %s", c->hostname);
        init_fail(sync, &e);
    }
    if (c->domainname && c->domainname[0] && setdomainname(c->domainname, strlen(c->domainname)) < 0) {
        zl_fail_errno(&e, "cannot set the domain name %s", c->domainname);
        init_fail(sync, &e);
    }
    if (!(c->clone_flags & CLONE_NEWNS)) {
        int joined = 0;
        for (int i = 0; i < c->n_ns; i++)
            joined |= c->ns[i].flag == CLONE_NEWNS;
        if (!joined) {
            zl_fail(&e, "config.json: linux.namespaces: a mount namespace is required");
            init_fail(sync, &e);
        }
    } else if (mounts_setup_rootfs(c, &x->cg, NULL, &e)) {
        init_fail(sync, &e);
    }
    if (x->tty) {
        /* the terminal comes from the container's own devpts; its master goes to the monitor */
        int master = pty_become_console(1, &e);
        if (master < 0)
            init_fail(sync, &e);
        if (send_fd(sync, master) < 0) {
            zl_fail_errno(&e, "cannot hand the terminal to the monitor");
            init_fail(sync, &e);
        }
        close(master);
    }
    if (set_sysctls(c, &e) || mounts_finalize(c, &e) || caps_apply_rlimits(&c->proc, &e))
        init_fail(sync, &e);
    if (c->proc.has_oom_score_adj) {
        char v[16];
        snprintf(v, sizeof(v), "%d", c->proc.oom_score_adj);
        if (write_file("/proc/self/oom_score_adj", v, &e))
            init_fail(sync, &e);
    }
    char exe[4096];
    if (caps_find_executable(&c->proc, exe, sizeof(exe), &e))
        init_fail(sync, &e);
    if (chdir(c->proc.cwd) < 0) {
        zl_fail_errno(&e, "cannot enter the working directory %s", c->proc.cwd);
        init_fail(sync, &e);
    }
    if (send(sync, "R", 1, MSG_NOSIGNAL) != 1)
        _exit(1);
    char s;
    if (read(sync, &s, 1) != 1 || s != 'S')
        _exit(1); /* deleted before start */
    if (process_finish(&c->proc, &x->bpf, &e))
        init_fail(sync, &e);
    syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
    execve(exe, (char *const *)c->proc.args, (char *const *)c->proc.env);
    zl_fail_errno(&e, "cannot execute %s", exe);
    init_fail(sync, &e);
}

/* ---------------------------------------------------------------- monitor */

static void cleanup_failed(struct ctx *x)
{
    if (x->pid > 0) {
        kill(x->pid, SIGKILL);
        waitpid(x->pid, NULL, 0);
        x->pid = 0;
    }
    cgroups_destroy(&x->cg);
    if (x->dirfd >= 0) {
        unlinkat(x->dirfd, "state.json", 0);
        unlinkat(x->dirfd, "state.json.tmp", 0);
        unlinkat(x->dirfd, "ctl.sock", 0);
        close(x->dirfd);
        x->dirfd = -1;
    }
    rmdir(x->dir);
}

static int open_ctl(struct ctx *x, struct zl_err *e)
{
    x->ctl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (x->ctl < 0)
        return zl_fail_errno(e, "socket");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/ctl.sock", x->dirfd);
    /* root only, as the directory it is in; the mode is set before anyone can connect (listen) */
    if (bind(x->ctl, (struct sockaddr *)&sa, sizeof(sa)) < 0 || fchmodat(x->dirfd, "ctl.sock", 0600, 0) < 0 ||
        listen(x->ctl, 16) < 0)
        return zl_fail_errno(e, "cannot listen on %s/ctl.sock", x->dir);
    return 0;
}

static int setup_stdio(struct ctx *x, struct zl_err *e)
{
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
        return zl_fail_errno(e, "/dev/null");
    x->stdio[0] = x->stdio[1] = x->stdio[2] = devnull;
    x->so = (struct zl_stream){.name = "stdout", .fd = -1};
    x->se = (struct zl_stream){.name = "stderr", .fd = -1};
    x->pty_master = -1;
    if (x->o->tty || x->c.proc.terminal) {
        x->tty = 1; /* the init allocates it inside the container and sends the master over the sync socket */
        return 0;
    }
    if (x->o->have_stdio) {
        for (int i = 0; i < 3; i++)
            x->stdio[i] = x->o->stdio_fds[i];
        return 0;
    }
    if (x->log.fd < 0)
        return 0;
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0)
        return zl_fail_errno(e, "pipe");
    x->stdio[1] = po[1];
    x->stdio[2] = pe[1];
    x->so.fd = po[0];
    x->se.fd = pe[0];
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    return 0;
}

static void close_child_stdio(struct ctx *x)
{
    for (int i = 0; i < 3; i++) {
        int fd = x->stdio[i];
        if (fd < 3) /* the caller's own stdio, passed through (run) */
            continue;
        for (int k = i + 1; k < 3; k++)
            if (x->stdio[k] == fd)
                x->stdio[k] = -1;
        close(fd);
        x->stdio[i] = -1;
    }
}

/* The init's pty master: to the console socket (OCI CLI), else logged by us as stdout. */
static int take_terminal(struct ctx *x, struct zl_err *e)
{
    char msg[1200];
    int master = recv_fd(x->sync, msg, sizeof(msg));
    if (master < 0) {
        if (msg[0] == 'E')
            return zl_fail(e, "%s", msg + 1);
        return zl_fail(e, "the container init failed while setting up its terminal");
    }
    if (x->o->console_socket) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", x->o->console_socket);
        int ok = s >= 0 && connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0 && send_fd(s, master) == 0;
        int err = errno;
        if (s >= 0)
            close(s);
        close(master);
        errno = err;
        if (!ok)
            return zl_fail_errno(e, "cannot send the terminal to the console socket %s", x->o->console_socket);
        return 0;
    }
    fcntl(master, F_SETFL, O_NONBLOCK);
    x->pty_master = master;
    x->so.fd = master;
    return 0;
}

/* Build everything and leave the init blocked before its exec. */
static int create_container(struct ctx *x, struct zl_err *e)
{
    struct zl_config *c = &x->c;
    if (cgroups_create(&x->cg, c, x->o->id, e))
        return -1;
    x->oom_known = cgroups_oom_kills(&x->cg, &x->oom_base) == 0;
    if (setup_stdio(x, e))
        return -1;
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        return zl_fail_errno(e, "socketpair");
    /* a pid namespace given by path is joined by the monitor: it applies to the children it creates */
    for (int i = 0; i < c->n_ns; i++)
        if (c->ns[i].flag == CLONE_NEWPID && c->ns[i].path && ns_join_paths(c, CLONE_NEWPID, 0, e))
            return -1;
    struct clone_args ca;
    memset(&ca, 0, sizeof(ca));
    ca.flags = (uint64_t)(c->clone_flags & ~CLONE_NEWCGROUP) | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&x->pidfd;
    ca.exit_signal = SIGCHLD;
    pid_t pid = (pid_t)syscall(SYS_clone3, &ca, sizeof(ca));
    if (pid < 0)
        return zl_fail_errno(e, "cannot create the container's namespaces (clone3)");
    if (pid == 0) {
        close(sp[0]);
        container_init(x, sp[1]);
        _exit(127);
    }
    x->pid = pid;
    close(sp[1]);
    x->sync = sp[0];
    close_child_stdio(x);
    if ((c->clone_flags & CLONE_NEWUSER) && cgroups_enter(&x->cg, pid, e))
        return -1; /* from inside a user namespace the init may not write host cgroup files */
    if ((c->clone_flags & CLONE_NEWUSER) && ns_write_idmaps(c, pid, e))
        return -1;
    if (hooks_run(c, "createRuntime", x->o->id, "creating", pid, e))
        return -1;
    if (send(x->sync, "G", 1, MSG_NOSIGNAL) != 1)
        return zl_fail(e, "the container init died before its set-up");
    if (x->tty && take_terminal(x, e))
        return -1;
    char msg[1200];
    ssize_t n = recv(x->sync, msg, sizeof(msg) - 1, 0);
    if (n <= 0)
        return zl_fail(e, "the container init died during its set-up");
    msg[n] = '\0';
    if (msg[0] == 'E')
        return zl_fail(e, "%s", msg + 1);
    if (msg[0] != 'R')
        return zl_fail(e, "unexpected message from the container init");
    return 0;
}

static void now(char *buf, size_t len)
{
    format_rfc3339(buf, len, 1);
}

/* "S" to the init; the sync socket closes on a successful exec, or carries the reason it failed. */
static int do_start(struct ctx *x, struct zl_err *e)
{
    if (x->started)
        return zl_fail(e, "container %s is already started", x->o->id);
    x->started = 1;
    if (send(x->sync, "S", 1, MSG_NOSIGNAL) != 1)
        return zl_fail(e, "container %s: its init is gone", x->o->id);
    char msg[1200];
    ssize_t n = recv(x->sync, msg, sizeof(msg) - 1, 0);
    close(x->sync);
    x->sync = -1;
    if (n > 0) {
        msg[n] = '\0';
        return zl_fail(e, "%s", msg[0] == 'E' ? msg + 1 : msg);
    }
    x->st.status = "running";
    now(x->st.started, sizeof(x->st.started));
    struct zl_err we;
    state_write(x->dirfd, &x->st, &we);
    if (x->keep_config && hooks_run(&x->c, "poststart", x->o->id, "running", x->pid, &we))
        log_line(&x->log, "stderr", "F", we.msg, strlen(we.msg)); /* the spec makes this a warning */
    return 0;
}

static void reply(int fd, const char *text)
{
    if (write_all(fd, text, strlen(text)) < 0) {
        /* the client went away */
    }
}

static void handle_client(struct ctx *x, int fd, int epfd)
{
    char buf[128];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    if (n <= 0 || !memchr(buf, '\n', (size_t)n)) {
        if (n < 0 && errno == EAGAIN)
            return;
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        return;
    }
    buf[n] = '\0';
    fcntl(fd, F_SETFL, 0);
    if (strncmp(buf, "start", 5) == 0) {
        struct zl_err e = {{0}};
        char out[1200];
        if (do_start(x, &e) == 0)
            reply(fd, "ok\n");
        else {
            snprintf(out, sizeof(out), "error %s\n", e.msg);
            for (char *p = out; *p && p[1]; p++)
                if (*p == '\n')
                    *p = ' ';
            reply(fd, out);
        }
    } else if (strncmp(buf, "wait", 4) == 0 && x->n_waiters < 64) {
        x->waiters[x->n_waiters++] = fd;
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
        return;
    } else if (strncmp(buf, "state", 5) == 0) {
        char out[65536];
        if (state_format(&x->st, out, sizeof(out)) > 0)
            reply(fd, out);
    } else {
        reply(fd, "error unknown request\n");
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
}

static void add_fd(int epfd, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* Runs until the init has exited and its output is drained; returns the shell-style exit code. */
static int monitor_loop(struct ctx *x, int auto_start)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    add_fd(epfd, x->pidfd);
    add_fd(epfd, x->ctl);
    if (x->so.fd >= 0)
        add_fd(epfd, x->so.fd);
    if (x->se.fd >= 0)
        add_fd(epfd, x->se.fd);
    if (auto_start) {
        struct zl_err e = {{0}};
        if (do_start(x, &e)) {
            fprintf(stderr, "zlayer-shim: container %s: %s\n", x->o->id, e.msg);
            kill(x->pid, SIGKILL);
        }
    }
    int exited = 0, status = 0;
    int drain_ms = -1;
    while (!exited || ((x->so.fd >= 0 || x->se.fd >= 0) && drain_ms != 0)) {
        struct epoll_event evs[16];
        int n = epoll_wait(epfd, evs, 16, exited ? drain_ms : -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 && exited)
            break; /* something in the container still holds its stdout: stop waiting for it */
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == x->pidfd) {
                if (waitpid(x->pid, &status, WNOHANG) == x->pid) {
                    exited = 1;
                    drain_ms = 2000;
                    epoll_ctl(epfd, EPOLL_CTL_DEL, x->pidfd, NULL);
                }
            } else if (fd == x->ctl) {
                int cfd = accept4(x->ctl, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (cfd >= 0)
                    add_fd(epfd, cfd);
            } else if (fd == x->so.fd) {
                if (!log_drain(&x->log, &x->so))
                    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
            } else if (fd == x->se.fd) {
                if (!log_drain(&x->log, &x->se))
                    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
            } else {
                handle_client(x, fd, epfd);
            }
        }
    }
    close(epfd);
    if (x->sync >= 0) {
        close(x->sync);
        x->sync = -1;
    }
    x->st.exited = 1;
    if (WIFSIGNALED(status)) {
        x->st.exit_signal = WTERMSIG(status);
        x->st.exit_code = 128 + WTERMSIG(status);
    } else {
        x->st.exit_code = WEXITSTATUS(status);
    }
    uint64_t oom_now;
    x->st.oom_killed = x->oom_known && cgroups_oom_kills(&x->cg, &oom_now) == 0 && oom_now > x->oom_base;
    if (x->keep_config) {
        struct zl_err he;
        if (hooks_run(&x->c, "poststop", x->o->id, "stopped", 0, &he))
            log_line(&x->log, "stderr", "F", he.msg, strlen(he.msg));
    }
    x->st.status = "stopped";
    x->st.pid = 0;
    now(x->st.finished, sizeof(x->st.finished));
    struct zl_err e;
    state_write(x->dirfd, &x->st, &e);
    char line[65536];
    int len = state_format(&x->st, line, sizeof(line));
    for (int i = 0; i < x->n_waiters; i++) {
        if (len > 0)
            reply(x->waiters[i], line);
        close(x->waiters[i]);
    }
    close(x->ctl);
    unlinkat(x->dirfd, "ctl.sock", 0);
    return x->st.exit_code;
}

static int write_pid_file(const char *path, pid_t pid, struct zl_err *e)
{
    char tmp[4200], v[24];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    snprintf(v, sizeof(v), "%d", (int)pid);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, v, strlen(v)) < 0) {
        if (fd >= 0)
            close(fd);
        return zl_fail_errno(e, "cannot write the pid file %s", path);
    }
    close(fd);
    if (rename(tmp, path) < 0)
        return zl_fail_errno(e, "cannot write the pid file %s", path);
    return 0;
}

/* Common to create and run: everything up to a created container with its state recorded. */
static int prepare(struct ctx *x, struct zl_err *e)
{
    struct zl_opts *o = x->o;
    if (snprintf(x->dir, sizeof(x->dir), "%s/%s", o->root, o->id) >= (int)sizeof(x->dir))
        return zl_fail(e, "state directory path too long");
    /* state, ctl.sock and the bundle's paths are the host's business: root only */
    if (mkdir_p(o->root, 0700) < 0)
        return zl_fail_errno(e, "cannot create the state root %s", o->root);
    if (mkdir(x->dir, 0700) < 0) {
        if (errno == EEXIST)
            return zl_fail(e, "container %s already exists (%s)", o->id, x->dir);
        return zl_fail_errno(e, "cannot create %s", x->dir);
    }
    x->dirfd = open(x->dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (x->dirfd < 0)
        return zl_fail_errno(e, "cannot open %s", x->dir);
    if (log_open(&x->log, o->log, o->log_max_size, o->log_max_files, e))
        return -1;
    if (open_ctl(x, e))
        return -1;
    if (create_container(x, e))
        return -1;
    struct zl_state *s = &x->st;
    snprintf(s->id, sizeof(s->id), "%s", o->id);
    snprintf(s->bundle, sizeof(s->bundle), "%s", x->c.bundle);
    snprintf(s->log_path, sizeof(s->log_path), "%s", o->log ? o->log : "");
    s->status = "created";
    s->pid = x->pid;
    s->pid_start = proc_start_time(x->pid);
    s->shim_pid = getpid();
    s->shim_start = proc_start_time(getpid());
    s->cg = &x->cg;
    now(s->created, sizeof(s->created));
    if (state_write(x->dirfd, s, e))
        return -1;
    if (o->pid_file && write_pid_file(o->pid_file, x->pid, e))
        return -1;
    return 0;
}

/* The monitor idles for the container's lifetime; the code that set the container up (config parsing, mounts,
 * libseccomp) stays mapped from the fork but is never run again. Dropping the text pages of our own binary
 * leaves only what the event loop faults back in (clean page-cache pages: nothing is lost). */
static void trim_resident(void)
{
    char exe[4096], line[4600];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        char perms[8], path[4200] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %4199s", &lo, &hi, perms, path) < 3)
            continue;
        /* text only: a read-only data mapping may hold pages written before it was protected (RELRO) */
        if (strcmp(path, exe) == 0 && strcmp(perms, "r-xp") == 0) {
            madvise((void *)lo, hi - lo, MADV_RANDOM); /* no fault-around: refault only what runs */
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
        }
    }
    fclose(f);
}

/* The monitor outlives its caller: it must not keep any descriptor the caller gave it by accident (an event loop's
 * socketpairs, a job runner's pipes), or whoever waits for them to close waits forever. */
static void close_all_but(const int *keep, int n)
{
    int sorted[8], m = 0;
    for (int i = 0; i < n && m < 8; i++)
        if (keep[i] >= 3)
            sorted[m++] = keep[i];
    for (int i = 1; i < m; i++)
        for (int k = i; k > 0 && sorted[k - 1] > sorted[k]; k--) {
            int t = sorted[k];
            sorted[k] = sorted[k - 1];
            sorted[k - 1] = t;
        }
    unsigned lo = 3;
    for (int i = 0; i < m; i++) {
        if ((unsigned)sorted[i] > lo)
            syscall(SYS_close_range, lo, (unsigned)sorted[i] - 1, 0);
        lo = (unsigned)sorted[i] + 1;
    }
    syscall(SYS_close_range, lo, ~0U, 0);
}

int cmd_create(struct zl_opts *o, int foreground_run)
{
    static struct ctx x; /* one per process; static keeps the monitor's stack small */
    memset(&x, 0, sizeof(x));
    x.o = o;
    x.dirfd = x.ctl = x.sync = x.pidfd = x.result_fd = -1;
    x.pty_master = -1;
    struct zl_err e = {{0}};
    char cache[4200];
    if (config_load(&x.c, o->bundle, &e) || caps_check_rlimits(&x.c.proc, &e)) {
        fprintf(stderr, "zlayer-shim: container %s: %s\n", o->id, e.msg);
        return 1;
    }
    snprintf(cache, sizeof(cache), "%s/.seccomp-cache", o->root);
    if (seccomp_prepare(&x.c, cache, &x.bpf, &e)) {
        fprintf(stderr, "zlayer-shim: container %s: %s\n", o->id, e.msg);
        return 1;
    }
    if (foreground_run) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = forward_signal;
        sa.sa_flags = SA_RESTART;
        int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
        for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
            sigaction(sigs[i], &sa, NULL);
        if (prepare(&x, &e)) {
            cleanup_failed(&x);
            fprintf(stderr, "zlayer-shim: container %s: %s\n", o->id, e.msg);
            return 1;
        }
        g_forward_pid = x.pid;
        x.keep_config = x.c.hooks != NULL;
        if (!x.keep_config)
            config_free(&x.c);
        int code = monitor_loop(&x, 1);
        cgroups_destroy(&x.cg);
        unlinkat(x.dirfd, "state.json", 0);
        close(x.dirfd);
        rmdir(x.dir);
        return code;
    }
    int res[2];
    if (pipe2(res, O_CLOEXEC) < 0) {
        perror("zlayer-shim: pipe");
        return 1;
    }
    pid_t m = fork();
    if (m < 0) {
        perror("zlayer-shim: fork");
        return 1;
    }
    if (m > 0) {
        close(res[1]);
        char msg[1300];
        size_t got = 0;
        for (;;) {
            ssize_t r = read(res[0], msg + got, sizeof(msg) - 1 - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
            if (got == sizeof(msg) - 1)
                break;
        }
        msg[got] = '\0';
        waitpid(m, NULL, WNOHANG);
        if (strncmp(msg, "OK ", 3) == 0) {
            printf("{\"pid\":%s}\n", msg + 3);
            return 0;
        }
        fprintf(stderr, "container %s: %s\n", o->id, got ? msg : "the shim died during set-up");
        return 1;
    }
    /* the monitor: its own session, away from the caller's terminal and signals */
    close(res[0]);
    x.result_fd = res[1];
    int keep[4] = {res[1], -1, -1, -1};
    if (o->have_stdio)
        for (int i = 0; i < 3; i++)
            keep[i + 1] = o->stdio_fds[i];
    close_all_but(keep, 4);
    setsid();
    if (chdir("/") < 0) {
        /* not fatal */
    }
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        /* keep the caller's descriptors the container should get; they must not be 0-2 any more */
        if (o->have_stdio)
            for (int i = 0; i < 3; i++)
                o->stdio_fds[i] = fcntl(o->stdio_fds[i], F_DUPFD_CLOEXEC, 3);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);
        if (devnull > 2)
            close(devnull);
    }
    if (prepare(&x, &e)) {
        cleanup_failed(&x);
        write_all(res[1], e.msg, strlen(e.msg));
        _exit(1);
    }
    char ok[32];
    snprintf(ok, sizeof(ok), "OK %d", (int)x.pid);
    write_all(res[1], ok, strlen(ok));
    close(res[1]);
    if (o->have_stdio)
        for (int i = 0; i < 3; i++)
            close(o->stdio_fds[i]);
    x.keep_config = x.c.hooks != NULL;
    if (!x.keep_config)
        config_free(&x.c);
    free(x.bpf.filter);
    x.bpf.filter = NULL;
    malloc_trim(0);
    trim_resident();
    monitor_loop(&x, 0);
    _exit(0);
}
