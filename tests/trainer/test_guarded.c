/* The whole stack above the backend on the guarded test backend, whose memory
 * is PROT_NONE outside backend calls (autograd/guarded/guarded_backend.c): any
 * line above the backend that reads or writes a tensor's memory directly
 * crashes here. Every result must equal the CPU backend's bit for bit (the
 * same kernels run in the same order), on the real stories260k InternLM2:
 *  - placing: ct_model_place uploads the weights (fp32, and nf4 with double
 *    quantization: codes, absmax and the nested state) and releases the host
 *    copies;
 *  - eval: ct_model_nll over packed samples and ct_model_logits;
 *  - generation: cached decoding with a LoRA adapter whose values were
 *    uploaded, logits of every feed;
 *  - training: QLoRA (nf4) with gradient checkpointing, accumulation over 2
 *    iterations, dropout, bf16 compute, clipping, the evaluation hook
 *    (generation), a checkpoint saved inside an accumulation window and
 *    resumed, and the final eval_data loss: per-iteration losses (memcmp of
 *    doubles) and the adapter's bytes equal the CPU run's;
 *  - adapters: the adapter written by the guarded run loads into a model on
 *    either backend with the same logits. (Merging reads base and adapter
 *    from disk on the host: no backend is involved.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_inline.h"
#include "stack_fixture.h"
#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/adapter.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"
#include "trainer/train.h"

static char g_dir[64];
static char g_model[CT_PATH_MAX];
static char g_data[CT_PATH_MAX];

static const ct_backend *guarded(void) { return ct_guarded_backend(); }

/* ---- eval and logits ---- */


static void test_forward(void) {
    const int64_t T = 40, V = 512;
    ct_model_options variants[] = {{0}, {.quant = CT_MODEL_QUANT_NF4, .double_quant = true, .quant_output = true}};
    for (size_t k = 0; k < 2; k++) {
        double nll[2][3];
        int64_t count[2][3];
        float *lg[2];
        for (int b = 0; b < 2; b++) {
            lg[b] = ct_test_need(calloc((size_t)(4 * V), sizeof(float)));
            ct_stack_forward(g_model, b ? guarded() : ct_cpu_backend(), &variants[k], CT_F32, nll[b], count[b],
                             lg[b], T, V);
        }
        CHECK(memcmp(nll[0], nll[1], sizeof nll[0]) == 0 && memcmp(count[0], count[1], sizeof count[0]) == 0,
              "%s: guarded NLL %.17g vs cpu %.17g", k ? "nf4" : "fp32", nll[1][0], nll[0][0]);
        CHECK(memcmp(lg[0], lg[1], (size_t)(4 * V) * sizeof(float)) == 0, "%s: guarded logits differ",
              k ? "nf4" : "fp32");
        CHECK(nll[0][0] > 0 && count[0][0] > 0, "NLL %g over %lld tokens", nll[0][0], (long long)count[0][0]);
        printf("forward (%s): NLL per sample %.6f %.6f %.6f on both backends\n", k ? "nf4, double quant" : "fp32",
               nll[0][0], nll[0][1], nll[0][2]);
        free(lg[0]), free(lg[1]);
    }
}

/* ---- generation ---- */

/* Logits of three feeds (a prompt, then two single tokens) with an adapter
 * whose values are uploaded; *out [3, V]. */
static void generate_on(const ct_backend *be, float *out, int64_t V) {
    ct_model_options o = {.quant = CT_MODEL_QUANT_NF4, .backend = be};
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(g_model, &o, &m));
    if (!m) return;
    ct_lora_config lc = {.r = 4, .alpha = 8, .targets = CT_LORA_ALL_BLOCK | CT_LORA_OUTPUT, .seed = 5};
    ct_lora *l = NULL;
    CHECK_OK(ct_model_add_lora(m, &lc, false, &l));
    int64_t n = l ? ct_lora_numel(l) : 0;
    float *v = ct_test_need(malloc((size_t)(n ? n : 1) * sizeof *v)); /* [n] host values */
    for (int64_t i = 0; i < n; i++) v[i] = 0.05f * (ct_uniform(9, (uint64_t)i) - 0.5f);
    if (l) CHECK_OK(be->upload(ct_lora_values(l), v, (size_t)n * sizeof *v));
    free(v);
    ct_generator *g = NULL;
    CHECK_OK(ct_gen_new(ct_model_decoder(m), ct_model_backend(m), 32, &g));
    int32_t prompt[7] = {1, 20, 33, 47, 100, 7, 250}, next[2] = {42, 301};
    float *lg = NULL;
    if (g) {
        CHECK_OK(ct_gen_feed(g, prompt, 7, &lg));
        if (lg) memcpy(out, lg, (size_t)V * sizeof *out);
        for (int k = 0; k < 2; k++) {
            CHECK_OK(ct_gen_feed(g, &next[k], 1, &lg));
            if (lg) memcpy(out + (k + 1) * V, lg, (size_t)V * sizeof *out);
        }
    }
    ct_gen_free(g);
    ct_model_free(m);
}

static void test_generate(void) {
    const int64_t V = 512;
    float *a = ct_test_need(calloc((size_t)(3 * V), sizeof(float)));
    float *b = ct_test_need(calloc((size_t)(3 * V), sizeof(float)));
    generate_on(ct_cpu_backend(), a, V);
    generate_on(guarded(), b, V);
    CHECK(memcmp(a, b, (size_t)(3 * V) * sizeof(float)) == 0, "generation: guarded logits differ");
    double mag = 0;
    for (int64_t i = 0; i < 3 * V; i++) mag = fmax(mag, fabs(a[i]));
    CHECK(mag > 0.1, "logits are all ~0 (%g)", mag);
    printf("generation with an adapter (nf4): 3 feeds, logits equal (largest |logit| %.3f)\n", mag);
    free(a), free(b);
}

