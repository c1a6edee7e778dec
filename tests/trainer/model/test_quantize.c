/* ctuner quantize (trainer/model/merge.h without an adapter, trainer/io/bnb_write.h) on
 * a random GQA InternLM2 model made by `ctuner make-model` (hidden 36, 6 heads
 * over 2 KV heads, intermediate 50, vocab 41, 2 layers) and on the real
 * stories260k fixture:
 *  - the output loads with ct_model_load as a pre-quantized bitsandbytes
 *    checkpoint (no re-quantization) and its logits are bit-identical to
 *    quantize-on-load of the original with the same options: nf4 + double
 *    quant (default), fp4 without double quant at blocksize 128, the head
 *    quantized too, a bf16 output of an fp32 model, several shards;
 *  - config.json quantization_config and the quant_state JSON have the
 *    expected fields; embeddings, norms and (by default) the head stay
 *    unquantized; tokenizer files are copied;
 *  - refused with CT_EINPUT and nothing written: an already-quantized model,
 *    a non-empty output directory, a bad blocksize or 4-bit type;
 *  - an injected failure midway leaves neither the output nor a temp dir. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/merge.h"
#include "trainer/model/model.h"
#include "trainer/io/safetensors.h"

static ct_tape g_tape;
static char g_work[64];
static const int32_t k_ids[9] = {1, 7, 40, 3, 22, 22, 9, 0, 31};
enum { T = 9, V = 41 };

static const char *k_cfg =
    "{\"architectures\": [\"InternLM2ForCausalLM\"], \"model_type\": \"internlm2\", \"hidden_size\": 36, "
    "\"intermediate_size\": 50, \"num_hidden_layers\": 2, \"num_attention_heads\": 6, "
    "\"num_key_value_heads\": 2, \"vocab_size\": 41, \"bias\": false, \"initializer_range\": 0.3, "
    "\"rms_norm_eps\": 1e-5, \"rope_theta\": 1000000.0, \"torch_dtype\": \"float32\", "
    "\"tie_word_embeddings\": false}\n";

/* "<work>/<name>", valid until the end of the test (kept in g_paths). */
static char *g_paths[256];
static int g_n_paths;
static const char *path_in(const char *name) {
    if (g_n_paths == 256) ct_test_need(NULL);
    char *p = ct_test_need(malloc(CT_PATH_MAX));
    snprintf(p, CT_PATH_MAX, "%s/%s", g_work, name);
    return g_paths[g_n_paths++] = p;
}

/* `ctuner make-model` of the GQA config into DIR. */
static void make_base(const char *dir) {
    char cfg[CT_PATH_MAX], cmd[4 * CT_PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s.json", dir);
    CHECK_OK(ct_file_write_atomic(cfg, k_cfg, strlen(k_cfg)));
    snprintf(cmd, sizeof cmd, "'%s' make-model --config '%s' --out '%s' --seed 13 > /dev/null", CT_BINARY, cfg, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "make-model failed: %s\n", cmd);
        exit(1);
    }
}

typedef struct {
    ct_quant_type type;
    int blocksize;
    bool no_dq, head;
    int dtype; /* -1 = the model's */
    uint64_t shard;
} qopts;

static int quantize(const char *model, const char *out, const qopts *q, ct_merge_report *r) {
    ct_merge_options o = {.base_dir = model, .out_dir = out, .dtype = q->dtype, .max_shard_bytes = q->shard,
                          .quantize = true, .quant_type = q->type, .blocksize = q->blocksize,
                          .no_double_quant = q->no_dq, .quantize_output = q->head};
    return ct_merge(&o, r);
}

