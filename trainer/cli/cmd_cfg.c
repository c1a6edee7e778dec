/* ctuner list-cfg / copy-cfg: the built-in configs, as XTuner's commands of
 * the same names. list-cfg prints one name per line (scriptable); copy-cfg
 * writes DIR/NAME_copy.yaml like XTuner's NAME_copy.py, so the copy never
 * shadows the built-in name, and refuses to overwrite an existing file. */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/io/fsutil.h"

/* Substring match ignoring case, or a shell glob when the pattern has one. */
static bool name_matches(const char *name, const char *pattern) {
    if (!pattern) return true;
    if (strpbrk(pattern, "*?[")) return fnmatch(pattern, name, FNM_CASEFOLD) == 0;
    return strcasestr(name, pattern) != NULL;
}

int ct_cmd_list_cfg(int argc, char **argv) {
    const char *pattern = NULL;
    const ct_argspec specs[] = {
        {"-p", CT_ARG_STR, &pattern, "PATTERN", "only names containing PATTERN (any case), or matching a glob"},
        {"--pattern", CT_ARG_STR, &pattern, "PATTERN", "the same as -p"},
    };
    ct_args a = {.usage = "ctuner list-cfg [-p PATTERN]",
                 .summary = "List the built-in configs (one name per line); copy one with 'ctuner copy-cfg NAME DIR'.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0])};
    CT_TRY(ct_args_parse(&a, argc, argv));
    char dir[CT_PATH_MAX];
    CT_TRY(ct_config_builtin_dir(dir, sizeof dir));
    char **names = NULL;
    size_t n = 0;
    CT_TRY(ct_config_builtin_names(dir, &names, &n));
    for (size_t i = 0; i < n; i++)
        if (name_matches(names[i], pattern)) printf("%s\n", names[i]);
    ct_config_names_free(names, n);
    return fflush(stdout) == 0 ? CT_OK : ct_errorf(CT_ERUNTIME, "writing the list failed");
}

/* "unknown config" with the nearest names: names containing NAME first (the
 * closest in length first), then the others within reach by edit distance. */
typedef struct {
    const char *name;
    size_t rank;
} candidate;

static int by_rank(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    return x->rank < y->rank ? -1 : x->rank > y->rank ? 1 : strcmp(x->name, y->name);
}

static int unknown_config(const char *name, const char *dir) {
    char **names = NULL;
    size_t n = 0;
    CT_TRY(ct_config_builtin_names(dir, &names, &n));
    candidate *c = n ? malloc(n * sizeof *c) : NULL;
    size_t nc = 0, len = strlen(name), reach = len / 4 > 3 ? len / 4 : 3;
    for (size_t i = 0; c && i < n; i++) {
        size_t nl = strlen(names[i]);
        if (strcasestr(names[i], name)) c[nc++] = (candidate){names[i], nl - len};
        else {
            size_t d = ct_config_edit_distance(name, names[i]);
            if (d <= reach) c[nc++] = (candidate){names[i], 1000 + d};
        }
    }
    if (nc) qsort(c, nc, sizeof *c, by_rank);
    char close[1024] = "";
    for (size_t i = 0; i < nc && i < 5; i++) {
        size_t k = strlen(close);
        snprintf(close + k, sizeof close - k, "%s%s", i ? ", " : "", c[i].name);
    }
    int rc = nc ? ct_errorf(CT_EINPUT, "unknown config '%s'; close matches: %s (all: ctuner list-cfg)", name, close)
                : ct_errorf(CT_EINPUT, "unknown config '%s' (see the names with: ctuner list-cfg)", name);
    free(c);
    ct_config_names_free(names, n);
    return rc;
}

int ct_cmd_copy_cfg(int argc, char **argv) {
    ct_args a = {.usage = "ctuner copy-cfg NAME DIR",
                 .summary = "Copy the built-in config NAME to DIR/NAME_copy.yaml (DIR is created) to edit it.",
                 .min_positional = 2,
                 .max_positional = 2};
    CT_TRY(ct_args_parse(&a, argc, argv));
    char name[256];
    snprintf(name, sizeof name, "%s", a.positional[0]);
    size_t len = strlen(name);
    if (len > 5 && strcmp(name + len - 5, ".yaml") == 0) name[len - 5] = '\0'; /* NAME.yaml works too */
    if (!name[0] || strchr(name, '/')) return ct_errorf(CT_EINPUT, "'%s' is not a config name (see ctuner list-cfg)",
                                                        a.positional[0]);
    char dir[CT_PATH_MAX], file[CT_PATH_MAX], src[CT_PATH_MAX], dst[CT_PATH_MAX];
    CT_TRY(ct_config_builtin_dir(dir, sizeof dir));
    snprintf(file, sizeof file, "%s.yaml", name);
    CT_TRY(ct_path_join(src, sizeof src, dir, file));
    if (!ct_path_exists(src)) return unknown_config(name, dir);
    snprintf(file, sizeof file, "%s_copy.yaml", name);
    CT_TRY(ct_path_join(dst, sizeof dst, a.positional[1], file));
    if (ct_path_exists(dst))
        return ct_errorf(CT_EINPUT, "%s already exists; remove it or copy into another directory", dst);
    CT_TRY(ct_mkdirs(a.positional[1]));
    CT_TRY(ct_file_copy(src, dst));
    printf("Copy to %s\n", dst);
    return fflush(stdout) == 0 ? CT_OK : ct_errorf(CT_ERUNTIME, "writing the output failed");
}
