/* The run configuration's life cycle: defaults, reading a file, `--set`
 * overrides edited into the YAML tree (so an override is checked exactly like
 * the same line in the file), the checks that span several keys, equality,
 * and freeing. The per-key schema is config_schema.c. */
#include "trainer/config/config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/config/config_internal.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/lora.h"

#define MAX_SET_DEPTH 8

void ct_config_init(ct_run_config *c) {
    memset(c, 0, sizeof *c);
    c->data_format = CT_DS_AUTO;
    c->max_length = 2048;
    c->pack_to_max_length = true;
    c->shuffle_before_pack = true;
    c->batch_size = 1;
    c->accumulative_counts = 16;
    c->max_epochs = 3;
    c->optim_type = CT_OPTIM_ADAMW;
    c->lr = 2e-4;
    c->betas[0] = 0.9, c->betas[1] = 0.999;
    c->eps = 1e-8;
    c->weight_decay = 0;
    c->max_norm = 1;
    c->warmup_ratio = 0.03;
    c->n_phases = -1;
    c->save_steps = 500;
    c->save_total_limit = 2;
    c->evaluation_freq = 500;
    c->evaluation_max_new_tokens = 600;
    /* no quantization section = no quantization (as XTuner without quantization_config);
     * the other values are QLoRA's, used when a section turns load_in_4bit on */
    c->quantization = (ct_run_quant){.load_in_4bit = false, .quant_type = CT_QUANT_NF4, .double_quant = true,
                                     .compute_dtype = CT_BF16, .blocksize = 64, .quantize_output = false};
    c->lora = (ct_run_lora){.r = 64, .lora_alpha = 16, .lora_dropout = 0.1, .target_modules = CT_LORA_ALL_BLOCK};
    c->gradient_checkpointing = true;
    c->compute_dtype = CT_F32;
    c->seed = 0;
    c->device = CT_DEVICE_AUTO;
    c->optimizer_offload = CT_OFFLOAD_NONE;
    c->embedding_offload = CT_OFFLOAD_CPU;
    c->logging_interval = 10;
}

void ct_config_free(ct_run_config *c) {
    free(c->pretrained_model_name_or_path);
    free(c->data_path);
    free(c->prompt_template);
    free(c->system);
    free(c->system_template);
    for (size_t i = 0; i < c->n_evaluation_inputs; i++) free(c->evaluation_inputs[i]);
    free(c->evaluation_inputs);
    free(c->lora.init_from);
    free(c->work_dir);
    memset(c, 0, sizeof *c);
}

/* ---- --set ---- */

