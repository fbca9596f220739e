/* config.json (OCI runtime spec) -> struct zl_config. Every field is type-checked and every error names the
 * field path, e.g. "config.json: linux.resources.memory.limit: expected an integer". Unknown fields are ignored,
 * as the spec allows. Strings point into the parsed document, which lives as long as the config. */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>

#include "zlayer/shim.h"

static const char *const CAP_NAMES[] = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
};

int cap_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof(CAP_NAMES) / sizeof(CAP_NAMES[0]); i++)
        if (strcasecmp(CAP_NAMES[i], name) == 0 || strcasecmp(CAP_NAMES[i] + 4, name) == 0)
            return (int)i;
    return -1;
}

static const struct {
    const char *name;
    int flag;
} NS_NAMES[] = {
    {"pid", CLONE_NEWPID}, {"network", CLONE_NEWNET}, {"mount", CLONE_NEWNS}, {"ipc", CLONE_NEWIPC},
    {"uts", CLONE_NEWUTS}, {"user", CLONE_NEWUSER}, {"cgroup", CLONE_NEWCGROUP}, {"time", 0x00000080},
};

int ns_flag_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof(NS_NAMES) / sizeof(NS_NAMES[0]); i++)
        if (strcmp(NS_NAMES[i].name, name) == 0)
            return NS_NAMES[i].flag;
    return -1;
}

