/* ctuner merge (trainer/model/merge.c) on random GQA InternLM2 models made by
 * `ctuner make-model` (hidden 36, 6 heads over 2 KV heads, intermediate 50,
 * vocab 41, 2 layers) and on the real stories260k fixture:
 *  - merged weights equal W + s·B·A computed here in double (fp32 rounding),
 *    untouched tensors are byte-identical to the base;
 *  - logits of the merged model equal base + adapter unmerged (fp32
 *    tolerance), also on stories260k;
 *  - bf16 output = the fp32 merge rounded once; a bf16 base keeps its dtype;
 *  - sharding by size: several shards, a correct index, same values back;
 *  - --quantize nf4 output loads with our loader (as a bitsandbytes
 *    checkpoint) and gives exactly the logits of quantize-on-load of the
 *    merged model; its config and quant_state JSON;
 *  - refused with CT_EINPUT and nothing written: another model's adapter
 *    (shapes), unknown target, r mismatch, missing key, quantized base,
 *    tied head, non-empty output directory;
 *  - an injected failure midway leaves neither the output nor a temp dir. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <jansson.h>

#include "autograd/ct_inline.h"
#include "testutil.h"
#include "trainer/model/adapter.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/merge.h"
#include "trainer/model/model.h"
#include "trainer/io/safetensors.h"

static ct_tape g_tape;
static char g_work[64];
static const int32_t k_ids[9] = {1, 7, 40, 3, 22, 22, 9, 0, 31};
enum { T = 9, V = 41, R = 4 };

static const char *k_cfg =
    "{\"architectures\": [\"InternLM2ForCausalLM\"], \"model_type\": \"internlm2\", \"hidden_size\": %d, "
    "\"intermediate_size\": 50, \"num_hidden_layers\": 2, \"num_attention_heads\": 6, "
    "\"num_key_value_heads\": 2, \"vocab_size\": 41, \"bias\": false, \"initializer_range\": 0.3, "
    "\"rms_norm_eps\": 1e-5, \"rope_theta\": 1000000.0, \"torch_dtype\": \"float32\", "
    "\"tie_word_embeddings\": %s}\n";

/* "<work>/<name>", valid until the end of the test (kept in g_paths). */
static char *g_paths[512];
static int g_n_paths;
static const char *path_in(const char *name) {
    if (g_n_paths == 512) ct_test_need(NULL);
    char *p = ct_test_need(malloc(CT_PATH_MAX));
    snprintf(p, CT_PATH_MAX, "%s/%s", g_work, name);
    return g_paths[g_n_paths++] = p;
}

/* `ctuner make-model` with a config of this hidden size into DIR. */
static void make_base(const char *dir, int hidden, bool tied, const char *extra) {
    char cfg[CT_PATH_MAX], text[1024], cmd[4 * CT_PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s.json", dir);
    snprintf(text, sizeof text, k_cfg, hidden, tied ? "true" : "false");
    CHECK_OK(ct_file_write_atomic(cfg, text, strlen(text)));
    snprintf(cmd, sizeof cmd, "'%s' make-model --config '%s' --out '%s' --seed 11 %s > /dev/null", CT_BINARY, cfg,
             dir, extra);
    if (system(cmd) != 0) {
        fprintf(stderr, "make-model failed: %s\n", cmd);
        exit(1);
    }
}

/* A random adapter (A and B non-zero) for `base`, saved into dir. */
static void make_adapter(const char *base, const char *dir, unsigned targets, bool rs, uint64_t seed, double std) {
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(base, NULL, &m));
    ct_test_need(m);
    ct_lora_config c = {.r = R, .alpha = 8, .dropout = 0.1f, .targets = targets, .use_rslora = rs, .seed = seed};
    ct_lora *l = NULL;
    CHECK_OK(ct_model_add_lora(m, &c, false, &l));
    ct_test_rng rng = {seed};
    ct_test_fill(&rng, ct_lora_values(ct_test_need(l)), ct_lora_numel(l), std);
    CHECK_OK(ct_adapter_save(dir, l, base));
    ct_model_free(m);
}