static int set_err(const char *origin, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int set_err(const char *origin, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ct_errorf(CT_EINPUT, "%s: %s", origin, msg);
}

/* Puts `val` at segs[0..n) in the tree, creating the mappings on the way (a
 * null or a string where a mapping is needed, like `quantization: null` or a
 * SYSTEM text before `SYSTEM.template`, is replaced). Takes val either way. */
static int tree_put(ct_ydoc *doc, char *const *segs, int n, const bool *is_idx, const char *origin, ct_ynode *val) {
    if (!doc->root && !(doc->root = ct_ydoc_new_map(doc, origin))) goto fail;
    if (doc->root->kind != CT_Y_MAP) {
        ct_ynode_free(val);
        return set_err(origin, "the config file is not a mapping of settings");
    }
    ct_ynode *cur = doc->root;
    for (int i = 0; i < n; i++) {
        bool last = i == n - 1;
        ct_ynode **slot = NULL;
        if (cur->kind == CT_Y_MAP) {
            size_t pi;
            if (ct_ymap_get(cur, segs[i], &pi)) {
                slot = &cur->pairs[pi].val;
            } else if (last) {
                if (ct_ymap_append(doc, cur, segs[i], val)) goto fail;
                return CT_OK;
            } else {
                if (is_idx[i + 1]) {
                    ct_ynode_free(val);
                    return set_err(origin, "'%s' is not given in the config, so it has no entry %s; set the whole "
                                   "list instead", segs[i], segs[i + 1]);
                }
                ct_ynode *m = ct_ydoc_new_map(doc, origin);
                if (!m || ct_ymap_append(doc, cur, segs[i], m)) {
                    ct_ynode_free(m);
                    goto fail;
                }
                cur = m;
                continue;
            }
        } else {
            size_t idx = (size_t)strtoull(segs[i], NULL, 10);
            if (idx > cur->n || (idx == cur->n && !last)) {
                ct_ynode_free(val);
                return set_err(origin, "index %s is past the end of the list (it has %zu entries)", segs[i], cur->n);
            }
            if (idx == cur->n) { /* appending one item */
                if (cur->n == cur->cap) {
                    size_t cap = cur->cap ? cur->cap * 2 : 4;
                    ct_ynode **items = realloc(cur->items, cap * sizeof *items);
                    if (!items) goto fail;
                    cur->items = items;
                    cur->cap = cap;
                }
                cur->items[cur->n++] = val;
                return CT_OK;
            }
            slot = &cur->items[idx];
        }
        if (last) {
            ct_ynode_free(*slot);
            *slot = val;
            return CT_OK;
        }
        if (is_idx[i + 1] && (*slot)->kind != CT_Y_SEQ) {
            ct_ynode_free(val);
            return set_err(origin, "'%s' is not a list in the config; set the whole list instead", segs[i]);
        }
        if (!is_idx[i + 1] && (*slot)->kind != CT_Y_MAP) {
            ct_ynode *m = ct_ydoc_new_map(doc, origin);
            if (!m) goto fail;
            ct_ynode_free(*slot);
            *slot = m;
        }
        cur = *slot;
    }
    return CT_OK;
fail:
    ct_ynode_free(val);
    return ct_errorf(CT_ERUNTIME, "out of memory applying %s", origin);
}

static int apply_set(ct_ydoc *doc, const char *arg) {
    char origin[512];
    snprintf(origin, sizeof origin, "--set %s", arg);
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) return set_err(origin, "expected KEY.PATH=VALUE, like --set lora.r=8");
    char path[256];
    if ((size_t)(eq - arg) >= sizeof path) return set_err(origin, "the key path is too long");
    memcpy(path, arg, (size_t)(eq - arg));
    path[eq - arg] = '\0';
    char *segs[MAX_SET_DEPTH];
    bool is_idx[MAX_SET_DEPTH];
    int n = 0;
    for (char *p = path;;) {
        char *dot = strchr(p, '.');
        if (dot) *dot = '\0';
        if (!*p) return set_err(origin, "empty part in the key path (expected names joined by dots)");
        if (n == MAX_SET_DEPTH) return set_err(origin, "the key path is deeper than any setting");
        segs[n++] = p;
        if (!dot) break;
        p = dot + 1;
    }
    CT_TRY(ct_config_check_path(segs, n, origin, is_idx));
    const char *o = ct_ydoc_origin(doc, origin); /* nodes point at it: the doc owns the copy */
    if (!o) return ct_errorf(CT_ERUNTIME, "out of memory applying %s", origin);
    ct_ynode *val = NULL;
    CT_TRY(ct_ydoc_parse_value(doc, eq + 1, o, &val));
    return tree_put(doc, segs, n, is_idx, o, val);
}

/* ---- checks across keys ---- */

/* The node at a dotted path ("quantization.quantize_output", "param_scheduler.1.end"), or NULL. */
static const ct_ynode *node_at(const ct_ynode *root, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const ct_ynode *cur = root;
    for (char *p = buf; cur && p;) {
        char *dot = strchr(p, '.');
        if (dot) *dot = '\0';
        if (cur->kind == CT_Y_MAP) cur = ct_ymap_get(cur, p, NULL);
        else if (cur->kind == CT_Y_SEQ) {
            size_t i = (size_t)strtoull(p, NULL, 10);
            cur = i < cur->n ? cur->items[i] : NULL;
        } else cur = NULL;
        p = dot ? dot + 1 : NULL;
    }
    return cur;
}