static const struct {
    const char *name;
    int res;
} RLIMITS[] = {
    {"RLIMIT_CPU", RLIMIT_CPU}, {"RLIMIT_FSIZE", RLIMIT_FSIZE}, {"RLIMIT_DATA", RLIMIT_DATA},
    {"RLIMIT_STACK", RLIMIT_STACK}, {"RLIMIT_CORE", RLIMIT_CORE}, {"RLIMIT_RSS", RLIMIT_RSS},
    {"RLIMIT_NPROC", RLIMIT_NPROC}, {"RLIMIT_NOFILE", RLIMIT_NOFILE}, {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK},
    {"RLIMIT_AS", RLIMIT_AS}, {"RLIMIT_LOCKS", RLIMIT_LOCKS}, {"RLIMIT_SIGPENDING", RLIMIT_SIGPENDING},
    {"RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE}, {"RLIMIT_NICE", RLIMIT_NICE}, {"RLIMIT_RTPRIO", RLIMIT_RTPRIO},
    {"RLIMIT_RTTIME", RLIMIT_RTTIME},
};

static const struct {
    const char *name;
    int clear;
    unsigned long flag;
} MOUNT_FLAGS[] = {
    {"ro", 0, MS_RDONLY}, {"rw", 1, MS_RDONLY}, {"nosuid", 0, MS_NOSUID}, {"suid", 1, MS_NOSUID},
    {"nodev", 0, MS_NODEV}, {"dev", 1, MS_NODEV}, {"noexec", 0, MS_NOEXEC}, {"exec", 1, MS_NOEXEC},
    {"sync", 0, MS_SYNCHRONOUS}, {"async", 1, MS_SYNCHRONOUS}, {"dirsync", 0, MS_DIRSYNC},
    {"remount", 0, MS_REMOUNT}, {"mand", 0, MS_MANDLOCK}, {"nomand", 1, MS_MANDLOCK},
    {"atime", 1, MS_NOATIME}, {"noatime", 0, MS_NOATIME}, {"diratime", 1, MS_NODIRATIME},
    {"nodiratime", 0, MS_NODIRATIME}, {"relatime", 0, MS_RELATIME}, {"norelatime", 1, MS_RELATIME},
    {"strictatime", 0, MS_STRICTATIME}, {"nostrictatime", 1, MS_STRICTATIME},
};

static const struct {
    const char *name;
    unsigned long flag;
} PROP_FLAGS[] = {
    {"private", MS_PRIVATE}, {"rprivate", MS_PRIVATE | MS_REC}, {"shared", MS_SHARED},
    {"rshared", MS_SHARED | MS_REC}, {"slave", MS_SLAVE}, {"rslave", MS_SLAVE | MS_REC},
    {"unbindable", MS_UNBINDABLE}, {"runbindable", MS_UNBINDABLE | MS_REC},
};

#define GET(obj, k) json_get(&c->doc, (obj), (k))

static int want(const struct jnode *n, enum jtype t, const char *path, struct zl_err *e)
{
    static const char *const names[] = {"null", "a boolean", "a boolean", "a number", "a string", "an array",
                                        "an object"};
    int ok = n->type == t || (t == J_TRUE && n->type == J_FALSE);
    if (!ok)
        return zl_fail(e, "config.json: %s: expected %s", path, names[t]);
    return 0;
}

static int get_str(struct zl_config *c, const struct jnode *obj, const char *key, const char *path,
                   const char **out, struct zl_err *e)
{
    const struct jnode *n = GET(obj, key);
    if (!n || n->type == J_NULL)
        return 0;
    if (want(n, J_STR, path, e))
        return -1;
    if (strlen(n->str) != n->len)
        return zl_fail(e, "config.json: %s: contains a NUL byte", path);
    *out = n->str;
    return 0;
}

static int get_bool(struct zl_config *c, const struct jnode *obj, const char *key, const char *path, int *out,
                    struct zl_err *e)
{
    const struct jnode *n = GET(obj, key);
    if (!n || n->type == J_NULL)
        return 0;
    if (want(n, J_TRUE, path, e))
        return -1;
    *out = n->type == J_TRUE;
    return 0;
}

/* Integers: int64 range, optionally bounded below. */
static int get_i64(struct zl_config *c, const struct jnode *obj, const char *key, const char *path, int64_t *out,
                   int *has, struct zl_err *e)
{
    const struct jnode *n = GET(obj, key);
    if (!n || n->type == J_NULL)
        return 0;
    if (n->type != J_NUM || !n->is_int || (!n->is_neg && n->u > (uint64_t)INT64_MAX))
        return zl_fail(e, "config.json: %s: expected an integer", path);
    *out = n->is_neg ? (n->u == (1ULL << 63) ? INT64_MIN : -(int64_t)n->u) : (int64_t)n->u;
    if (has)
        *has = 1;
    return 0;
}

static int get_u64(struct zl_config *c, const struct jnode *obj, const char *key, const char *path, uint64_t *out,
                   int *has, struct zl_err *e)
{
    const struct jnode *n = GET(obj, key);
    if (!n || n->type == J_NULL)
        return 0;
    if (n->type != J_NUM || !n->is_int || n->is_neg)
        return zl_fail(e, "config.json: %s: expected a non-negative integer", path);
    *out = n->u;
    if (has)
        *has = 1;
    return 0;
}

static int get_u32(struct zl_config *c, const struct jnode *obj, const char *key, const char *path, uint32_t *out,
                   int *has, struct zl_err *e)
{
    uint64_t v = 0;
    int h = 0;
    if (get_u64(c, obj, key, path, &v, &h, e))
        return -1;
    if (h && v > UINT32_MAX)
        return zl_fail(e, "config.json: %s: %llu is out of range", path, (unsigned long long)v);
    if (h) {
        *out = (uint32_t)v;
        if (has)
            *has = 1;
    }
    return 0;
}

static int str_array(struct zl_config *c, const struct jnode *n, const char *path, const char ***out, int *count,
                     struct zl_err *e)
{
    if (!n || n->type == J_NULL)
        return 0;
    if (want(n, J_ARR, path, e))
        return -1;
    const char **arr = calloc((size_t)n->count + 1, sizeof(*arr));
    if (!arr)
        return zl_fail(e, "out of memory");
    int i = 0;
    for (const struct jnode *x = json_first(&c->doc, n); x; x = json_next(&c->doc, x)) {
        if (x->type != J_STR || strlen(x->str) != x->len) {
            free(arr);
            return zl_fail(e, "config.json: %s[%d]: expected a string", path, i);
        }
        arr[i++] = x->str;
    }
    *out = arr;
    *count = i;
    return 0;
}

static int cap_set(struct zl_config *c, const struct jnode *caps, const char *key, uint64_t *out, struct zl_err *e)
{
    const struct jnode *n = GET(caps, key);
    *out = 0;
    if (!n || n->type == J_NULL)
        return 0;
    if (n->type != J_ARR)
        return zl_fail(e, "config.json: process.capabilities.%s: expected an array", key);
    int i = 0;
    for (const struct jnode *x = json_first(&c->doc, n); x; x = json_next(&c->doc, x), i++) {
        if (x->type != J_STR)
            return zl_fail(e, "config.json: process.capabilities.%s[%d]: expected a string", key, i);
        int cap = cap_from_name(x->str);
        if (cap < 0)
            return zl_fail(e, "config.json: process.capabilities.%s[%d]: unknown capability %s", key, i, x->str);
        *out |= 1ULL << cap;
    }
    return 0;
}

int config_process(struct zl_config *c, const struct jnode *pn, struct zl_process *p, struct zl_err *e)
{
    if (!pn)
        return zl_fail(e, "config.json: process: missing");
    if (want(pn, J_OBJ, "process", e))
        return -1;
    if (get_bool(c, pn, "terminal", "process.terminal", &p->terminal, e))
        return -1;
    if (str_array(c, GET(pn, "args"), "process.args", &p->args, &p->n_args, e))
        return -1;
    if (str_array(c, GET(pn, "env"), "process.env", &p->env, &p->n_env, e))
        return -1;
    p->cwd = "/";
    if (get_str(c, pn, "cwd", "process.cwd", &p->cwd, e))
        return -1;
    if (p->cwd[0] != '/')
        return zl_fail(e, "config.json: process.cwd: %s is not an absolute path", p->cwd);
    const struct jnode *u = GET(pn, "user");
    if (u && u->type != J_NULL) {
        if (want(u, J_OBJ, "process.user", e))
            return -1;
        if (get_u32(c, u, "uid", "process.user.uid", &p->uid, NULL, e) ||
            get_u32(c, u, "gid", "process.user.gid", &p->gid, NULL, e) ||
            get_u32(c, u, "umask", "process.user.umask", &p->umask, &p->has_umask, e))
            return -1;
        const struct jnode *g = GET(u, "additionalGids");
        if (g && g->type != J_NULL) {
            if (want(g, J_ARR, "process.user.additionalGids", e))
                return -1;
            p->groups = calloc((size_t)g->count + 1, sizeof(uint32_t));
            if (!p->groups)
                return zl_fail(e, "out of memory");
            for (const struct jnode *x = json_first(&c->doc, g); x; x = json_next(&c->doc, x)) {
                if (x->type != J_NUM || !x->is_int || x->is_neg || x->u > UINT32_MAX)
                    return zl_fail(e, "config.json: process.user.additionalGids[%d]: expected a gid", p->n_groups);
                p->groups[p->n_groups++] = (uint32_t)x->u;
            }
        }
    }
    const struct jnode *caps = GET(pn, "capabilities");
    if (caps && caps->type != J_NULL) {
        if (want(caps, J_OBJ, "process.capabilities", e))
            return -1;
        p->has_caps = 1;
        if (cap_set(c, caps, "bounding", &p->cap_bounding, e) || cap_set(c, caps, "effective", &p->cap_effective, e) ||
            cap_set(c, caps, "inheritable", &p->cap_inheritable, e) ||
            cap_set(c, caps, "permitted", &p->cap_permitted, e) || cap_set(c, caps, "ambient", &p->cap_ambient, e))
            return -1;
    }
    const struct jnode *rl = GET(pn, "rlimits");
    if (rl && rl->type != J_NULL) {
        if (want(rl, J_ARR, "process.rlimits", e))
            return -1;
        p->rlimits = calloc((size_t)rl->count + 1, sizeof(*p->rlimits));
        if (!p->rlimits)
            return zl_fail(e, "out of memory");
        int i = 0;
        for (const struct jnode *x = json_first(&c->doc, rl); x; x = json_next(&c->doc, x), i++) {
            char path[64];
            snprintf(path, sizeof(path), "process.rlimits[%d]", i);
            if (want(x, J_OBJ, path, e))
                return -1;
            const char *type = NULL;
            struct zl_rlimit *r = &p->rlimits[p->n_rlimits];
            int hs = 0, hh = 0;
            if (get_str(c, x, "type", path, &type, e) || get_u64(c, x, "soft", path, &r->soft, &hs, e) ||
                get_u64(c, x, "hard", path, &r->hard, &hh, e))
                return -1;
            if (!type || !hs || !hh)
                return zl_fail(e, "config.json: %s: needs type, soft and hard", path);
            r->resource = -1;
            for (size_t k = 0; k < sizeof(RLIMITS) / sizeof(RLIMITS[0]); k++)
                if (strcmp(RLIMITS[k].name, type) == 0) {
                    r->resource = RLIMITS[k].res;
                    r->name = RLIMITS[k].name;
                }
            if (r->resource < 0)
                return zl_fail(e, "config.json: %s.type: unknown rlimit %s", path, type);
            if (r->soft > r->hard)
                return zl_fail(e, "config.json: %s: soft limit %llu is above the hard limit %llu", path,
                               (unsigned long long)r->soft, (unsigned long long)r->hard);
            p->n_rlimits++;
        }
    }
    if (get_bool(c, pn, "noNewPrivileges", "process.noNewPrivileges", &p->no_new_privs, e))
        return -1;
    int64_t oom = 0;
    if (get_i64(c, pn, "oomScoreAdj", "process.oomScoreAdj", &oom, &p->has_oom_score_adj, e))
        return -1;
    if (oom < -1000 || oom > 1000)
        return zl_fail(e, "config.json: process.oomScoreAdj: %lld is outside -1000..1000", (long long)oom);
    p->oom_score_adj = (int)oom;
    return 0;
}

static int parse_mount(struct zl_config *c, const struct jnode *m, int i, struct zl_mount *out, struct zl_err *e)
{
    char path[64];
    snprintf(path, sizeof(path), "mounts[%d]", i);
    if (want(m, J_OBJ, path, e))
        return -1;
    if (get_str(c, m, "destination", path, &out->dest, e) || get_str(c, m, "type", path, &out->type, e) ||
        get_str(c, m, "source", path, &out->source, e))
        return -1;
    if (!out->dest || out->dest[0] != '/')
        return zl_fail(e, "config.json: %s.destination: must be an absolute path", path);
    const char **opts = NULL;
    int n = 0;
    if (str_array(c, GET(m, "options"), path, &opts, &n, e))
        return -1;
    size_t dl = 0;
    for (int k = 0; k < n; k++) {
        const char *o = opts[k];
        int known = 0;
        if (strcmp(o, "bind") == 0 || strcmp(o, "rbind") == 0) {
            out->bind = o[0] == 'r' ? 2 : 1;
            known = 1;
        }
        if (strcmp(o, "rro") == 0) {
            out->rec_ro = 1;
            known = 1;
        }
        for (size_t f = 0; !known && f < sizeof(MOUNT_FLAGS) / sizeof(MOUNT_FLAGS[0]); f++)
            if (strcmp(o, MOUNT_FLAGS[f].name) == 0) {
                if (MOUNT_FLAGS[f].clear)
                    out->flags &= ~MOUNT_FLAGS[f].flag;
                else
                    out->flags |= MOUNT_FLAGS[f].flag;
                known = 1;
            }
        for (size_t f = 0; !known && f < sizeof(PROP_FLAGS) / sizeof(PROP_FLAGS[0]); f++)
            if (strcmp(o, PROP_FLAGS[f].name) == 0) {
                out->prop_flags = PROP_FLAGS[f].flag;
                known = 1;
            }
        if (known)
            continue;
        size_t ol = strlen(o);
        if (dl + ol + 2 > sizeof(out->data)) {
            free(opts);
            return zl_fail(e, "config.json: %s.options: too long", path);
        }
        if (dl)
            out->data[dl++] = ',';
        memcpy(out->data + dl, o, ol + 1);
        dl += ol;
    }
    free(opts);
    if (!out->type)
        out->type = out->bind ? "bind" : "none";
    if (strcmp(out->type, "bind") == 0 && !out->bind)
        out->bind = 1;
    if (!out->source)
        out->source = out->type;
    return 0;
}

/* Only sysctls the kernel isolates per namespace may be set (as runc checks), or the host would change. */
static int sysctl_allowed(const struct zl_config *c, const char *key)
{
    static const char *const ipc[] = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                                      "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"};
    for (size_t i = 0; i < sizeof(ipc) / sizeof(ipc[0]); i++)
        if (strcmp(key, ipc[i]) == 0)
            return (c->clone_flags & CLONE_NEWIPC) != 0;
    if (strncmp(key, "fs.mqueue.", 10) == 0)
        return (c->clone_flags & CLONE_NEWIPC) != 0;
    if (strncmp(key, "net.", 4) == 0)
        return (c->clone_flags & CLONE_NEWNET) != 0;
    if (strcmp(key, "kernel.hostname") == 0 || strcmp(key, "kernel.domainname") == 0)
        return (c->clone_flags & CLONE_NEWUTS) != 0;
    return 0;
}

