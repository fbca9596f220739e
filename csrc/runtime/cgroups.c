/* cgroups through cgroupfs, written directly (no service manager): one directory per v1 controller hierarchy
 * (this is what works on v1/v2 hybrid hosts, which crun refuses), or one in the unified hierarchy when the host
 * is pure v2. linux.cgroupsPath is taken relative to each hierarchy's root; the default is /zlayer/<id>. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zlayer/shim.h"

static int read_small(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t r = read(fd, buf, len - 1);
    close(fd);
    if (r < 0)
        return -1;
    buf[r] = '\0';
    while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == ' '))
        buf[--r] = '\0';
    return (int)r;
}

/* Fill cg with the mount points of usable hierarchies (controllers names in cg->controllers). */
static int find_hierarchies(struct zl_cgroups *cg, struct zl_err *e)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return zl_fail_errno(e, "cannot read /proc/self/mountinfo");
    char line[4096];
    char v2mount[512] = "";
    while (fgets(line, sizeof(line), f)) {
        char *sep = strstr(line, " - ");
        if (!sep)
            continue;
        char fstype[32], src[256], opts[1024];
        if (sscanf(sep + 3, "%31s %255s %1023s", fstype, src, opts) != 3)
            continue;
        /* field 5 is the mount point */
        char *p = line;
        for (int i = 0; i < 4 && p; i++) {
            p = strchr(p, ' ');
            if (p)
                p++;
        }
        if (!p)
            continue;
        char mnt[512];
        if (sscanf(p, "%511s", mnt) != 1)
            continue;
        if (strcmp(fstype, "cgroup2") == 0) {
            if (strcmp(mnt, "/sys/fs/cgroup") == 0)
                snprintf(v2mount, sizeof(v2mount), "%s", mnt);
            continue;
        }
        if (strcmp(fstype, "cgroup") != 0 || cg->n >= ZL_MAX_CGROUPS)
            continue;
        /* super options: rw,cpu,cpuacct / rw,name=systemd — keep hierarchies with real controllers */
        char ctrl[64] = "";
        char *save = NULL;
        for (char *tok = strtok_r(opts, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (strcmp(tok, "rw") == 0 || strcmp(tok, "ro") == 0 || strncmp(tok, "name=", 5) == 0 ||
                strchr(tok, '='))
                continue;
            if (strlen(ctrl) + strlen(tok) + 2 < sizeof(ctrl)) {
                if (ctrl[0])
                    strcat(ctrl, ",");
                strcat(ctrl, tok);
            }
        }
        if (!ctrl[0])
            continue;
        snprintf(cg->paths[cg->n], sizeof(cg->paths[0]), "%s", mnt);
        snprintf(cg->controllers[cg->n], sizeof(cg->controllers[0]), "%s", ctrl);
        cg->n++;
    }
    fclose(f);
    if (cg->n == 0 && v2mount[0]) {
        cg->v2 = 1;
        snprintf(cg->paths[0], sizeof(cg->paths[0]), "%s", v2mount);
        snprintf(cg->controllers[0], sizeof(cg->controllers[0]), "unified");
        cg->n = 1;
    }
    if (cg->n == 0)
        return zl_fail(e, "no cgroup hierarchy with controllers is mounted");
    return 0;
}

static int has_ctrl(const struct zl_cgroups *cg, int i, const char *name)
{
    if (cg->v2)
        return 1;
    const char *s = cg->controllers[i];
    size_t n = strlen(name);
    while (s && *s) {
        if (strncmp(s, name, n) == 0 && (s[n] == ',' || s[n] == '\0'))
            return 1;
        s = strchr(s, ',');
        if (s)
            s++;
    }
    return 0;
}

const char *cgroups_path_of(const struct zl_cgroups *cg, const char *controller)
{
    for (int i = 0; i < cg->n; i++)
        if (has_ctrl(cg, i, controller))
            return cg->paths[i];
    return NULL;
}