static int verr(const ct_ynode *root, const char *origin, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int verr(const ct_ynode *root, const char *origin, const char *path, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const ct_ynode *n = root ? node_at(root, path) : NULL;
    if (n && n->line > 0) return ct_errorf(CT_EINPUT, "%s:%d:%d: %s: %s", n->origin, n->line, n->col, path, msg);
    return ct_errorf(CT_EINPUT, "%s: %s: %s", n ? n->origin : origin, path, msg);
}

static bool whole(double x) { return x == floor(x); }

static int check_phases(const ct_run_config *c, const ct_ynode *root, const char *origin) {
    char p[96];
    for (int i = 0; i < c->n_phases; i++) {
        const ct_sched_phase *ph = &c->phases[i];
        if (!ph->by_epoch) {
            const char *bad = !whole(ph->begin) ? "begin" : (ph->end >= 0 && !whole(ph->end)) ? "end"
                              : (ph->T_max > 0 && !whole(ph->T_max)) ? "T_max" : NULL;
            if (bad) {
                snprintf(p, sizeof p, "param_scheduler.%d.%s", i, bad);
                return verr(root, origin, p, "not a whole number of iterations (expected an integer with by_epoch: "
                            "false, or by_epoch: true for fractions of an epoch)");
            }
        }
        if (ph->end >= 0 && ph->end <= ph->begin) {
            snprintf(p, sizeof p, "param_scheduler.%d.end", i);
            return verr(root, origin, p, "%g is not after begin %g (expected end > begin)", ph->end, ph->begin);
        }
        if (ph->end < 0 && i + 1 < c->n_phases) {
            snprintf(p, sizeof p, "param_scheduler.%d.end", i);
            return verr(root, origin, p, "only the last phase may run to the end of training (expected an end "
                        "before param_scheduler.%d begins)", i + 1);
        }
        if (i > 0 && c->phases[i - 1].by_epoch == ph->by_epoch && ph->begin < c->phases[i - 1].end) {
            snprintf(p, sizeof p, "param_scheduler.%d.begin", i);
            return verr(root, origin, p, "%g is before the end of param_scheduler.%d (%g): phases run one after "
                        "another (expected begin >= %g)", ph->begin, i - 1, c->phases[i - 1].end,
                        c->phases[i - 1].end);
        }
    }
    return CT_OK;
}

static int validate(const ct_run_config *c, const ct_ynode *root, const char *origin) {
    if (c->quantization.quantize_output && !c->quantization.load_in_4bit)
        return verr(root, origin, "quantization.quantize_output",
                    "true needs a quantized model (expected quantization.load_in_4bit: true)");
    const struct {
        const char *key, *val;
    } nonempty[] = {{"pretrained_model_name_or_path", c->pretrained_model_name_or_path},
                    {"data_path", c->data_path},
                    {"work_dir", c->work_dir},
                    {"lora.init_from", c->lora.init_from ? c->lora.init_from : "-"}};
    for (size_t i = 0; i < sizeof nonempty / sizeof nonempty[0]; i++)
        if (!nonempty[i].val || !nonempty[i].val[0])
            return verr(root, origin, nonempty[i].key, "empty (expected a path)");
    return check_phases(c, root, origin);
}

/* work_dir's default, as XTuner: ./work_dirs/<config file name without extension>. */
static int default_work_dir(const char *origin, char **out) {
    const char *base = strrchr(origin, '/');
    base = base ? base + 1 : origin;
    size_t len = strlen(base);
    if (len > 5 && !strcmp(base + len - 5, ".yaml")) len -= 5;
    else if (len > 4 && !strcmp(base + len - 4, ".yml")) len -= 4;
    if (!len) base = "config", len = 6;
    size_t cap = len + 16;
    if (!(*out = malloc(cap))) return ct_errorf(CT_ERUNTIME, "out of memory");
    snprintf(*out, cap, "./work_dirs/%.*s", (int)len, base);
    return CT_OK;
}

static int fill_defaults(ct_run_config *c, const char *origin) {
    if (!c->prompt_template && !(c->prompt_template = strdup("internlm2_chat")))
        return ct_errorf(CT_ERUNTIME, "out of memory");
    if (!c->system && !(c->system = strdup(""))) return ct_errorf(CT_ERUNTIME, "out of memory");
    if (!c->work_dir) CT_TRY(default_work_dir(origin, &c->work_dir));
    return CT_OK;
}

int ct_config_parse(const char *text, size_t len, const char *origin, const char *const *sets, int n_sets,
                    ct_run_config *out) {
    ct_config_init(out);
    ct_ydoc doc = {0};
    int rc = ct_ydoc_load(&doc, text, len, origin);
    for (int i = 0; i < n_sets && !rc; i++) rc = apply_set(&doc, sets[i]);
    if (!rc) rc = ct_config_from_tree(doc.root, origin, out);
    if (!rc) rc = fill_defaults(out, origin);
    if (!rc) rc = validate(out, doc.root, origin);
    ct_ydoc_free(&doc);
    if (rc) ct_config_free(out);
    return rc;
}

int ct_config_load(const char *path, const char *const *sets, int n_sets, ct_run_config *out) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t len = 0;
    int rc = ct_file_read_all(path, &text, &len);
    if (rc) return ct_error_wrap(rc, "reading the config");
    rc = ct_config_parse(text, len, path, sets, n_sets, out);
    free(text);
    return rc;
}

