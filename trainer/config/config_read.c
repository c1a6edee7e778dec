/* The reader: a YAML tree (config_yaml.h) into a ct_run_config, key by key
 * against the schema table (config_schema.c). Every problem names
 * origin:line:column and the key path, says what is wrong and what was
 * expected. On an error the config may be partly filled: the caller frees it. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/template.h"
#include "trainer/config/config_internal.h"
#include "trainer/model/lora.h"

#define INF HUGE_VAL

/* ---- messages ---- */

static int perr(const ct_ynode *n, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(const ct_ynode *n, const char *path, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n->line > 0) return ct_errorf(CT_EINPUT, "%s:%d:%d: %s: %s", n->origin, n->line, n->col, path, msg);
    return ct_errorf(CT_EINPUT, "%s: %s: %s", n->origin, path, msg);
}

static const char *kind_name(const ct_ynode *n) {
    if (n->kind == CT_Y_SEQ) return "a list";
    if (n->kind == CT_Y_MAP) return "a mapping";
    switch (ct_yscalar_type(n)) {
    case CT_YS_NULL: return "null";
    case CT_YS_BOOL: return "a boolean";
    case CT_YS_INT: return "an integer";
    case CT_YS_FLOAT: return "a number";
    default: return "a string";
    }
}

static int type_err(const ct_ynode *v, const char *path, const ct_cfield *f) {
    char e[600], pv[64];
    ct_cfg_expect(f, e, sizeof e);
    if (v->kind == CT_Y_SCALAR && ct_yscalar_type(v) == CT_YS_NULL)
        return perr(v, path, "no value given (expected %s)", e);
    if (v->kind == CT_Y_SCALAR) {
        ct_yscalar_preview(v, pv, sizeof pv);
        return perr(v, path, "%s is %s (expected %s)", pv, kind_name(v), e);
    }
    return perr(v, path, "got %s (expected %s)", kind_name(v), e);
}

static int range_err(const ct_ynode *v, const char *path, const ct_cfield *f) {
    char e[600], pv[64];
    ct_cfg_expect(f, e, sizeof e);
    ct_yscalar_preview(v, pv, sizeof pv);
    return perr(v, path, "%s is out of range (expected %s)", pv, e);
}
/* ---- scalars ---- */

