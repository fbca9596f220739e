/* linux.seccomp -> a BPF program, compiled once with libseccomp and cached as crun does: the cache key hashes
 * the parsed profile (structure, not whitespace), the libseccomp version and the architecture, so a cache hit
 * costs one small file read and libseccomp is not even initialised. */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zlayer/shim.h"

#define CACHE_MAGIC "ZLBPF001"

static uint64_t fnv(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t hash_node(const struct jdoc *d, const struct jnode *n, uint64_t h)
{
    unsigned char t = (unsigned char)n->type;
    h = fnv(h, &t, 1);
    if (n->key) {
        size_t kl = strlen(n->key);
        h = fnv(h, &kl, sizeof(kl));
        h = fnv(h, n->key, kl);
    }
    if (n->type == J_STR) {
        h = fnv(h, &n->len, sizeof(n->len));
        h = fnv(h, n->str, n->len);
    } else if (n->type == J_NUM) {
        h = fnv(h, &n->is_int, sizeof(n->is_int));
        h = fnv(h, &n->is_neg, sizeof(n->is_neg));
        h = fnv(h, &n->u, sizeof(n->u));
        h = fnv(h, &n->d, sizeof(n->d));
    } else if (n->type == J_ARR || n->type == J_OBJ) {
        h = fnv(h, &n->count, sizeof(n->count));
        for (const struct jnode *c = json_first(d, n); c; c = json_next(d, c))
            h = hash_node(d, c, h);
    }
    return h;
}

static int parse_action(const char *name, uint32_t errno_ret, uint32_t *out)
{
    if (strcmp(name, "SCMP_ACT_ALLOW") == 0)
        *out = SCMP_ACT_ALLOW;
    else if (strcmp(name, "SCMP_ACT_ERRNO") == 0)
        *out = SCMP_ACT_ERRNO(errno_ret);
    else if (strcmp(name, "SCMP_ACT_KILL") == 0 || strcmp(name, "SCMP_ACT_KILL_THREAD") == 0)
        *out = SCMP_ACT_KILL_THREAD;
    else if (strcmp(name, "SCMP_ACT_KILL_PROCESS") == 0)
        *out = SCMP_ACT_KILL_PROCESS;
    else if (strcmp(name, "SCMP_ACT_TRAP") == 0)
        *out = SCMP_ACT_TRAP;
    else if (strcmp(name, "SCMP_ACT_TRACE") == 0)
        *out = SCMP_ACT_TRACE(errno_ret);
    else if (strcmp(name, "SCMP_ACT_LOG") == 0)
        *out = SCMP_ACT_LOG;
    else
        return -1;
    return 0;
}

static int parse_op(const char *name, enum scmp_compare *out)
{
    static const struct {
        const char *n;
        enum scmp_compare op;
    } ops[] = {{"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
               {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
               {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strcmp(ops[i].n, name) == 0) {
            *out = ops[i].op;
            return 0;
        }
    return -1;
}

static uint32_t num_u32(const struct jnode *n, uint32_t dflt)
{
    return n && n->type == J_NUM && n->is_int && !n->is_neg && n->u <= 0xffffffffu ? (uint32_t)n->u : dflt;
}

static int compile(const struct zl_config *c, struct zl_bpf *out, struct zl_err *e)
{
    const struct jdoc *d = &c->doc;
    const struct jnode *s = c->seccomp;
    const struct jnode *da = json_get(d, s, "defaultAction");
    if (!da || da->type != J_STR)
        return zl_fail(e, "config.json: linux.seccomp.defaultAction: missing");
    uint32_t def_errno = num_u32(json_get(d, s, "defaultErrnoRet"), EPERM);
    uint32_t def_act;
    if (parse_action(da->str, def_errno, &def_act))
        return zl_fail(e, "config.json: linux.seccomp.defaultAction: unsupported action %s", da->str);
    scmp_filter_ctx ctx = seccomp_init(def_act);
    if (!ctx)
        return zl_fail(e, "seccomp: libseccomp could not initialise a filter");
    int rc = -1;
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
    const struct jnode *archs = json_get(d, s, "architectures");
    for (const struct jnode *a = json_first(d, archs); a; a = json_next(d, a)) {
        if (a->type != J_STR)
            continue;
        char name[64];
        const char *src = strncmp(a->str, "SCMP_ARCH_", 10) == 0 ? a->str + 10 : a->str;
        size_t k = 0;
        for (; src[k] && k < sizeof(name) - 1; k++)
            name[k] = (char)(src[k] >= 'A' && src[k] <= 'Z' ? src[k] + 32 : src[k]);
        name[k] = '\0';
        uint32_t arch = seccomp_arch_resolve_name(name);
        if (arch == 0)
            continue; /* an architecture this libseccomp does not know cannot run here anyway */
        int r = seccomp_arch_add(ctx, arch);
        if (r < 0 && r != -EEXIST) {
            zl_fail(e, "seccomp: cannot add architecture %s: %s", a->str, strerror(-r));
            goto out;
        }
    }
    int idx = 0;
    for (const struct jnode *rule = json_first(d, json_get(d, s, "syscalls")); rule; rule = json_next(d, rule), idx++) {
        const struct jnode *act = json_get(d, rule, "action");
        if (!act || act->type != J_STR) {
            zl_fail(e, "config.json: linux.seccomp.syscalls[%d].action: missing", idx);
            goto out;
        }
        uint32_t action;
        if (parse_action(act->str, num_u32(json_get(d, rule, "errnoRet"), def_errno), &action)) {
            zl_fail(e, "config.json: linux.seccomp.syscalls[%d].action: unsupported action %s", idx, act->str);
            goto out;
        }
        if (action == def_act)
            continue; /* libseccomp rejects rules that repeat the default */
        struct scmp_arg_cmp cmps[6];
        int ncmp = 0, dup_index = 0;
        const struct jnode *args = json_get(d, rule, "args");
        for (const struct jnode *a = json_first(d, args); a; a = json_next(d, a)) {
            if (ncmp == 6) {
                zl_fail(e, "config.json: linux.seccomp.syscalls[%d].args: more than 6", idx);
                goto out;
            }
            const struct jnode *op = json_get(d, a, "op"), *in = json_get(d, a, "index"),
                               *v = json_get(d, a, "value"), *v2 = json_get(d, a, "valueTwo");
            enum scmp_compare cop;
            if (!op || op->type != J_STR || parse_op(op->str, &cop) || !in || in->type != J_NUM || !in->is_int ||
                in->u > 5 || !v || v->type != J_NUM || !v->is_int || v->is_neg) {
                zl_fail(e, "config.json: linux.seccomp.syscalls[%d].args: needs index 0-5, value and a known op", idx);
                goto out;
            }
            cmps[ncmp].arg = (unsigned)in->u;
            cmps[ncmp].op = cop;
            cmps[ncmp].datum_a = v->u;
            cmps[ncmp].datum_b = (v2 && v2->type == J_NUM && v2->is_int) ? v2->u : 0;
            for (int k = 0; k < ncmp; k++)
                if (cmps[k].arg == cmps[ncmp].arg)
                    dup_index = 1;
            ncmp++;
        }
        for (const struct jnode *nm = json_first(d, json_get(d, rule, "names")); nm; nm = json_next(d, nm)) {
            if (nm->type != J_STR)
                continue;
            int nr = seccomp_syscall_resolve_name(nm->str);
            if (nr == __NR_SCMP_ERROR)
                continue; /* a syscall this kernel/arch does not have: nothing to filter */
            int r;
            if (dup_index) {
                /* conditions on the same argument are alternatives (as runc reads them): one rule each */
                r = 0;
                for (int k = 0; k < ncmp && r == 0; k++)
                    r = seccomp_rule_add_array(ctx, action, nr, 1, &cmps[k]);
            } else {
                r = seccomp_rule_add_array(ctx, action, nr, (unsigned)ncmp, cmps);
            }
            if (r < 0) {
                zl_fail(e, "seccomp: cannot add the rule for %s (syscalls[%d]): %s", nm->str, idx, strerror(-r));
                goto out;
            }
        }
    }
    int fd = memfd_create("zlayer-bpf", MFD_CLOEXEC);
    if (fd < 0) {
        zl_fail_errno(e, "memfd_create");
        goto out;
    }
    int r = seccomp_export_bpf(ctx, fd);
    off_t size = lseek(fd, 0, SEEK_END);
    if (r < 0 || size <= 0 || size % (off_t)sizeof(struct sock_filter) || size > 65535 * 8) {
        close(fd);
        zl_fail(e, "seccomp: cannot export the BPF program");
        goto out;
    }
    out->filter = malloc((size_t)size);
    if (!out->filter || pread(fd, out->filter, (size_t)size, 0) != size) {
        close(fd);
        zl_fail(e, "seccomp: cannot read the BPF program");
        goto out;
    }
    close(fd);
    out->len = (unsigned short)(size / (off_t)sizeof(struct sock_filter));
    rc = 0;
out:
    seccomp_release(ctx);
    return rc;
}

static unsigned parse_flags(const struct zl_config *c)
{
    unsigned f = 0;
    for (const struct jnode *x = json_first(&c->doc, json_get(&c->doc, c->seccomp, "flags")); x;
         x = json_next(&c->doc, x)) {
        if (x->type != J_STR)
            continue;
        if (strcmp(x->str, "SECCOMP_FILTER_FLAG_TSYNC") == 0)
            f |= SECCOMP_FILTER_FLAG_TSYNC;
        else if (strcmp(x->str, "SECCOMP_FILTER_FLAG_LOG") == 0)
            f |= SECCOMP_FILTER_FLAG_LOG;
        else if (strcmp(x->str, "SECCOMP_FILTER_FLAG_SPEC_ALLOW") == 0)
            f |= SECCOMP_FILTER_FLAG_SPEC_ALLOW;
    }
    return f;
}

static int load_cache(const char *path, struct zl_bpf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st;
    char magic[8];
    int ok = fstat(fd, &st) == 0 && st.st_size > 8 && (st.st_size - 8) % 8 == 0 && st.st_size <= 65535 * 8 + 8 &&
             read(fd, magic, 8) == 8 && memcmp(magic, CACHE_MAGIC, 8) == 0;
    if (ok) {
        size_t n = (size_t)st.st_size - 8;
        out->filter = malloc(n);
        ok = out->filter && read(fd, out->filter, n) == (ssize_t)n;
        if (ok)
            out->len = (unsigned short)(n / 8);
        else {
            free(out->filter);
            out->filter = NULL;
        }
    }
    close(fd);
    return ok;
}

static void store_cache(const char *dir, const char *path, const struct zl_bpf *b)
{
    char tmp[4300];
    mkdir_p(dir, 0700);
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    int ok = write_all(fd, CACHE_MAGIC, 8) == 0 && write_all(fd, b->filter, (size_t)b->len * 8) == 0 &&
             fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) < 0)
        unlink(tmp);
}

int seccomp_prepare(const struct zl_config *c, const char *cache_dir, struct zl_bpf *out, struct zl_err *e)
{
    memset(out, 0, sizeof(*out));
    if (!c->seccomp)
        return 0;
    out->flags = parse_flags(c);
    const struct scmp_version *v = seccomp_version();
    uint64_t h = 14695981039346656037ULL;
    h = fnv(h, v, sizeof(*v));
    h = fnv(h, "x86_64-v1", 9);
    h = hash_node(&c->doc, c->seccomp, h);
    char path[4200];
    snprintf(path, sizeof(path), "%s/%016llx.bpf", cache_dir, (unsigned long long)h);
    if (cache_dir && load_cache(path, out))
        return 0;
    if (compile(c, out, e))
        return -1;
    if (cache_dir)
        store_cache(cache_dir, path, out);
    return 0;
}

int seccomp_apply(const struct zl_bpf *b, struct zl_err *e)
{
    if (!b->filter)
        return 0;
    struct sock_fprog prog = {.len = b->len, .filter = b->filter};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, b->flags, &prog) < 0)
        return zl_fail_errno(e, "cannot load the seccomp filter");
    return 0;
}