static int merge(const char *base, const char *adapter, const char *out, int dtype, uint64_t shard, bool quant,
                 ct_merge_report *r) {
    ct_merge_options o = {.base_dir = base, .adapter_dir = adapter, .out_dir = out, .dtype = dtype,
                          .max_shard_bytes = shard, .quantize = quant, .quant_type = CT_QUANT_NF4};
    return ct_merge(&o, r);
}

/* logits [T, V] of model dir (+ adapter when not NULL; quantized on load with q). */
static float *logits(const char *dir, const char *adapter, bool q, const int32_t *ids, int64_t n, int64_t vocab) {
    ct_model_options o = {.quant = q ? CT_MODEL_QUANT_NF4 : CT_MODEL_QUANT_NONE, .double_quant = true};
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(dir, &o, &m));
    ct_test_need(m);
    if (adapter) CHECK_OK(ct_adapter_load(adapter, m, false, NULL));
    float *lg = ct_test_need(malloc((size_t)(n * vocab) * sizeof(float)));
    CHECK_OK(ct_model_logits(m, &g_tape, ids, n, 0, lg));
    ct_model_free(m);
    return lg;
}

static const ct_st_tensor *lora_of(const ct_st_file *a, const char *wname, char ab) {
    char key[256];
    snprintf(key, sizeof key, "base_model.model.%.*s.lora_%c.weight", (int)(strlen(wname) - 7), wname, ab);
    return ct_st_find(a, key);
}

/* ------------------------------------------------------------ the formula */

/* out (f32) vs base + s·B·A in double for merged tensors; bytes for the rest. */
static void check_formula(const char *base, const char *adapter, const char *out, double s, int want_merged) {
    ct_st_file *b = NULL, *a = NULL, *o = NULL;
    CHECK_OK(ct_st_open(base, &b));
    char af[CT_PATH_MAX];
    CHECK_OK(ct_path_join(af, sizeof af, adapter, "adapter_model.safetensors"));
    CHECK_OK(ct_st_open(af, &a));
    CHECK_OK(ct_st_open(out, &o));
    if (!b || !a || !o) goto done;
    CHECK(ct_st_count(o) == ct_st_count(b), "%zu tensors out, %zu in", ct_st_count(o), ct_st_count(b));
    int merged = 0;
    for (size_t i = 0; i < ct_st_count(b); i++) {
        const ct_st_tensor *t = ct_st_at(b, i), *ot = ct_st_find(o, t->name);
        CHECK(ot && ot->dtype == CT_ST_F32 && ot->numel == t->numel, "%s in the output", t->name);
        if (!ot) continue;
        const ct_st_tensor *ta = lora_of(a, t->name, 'A'), *tb = lora_of(a, t->name, 'B');
        if (!ta) {
            CHECK(memcmp(ot->data, t->data, t->nbytes) == 0, "%s not byte-identical", t->name);
            continue;
        }
        merged++;
        int64_t rows = t->shape[0], cols = t->shape[1], r = ta->shape[0];
        float *w = ct_test_need(malloc((size_t)t->nbytes)), *A = ct_test_need(malloc(ta->nbytes)), *B = ct_test_need(malloc(tb->nbytes));
        double *want = ct_test_need(malloc((size_t)t->numel * sizeof(double)));
        CHECK_OK(ct_st_read_f32(t, w));
        CHECK_OK(ct_st_read_f32(ta, A));
        CHECK_OK(ct_st_read_f32(tb, B));
        for (int64_t p = 0; p < rows; p++)
            for (int64_t q = 0; q < cols; q++) {
                double acc = 0;
                for (int64_t k = 0; k < r; k++) acc += (double)B[p * r + k] * (double)A[k * cols + q];
                want[p * cols + q] = (double)w[p * cols + q] + s * acc;
            }
        ct_check_close(t->name, ot->data, want, t->numel, 2e-6, 2e-6);
        free(w), free(A), free(B), free(want);
    }
    CHECK(merged == want_merged, "%d tensors merged, want %d", merged, want_merged);
done:
    ct_st_close(b), ct_st_close(a), ct_st_close(o);
}

