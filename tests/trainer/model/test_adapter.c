/* LoRA slots (trainer/model/lora.c) and PEFT adapter directories (trainer/model/adapter.c)
 * on a random GQA InternLM2 made by `ctuner make-model` (hidden 36, 6 heads
 * over 2 KV heads, intermediate 50, vocab 41, 2 layers):
 *  - slots: PEFT key order, shapes, A's init bounds and seeding, B = 0, the
 *    one-block layout, the memory plan;
 *  - with B = 0 the logits equal the base model's bit for bit;
 *  - a random adapter (dropout 0.1, which must not act in eval) gives the
 *    logits of the base model whose weights were replaced by W + s·B·A
 *    computed here in double (plain and rsLoRA scale);
 *  - write -> read round trip: bit-identical A/B, config fields, the files'
 *    keys, dtypes, metadata and PEFT's config keys; overwriting an adapter
 *    directory, refusing any other non-empty one, no temp directory left;
 *  - a hand-written adapter_config.json in PEFT's exact style with bf16
 *    weights under ".default" keys loads; regex / "all-linear" targets;
 *  - bad adapters -> CT_EINPUT naming the key or field: missing key, wrong
 *    shape, r mismatch (file and slots), unknown target name, key of an
 *    untargeted module, bad JSON, non-LoRA peft_type, bias, layer-dependent
 *    regex, and adapter_model.bin (a pickle) refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "autograd/ct_inline.h"
#include "testutil.h"
#include "trainer/model/adapter.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/model.h"
#include "trainer/io/safetensors.h"

static ct_tape g_tape;
static char g_work[64];
static char g_base[CT_PATH_MAX]; /* the base model directory */
static const int32_t k_ids[9] = {1, 7, 40, 3, 22, 22, 9, 0, 31};
enum { T = 9, V = 41, R = 4 };

static void path_in(char *buf, const char *name) { CHECK_OK(ct_path_join(buf, CT_PATH_MAX, g_work, name)); }

static ct_model *load_base(void) {
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(g_base, NULL, &m));
    return ct_test_need(m);
}

static float *logits(const ct_model *m) {
    float *lg = ct_test_need(malloc((size_t)T * V * sizeof(float)));
    CHECK_OK(ct_model_logits(m, &g_tape, k_ids, T, 0, lg));
    return lg;
}

static ct_lora_config cfg_all(bool rs) {
    return (ct_lora_config){.r = R, .alpha = 8, .dropout = 0.1f, .targets = CT_LORA_ALL_BLOCK | CT_LORA_OUTPUT,
                            .use_rslora = rs, .seed = 7};
}

/* Random A and B (B no longer 0). */
static void randomize(ct_lora *l, uint64_t seed) {
    ct_test_rng rng = {seed};
    ct_test_fill(&rng, ct_lora_values(l), ct_lora_numel(l), 0.3);
}

/* ------------------------------------------------------------ slots */