/* logits [n, vocab] of model dir, quantized on load as q says (q NULL: as stored). */
static float *logits(const char *dir, const qopts *q, const int32_t *ids, int64_t n, int64_t vocab,
                     ct_model_memory *mem) {
    ct_model_options o = {0};
    if (q)
        o = (ct_model_options){.quant = q->type == CT_QUANT_FP4 ? CT_MODEL_QUANT_FP4 : CT_MODEL_QUANT_NF4,
                               .double_quant = !q->no_dq, .blocksize = q->blocksize, .quant_output = q->head};
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(dir, &o, &m));
    ct_test_need(m);
    if (mem) ct_model_get_memory(m, mem);
    float *lg = ct_test_need(malloc((size_t)(n * vocab) * sizeof(float)));
    CHECK_OK(ct_model_logits(m, &g_tape, ids, n, 0, lg));
    ct_model_free(m);
    return lg;
}

/* The output's logits equal quantize-on-load of `ref` (loaded as pre-quantized,
 * n_quant weights); returns max |diff| against `ref` unquantized. */
static double check_logits(const char *out, const char *ref, const qopts *q, int n_quant, const int32_t *ids,
                           int64_t n, int64_t vocab) {
    ct_model_memory mem;
    float *lq = logits(out, NULL, ids, n, vocab, &mem), *ll = logits(ref, q, ids, n, vocab, NULL);
    float *lf = logits(ref, NULL, ids, n, vocab, NULL);
    CHECK(mem.prequantized && mem.n_quantized == n_quant, "%s loaded as bnb: prequantized %d, %d quantized", out,
          (int)mem.prequantized, mem.n_quantized);
    CHECK(memcmp(lq, ll, (size_t)(n * vocab) * sizeof(float)) == 0, "%s: logits != quantize-on-load of %s", out, ref);
    double d = 0;
    for (int64_t i = 0; i < n * vocab; i++) d = fmax(d, fabs((double)lq[i] - lf[i]));
    free(lq), free(ll), free(lf);
    return d;
}