/* ---- training ---- */

static const char *k_yaml =
    "max_length: 64\n"
    "pack_to_max_length: true\n"
    "batch_size: 2\n"
    "accumulative_counts: 2\n"
    "max_iters: 6\n"
    "lr: 2.0e-3\n"
    "warmup_ratio: 0\n" /* the adapter must move: a warm-up would keep lr ~0 in 6 iterations */
    "max_norm: 0.5\n"
    "save_steps: 3\n"
    "save_total_limit: -1\n"
    "evaluation_freq: 4\n"
    "evaluation_max_new_tokens: 5\n"
    "evaluation_inputs: [Tell me a story.]\n"
    "quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true}\n"
    "lora: {r: 4, lora_alpha: 8, lora_dropout: 0.1}\n"
    "compute_dtype: bfloat16\n"
    "gradient_checkpointing: true\n"
    "seed: 3\n"
    "logging_interval: 1\n";



static void work_path(char *buf, const char *name) { snprintf(buf, CT_PATH_MAX, "%s/%s", g_dir, name); }


/* A run in work dir `name` (under this test's directory) on be. */
static int train(const ct_backend *be, const char *name, const char *resume, int64_t stop_after,
                 ct_stack_losses *l, ct_train_result *res) {
    char wd[CT_PATH_MAX];
    work_path(wd, name);
    return ct_stack_train(g_model, g_data, k_yaml, wd, be, resume, stop_after, l, res);
}

static void test_train(void) {
    ct_stack_losses cpu = {0}, grd = {0};
    ct_train_result rc, r1, r2;
    CHECK_OK(train(ct_cpu_backend(), "cpu", NULL, 0, &cpu, &rc));
    CHECK_OK(train(guarded(), "guarded", NULL, 3, &grd, &r1)); /* stops inside the window 2..3 */
    CHECK(r1.stopped && r1.iters_done == 3, "guarded first part: %lld iterations", (long long)r1.iters_done);
    CHECK_OK(train(guarded(), "guarded", "auto", 0, &grd, &r2));
    CHECK(rc.iters_done == 6 && r2.iters_done == 6 && !r2.stopped, "iterations: cpu %lld, guarded %lld",
          (long long)rc.iters_done, (long long)r2.iters_done);
    CHECK(cpu.n == 6 && grd.n == 6 && memcmp(cpu.loss, grd.loss, sizeof cpu.loss) == 0,
          "per-iteration losses differ between the cpu and guarded runs");
    for (int i = 0; i < 6; i++) {
        printf("  iteration %d: loss cpu %.9f guarded %.9f\n", i, cpu.loss[i], grd.loss[i]);
        if (cpu.loss[i] != grd.loss[i]) fprintf(stderr, "  iteration %d differs\n", i);
    }
    CHECK(rc.eval_loss == r2.eval_loss && isfinite(rc.eval_loss), "eval loss cpu %.17g guarded %.17g", rc.eval_loss,
          r2.eval_loss);
    char a[CT_PATH_MAX], b[CT_PATH_MAX];
    work_path(a, "cpu/adapter/adapter_model.safetensors");
    work_path(b, "guarded/adapter/adapter_model.safetensors");
    CHECK(ct_test_same_file(a, b), "final adapters differ: %s vs %s", a, b);
    work_path(a, "cpu/iter_4_adapter/adapter_model.safetensors");
    work_path(b, "guarded/iter_4_adapter/adapter_model.safetensors");
    CHECK(ct_test_same_file(a, b), "mid-run adapters differ: %s vs %s", a, b);
    printf("training (nf4, bf16 compute, checkpointing, accumulation 2, resumed mid-window): 6 losses, the "
           "eval loss %.6f and the adapter bytes equal\n", rc.eval_loss);
}

static void test_adapter_load(void) {
    const int64_t T = 12, V = 512;
    char dir[CT_PATH_MAX];
    work_path(dir, "guarded/adapter");
    float *a = ct_test_need(calloc((size_t)(T * V), sizeof(float)));
    float *b = ct_test_need(calloc((size_t)(T * V), sizeof(float)));
    ct_stack_logits_with_adapter(g_model, ct_cpu_backend(), dir, a, T);
    ct_stack_logits_with_adapter(g_model, guarded(), dir, b, T);
    CHECK(memcmp(a, b, (size_t)(T * V) * sizeof(float)) == 0 && a[0] != 0.0f,
          "the adapter trained on the guarded backend gives other logits when loaded there");
    printf("adapter from the guarded run loaded on both backends: logits equal\n");
    free(a), free(b);
}

int main(void) {
    if (!guarded()) {
        printf("skipped: %s\n", ct_last_error());
        return CT_TEST_SKIP;
    }
    if (!ct_fixture("stories260k-internlm2/model.safetensors", g_model, sizeof g_model)) return CT_TEST_SKIP;
    ct_fixture("stories260k-internlm2", g_model, sizeof g_model);
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_test_guarded.XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    work_path(g_data, "data.json");
    ct_stack_write_data(g_data);
    test_forward();
    test_generate();
    test_train();
    test_adapter_load();
    if (ct_test_failures == 0) ct_remove_tree(g_dir);
    else fprintf(stderr, "work files kept in %s\n", g_dir);
    return ct_test_finish();
}
