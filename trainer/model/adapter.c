/* PEFT adapter directories: adapter_config.json and adapter_model.safetensors
 * read and written (see adapter.h). */
#include "adapter.h"

#include <ctype.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/safetensors.h"

#define KEY_PREFIX "base_model.model."

/* The five block linears and the head, as PEFT names their modules. */
static const struct {
    unsigned bit;
    const char *module; /* inside "model.layers.N." (NULL: the head, module "output") */
} k_mod[] = {
    {CT_LORA_WQKV, "attention.wqkv"}, {CT_LORA_WO, "attention.wo"},   {CT_LORA_W1, "feed_forward.w1"},
    {CT_LORA_W3, "feed_forward.w3"},  {CT_LORA_W2, "feed_forward.w2"}, {CT_LORA_OUTPUT, NULL},
};
enum { N_MOD = 6 };

static void module_name(int k, int layer, char *buf, size_t cap) {
    if (!k_mod[k].module) snprintf(buf, cap, "output");
    else snprintf(buf, cap, "model.layers.%d.%s", layer, k_mod[k].module);
}

/* ------------------------------------------------------------ config */

static bool ends_with_dot(const char *s, const char *t) {
    size_t n = strlen(s), k = strlen(t);
    return n > k && s[n - k - 1] == '.' && strcmp(s + n - k, t) == 0;
}

/* PEFT's list matching: module == target or module ends with "." + target. */
static int targets_from_list(const json_t *list, const char *path, unsigned *bits) {
    size_t i;
    const json_t *v;
    json_array_foreach(list, i, v) {
        if (!json_is_string(v))
            return ct_errorf(CT_EINPUT, "%s: \"target_modules\" must hold strings", path);
        const char *t = json_string_value(v);
        unsigned hit = 0;
        for (int k = 0; k < N_MOD; k++) {
            char mod[96];
            module_name(k, 0, mod, sizeof mod);
            if (!strcmp(mod, t) || ends_with_dot(mod, t)) hit |= k_mod[k].bit;
        }
        if (!hit)
            return ct_errorf(CT_EINPUT, "%s: target module '%s' is not a linear of InternLM2 (wqkv, wo, w1, w2, w3, "
                             "output); was this adapter made for another model?", path, t);
        *bits |= hit;
    }
    return CT_OK;
}

/* Bounds on a target_modules regex from a stranger's adapter_config.json:
 * glibc's regcomp expands every counted repetition {m,n} into copies, and
 * every '+' into two (x+ is x x*), so nested counts ("(a{0,255}){0,255}")
 * and nested pluses take minutes and gigabytes; stacked operators
 * ("w+++...+", 75 of them: fuzzing found it past 2 GB; ".*+++++" took
 * seconds to match) and backreferences make compiling or matching
 * exponential. PEFT's regexes name a few module alternatives; these limits
 * leave every such pattern alone. */
#define RX_MAX_LEN 256
#define RX_MAX_REPEAT 256 /* product of all {m,n} upper bounds and of 2 per '+' */

/* The largest count of the {m,n} whose '{' is re[i] (RX_MAX_REPEAT + 1 when
 * unbounded or malformed: "{,}" is glibc's {0,RE_DUP_MAX}); sets *close to
 * the index of its '}' (len when there is none). */
static long brace_bound(const char *re, size_t i, size_t len, size_t *close) {
    const char *p = re + i + 1;
    char *end = (char *)p;
    bool has_lo = isdigit((unsigned char)*p);
    long lo = has_lo ? strtol(p, &end, 10) : 0, hi;
    if (*end == ',') {
        if (isdigit((unsigned char)end[1])) {
            hi = strtol(end + 1, &end, 10);
        } else { /* {m,}: m copies and a star */
            end++;
            hi = has_lo && lo < RX_MAX_REPEAT ? lo + 1 : RX_MAX_REPEAT + 1;
        }
    } else {
        hi = has_lo ? lo : RX_MAX_REPEAT + 1;
    }
    *close = *end == '}' ? (size_t)(end - re) : len;
    return *end != '}' || lo < 0 || hi < lo || hi > RX_MAX_REPEAT ? RX_MAX_REPEAT + 1 : hi;
}

