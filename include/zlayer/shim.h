/* zlayer-shim: shared declarations of the per-container monitor (csrc/runtime/).
 *
 * One file per concern, as conmon is split: json (parser of outside input), config (config.json -> struct),
 * cgroups, oom (the cgroup's OOM-kill counter), namespaces, mounts, seccomp, caps (capabilities, user, rlimits),
 * logging (CRI log files), state (state.json), spawn (monitor + container init), exec (joining a running container), main (CLI).
 * Errors are reported as text into a caller-owned buffer (struct zl_err) so that the container init can send
 * them to the monitor over the sync socket and the monitor to the caller. */
#ifndef ZLAYER_SHIM_H
#define ZLAYER_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- errors ---- */
struct zl_err {
    char msg[1024];
};
int zl_fail(struct zl_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int zl_fail_errno(struct zl_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- json.c: a strict RFC 8259 parser into a flat node array ---- */
enum jtype { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };
struct jnode {
    enum jtype type;
    int next;  /* next sibling index or -1 */
    int child; /* first child (arrays, objects) or -1 */
    int count; /* number of children */
    const char *key; /* member name when the parent is an object (NUL-terminated, unescaped) */
    const char *str; /* J_STR: unescaped, NUL-terminated (may contain NUL: use len) */
    size_t len;
    size_t raw_start, raw_end; /* byte span in the original text */
    int is_int;   /* J_NUM without fraction/exponent that fits int64 or uint64 */
    int is_neg;
    uint64_t u;   /* magnitude for integers */
    double d;
};
struct jdoc {
    char *buf; /* private copy of the text, strings unescaped in place */
    const char *orig;
    size_t len;
    struct jnode *nodes;
    int n, cap;
};
/* Parse text[0..len). On error returns -1 and describes the position (line:col) in e. */
int json_parse(struct jdoc *doc, const char *text, size_t len, struct zl_err *e);
void json_free(struct jdoc *doc);
const struct jnode *json_root(const struct jdoc *doc);
const struct jnode *json_get(const struct jdoc *doc, const struct jnode *obj, const char *key);
const struct jnode *json_first(const struct jdoc *doc, const struct jnode *n);
const struct jnode *json_next(const struct jdoc *doc, const struct jnode *n);
int json_read_file(struct jdoc *doc, const char *path, struct zl_err *e);

/* ---- config.c ---- */
struct zl_mount {
    const char *dest, *type, *source;
    unsigned long flags, prop_flags;
    int bind, rec_ro;
    char data[512];
};
struct zl_ns {
    int flag;         /* CLONE_NEW* */
    const char *path; /* join this one instead of creating (NULL = new) */
};
struct zl_idmap {
    uint32_t container, host, size;
};
struct zl_rlimit {
    int resource;
    uint64_t soft, hard;
    const char *name;
};
struct zl_kv {
    const char *key, *value;
};
struct zl_devrule {
    int allow;
    char type;
    int64_t major, minor;
    char access[4];
};
struct zl_device {
    const char *path;
    char type;
    int64_t major, minor;
    uint32_t mode, uid, gid;
    int has_mode, has_uid, has_gid;
};
struct zl_resources {
    int64_t mem_limit, mem_reservation, mem_swap; /* 0 = unset, -1 = unlimited */
    int has_mem_limit, has_mem_reservation, has_mem_swap;
    uint64_t cpu_shares;
    int64_t cpu_quota;
    uint64_t cpu_period;
    const char *cpus, *mems;
    int64_t pids_limit;
    int has_pids;
    struct zl_devrule *devrules;
    int n_devrules;
};
struct zl_process {
    int terminal;
    const char **args; int n_args;
    const char **env; int n_env;
    const char *cwd;
    uint32_t uid, gid;
    uint32_t *groups; int n_groups;
    int has_umask; uint32_t umask;
    uint64_t cap_bounding, cap_effective, cap_inheritable, cap_permitted, cap_ambient;
    int has_caps;
    struct zl_rlimit *rlimits; int n_rlimits;
    int no_new_privs;
    int has_oom_score_adj; int oom_score_adj;
};
struct zl_config {
    struct jdoc doc;
    char bundle[4096];
    char rootfs[4096];
    int root_readonly;
    const char *hostname, *domainname;
    struct zl_process proc;
    struct zl_mount *mounts; int n_mounts;
    struct zl_ns ns[8]; int n_ns;
    int clone_flags; /* namespaces to create */
    struct zl_idmap *uidmap, *gidmap; int n_uidmap, n_gidmap;
    struct zl_kv *sysctl; int n_sysctl;
    struct zl_resources res;
    const char *cgroups_path;
    unsigned long rootfs_prop;
    const char **masked; int n_masked;
    const char **readonly; int n_readonly;
    struct zl_device *devices; int n_devices;
    const struct jnode *seccomp;
    const struct jnode *hooks; /* OCI hooks object (run by hooks.c) */
};
int config_load(struct zl_config *c, const char *bundle, struct zl_err *e);
/* Parse a process object (config.json's process, or an exec override) into p. */
int config_process(struct zl_config *c, const struct jnode *n, struct zl_process *p, struct zl_err *e);
void config_free(struct zl_config *c);
int cap_from_name(const char *name);
int ns_flag_from_name(const char *name);

/* ---- cgroups.c ---- */
#define ZL_MAX_CGROUPS 16
struct zl_cgroups {
    char paths[ZL_MAX_CGROUPS][512];
    char controllers[ZL_MAX_CGROUPS][64];
    int n;
    int v2; /* pure unified host */
};
int cgroups_create(struct zl_cgroups *cg, const struct zl_config *c, const char *id, struct zl_err *e);
int cgroups_enter(const struct zl_cgroups *cg, pid_t pid, struct zl_err *e);
int cgroups_enter_self(const struct zl_cgroups *cg, struct zl_err *e);
void cgroups_destroy(const struct zl_cgroups *cg);
const char *cgroups_path_of(const struct zl_cgroups *cg, const char *controller);

/* ---- oom.c ---- */
/* The oom_kill counter in memory.events (v2) / memory.oom_control (v1) text; 0 = found, -1 = absent or malformed */
int oom_parse_kills(const char *text, size_t len, uint64_t *out);
/* v2: 1 reads memory.events, 0 memory.oom_control, -1 whichever exists */
int oom_read_kills(const char *dir, int v2, uint64_t *out);
int cgroups_oom_kills(const struct zl_cgroups *cg, uint64_t *out);
int cmd_oom_kills(const char *dir);

/* ---- namespaces.c ---- */
int ns_join_paths(const struct zl_config *c, int only_flag, int skip_flag, struct zl_err *e);
int ns_write_idmaps(const struct zl_config *c, pid_t pid, struct zl_err *e);

/* ---- mounts.c ---- */
int mounts_setup_rootfs(const struct zl_config *c, const struct zl_cgroups *cg, const char *console,
                        struct zl_err *e);
int mounts_finalize(const struct zl_config *c, struct zl_err *e);

/* ---- seccomp.c ---- */
struct zl_bpf {
    void *filter; /* struct sock_filter[] */
    unsigned short len;
    unsigned flags;
};
int seccomp_prepare(const struct zl_config *c, const char *cache_dir, struct zl_bpf *out, struct zl_err *e);
int seccomp_apply(const struct zl_bpf *b, struct zl_err *e);
/* Fill out from an existing cache file only (exec path); 1 = loaded, 0 = not cached */

/* ---- caps.c ---- */
int caps_apply_rlimits(const struct zl_process *p, struct zl_err *e);
int caps_check_rlimits(const struct zl_process *p, struct zl_err *e);
int caps_apply_user_and_caps(const struct zl_process *p, struct zl_err *e);
int caps_drop_bounding(const struct zl_process *p, struct zl_err *e);
int caps_find_executable(const struct zl_process *p, char *out, size_t outlen, struct zl_err *e);

/* ---- logging.c ---- */
struct zl_log {
    int fd;
    char path[4096];
    uint64_t size, max_size;
    int max_files;
};
struct zl_stream {
    const char *name; /* "stdout" / "stderr" */
    int fd;           /* read end, -1 when closed */
    char buf[16384];
    size_t used;
};
int log_open(struct zl_log *l, const char *path, uint64_t max_size, int max_files, struct zl_err *e);
void log_line(struct zl_log *l, const char *stream, const char *tag, const char *data, size_t len);
/* Read what is available on s->fd and log complete lines; returns 0 at EOF (fd closed), 1 otherwise. */
int log_drain(struct zl_log *l, struct zl_stream *s);
void log_flush(struct zl_log *l, struct zl_stream *s);
void format_rfc3339(char *out, size_t outlen, int nanos);

/* ---- state.c ---- */
struct zl_state {
    char id[256];
    const char *status;
    pid_t pid, shim_pid;
    unsigned long long pid_start, shim_start;
    char bundle[4096];
    char log_path[4096];
    char created[40], started[40], finished[40];
    int exited, exit_code, exit_signal, oom_killed;
    const struct zl_cgroups *cg;
};
int state_write(int dirfd, const struct zl_state *s, struct zl_err *e);
int state_format(const struct zl_state *s, char *out, size_t outlen);
unsigned long long proc_start_time(pid_t pid);

/* ---- util ---- */
int write_file(const char *path, const char *data, struct zl_err *e);
int write_all(int fd, const void *buf, size_t len);
int mkdir_p(const char *path, mode_t mode);
size_t json_escape(char *out, size_t outlen, const char *s);
int send_fd(int sock, int fd);
int recv_fd(int sock, char *buf, size_t len);
int pty_become_console(int bind_console, struct zl_err *e);

/* ---- hooks.c ---- */
/* Run config.json's hooks of `kind` (createRuntime also runs the deprecated prestart) with the OCI state on stdin.
 * Returns -1 with e set when one fails or times out. */
int hooks_run(const struct zl_config *c, const char *kind, const char *id, const char *status, pid_t pid,
              struct zl_err *e);

/* ---- spawn.c / exec.c ---- */
struct zl_opts {
    const char *root, *bundle, *id, *log, *console_socket, *pid_file;
    uint64_t log_max_size;
    int log_max_files;
    int tty;
    unsigned short rows, cols; /* exec --tty: the terminal's size before the process starts (0: unset) */
    int stdio_fds[3];
    int have_stdio;
    /* exec */
    const char *cwd, *user;
    const char **env; int n_env;
    char **argv; int argc;
};
int cmd_create(struct zl_opts *o, int foreground_run);
int cmd_exec(struct zl_opts *o);

#endif
