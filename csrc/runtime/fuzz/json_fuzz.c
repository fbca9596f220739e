/* libFuzzer target for the shim's parsers of outside input: json.c, and config.c on top of it (a parsed
 * document is walked the way config.json is read, so type confusions in field access are found too). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zlayer/shim.h"

static void walk(const struct jdoc *d, const struct jnode *n, int depth)
{
    if (!n || depth > 80)
        return;
    if (n->type == J_STR && n->len && n->str[n->len] != '\0')
        abort(); /* strings must stay NUL-terminated */
    for (const struct jnode *c = json_first(d, n); c; c = json_next(d, c)) {
        if (n->type == J_OBJ && !c->key)
            abort();
        walk(d, c, depth + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jdoc doc;
    struct zl_err e;
    if (json_parse(&doc, (const char *)data, size, &e) == 0) {
        walk(&doc, json_root(&doc), 0);
        const struct jnode *p = json_get(&doc, json_root(&doc), "process");
        if (p) {
            struct zl_config c;
            memset(&c, 0, sizeof(c));
            c.doc = doc;
            struct zl_process proc;
            memset(&proc, 0, sizeof(proc));
            config_process(&c, p, &proc, &e);
            free(proc.args);
            free(proc.env);
            free(proc.groups);
            free(proc.rlimits);
        }
        json_free(&doc);
    }
    return 0;
}