static int check_regex_bounds(const char *re, const char *path) {
    size_t len = strlen(re);
    if (len > RX_MAX_LEN)
        return ct_errorf(CT_EINPUT, "%s: target_modules regex is %zu characters long; ctuner accepts up to %d (list "
                         "the module names instead)", path, len, RX_MAX_LEN);
    double product = 1;
    int stacked = 0; /* repetition operators in a row just before re[i] */
    for (size_t i = 0; i < len; i++) {
        char c = re[i];
        bool quant = c == '*' || c == '+' || c == '?' || c == '{';
        /* "x*?" is Python's lazy x* (the same full matches); any other stack
         * ("x++", "x*+", ".*+++") nests repetitions that glibc expands or
         * backtracks through exponentially */
        if (quant && stacked > 0 && !(c == '?' && stacked == 1))
            return ct_errorf(CT_EINPUT, "%s: target_modules regex '%s' stacks repetition operators (at character "
                             "%zu); write one", path, re, i + 1);
        stacked = quant ? stacked + 1 : 0;
        if (c == '\\') {
            if (re[i + 1] >= '1' && re[i + 1] <= '9')
                return ct_errorf(CT_EINPUT, "%s: target_modules regex uses a backreference (\\%c); not supported",
                                 path, re[i + 1]);
            if (re[i + 1]) i++;
            continue;
        }
        if (c == '[') { /* a bracket expression: its '{' are literal */
            size_t j = i + 1;
            if (re[j] == '^') j++;
            if (re[j] == ']') j++;
            while (j < len && re[j] != ']') j++;
            i = j;
            continue;
        }
        if (c == '+') {
            product *= 2;
        } else if (c == '{') {
            long hi = brace_bound(re, i, len, &i);
            product *= (double)(hi > 0 ? hi : 1);
        } else {
            continue;
        }
        if (product > RX_MAX_REPEAT)
            return ct_errorf(CT_EINPUT, "%s: target_modules regex '%s' repeats too much (counted repetitions and "
                             "'+' multiply past %d); list the module names instead", path, re, RX_MAX_REPEAT);
    }
    return CT_OK;
}

/* A string: "all-linear", else a regex fully matched against module names. */
static int targets_from_regex(const char *re, int n_layers, const char *path, unsigned *bits) {
    if (!strcmp(re, "all-linear")) { /* PEFT: every linear but the output layer */
        *bits = CT_LORA_ALL_BLOCK;
        return CT_OK;
    }
    CT_TRY(check_regex_bounds(re, path));
    size_t len = strlen(re);
    char *anchored = malloc(len + 5);
    if (!anchored) return ct_errorf(CT_ERUNTIME, "out of memory");
    snprintf(anchored, len + 5, "^(%s)$", re);
    regex_t rx;
    int rc = regcomp(&rx, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    if (rc) return ct_errorf(CT_EINPUT, "%s: target_modules regex '%s' is not a POSIX extended regex", path, re);
    rc = CT_OK;
    for (int k = 0; rc == CT_OK && k < N_MOD; k++) {
        int layers = k_mod[k].module ? n_layers : 1, matched = 0;
        for (int l = 0; l < layers; l++) {
            char mod[96];
            module_name(k, l, mod, sizeof mod);
            matched += regexec(&rx, mod, 0, NULL, 0) == 0;
        }
        if (matched == layers) *bits |= k_mod[k].bit;
        else if (matched)
            rc = ct_errorf(CT_EINPUT, "%s: target_modules regex '%s' selects %s in only %d of %d layers; LoRA on "
                           "some layers only is not supported", path, re, k_mod[k].module, matched, layers);
    }
    regfree(&rx);
    if (rc == CT_OK && !*bits)
        rc = ct_errorf(CT_EINPUT, "%s: target_modules regex '%s' matches no InternLM2 linear", path, re);
    return rc;
}

/* Absent, null, or an empty object/list: a PEFT option we do not use. */
static bool unused_option(const json_t *v) {
    return !v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0);
}