static int parse_resources(struct zl_config *c, const struct jnode *r, struct zl_err *e)
{
    struct zl_resources *res = &c->res;
    if (!r || r->type == J_NULL)
        return 0;
    if (want(r, J_OBJ, "linux.resources", e))
        return -1;
    const struct jnode *m = GET(r, "memory");
    if (m && m->type != J_NULL) {
        if (want(m, J_OBJ, "linux.resources.memory", e) ||
            get_i64(c, m, "limit", "linux.resources.memory.limit", &res->mem_limit, &res->has_mem_limit, e) ||
            get_i64(c, m, "reservation", "linux.resources.memory.reservation", &res->mem_reservation,
                    &res->has_mem_reservation, e) ||
            get_i64(c, m, "swap", "linux.resources.memory.swap", &res->mem_swap, &res->has_mem_swap, e))
            return -1;
        if (res->has_mem_limit && res->mem_limit < -1)
            return zl_fail(e, "config.json: linux.resources.memory.limit: %lld is negative",
                           (long long)res->mem_limit);
    }
    const struct jnode *cpu = GET(r, "cpu");
    if (cpu && cpu->type != J_NULL) {
        if (want(cpu, J_OBJ, "linux.resources.cpu", e) ||
            get_u64(c, cpu, "shares", "linux.resources.cpu.shares", &res->cpu_shares, NULL, e) ||
            get_i64(c, cpu, "quota", "linux.resources.cpu.quota", &res->cpu_quota, NULL, e) ||
            get_u64(c, cpu, "period", "linux.resources.cpu.period", &res->cpu_period, NULL, e) ||
            get_str(c, cpu, "cpus", "linux.resources.cpu.cpus", &res->cpus, e) ||
            get_str(c, cpu, "mems", "linux.resources.cpu.mems", &res->mems, e))
            return -1;
    }
    const struct jnode *pids = GET(r, "pids");
    if (pids && pids->type != J_NULL) {
        if (want(pids, J_OBJ, "linux.resources.pids", e) ||
            get_i64(c, pids, "limit", "linux.resources.pids.limit", &res->pids_limit, &res->has_pids, e))
            return -1;
    }
    const struct jnode *dev = GET(r, "devices");
    if (dev && dev->type != J_NULL) {
        if (want(dev, J_ARR, "linux.resources.devices", e))
            return -1;
        res->devrules = calloc((size_t)dev->count + 1, sizeof(*res->devrules));
        if (!res->devrules)
            return zl_fail(e, "out of memory");
        int i = 0;
        for (const struct jnode *x = json_first(&c->doc, dev); x; x = json_next(&c->doc, x), i++) {
            char path[64];
            snprintf(path, sizeof(path), "linux.resources.devices[%d]", i);
            struct zl_devrule *d = &res->devrules[res->n_devrules];
            const char *type = "a", *access = "rwm";
            d->major = d->minor = -1;
            if (want(x, J_OBJ, path, e) || get_bool(c, x, "allow", path, &d->allow, e) ||
                get_str(c, x, "type", path, &type, e) || get_str(c, x, "access", path, &access, e) ||
                get_i64(c, x, "major", path, &d->major, NULL, e) || get_i64(c, x, "minor", path, &d->minor, NULL, e))
                return -1;
            if (strlen(type) != 1 || !strchr("abc", type[0]))
                return zl_fail(e, "config.json: %s.type: must be a, b or c", path);
            if (strlen(access) > 3 || strspn(access, "rwm") != strlen(access))
                return zl_fail(e, "config.json: %s.access: must be made of r, w, m", path);
            d->type = type[0];
            strcpy(d->access, access);
            res->n_devrules++;
        }
    }
    return 0;
}