static void test_slots(void) {
    printf("LoRA slots\n");
    ct_model *m = load_base();
    ct_lora *l = NULL;
    ct_lora_config c = cfg_all(false);
    CHECK_OK(ct_model_add_lora(m, &c, true, &l));
    if (!l) return;
    CHECK(ct_lora_count(l) == 2 * (2 * 5 + 1), "%zu params", ct_lora_count(l));
    static const char *const order[] = {"attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w3",
                                        "feed_forward.w2"};
    int64_t total = 0;
    for (size_t i = 0; i < ct_lora_count(l); i++) {
        const ct_lora_param *p = ct_lora_at(l, i);
        char want[128];
        if (i < 20)
            snprintf(want, sizeof want, "base_model.model.model.layers.%zu.%s.lora_%c.weight", i / 10,
                     order[(i % 10) / 2], i % 2 ? 'B' : 'A');
        else snprintf(want, sizeof want, "base_model.model.output.lora_%c.weight", i % 2 ? 'B' : 'A');
        CHECK(!strcmp(p->name, want), "param %zu is %s, want %s", i, p->name, want);
        CHECK((const float *)p->t->data == ct_lora_values(l) + total, "param %zu not at its offset", i);
        CHECK(p->t->grad && (const float *)p->t->grad->data == ct_lora_grads(l) + total && p->t->requires_grad,
              "param %zu grad not carved from the grad block", i);
        total += ct_numel(p->t);
        const float *v = p->t->data;
        if (p->is_b) {
            for (int64_t k = 0; k < ct_numel(p->t); k++) CHECK(v[k] == 0.0f, "%s not zero", p->name);
            continue;
        }
        int64_t in = p->t->shape[1];
        double bound = 1.0 / sqrt((double)in), mx = 0, mean = 0;
        for (int64_t k = 0; k < ct_numel(p->t); k++) mx = fmax(mx, fabs(v[k])), mean += v[k];
        mean /= (double)ct_numel(p->t);
        CHECK(p->t->shape[0] == R && mx <= bound && mx > 0.7 * bound && fabs(mean) < 0.3 * bound,
              "%s: shape [%lld, %lld], max |A| %.4g, mean %.3g, bound %.4g", p->name, (long long)p->t->shape[0],
              (long long)in, mx, mean, bound);
    }
    CHECK(total == ct_lora_numel(l), "numel %lld vs %lld", (long long)total, (long long)ct_lora_numel(l));
    /* wqkv and wo of layer 0 both [4, 36]: different seeds per linear */
    CHECK(memcmp(ct_lora_at(l, 0)->t->data, ct_lora_at(l, 2)->t->data, 4 * 36 * sizeof(float)) != 0,
          "two linears got the same A");
    const ct_decoder_model *dm = ct_model_decoder(m);
    CHECK(dm->layers[1].w3.a == ct_lora_at(l, 16)->t && dm->layers[1].w3.scale == 2.0f &&
              dm->layers[1].w3.dropout == 0.1f && dm->output.b == ct_lora_at(l, 21)->t,
          "linears not attached");
    char plan[512];
    size_t bytes = ct_lora_plan(l, plan, sizeof plan);
    printf("%s", plan);
    char want[64];
    snprintf(want, sizeof want, "LoRA params: %lld floats", (long long)total);
    CHECK(strstr(plan, want) && bytes == (size_t)total * 8, "plan: %s (%zu bytes)", plan, bytes);
    /* same seed, same values; another model's fresh slots agree */
    float *first = ct_test_need(malloc((size_t)total * sizeof(float)));
    memcpy(first, ct_lora_values(l), (size_t)total * sizeof(float));
    randomize(l, 1);
    CHECK_OK(ct_lora_reset(l));
    CHECK(memcmp(first, ct_lora_values(l), (size_t)total * sizeof(float)) == 0, "reset is not the same init");
    ct_model_drop_lora(m);
    CHECK(dm->layers[1].w3.a == NULL && dm->output.a == NULL, "drop left LoRA attached");
    ct_lora_config bad = c;
    bad.r = 0;
    CHECK(ct_model_add_lora(m, &bad, false, NULL) == CT_EINPUT, "r 0 accepted");
    unsigned t = 0;
    CHECK_OK(ct_lora_parse_targets("wqkv, w2,output", &t));
    CHECK(t == (CT_LORA_WQKV | CT_LORA_W2 | CT_LORA_OUTPUT), "targets %x", t);
    CHECK(ct_lora_parse_targets("wqkv,q_proj", &t) == CT_EINPUT && strstr(ct_last_error(), "q_proj"), "%s",
          ct_last_error());
    free(first);
    ct_model_free(m);
}

/* ------------------------------------------------------------ numerics */

