/* config.json reader for InternLM2-family models (see hf_config.h). Defaults are
 * InternLM2Config's, so a config transformers accepts is accepted here; what the
 * model code cannot run (other activations, rope types, shapes that do not
 * divide) is refused up front with the file and the field. */
#include "hf_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"

#define SIZE_LIMIT 2147483647LL /* every size fits an int32, so products fit an int64 */

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Integer field; `required` or else `def` when absent (null only where allowed). */
static int get_int(const json_t *root, const char *name, const char *key, bool required, int64_t def,
                   int64_t *out) {
    const json_t *v = json_object_get(root, key);
    if (!v) {
        if (required) return ct_errorf(CT_EINPUT, "%s: missing field \"%s\" (an integer)", name, key);
        *out = def;
        return CT_OK;
    }
    if (!json_is_integer(v))
        return ct_errorf(CT_EINPUT, "%s: field \"%s\" must be an integer, got %s", name, key, type_name(v));
    *out = (int64_t)json_integer_value(v);
    return CT_OK;
}

static int get_size(const json_t *root, const char *name, const char *key, bool required, int64_t def,
                    int64_t *out) {
    CT_TRY(get_int(root, name, key, required, def, out));
    if (*out <= 0 || *out > SIZE_LIMIT)
        return ct_errorf(CT_EINPUT, "%s: field \"%s\" = %lld must be in 1..%lld", name, key, (long long)*out,
                         SIZE_LIMIT);
    return CT_OK;
}

static int get_number(const json_t *root, const char *name, const char *key, double def, double *out) {
    const json_t *v = json_object_get(root, key);
    if (!v) {
        *out = def;
        return CT_OK;
    }
    if (!json_is_number(v))
        return ct_errorf(CT_EINPUT, "%s: field \"%s\" must be a number, got %s", name, key, type_name(v));
    *out = json_number_value(v);
    if (!isfinite(*out)) return ct_errorf(CT_EINPUT, "%s: field \"%s\" must be finite", name, key);
    return CT_OK;
}

static int get_bool(const json_t *root, const char *name, const char *key, bool def, bool *out) {
    const json_t *v = json_object_get(root, key);
    if (!v) {
        *out = def;
        return CT_OK;
    }
    if (!json_is_boolean(v))
        return ct_errorf(CT_EINPUT, "%s: field \"%s\" must be true or false, got %s", name, key, type_name(v));
    *out = json_is_true(v);
    return CT_OK;
}

/* String field into buf; absent -> def (may be ""). */
static int get_string(const json_t *root, const char *name, const char *key, const char *def, char *buf,
                      size_t cap) {
    const json_t *v = json_object_get(root, key);
    const char *s = def;
    if (v) {
        if (!json_is_string(v))
            return ct_errorf(CT_EINPUT, "%s: field \"%s\" must be a string, got %s", name, key, type_name(v));
        s = json_string_value(v);
    }
    if (strlen(s) >= cap) return ct_errorf(CT_EINPUT, "%s: field \"%s\" = '%.40s...' is too long", name, key, s);
    snprintf(buf, cap, "%s", s);
    return CT_OK;
}

/* bos/eos/pad: an integer >= 0, null (-> -1), or a list of them (eos in newer
 * configs; the first is kept). */
static int get_token_id(const json_t *root, const char *name, const char *key, int64_t def, int64_t *out) {
    const json_t *v = json_object_get(root, key);
    *out = def;
    if (!v) return CT_OK;
    if (json_is_null(v)) {
        *out = -1;
        return CT_OK;
    }
    if (json_is_array(v) && json_array_size(v) > 0) v = json_array_get(v, 0);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return ct_errorf(CT_EINPUT, "%s: field \"%s\" must be a non-negative integer, a list of them, or null", name,
                         key);
    *out = (int64_t)json_integer_value(v);
    return CT_OK;
}

static int parse_rope_scaling(const json_t *root, const char *name, ct_hf_config *c) {
    const json_t *rs = json_object_get(root, "rope_scaling");
    c->rope_scaling = CT_ROPE_SCALING_NONE;
    c->rope_scaling_factor = 1.0;
    if (!rs || json_is_null(rs)) return CT_OK;
    if (!json_is_object(rs))
        return ct_errorf(CT_EINPUT, "%s: field \"rope_scaling\" must be an object or null, got %s", name,
                         type_name(rs));
    /* transformers renamed "type" to "rope_type"; accept either. */
    const json_t *t = json_object_get(rs, "type");
    if (!t) t = json_object_get(rs, "rope_type");
    if (!json_is_string(t))
        return ct_errorf(CT_EINPUT, "%s: field \"rope_scaling\" needs \"type\" (\"linear\" or \"dynamic\")", name);
    const char *ty = json_string_value(t);
    if (strcmp(ty, "linear") == 0) c->rope_scaling = CT_ROPE_SCALING_LINEAR;
    else if (strcmp(ty, "dynamic") == 0) c->rope_scaling = CT_ROPE_SCALING_DYNAMIC;
    else
        return ct_errorf(CT_EINPUT, "%s: rope_scaling type '%s' is not supported (InternLM2 uses \"linear\" or "
                         "\"dynamic\")", name, ty);
    const json_t *f = json_object_get(rs, "factor");
    if (!json_is_number(f) || !(json_number_value(f) >= 1.0) || !isfinite(json_number_value(f)))
        return ct_errorf(CT_EINPUT, "%s: field \"rope_scaling\".\"factor\" must be a number >= 1", name);
    c->rope_scaling_factor = json_number_value(f);
    return CT_OK;
}