static int setf(const char *dir, const char *file, const char *val, struct zl_err *e)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    struct zl_err we;
    if (write_file(path, val, &we) == 0)
        return 0;
    return zl_fail(e, "cgroup: cannot set %s to %s: %s", file, val, strerror(errno));
}

/* mkdir every level below the hierarchy root; v1 cpuset levels start empty and must inherit cpus and mems. */
static int make_dirs(const char *root, const char *rel, int cpuset, int v2, struct zl_err *e)
{
    char path[600], parent[600];
    snprintf(path, sizeof(path), "%s", root);
    const char *p = rel;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        snprintf(parent, sizeof(parent), "%s", path);
        size_t pl = strlen(path);
        if (pl + n + 2 >= sizeof(path))
            return zl_fail(e, "cgroup path too long");
        path[pl] = '/';
        memcpy(path + pl + 1, p, n);
        path[pl + 1 + n] = '\0';
        if (mkdir(path, 0755) < 0) {
            if (errno != EEXIST)
                return zl_fail_errno(e, "cgroup: cannot create %s", path);
        } else if (cpuset) {
            char v[256], f[700];
            for (int k = 0; k < 2; k++) {
                const char *name = k ? "cpuset.mems" : "cpuset.cpus";
                snprintf(f, sizeof(f), "%s/%s", parent, name);
                if (read_small(f, v, sizeof(v)) > 0 && setf(path, name, v, e))
                    return -1;
            }
        } else if (v2 && end) {
            /* make the controllers available to the next level */
            char ctl[512], f[700], buf[600];
            snprintf(f, sizeof(f), "%s/cgroup.controllers", path);
            if (read_small(f, ctl, sizeof(ctl)) > 0) {
                char *save = NULL;
                buf[0] = '\0';
                for (char *t = strtok_r(ctl, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
                    if (strlen(buf) + strlen(t) + 3 >= sizeof(buf))
                        break;
                    strcat(buf, buf[0] ? " +" : "+");
                    strcat(buf, t);
                }
                struct zl_err ignore;
                snprintf(f, sizeof(f), "%s/cgroup.subtree_control", path);
                write_file(f, buf, &ignore);
            }
        }
        p += n;
    }
    return 0;
}