/* The base model with W + s·B·A for every LoRA linear of `l`, written as f32. */
static void write_merged(const char *dir, const ct_lora *l, double scale) {
    ct_st_file *st = NULL;
    CHECK_OK(ct_st_open(g_base, &st));
    ct_remove_tree(dir);
    CHECK_OK(ct_mkdirs(dir));
    char from[CT_PATH_MAX], to[CT_PATH_MAX];
    CHECK_OK(ct_path_join(from, sizeof from, g_base, "config.json"));
    CHECK_OK(ct_path_join(to, sizeof to, dir, "config.json"));
    CHECK_OK(ct_file_copy(from, to));
    ct_st_writer *w = NULL;
    CHECK_OK(ct_st_writer_new(&w));
    size_t n = ct_st_count(st);
    float **keep = ct_test_need(calloc(n, sizeof *keep));
    for (size_t i = 0; i < n; i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        float *f = keep[i] = ct_test_need(malloc((size_t)t->numel * sizeof(float)));
        CHECK_OK(ct_st_read_f32(t, f));
        char an[160], bn[160];
        size_t len = strlen(t->name) - strlen(".weight");
        snprintf(an, sizeof an, "base_model.model.%.*s.lora_A.weight", (int)len, t->name);
        snprintf(bn, sizeof bn, "base_model.model.%.*s.lora_B.weight", (int)len, t->name);
        const ct_lora_param *pa = ct_lora_find(l, an), *pb = ct_lora_find(l, bn);
        if (pa && pb) {
            int64_t out = t->shape[0], in = t->shape[1], r = pa->t->shape[0];
            const float *A = pa->t->data, *B = pb->t->data; /* [r, in], [out, r] */
            for (int64_t o = 0; o < out; o++)
                for (int64_t i2 = 0; i2 < in; i2++) {
                    double s = 0;
                    for (int64_t k = 0; k < r; k++) s += (double)B[o * r + k] * (double)A[k * in + i2];
                    f[o * in + i2] = (float)((double)f[o * in + i2] + scale * s);
                }
        }
        CHECK_OK(ct_st_writer_add(w, t->name, CT_ST_F32, t->ndim, t->shape, f));
    }
    CHECK_OK(ct_st_writer_metadata(w, "format", "pt"));
    CHECK_OK(ct_path_join(to, sizeof to, dir, "model.safetensors"));
    CHECK_OK(ct_st_writer_save(w, to, NULL, NULL));
    ct_st_writer_free(w);
    for (size_t i = 0; i < n; i++) free(keep[i]);
    free(keep);
    ct_st_close(st);
}

static void test_numerics(void) {
    printf("adapter numerics\n");
    ct_model *base = load_base();
    float *lb = logits(base);
    for (int rs = 0; rs < 2; rs++) {
        ct_model *m = load_base();
        ct_lora *l = NULL;
        ct_lora_config c = cfg_all(rs);
        CHECK_OK(ct_model_add_lora(m, &c, false, &l));
        if (!l) break;
        if (!rs) { /* B = 0: the adapter changes nothing, bit for bit */
            float *l0 = logits(m);
            CHECK(memcmp(l0, lb, (size_t)T * V * sizeof(float)) == 0, "B = 0 changed the logits");
            free(l0);
        }
        randomize(l, 100 + (uint64_t)rs);
        double scale = rs ? 8.0 / sqrt(4.0) : 8.0 / 4.0;
        CHECK(ct_model_decoder(m)->layers[0].wo.scale == (float)scale && ct_lora_scale(&c) == (float)scale,
              "scale %g, want %g", (double)ct_model_decoder(m)->layers[0].wo.scale, scale);
        char dir[CT_PATH_MAX];
        path_in(dir, rs ? "merged-rs" : "merged");
        write_merged(dir, l, scale);
        ct_model *merged = NULL;
        CHECK_OK(ct_model_load(dir, NULL, &merged));
        float *la = logits(m), *lm = merged ? logits(merged) : NULL;
        if (lm) {
            double worst = 0, diff = 0;
            for (int i = 0; i < T * V; i++)
                worst = fmax(worst, fabs((double)la[i] - lm[i])), diff = fmax(diff, fabs((double)la[i] - lb[i]));
            printf("  %s scale %g: adapter vs merged logits max |diff| %.3g (adapter moved them by up to %.3g)\n",
                   rs ? "rsLoRA" : "LoRA", scale, worst, diff);
            ct_check_close_f("adapter vs hand-merged weights", la, lm, T * V, 5e-5, 5e-5);
            CHECK(diff > 0.1, "the random adapter barely changed the logits (%.3g)", diff);
        }
        free(la), free(lm);
        ct_model_free(merged);
        ct_model_free(m);
    }
    free(lb);
    ct_model_free(base);
}

/* ------------------------------------------------------------ round trip */

