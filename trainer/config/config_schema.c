/* The schema: one table row per key, in the order docs/CONFIG.md and the
 * printed config use; the phrases of messages derived from a row ("expected an
 * integer in [1, 65536]", "did you mean ..."); the check of `--set` key paths;
 * and the key list. Reading a tree against the table is config_read.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "autograd/ct_error.h"
#include "trainer/config/config_internal.h"

#define INF HUGE_VAL
#define OFF(f) offsetof(ct_run_config, f)
#define QOFF(f) offsetof(ct_run_quant, f)
#define LOFF(f) offsetof(ct_run_lora, f)
#define POFF(f) offsetof(ct_sched_phase, f)
#define LIN (1u << CT_SCHED_LINEAR)
#define COS (1u << CT_SCHED_COSINE)
#define CONST (1u << CT_SCHED_CONSTANT)

static const char *const format_names[] = {"auto", "alpaca", "openai", "conversation", "pretokenized", NULL};
static const char *const optim_names[] = {"AdamW", NULL};
static const char *const device_names[] = {"auto", "cpu", "cuda", "cuda-emu", NULL};

const char *ct_config_device_name(ct_device_kind d) { return device_names[d]; }
static const char *const offload_names[] = {"none", "cpu", NULL}; /* ct_offload_kind */
static const char *const quant_names[] = {"nf4", "fp4", NULL};
static const char *const dtype_names[] = {"bfloat16", "float16", "float32", NULL};
static const int dtype_values[] = {CT_BF16, CT_F16, CT_F32};
static const char *const compute_names[] = {"float32", "bfloat16", NULL};
static const int compute_values[] = {CT_F32, CT_BF16};
static const char *const bias_names[] = {"none", NULL};
static const char *const task_names[] = {"CAUSAL_LM", NULL};
static const char *const sched_names[] = {"LinearLR", "CosineAnnealingLR", "ConstantLR", NULL};
const char *const ct_config_target_names[] = {"wqkv", "wo", "w1", "w2", "w3", "output", NULL};

static const ct_cfield quant_fields[] = {
    {.name = "load_in_4bit", .type = CF_BOOL, .off = QOFF(load_in_4bit)},
    {.name = "load_in_8bit", .type = CF_BOOL, .flags = CF_NOSTORE | CF_HIDDEN | CF_ONLY_FALSE},
    {.name = "llm_int8_threshold", .type = CF_DOUBLE, .flags = CF_NOSTORE | CF_HIDDEN, .lo = -INF, .hi = INF},
    {.name = "llm_int8_has_fp16_weight", .type = CF_BOOL, .flags = CF_NOSTORE | CF_HIDDEN},
    {.name = "bnb_4bit_quant_type", .type = CF_ENUM, .off = QOFF(quant_type), .names = quant_names},
    {.name = "bnb_4bit_use_double_quant", .type = CF_BOOL, .off = QOFF(double_quant)},
    {.name = "bnb_4bit_compute_dtype", .type = CF_ENUM, .off = QOFF(compute_dtype), .names = dtype_names,
     .values = dtype_values},
    {.name = "blocksize", .type = CF_INT, .off = QOFF(blocksize), .flags = CF_POW2, .lo = 32, .hi = 4096},
    {.name = "quantize_output", .type = CF_BOOL, .off = QOFF(quantize_output)},
    {0},
};

static const ct_cfield lora_fields[] = {
    {.name = "r", .type = CF_INT, .off = LOFF(r), .lo = 1, .hi = 65536},
    {.name = "lora_alpha", .type = CF_DOUBLE, .off = LOFF(lora_alpha), .flags = CF_LO_OPEN, .lo = 0, .hi = INF},
    {.name = "lora_dropout", .type = CF_DOUBLE, .off = LOFF(lora_dropout), .flags = CF_HI_OPEN, .lo = 0, .hi = 1},
    {.name = "target_modules", .type = CF_TARGETS, .off = LOFF(target_modules)},
    {.name = "use_rslora", .type = CF_BOOL, .off = LOFF(use_rslora)},
    {.name = "bias", .type = CF_ENUM, .flags = CF_NOSTORE, .names = bias_names},
    {.name = "task_type", .type = CF_ENUM, .flags = CF_NOSTORE, .names = task_names},
    {.name = "init_from", .type = CF_STR, .off = LOFF(init_from), .flags = CF_NULLABLE,
     .what = "a PEFT adapter directory or null"},
    {0},
};