static void test_formula_and_logits(void) {
    printf("formula, untouched bytes, logits\n");
    const char *base = path_in("base"), *ad = path_in("ad"), *out = path_in("m32");
    make_adapter(base, ad, CT_LORA_ALL_BLOCK | CT_LORA_OUTPUT, false, 5, 0.3);
    ct_merge_report r;
    CHECK_OK(merge(base, ad, out, -1, 0, false, &r));
    CHECK(r.n_merged == 11 && r.n_copied == 2 * 2 + 2 && r.n_converted == 0 && r.n_shards == 1 && r.r == R &&
              r.scale == 2.0f && r.dtype == CT_F32,
          "report: merged %d copied %d converted %d shards %d r %d scale %g", r.n_merged, r.n_copied, r.n_converted,
          r.n_shards, r.r, (double)r.scale);
    check_formula(base, ad, out, 2.0, 11);
    char p[CT_PATH_MAX];
    static const char *const files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ct_path_join(p, sizeof p, out, files[i]));
        CHECK(ct_path_exists(p), "%s missing", p);
    }
    float *la = logits(base, ad, false, k_ids, T, V), *lm = logits(out, NULL, false, k_ids, T, V);
    float *lb = logits(base, NULL, false, k_ids, T, V);
    double worst = 0, moved = 0;
    for (int i = 0; i < T * V; i++) worst = fmax(worst, fabs((double)la[i] - lm[i])), moved = fmax(moved, fabs((double)la[i] - lb[i]));
    printf("  adapter vs merged logits: max |diff| %.3g (the adapter moved them by %.3g)\n", worst, moved);
    ct_check_close_f("merged vs base + adapter logits", lm, la, T * V, 5e-5, 5e-5);
    CHECK(moved > 0.1, "the adapter barely changed the logits (%.3g)", moved);
    free(la), free(lm), free(lb);
    /* rsLoRA and a subset of targets */
    const char *ad2 = path_in("ad-rs"), *out2 = path_in("m-rs");
    make_adapter(base, ad2, CT_LORA_WQKV | CT_LORA_W2, true, 6, 0.3);
    CHECK_OK(merge(base, ad2, out2, CT_F32, 0, false, &r));
    CHECK(r.n_merged == 4 && r.scale == 4.0f, "rsLoRA: merged %d scale %g", r.n_merged, (double)r.scale);
    check_formula(base, ad2, out2, 4.0, 4);
    CHECK(ct_test_no_temp_left(g_work), "temp dir left");
}

static void test_stories(void) {
    char fx[CT_PATH_MAX];
    if (!ct_fixture("stories260k-internlm2", fx, sizeof fx)) return;
    printf("stories260k + a random adapter\n");
    const char *ad = path_in("st-ad"), *out = path_in("st-m");
    make_adapter(fx, ad, CT_LORA_ALL_BLOCK, false, 9, 0.1);
    ct_merge_report r;
    CHECK_OK(merge(fx, ad, out, -1, 0, false, &r));
    CHECK(r.n_merged == 25 && r.dtype == CT_F32 && r.n_files == 2, "stories: merged %d, %d files", r.n_merged, r.n_files);
    check_formula(fx, ad, out, 2.0, 25);
    static const int32_t ids[12] = {1, 403, 261, 280, 395, 261, 341, 412, 13, 25, 476, 2};
    float *la = logits(fx, ad, false, ids, 12, 512), *lm = logits(out, NULL, false, ids, 12, 512);
    float *lb = logits(fx, NULL, false, ids, 12, 512);
    double worst = 0, moved = 0, big = 0;
    for (int i = 0; i < 12 * 512; i++)
        worst = fmax(worst, fabs((double)la[i] - lm[i])), moved = fmax(moved, fabs((double)la[i] - lb[i])),
        big = fmax(big, fabs((double)la[i]));
    printf("  adapter vs merged logits: max |diff| %.3g (logits up to %.3g, moved by %.3g)\n", worst, big, moved);
    ct_check_close_f("stories merged vs adapter logits", lm, la, 12 * 512, 5e-5, 5e-5);
    CHECK(moved > 0.1, "the adapter barely changed the logits (%.3g)", moved);
    free(la), free(lm), free(lb);
    char p[CT_PATH_MAX];
    CHECK_OK(ct_path_join(p, sizeof p, out, "tokenizer.model"));
    CHECK(ct_path_exists(p), "tokenizer.model not copied");
    CHECK_OK(ct_path_join(p, sizeof p, out, "tokenizer_config.json"));
    CHECK(ct_path_exists(p), "tokenizer_config.json not copied");
}

