#include "args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

void ct_args_print_help(const ct_args *a) {
    printf("usage: %s\n\n%s\n", a->usage, a->summary);
    if (a->n_specs) printf("\noptions:\n");
    for (int i = 0; i < a->n_specs; i++) {
        const ct_argspec *s = &a->specs[i];
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", s->name, s->metavar ? " " : "", s->metavar ? s->metavar : "");
        printf("  %-24s %s\n", left, s->help);
    }
    printf("  %-24s %s\n", "-h, --help", "show this help and exit");
}

static int set_value(const ct_argspec *s, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (s->kind) {
    case CT_ARG_STR: *(const char **)s->dst = v; return CT_OK;
    case CT_ARG_INT: {
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end) return ct_errorf(CT_EINPUT, "%s: '%s' is not an integer", s->name, v);
        *(int64_t *)s->dst = x;
        return CT_OK;
    }
    case CT_ARG_DOUBLE: {
        double x = strtod(v, &end);
        if (errno || end == v || *end) return ct_errorf(CT_EINPUT, "%s: '%s' is not a number", s->name, v);
        *(double *)s->dst = x;
        return CT_OK;
    }
    default: return ct_errorf(CT_EINPUT, "%s takes no value", s->name);
    }
}

int ct_args_parse(ct_args *a, int argc, char **argv) {
    a->n_positional = 0;
    bool only_positional = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!only_positional && (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)) {
            ct_args_print_help(a);
            return CT_ARGS_HELP;
        }
        if (!only_positional && strcmp(arg, "--") == 0) {
            only_positional = true;
            continue;
        }
        if (!only_positional && arg[0] == '-' && arg[1] != '\0') {
            const char *eq = strchr(arg, '=');
            size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
            const ct_argspec *s = NULL;
            for (int k = 0; k < a->n_specs; k++)
                if (strlen(a->specs[k].name) == len && strncmp(a->specs[k].name, arg, len) == 0) s = &a->specs[k];
            if (!s)
                return ct_errorf(CT_EINPUT, "%s: unknown option '%.*s' (see '%s --help')", argv[0],
                                 (int)len, arg, argv[0]);
            if (s->kind == CT_ARG_FLAG) {
                if (eq) return ct_errorf(CT_EINPUT, "%s takes no value", s->name);
                *(bool *)s->dst = true;
                continue;
            }
            const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) return ct_errorf(CT_EINPUT, "%s needs a value (%s)", s->name, s->metavar ? s->metavar : "VALUE");
            CT_TRY(set_value(s, v));
            continue;
        }
        if (a->n_positional >= a->max_positional || a->n_positional >= CT_ARGS_MAX_POSITIONAL)
            return ct_errorf(CT_EINPUT, "%s: unexpected argument '%s' (usage: %s)", argv[0], arg, a->usage);
        a->positional[a->n_positional++] = arg;
    }
    if (a->n_positional < a->min_positional)
        return ct_errorf(CT_EINPUT, "%s: missing argument (usage: %s)", argv[0], a->usage);
    return CT_OK;
}

int ct_args_collect(const ct_args *a, int argc, char **argv, const char *name, const char ***values, int *n) {
    *n = 0;
    *values = calloc((size_t)argc + 1, sizeof **values);
    if (!*values) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) break;
        if (arg[0] != '-' || arg[1] == '\0') continue;
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        for (int k = 0; k < a->n_specs; k++) {
            const ct_argspec *s = &a->specs[k];
            if (strlen(s->name) != len || strncmp(s->name, arg, len) != 0) continue;
            if (s->kind == CT_ARG_FLAG) break;
            const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (v && strcmp(s->name, name) == 0) (*values)[(*n)++] = v;
            break;
        }
    }
    return CT_OK;
}