static int parse_config(const json_t *j, const char *path, int n_layers, ct_adapter_config *cfg) {
    if (!json_is_object(j)) return ct_errorf(CT_EINPUT, "%s: must be a JSON object", path);
    const char *pt = json_string_value(json_object_get(j, "peft_type"));
    if (!pt || strcmp(pt, "LORA"))
        return ct_errorf(CT_EINPUT, "%s: peft_type '%s' is not \"LORA\" (only LoRA adapters are supported)", path,
                         pt ? pt : "(missing)");
    const json_t *r = json_object_get(j, "r"), *alpha = json_object_get(j, "lora_alpha");
    const json_t *drop = json_object_get(j, "lora_dropout"), *rs = json_object_get(j, "use_rslora");
    if (r && (!json_is_integer(r) || json_integer_value(r) < 1 || json_integer_value(r) > 1 << 20))
        return ct_errorf(CT_EINPUT, "%s: \"r\" must be a positive integer", path);
    if (alpha && !json_is_number(alpha)) return ct_errorf(CT_EINPUT, "%s: \"lora_alpha\" must be a number", path);
    if (drop && !json_is_number(drop)) return ct_errorf(CT_EINPUT, "%s: \"lora_dropout\" must be a number", path);
    if (rs && !json_is_boolean(rs)) return ct_errorf(CT_EINPUT, "%s: \"use_rslora\" must be true or false", path);
    cfg->lora.r = r ? (int)json_integer_value(r) : 8; /* PEFT's defaults */
    cfg->lora.alpha = alpha ? json_number_value(alpha) : 8.0;
    cfg->lora.dropout = drop ? (float)json_number_value(drop) : 0.0f;
    cfg->lora.use_rslora = rs && json_is_true(rs);
    const char *bias = json_string_value(json_object_get(j, "bias"));
    if (bias && strcmp(bias, "none"))
        return ct_errorf(CT_EINPUT, "%s: bias '%s' is not supported (only \"none\")", path, bias);
    static const char *const flags[] = {"use_dora", "fan_in_fan_out"};
    for (int i = 0; i < 2; i++)
        if (json_is_true(json_object_get(j, flags[i])))
            return ct_errorf(CT_EINPUT, "%s: \"%s\": true is not supported", path, flags[i]);
    static const char *const opts[] = {"rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save"};
    for (int i = 0; i < 4; i++)
        if (!unused_option(json_object_get(j, opts[i])))
            return ct_errorf(CT_EINPUT, "%s: \"%s\" is set; adapters using it are not supported", path, opts[i]);
    const json_t *tm = json_object_get(j, "target_modules");
    cfg->lora.targets = 0;
    if (json_is_array(tm)) CT_TRY(targets_from_list(tm, path, &cfg->lora.targets));
    else if (json_is_string(tm)) CT_TRY(targets_from_regex(json_string_value(tm), n_layers, path, &cfg->lora.targets));
    else return ct_errorf(CT_EINPUT, "%s: \"target_modules\" must be a list of module names or a string", path);
    const json_t *base = json_object_get(j, "base_model_name_or_path");
    if (base && !json_is_null(base) && !json_is_string(base))
        return ct_errorf(CT_EINPUT, "%s: \"base_model_name_or_path\" must be a string or null", path);
    snprintf(cfg->base_model, sizeof cfg->base_model, "%s", json_is_string(base) ? json_string_value(base) : "");
    return ct_lora_config_check(&cfg->lora, path);
}