/* ------------------------------------------------------------ dtypes */

static void test_bf16(void) {
    printf("bf16 output = fp32 merge rounded once; bf16 base\n");
    const char *base = path_in("base"), *ad = path_in("ad"), *m32 = path_in("m32"), *m16 = path_in("m16");
    ct_merge_report r;
    CHECK_OK(merge(base, ad, m16, CT_BF16, 0, false, &r));
    CHECK(r.dtype == CT_BF16 && r.n_converted == 6 && r.n_copied == 0, "bf16: converted %d", r.n_converted);
    ct_st_file *a = NULL, *b = NULL;
    CHECK_OK(ct_st_open(m32, &a));
    CHECK_OK(ct_st_open(m16, &b));
    for (size_t i = 0; a && b && i < ct_st_count(a); i++) {
        const ct_st_tensor *t = ct_st_at(a, i), *h = ct_st_find(b, t->name);
        CHECK(h && h->dtype == CT_ST_BF16, "%s bf16", t->name);
        if (!h) continue;
        uint16_t *want = ct_test_need(malloc((size_t)t->numel * 2));
        CHECK_OK(ct_convert(want, CT_BF16, t->data, CT_F32, t->numel));
        CHECK(memcmp(want, h->data, h->nbytes) == 0, "%s is not the fp32 merge rounded once", t->name);
        free(want);
    }
    ct_st_close(a), ct_st_close(b);
    json_t *j = ct_json_load(path_in("m16/config.json"), 0);
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "torch_dtype")), "bfloat16") &&
              !json_object_get(j, "quantization_config"),
          "bf16 config.json");
    json_decref(j);
    /* a bf16 base: default dtype bf16, untouched tensors byte-identical, merged
     * ones = fp32 merge of the bf16 values rounded once */
    const char *b16 = path_in("base16"), *o16 = path_in("b16-m"), *o32 = path_in("b16-m32");
    make_base(b16, 36, false, "--dtype bf16");
    CHECK_OK(merge(b16, ad, o16, -1, 0, false, &r));
    CHECK(r.dtype == CT_BF16 && r.n_copied == 6 && r.n_merged == 11, "bf16 base: dtype %d copied %d", r.dtype,
          r.n_copied);
    CHECK_OK(merge(b16, ad, o32, CT_F32, 0, false, &r));
    CHECK(r.n_converted == 6, "bf16 base -> fp32: converted %d", r.n_converted);
    ct_st_file *x = NULL, *y = NULL, *z = NULL;
    CHECK_OK(ct_st_open(b16, &x));
    CHECK_OK(ct_st_open(o16, &y));
    CHECK_OK(ct_st_open(o32, &z));
    for (size_t i = 0; x && y && z && i < ct_st_count(x); i++) {
        const ct_st_tensor *t = ct_st_at(x, i), *h = ct_st_find(y, t->name), *f = ct_st_find(z, t->name);
        if (!h || !f) {
            CHECK(0, "%s missing", t->name);
            continue;
        }
        uint16_t *want = ct_test_need(malloc((size_t)t->numel * 2));
        CHECK_OK(ct_convert(want, CT_BF16, f->data, CT_F32, t->numel));
        CHECK(h->dtype == CT_ST_BF16 && memcmp(want, h->data, h->nbytes) == 0, "%s: bf16 merge", t->name);
        if (strstr(t->name, "norm") || strstr(t->name, "tok_embeddings")) /* not targeted */
            CHECK(memcmp(t->data, h->data, t->nbytes) == 0, "%s not byte-identical", t->name);
        free(want);
    }
    ct_st_close(x), ct_st_close(y), ct_st_close(z);
}

