/* The container's filesystem: private propagation, the rootfs bound on itself, config.json's mounts in order
 * (each destination resolved inside the rootfs with openat2(RESOLVE_IN_ROOT), so a symlink in an image cannot
 * point a mount at the host), the standard /dev nodes, pivot_root, then masked and read-only paths. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "zlayer/shim.h"

static int openat2_in_root(int rootfd, const char *path, int flags)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    return (int)syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
}

/* O_PATH fd of dest inside the rootfs, creating missing directories (and the last component as a file when
 * is_file). */
static int open_in_root(int rootfd, const char *dest, int is_file, struct zl_err *e)
{
    char prefix[4096];
    size_t len = strlen(dest);
    if (len >= sizeof(prefix))
        return zl_fail(e, "mount destination too long: %s", dest);
    int fd = openat2_in_root(rootfd, dest, O_PATH);
    if (fd >= 0)
        return fd;
    if (errno != ENOENT)
        return zl_fail_errno(e, "cannot resolve %s in the rootfs", dest);
    size_t i = 0;
    int parent = openat2_in_root(rootfd, "/", O_PATH);
    if (parent < 0)
        return zl_fail_errno(e, "cannot open the rootfs");
    while (i < len) {
        while (i < len && dest[i] == '/')
            i++;
        size_t s = i;
        while (i < len && dest[i] != '/')
            i++;
        if (s == i)
            break;
        memcpy(prefix, dest, i);
        prefix[i] = '\0';
        int last = i >= len || dest[i + strspn(dest + i, "/")] == '\0';
        fd = openat2_in_root(rootfd, prefix, O_PATH);
        if (fd < 0 && errno == ENOENT) {
            char comp[256];
            if (i - s >= sizeof(comp)) {
                close(parent);
                return zl_fail(e, "path component too long in %s", dest);
            }
            memcpy(comp, dest + s, i - s);
            comp[i - s] = '\0';
            if (last && is_file) {
                int f = openat(parent, comp, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (f >= 0)
                    close(f);
            } else {
                mkdirat(parent, comp, 0755);
            }
            fd = openat2_in_root(rootfd, prefix, O_PATH);
        }
        if (fd < 0) {
            int err = errno;
            close(parent);
            errno = err;
            return zl_fail_errno(e, "cannot create mount point %s in the rootfs", dest);
        }
        close(parent);
        parent = fd;
    }
    return parent;
}

static int do_mount(const char *src, int tfd, const char *type, unsigned long flags, const char *data)
{
    char target[64];
    snprintf(target, sizeof(target), "/proc/self/fd/%d", tfd);
    return mount(src, target, type, flags, data);
}

/* MS_REMOUNT needs the mount itself: reopen dest after mounting on it (an fd taken before points below it). */
static int remount_at(int rootfd, const char *dest, unsigned long flags, const char *data, struct zl_err *e)
{
    int fd = open_in_root(rootfd, dest, 0, e);
    if (fd < 0)
        return -1;
    int r = do_mount(NULL, fd, NULL, flags, data);
    int err = errno;
    close(fd);
    errno = err;
    return r;
}

static int mount_cgroup_fs(const struct zl_mount *m, int rootfd, int tfd, const struct zl_cgroups *cg,
                           struct zl_err *e)
{
    unsigned long ro = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (cg->v2) {
        if (do_mount(cg->paths[0], tfd, NULL, MS_BIND | MS_REC, NULL) < 0)
            return zl_fail_errno(e, "mount cgroup2 on %s", m->dest);
        if ((m->flags & MS_RDONLY) && remount_at(rootfd, m->dest, MS_BIND | MS_REMOUNT | ro, NULL, e) < 0)
            return zl_fail_errno(e, "remount %s read-only", m->dest);
        return 0;
    }
    if (do_mount("tmpfs", tfd, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755") < 0)
        return zl_fail_errno(e, "mount tmpfs on %s", m->dest);
    for (int i = 0; i < cg->n; i++) {
        char dest[700];
        snprintf(dest, sizeof(dest), "%s/%s", m->dest, cg->controllers[i]);
        int fd = open_in_root(rootfd, dest, 0, e);
        if (fd < 0)
            return -1;
        int r = do_mount(cg->paths[i], fd, NULL, MS_BIND | MS_REC, NULL);
        close(fd);
        if (r < 0)
            return zl_fail_errno(e, "bind cgroup %s on %s", cg->paths[i], dest);
        if ((m->flags & MS_RDONLY) && remount_at(rootfd, dest, MS_BIND | MS_REMOUNT | ro, NULL, e) < 0)
            return zl_fail_errno(e, "remount %s read-only", dest);
    }
    if ((m->flags & MS_RDONLY) && remount_at(rootfd, m->dest, MS_REMOUNT | ro, "mode=755", e) < 0)
        return zl_fail_errno(e, "remount %s read-only", m->dest);
    return 0;
}

static int one_mount(const struct zl_mount *m, int idx, int rootfd,
                     const struct zl_cgroups *cg, struct zl_err *e)
{
    int is_file = 0;
    if (m->bind) {
        struct stat st;
        if (stat(m->source, &st) < 0)
            return zl_fail_errno(e, "mounts[%d]: bind source %s", idx, m->source);
        is_file = !S_ISDIR(st.st_mode);
    }
    int tfd = open_in_root(rootfd, m->dest, is_file, e);
    if (tfd < 0)
        return -1;
    int rc = 0;
    if (strcmp(m->type, "cgroup") == 0 || strcmp(m->type, "cgroup2") == 0) {
        rc = mount_cgroup_fs(m, rootfd, tfd, cg, e);
    } else if (m->bind) {
        unsigned long bf = MS_BIND | (m->bind == 2 ? MS_REC : 0);
        if (do_mount(m->source, tfd, NULL, bf, NULL) < 0) {
            rc = zl_fail_errno(e, "mounts[%d]: bind %s on %s", idx, m->source, m->dest);
        } else {
            /* the bind mount is a new mount on the target: reopen it to remount its flags */
            close(tfd);
            tfd = open_in_root(rootfd, m->dest, is_file, e);
            if (tfd < 0)
                return -1;
            unsigned long f = m->flags & ~(MS_REMOUNT | MS_BIND | MS_REC);
            if (f && do_mount(NULL, tfd, NULL, MS_REMOUNT | MS_BIND | f, NULL) < 0)
                rc = zl_fail_errno(e, "mounts[%d]: remount %s with its options", idx, m->dest);
        }
    } else {
        int r = do_mount(m->source, tfd, m->type, m->flags, m->data[0] ? m->data : NULL);
        if (r < 0 && strcmp(m->type, "sysfs") == 0 && (errno == EPERM || errno == EBUSY)) {
            /* no private network namespace: the kernel refuses a new sysfs, bind the host's read-only */
            r = do_mount("/sys", tfd, NULL, MS_BIND | MS_REC, NULL);
            if (r == 0) {
                close(tfd);
                tfd = open_in_root(rootfd, m->dest, 0, e);
                if (tfd < 0)
                    return -1;
                r = do_mount(NULL, tfd, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                             NULL);
            }
        }
        if (r < 0)
            rc = zl_fail_errno(e, "mounts[%d]: mount %s (%s) on %s", idx, m->source, m->type, m->dest);
    }
    if (rc == 0 && m->prop_flags) {
        close(tfd);
        tfd = open_in_root(rootfd, m->dest, is_file, e);
        if (tfd < 0)
            return -1;
        if (do_mount(NULL, tfd, NULL, m->prop_flags, NULL) < 0)
            rc = zl_fail_errno(e, "mounts[%d]: set propagation of %s", idx, m->dest);
    }
    close(tfd);
    return rc;
}

static int make_dev_nodes(const struct zl_config *c, int rootfd, int userns, struct zl_err *e)
{
    static const struct {
        const char *name;
        unsigned maj, min;
    } nodes[] = {{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
    int dev = openat2_in_root(rootfd, "/dev", O_PATH | O_DIRECTORY);
    if (dev < 0)
        return zl_fail_errno(e, "cannot open /dev in the rootfs");
    mode_t old = umask(0);
    int rc = 0;
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]) && rc == 0; i++) {
        if (!userns) {
            if (mknodat(dev, nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0 &&
                errno != EEXIST)
                rc = zl_fail_errno(e, "mknod /dev/%s", nodes[i].name);
        } else {
            char host[64], dest[64];
            snprintf(host, sizeof(host), "/dev/%s", nodes[i].name);
            snprintf(dest, sizeof(dest), "/dev/%s", nodes[i].name);
            int fd = open_in_root(rootfd, dest, 1, e);
            if (fd < 0) {
                rc = -1;
                break;
            }
            if (do_mount(host, fd, NULL, MS_BIND, NULL) < 0)
                rc = zl_fail_errno(e, "bind %s into the container", host);
            close(fd);
        }
    }
    for (int i = 0; i < c->n_devices && rc == 0; i++) {
        const struct zl_device *d = &c->devices[i];
        mode_t type = d->type == 'b' ? S_IFBLK : d->type == 'p' ? S_IFIFO : S_IFCHR;
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", d->path);
        char *slash = strrchr(dir, '/');
        const char *base = d->path + (slash - dir) + 1;
        if (slash == dir)
            dir[1] = '\0';
        else
            *slash = '\0';
        int pfd = open_in_root(rootfd, dir, 0, e);
        if (pfd < 0) {
            rc = -1;
            break;
        }
        if (mknodat(pfd, base, type | (d->has_mode ? (d->mode & 07777) : 0666),
                    makedev((unsigned)d->major, (unsigned)d->minor)) < 0 && errno != EEXIST)
            rc = zl_fail_errno(e, "linux.devices[%d]: mknod %s", i, d->path);
        else if ((d->has_uid || d->has_gid) &&
                 fchownat(pfd, base, d->has_uid ? d->uid : (uid_t)-1, d->has_gid ? d->gid : (gid_t)-1,
                          AT_SYMLINK_NOFOLLOW) < 0)
            rc = zl_fail_errno(e, "linux.devices[%d]: chown %s", i, d->path);
        close(pfd);
    }
    umask(old);
    static const char *const links[][2] = {{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
                                           {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
                                           {"pts/ptmx", "ptmx"}};
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]) && rc == 0; i++)
        if (symlinkat(links[i][0], dev, links[i][1]) < 0 && errno != EEXIST)
            rc = zl_fail_errno(e, "symlink /dev/%s", links[i][1]);
    close(dev);
    return rc;
}

int mounts_setup_rootfs(const struct zl_config *c, const struct zl_cgroups *cg, const char *console,
                        struct zl_err *e)
{
    if (mount(NULL, "/", NULL, c->rootfs_prop, NULL) < 0)
        return zl_fail_errno(e, "cannot make mount propagation private");
    if (mount(c->rootfs, c->rootfs, NULL, MS_BIND | MS_REC, NULL) < 0)
        return zl_fail_errno(e, "cannot bind the rootfs %s on itself", c->rootfs);
    int rootfd = open(c->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        return zl_fail_errno(e, "cannot open the rootfs %s", c->rootfs);
    int dev_tmpfs = 0;
    for (int i = 0; i < c->n_mounts; i++) {
        if (one_mount(&c->mounts[i], i, rootfd, cg, e)) {
            close(rootfd);
            return -1;
        }
        if (strcmp(c->mounts[i].dest, "/dev") == 0 && strcmp(c->mounts[i].type, "tmpfs") == 0)
            dev_tmpfs = 1;
    }
    if (dev_tmpfs && make_dev_nodes(c, rootfd, (c->clone_flags & CLONE_NEWUSER) != 0, e)) {
        close(rootfd);
        return -1;
    }
    if (console) {
        int fd = open_in_root(rootfd, "/dev/console", 1, e);
        if (fd < 0) {
            close(rootfd);
            return -1;
        }
        int r = do_mount(console, fd, NULL, MS_BIND, NULL);
        close(fd);
        if (r < 0) {
            close(rootfd);
            return zl_fail_errno(e, "bind the console %s on /dev/console", console);
        }
    }
    close(rootfd);
    /* pivot_root(".", "."): the old root ends up stacked on the new one and is detached right away */
    int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    int newroot = open(c->rootfs, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (oldroot < 0 || newroot < 0)
        return zl_fail_errno(e, "open roots for pivot_root");
    int rc = 0;
    if (fchdir(newroot) < 0 || syscall(SYS_pivot_root, ".", ".") < 0)
        rc = zl_fail_errno(e, "pivot_root to %s", c->rootfs);
    else if (fchdir(oldroot) < 0 || mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) < 0 ||
             umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        rc = zl_fail_errno(e, "detach the old root");
    close(oldroot);
    close(newroot);
    return rc;
}

/* After pivot_root: sysctls are set by the caller first; then masked and read-only paths, then a read-only root. */
int mounts_finalize(const struct zl_config *c, struct zl_err *e)
{
    for (int i = 0; i < c->n_masked; i++) {
        struct stat st;
        const char *p = c->masked[i];
        if (stat(p, &st) < 0)
            continue;
        int r = S_ISDIR(st.st_mode) ? mount("tmpfs", p, "tmpfs", MS_RDONLY, "size=0k")
                                    : mount("/dev/null", p, NULL, MS_BIND, NULL);
        if (r < 0 && errno != ENOENT)
            return zl_fail_errno(e, "cannot mask %s", p);
    }
    for (int i = 0; i < c->n_readonly; i++) {
        const char *p = c->readonly[i];
        if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0) {
            if (errno == ENOENT)
                continue;
            return zl_fail_errno(e, "cannot make %s read-only", p);
        }
        struct statvfs sv;
        unsigned long keep = 0;
        if (statvfs(p, &sv) == 0)
            keep = (sv.f_flag & ST_NOSUID ? MS_NOSUID : 0) | (sv.f_flag & ST_NODEV ? MS_NODEV : 0) |
                   (sv.f_flag & ST_NOEXEC ? MS_NOEXEC : 0);
        if (mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC | keep, NULL) < 0)
            return zl_fail_errno(e, "cannot remount %s read-only", p);
    }
    if (c->root_readonly && mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
        return zl_fail_errno(e, "cannot make the root filesystem read-only");
    return 0;
}