int ct_adapter_read_config(const char *dir, int n_layers, ct_adapter_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    char path[CT_PATH_MAX];
    CT_TRY(ct_path_join(path, sizeof path, dir, "adapter_config.json"));
    if (!ct_path_exists(path))
        return ct_errorf(CT_EINPUT, "%s: no adapter_config.json (is %s a PEFT adapter directory?)", path, dir);
    json_t *j = ct_json_load(path, JSON_REJECT_DUPLICATES);
    if (!j) return ct_last_status() == CT_EINPUT ? CT_EINPUT : CT_ERUNTIME;
    int rc = parse_config(j, path, n_layers, cfg);
    json_decref(j);
    return rc;
}

/* ------------------------------------------------------------ weights */

/* "…lora_A.default.weight" -> "…lora_A.weight" into buf. */
static void canonical_key(const char *key, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", key);
    static const char *const suf[] = {".lora_A.default.weight", ".lora_B.default.weight"};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(buf), k = strlen(suf[i]);
        if (n >= k && !strcmp(buf + n - k, suf[i])) snprintf(buf + n - k, cap - (n - k), ".lora_%c.weight", "AB"[i]);
    }
}

/* Why a key has no slot: a module outside the targets, a layer beyond the
 * model, or not a LoRA key at all. */
static int explain_key(const char *file, const char *key, const ct_lora *lora) {
    const ct_decoder_model *dm = ct_lora_decoder(lora);
    const char *p = strncmp(key, KEY_PREFIX, strlen(KEY_PREFIX)) ? NULL : key + strlen(KEY_PREFIX);
    int layer = -1, used = 0;
    if (p && sscanf(p, "model.layers.%d.%n", &layer, &used) == 1 && used > 0) p += used;
    else if (p && strncmp(p, "output.", 7)) p = NULL;
    for (int k = 0; p && k < N_MOD; k++) {
        const char *mod = k_mod[k].module ? k_mod[k].module : "output";
        size_t n = strlen(mod);
        if ((layer < 0) != (k_mod[k].module == NULL) || strncmp(p, mod, n) || strncmp(p + n, ".lora_", 6)) continue;
        if (layer >= dm->n_layers)
            return ct_errorf(CT_EINPUT, "%s: key '%s' is for layer %d but the model has %d layers: the adapter "
                             "belongs to another model", file, key, layer, dm->n_layers);
        return ct_errorf(CT_EINPUT, "%s: key '%s' is for module %s, which is not among the adapter's target_modules "
                         "(adapter_config.json and the weights disagree)", file, key, mod);
    }
    return ct_errorf(CT_EINPUT, "%s: key '%s' is not a LoRA weight of an InternLM2 linear (expected keys like "
                     "base_model.model.model.layers.0.attention.wqkv.lora_A.weight)", file, key);
}