/* ------------------------------------------------------------ shards */

static void test_shards(void) {
    printf("sharding\n");
    const char *bsh = path_in("base-sh"), *ad = path_in("ad"), *out = path_in("m-sh");
    make_base(bsh, 36, false, "--max-shard-size 20KB"); /* a sharded base, same seed as base */
    ct_merge_report r;
    CHECK_OK(merge(bsh, ad, out, -1, 25000, false, &r));
    printf("  %d shards\n", r.n_shards);
    CHECK(r.n_shards > 2, "%d shards", r.n_shards);
    ct_st_index idx;
    memset(&idx, 0, sizeof idx);
    CHECK_OK(ct_st_index_load(path_in("m-sh/model.safetensors.index.json"), &idx));
    ct_st_file *o = NULL, *one = NULL;
    CHECK_OK(ct_st_open(out, &o));
    CHECK_OK(ct_st_open(path_in("m32"), &one));
    uint64_t total = 0;
    if (o && one) {
        CHECK(idx.n_entries == ct_st_count(one) && idx.n_shards == r.n_shards, "index: %zu entries, %d shards",
              idx.n_entries, idx.n_shards);
        for (size_t i = 0; i < idx.n_entries; i++) {
            const ct_st_tensor *t = ct_st_find(o, idx.entries[i].name), *u = ct_st_find(one, idx.entries[i].name);
            CHECK(t && u && t->nbytes == u->nbytes && !strcmp(strrchr(ct_st_shard_path(o, t->shard), '/') + 1,
                                                               idx.shards[idx.entries[i].shard]) &&
                      memcmp(t->data, u->data, t->nbytes) == 0,
                  "%s: shard or bytes differ from the unsharded merge", idx.entries[i].name);
            total += t ? t->nbytes : 0;
        }
        CHECK(idx.has_total_size && idx.total_size == total, "total_size %llu, tensors %llu",
              (unsigned long long)idx.total_size, (unsigned long long)total);
    }
    ct_st_close(o), ct_st_close(one);
    ct_st_index_free(&idx);
    float *a = logits(out, NULL, false, k_ids, T, V), *b = logits(path_in("m32"), NULL, false, k_ids, T, V);
    CHECK(memcmp(a, b, (size_t)T * V * sizeof(float)) == 0, "sharded merge logits differ");
    free(a), free(b);
}

/* ------------------------------------------------------------ 4-bit */