static int parse_identity(const json_t *root, const char *name, ct_hf_config *c) {
    const json_t *arch = json_object_get(root, "architectures");
    if (arch && !json_is_null(arch)) {
        if (!json_is_array(arch) || (json_array_size(arch) && !json_is_string(json_array_get(arch, 0))))
            return ct_errorf(CT_EINPUT, "%s: field \"architectures\" must be a list of strings", name);
        if (json_array_size(arch))
            snprintf(c->architecture, sizeof c->architecture, "%s", json_string_value(json_array_get(arch, 0)));
    }
    CT_TRY(get_string(root, name, "model_type", "", c->model_type, sizeof c->model_type));
    if (c->model_type[0] && strcmp(c->model_type, "internlm2") != 0)
        return ct_errorf(CT_EINPUT, "%s: model_type '%s' is not supported (ctuner reads InternLM2-family models, "
                         "model_type \"internlm2\")", name, c->model_type);
    if (!c->model_type[0] && strncmp(c->architecture, "InternLM2", 9) != 0)
        return ct_errorf(CT_EINPUT, "%s: missing field \"model_type\" (expected \"internlm2\")", name);
    return CT_OK;
}

/* The model code's requirements, with the fields named. */
static int validate(const char *name, ct_hf_config *c) {
    if (c->hidden_size % c->num_attention_heads)
        return ct_errorf(CT_EINPUT, "%s: num_attention_heads (%lld) must divide hidden_size (%lld)", name,
                         (long long)c->num_attention_heads, (long long)c->hidden_size);
    if (c->num_key_value_heads > c->num_attention_heads || c->num_attention_heads % c->num_key_value_heads)
        return ct_errorf(CT_EINPUT, "%s: num_key_value_heads (%lld) must divide num_attention_heads (%lld)", name,
                         (long long)c->num_key_value_heads, (long long)c->num_attention_heads);
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (c->head_dim % 2)
        return ct_errorf(CT_EINPUT, "%s: head_dim = hidden_size / num_attention_heads = %lld must be even (RoPE "
                         "rotates pairs)", name, (long long)c->head_dim);
    if (strcmp(c->hidden_act, "silu") != 0)
        return ct_errorf(CT_EINPUT, "%s: hidden_act '%s' is not supported (InternLM2 uses \"silu\")", name,
                         c->hidden_act);
    if (!(c->rms_norm_eps > 0)) return ct_errorf(CT_EINPUT, "%s: field \"rms_norm_eps\" must be > 0", name);
    if (!(c->rope_theta > 0)) return ct_errorf(CT_EINPUT, "%s: field \"rope_theta\" must be > 0", name);
    if (!(c->initializer_range >= 0))
        return ct_errorf(CT_EINPUT, "%s: field \"initializer_range\" must be >= 0", name);
    if (c->torch_dtype[0] && strcmp(c->torch_dtype, "float32") != 0 && strcmp(c->torch_dtype, "bfloat16") != 0 &&
        strcmp(c->torch_dtype, "float16") != 0)
        return ct_errorf(CT_EINPUT, "%s: torch_dtype '%s' is not supported (float32, bfloat16 or float16)", name,
                         c->torch_dtype);
    if (ct_hf_config_num_params(c) < 0)
        return ct_errorf(CT_EINPUT, "%s: the sizes give more than 2^63 parameters", name);
    return CT_OK;
}