/* ---- equality ---- */

static bool str_eq(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

static bool phase_eq(const ct_sched_phase *a, const ct_sched_phase *b) {
    return a->type == b->type && a->start_factor == b->start_factor && a->end_factor == b->end_factor &&
           a->factor == b->factor && a->eta_min == b->eta_min && a->T_max == b->T_max && a->by_epoch == b->by_epoch &&
           a->begin == b->begin && a->end == b->end;
}

bool ct_config_equal(const ct_run_config *a, const ct_run_config *b) {
    bool eq = str_eq(a->pretrained_model_name_or_path, b->pretrained_model_name_or_path) &&
              a->use_varlen_attn == b->use_varlen_attn && str_eq(a->data_path, b->data_path) &&
              a->data_format == b->data_format && str_eq(a->prompt_template, b->prompt_template) &&
              a->max_length == b->max_length && a->max_length_beyond_model == b->max_length_beyond_model &&
              a->pack_to_max_length == b->pack_to_max_length &&
              a->shuffle_before_pack == b->shuffle_before_pack && a->skip_bad_records == b->skip_bad_records &&
              a->batch_size == b->batch_size && a->accumulative_counts == b->accumulative_counts &&
              a->dataloader_num_workers == b->dataloader_num_workers && a->max_epochs == b->max_epochs &&
              a->max_iters == b->max_iters && a->optim_type == b->optim_type && a->lr == b->lr &&
              a->betas[0] == b->betas[0] && a->betas[1] == b->betas[1] && a->eps == b->eps &&
              a->weight_decay == b->weight_decay && a->max_norm == b->max_norm && a->warmup_ratio == b->warmup_ratio &&
              a->n_phases == b->n_phases && a->save_steps == b->save_steps &&
              a->save_total_limit == b->save_total_limit && a->evaluation_freq == b->evaluation_freq &&
              a->evaluation_max_new_tokens == b->evaluation_max_new_tokens && str_eq(a->system, b->system) &&
              str_eq(a->system_template, b->system_template) && a->n_evaluation_inputs == b->n_evaluation_inputs &&
              a->quantization.load_in_4bit == b->quantization.load_in_4bit &&
              a->quantization.quant_type == b->quantization.quant_type &&
              a->quantization.double_quant == b->quantization.double_quant &&
              a->quantization.compute_dtype == b->quantization.compute_dtype &&
              a->quantization.blocksize == b->quantization.blocksize &&
              a->quantization.quantize_output == b->quantization.quantize_output && a->lora.r == b->lora.r &&
              a->lora.lora_alpha == b->lora.lora_alpha && a->lora.lora_dropout == b->lora.lora_dropout &&
              a->lora.target_modules == b->lora.target_modules && a->lora.use_rslora == b->lora.use_rslora &&
              str_eq(a->lora.init_from, b->lora.init_from) && a->gradient_checkpointing == b->gradient_checkpointing &&
              a->compute_dtype == b->compute_dtype &&
              a->seed == b->seed && a->deterministic == b->deterministic && str_eq(a->work_dir, b->work_dir) &&
              a->device == b->device && a->optimizer_offload == b->optimizer_offload &&
              a->embedding_offload == b->embedding_offload && a->logging_interval == b->logging_interval;
    for (int i = 0; eq && i < a->n_phases; i++) eq = phase_eq(&a->phases[i], &b->phases[i]);
    for (size_t i = 0; eq && i < a->n_evaluation_inputs; i++)
        eq = str_eq(a->evaluation_inputs[i], b->evaluation_inputs[i]);
    return eq;
}