static void check_quant_files(const char *dir, const char *dtype) {
    char p[CT_PATH_MAX];
    CHECK_OK(ct_path_join(p, sizeof p, dir, "config.json"));
    json_t *j = ct_json_load(p, 0);
    json_t *q = json_object_get(j, "quantization_config");
    CHECK(q && !strcmp(json_string_value(json_object_get(q, "quant_method")), "bitsandbytes") &&
              json_is_true(json_object_get(q, "load_in_4bit")) && json_is_false(json_object_get(q, "load_in_8bit")) &&
              !strcmp(json_string_value(json_object_get(q, "bnb_4bit_quant_type")), "nf4") &&
              json_is_true(json_object_get(q, "bnb_4bit_use_double_quant")) &&
              !strcmp(json_string_value(json_object_get(q, "bnb_4bit_compute_dtype")), "bfloat16") &&
              !strcmp(json_string_value(json_object_get(q, "bnb_4bit_quant_storage")), "uint8") &&
              !strcmp(json_string_value(json_array_get(json_object_get(q, "llm_int8_skip_modules"), 0)), "output"),
          "%s: quantization_config", dir);
    json_decref(j);
    ct_st_file *f = NULL;
    CHECK_OK(ct_st_open(dir, &f));
    if (!f) return;
    const char *w = "model.layers.1.feed_forward.w2.weight"; /* [36, 50]: 1800 elements, 29 blocks */
    char name[256];
    snprintf(name, sizeof name, "%s.quant_state.bitsandbytes__nf4", w);
    const ct_st_tensor *st = ct_st_find(f, name), *codes = ct_st_find(f, w);
    CHECK(st && st->dtype == CT_ST_U8 && codes && codes->dtype == CT_ST_U8 && codes->ndim == 2 &&
              codes->shape[0] == 900 && codes->shape[1] == 1,
          "%s parts", w);
    if (st) {
        json_t *s = json_loadb(st->data, st->nbytes, 0, NULL);
        json_t *shape = json_object_get(s, "shape");
        CHECK(s && !strcmp(json_string_value(json_object_get(s, "quant_type")), "nf4") &&
                  json_integer_value(json_object_get(s, "blocksize")) == 64 &&
                  !strcmp(json_string_value(json_object_get(s, "dtype")), dtype) &&
                  json_integer_value(json_array_get(shape, 0)) == 36 &&
                  json_integer_value(json_array_get(shape, 1)) == 50 &&
                  json_integer_value(json_object_get(s, "nested_blocksize")) == 256 &&
                  !strcmp(json_string_value(json_object_get(s, "nested_dtype")), "float32") &&
                  json_real_value(json_object_get(s, "nested_offset")) > 0,
              "quant_state JSON: %.*s", (int)st->nbytes, (const char *)st->data);
        json_decref(s);
    }
    static const char *const plain[] = {"model.tok_embeddings.weight", "model.norm.weight", "output.weight",
                                        "model.layers.0.ffn_norm.weight"};
    for (int i = 0; i < 4; i++) {
        const ct_st_tensor *t = ct_st_find(f, plain[i]);
        CHECK(t && t->dtype != CT_ST_U8 && t->ndim >= 1, "%s should stay unquantized", plain[i]);
    }
    ct_st_close(f);
}

static void test_quantize(void) {
    printf("--quantize nf4\n");
    const char *base = path_in("base"), *ad = path_in("ad");
    const struct {
        const char *out, *plain, *json_dtype;
        int dtype;
    } cases[] = {{"mq32", "m32", "float32", CT_F32}, {"mq16", "m16", "bfloat16", CT_BF16}};
    for (int k = 0; k < 2; k++) {
        const char *out = path_in(cases[k].out);
        ct_merge_report r;
        CHECK_OK(merge(base, ad, out, cases[k].dtype, 0, true, &r));
        CHECK(r.n_quantized == 10 && r.n_merged == 11, "quantized %d merged %d", r.n_quantized, r.n_merged);
        check_quant_files(out, cases[k].json_dtype);
        ct_model *m = NULL;
        CHECK_OK(ct_model_load(out, NULL, &m));
        if (m) {
            ct_model_memory mem;
            ct_model_get_memory(m, &mem);
            CHECK(mem.prequantized && mem.n_quantized == 10, "loaded as bnb: %d quantized", mem.n_quantized);
            ct_model_free(m);
        }
        float *lq = logits(out, NULL, false, k_ids, T, V);
        float *ll = logits(path_in(cases[k].plain), NULL, true, k_ids, T, V);
        float *la = logits(base, ad, false, k_ids, T, V);
        double dq = 0;
        for (int i = 0; i < T * V; i++) dq = fmax(dq, fabs((double)lq[i] - la[i]));
        printf("  %s: 4-bit merged vs quantize-on-load %s; vs unquantized adapter max |diff| %.3g\n",
               cases[k].json_dtype, memcmp(lq, ll, (size_t)T * V * 4) ? "DIFFER" : "bit-identical", dq);
        CHECK(memcmp(lq, ll, (size_t)T * V * sizeof(float)) == 0, "4-bit merge != quantize-on-load of the merge");
        free(lq), free(ll), free(la);
    }
    /* the 4-bit output as a base: refused */
    int rc = merge(path_in("mq32"), ad, path_in("never"), -1, 0, false, NULL);
    CHECK(rc == CT_EINPUT && strstr(ct_last_error(), "quantized") && strstr(ct_last_error(), "full-precision"),
          "quantized base: rc %d %s", rc, ct_last_error());
    printf("  quantized base: %s\n", ct_last_error());
    CHECK(!ct_path_exists(path_in("never")) && ct_test_no_temp_left(g_work), "output left after a refusal");
}

