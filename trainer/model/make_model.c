/* A randomly initialised InternLM2 of any shape (ctuner make-model), written as a
 * Hugging Face model directory (config.json, generation_config.json,
 * model.safetensors or shards + index, optionally the tokenizer files).
 *
 * Initialisation follows InternLM2PreTrainedModel._init_weights: linear and
 * embedding weights ~ N(0, initializer_range²), biases 0, the embedding row of
 * pad_token_id 0, RMSNorm weights 1. Every value is a pure function of (seed,
 * tensor name, element index) - SplitMix64 counters + Box-Muller - so the model
 * does not depend on thread count, dtype or sharding, and tensors are generated
 * in chunks while they are written: a 7B-shaped model needs a few MB of memory.
 * With --quantize the block linears go through the bitsandbytes writer
 * (trainer/io/bnb_write.h), which asks for one whole weight at a time in f32
 * and quantizes it: memory is then about the largest linear in f32 (235 MB
 * for InternLM2-7B's w1) plus the 8-bit absmax of the weights whose codes
 * wait for their place in the shard (a byte per 64 elements), never the model
 * at 16 bits (7B: 560 MiB peak RSS). The values are the same
 * function of (seed, name, index), rounded to the dtype before quantizing, so
 * the files equal make-model then `ctuner quantize`.
 * The directory is built under a temp name and renamed into place. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "trainer/io/bnb_write.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/make_model.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"

#define CHUNK ((int64_t)1 << 20) /* elements generated per append */

/* A 4-bit weight as the bnb writer's load callback needs it. */
typedef struct {
    char name[128]; /* as declare_model's names */
    int64_t numel, cols;
} quant_src;

typedef struct {
    uint64_t seed;
    double std;
    int64_t pad_row; /* embedding row zeroed (pad_token_id), -1 for none */
    ct_st_dtype dtype;
    float *f;        /* (CHUNK) values */
    uint16_t *h;     /* (CHUNK) bf16/f16 encodings */
    ct_bnb_writer *bnb;  /* the 4-bit parts (NULL without quantize) */
    quant_src *qsrc;     /* [n_qsrc] the weights declared to bnb */
    size_t n_qsrc;
    float *whole;        /* [whole_cap] one whole weight for the bnb writer */
    size_t whole_cap;
} gen_ctx;

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* N(0, std²) for elements [i0, i1) of the stream `key`, into out[0 .. i1-i0).
 * Element i belongs to pair i/2: u1, u2 from the counters 2·(i/2) and 2·(i/2)+1;
 * the even element takes r·cos θ, the odd one r·sin θ. */
static void normal_fill(uint64_t key, double std, int64_t i0, int64_t i1, float *out) {
    int64_t p0 = i0 / 2, p1 = (i1 + 1) / 2;
#pragma omp parallel for schedule(static)
    for (int64_t p = p0; p < p1; p++) {
        uint64_t a = ct_mix64(key ^ ct_mix64((uint64_t)(2 * p)));
        uint64_t b = ct_mix64(key ^ ct_mix64((uint64_t)(2 * p + 1)));
        double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740992.0); /* (0, 1]: log is finite */
        double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
        double r = std * sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        int64_t e = 2 * p;
        if (e >= i0 && e < i1) out[e - i0] = (float)(r * cos(th));
        if (e + 1 >= i0 && e + 1 < i1) out[e + 1 - i0] = (float)(r * sin(th));
    }
}

/* The values of elements [i0, i1) of tensor `name` ([numel] elements, rows of
 * `cols`; cols 0 for a vector) into out[0 .. i1-i0). */
static void gen_range(const gen_ctx *g, const char *name, int64_t cols, int64_t i0, int64_t i1, float *out) {
    bool ones = ends_with(name, "norm.weight"), zeros = ends_with(name, ".bias");
    bool embed = strcmp(name, "model.tok_embeddings.weight") == 0;
    uint64_t key = ct_mix64(g->seed ^ fnv1a(name)); /* one stream per tensor name */
    int64_t n = i1 - i0;
    if (ones || zeros) {
        for (int64_t i = 0; i < n; i++) out[i] = ones ? 1.0f : 0.0f;
    } else {
        normal_fill(key, g->std, i0, i1, out);
    }
    if (embed && g->pad_row >= 0) { /* nn.Embedding(padding_idx=pad) zeroes that row */
        int64_t r0 = g->pad_row * cols, r1 = r0 + cols;
        for (int64_t i = (r0 > i0 ? r0 : i0); i < (r1 < i1 ? r1 : i1); i++) out[i - i0] = 0.0f;
    }
}