static bool parse_int_text(const char *s, int64_t *out) {
    const char *p = s;
    bool neg = false;
    int base = 10;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    if (p[0] == '0' && p[1] == 'x') base = 16, p += 2;
    else if (p[0] == '0' && p[1] == 'o') base = 8, p += 2;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(p, &end, base);
    if (errno || end == p || *end) return false;
    if (v > (unsigned long long)INT64_MAX + (neg ? 1u : 0u)) return false;
    *out = neg ? (v == (unsigned long long)INT64_MAX + 1u ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return true;
}

static bool in_range(const ct_cfield *f, double x) {
    if (f->flags & CF_LO_OPEN ? !(x > f->lo) : !(x >= f->lo)) return false;
    if (f->flags & CF_HI_OPEN ? !(x < f->hi) : !(x <= f->hi)) return false;
    return true;
}

static int read_int(const ct_cfield *f, const ct_ynode *v, const char *path, int64_t *out) {
    int64_t x = 0;
    if (v->kind != CT_Y_SCALAR || ct_yscalar_type(v) != CT_YS_INT) return type_err(v, path, f);
    if (!parse_int_text(v->str, &x) || !in_range(f, (double)x)) return range_err(v, path, f);
    if ((f->flags & CF_POW2) && (x & (x - 1))) return range_err(v, path, f);
    *out = x;
    return CT_OK;
}

static int read_double(const ct_cfield *f, const ct_ynode *v, const char *path, double *out) {
    ct_yscalar t = v->kind == CT_Y_SCALAR ? ct_yscalar_type(v) : CT_YS_STR;
    if (t != CT_YS_INT && t != CT_YS_FLOAT) return type_err(v, path, f);
    double x;
    int64_t i;
    if (t == CT_YS_INT && (strstr(v->str, "0x") || strstr(v->str, "0o"))) {
        if (!parse_int_text(v->str, &i)) return range_err(v, path, f);
        x = (double)i;
    } else {
        const char *s = v->str, *d = (*s == '+' || *s == '-') ? s + 1 : s;
        x = (d[0] == '.' && (d[1] == 'i' || d[1] == 'I')) ? (*s == '-' ? -INF : INF) : strtod(s, NULL);
        if (d[0] == '.' && (d[1] == 'n' || d[1] == 'N')) x = NAN;
    }
    if (!isfinite(x) || !in_range(f, x)) return range_err(v, path, f);
    *out = x;
    return CT_OK;
}

static int read_bool(const ct_cfield *f, const ct_ynode *v, const char *path, bool *out) {
    if (v->kind != CT_Y_SCALAR || ct_yscalar_type(v) != CT_YS_BOOL) return type_err(v, path, f);
    bool x = v->str[0] == 't' || v->str[0] == 'T';
    if ((f->flags & CF_ONLY_FALSE && x) || (f->flags & CF_ONLY_TRUE && !x)) {
        char e[128];
        ct_cfg_expect(f, e, sizeof e);
        return perr(v, path, "%s is not supported (expected %s)", v->str, e);
    }
    *out = x;
    return CT_OK;
}

/* Any non-null scalar reads as its text: `work_dir: 2024` is the string "2024". */
static int read_str(const ct_cfield *f, const ct_ynode *v, const char *path, char **out) {
    if (v->kind != CT_Y_SCALAR || ct_yscalar_type(v) == CT_YS_NULL) {
        if (v->kind == CT_Y_SCALAR && (f->flags & CF_NULLABLE)) {
            free(*out);
            *out = NULL;
            return CT_OK;
        }
        return type_err(v, path, f);
    }
    char *s = strdup(v->str);
    if (!s) return ct_errorf(CT_ERUNTIME, "out of memory reading %s", path);
    free(*out);
    *out = s;
    return CT_OK;
}

static int read_enum(const ct_cfield *f, const ct_ynode *v, const char *path, int *out) {
    if (v->kind != CT_Y_SCALAR || ct_yscalar_type(v) == CT_YS_NULL) return type_err(v, path, f);
    size_t n = 0;
    while (f->names[n]) n++;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v->str, f->names[i]) == 0) {
            *out = f->values ? f->values[i] : (int)i;
            return CT_OK;
        }
    char e[600], hint[128], pv[64];
    ct_cfg_expect(f, e, sizeof e);
    ct_cfg_suggest(v->str, f->names, n, hint, sizeof hint);
    ct_yscalar_preview(v, pv, sizeof pv);
    return perr(v, path, "unknown value %s%s (expected %s)", pv, hint, e);
}

/* ---- composite fields ---- */

typedef struct {
    ct_run_config *c;
    const ct_ynode *root;
} reader;

static int read_map(reader *r, const ct_cfield *table, const ct_ynode *m, const char *prefix, void *base);

static int read_targets(const ct_cfield *f, const ct_ynode *v, const char *path, unsigned *out) {
    if (v->kind == CT_Y_SCALAR && strcmp(v->str, "all-linear") == 0) {
        *out = CT_LORA_ALL_BLOCK; /* PEFT's spelling of XTuner's default: every linear but the head */
        return CT_OK;
    }
    if (v->kind != CT_Y_SEQ) return type_err(v, path, f);
    if (v->n == 0) return perr(v, path, "an empty list trains nothing (expected at least one of wqkv, wo, w1, w2, w3, "
                                        "output)");
    unsigned bits = 0;
    for (size_t i = 0; i < v->n; i++) {
        const ct_ynode *it = v->items[i];
        char p[CT_CFG_PATH_CAP];
        ct_cfg_path_index(p, path, i);
        unsigned b = it->kind == CT_Y_SCALAR ? ct_lora_target_from_name(it->str) : 0;
        if (!b) {
            char e[300], hint[96], pv[64];
            ct_cfg_expect(f, e, sizeof e);
            ct_cfg_suggest(it->kind == CT_Y_SCALAR ? it->str : "", ct_config_target_names, 6, hint, sizeof hint);
            ct_yscalar_preview(it, pv, sizeof pv);
            return perr(it, p, "%s is not an InternLM2 linear layer%s (expected %s)", pv, hint, e);
        }
        bits |= b;
    }
    *out = bits;
    return CT_OK;
}

static int read_betas(const ct_cfield *f, const ct_ynode *v, const char *path, double *out) {
    if (v->kind != CT_Y_SEQ) return type_err(v, path, f);
    if (v->n != 2) return perr(v, path, "%zu values given (expected %s)", v->n, "two: [beta1, beta2]");
    static const ct_cfield beta = {.name = "beta", .type = CF_DOUBLE, .flags = CF_HI_OPEN, .lo = 0, .hi = 1};
    double b[2];
    for (int i = 0; i < 2; i++) {
        char p[CT_CFG_PATH_CAP];
        ct_cfg_path_index(p, path, (size_t)i);
        CT_TRY(read_double(&beta, v->items[i], p, &b[i]));
    }
    out[0] = b[0], out[1] = b[1];
    return CT_OK;
}