/* config.json quantization_config and one weight's parts and quant_state. */
static void check_files(const char *dir, const qopts *q, const char *dtype, const char *w, int64_t rows,
                        int64_t cols) {
    const char *tn = q->type == CT_QUANT_FP4 ? "fp4" : "nf4";
    int bs = q->blocksize ? q->blocksize : 64;
    char p[CT_PATH_MAX];
    CHECK_OK(ct_path_join(p, sizeof p, dir, "config.json"));
    json_t *j = ct_json_load(p, 0);
    json_t *qc = json_object_get(j, "quantization_config"), *skip = json_object_get(qc, "llm_int8_skip_modules");
    CHECK(qc && !strcmp(json_string_value(json_object_get(qc, "quant_method")), "bitsandbytes") &&
              json_is_true(json_object_get(qc, "load_in_4bit")) && json_is_false(json_object_get(qc, "load_in_8bit")) &&
              !strcmp(json_string_value(json_object_get(qc, "bnb_4bit_quant_type")), tn) &&
              json_is_boolean(json_object_get(qc, "bnb_4bit_use_double_quant")) &&
              json_is_true(json_object_get(qc, "bnb_4bit_use_double_quant")) == !q->no_dq &&
              json_string_value(json_object_get(qc, "bnb_4bit_compute_dtype")) &&
              !strcmp(json_string_value(json_object_get(qc, "bnb_4bit_quant_storage")), "uint8") &&
              json_is_array(skip) && json_array_size(skip) == (q->head ? 0u : 1u) &&
              (q->head || !strcmp(json_string_value(json_array_get(skip, 0)), "output")) &&
              !strcmp(json_string_value(json_object_get(j, "torch_dtype")), dtype),
          "%s: config.json quantization_config / torch_dtype", dir);
    json_decref(j);
    ct_st_file *f = NULL;
    CHECK_OK(ct_st_open(dir, &f));
    if (!f) return;
    int64_t n = rows * cols, nblocks = (n + bs - 1) / bs;
    char name[256];
    snprintf(name, sizeof name, "%s.quant_state.bitsandbytes__%s", w, tn);
    const ct_st_tensor *st = ct_st_find(f, name), *codes = ct_st_find(f, w);
    snprintf(name, sizeof name, "%s.absmax", w);
    const ct_st_tensor *am = ct_st_find(f, name);
    snprintf(name, sizeof name, "%s.quant_map", w);
    const ct_st_tensor *qm = ct_st_find(f, name);
    snprintf(name, sizeof name, "%s.nested_absmax", w);
    const ct_st_tensor *na = ct_st_find(f, name);
    snprintf(name, sizeof name, "%s.nested_quant_map", w);
    const ct_st_tensor *nq = ct_st_find(f, name);
    CHECK(st && st->dtype == CT_ST_U8 && codes && codes->dtype == CT_ST_U8 && codes->ndim == 2 &&
              codes->shape[0] == (n + 1) / 2 && codes->shape[1] == 1 && qm && qm->dtype == CT_ST_F32 &&
              qm->numel == 16 && am && am->numel == nblocks && am->dtype == (q->no_dq ? CT_ST_F32 : CT_ST_U8) &&
              (q->no_dq ? !na && !nq : na && nq && na->numel == (nblocks + 255) / 256 && nq->numel == 256),
          "%s: parts of %s", dir, w);
    if (st) {
        json_t *s = json_loadb(st->data, st->nbytes, 0, NULL);
        json_t *shape = json_object_get(s, "shape");
        bool nested_ok = q->no_dq ? !json_object_get(s, "nested_blocksize") && !json_object_get(s, "nested_offset")
                                  : json_integer_value(json_object_get(s, "nested_blocksize")) == 256 &&
                                        !strcmp(json_string_value(json_object_get(s, "nested_dtype")), "float32") &&
                                        json_real_value(json_object_get(s, "nested_offset")) > 0;
        CHECK(s && !strcmp(json_string_value(json_object_get(s, "quant_type")), tn) &&
                  json_integer_value(json_object_get(s, "blocksize")) == bs &&
                  !strcmp(json_string_value(json_object_get(s, "dtype")), dtype) &&
                  json_integer_value(json_array_get(shape, 0)) == rows &&
                  json_integer_value(json_array_get(shape, 1)) == cols && nested_ok,
              "quant_state JSON: %.*s", (int)st->nbytes, (const char *)st->data);
        json_decref(s);
    }
    const char *plain[] = {"model.tok_embeddings.weight", "model.norm.weight", "model.layers.0.ffn_norm.weight",
                           "model.layers.1.attention_norm.weight", q->head ? NULL : "output.weight"};
    for (int i = 0; i < 5 && plain[i]; i++) {
        const ct_st_tensor *t = ct_st_find(f, plain[i]);
        CHECK(t && t->dtype != CT_ST_U8 && t->ndim >= 1, "%s should stay unquantized", plain[i]);
    }
    if (q->head) {
        snprintf(name, sizeof name, "output.weight.quant_state.bitsandbytes__%s", tn);
        CHECK(ct_st_find(f, name) && ct_st_find(f, "output.weight")->dtype == CT_ST_U8, "head not quantized");
    }
    ct_st_close(f);
}

/* ------------------------------------------------------------ variants */

