/* Joining namespaces named by path in config.json, and writing user-namespace id maps. New namespaces are
 * created by clone3 in spawn.c. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "zlayer/shim.h"

/* Join the path namespaces of c. only_flag != 0 joins just that kind; skip_flag is never joined here. The user
 * namespace goes first so the others are joined with its privileges. */
int ns_join_paths(const struct zl_config *c, int only_flag, int skip_flag, struct zl_err *e)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < c->n_ns; i++) {
            const struct zl_ns *ns = &c->ns[i];
            if (!ns->path || ns->flag == skip_flag || (only_flag && ns->flag != only_flag))
                continue;
            if ((pass == 0) != (ns->flag == CLONE_NEWUSER))
                continue;
            int fd = open(ns->path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                return zl_fail_errno(e, "cannot open namespace %s", ns->path);
            if (setns(fd, ns->flag) < 0) {
                int err = errno;
                close(fd);
                errno = err;
                return zl_fail_errno(e, "cannot join namespace %s", ns->path);
            }
            close(fd);
        }
    }
    return 0;
}

static int write_map(pid_t pid, const char *file, const struct zl_idmap *m, int n, struct zl_err *e)
{
    char buf[4096], path[64];
    size_t w = 0;
    for (int i = 0; i < n && w < sizeof(buf) - 40; i++)
        w += (size_t)snprintf(buf + w, sizeof(buf) - w, "%u %u %u\n", m[i].container, m[i].host, m[i].size);
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return zl_fail_errno(e, "cannot open %s", path);
    ssize_t r = write(fd, buf, w);
    int err = errno;
    close(fd);
    if (r < 0 || (size_t)r != w) {
        errno = r < 0 ? err : EIO;
        return zl_fail_errno(e, "cannot write the %s of the user namespace", file);
    }
    return 0;
}

int ns_write_idmaps(const struct zl_config *c, pid_t pid, struct zl_err *e)
{
    if (write_map(pid, "uid_map", c->uidmap, c->n_uidmap, e))
        return -1;
    return write_map(pid, "gid_map", c->gidmap, c->n_gidmap, e);
}