static int read_param(const char *file, const ct_st_tensor *t, const ct_lora_param *p, const ct_backend *be) {
    if (t->dtype != CT_ST_F32 && t->dtype != CT_ST_BF16 && t->dtype != CT_ST_F16)
        return ct_errorf(CT_EINPUT, "%s: key '%s' has dtype %s (expected F32, BF16 or F16)", file, t->name,
                         ct_st_dtype_name(t->dtype));
    const int64_t *want = p->t->shape;
    if (t->ndim != 2 || t->shape[0] != want[0] || t->shape[1] != want[1]) {
        int64_t r = p->is_b ? want[1] : want[0];
        bool r_only = t->ndim == 2 && (p->is_b ? t->shape[0] == want[0] : t->shape[1] == want[1]);
        char got[64] = "[";
        for (int d = 0; d < t->ndim; d++) {
            size_t off = strlen(got);
            snprintf(got + off, sizeof got - off, d ? ", %lld" : "%lld", (long long)t->shape[d]);
        }
        strncat(got, "]", sizeof got - strlen(got) - 1);
        if (r_only)
            return ct_errorf(CT_EINPUT, "%s: key '%s' has shape %s: its rank %lld does not match r = %lld", file,
                             t->name, got, (long long)(p->is_b ? t->shape[1] : t->shape[0]), (long long)r);
        return ct_errorf(CT_EINPUT, "%s: key '%s' has shape %s, the model needs [%lld, %lld] (%s): the adapter "
                         "belongs to another model", file, t->name, got, (long long)want[0], (long long)want[1],
                         p->is_b ? "out, r" : "r, in");
    }
    /* [numel] the slot itself on the CPU, else host staging */
    float *host = be->device == CT_CPU ? p->t->data : malloc((size_t)t->numel * sizeof(float));
    if (!host) return ct_errorf(CT_ERUNTIME, "out of memory reading %s", t->name);
    int rc = ct_st_read_f32(t, host);
    /* A NaN/Inf weight (a diverged run's save, a damaged file) would only
     * show later as NaN losses or garbage text: refuse it here. */
    for (int64_t i = 0; rc == CT_OK && i < t->numel; i++)
        if (!isfinite(host[i]))
            rc = ct_errorf(CT_EINPUT, "%s: key '%s' holds a non-finite value (%g at element %lld): the adapter is "
                           "damaged or comes from a diverged run", file, t->name, (double)host[i], (long long)i);
    if (rc == CT_OK && host != p->t->data) rc = be->upload(p->t->data, host, (size_t)t->numel * sizeof(float));
    if (host != p->t->data) free(host);
    return rc;
}

static int load_weights(const char *dir, ct_lora *lora, const ct_backend *be) {
    char file[CT_PATH_MAX], bin[CT_PATH_MAX];
    CT_TRY(ct_path_join(file, sizeof file, dir, "adapter_model.safetensors"));
    CT_TRY(ct_path_join(bin, sizeof bin, dir, "adapter_model.bin"));
    if (!ct_path_exists(file)) {
        if (ct_path_exists(bin))
            return ct_errorf(CT_EINPUT, "%s: adapter_model.bin is a Python pickle, which ctuner never loads (it can "
                             "run code). Convert it once with: python -c \"import torch; from safetensors.torch "
                             "import save_file; save_file(torch.load('%s', map_location='cpu'), '%s', "
                             "metadata={'format': 'pt'})\"", bin, bin, file);
        return ct_errorf(CT_EINPUT, "%s: missing (a PEFT adapter directory holds adapter_model.safetensors)", file);
    }
    ct_st_file *st = NULL;
    CT_TRY(ct_st_open(file, &st));
    size_t n = ct_lora_count(lora);
    bool *seen = calloc(n + 1, sizeof *seen); /* [n] which slots got values */
    int rc = seen ? CT_OK : ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; rc == CT_OK && i < ct_st_count(st); i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        char key[256];
        canonical_key(t->name, key, sizeof key);
        const ct_lora_param *p = ct_lora_find(lora, key);
        if (!p) {
            rc = explain_key(file, t->name, lora);
            break;
        }
        size_t idx = (size_t)(p - ct_lora_at(lora, 0));
        if (seen[idx])
            rc = ct_errorf(CT_EINPUT, "%s: key '%s' appears twice (with and without the adapter name)", file, key);
        else rc = read_param(file, t, p, be);
        ct_st_release(st, t); /* copied out: the mapped pages need not stay resident (a 7B r=64 adapter is 0.6 GB) */
        seen[idx] = true;
    }
    for (size_t i = 0; rc == CT_OK && i < n; i++)
        if (!seen[i])
            rc = ct_errorf(CT_EINPUT, "%s: missing key '%s' (target_modules names this module; the weights lack it)",
                           file, ct_lora_at(lora, i)->name);
    free(seen);
    ct_st_close(st);
    return rc;
}