static void test_variants(void) {
    printf("random GQA model\n");
    const char *base = path_in("base");
    const struct {
        const char *out, *what, *dtype;
        qopts q;
        int n_quant;
    } cases[] = {
        {"q-nf4", "nf4, double quant, blocksize 64 (defaults)", "float32", {CT_QUANT_NF4, 0, false, false, -1, 0}, 10},
        {"q-fp4", "fp4, no double quant, blocksize 128", "float32", {CT_QUANT_FP4, 128, true, false, -1, 0}, 10},
        {"q-head", "nf4 with the head quantized", "float32", {CT_QUANT_NF4, 0, false, true, -1, 0}, 11},
        {"q-shard", "nf4 in shards of 6 kB", "float32", {CT_QUANT_NF4, 64, false, false, -1, 6000}, 10},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *out = path_in(cases[k].out);
        ct_merge_report r;
        CHECK_OK(quantize(base, out, &cases[k].q, &r));
        CHECK(r.n_quantized == cases[k].n_quant && r.n_merged == 0 && r.dtype == CT_F32 && r.bytes < r.src_bytes &&
                  r.bytes > 0,
              "%s: quantized %d merged %d bytes %llu of %llu", cases[k].what, r.n_quantized, r.n_merged,
              (unsigned long long)r.bytes, (unsigned long long)r.src_bytes);
        check_files(out, &cases[k].q, cases[k].dtype, "model.layers.1.feed_forward.w2.weight", 36, 50);
        check_files(out, &cases[k].q, cases[k].dtype, "model.layers.0.attention.wqkv.weight", 60, 36);
        double d = check_logits(out, base, &cases[k].q, cases[k].n_quant, k_ids, T, V);
        printf("  %s: %d weights, %llu -> %llu bytes, %d shard(s); logits = quantize-on-load; vs fp32 max |diff| "
               "%.3g\n", cases[k].what, r.n_quantized, (unsigned long long)r.src_bytes, (unsigned long long)r.bytes,
               r.n_shards, d);
        CHECK(d > 0 && d < 10, "%s: 4-bit logits moved by %g", cases[k].what, d);
        if (cases[k].q.shard) CHECK(r.n_shards > 1, "%d shards", r.n_shards);
    }
    /* bf16 output of the fp32 model = quantize-on-load of its bf16 conversion */
    const char *b16 = path_in("base-bf16"), *out = path_in("q-bf16");
    ct_merge_options conv = {.base_dir = base, .out_dir = b16, .dtype = CT_BF16};
    CHECK_OK(ct_merge(&conv, NULL));
    qopts q = {CT_QUANT_NF4, 0, false, false, CT_BF16, 0};
    ct_merge_report r;
    CHECK_OK(quantize(base, out, &q, &r));
    CHECK(r.dtype == CT_BF16, "bf16: dtype %d", (int)r.dtype);
    check_files(out, &q, "bfloat16", "model.layers.1.feed_forward.w2.weight", 36, 50);
    ct_st_file *f = NULL;
    CHECK_OK(ct_st_open(out, &f));
    const ct_st_tensor *e = f ? ct_st_find(f, "model.tok_embeddings.weight") : NULL;
    CHECK(e && e->dtype == CT_ST_BF16, "bf16 embeddings");
    ct_st_close(f);
    double d = check_logits(out, b16, &q, 10, k_ids, T, V);
    printf("  bf16 output: logits = quantize-on-load of the bf16 model; vs bf16 max |diff| %.3g\n", d);
    CHECK(ct_test_no_temp_left(g_work), "temp dir left");
}

static void test_stories(void) {
    char fx[CT_PATH_MAX];
    if (!ct_fixture("stories260k-internlm2", fx, sizeof fx)) return;
    printf("stories260k\n");
    const char *out = path_in("st-nf4");
    qopts q = {CT_QUANT_NF4, 0, false, false, -1, 0};
    ct_merge_report r;
    CHECK_OK(quantize(fx, out, &q, &r));
    CHECK(r.n_quantized == 25 && r.n_files == 2 && r.dtype == CT_F32, "stories: %d quantized, %d files",
          r.n_quantized, r.n_files);
    check_files(out, &q, "float32", "model.layers.4.feed_forward.w2.weight", 64, 172);
    static const int32_t ids[12] = {1, 403, 261, 280, 395, 261, 341, 412, 13, 25, 476, 2};
    double d = check_logits(out, fx, &q, 25, ids, 12, 512);
    printf("  %d weights, %llu -> %llu bytes; logits = quantize-on-load; vs fp32 max |diff| %.3g\n", r.n_quantized,
           (unsigned long long)r.src_bytes, (unsigned long long)r.bytes, d);
    static const char *const files[] = {"tokenizer.model", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        char p[CT_PATH_MAX];
        CHECK_OK(ct_path_join(p, sizeof p, out, files[i]));
        CHECK(ct_path_exists(p), "%s not copied", files[i]);
    }
}

