/* ctuner make-model, checked by reading what the binary writes: the tensor set
 * equals the real stories260k checkpoint's names and shapes; values follow
 * InternLM2's init (N(0, initializer_range²), norms 1, biases 0, pad row 0)
 * statistically; a bf16 model is exactly the rounding of the fp32 one; output
 * is independent of sharding and thread count, and differs across seeds.
 * --quantize writes the very files of make-model then `ctuner quantize` (nf4
 * with double quant in bf16, fp4 without it at blocksize 128 in fp32, one file
 * and several shards), which ct_model_load takes as pre-quantized, with the
 * logits of quantize-on-load of the full-precision model. */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/ct_inline.h"
#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/model.h"

static char g_dir[256];

static const char *path_in(const char *name) {
    static char buf[4][CT_PATH_MAX];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

/* Runs `ctuner make-model ARGS` (prefixed by ENV), returns its exit code. */
static int make_model(const char *env, const char *args) {
    char cmd[5 * CT_PATH_MAX];
    snprintf(cmd, sizeof cmd, "%s '%s' make-model %s > '%s/out.txt' 2>&1", env, CT_BINARY, args, g_dir);
    int st = system(cmd);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (rc != 0) {
        char *text = NULL;
        size_t n;
        if (ct_file_read_all(path_in("out.txt"), &text, &n) == CT_OK) fprintf(stderr, "make-model %s:\n%s", args, text);
        free(text);
    }
    return rc;
}

/* A GQA config with sizes that divide nothing nicely, with biases. */
static const char *k_gqa =
    "{\"architectures\": [\"InternLM2ForCausalLM\"], \"model_type\": \"internlm2\", \"hidden_size\": 48,\n"
    " \"intermediate_size\": 100, \"num_hidden_layers\": 3, \"num_attention_heads\": 6, \"num_key_value_heads\": 2,\n"
    " \"vocab_size\": 301, \"bias\": true, \"pad_token_id\": 5, \"initializer_range\": 0.05, \"rope_theta\": 1e6,\n"
    " \"torch_dtype\": \"bfloat16\"}\n";

static void expect_names_and_shapes(const ct_st_file *f, const ct_hf_config *c) {
    int64_t D = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, hd = D / c->num_attention_heads;
    int64_t qkv = (c->num_attention_heads + 2 * c->num_key_value_heads) * hd;
    size_t n = 0;
    struct {
        const char *name;
        int64_t r, c;
    } top[] = {{"model.tok_embeddings.weight", V, D}, {"model.norm.weight", D, 0}, {"output.weight", V, D}};
    for (int i = 0; i < 3; i++, n++) {
        const ct_st_tensor *t = ct_st_find(f, top[i].name);
        CHECK(t && t->shape[0] == top[i].r && (top[i].c ? t->ndim == 2 && t->shape[1] == top[i].c : t->ndim == 1),
              "%s", top[i].name);
    }
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        struct {
            const char *s;
            int64_t r, c;
            bool want;
        } parts[] = {{"attention.wqkv.weight", qkv, D, true}, {"attention.wo.weight", D, D, true},
                     {"feed_forward.w1.weight", I, D, true},  {"feed_forward.w3.weight", I, D, true},
                     {"feed_forward.w2.weight", D, I, true},  {"attention_norm.weight", D, 0, true},
                     {"ffn_norm.weight", D, 0, true},         {"attention.wqkv.bias", qkv, 0, c->bias},
                     {"attention.wo.bias", D, 0, c->bias}};
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
            if (!parts[k].want) continue;
            char name[128];
            snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, parts[k].s);
            const ct_st_tensor *t = ct_st_find(f, name);
            CHECK(t && t->shape[0] == parts[k].r &&
                      (parts[k].c ? t->ndim == 2 && t->shape[1] == parts[k].c : t->ndim == 1),
                  "%s shape", name);
            n++;
        }
    }
    CHECK(ct_st_count(f) == n, "%zu tensors, want %zu", ct_st_count(f), n);
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static void check_values(const ct_st_file *f, const ct_hf_config *c) {
    double sum = 0, sum2 = 0, pair = 0, inside = 0;
    int64_t n = 0, npairs = 0;
    for (size_t i = 0; i < ct_st_count(f); i++) {
        const ct_st_tensor *t = ct_st_at(f, i);
        float *x = malloc((size_t)t->numel * sizeof *x);
        CHECK_OK(ct_st_read_f32(t, x));
        if (ends_with(t->name, "norm.weight") || ends_with(t->name, ".bias")) {
            float want = ends_with(t->name, ".bias") ? 0.0f : 1.0f;
            bool all = true;
            for (int64_t k = 0; k < t->numel; k++) all &= x[k] == want;
            CHECK(all, "%s is not all %g", t->name, want);
            free(x);
            continue;
        }
        int64_t cols = t->shape[1];
        double ts = 0, ts2 = 0;
        int64_t tn = 0;
        for (int64_t k = 0; k < t->numel; k++) {
            bool pad = strcmp(t->name, "model.tok_embeddings.weight") == 0 && k / cols == c->pad_token_id;
            if (pad) {
                CHECK(x[k] == 0.0f, "embedding pad row not zero at %lld", (long long)k);
                continue;
            }
            ts += x[k];
            ts2 += (double)x[k] * x[k];
            tn++;
            inside += fabs(x[k]) < c->initializer_range;
            if (k % 2 == 1) { /* the Box-Muller pair (cos, sin) must be uncorrelated */
                pair += (double)x[k - 1] * x[k];
                npairs++;
            }
        }
        double tstd = sqrt(ts2 / (double)tn);
        CHECK(fabs(tstd / c->initializer_range - 1) < 0.1, "%s: std %g vs %g", t->name, tstd, c->initializer_range);
        sum += ts;
        sum2 += ts2;
        n += tn;
        free(x);
    }
    double s = c->initializer_range, mean = sum / (double)n, sd = sqrt(sum2 / (double)n);
    CHECK(fabs(mean) < 4 * s / sqrt((double)n), "mean %g over %lld values", mean, (long long)n);
    CHECK(fabs(sd / s - 1) < 0.02, "std %g, want %g", sd, s);
    /* P(|z| < 1) = erf(1/sqrt 2) = 0.682689 for a normal */
    double frac = inside / (double)n;
    CHECK(fabs(frac - 0.682689) < 0.01, "fraction within 1 std %g", frac);
    CHECK(fabs(pair / (double)npairs) < 4 * s * s / sqrt((double)npairs), "pair correlation %g", pair / (double)npairs);
}