static void test_round_trip(void) {
    printf("write -> read\n");
    ct_model *m = load_base();
    ct_lora *l = NULL;
    ct_lora_config c = cfg_all(true);
    c.alpha = 16, c.dropout = 0.05f, c.targets = CT_LORA_WQKV | CT_LORA_W2 | CT_LORA_OUTPUT;
    CHECK_OK(ct_model_add_lora(m, &c, true, &l));
    randomize(l, 5);
    char dir[CT_PATH_MAX], file[CT_PATH_MAX];
    path_in(dir, "adapter");
    CHECK_OK(ct_adapter_save(dir, l, "internlm/internlm2-chat-7b"));
    /* the config as PEFT writes it */
    CHECK_OK(ct_path_join(file, sizeof file, dir, "adapter_config.json"));
    json_t *j = ct_json_load(file, 0);
    CHECK(j != NULL, "%s", ct_last_error());
    static const char *const keys[] = {"alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias",
                                       "fan_in_fan_out", "inference_mode", "init_lora_weights", "layers_pattern",
                                       "layers_to_transform", "lora_alpha", "lora_dropout", "modules_to_save",
                                       "peft_type", "r", "rank_pattern", "revision", "target_modules", "task_type",
                                       "use_dora", "use_rslora"};
    for (size_t i = 0; j && i < sizeof keys / sizeof keys[0]; i++)
        CHECK(json_object_get(j, keys[i]) != NULL, "adapter_config.json lacks \"%s\"", keys[i]);
    if (j) {
        CHECK(!strcmp(json_string_value(json_object_get(j, "peft_type")), "LORA") &&
                  !strcmp(json_string_value(json_object_get(j, "task_type")), "CAUSAL_LM") &&
                  !strcmp(json_string_value(json_object_get(j, "bias")), "none") &&
                  json_is_false(json_object_get(j, "fan_in_fan_out")) &&
                  json_is_true(json_object_get(j, "inference_mode")) &&
                  json_is_true(json_object_get(j, "use_rslora")) &&
                  json_integer_value(json_object_get(j, "r")) == R &&
                  json_is_integer(json_object_get(j, "lora_alpha")) &&
                  json_integer_value(json_object_get(j, "lora_alpha")) == 16 &&
                  json_array_size(json_object_get(j, "target_modules")) == 3,
              "adapter_config.json values");
        json_decref(j);
    }
    /* the weights: PEFT keys, F32, format pt */
    ct_st_file *st = NULL;
    CHECK_OK(ct_path_join(file, sizeof file, dir, "adapter_model.safetensors"));
    CHECK_OK(ct_st_open(file, &st));
    if (st) {
        CHECK(ct_st_count(st) == ct_lora_count(l), "%zu tensors", ct_st_count(st));
        const char *fmt = ct_st_metadata(st, "format");
        CHECK(fmt && !strcmp(fmt, "pt"), "metadata format %s", fmt ? fmt : "(none)");
        const ct_st_tensor *t = ct_st_find(st, "base_model.model.model.layers.1.feed_forward.w2.lora_B.weight");
        CHECK(t && t->dtype == CT_ST_F32 && t->shape[0] == 36 && t->shape[1] == R, "w2 lora_B entry");
        CHECK(ct_st_find(st, "base_model.model.output.lora_A.weight") != NULL, "no head key");
        ct_st_close(st);
    }
    /* read back: config fields and bit-identical values */
    ct_adapter_config ac;
    CHECK_OK(ct_adapter_read_config(dir, 2, &ac));
    CHECK(ac.lora.r == R && ac.lora.alpha == 16 && ac.lora.dropout == 0.05f && ac.lora.use_rslora &&
              ac.lora.targets == c.targets && !strcmp(ac.base_model, "internlm/internlm2-chat-7b"),
          "config read back: r %d alpha %g dropout %g rs %d targets %x base '%s'", ac.lora.r, ac.lora.alpha,
          (double)ac.lora.dropout, ac.lora.use_rslora, ac.lora.targets, ac.base_model);
    ct_model *m2 = load_base();
    ct_lora *l2 = NULL;
    CHECK_OK(ct_adapter_load(dir, m2, false, &l2));
    if (l2) {
        CHECK(ct_lora_numel(l2) == ct_lora_numel(l) &&
                  memcmp(ct_lora_values(l2), ct_lora_values(l), (size_t)ct_lora_numel(l) * sizeof(float)) == 0,
              "values differ after the round trip");
        CHECK(ct_model_decoder(m2)->layers[0].wqkv.scale == (float)(16.0 / 2.0), "rsLoRA scale after load");
        float *a = logits(m), *b = logits(m2);
        CHECK(memcmp(a, b, (size_t)T * V * sizeof(float)) == 0, "logits differ after the round trip");
        free(a), free(b);
    }
    /* overwrite an adapter directory; load_into existing slots */
    randomize(l, 6);
    CHECK_OK(ct_adapter_save(dir, l, NULL));
    if (l2) {
        CHECK_OK(ct_adapter_load_into(dir, l2));
        CHECK(memcmp(ct_lora_values(l2), ct_lora_values(l), (size_t)ct_lora_numel(l) * sizeof(float)) == 0,
              "overwritten adapter not read back");
    }
    CHECK_OK(ct_adapter_read_config(dir, 2, &ac));
    CHECK(ac.base_model[0] == '\0', "null base_model_name_or_path read as '%s'", ac.base_model);
    /* a non-empty directory that is not an adapter is refused and left alone */
    char other[CT_PATH_MAX], keepf[CT_PATH_MAX];
    path_in(other, "not-an-adapter");
    CHECK_OK(ct_mkdirs(other));
    CHECK_OK(ct_path_join(keepf, sizeof keepf, other, "notes.txt"));
    CHECK_OK(ct_file_write_atomic(keepf, "keep", 4));
    CHECK(ct_adapter_save(other, l, NULL) == CT_EINPUT && ct_path_exists(keepf), "non-adapter dir: %s",
          ct_last_error());
    CHECK(ct_test_no_temp_left(g_work), "a temporary directory was left behind");
    ct_model_free(m2);
    ct_model_free(m);
}