static void free_strlist(char **l, size_t n) {
    for (size_t i = 0; i < n; i++) free(l[i]);
    free(l);
}

static int read_strlist(const ct_cfield *f, const ct_ynode *v, const char *path, char ***list, size_t *n) {
    size_t cnt = 0;
    if (v->kind == CT_Y_SEQ) cnt = v->n;
    else if (!(v->kind == CT_Y_SCALAR && ct_yscalar_type(v) == CT_YS_NULL)) return type_err(v, path, f);
    char **l = cnt ? calloc(cnt, sizeof *l) : NULL;
    if (cnt && !l) return ct_errorf(CT_ERUNTIME, "out of memory reading %s", path);
    static const ct_cfield item = {.name = "item", .type = CF_STR};
    for (size_t i = 0; i < cnt; i++) {
        char p[CT_CFG_PATH_CAP];
        ct_cfg_path_index(p, path, i);
        int rc = read_str(&item, v->items[i], p, &l[i]);
        if (rc) {
            free_strlist(l, cnt);
            return rc;
        }
    }
    free_strlist(*list, *n);
    *list = l;
    *n = cnt;
    return CT_OK;
}

static int read_system(reader *r, const ct_cfield *f, const ct_ynode *v, const char *path) {
    ct_run_config *c = r->c;
    char *text = NULL, *tmpl = NULL;
    if (v->kind == CT_Y_SCALAR) {
        if (ct_yscalar_type(v) != CT_YS_NULL && !(text = strdup(v->str)))
            return ct_errorf(CT_ERUNTIME, "out of memory reading %s", path);
        if (text && strncmp(text, "SYSTEM_TEMPLATE.", 16) == 0) {
            int rc = perr(v, path, "XTuner's %s is written {template: %s} here (expected %s)", text, text + 16,
                          "a string, or {template: NAME}");
            free(text);
            return rc;
        }
    } else if (v->kind == CT_Y_MAP) {
        int rc0 = read_map(r, f->sub, v, path, &tmpl); /* reads `template` into tmpl (its offset is 0) */
        if (rc0) {
            free(tmpl);
            return rc0;
        }
        char tp[CT_CFG_PATH_CAP];
        ct_cfg_path_join(tp, path, "template");
        if (!tmpl) return perr(v, tp, "missing (expected a SYSTEM_TEMPLATE name, like {template: alpaca})");
        const char *t = ct_system_text(tmpl);
        if (!t) {
            char names[512], hint[96];
            const char *const *sn = ct_system_names();
            size_t n = 0;
            while (sn[n]) n++;
            ct_cfg_join_names(sn, names, sizeof names);
            ct_cfg_suggest(tmpl, sn, n, hint, sizeof hint);
            const ct_ynode *tv = ct_ymap_get(v, "template", NULL);
            int rc = perr(tv ? tv : v, tp, "unknown system template '%s'%s (expected one of: %s)", tmpl, hint, names);
            free(tmpl);
            return rc;
        }
        if (!(text = strdup(t))) {
            free(tmpl);
            return ct_errorf(CT_ERUNTIME, "out of memory reading %s", path);
        }
    } else {
        return type_err(v, path, f);
    }
    free(c->system);
    free(c->system_template);
    c->system = text;
    c->system_template = tmpl;
    return CT_OK;
}