static int write_v1(const struct zl_cgroups *cg, int i, const struct zl_config *c, struct zl_err *e)
{
    const struct zl_resources *r = &c->res;
    const char *d = cg->paths[i];
    char v[64];
    if (has_ctrl(cg, i, "memory")) {
        if (r->has_mem_limit) {
            snprintf(v, sizeof(v), "%lld", (long long)(r->mem_limit ? r->mem_limit : -1));
            if (setf(d, "memory.limit_in_bytes", v, e))
                return -1;
        }
        if (r->has_mem_swap) {
            char f[700];
            snprintf(f, sizeof(f), "%s/memory.memsw.limit_in_bytes", d);
            snprintf(v, sizeof(v), "%lld", (long long)(r->mem_swap ? r->mem_swap : -1));
            if (access(f, F_OK) == 0) {
                if (setf(d, "memory.memsw.limit_in_bytes", v, e))
                    return -1;
            } else if (r->mem_swap != -1 && r->mem_swap != r->mem_limit) {
                return zl_fail(e, "cgroup: linux.resources.memory.swap needs swap accounting, which this kernel "
                                  "does not have");
            }
        }
        if (r->has_mem_reservation) {
            snprintf(v, sizeof(v), "%lld", (long long)(r->mem_reservation ? r->mem_reservation : -1));
            if (setf(d, "memory.soft_limit_in_bytes", v, e))
                return -1;
        }
    }
    if (has_ctrl(cg, i, "cpu")) {
        if (r->cpu_shares) {
            snprintf(v, sizeof(v), "%llu", (unsigned long long)r->cpu_shares);
            if (setf(d, "cpu.shares", v, e))
                return -1;
        }
        if (r->cpu_period) {
            snprintf(v, sizeof(v), "%llu", (unsigned long long)r->cpu_period);
            if (setf(d, "cpu.cfs_period_us", v, e))
                return -1;
        }
        if (r->cpu_quota) {
            snprintf(v, sizeof(v), "%lld", (long long)r->cpu_quota);
            if (setf(d, "cpu.cfs_quota_us", v, e))
                return -1;
        }
    }
    if (has_ctrl(cg, i, "cpuset")) {
        if (r->cpus && r->cpus[0] && setf(d, "cpuset.cpus", r->cpus, e))
            return -1;
        if (r->mems && r->mems[0] && setf(d, "cpuset.mems", r->mems, e))
            return -1;
    }
    if (has_ctrl(cg, i, "pids") && r->has_pids) {
        if (r->pids_limit > 0)
            snprintf(v, sizeof(v), "%lld", (long long)r->pids_limit);
        else
            snprintf(v, sizeof(v), "max");
        if (setf(d, "pids.max", v, e))
            return -1;
    }
    if (has_ctrl(cg, i, "devices") && r->n_devrules) {
        for (int k = 0; k < r->n_devrules; k++) {
            const struct zl_devrule *dr = &r->devrules[k];
            char rule[96], maj[24], min[24];
            if (dr->type == 'a' && dr->major < 0 && dr->minor < 0) {
                snprintf(rule, sizeof(rule), "a");
            } else {
                snprintf(maj, sizeof(maj), dr->major < 0 ? "*" : "%lld", (long long)dr->major);
                snprintf(min, sizeof(min), dr->minor < 0 ? "*" : "%lld", (long long)dr->minor);
                snprintf(rule, sizeof(rule), "%c %s:%s %s", dr->type, maj, min, dr->access[0] ? dr->access : "rwm");
            }
            if (setf(d, dr->allow ? "devices.allow" : "devices.deny", rule, e))
                return -1;
        }
        /* the standard nodes every container gets (as runc allows them) */
        static const char *const std_allow[] = {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                                                "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"};
        for (size_t k = 0; k < sizeof(std_allow) / sizeof(std_allow[0]); k++)
            if (setf(d, "devices.allow", std_allow[k], e))
                return -1;
        for (int k = 0; k < c->n_devices; k++) {
            const struct zl_device *dv = &c->devices[k];
            char rule[96];
            snprintf(rule, sizeof(rule), "%c %lld:%lld rwm", dv->type == 'b' ? 'b' : 'c', (long long)dv->major,
                     (long long)dv->minor);
            if (dv->type != 'p' && setf(d, "devices.allow", rule, e))
                return -1;
        }
    }
    return 0;
}

static int write_v2(const struct zl_cgroups *cg, const struct zl_config *c, struct zl_err *e)
{
    const struct zl_resources *r = &c->res;
    const char *d = cg->paths[0];
    char v[64];
    if (r->has_mem_limit) {
        if (r->mem_limit > 0)
            snprintf(v, sizeof(v), "%lld", (long long)r->mem_limit);
        else
            snprintf(v, sizeof(v), "max");
        if (setf(d, "memory.max", v, e))
            return -1;
    }
    if (r->has_mem_swap && r->has_mem_limit) {
        if (r->mem_swap > 0 && r->mem_limit > 0)
            snprintf(v, sizeof(v), "%lld", (long long)(r->mem_swap - r->mem_limit));
        else
            snprintf(v, sizeof(v), "max");
        if (setf(d, "memory.swap.max", v, e))
            return -1;
    }
    if (r->has_mem_reservation) {
        snprintf(v, sizeof(v), "%lld", (long long)r->mem_reservation);
        if (setf(d, "memory.low", v, e))
            return -1;
    }
    if (r->cpu_shares) {
        unsigned long long w = 1 + ((r->cpu_shares - 2) * 9999) / 262142;
        snprintf(v, sizeof(v), "%llu", w < 1 ? 1 : w > 10000 ? 10000 : w);
        if (setf(d, "cpu.weight", v, e))
            return -1;
    }
    if (r->cpu_quota || r->cpu_period) {
        unsigned long long period = r->cpu_period ? r->cpu_period : 100000;
        if (r->cpu_quota > 0)
            snprintf(v, sizeof(v), "%lld %llu", (long long)r->cpu_quota, period);
        else
            snprintf(v, sizeof(v), "max %llu", period);
        if (setf(d, "cpu.max", v, e))
            return -1;
    }
    if (r->cpus && r->cpus[0] && setf(d, "cpuset.cpus", r->cpus, e))
        return -1;
    if (r->mems && r->mems[0] && setf(d, "cpuset.mems", r->mems, e))
        return -1;
    if (r->has_pids) {
        if (r->pids_limit > 0)
            snprintf(v, sizeof(v), "%lld", (long long)r->pids_limit);
        else
            snprintf(v, sizeof(v), "max");
        if (setf(d, "pids.max", v, e))
            return -1;
    }
    return 0;
}

