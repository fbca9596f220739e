/* The process side of a container: rlimits, user and groups, capabilities, and finding the executable. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zlayer/shim.h"

/* Never above what the host allows us (RLIMIT_NOFILE hard is 20000 here): say so clearly instead of EPERM. */
int caps_check_rlimits(const struct zl_process *p, struct zl_err *e)
{
    for (int i = 0; i < p->n_rlimits; i++) {
        struct rlimit cur;
        const struct zl_rlimit *r = &p->rlimits[i];
        if (getrlimit(r->resource, &cur) < 0)
            return zl_fail_errno(e, "getrlimit %s", r->name);
        if (cur.rlim_max != RLIM_INFINITY && r->hard > cur.rlim_max)
            return zl_fail(e, "rlimit %s: hard limit %llu is above the host's hard limit %llu", r->name,
                           (unsigned long long)r->hard, (unsigned long long)cur.rlim_max);
    }
    return 0;
}

int caps_apply_rlimits(const struct zl_process *p, struct zl_err *e)
{
    for (int i = 0; i < p->n_rlimits; i++) {
        const struct zl_rlimit *r = &p->rlimits[i];
        struct rlimit rl = {.rlim_cur = r->soft, .rlim_max = r->hard};
        if (setrlimit(r->resource, &rl) < 0)
            return zl_fail_errno(e, "rlimit %s soft %llu hard %llu rejected by the kernel", r->name,
                                 (unsigned long long)r->soft, (unsigned long long)r->hard);
    }
    return 0;
}

int caps_drop_bounding(const struct zl_process *p, struct zl_err *e)
{
    if (!p->has_caps)
        return 0;
    for (int cap = 0; cap <= 63; cap++) {
        if (p->cap_bounding & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break; /* past the kernel's last capability */
            return zl_fail_errno(e, "cannot drop capability %d from the bounding set", cap);
        }
    }
    return 0;
}

int caps_apply_user_and_caps(const struct zl_process *p, struct zl_err *e)
{
    if (p->has_caps && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        return zl_fail_errno(e, "prctl(PR_SET_KEEPCAPS)");
    gid_t groups[1024];
    int ng = p->n_groups > 1024 ? 1024 : p->n_groups;
    for (int i = 0; i < ng; i++)
        groups[i] = p->groups[i];
    if (setgroups((size_t)ng, groups) < 0 && errno != EPERM)
        return zl_fail_errno(e, "setgroups");
    if (setresgid(p->gid, p->gid, p->gid) < 0)
        return zl_fail_errno(e, "cannot switch to gid %u", p->gid);
    if (setresuid(p->uid, p->uid, p->uid) < 0)
        return zl_fail_errno(e, "cannot switch to uid %u", p->uid);
    if (p->has_umask)
        umask(p->umask);
    if (!p->has_caps)
        return 0;
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
        return zl_fail_errno(e, "prctl(PR_SET_KEEPCAPS)");
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    for (int k = 0; k < 2; k++) {
        data[k].effective = (uint32_t)(p->cap_effective >> (32 * k));
        data[k].permitted = (uint32_t)(p->cap_permitted >> (32 * k));
        data[k].inheritable = (uint32_t)(p->cap_inheritable >> (32 * k));
    }
    if (syscall(SYS_capset, &hdr, data) < 0)
        return zl_fail_errno(e, "capset (effective/permitted/inheritable)");
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    for (int cap = 0; cap <= 63; cap++)
        if ((p->cap_ambient & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 &&
            errno != EINVAL && errno != EPERM)
            return zl_fail_errno(e, "cannot raise ambient capability %d", cap);
    return 0;
}

static const char *env_path(const struct zl_process *p)
{
    for (int i = 0; i < p->n_env; i++)
        if (strncmp(p->env[i], "PATH=", 5) == 0)
            return p->env[i] + 5;
    return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
}

static int is_exec_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111);
}

/* Resolve args[0] the way execvp would, in the container's root (called after pivot_root). */
int caps_find_executable(const struct zl_process *p, char *out, size_t outlen, struct zl_err *e)
{
    const char *name = p->args[0];
    if (!name[0])
        return zl_fail(e, "executable file not found: empty process.args[0]");
    if (strchr(name, '/')) {
        if (snprintf(out, outlen, "%s", name) >= (int)outlen)
            return zl_fail(e, "executable path too long");
        struct stat st;
        if (stat(out, &st) < 0)
            return zl_fail(e, "executable file not found: %s", name);
        if (!S_ISREG(st.st_mode) || !(st.st_mode & 0111))
            return zl_fail(e, "%s is not an executable file", name);
        return 0;
    }
    const char *path = env_path(p);
    while (*path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n && n + strlen(name) + 2 < outlen) {
            memcpy(out, path, n);
            out[n] = '/';
            strcpy(out + n + 1, name);
            if (is_exec_file(out))
                return 0;
        }
        if (!end)
            break;
        path = end + 1;
    }
    return zl_fail(e, "executable file not found in $PATH: %s", name);
}