static int read_phase(reader *r, const ct_cfield *phase_fields, const ct_ynode *m, const char *path,
                      ct_sched_phase *p) {
    const char *const *sched_names = phase_fields[0].names;
    *p = (ct_sched_phase){.type = CT_SCHED_LINEAR, .start_factor = 1.0 / 3, .end_factor = 1.0, .factor = -1,
                          .by_epoch = true, .begin = 0, .end = -1};
    char tp[CT_CFG_PATH_CAP];
    ct_cfg_path_join(tp, path, "type");
    if (m->kind != CT_Y_MAP) {
        const ct_cfield ph = {.name = "phase", .type = CF_SECTION, .sub = phase_fields};
        return type_err(m, path, &ph);
    }
    const ct_ynode *tv = ct_ymap_get(m, "type", NULL);
    if (!tv) return perr(m, tp, "missing (expected one of: LinearLR, CosineAnnealingLR, ConstantLR)");
    int type = 0;
    CT_TRY(read_enum(&phase_fields[0], tv, tp, &type));
    /* keys that do not belong to this type are errors, not silently ignored */
    unsigned bit = 1u << type;
    for (size_t i = 0; i < m->n; i++) {
        const ct_cfield *f = ct_config_field(phase_fields, m->pairs[i].key->str);
        if (f && f->sched_types && !(f->sched_types & bit)) {
            char names[300], kp[CT_CFG_PATH_CAP];
            ct_cfg_table_names(phase_fields, bit, names, sizeof names);
            ct_cfg_path_join(kp, path, f->name);
            return perr(m->pairs[i].key, kp, "not a %s setting (%s takes: %s)", sched_names[type], sched_names[type],
                        names);
        }
    }
    CT_TRY(read_map(r, phase_fields, m, path, p));
    if (p->type == CT_SCHED_CONSTANT && p->factor < 0)
        return perr(m, path, "ConstantLR needs factor (mmengine's default 1/3 scales the LR down; write factor: 1.0 "
                             "for a constant learning rate)");
    return CT_OK;
}

static int read_schedule(reader *r, const ct_cfield *f, const ct_ynode *v, const char *path) {
    ct_run_config *c = r->c;
    if (v->kind == CT_Y_SCALAR && ct_yscalar_type(v) == CT_YS_NULL) {
        c->n_phases = -1;
        return CT_OK;
    }
    if (v->kind != CT_Y_SEQ) return type_err(v, path, f);
    if (v->n > CT_CONFIG_MAX_PHASES)
        return perr(v, path, "%zu phases given (expected at most %d)", v->n, CT_CONFIG_MAX_PHASES);
    ct_sched_phase ph[CT_CONFIG_MAX_PHASES];
    for (size_t i = 0; i < v->n; i++) {
        char p[CT_CFG_PATH_CAP];
        ct_cfg_path_index(p, path, i);
        CT_TRY(read_phase(r, f->sub, v->items[i], p, &ph[i]));
    }
    memcpy(c->phases, ph, v->n * sizeof ph[0]);
    c->n_phases = (int)v->n;
    return CT_OK;
}

static int read_randomness(reader *r, const ct_cfield *f, const ct_ynode *v, const char *path) {
    if (v->kind != CT_Y_MAP) return type_err(v, path, f);
    for (size_t i = 0; i < v->n; i++) { /* one place per setting: top-level and randomness must not disagree */
        const char *k = v->pairs[i].key->str;
        const ct_ynode *top = ct_ymap_get(r->root, k, NULL);
        if (top && ct_config_field(f->sub, k)) {
            char kp[CT_CFG_PATH_CAP];
            ct_cfg_path_join(kp, path, k);
            if (top->line > 0)
                return perr(v->pairs[i].key, kp, "given twice: also as top-level %s (line %d, column %d); keep one",
                            k, top->line, top->col);
            return perr(v->pairs[i].key, kp, "given twice: also as top-level %s (%s); keep one", k, top->origin);
        }
    }
    return read_map(r, f->sub, v, path, r->c);
}