int ct_adapter_load_into(const char *dir, ct_lora *lora) {
    const ct_decoder_model *dm = ct_lora_decoder(lora);
    const ct_lora_config *have = ct_lora_get_config(lora);
    ct_adapter_config cfg;
    CT_TRY(ct_adapter_read_config(dir, dm->n_layers, &cfg));
    if (cfg.lora.r != have->r)
        return ct_errorf(CT_EINPUT, "%s/adapter_config.json: r = %d, but the LoRA slots have r = %d", dir,
                         cfg.lora.r, have->r);
    if (cfg.lora.targets != have->targets)
        return ct_errorf(CT_EINPUT, "%s/adapter_config.json: target_modules differ from the LoRA slots' targets",
                         dir);
    return load_weights(dir, lora, ct_lora_backend(lora));
}

int ct_adapter_load(const char *dir, ct_model *m, bool trainable, ct_lora **out) {
    if (out) *out = NULL;
    ct_adapter_config cfg;
    CT_TRY(ct_adapter_read_config(dir, ct_model_decoder(m)->n_layers, &cfg));
    ct_lora *lora = NULL;
    CT_TRY(ct_model_add_lora(m, &cfg.lora, trainable, &lora));
    int rc = load_weights(dir, lora, ct_model_backend(m));
    if (rc) {
        ct_model_drop_lora(m);
        return rc;
    }
    if (out) *out = lora;
    return CT_OK;
}

/* ------------------------------------------------------------ writing */

/* adapter_config.json as PEFT (0.10/0.11) writes it: every LoraConfig field,
 * keys sorted. */