/* ------------------------------------------------------------ refusals */

static void rewrite_config(const char *dir, const char *key, json_t *value) {
    char p[CT_PATH_MAX];
    CHECK_OK(ct_path_join(p, sizeof p, dir, "adapter_config.json"));
    json_t *j = ct_test_need(ct_json_load(p, 0));
    json_object_set_new(j, key, value);
    CHECK_OK(ct_json_write_atomic(p, j, JSON_SORT_KEYS));
    json_decref(j);
}

static void copy_adapter(const char *from, const char *to, const char *skip_key) {
    char a[CT_PATH_MAX], b[CT_PATH_MAX];
    ct_remove_tree(to);
    CHECK_OK(ct_mkdirs(to));
    CHECK_OK(ct_path_join(a, sizeof a, from, "adapter_config.json"));
    CHECK_OK(ct_path_join(b, sizeof b, to, "adapter_config.json"));
    CHECK_OK(ct_file_copy(a, b));
    CHECK_OK(ct_path_join(a, sizeof a, from, "adapter_model.safetensors"));
    CHECK_OK(ct_path_join(b, sizeof b, to, "adapter_model.safetensors"));
    ct_st_file *f = NULL;
    ct_st_writer *w = NULL;
    CHECK_OK(ct_st_open(a, &f));
    CHECK_OK(ct_st_writer_new(&w));
    for (size_t i = 0; f && i < ct_st_count(f); i++) {
        const ct_st_tensor *t = ct_st_at(f, i);
        if (!skip_key || strcmp(t->name, skip_key)) CHECK_OK(ct_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data));
    }
    CHECK_OK(ct_st_writer_metadata(w, "format", "pt"));
    CHECK_OK(ct_st_writer_save(w, b, NULL, NULL));
    ct_st_writer_free(w);
    ct_st_close(f);
}

static void expect_refused(const char *base, const char *adapter, const char *what, const char *s1, const char *s2) {
    const char *out = path_in("refused");
    int rc = merge(base, adapter, out, -1, 0, false, NULL);
    CHECK(rc == CT_EINPUT, "%s: rc %d (%s)", what, rc, ct_last_error());
    CHECK(strstr(ct_last_error(), s1) && (!s2 || strstr(ct_last_error(), s2)), "%s: '%s' lacks '%s' / '%s'", what,
          ct_last_error(), s1, s2 ? s2 : "");
    CHECK(!ct_path_exists(out) && ct_test_no_temp_left(g_work), "%s: output or temp dir left", what);
    printf("  %s: %s\n", what, ct_last_error());
}