static bool same_bytes(const ct_st_file *a, const ct_st_file *b) {
    if (ct_st_count(a) != ct_st_count(b)) return false;
    for (size_t i = 0; i < ct_st_count(a); i++) {
        const ct_st_tensor *x = ct_st_at(a, i), *y = ct_st_find(b, x->name);
        if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes) != 0) return false;
    }
    return true;
}

static void test_gqa(void) {
    CHECK_OK(ct_file_write_atomic(path_in("gqa.json"), k_gqa, strlen(k_gqa)));
    ct_hf_config cfg;
    CHECK_OK(ct_hf_config_load(path_in("gqa.json"), &cfg));
    char args[3 * CT_PATH_MAX];
    char cfgp[CT_PATH_MAX];
    snprintf(cfgp, sizeof cfgp, "%s", path_in("gqa.json"));
    snprintf(args, sizeof args, "--config '%s' --out '%s' --seed 11 --dtype fp32", cfgp, path_in("a"));
    CHECK(make_model("", args) == 0, "fp32");
    snprintf(args, sizeof args, "--config '%s' --out '%s' --seed 11", cfgp, path_in("b")); /* config says bf16 */
    CHECK(make_model("", args) == 0, "bf16");
    snprintf(args, sizeof args, "--config '%s' --out '%s' --seed 11 --dtype fp32 --max-shard-size 20KB", cfgp,
             path_in("c"));
    CHECK(make_model("OMP_NUM_THREADS=1", args) == 0, "sharded");
    snprintf(args, sizeof args, "--config '%s' --out '%s' --seed 12 --dtype fp32", cfgp, path_in("d"));
    CHECK(make_model("", args) == 0, "seed 12");
    ct_st_file *a = NULL, *b = NULL, *cs = NULL, *d = NULL;
    CHECK_OK(ct_st_open(path_in("a"), &a));
    CHECK_OK(ct_st_open(path_in("b"), &b));
    CHECK_OK(ct_st_open(path_in("c"), &cs));
    CHECK_OK(ct_st_open(path_in("d"), &d));
    if (a && b && cs && d) {
        expect_names_and_shapes(a, &cfg);
        check_values(a, &cfg);
        CHECK(ct_st_metadata(a, "format") && strcmp(ct_st_metadata(a, "format"), "pt") == 0, "format pt");
        /* bf16 = round-to-nearest-even of the fp32 model, element by element */
        bool exact = ct_st_count(a) == ct_st_count(b);
        for (size_t i = 0; exact && i < ct_st_count(a); i++) {
            const ct_st_tensor *x = ct_st_at(a, i), *y = ct_st_find(b, x->name);
            exact = y && y->dtype == CT_ST_BF16 && y->numel == x->numel;
            for (int64_t k = 0; exact && k < x->numel; k++) {
                float v;
                uint16_t h;
                memcpy(&v, (const char *)x->data + 4 * k, 4);
                memcpy(&h, (const char *)y->data + 2 * k, 2);
                exact = h == ct_f32_to_bf16(v);
            }
        }
        CHECK(exact, "bf16 model is not the rounding of the fp32 one");
        /* sharding (and one thread instead of two) change nothing */
        CHECK(ct_st_shard_count(cs) > 2, "%d shards", ct_st_shard_count(cs));
        CHECK(ct_path_exists(path_in("c/model.safetensors.index.json")), "index");
        CHECK(same_bytes(a, cs), "sharded model differs");
        CHECK(!same_bytes(a, d), "seed 12 gives the same model as seed 11");
        /* distinct tensors get distinct streams */
        const ct_st_tensor *w1 = ct_st_find(a, "model.layers.0.feed_forward.w1.weight"),
                           *w3 = ct_st_find(a, "model.layers.0.feed_forward.w3.weight");
        CHECK(w1 && w3 && memcmp(w1->data, w3->data, w1->nbytes) != 0, "w1 == w3");
    }
    ct_st_close(a);
    ct_st_close(b);
    ct_st_close(cs);
    ct_st_close(d);
    /* config.json: the input with torch_dtype set; generation_config.json: the ids */
    ct_hf_config ca, cb;
    CHECK_OK(ct_hf_config_load(path_in("a"), &ca));
    CHECK_OK(ct_hf_config_load(path_in("b/config.json"), &cb));
    CHECK(strcmp(ca.torch_dtype, "float32") == 0 && strcmp(cb.torch_dtype, "bfloat16") == 0, "torch_dtype");
    CHECK(ca.hidden_size == 48 && ca.num_key_value_heads == 2 && ca.bias && ca.pad_token_id == 5 &&
              ca.rope_theta == 1e6 && ca.initializer_range == 0.05,
          "config fields kept");
    json_t *g = ct_json_load(path_in("a/generation_config.json"), 0);
    CHECK(g && json_integer_value(json_object_get(g, "pad_token_id")) == 5 &&
              json_integer_value(json_object_get(g, "eos_token_id")) == 2,
          "generation_config");
    json_decref(g);
    ct_hf_config_free(&ca);
    ct_hf_config_free(&cb);
    ct_hf_config_free(&cfg);
}