static int fill_tensor(void *vctx, ct_st_writer *w, const ct_st_tensor *t) {
    gen_ctx *g = vctx;
    bool handled = false;
    CT_TRY(ct_bnb_writer_fill(g->bnb, w, t, &handled)); /* a part of a 4-bit weight */
    if (handled) return CT_OK;
    int64_t row = t->ndim == 2 ? t->shape[1] : 0;
    for (int64_t i0 = 0; i0 < t->numel; i0 += CHUNK) {
        int64_t i1 = i0 + CHUNK < t->numel ? i0 + CHUNK : t->numel, n = i1 - i0;
        gen_range(g, t->name, row, i0, i1, g->f);
        if (g->dtype == CT_ST_F32) {
            CT_TRY(ct_st_writer_append(w, g->f, (size_t)n * sizeof(float)));
            continue;
        }
        for (int64_t i = 0; i < n; i++)
            g->h[i] = g->dtype == CT_ST_BF16 ? ct_f32_to_bf16(g->f[i]) : ct_f32_to_f16(g->f[i]);
        CT_TRY(ct_st_writer_append(w, g->h, (size_t)n * sizeof(uint16_t)));
    }
    return CT_OK;
}

/* ct_bnb_load_fn: a whole 4-bit weight in f32 (the writer rounds it to the
 * dtype and quantizes it; the buffer is reused for the next one). */
static int load_weight(void *vctx, void *src, float **values) {
    gen_ctx *g = vctx;
    const quant_src *q = src;
    if ((size_t)q->numel > g->whole_cap) {
        free(g->whole);
        g->whole_cap = 0;
        if (!(g->whole = malloc((size_t)q->numel * sizeof *g->whole)))
            return ct_errorf(CT_ERUNTIME, "out of memory (%lld values of %s)", (long long)q->numel, q->name);
        g->whole_cap = (size_t)q->numel;
    }
    gen_range(g, q->name, q->cols, 0, q->numel, g->whole);
    *values = g->whole;
    return CT_OK;
}

/* Declares a block linear's weight: to the bnb writer when the model is
 * quantized, else as a plain tensor. */
static int declare_linear(gen_ctx *g, ct_st_writer *w, const char *name, ct_st_dtype dt, const int64_t shape[2]) {
    if (!g->bnb) return ct_st_writer_add(w, name, dt, 2, shape, NULL);
    quant_src *q = &g->qsrc[g->n_qsrc++];
    snprintf(q->name, sizeof q->name, "%s", name);
    q->numel = shape[0] * shape[1], q->cols = shape[1];
    return ct_bnb_writer_add(g->bnb, w, name, shape, q);
}

/* Declares every tensor in InternLM2ForCausalLM's state_dict order (which decides
 * the sharding), with the shapes of docs/DESIGN.md ("InternLM2 weights"). */
static int declare_model(gen_ctx *g, ct_st_writer *w, const ct_hf_config *c, ct_st_dtype dt) {
    int64_t D = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t qkv = ct_hf_config_wqkv_rows(c), attn = ct_hf_config_attn_width(c);
    char name[128];
    CT_TRY(ct_st_writer_add(w, "model.tok_embeddings.weight", dt, 2, (int64_t[]){V, D}, NULL));
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const struct {
            const char *suffix;
            int ndim;
            int64_t shape[2];
            bool want;
        } parts[] = {
            {"attention.wqkv.weight", 2, {qkv, D}, true},
            {"attention.wqkv.bias", 1, {qkv, 0}, c->bias},
            {"attention.wo.weight", 2, {D, attn}, true},
            {"attention.wo.bias", 1, {D, 0}, c->bias},
            {"feed_forward.w1.weight", 2, {I, D}, true},
            {"feed_forward.w3.weight", 2, {I, D}, true},
            {"feed_forward.w2.weight", 2, {D, I}, true},
            {"attention_norm.weight", 1, {D, 0}, true},
            {"ffn_norm.weight", 1, {D, 0}, true},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
            if (!parts[k].want) continue;
            snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, parts[k].suffix);
            if (parts[k].ndim == 2) CT_TRY(declare_linear(g, w, name, dt, parts[k].shape));
            else CT_TRY(ct_st_writer_add(w, name, dt, 1, parts[k].shape, NULL));
        }
    }
    CT_TRY(ct_st_writer_add(w, "model.norm.weight", dt, 1, (int64_t[]){D}, NULL));
    if (!c->tie_word_embeddings) CT_TRY(ct_st_writer_add(w, "output.weight", dt, 2, (int64_t[]){V, D}, NULL));
    return ct_st_writer_metadata(w, "format", "pt"); /* transformers refuses files without it */
}