static void test_refusals(void) {
    printf("refusals\n");
    const char *base = path_in("base"), *ad = path_in("ad"), *bad = path_in("bad-ad");
    /* an adapter made for another model shape */
    const char *other = path_in("base48"), *ad48 = path_in("ad48");
    make_base(other, 48, false, "");
    make_adapter(other, ad48, CT_LORA_ALL_BLOCK, false, 3, 0.3);
    expect_refused(base, ad48, "other model's adapter", "belongs to another model", "does not fit the base model");
    copy_adapter(ad, bad, NULL);
    rewrite_config(bad, "target_modules", json_pack("[ss]", "q_proj", "v_proj"));
    expect_refused(base, bad, "unknown targets", "q_proj", NULL);
    copy_adapter(ad, bad, NULL);
    rewrite_config(bad, "r", json_integer(8));
    expect_refused(base, bad, "r mismatch", "does not match r = 8", NULL);
    const char *gone = "base_model.model.model.layers.1.feed_forward.w3.lora_B.weight";
    copy_adapter(ad, bad, gone);
    expect_refused(base, bad, "missing key", gone, "missing");
    /* LoRA on a tied head */
    const char *tied = path_in("base-tied"), *adt = path_in("ad-tied");
    make_base(tied, 36, true, "");
    make_adapter(tied, adt, CT_LORA_WO | CT_LORA_OUTPUT, false, 4, 0.3);
    expect_refused(tied, adt, "tied head", "tie_word_embeddings", NULL);
    /* an output directory with something in it is left alone */
    const char *full = path_in("full");
    CHECK_OK(ct_mkdirs(full));
    CHECK_OK(ct_file_write_atomic(path_in("full/keep.txt"), "x", 1));
    int rc = merge(base, ad, full, -1, 0, false, NULL);
    CHECK(rc == CT_EINPUT && strstr(ct_last_error(), "not empty") && ct_path_exists(path_in("full/keep.txt")),
          "non-empty out: rc %d %s", rc, ct_last_error());
    /* an empty one is fine */
    const char *empty = path_in("empty-out");
    CHECK_OK(ct_mkdirs(empty));
    CHECK_OK(merge(base, ad, empty, -1, 0, false, NULL));
    CHECK(ct_path_exists(path_in("empty-out/model.safetensors")), "merge into an empty directory");
}

/* ------------------------------------------------------------ failures midway */

static void test_interrupted(void) {
    printf("failures midway\n");
    for (int q = 0; q < 2; q++)
        for (int k = 0; k < 3; k++) {
            /* the first, one in the middle, the last tensor (17 plain; 7 + 10·6 with 4-bit parts) */
            const int fail_at[] = {1, q ? 30 : 9, q ? 67 : 17};
            ct_test_fail_ctx f = {0, fail_at[k]};
            const char *out = path_in("interrupted");
            ct_merge_options o = {.base_dir = path_in("base-sh"), .adapter_dir = path_in("ad"), .out_dir = out,
                                  .dtype = -1, .max_shard_bytes = 12000, .quantize = q, .progress = ct_test_fail_after,
                                  .progress_ctx = &f};
            int rc = ct_merge(&o, NULL);
            CHECK(rc == CT_ERUNTIME && strstr(ct_last_error(), "injected failure"), "fail at %d: rc %d %s",
                  fail_at[k], rc, ct_last_error());
            CHECK(!ct_path_exists(out) && ct_test_no_temp_left(g_work), "fail at %d: output or temp dir left", fail_at[k]);
        }
    printf("  %s\n", ct_last_error());
}

int main(void) {
    snprintf(g_work, sizeof g_work, "/tmp/ct_test_merge.XXXXXX");
    if (!mkdtemp(g_work)) return 1;
    CHECK_OK(ct_tape_init(&g_tape, ct_cpu_backend(), (size_t)4 << 20));
    make_base(path_in("base"), 36, false, "");
    test_formula_and_logits();
    test_stories();
    test_bf16();
    test_shards();
    test_quantize();
    test_refusals();
    test_interrupted();
    char dir[CT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", g_work);
    ct_remove_tree(dir);
    ct_tape_free(&g_tape);
    for (int i = 0; i < g_n_paths; i++) free(g_paths[i]);
    return ct_test_finish();
}