static const ct_cfield phase_fields[] = {
    {.name = "type", .type = CF_ENUM, .off = POFF(type), .flags = CF_REQUIRED, .names = sched_names},
    {.name = "start_factor", .type = CF_DOUBLE, .off = POFF(start_factor), .lo = 0, .hi = 1, .sched_types = LIN},
    {.name = "end_factor", .type = CF_DOUBLE, .off = POFF(end_factor), .lo = 0, .hi = 1, .sched_types = LIN},
    {.name = "factor", .type = CF_DOUBLE, .off = POFF(factor), .lo = 0, .hi = 1, .sched_types = CONST},
    {.name = "eta_min", .type = CF_DOUBLE, .off = POFF(eta_min), .lo = 0, .hi = INF, .sched_types = COS},
    {.name = "T_max", .type = CF_DOUBLE, .off = POFF(T_max), .flags = CF_NULLABLE | CF_LO_OPEN, .lo = 0, .hi = INF,
     .null_as = 0, .sched_types = COS},
    {.name = "by_epoch", .type = CF_BOOL, .off = POFF(by_epoch)},
    {.name = "begin", .type = CF_DOUBLE, .off = POFF(begin), .lo = 0, .hi = INF},
    {.name = "end", .type = CF_DOUBLE, .off = POFF(end), .flags = CF_NULLABLE | CF_LO_OPEN, .lo = 0, .hi = INF,
     .null_as = -1},
    {.name = "convert_to_iter_based", .type = CF_BOOL, .flags = CF_NOSTORE | CF_HIDDEN | CF_ONLY_TRUE},
    {0},
};

static const ct_cfield system_fields[] = {
    {.name = "template", .type = CF_STR, .what = "a SYSTEM_TEMPLATE name"},
    {0},
};

static const ct_cfield randomness_fields[] = {
    {.name = "seed", .type = CF_INT, .off = OFF(seed), .lo = 0, .hi = 9007199254740992.0},
    {.name = "deterministic", .type = CF_BOOL, .off = OFF(deterministic)},
    {0},
};