static int parse_idmap(struct zl_config *c, const struct jnode *n, const char *path, struct zl_idmap **out,
                       int *count, struct zl_err *e)
{
    if (!n || n->type == J_NULL)
        return 0;
    if (want(n, J_ARR, path, e))
        return -1;
    *out = calloc((size_t)n->count + 1, sizeof(**out));
    if (!*out)
        return zl_fail(e, "out of memory");
    for (const struct jnode *x = json_first(&c->doc, n); x; x = json_next(&c->doc, x)) {
        struct zl_idmap *m = &(*out)[*count];
        if (want(x, J_OBJ, path, e) || get_u32(c, x, "containerID", path, &m->container, NULL, e) ||
            get_u32(c, x, "hostID", path, &m->host, NULL, e) || get_u32(c, x, "size", path, &m->size, NULL, e))
            return -1;
        (*count)++;
    }
    return 0;
}

static int parse_linux(struct zl_config *c, const struct jnode *l, struct zl_err *e)
{
    if (!l || l->type == J_NULL)
        return 0;
    if (want(l, J_OBJ, "linux", e))
        return -1;
    const struct jnode *ns = GET(l, "namespaces");
    if (ns && ns->type != J_NULL) {
        if (want(ns, J_ARR, "linux.namespaces", e))
            return -1;
        int i = 0;
        for (const struct jnode *x = json_first(&c->doc, ns); x; x = json_next(&c->doc, x), i++) {
            char path[64];
            snprintf(path, sizeof(path), "linux.namespaces[%d]", i);
            const char *type = NULL, *nspath = NULL;
            if (want(x, J_OBJ, path, e) || get_str(c, x, "type", path, &type, e) ||
                get_str(c, x, "path", path, &nspath, e))
                return -1;
            int flag = type ? ns_flag_from_name(type) : -1;
            if (flag <= 0)
                return zl_fail(e, "config.json: %s.type: unknown or unsupported namespace %s", path,
                               type ? type : "(none)");
            for (int k = 0; k < c->n_ns; k++)
                if (c->ns[k].flag == flag)
                    return zl_fail(e, "config.json: %s: namespace %s listed twice", path, type);
            if (c->n_ns >= 8)
                return zl_fail(e, "config.json: linux.namespaces: too many");
            c->ns[c->n_ns].flag = flag;
            c->ns[c->n_ns].path = (nspath && nspath[0]) ? nspath : NULL;
            c->n_ns++;
            if (!nspath || !nspath[0])
                c->clone_flags |= flag;
        }
    }
    if (parse_idmap(c, GET(l, "uidMappings"), "linux.uidMappings", &c->uidmap, &c->n_uidmap, e) ||
        parse_idmap(c, GET(l, "gidMappings"), "linux.gidMappings", &c->gidmap, &c->n_gidmap, e))
        return -1;
    if ((c->clone_flags & CLONE_NEWUSER) && (!c->n_uidmap || !c->n_gidmap))
        return zl_fail(e, "config.json: linux: a new user namespace needs uidMappings and gidMappings");
    const struct jnode *sc = GET(l, "sysctl");
    if (sc && sc->type != J_NULL) {
        if (want(sc, J_OBJ, "linux.sysctl", e))
            return -1;
        c->sysctl = calloc((size_t)sc->count + 1, sizeof(*c->sysctl));
        if (!c->sysctl)
            return zl_fail(e, "out of memory");
        for (const struct jnode *x = json_first(&c->doc, sc); x; x = json_next(&c->doc, x)) {
            if (x->type != J_STR)
                return zl_fail(e, "config.json: linux.sysctl.%s: expected a string", x->key);
            if (!sysctl_allowed(c, x->key) || strstr(x->key, "..") || strchr(x->key, '/'))
                return zl_fail(e, "config.json: linux.sysctl.%s: not a sysctl isolated by the container's "
                                  "namespaces; refusing to change the host", x->key);
            c->sysctl[c->n_sysctl].key = x->key;
            c->sysctl[c->n_sysctl].value = x->str;
            c->n_sysctl++;
        }
    }
    if (parse_resources(c, GET(l, "resources"), e))
        return -1;
    if (get_str(c, l, "cgroupsPath", "linux.cgroupsPath", &c->cgroups_path, e))
        return -1;
    const char *prop = NULL;
    if (get_str(c, l, "rootfsPropagation", "linux.rootfsPropagation", &prop, e))
        return -1;
    c->rootfs_prop = MS_PRIVATE | MS_REC;
    if (prop && prop[0]) {
        c->rootfs_prop = 0;
        for (size_t f = 0; f < sizeof(PROP_FLAGS) / sizeof(PROP_FLAGS[0]); f++)
            if (strcmp(prop, PROP_FLAGS[f].name) == 0)
                c->rootfs_prop = PROP_FLAGS[f].flag | MS_REC;
        if (!c->rootfs_prop)
            return zl_fail(e, "config.json: linux.rootfsPropagation: unknown value %s", prop);
    }
    if (str_array(c, GET(l, "maskedPaths"), "linux.maskedPaths", &c->masked, &c->n_masked, e) ||
        str_array(c, GET(l, "readonlyPaths"), "linux.readonlyPaths", &c->readonly, &c->n_readonly, e))
        return -1;
    const struct jnode *devs = GET(l, "devices");
    if (devs && devs->type != J_NULL) {
        if (want(devs, J_ARR, "linux.devices", e))
            return -1;
        c->devices = calloc((size_t)devs->count + 1, sizeof(*c->devices));
        if (!c->devices)
            return zl_fail(e, "out of memory");
        int i = 0;
        for (const struct jnode *x = json_first(&c->doc, devs); x; x = json_next(&c->doc, x), i++) {
            char path[64];
            snprintf(path, sizeof(path), "linux.devices[%d]", i);
            struct zl_device *d = &c->devices[c->n_devices];
            const char *type = NULL;
            if (want(x, J_OBJ, path, e) || get_str(c, x, "path", path, &d->path, e) ||
                get_str(c, x, "type", path, &type, e) || get_i64(c, x, "major", path, &d->major, NULL, e) ||
                get_i64(c, x, "minor", path, &d->minor, NULL, e) ||
                get_u32(c, x, "fileMode", path, &d->mode, &d->has_mode, e) ||
                get_u32(c, x, "uid", path, &d->uid, &d->has_uid, e) ||
                get_u32(c, x, "gid", path, &d->gid, &d->has_gid, e))
                return -1;
            if (!d->path || d->path[0] != '/' || !type || strlen(type) != 1 || !strchr("cbup", type[0]))
                return zl_fail(e, "config.json: %s: needs an absolute path and type c, b, u or p", path);
            d->type = type[0];
            c->n_devices++;
        }
    }
    const struct jnode *seccomp = GET(l, "seccomp");
    if (seccomp && seccomp->type != J_NULL) {
        if (want(seccomp, J_OBJ, "linux.seccomp", e))
            return -1;
        c->seccomp = seccomp;
    }
    return 0;
}