int cgroups_create(struct zl_cgroups *cg, const struct zl_config *c, const char *id, struct zl_err *e)
{
    memset(cg, 0, sizeof(*cg));
    if (find_hierarchies(cg, e))
        return -1;
    char rel[400];
    if (c->cgroups_path && c->cgroups_path[0]) {
        if (strstr(c->cgroups_path, "..") || strchr(c->cgroups_path, ':'))
            return zl_fail(e, "config.json: linux.cgroupsPath: %s: must be a plain path (no '..', no systemd "
                              "slice:prefix:name form)", c->cgroups_path);
        snprintf(rel, sizeof(rel), "%s%s", c->cgroups_path[0] == '/' ? "" : "/", c->cgroups_path);
    } else {
        snprintf(rel, sizeof(rel), "/zlayer/%s", id);
    }
    int made = 0;
    for (int i = 0; i < cg->n; i++) {
        char root[512];
        snprintf(root, sizeof(root), "%s", cg->paths[i]);
        if (make_dirs(root, rel, !cg->v2 && has_ctrl(cg, i, "cpuset"), cg->v2, e))
            goto fail;
        if (strlen(root) + strlen(rel) >= sizeof(cg->paths[i])) {
            zl_fail(e, "cgroup path too long");
            goto fail;
        }
        memcpy(cg->paths[i], root, strlen(root));
        memcpy(cg->paths[i] + strlen(root), rel, strlen(rel) + 1);
        made = i + 1;
        if (!cg->v2 && write_v1(cg, i, c, e))
            goto fail;
    }
    if (cg->v2 && write_v2(cg, c, e))
        goto fail;
    return 0;
fail:
    cg->n = made;
    cgroups_destroy(cg);
    cg->n = 0;
    return -1;
}

/* Move the calling (single-threaded) process. On v1 writing 0 to "tasks" moves just this thread and skips the
 * global threadgroup lock that a cgroup.procs write takes (an RCU grace period: ~10 ms on a small VM). */
int cgroups_enter_self(const struct zl_cgroups *cg, struct zl_err *e)
{
    for (int i = 0; i < cg->n; i++)
        if (setf(cg->paths[i], cg->v2 ? "cgroup.procs" : "tasks", "0", e))
            return -1;
    return 0;
}

int cgroups_enter(const struct zl_cgroups *cg, pid_t pid, struct zl_err *e)
{
    char v[24];
    snprintf(v, sizeof(v), "%d", (int)pid);
    for (int i = 0; i < cg->n; i++)
        if (setf(cg->paths[i], "cgroup.procs", v, e))
            return -1;
    return 0;
}

void cgroups_destroy(const struct zl_cgroups *cg)
{
    for (int i = 0; i < cg->n; i++) {
        for (int tries = 0; tries < 500; tries++) {
            if (rmdir(cg->paths[i]) == 0 || errno == ENOENT)
                break;
            if (errno != EBUSY)
                break;
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
}