static int write_generation_config(const ct_hf_config *c, const char *dir) {
    json_t *j = json_pack("{sb}", "_from_model_config", 1);
    if (!j) return ct_errorf(CT_ERUNTIME, "out of memory");
    const struct {
        const char *key;
        int64_t v;
    } ids[] = {{"bos_token_id", c->bos_token_id}, {"eos_token_id", c->eos_token_id}, {"pad_token_id", c->pad_token_id}};
    for (size_t i = 0; i < 3; i++)
        if (ids[i].v >= 0) json_object_set_new(j, ids[i].key, json_integer((json_int_t)ids[i].v));
    char path[CT_PATH_MAX];
    int rc = ct_path_join(path, sizeof path, dir, "generation_config.json");
    if (rc == CT_OK) rc = ct_json_write_atomic(path, j, 0);
    json_decref(j);
    return rc;
}

static int copy_tokenizer(const char *from, const char *dir) {
    static const char *const files[] = {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[CT_PATH_MAX], dst[CT_PATH_MAX];
        CT_TRY(ct_path_join(src, sizeof src, from, files[i]));
        CT_TRY(ct_path_join(dst, sizeof dst, dir, files[i]));
        if (!ct_path_exists(src)) continue; /* only tokenizer.model is required (checked before) */
        CT_TRY(ct_file_copy(src, dst));
    }
    return CT_OK;
}

/* config.json: the input with torch_dtype set, and a 4-bit model's
 * quantization_config (as `ctuner quantize` writes it: head unquantized). */
static int write_config(const ct_hf_config *cfg, const char *dir, const char *torch_dtype, const ct_quant_params *qp) {
    char path[CT_PATH_MAX];
    CT_TRY(ct_path_join(path, sizeof path, dir, "config.json"));
    if (!qp) return ct_hf_config_write(cfg, path, torch_dtype);
    json_t *j = json_deep_copy(cfg->raw), *q = ct_bnb_quantization_config(qp, false);
    bool ok = j && q && json_object_set_new(j, "torch_dtype", json_string(torch_dtype)) == 0;
    if (ok) ok = json_object_set_new(j, "quantization_config", q) == 0, q = NULL;
    int rc = ok ? ct_json_write_atomic(path, j, 0) : ct_errorf(CT_ERUNTIME, "%s: out of memory", path);
    json_decref(q);
    json_decref(j);
    return rc;
}

/* The 4-bit format from the options; *on false when not quantizing. */
static int check_quant(const ct_make_model_options *o, ct_quant_params *qp, bool *on) {
    *on = o->quantize != NULL;
    int bs = o->blocksize ? o->blocksize : CT_QUANT_DEFAULT_BLOCKSIZE;
    if (!*on) {
        if (o->blocksize || o->no_double_quant)
            return ct_errorf(CT_EINPUT, "--blocksize and --no-double-quant need --quantize nf4|fp4");
        return CT_OK;
    }
    int t = ct_quant_type_from_name(o->quantize);
    if (t < 0) return ct_errorf(CT_EINPUT, "--quantize '%s' is not nf4 or fp4", o->quantize);
    if (bs < 32 || bs > 4096 || (bs & (bs - 1)))
        return ct_errorf(CT_EINPUT, "--blocksize %d is not a power of two in 32..4096 (bitsandbytes uses 64)", bs);
    *qp = (ct_quant_params){.type = (ct_quant_type)t, .blocksize = bs, .double_quant = !o->no_double_quant};
    return CT_OK;
}

/* Everything that can be refused before anything is written. */
static int check_inputs(const ct_make_model_options *o, ct_st_dtype *dt, const char **torch_dtype, uint64_t *max_shard,
                        ct_hf_config *cfg, ct_quant_params *qp, bool *quant) {
    if (!o->config) return ct_errorf(CT_EINPUT, "--config CONFIG.json is required (see 'ctuner make-model --help')");
    if (!o->out) return ct_errorf(CT_EINPUT, "--out DIR is required (see 'ctuner make-model --help')");
    CT_TRY(check_quant(o, qp, quant));
    CT_TRY(ct_st_parse_size(o->max_shard ? o->max_shard : "5GB", max_shard));
    CT_TRY(ct_hf_config_load(o->config, cfg));
    const char *want = o->dtype ? o->dtype : cfg->torch_dtype[0] ? cfg->torch_dtype : "fp32";
    int d = ct_dtype_from_name(want);
    if (d == CT_F32) *dt = CT_ST_F32, *torch_dtype = "float32";
    else if (d == CT_BF16) *dt = CT_ST_BF16, *torch_dtype = "bfloat16";
    else if (d == CT_F16) *dt = CT_ST_F16, *torch_dtype = "float16";
    else return ct_errorf(CT_EINPUT, "--dtype '%s' is not one of bf16, fp16, fp32", want);
    if (ct_path_exists(o->out)) {
        bool empty = false;
        if (!ct_path_is_dir(o->out)) return ct_errorf(CT_EINPUT, "--out %s exists and is not a directory", o->out);
        CT_TRY(ct_dir_is_empty(o->out, &empty));
        if (!empty)
            return ct_errorf(CT_EINPUT, "--out %s exists and is not empty: choose a new directory or remove it",
                             o->out);
    }
    if (o->tokenizer) {
        char p[CT_PATH_MAX];
        CT_TRY(ct_path_join(p, sizeof p, o->tokenizer, "tokenizer.model"));
        if (!ct_path_exists(p)) return ct_errorf(CT_EINPUT, "--tokenizer %s: no tokenizer.model there", o->tokenizer);
    }
    return CT_OK;
}