/* ------------------------------------------------------------ PEFT style */

static const char *k_peft_config =
    "{\n"
    "  \"alpha_pattern\": {},\n"
    "  \"auto_mapping\": null,\n"
    "  \"base_model_name_or_path\": \"internlm/internlm2-chat-1_8b\",\n"
    "  \"bias\": \"none\",\n"
    "  \"fan_in_fan_out\": false,\n"
    "  \"inference_mode\": true,\n"
    "  \"init_lora_weights\": true,\n"
    "  \"layer_replication\": null,\n"
    "  \"layers_pattern\": null,\n"
    "  \"layers_to_transform\": null,\n"
    "  \"loftq_config\": {},\n"
    "  \"lora_alpha\": %s,\n"
    "  \"lora_dropout\": 0.1,\n"
    "  \"megatron_config\": null,\n"
    "  \"megatron_core\": \"megatron.core\",\n"
    "  \"modules_to_save\": null,\n"
    "  \"peft_type\": \"%s\",\n"
    "  \"r\": %d,\n"
    "  \"rank_pattern\": {},\n"
    "  \"revision\": null,\n"
    "  \"target_modules\": %s,\n"
    "  \"task_type\": \"CAUSAL_LM\",\n"
    "  \"use_dora\": false,\n"
    "  \"use_rslora\": false%s\n"
    "}\n";

typedef struct {
    const char *alpha, *peft_type, *targets, *extra; /* config pieces (NULL: defaults) */
    int r;
    const char *skip;      /* leave this key out of the weights */
    const char *transpose; /* store this key with its dims swapped */
    bool with_default;     /* keys as ".lora_A.default.weight" */
    bool bf16;
    unsigned only;         /* write only keys of these targets (0: all of l's) */
    const char *raw_config; /* the config text itself */
} hand;

