/* Small helpers shared by the shim's parts: error text, whole-buffer writes, mkdir -p, JSON escaping, fd passing. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zlayer/shim.h"

int zl_fail(struct zl_err *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return -1;
}

int zl_fail_errno(struct zl_err *e, const char *fmt, ...)
{
    int err = errno;
    char head[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof(head), fmt, ap);
    va_end(ap);
    snprintf(e->msg, sizeof(e->msg), "%s: %s", head, strerror(err));
    errno = err;
    return -1;
}

int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int write_file(const char *path, const char *data, struct zl_err *e)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_TRUNC);
    if (fd < 0)
        return zl_fail_errno(e, "cannot open %s", path);
    size_t len = strlen(data);
    ssize_t w = write(fd, data, len);
    if (w < 0 || (size_t)w != len) {
        int err = w < 0 ? errno : EIO;
        close(fd);
        errno = err;
        return zl_fail_errno(e, "cannot write '%s' to %s", data, path);
    }
    close(fd);
    return 0;
}

int mkdir_p(const char *path, mode_t mode)
{
    char tmp[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(tmp, path, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

size_t json_escape(char *out, size_t outlen, const char *s)
{
    size_t w = 0;
    if (outlen == 0)
        return 0;
    for (; *s && w + 7 < outlen; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[w++] = '\\';
            out[w++] = (char)c;
        } else if (c < 0x20) {
            w += (size_t)snprintf(out + w, outlen - w, "\\u%04x", c);
        } else {
            out[w++] = (char)c;
        }
    }
    out[w] = '\0';
    return w;
}

int send_fd(int sock, int fd)
{
    char data = 'F';
    struct iovec iov = {.iov_base = &data, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    return sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

int recv_fd(int sock, char *buf, size_t len)
{
    struct iovec iov = {.iov_base = buf, .iov_len = len - 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    buf[n > 0 ? n : 0] = '\0';
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    if (n <= 0 || !cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int)))
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    return fd;
}

/* A pty from the devpts of the current mount namespace (the container's own /dev/pts, as runc does), made the
 * controlling terminal and stdio of the caller. Returns the master (close-on-exec) or -1. */
int pty_become_console(int bind_console, struct zl_err *e)
{
    char name[128];
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        return zl_fail_errno(e, "cannot open /dev/ptmx");
    int unlock = 0;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ptsname_r(master, name, sizeof(name)) != 0) {
        close(master);
        return zl_fail_errno(e, "cannot set up the pseudo-terminal");
    }
    int slave = open(name, O_RDWR | O_NOCTTY);
    if (slave < 0) {
        close(master);
        return zl_fail_errno(e, "cannot open %s", name);
    }
    if (bind_console) {
        int f = open("/dev/console", O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (f >= 0)
            close(f);
        if (mount(name, "/dev/console", NULL, MS_BIND, NULL) < 0) {
            close(slave);
            close(master);
            return zl_fail_errno(e, "cannot bind %s on /dev/console", name);
        }
    }
    setsid();
    if (ioctl(slave, TIOCSCTTY, 0) < 0) {
        close(slave);
        close(master);
        return zl_fail_errno(e, "cannot make %s the controlling terminal", name);
    }
    for (int i = 0; i < 3; i++)
        dup2(slave, i);
    if (slave > 2)
        close(slave);
    return master;
}