/* ------------------------------------------------------------ refusals */

static void expect_refused(const char *model, const qopts *q, const char *what, const char *s1) {
    const char *out = path_in("never");
    int rc = quantize(model, out, q, NULL);
    CHECK(rc == CT_EINPUT && strstr(ct_last_error(), s1), "%s: rc %d %s", what, rc, ct_last_error());
    printf("  %s: %s\n", what, ct_last_error());
    CHECK(!ct_path_exists(out) && ct_test_no_temp_left(g_work), "%s: output left", what);
}

static void test_refusals(void) {
    printf("refusals\n");
    const char *base = path_in("base");
    qopts q = {CT_QUANT_NF4, 0, false, false, -1, 0};
    expect_refused(path_in("q-nf4"), &q, "already quantized", "already a quantized model");
    qopts bs = q;
    bs.blocksize = 100;
    expect_refused(base, &bs, "blocksize 100", "blocksize 100");
    bs.blocksize = 8192;
    expect_refused(base, &bs, "blocksize 8192", "blocksize 8192");
    qopts ty = q;
    ty.type = (ct_quant_type)7;
    expect_refused(base, &ty, "4-bit type 7", "4-bit type");
    /* a non-empty output directory is left as it was */
    const char *full = path_in("full");
    CHECK_OK(ct_mkdirs(full));
    CHECK_OK(ct_file_write_atomic(path_in("full/keep.txt"), "x", 1));
    int rc = quantize(base, full, &q, NULL);
    CHECK(rc == CT_EINPUT && strstr(ct_last_error(), "not empty"), "non-empty out: rc %d %s", rc, ct_last_error());
    CHECK(ct_path_exists(path_in("full/keep.txt")) && !ct_path_exists(path_in("full/model.safetensors")),
          "non-empty out touched");
    /* an empty existing one is fine */
    const char *empty = path_in("empty");
    CHECK_OK(ct_mkdirs(empty));
    CHECK_OK(quantize(base, empty, &q, NULL));
    CHECK(ct_path_exists(path_in("empty/model.safetensors")), "quantize into an empty directory");
}

/* ------------------------------------------------------------ failures midway */

static void test_interrupted(void) {
    printf("failures midway\n");
    for (int dq = 0; dq < 2; dq++) {
        /* the first, one in the middle, the last tensor: 7 plain + 10 weights of 6 (4 without double quant) parts */
        int last = 7 + 10 * (dq ? 6 : 4);
        const int fail_at[] = {1, last / 2, last};
        for (int k = 0; k < 3; k++) {
            ct_test_fail_ctx f = {0, fail_at[k]};
            const char *out = path_in("interrupted");
            ct_merge_options o = {.base_dir = path_in("base"), .out_dir = out, .dtype = -1, .max_shard_bytes = 6000,
                                  .quantize = true, .no_double_quant = !dq, .progress = ct_test_fail_after,
                                  .progress_ctx = &f};
            int rc = ct_merge(&o, NULL);
            CHECK(rc == CT_ERUNTIME && strstr(ct_last_error(), "injected failure"), "fail at %d: rc %d %s",
                  fail_at[k], rc, ct_last_error());
            CHECK(!ct_path_exists(out) && ct_test_no_temp_left(g_work), "fail at %d: output or temp dir left",
                  fail_at[k]);
        }
    }
    printf("  %s\n", ct_last_error());
}

int main(void) {
    snprintf(g_work, sizeof g_work, "/tmp/ct_test_quantize.XXXXXX");
    if (!mkdtemp(g_work)) return 1;
    CHECK_OK(ct_tape_init(&g_tape, ct_cpu_backend(), (size_t)4 << 20));
    make_base(path_in("base"));
    test_variants();
    test_stories();
    test_refusals();
    test_interrupted();
    char dir[CT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", g_work);
    ct_remove_tree(dir);
    ct_tape_free(&g_tape);
    for (int i = 0; i < g_n_paths; i++) free(g_paths[i]);
    return ct_test_finish();
}