/* An adapter directory written by hand from the slots of l. */
static void write_hand(const char *dir, const ct_lora *l, const hand *h) {
    ct_remove_tree(dir);
    CHECK_OK(ct_mkdirs(dir));
    char path[CT_PATH_MAX], text[4096];
    snprintf(text, sizeof text, k_peft_config, h->alpha ? h->alpha : "16", h->peft_type ? h->peft_type : "LORA",
             h->r ? h->r : R, h->targets ? h->targets : "[\n    \"w2\",\n    \"wqkv\",\n    \"w1\",\n    \"wo\",\n    \"w3\"\n  ]",
             h->extra ? h->extra : "");
    const char *cfg = h->raw_config ? h->raw_config : text;
    CHECK_OK(ct_path_join(path, sizeof path, dir, "adapter_config.json"));
    CHECK_OK(ct_file_write_atomic(path, cfg, strlen(cfg)));
    ct_st_writer *w = NULL;
    CHECK_OK(ct_st_writer_new(&w));
    uint16_t *half = ct_test_need(malloc((size_t)ct_lora_numel(l) * 2));
    ct_convert(half, CT_BF16, ct_lora_values(l), CT_F32, ct_lora_numel(l));
    for (size_t i = 0; i < ct_lora_count(l); i++) {
        const ct_lora_param *p = ct_lora_at(l, i);
        if ((h->skip && !strcmp(h->skip, p->name)) || (h->only && !(h->only & p->target))) continue;
        char key[160];
        snprintf(key, sizeof key, "%s", p->name);
        if (h->with_default) {
            char *dot = strstr(key, ".weight");
            snprintf(dot, sizeof key - (size_t)(dot - key), ".default.weight");
        }
        int64_t shape[2] = {p->t->shape[0], p->t->shape[1]};
        if (h->transpose && !strcmp(h->transpose, p->name)) shape[0] = p->t->shape[1], shape[1] = p->t->shape[0];
        size_t off = (size_t)((const float *)p->t->data - ct_lora_values(l));
        CHECK_OK(ct_st_writer_add(w, key, h->bf16 ? CT_ST_BF16 : CT_ST_F32, 2, shape,
                                  h->bf16 ? (const void *)(half + off) : p->t->data));
    }
    CHECK_OK(ct_path_join(path, sizeof path, dir, "adapter_model.safetensors"));
    CHECK_OK(ct_st_writer_save(w, path, NULL, NULL));
    ct_st_writer_free(w);
    free(half);
}

static void expect_bad(const char *dir, const char *what, const char *sub1, const char *sub2) {
    ct_model *m = load_base();
    int rc = ct_adapter_load(dir, m, false, NULL);
    CHECK(rc == CT_EINPUT && ct_model_lora(m) == NULL, "%s: rc %d, want CT_EINPUT and no LoRA left", what, rc);
    CHECK(strstr(ct_last_error(), sub1) && (!sub2 || strstr(ct_last_error(), sub2)), "%s: '%s' lacks '%s' %s", what,
          ct_last_error(), sub1, sub2 ? sub2 : "");
    printf("  %s: %s\n", what, ct_last_error());
    ct_model_free(m);
}