/* The layout matches a real converted checkpoint: same names, shapes, dtype. */
static bool test_stories(void) {
    char cfgp[CT_PATH_MAX], dir[CT_PATH_MAX];
    if (!ct_fixture("stories260k-internlm2/config.json", cfgp, sizeof cfgp) ||
        !ct_fixture("stories260k-internlm2", dir, sizeof dir))
        return false;
    char args[3 * CT_PATH_MAX];
    snprintf(args, sizeof args, "--config '%s' --out '%s' --tokenizer '%s'", cfgp, path_in("s"), dir);
    CHECK(make_model("", args) == 0, "stories");
    ct_st_file *mine = NULL, *real = NULL;
    CHECK_OK(ct_st_open(path_in("s"), &mine));
    CHECK_OK(ct_st_open(dir, &real));
    if (mine && real) {
        CHECK(ct_st_count(mine) == ct_st_count(real), "%zu vs %zu tensors", ct_st_count(mine), ct_st_count(real));
        for (size_t i = 0; i < ct_st_count(real); i++) {
            const ct_st_tensor *r = ct_st_at(real, i), *m = ct_st_find(mine, r->name);
            bool same = m && m->dtype == r->dtype && m->ndim == r->ndim;
            for (int k = 0; same && k < r->ndim; k++) same = m->shape[k] == r->shape[k];
            CHECK(same, "%s differs from the real checkpoint", r->name);
        }
        /* the same file order too (both sorted the Rust crate's way) */
        for (size_t i = 0; i < ct_st_count(real) && i < ct_st_count(mine); i++)
            CHECK(strcmp(ct_st_at(real, i)->name, ct_st_at(mine, i)->name) == 0, "order at %zu", i);
    }
    ct_st_close(mine);
    ct_st_close(real);
    /* tokenizer files are byte copies */
    const char *files[] = {"tokenizer.model", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        char src[CT_PATH_MAX], *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        CHECK_OK(ct_path_join(src, sizeof src, dir, files[i]));
        char dst[CT_PATH_MAX];
        snprintf(dst, sizeof dst, "s/%s", files[i]);
        CHECK_OK(ct_file_read_all(src, &x, &nx));
        CHECK_OK(ct_file_read_all(path_in(dst), &y, &ny));
        CHECK(x && y && nx == ny && memcmp(x, y, nx) == 0, "%s not copied", files[i]);
        free(x);
        free(y);
    }
    return true;
}