const ct_cfield ct_config_fields[] = {
    {.name = "pretrained_model_name_or_path", .type = CF_STR, .off = OFF(pretrained_model_name_or_path),
     .flags = CF_REQUIRED, .comment = "Model", .what = "a Hugging Face model directory"},
    {.name = "use_varlen_attn", .type = CF_BOOL, .off = OFF(use_varlen_attn)},
    {.name = "data_path", .type = CF_STR, .off = OFF(data_path), .flags = CF_REQUIRED, .comment = "Data",
     .what = "the training data: a .json or .jsonl file"},
    {.name = "data_format", .type = CF_ENUM, .off = OFF(data_format), .names = format_names},
    {.name = "prompt_template", .type = CF_STR, .off = OFF(prompt_template), .flags = CF_TEMPLATE},
    {.name = "max_length", .type = CF_INT, .off = OFF(max_length), .lo = 2, .hi = 1048576},
    {.name = "max_length_beyond_model", .type = CF_BOOL, .off = OFF(max_length_beyond_model)},
    {.name = "pack_to_max_length", .type = CF_BOOL, .off = OFF(pack_to_max_length)},
    {.name = "shuffle_before_pack", .type = CF_BOOL, .off = OFF(shuffle_before_pack)},
    {.name = "skip_bad_records", .type = CF_BOOL, .off = OFF(skip_bad_records)},
    {.name = "batch_size", .type = CF_INT, .off = OFF(batch_size), .lo = 1, .hi = 65536,
     .comment = "Scheduler & Optimizer"},
    {.name = "accumulative_counts", .type = CF_INT, .off = OFF(accumulative_counts), .lo = 1, .hi = 1048576},
    {.name = "dataloader_num_workers", .type = CF_INT, .off = OFF(dataloader_num_workers), .lo = 0, .hi = 4096},
    {.name = "max_epochs", .type = CF_INT, .off = OFF(max_epochs), .lo = 1, .hi = 1000000},
    {.name = "max_iters", .type = CF_INT, .off = OFF(max_iters), .flags = CF_NULLABLE, .lo = 1, .hi = 1e15,
     .null_as = 0},
    {.name = "optim_type", .type = CF_ENUM, .off = OFF(optim_type), .names = optim_names},
    {.name = "lr", .type = CF_DOUBLE, .off = OFF(lr), .flags = CF_LO_OPEN, .lo = 0, .hi = INF},
    {.name = "betas", .type = CF_BETAS, .off = OFF(betas)},
    {.name = "eps", .type = CF_DOUBLE, .off = OFF(eps), .flags = CF_LO_OPEN, .lo = 0, .hi = INF},
    {.name = "weight_decay", .type = CF_DOUBLE, .off = OFF(weight_decay), .lo = 0, .hi = INF},
    {.name = "max_norm", .type = CF_DOUBLE, .off = OFF(max_norm), .lo = 0, .hi = INF},
    {.name = "warmup_ratio", .type = CF_DOUBLE, .off = OFF(warmup_ratio), .flags = CF_HI_OPEN, .lo = 0, .hi = 1},
    {.name = "param_scheduler", .type = CF_SCHEDULE, .flags = CF_NULLABLE, .sub = phase_fields},
    {.name = "save_steps", .type = CF_INT, .off = OFF(save_steps), .lo = 0, .hi = 1e15, .comment = "Save"},
    {.name = "save_total_limit", .type = CF_INT, .off = OFF(save_total_limit), .lo = -1, .hi = 1e9},
    {.name = "evaluation_freq", .type = CF_INT, .off = OFF(evaluation_freq), .lo = 0, .hi = 1e15,
     .comment = "Evaluate the generation performance during the training"},
    {.name = "evaluation_max_new_tokens", .type = CF_INT, .off = OFF(evaluation_max_new_tokens), .lo = 1,
     .hi = 1048576},
    {.name = "SYSTEM", .type = CF_SYSTEM, .sub = system_fields},
    {.name = "evaluation_inputs", .type = CF_STRLIST},
    {.name = "quantization", .type = CF_SECTION, .off = OFF(quantization), .flags = CF_NULLABLE | CF_ENABLES,
     .sub = quant_fields, .comment = "Model parts: BitsAndBytesConfig and LoraConfig"},
    {.name = "lora", .type = CF_SECTION, .off = OFF(lora), .sub = lora_fields},
    {.name = "gradient_checkpointing", .type = CF_BOOL, .off = OFF(gradient_checkpointing)},
    {.name = "compute_dtype", .type = CF_ENUM, .off = OFF(compute_dtype), .names = compute_names,
     .values = compute_values},
    {.name = "seed", .type = CF_INT, .off = OFF(seed), .lo = 0, .hi = 9007199254740992.0, .comment = "Runtime",
     .what = "an integer >= 0 (XTuner's seed=None, a random seed, is not offered)"},
    {.name = "deterministic", .type = CF_BOOL, .off = OFF(deterministic)},
    {.name = "randomness", .type = CF_RANDOMNESS, .flags = CF_HIDDEN, .sub = randomness_fields},
    {.name = "work_dir", .type = CF_STR, .off = OFF(work_dir)},
    {.name = "device", .type = CF_ENUM, .off = OFF(device), .names = device_names},
    {.name = "optimizer_offload", .type = CF_ENUM, .off = OFF(optimizer_offload), .names = offload_names,
     .what = "none (AdamW's moments in the device's memory) or cpu (in host memory, the update on the host)"},
    {.name = "embedding_offload", .type = CF_ENUM, .off = OFF(embedding_offload), .names = offload_names,
     .what = "cpu (the embedding table in host memory, rows gathered there) or none (on the device)"},
    {.name = "logging_interval", .type = CF_INT, .off = OFF(logging_interval), .lo = 1, .hi = 1e15},
    {0},
};