static json_t *config_json(const ct_lora_config *c, const char *base_model) {
    json_t *j = json_object(), *tm = json_array();
    if (!j || !tm) {
        json_decref(j), json_decref(tm);
        return NULL;
    }
    for (int k = 0; k < N_MOD; k++)
        if (c->targets & k_mod[k].bit) json_array_append_new(tm, json_string(ct_lora_target_name(k_mod[k].bit)));
    bool int_alpha = c->alpha == floor(c->alpha) && fabs(c->alpha) < 1e15;
    json_object_set_new(j, "alpha_pattern", json_object());
    json_object_set_new(j, "auto_mapping", json_null());
    json_object_set_new(j, "base_model_name_or_path", base_model ? json_string(base_model) : json_null());
    json_object_set_new(j, "bias", json_string("none"));
    json_object_set_new(j, "fan_in_fan_out", json_false());
    json_object_set_new(j, "inference_mode", json_true());
    json_object_set_new(j, "init_lora_weights", json_true());
    json_object_set_new(j, "layer_replication", json_null());
    json_object_set_new(j, "layers_pattern", json_null());
    json_object_set_new(j, "layers_to_transform", json_null());
    json_object_set_new(j, "loftq_config", json_object());
    json_object_set_new(j, "lora_alpha", int_alpha ? json_integer((json_int_t)c->alpha) : json_real(c->alpha));
    json_object_set_new(j, "lora_dropout", json_real((double)c->dropout));
    json_object_set_new(j, "megatron_config", json_null());
    json_object_set_new(j, "megatron_core", json_string("megatron.core"));
    json_object_set_new(j, "modules_to_save", json_null());
    json_object_set_new(j, "peft_type", json_string("LORA"));
    json_object_set_new(j, "r", json_integer(c->r));
    json_object_set_new(j, "rank_pattern", json_object());
    json_object_set_new(j, "revision", json_null());
    json_object_set_new(j, "target_modules", tm);
    json_object_set_new(j, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(j, "use_dora", json_false());
    json_object_set_new(j, "use_rslora", json_boolean(c->use_rslora));
    return j;
}

static int write_into(const char *tmp, const ct_lora *lora, const char *base_model, const float *host) {
    char path[CT_PATH_MAX];
    json_t *j = config_json(ct_lora_get_config(lora), base_model);
    if (!j) return ct_errorf(CT_ERUNTIME, "out of memory");
    int rc = ct_path_join(path, sizeof path, tmp, "adapter_config.json");
    if (rc == CT_OK) rc = ct_json_write_atomic(path, j, JSON_SORT_KEYS);
    json_decref(j);
    ct_st_writer *w = NULL;
    if (rc == CT_OK) rc = ct_st_writer_new(&w);
    if (rc == CT_OK) rc = ct_st_writer_metadata(w, "format", "pt");
    const float *base = ct_lora_values(lora);
    for (size_t i = 0; rc == CT_OK && i < ct_lora_count(lora); i++) {
        const ct_lora_param *p = ct_lora_at(lora, i);
        const float *data = host + ((const float *)p->t->data - base); /* same offset in the host copy */
        rc = ct_st_writer_add(w, p->name, CT_ST_F32, 2, p->t->shape, data);
    }
    if (rc == CT_OK) rc = ct_path_join(path, sizeof path, tmp, "adapter_model.safetensors");
    if (rc == CT_OK) rc = ct_st_writer_save(w, path, NULL, NULL);
    ct_st_writer_free(w);
    return rc;
}

/* An existing directory that may be replaced: missing, empty, or an adapter. */
static int check_target_dir(const char *dir, bool *replace) {
    *replace = false;
    if (!ct_path_exists(dir)) return CT_OK;
    if (!ct_path_is_dir(dir)) return ct_errorf(CT_EINPUT, "%s exists and is not a directory", dir);
    bool empty = false;
    CT_TRY(ct_dir_is_empty(dir, &empty));
    if (empty) return CT_OK;
    char cfg[CT_PATH_MAX];
    CT_TRY(ct_path_join(cfg, sizeof cfg, dir, "adapter_config.json"));
    if (!ct_path_exists(cfg))
        return ct_errorf(CT_EINPUT, "%s exists, is not empty and is not an adapter directory: choose another path",
                         dir);
    *replace = true;
    return CT_OK;
}

int ct_adapter_save(const char *dir, const ct_lora *lora, const char *base_model) {
    bool replace = false;
    CT_TRY(check_target_dir(dir, &replace));
    size_t bytes = (size_t)ct_lora_numel(lora) * sizeof(float);
    const ct_backend *be = ct_lora_backend(lora);
    /* [numel] the values in the LoRA's backend memory; read through a host copy
     * when that is not the CPU */
    float *host = ct_lora_values(lora), *copy = NULL;
    if (be->device != CT_CPU) {
        if (!(copy = malloc(bytes ? bytes : 1))) return ct_errorf(CT_ERUNTIME, "out of memory");
        if (be->download(copy, host, bytes)) {
            free(copy);
            return ct_error_wrap(CT_ERUNTIME, "reading the LoRA values back from the device");
        }
        host = copy;
    }
    char tmp[CT_PATH_MAX], aside[CT_PATH_MAX] = "";
    int rc = ct_tmpdir_beside(dir, tmp, sizeof tmp);
    if (rc == CT_OK) {
        rc = write_into(tmp, lora, base_model, host);
        if (rc == CT_OK && replace) { /* move the old adapter aside, then swap in the new one */
            rc = ct_tmpdir_beside(dir, aside, sizeof aside);
            if (rc == CT_OK && (rmdir(aside) != 0 || rename(dir, aside) != 0))
                rc = ct_errorf(CT_ERUNTIME, "%s: cannot move the previous adapter aside", dir);
        }
        if (rc == CT_OK) {
            rc = ct_dir_commit(tmp, dir);
            if (rc && replace) rename(aside, dir); /* put the old one back */
            else if (replace) ct_remove_tree(aside);
        }
        if (rc) {
            char why[1024];
            snprintf(why, sizeof why, "%s", ct_last_error());
            ct_remove_tree(tmp);
            ct_errorf(rc, "%s", why);
        }
    }
    free(copy);
    return rc;
}