static int build(const ct_make_model_options *o, const ct_hf_config *cfg, ct_st_dtype dt, const char *torch_dtype,
                 uint64_t max_shard, const ct_quant_params *qp, const char *tmp, int *n_quantized) {
    gen_ctx g = {.seed = (uint64_t)o->seed, .std = cfg->initializer_range, .dtype = dt,
                 .pad_row = cfg->pad_token_id < cfg->vocab_size ? cfg->pad_token_id : -1};
    g.f = malloc((size_t)CHUNK * sizeof *g.f);
    g.h = malloc((size_t)CHUNK * sizeof *g.h);
    ct_st_writer *w = NULL;
    int rc = (g.f && g.h) ? ct_st_writer_new(&w) : ct_errorf(CT_ERUNTIME, "out of memory");
    if (rc == CT_OK && qp) { /* five block linears per layer */
        g.qsrc = calloc((size_t)cfg->num_hidden_layers * 5 + 1, sizeof *g.qsrc);
        if (!g.qsrc) rc = ct_errorf(CT_ERUNTIME, "out of memory");
        ct_dtype qdt = dt == CT_ST_BF16 ? CT_BF16 : dt == CT_ST_F16 ? CT_F16 : CT_F32;
        if (rc == CT_OK) rc = ct_bnb_writer_new(qp, qdt, tmp, load_weight, &g, &g.bnb);
    }
    if (rc == CT_OK) rc = declare_model(&g, w, cfg, dt);
    if (rc == CT_OK) rc = ct_st_writer_save_sharded(w, tmp, "model", max_shard, fill_tensor, &g);
    if (rc == CT_OK) rc = write_config(cfg, tmp, torch_dtype, qp);
    if (rc == CT_OK) rc = write_generation_config(cfg, tmp);
    if (rc == CT_OK && o->tokenizer) rc = copy_tokenizer(o->tokenizer, tmp);
    *n_quantized = ct_bnb_writer_count(g.bnb);
    ct_bnb_writer_free(g.bnb);
    ct_st_writer_free(w);
    free(g.qsrc);
    free(g.whole);
    free(g.f);
    free(g.h);
    return rc;
}

int ct_make_model(const ct_make_model_options *o, ct_make_model_report *report) {
    ct_hf_config cfg;
    memset(&cfg, 0, sizeof cfg);
    ct_st_dtype dt = CT_ST_F32;
    const char *torch_dtype = NULL;
    uint64_t max_shard = 0;
    ct_quant_params qp;
    bool quant = false;
    int n_quantized = 0;
    int rc = check_inputs(o, &dt, &torch_dtype, &max_shard, &cfg, &qp, &quant);
    if (rc) {
        ct_hf_config_free(&cfg);
        return rc;
    }
    char tmp[CT_PATH_MAX];
    rc = ct_reclaim_temps_of(o->out, NULL); /* interrupted builds into the same --out */
    if (rc == CT_OK) rc = ct_tmpdir_beside(o->out, tmp, sizeof tmp);
    if (rc == CT_OK) {
        rc = build(o, &cfg, dt, torch_dtype, max_shard, quant ? &qp : NULL, tmp, &n_quantized);
        if (rc == CT_OK) rc = ct_dir_commit(tmp, o->out);
        if (rc) { /* nothing half-written is left behind; keep the first error's message */
            char why[1024];
            snprintf(why, sizeof why, "%s", ct_last_error());
            if (ct_remove_tree(tmp)) ct_errorf(rc, "%s (and the temporary directory %s could not be removed)", why, tmp);
            else ct_errorf(rc, "%s", why);
        }
    }
    if (rc == CT_OK && report) {
        report->n_params = ct_hf_config_num_params(&cfg);
        report->n_layers = cfg.num_hidden_layers;
        report->n_quantized = n_quantized;
        report->torch_dtype = torch_dtype;
    }
    ct_hf_config_free(&cfg);
    return rc;
}