const ct_cfield *ct_config_field(const ct_cfield *table, const char *name) {
    for (const ct_cfield *f = table; f->name; f++)
        if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

/* ---- phrases of messages ---- */

void ct_cfg_path_join(char *buf, const char *prefix, const char *part) {
    if (snprintf(buf, CT_CFG_PATH_CAP, "%s%s%s", prefix, *prefix ? "." : "", part) >= CT_CFG_PATH_CAP)
        buf[CT_CFG_PATH_CAP - 1] = '\0';
}

void ct_cfg_path_index(char *buf, const char *prefix, size_t i) {
    char n[32];
    snprintf(n, sizeof n, "%zu", i);
    ct_cfg_path_join(buf, prefix, n);
}

void ct_cfg_join_names(const char *const *names, char *buf, size_t cap) {
    buf[0] = '\0';
    for (size_t i = 0; names[i]; i++) {
        size_t k = strlen(buf);
        snprintf(buf + k, cap - k, "%s%s", i ? ", " : "", names[i]);
    }
}

void ct_cfg_table_names(const ct_cfield *t, unsigned sched_type_bit, char *buf, size_t cap) {
    buf[0] = '\0';
    for (const ct_cfield *f = t; f->name; f++) {
        if (sched_type_bit && f->sched_types && !(f->sched_types & sched_type_bit)) continue;
        size_t k = strlen(buf);
        snprintf(buf + k, cap - k, "%s%s", k ? ", " : "", f->name);
    }
}

static void fmt_num(double x, char *buf, size_t cap) { snprintf(buf, cap, "%.15g", x); }

static void range_text(const ct_cfield *f, char *buf, size_t cap) {
    char lo[32], hi[32];
    fmt_num(f->lo, lo, sizeof lo);
    fmt_num(f->hi, hi, sizeof hi);
    bool has_lo = isfinite(f->lo), has_hi = isfinite(f->hi);
    if (has_lo && has_hi)
        snprintf(buf, cap, " in %c%s, %s%c", f->flags & CF_LO_OPEN ? '(' : '[', lo, hi,
                 f->flags & CF_HI_OPEN ? ')' : ']');
    else if (has_lo) snprintf(buf, cap, " %s %s", f->flags & CF_LO_OPEN ? ">" : ">=", lo);
    else if (has_hi) snprintf(buf, cap, " %s %s", f->flags & CF_HI_OPEN ? "<" : "<=", hi);
    else buf[0] = '\0';
}

/* The "expected ..." phrase of a field. */
void ct_cfg_expect(const ct_cfield *f, char *buf, size_t cap) {
    char r[96], names[512];
    if (f->what) {
        snprintf(buf, cap, "%s", f->what);
        return;
    }
    switch (f->type) {
    case CF_INT:
        range_text(f, r, sizeof r);
        snprintf(buf, cap, "%s%s%s", f->flags & CF_POW2 ? "a power of two" : "an integer", r,
                 f->flags & CF_NULLABLE ? ", or null" : "");
        break;
    case CF_DOUBLE:
        range_text(f, r, sizeof r);
        snprintf(buf, cap, "a number%s%s", r, f->flags & CF_NULLABLE ? ", or null" : "");
        break;
    case CF_BOOL:
        snprintf(buf, cap, "%s", f->flags & CF_ONLY_FALSE ? "false (only that is supported)"
                                 : f->flags & CF_ONLY_TRUE ? "true (only that is supported)" : "true or false");
        break;
    case CF_STR: snprintf(buf, cap, "a string%s", f->flags & CF_NULLABLE ? " or null" : ""); break;
    case CF_ENUM:
        ct_cfg_join_names(f->names, names, sizeof names);
        snprintf(buf, cap, "one of: %s", names);
        break;
    case CF_SECTION:
    case CF_RANDOMNESS:
        ct_cfg_table_names(f->sub, 0, names, sizeof names);
        snprintf(buf, cap, "a mapping of: %s%s", names, f->flags & CF_NULLABLE ? "; or null" : "");
        break;
    case CF_SYSTEM: snprintf(buf, cap, "a string, or {template: NAME} for a SYSTEM_TEMPLATE text"); break;
    case CF_BETAS: snprintf(buf, cap, "a list of two numbers in [0, 1), like [0.9, 0.999]"); break;
    case CF_STRLIST: snprintf(buf, cap, "a list of strings"); break;
    case CF_TARGETS:
        ct_cfg_join_names(ct_config_target_names, names, sizeof names);
        snprintf(buf, cap, "a list of: %s (or all-linear)", names);
        break;
    case CF_SCHEDULE:
        snprintf(buf, cap, "a list of {type: LinearLR|CosineAnnealingLR|ConstantLR, ...}, or null for the default");
        break;
    }
}
/* "; did you mean 'x'?" for the closest name within reach, else "". */
void ct_cfg_suggest(const char *got, const char *const *cands, size_t n, char *buf, size_t cap) {
    size_t best = (size_t)-1, bi = 0;
    for (size_t i = 0; i < n; i++) {
        size_t d = strcasecmp(got, cands[i]) == 0 ? 0 : ct_config_edit_distance(got, cands[i]);
        if (d < best) best = d, bi = i;
    }
    size_t reach = strlen(got) / 3 > 2 ? strlen(got) / 3 : 2;
    if (n && best <= reach) snprintf(buf, cap, "; did you mean '%s'?", cands[bi]);
    else buf[0] = '\0';
}

void ct_cfg_suggest_field(const char *got, const ct_cfield *t, char *buf, size_t cap) {
    const char *c[64];
    size_t n = 0;
    for (const ct_cfield *f = t; f->name && n < 64; f++) c[n++] = f->name;
    ct_cfg_suggest(got, c, n, buf, cap);
}
/* ---- `--set` paths ---- */

static bool is_index(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return false;
    return true;
}

static bool is_list(const ct_cfield *f) {
    return f->type == CF_BETAS || f->type == CF_STRLIST || f->type == CF_TARGETS || f->type == CF_SCHEDULE;
}

/* CT_EINPUT for path `shown` whose last segment `seg` is no key of table,
 * with the close names and the table's keys. */
static int unknown_key(const char *origin, const char *shown, const char *seg, const ct_cfield *table) {
    char names[1200], hint[128];
    ct_cfg_table_names(table, 0, names, sizeof names);
    ct_cfg_suggest_field(seg, table, hint, sizeof hint);
    return ct_errorf(CT_EINPUT, "%s: unknown key '%s'%s (expected one of: %s)", origin, shown, hint, names);
}

int ct_config_check_path(char *const *segs, int n, const char *origin, bool *is_idx) {
    const ct_cfield *table = ct_config_fields, *f = NULL;
    char shown[300] = "";
    for (int i = 0; i < n; i++) {
        const char *seg = segs[i];
        is_idx[i] = false;
        size_t k = strlen(shown);
        if (!f && table) {
            snprintf(shown + k, sizeof shown - k, "%s%s", k ? "." : "", seg);
            f = ct_config_field(table, seg);
            if (!f) return unknown_key(origin, shown, seg, table);
            continue;
        }
        if (!f) return ct_errorf(CT_EINPUT, "%s: '%s' is one value, it has no part '%s'", origin, shown, seg);
        snprintf(shown + k, sizeof shown - k, ".%s", seg);
        if (is_list(f)) {
            if (!is_index(seg))
                return ct_errorf(CT_EINPUT, "%s: '%.*s' is a list: index it with a number (%.*s.0) or set the whole "
                                 "list", origin, (int)k, shown, (int)k, shown);
            is_idx[i] = true;
            table = f->type == CF_SCHEDULE ? f->sub : NULL;
            f = NULL;
            continue;
        }
        if (!f->sub)
            return ct_errorf(CT_EINPUT, "%s: '%.*s' is one value, it has no part '%s'", origin, (int)k, shown, seg);
        table = f->sub;
        f = ct_config_field(table, seg);
        if (!f) return unknown_key(origin, shown, seg, table);
    }
    return CT_OK;
}

/* ---- the key list ---- */

static void each_key(const ct_cfield *t, const char *prefix, void (*fn)(const char *, void *), void *ctx) {
    for (const ct_cfield *f = t; f->name; f++) {
        char p[CT_CFG_PATH_CAP];
        ct_cfg_path_join(p, prefix, f->name);
        fn(p, ctx);
        if (f->type == CF_SCHEDULE) {
            char q[CT_CFG_PATH_CAP];
            ct_cfg_path_join(q, p, "N");
            each_key(f->sub, q, fn, ctx);
        } else if (f->sub) {
            each_key(f->sub, p, fn, ctx);
        }
    }
}

void ct_config_each_key(void (*fn)(const char *path, void *ctx), void *ctx) { each_key(ct_config_fields, "", fn, ctx); }