static int parse_fields(const json_t *root, const char *name, ct_hf_config *c) {
    if (!json_is_object(root)) return ct_errorf(CT_EINPUT, "%s: must be a JSON object", name);
    CT_TRY(parse_identity(root, name, c));
    CT_TRY(get_size(root, name, "hidden_size", true, 0, &c->hidden_size));
    CT_TRY(get_size(root, name, "intermediate_size", true, 0, &c->intermediate_size));
    CT_TRY(get_size(root, name, "num_hidden_layers", true, 0, &c->num_hidden_layers));
    CT_TRY(get_size(root, name, "num_attention_heads", true, 0, &c->num_attention_heads));
    CT_TRY(get_size(root, name, "vocab_size", true, 0, &c->vocab_size));
    const json_t *kv = json_object_get(root, "num_key_value_heads");
    if (kv && json_is_null(kv)) c->num_key_value_heads = c->num_attention_heads; /* InternLM2Config: None -> heads */
    else CT_TRY(get_size(root, name, "num_key_value_heads", false, c->num_attention_heads, &c->num_key_value_heads));
    CT_TRY(get_size(root, name, "max_position_embeddings", false, 2048, &c->max_position_embeddings));
    CT_TRY(get_number(root, name, "rms_norm_eps", 1e-6, &c->rms_norm_eps));
    CT_TRY(get_number(root, name, "rope_theta", 10000.0, &c->rope_theta));
    CT_TRY(get_number(root, name, "initializer_range", 0.02, &c->initializer_range));
    CT_TRY(parse_rope_scaling(root, name, c));
    CT_TRY(get_bool(root, name, "bias", true, &c->bias));
    CT_TRY(get_bool(root, name, "tie_word_embeddings", false, &c->tie_word_embeddings));
    CT_TRY(get_string(root, name, "torch_dtype", "", c->torch_dtype, sizeof c->torch_dtype));
    CT_TRY(get_string(root, name, "hidden_act", "silu", c->hidden_act, sizeof c->hidden_act));
    CT_TRY(get_token_id(root, name, "bos_token_id", 1, &c->bos_token_id));
    CT_TRY(get_token_id(root, name, "eos_token_id", 2, &c->eos_token_id));
    CT_TRY(get_token_id(root, name, "pad_token_id", 0, &c->pad_token_id));
    json_t *q = json_object_get(root, "quantization_config");
    if (q && !json_is_null(q) && !json_is_object(q))
        return ct_errorf(CT_EINPUT, "%s: field \"quantization_config\" must be an object, got %s", name,
                         type_name(q));
    c->quantization_config = json_is_object(q) ? q : NULL;
    return validate(name, c);
}

int ct_hf_config_parse(const char *text, size_t len, const char *name, ct_hf_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root) return ct_errorf(CT_EINPUT, "%s:%d:%d: invalid JSON: %s", name, err.line, err.column, err.text);
    int rc = parse_fields(root, name, cfg);
    if (rc) {
        json_decref(root);
        memset(cfg, 0, sizeof *cfg);
        return rc;
    }
    cfg->raw = root;
    return CT_OK;
}

int ct_hf_config_load(const char *path, ct_hf_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    char file[CT_PATH_MAX];
    if (ct_path_is_dir(path)) CT_TRY(ct_path_join(file, sizeof file, path, "config.json"));
    else snprintf(file, sizeof file, "%s", path);
    char *text = NULL;
    size_t n = 0;
    CT_TRY(ct_file_read_all(file, &text, &n));
    int rc = ct_hf_config_parse(text, n, file, cfg);
    free(text);
    return rc;
}

void ct_hf_config_free(ct_hf_config *cfg) {
    json_decref(cfg->raw);
    memset(cfg, 0, sizeof *cfg);
}

int64_t ct_hf_config_num_params(const ct_hf_config *c) {
    int64_t D = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, L = c->num_hidden_layers;
    int64_t qkv_rows = (c->num_attention_heads + 2 * c->num_key_value_heads) * (D / c->num_attention_heads);
    int64_t attn_out = c->num_attention_heads * (D / c->num_attention_heads); /* wo input width */
    /* per layer: wqkv [qkv_rows, D], wo [D, attn_out], w1/w3 [I, D], w2 [D, I], 2 norms [D],
     * and with bias: wqkv.bias [qkv_rows], wo.bias [D] (InternLM2 has no MLP biases) */
    int64_t per = 0, tmp, total = 0;
    bool ov = __builtin_mul_overflow(qkv_rows, D, &per);
    ov |= __builtin_mul_overflow(D, attn_out, &tmp) || __builtin_add_overflow(per, tmp, &per);
    ov |= __builtin_mul_overflow(3 * I, D, &tmp) || __builtin_add_overflow(per, tmp, &per);
    ov |= __builtin_add_overflow(per, 2 * D + (c->bias ? qkv_rows + D : 0), &per);
    ov |= __builtin_mul_overflow(per, L, &total);
    ov |= __builtin_mul_overflow(V, D, &tmp) || __builtin_add_overflow(total, tmp, &total); /* embeddings */
    if (!c->tie_word_embeddings) ov |= __builtin_add_overflow(total, tmp, &total);          /* output head */
    ov |= __builtin_add_overflow(total, D, &total); /* final norm */
    return ov ? -1 : total;
}

int ct_hf_config_write(const ct_hf_config *cfg, const char *path, const char *torch_dtype) {
    json_t *j = json_deep_copy(cfg->raw);
    if (!j) return ct_errorf(CT_ERUNTIME, "%s: out of memory copying the config", path);
    if (torch_dtype && json_object_set_new(j, "torch_dtype", json_string(torch_dtype)) != 0) {
        json_decref(j);
        return ct_errorf(CT_ERUNTIME, "%s: out of memory", path);
    }
    int rc = ct_json_write_atomic(path, j, 0);
    json_decref(j);
    return rc;
}
