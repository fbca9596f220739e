/* Container output -> one log file in the CRI format, one line per record:
 *     2026-11-22T10:00:00.123456789Z stdout F hello
 * (timestamp RFC 3339 with nanoseconds in UTC, stream, F = full line / P = partial line cut at 16 KiB, text
 * without its newline). Each record is one write(2) on an O_APPEND fd, so readers never see half a record.
 * With a size limit the file rotates: log -> log.1 -> ... -> log.<max_files-1>, oldest dropped. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zlayer/shim.h"

void format_rfc3339(char *out, size_t outlen, int nanos)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (nanos)
        snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec);
    else
        snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int log_open(struct zl_log *l, const char *path, uint64_t max_size, int max_files, struct zl_err *e)
{
    memset(l, 0, sizeof(*l));
    l->fd = -1;
    if (!path)
        return 0;
    if (snprintf(l->path, sizeof(l->path), "%s", path) >= (int)sizeof(l->path))
        return zl_fail(e, "log path too long");
    l->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (l->fd < 0)
        return zl_fail_errno(e, "cannot open the log file %s", path);
    struct stat st;
    l->size = fstat(l->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    l->max_size = max_size;
    l->max_files = max_files > 0 ? max_files : 1;
    return 0;
}

static void rotate(struct zl_log *l)
{
    char from[4200], to[4200];
    for (int i = l->max_files - 1; i >= 1; i--) {
        if (i == 1)
            snprintf(from, sizeof(from), "%s", l->path);
        else
            snprintf(from, sizeof(from), "%s.%d", l->path, i - 1);
        snprintf(to, sizeof(to), "%s.%d", l->path, i);
        rename(from, to);
    }
    int fd = open(l->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (l->max_files <= 1 ? O_TRUNC : 0), 0600);
    if (fd >= 0) {
        close(l->fd);
        l->fd = fd;
        l->size = 0;
    }
}

void log_line(struct zl_log *l, const char *stream, const char *tag, const char *data, size_t len)
{
    if (l->fd < 0)
        return;
    char rec[16384 + 128];
    char ts[48];
    format_rfc3339(ts, sizeof(ts), 1);
    int h = snprintf(rec, sizeof(rec), "%s %s %s ", ts, stream, tag);
    if (h < 0 || len > sizeof(rec) - (size_t)h - 1)
        return;
    memcpy(rec + h, data, len);
    rec[(size_t)h + len] = '\n';
    size_t total = (size_t)h + len + 1;
    if (l->max_size && l->size && l->size + total > l->max_size)
        rotate(l);
    if (write_all(l->fd, rec, total) == 0)
        l->size += total;
}

int log_drain(struct zl_log *l, struct zl_stream *s)
{
    if (s->fd < 0)
        return 0;
    for (;;) {
        ssize_t r = read(s->fd, s->buf + s->used, sizeof(s->buf) - s->used);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 1;
        if (r <= 0) { /* EOF, or EIO from a pty whose other side closed */
            log_flush(l, s);
            close(s->fd);
            s->fd = -1;
            return 0;
        }
        s->used += (size_t)r;
        size_t start = 0;
        for (size_t i = 0; i < s->used; i++) {
            if (s->buf[i] != '\n')
                continue;
            size_t end = i;
            if (end > start && s->buf[end - 1] == '\r')
                end--; /* a tty writes CRLF */
            log_line(l, s->name, "F", s->buf + start, end - start);
            start = i + 1;
        }
        if (start == 0 && s->used == sizeof(s->buf)) {
            log_line(l, s->name, "P", s->buf, s->used);
            s->used = 0;
        } else if (start) {
            memmove(s->buf, s->buf + start, s->used - start);
            s->used -= start;
        }
    }
}

void log_flush(struct zl_log *l, struct zl_stream *s)
{
    if (s->used) {
        log_line(l, s->name, "F", s->buf, s->used);
        s->used = 0;
    }
}