/* Runs `ctuner ARGS` quietly; its exit code. */
static int ctuner(const char *args) {
    char cmd[8 * CT_PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' %s > '%s/out.txt' 2>&1", CT_BINARY, args, g_dir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Every file of dir a has a byte-identical twin in dir b and the reverse;
 * returns the number of files compared (0 on any difference). */
static int same_dirs(const char *a, const char *b) {
    int n = 0, na = 0, nb = 0;
    const char *dirs[2] = {a, b};
    int *counts[2] = {&na, &nb};
    for (int k = 0; k < 2; k++) {
        DIR *d = opendir(dirs[k]);
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (e->d_name[0] != '.') (*counts[k])++;
        if (d) closedir(d);
    }
    DIR *d = opendir(a);
    struct dirent *e;
    bool same = d && na == nb && na > 0;
    while (same && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char pa[CT_PATH_MAX], pb[CT_PATH_MAX], *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        same = ct_path_join(pa, sizeof pa, a, e->d_name) == CT_OK && ct_path_join(pb, sizeof pb, b, e->d_name) == CT_OK &&
               ct_file_read_all(pa, &x, &nx) == CT_OK && ct_file_read_all(pb, &y, &ny) == CT_OK && nx == ny &&
               memcmp(x, y, nx) == 0;
        if (!same) fprintf(stderr, "  %s differs between %s and %s\n", e->d_name, a, b);
        free(x);
        free(y);
        n++;
    }
    if (d) closedir(d);
    if (na != nb) fprintf(stderr, "  %s has %d files, %s %d\n", a, na, b, nb);
    return same ? n : 0;
}

/* logits [n, vocab] of a model dir; o NULL: as stored. */
static float *logits(const char *dir, const ct_model_options *o, const int32_t *ids, int64_t n, int64_t vocab,
                     ct_model_memory *mem) {
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(dir, o, &m));
    ct_test_need(m);
    if (mem) ct_model_get_memory(m, mem);
    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, ct_cpu_backend(), (size_t)4 << 20));
    float *lg = ct_test_need(malloc((size_t)(n * vocab) * sizeof(float)));
    CHECK_OK(ct_model_logits(m, &tape, ids, n, 0, lg));
    ct_tape_free(&tape);
    ct_model_free(m);
    return lg;
}