static void test_peft_style(void) {
    printf("PEFT-style adapters and bad adapters\n");
    ct_model *src = load_base();
    ct_lora *l = NULL;
    ct_lora_config c = {.r = R, .alpha = 16, .targets = CT_LORA_ALL_BLOCK, .seed = 3};
    CHECK_OK(ct_model_add_lora(src, &c, false, &l));
    randomize(l, 9);
    char dir[CT_PATH_MAX];
    path_in(dir, "peft");
    /* PEFT's own config text, ".default" keys, bf16 values */
    write_hand(dir, l, &(hand){.with_default = true, .bf16 = true});
    ct_model *m = load_base();
    ct_lora *got = NULL;
    CHECK_OK(ct_adapter_load(dir, m, false, &got));
    if (got) {
        int64_t n = ct_lora_numel(l);
        float *want = ct_test_need(malloc((size_t)n * sizeof(float)));
        uint16_t *h = ct_test_need(malloc((size_t)n * 2));
        ct_convert(h, CT_BF16, ct_lora_values(l), CT_F32, n);
        ct_convert(want, CT_F32, h, CT_BF16, n);
        CHECK(ct_lora_numel(got) == n && memcmp(want, ct_lora_values(got), (size_t)n * sizeof(float)) == 0,
              "bf16 .default adapter values");
        CHECK(ct_lora_get_config(got)->targets == CT_LORA_ALL_BLOCK && ct_model_decoder(m)->layers[1].w1.scale == 4.0f,
              "targets/scale of the PEFT-style adapter");
        free(want), free(h);
    }
    ct_model_free(m);
    /* regex and all-linear targets */
    const char *regexes[] = {"\"all-linear\"", "\"model\\\\.layers\\\\.[0-9]+\\\\.(attention|feed_forward)\\\\.(wqkv|wo|w1|w2|w3)\"",
                             "\".*(wqkv|wo|w[123])\"", "\".*\\\\.(w+qkv|wo+|w[1-3]+)\"" /* a few '+' */,
                             "\".*?(wqkv|wo|w[123]){1,2}\"" /* Python's lazy .*? */};
    for (int i = 0; i < 5; i++) {
        write_hand(dir, l, &(hand){.targets = regexes[i]});
        m = load_base();
        CHECK_OK(ct_adapter_load(dir, m, false, &got));
        CHECK(got && ct_lora_get_config(got)->targets == CT_LORA_ALL_BLOCK, "target_modules %s", regexes[i]);
        ct_model_free(m);
    }
    /* bad adapters */
    const char *w3b = "base_model.model.model.layers.1.feed_forward.w3.lora_B.weight";
    const char *qa = "base_model.model.model.layers.0.attention.wqkv.lora_A.weight";
    write_hand(dir, l, &(hand){.skip = w3b});
    expect_bad(dir, "missing key", w3b, "missing");
    write_hand(dir, l, &(hand){.transpose = qa});
    expect_bad(dir, "wrong shape", qa, "[36, 4]");
    write_hand(dir, l, &(hand){.r = 8});
    expect_bad(dir, "r mismatch", "rank 4 does not match r = 8", NULL);
    write_hand(dir, l, &(hand){.targets = "[\"q_proj\", \"v_proj\"]"});
    expect_bad(dir, "wrong target name", "q_proj", NULL);
    write_hand(dir, l, &(hand){.targets = "[\"wqkv\", \"wo\", \"w1\", \"w3\"]"});
    expect_bad(dir, "untargeted module", "feed_forward.w2", "not among the adapter's target_modules");
    write_hand(dir, l, &(hand){.targets = "[\"wqkv\", \"wo\", \"w1\", \"w3\", \"w2\", \"output\"]"});
    expect_bad(dir, "target without weights", "base_model.model.output.lora_A.weight", "missing");
    write_hand(dir, l, &(hand){.targets = "\"model\\\\.layers\\\\.0\\\\..*\""});
    expect_bad(dir, "layer-dependent regex", "only 1 of 2 layers", NULL);
    /* Hostile regexes (a stranger's adapter): refused at once, before glibc's
     * regcomp expands nested counts (this one took minutes and GBs there). */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    write_hand(dir, l, &(hand){.targets = "\"(a{0,255}b{0,255}){0,255}\""});
    expect_bad(dir, "nested counted repetition", "repeats too much", NULL);
    /* (fuzzing: regcomp's copies of 75 stacked '+' passed 2 GB; "{,}" is {0,32767}) */
    write_hand(dir, l, &(hand){.targets = "\".*\\\\.(w+++++++++++++++++++++++++++++++++++++++qkv|w[1-3])\""});
    expect_bad(dir, "stacked pluses", "stacks repetition operators (at character 8)", NULL);
    write_hand(dir, l, &(hand){.targets = "\"((((((((((w+)+)+)+)+)+)+)+)+)+)\""});
    expect_bad(dir, "nested pluses", "repeats too much", NULL);
    write_hand(dir, l, &(hand){.targets = "\"(w1){,}\""});
    expect_bad(dir, "{,}", "repeats too much", NULL);
    write_hand(dir, l, &(hand){.targets = "\"(.*)\\\\1\""});
    expect_bad(dir, "backreference", "backreference", NULL);
    char longre[400];
    memset(longre, 'a', sizeof longre);
    longre[0] = '"', longre[300] = '"', longre[301] = '\0';
    write_hand(dir, l, &(hand){.targets = longre});
    expect_bad(dir, "long regex", "characters long", NULL);
    /* a NaN weight (a diverged run's save) is refused naming the key */
    float *a0 = ct_lora_at(l, 0)->t->data, keep = a0[3];
    a0[3] = NAN;
    write_hand(dir, l, &(hand){0});
    expect_bad(dir, "NaN weight", qa, "non-finite");
    a0[3] = keep;
    write_hand(dir, l, &(hand){.targets = "\".*(wqkv|wo|w[123]{1,1}){1,4}\""}); /* small counts stay fine */
    m = load_base();
    CHECK_OK(ct_adapter_load(dir, m, false, &got));
    ct_model_free(m);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK(secs < 5.0, "hostile regexes took %.1f s", secs);
    write_hand(dir, l, &(hand){.peft_type = "PREFIX_TUNING"});
    expect_bad(dir, "peft_type", "PREFIX_TUNING", NULL);
    write_hand(dir, l, &(hand){.extra = ",\n  \"use_dora\": true"}); /* duplicate key: JSON error */
    expect_bad(dir, "duplicate key", "adapter_config.json:", "duplicate");
    write_hand(dir, l, &(hand){.raw_config = "{\n  \"peft_type\": \"LORA\",\n  \"r\": 4\n  \"lora_alpha\": 16\n}\n"});
    expect_bad(dir, "bad JSON", "adapter_config.json:4:", NULL);
    write_hand(dir, l, &(hand){.raw_config = "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"wqkv\"], "
                                             "\"bias\": \"all\"}"});
    expect_bad(dir, "bias", "bias 'all'", NULL);
    write_hand(dir, l, &(hand){.raw_config = "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"wqkv\"], "
                                             "\"rank_pattern\": {\"wqkv\": 8}}"});
    expect_bad(dir, "rank_pattern", "rank_pattern", NULL);
    /* the slots' r differs from the adapter's */
    write_hand(dir, l, &(hand){0});
    m = load_base();
    ct_lora_config c2 = c;
    c2.r = 2;
    CHECK_OK(ct_model_add_lora(m, &c2, false, &got));
    if (got) {
        CHECK(ct_adapter_load_into(dir, got) == CT_EINPUT && strstr(ct_last_error(), "r = 4") &&
                  strstr(ct_last_error(), "r = 2"),
              "load_into r mismatch: %s", ct_last_error());
        printf("  slots r mismatch: %s\n", ct_last_error());
    }
    ct_model_free(m);
    /* a pickle is never loaded */
    char path[CT_PATH_MAX];
    CHECK_OK(ct_path_join(path, sizeof path, dir, "adapter_model.safetensors"));
    remove(path);
    CHECK_OK(ct_path_join(path, sizeof path, dir, "adapter_model.bin"));
    CHECK_OK(ct_file_write_atomic(path, "\x80\x02}q\x00.", 6));
    expect_bad(dir, ".bin adapter", "pickle", "save_file");
    ct_model_free(src);
}