static int read_field(reader *r, const ct_cfield *f, const ct_ynode *v, const char *path, void *base) {
    void *dst = (char *)base + f->off;
    bool is_null = v->kind == CT_Y_SCALAR && ct_yscalar_type(v) == CT_YS_NULL;
    if (is_null && (f->flags & CF_NULLABLE) && (f->type == CF_INT || f->type == CF_DOUBLE)) {
        if (f->flags & CF_NOSTORE) return CT_OK;
        if (f->type == CF_INT) *(int64_t *)dst = (int64_t)f->null_as;
        else *(double *)dst = f->null_as;
        return CT_OK;
    }
    int64_t i64 = 0;
    double d = 0;
    bool b = false;
    int e = 0;
    switch (f->type) {
    case CF_INT:
        CT_TRY(read_int(f, v, path, &i64));
        if (!(f->flags & CF_NOSTORE)) *(int64_t *)dst = i64;
        return CT_OK;
    case CF_DOUBLE:
        CT_TRY(read_double(f, v, path, &d));
        if (!(f->flags & CF_NOSTORE)) *(double *)dst = d;
        return CT_OK;
    case CF_BOOL:
        CT_TRY(read_bool(f, v, path, &b));
        if (!(f->flags & CF_NOSTORE)) *(bool *)dst = b;
        return CT_OK;
    case CF_ENUM:
        CT_TRY(read_enum(f, v, path, &e));
        if (!(f->flags & CF_NOSTORE)) *(int *)dst = e;
        return CT_OK;
    case CF_STR:
        if (f->flags & CF_TEMPLATE && v->kind == CT_Y_SCALAR && !ct_template_find(v->str)) {
            char names[400], hint[96], pv[64];
            const char *const *tn = ct_template_names();
            size_t n = 0;
            while (tn[n]) n++;
            ct_cfg_join_names(tn, names, sizeof names);
            bool xt = strncmp(v->str, "PROMPT_TEMPLATE.", 16) == 0;
            ct_cfg_suggest(xt ? v->str + 16 : v->str, tn, n, hint, sizeof hint);
            ct_yscalar_preview(v, pv, sizeof pv);
            if (xt && ct_template_find(v->str + 16))
                return perr(v, path, "XTuner's %s is written %s here (expected one of: %s)", v->str, v->str + 16,
                            names);
            return perr(v, path, "unknown prompt template %s%s (expected one of: %s)", pv, hint, names);
        }
        return read_str(f, v, path, (char **)dst);
    case CF_SECTION:
        if (is_null && (f->flags & CF_NULLABLE)) {
            if (f->flags & CF_ENABLES) *(bool *)dst = false; /* quantization: null = no quantization */
            return CT_OK;
        }
        if (v->kind != CT_Y_MAP) return type_err(v, path, f);
        if (f->flags & CF_ENABLES) *(bool *)dst = true;
        return read_map(r, f->sub, v, path, dst);
    case CF_SYSTEM: return read_system(r, f, v, path);
    case CF_BETAS: return read_betas(f, v, path, (double *)dst);
    case CF_STRLIST: return read_strlist(f, v, path, &r->c->evaluation_inputs, &r->c->n_evaluation_inputs);
    case CF_TARGETS: return read_targets(f, v, path, (unsigned *)dst);
    case CF_SCHEDULE: return read_schedule(r, f, v, path);
    case CF_RANDOMNESS: return read_randomness(r, f, v, path);
    }
    return CT_OK;
}

static int read_map(reader *r, const ct_cfield *table, const ct_ynode *m, const char *prefix, void *base) {
    for (size_t i = 0; i < m->n; i++) {
        const ct_ynode *k = m->pairs[i].key;
        if (!*prefix && k->str[0] == '_') continue; /* free for anchors: `_vars: {lr: &lr 2.0e-4}` */
        char path[CT_CFG_PATH_CAP];
        ct_cfg_path_join(path, prefix, k->str);
        const ct_cfield *f = ct_config_field(table, k->str);
        if (!f) {
            char names[1200], hint[128];
            ct_cfg_table_names(table, 0, names, sizeof names);
            ct_cfg_suggest_field(k->str, table, hint, sizeof hint);
            return perr(k, path, "unknown key%s (expected one of: %s)", hint, names);
        }
        CT_TRY(read_field(r, f, m->pairs[i].val, path, base));
    }
    for (const ct_cfield *f = table; f->name; f++) {
        if (!(f->flags & CF_REQUIRED) || ct_ymap_get(m, f->name, NULL)) continue;
        char path[CT_CFG_PATH_CAP], e[300];
        ct_cfg_path_join(path, prefix, f->name);
        ct_cfg_expect(f, e, sizeof e);
        return perr(m, path, "missing (expected %s)", e);
    }
    return CT_OK;
}

int ct_config_from_tree(const ct_ynode *root, const char *origin, ct_run_config *c) {
    if (!root) {
        const ct_cfield *f = &ct_config_fields[0];
        char e[300];
        ct_cfg_expect(f, e, sizeof e);
        return ct_errorf(CT_EINPUT, "%s: the config is empty; %s: missing (expected %s)", origin, f->name, e);
    }
    if (root->kind != CT_Y_MAP) {
        char pv[64];
        ct_yscalar_preview(root, pv, sizeof pv);
        return ct_errorf(CT_EINPUT, "%s:%d:%d: the config must be a mapping of settings (like `lr: 2.0e-4`), not %s",
                         root->origin, root->line, root->col, root->kind == CT_Y_SCALAR ? pv : kind_name(root));
    }
    reader r = {.c = c, .root = root};
    return read_map(&r, ct_config_fields, root, "", c);
}