/* make-model --quantize = make-model then ctuner quantize, file for file. */
static void test_quantized(void) {
    static const char *cfg_text =
        "{\"architectures\": [\"InternLM2ForCausalLM\"], \"model_type\": \"internlm2\", \"hidden_size\": 48,\n"
        " \"intermediate_size\": 100, \"num_hidden_layers\": 2, \"num_attention_heads\": 6, \"num_key_value_heads\": 2,\n"
        " \"vocab_size\": 301, \"bias\": false, \"initializer_range\": 0.3, \"rope_theta\": 1e6,\n"
        " \"torch_dtype\": \"bfloat16\"}\n";
    char cfgp[CT_PATH_MAX];
    snprintf(cfgp, sizeof cfgp, "%s", path_in("q.json"));
    CHECK_OK(ct_file_write_atomic(cfgp, cfg_text, strlen(cfg_text)));
    const struct {
        const char *name, *make_flags, *quant_flags, *shard;
        ct_model_options load;
    } cases[] = {
        {"nf4", "--quantize nf4", "", "5GB", {.quant = CT_MODEL_QUANT_NF4, .double_quant = true}},
        {"fp4-128", "--quantize fp4 --blocksize 128 --no-double-quant --dtype fp32",
         "--quant-type fp4 --blocksize 128 --no-double-quant", "5GB", {.quant = CT_MODEL_QUANT_FP4, .blocksize = 128}},
        {"nf4-shards", "--quantize nf4", "", "20KB", {.quant = CT_MODEL_QUANT_NF4, .double_quant = true}},
    };
    static const int32_t ids[7] = {1, 17, 300, 4, 4, 99, 2};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char q[CT_PATH_MAX], f[CT_PATH_MAX], fq[CT_PATH_MAX], args[6 * CT_PATH_MAX];
        snprintf(q, sizeof q, "%s/q-%s", g_dir, cases[k].name);
        snprintf(f, sizeof f, "%s/f-%s", g_dir, cases[k].name);
        snprintf(fq, sizeof fq, "%s/fq-%s", g_dir, cases[k].name);
        bool fp32 = strstr(cases[k].make_flags, "fp32") != NULL;
        snprintf(args, sizeof args, "--config '%s' --out '%s' --seed 21 --max-shard-size %s %s", cfgp, q,
                 cases[k].shard, cases[k].make_flags);
        CHECK(make_model("", args) == 0, "%s: make-model --quantize", cases[k].name);
        snprintf(args, sizeof args, "--config '%s' --out '%s' --seed 21 --max-shard-size %s%s", cfgp, f,
                 cases[k].shard, fp32 ? " --dtype fp32" : "");
        CHECK(make_model("", args) == 0, "%s: make-model", cases[k].name);
        snprintf(args, sizeof args, "quantize '%s' --out '%s' --max-shard-size %s %s", f, fq, cases[k].shard,
                 cases[k].quant_flags);
        CHECK(ctuner(args) == 0, "%s: ctuner quantize", cases[k].name);
        int n = same_dirs(q, fq);
        bool sharded = strcmp(cases[k].shard, "5GB") != 0;
        /* config, generation config, and the weights: one file or shards + index */
        CHECK(sharded ? n > 4 : n == 3, "%s: %d identical files", cases[k].name, n);
        /* it loads as a pre-quantized checkpoint: 2 layers x 5 linears, and its
         * logits are those of quantize-on-load of the full-precision model */
        ct_model_memory mem;
        float *lq = logits(q, NULL, ids, 7, 301, &mem), *ll = logits(f, &cases[k].load, ids, 7, 301, NULL);
        CHECK(mem.prequantized && mem.n_quantized == 10, "%s: prequantized %d, %d weights", cases[k].name,
              (int)mem.prequantized, mem.n_quantized);
        CHECK(memcmp(lq, ll, 7 * 301 * sizeof(float)) == 0, "%s: logits differ from quantize-on-load", cases[k].name);
        free(lq);
        free(ll);
    }
    /* refused before anything is written */
    char args[3 * CT_PATH_MAX];
    const char *bad[] = {"--quantize int4", "--quantize nf4 --blocksize 48", "--quantize nf4 --blocksize 8192",
                         "--blocksize 64", "--no-double-quant"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        snprintf(args, sizeof args, "make-model --config '%s' --out '%s' %s", cfgp, path_in("bad"), bad[k]);
        CHECK(ctuner(args) == 2 && !ct_path_exists(path_in("bad")), "'%s' not refused", bad[k]);
    }
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_test_mm_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_gqa();
    test_quantized();
    bool had_fixture = test_stories();
    ct_remove_tree(g_dir);
    int rc = ct_test_finish();
    return rc == 0 && !had_fixture ? CT_TEST_SKIP : rc;
}