int main(void) {
    char dir[CT_PATH_MAX];
    snprintf(g_work, sizeof g_work, "/tmp/ct_test_adapter.XXXXXX");
    if (!mkdtemp(g_work)) return 1;
    CHECK_OK(ct_tape_init(&g_tape, ct_cpu_backend(), (size_t)4 << 20));
    /* the base model: `ctuner make-model` as a user makes one */
    char cfg[CT_PATH_MAX], cmd[3 * CT_PATH_MAX];
    path_in(cfg, "config.json");
    path_in(g_base, "base");
    const char *cj = "{\"architectures\": [\"InternLM2ForCausalLM\"], \"model_type\": \"internlm2\", \"hidden_size\": 36, "
                     "\"intermediate_size\": 50, \"num_hidden_layers\": 2, \"num_attention_heads\": 6, "
                     "\"num_key_value_heads\": 2, \"vocab_size\": 41, \"bias\": false, \"initializer_range\": 0.3, "
                     "\"rms_norm_eps\": 1e-5, \"rope_theta\": 1000000.0, \"torch_dtype\": \"float32\"}\n";
    CHECK_OK(ct_file_write_atomic(cfg, cj, strlen(cj)));
    snprintf(cmd, sizeof cmd, "'%s' make-model --config '%s' --out '%s' --seed 11 > /dev/null", CT_BINARY, cfg, g_base);
    if (system(cmd) != 0) {
        fprintf(stderr, "make-model failed: %s\n", cmd);
        return 1;
    }
    test_slots();
    test_numerics();
    test_round_trip();
    test_peft_style();
    snprintf(dir, sizeof dir, "%s", g_work);
    ct_remove_tree(dir);
    ct_tape_free(&g_tape);
    return ct_test_finish();
}