int config_load(struct zl_config *c, const char *bundle, struct zl_err *e)
{
    memset(c, 0, sizeof(*c));
    char path[4200];
    if (!realpath(bundle, c->bundle))
        return zl_fail_errno(e, "bundle %s", bundle);
    snprintf(path, sizeof(path), "%s/config.json", c->bundle);
    if (json_read_file(&c->doc, path, e))
        return -1;
    const struct jnode *root = json_root(&c->doc);
    if (root->type != J_OBJ)
        return zl_fail(e, "%s: the document must be an object", path);
    const struct jnode *r = GET(root, "root");
    const char *rp = NULL;
    if (!r || r->type != J_OBJ || get_str(c, r, "path", "root.path", &rp, e) || !rp)
        return e->msg[0] ? -1 : zl_fail(e, "config.json: root.path: missing");
    if (get_bool(c, r, "readonly", "root.readonly", &c->root_readonly, e))
        return -1;
    char joined[8300];
    if (rp[0] == '/')
        snprintf(joined, sizeof(joined), "%s", rp);
    else
        snprintf(joined, sizeof(joined), "%s/%s", c->bundle, rp);
    if (!realpath(joined, c->rootfs))
        return zl_fail_errno(e, "config.json: root.path: rootfs %s", joined);
    if (get_str(c, root, "hostname", "hostname", &c->hostname, e) ||
        get_str(c, root, "domainname", "domainname", &c->domainname, e))
        return -1;
    if (config_process(c, GET(root, "process"), &c->proc, e))
        return -1;
    if (c->proc.n_args == 0)
        return zl_fail(e, "config.json: process.args: must name the program to run");
    const struct jnode *mounts = GET(root, "mounts");
    if (mounts && mounts->type != J_NULL) {
        if (want(mounts, J_ARR, "mounts", e))
            return -1;
        c->mounts = calloc((size_t)mounts->count + 1, sizeof(*c->mounts));
        if (!c->mounts)
            return zl_fail(e, "out of memory");
        for (const struct jnode *x = json_first(&c->doc, mounts); x; x = json_next(&c->doc, x)) {
            if (parse_mount(c, x, c->n_mounts, &c->mounts[c->n_mounts], e))
                return -1;
            c->n_mounts++;
        }
    }
    if (parse_linux(c, GET(root, "linux"), e))
        return -1;
    const struct jnode *hooks = GET(root, "hooks");
    if (hooks && hooks->type != J_NULL) {
        if (want(hooks, J_OBJ, "hooks", e))
            return -1;
        for (const struct jnode *k = json_first(&c->doc, hooks); k; k = json_next(&c->doc, k)) {
            int i = 0;
            if (k->type != J_ARR)
                return zl_fail(e, "config.json: hooks.%s: expected an array", k->key);
            for (const struct jnode *h = json_first(&c->doc, k); h; h = json_next(&c->doc, h), i++) {
                const struct jnode *path = json_get(&c->doc, h, "path");
                if (h->type != J_OBJ || !path || path->type != J_STR || path->str[0] != '/')
                    return zl_fail(e, "config.json: hooks.%s[%d].path: must be an absolute path", k->key, i);
                const struct jnode *args = json_get(&c->doc, h, "args"), *env = json_get(&c->doc, h, "env");
                for (const struct jnode *a = json_first(&c->doc, args); a; a = json_next(&c->doc, a))
                    if (a->type != J_STR)
                        return zl_fail(e, "config.json: hooks.%s[%d].args: expected strings", k->key, i);
                for (const struct jnode *a = json_first(&c->doc, env); a; a = json_next(&c->doc, a))
                    if (a->type != J_STR)
                        return zl_fail(e, "config.json: hooks.%s[%d].env: expected strings", k->key, i);
            }
        }
        c->hooks = hooks;
    }
    if (c->hostname && c->hostname[0] && !(c->clone_flags & CLONE_NEWUTS))
        return zl_fail(e, "config.json: hostname: setting it needs a new uts namespace");
    return 0;
}

void config_free(struct zl_config *c)
{
    free(c->proc.args);
    free(c->proc.env);
    free(c->proc.groups);
    free(c->proc.rlimits);
    free(c->mounts);
    free(c->uidmap);
    free(c->gidmap);
    free(c->sysctl);
    free(c->res.devrules);
    free(c->masked);
    free(c->readonly);
    free(c->devices);
    json_free(&c->doc);
}
