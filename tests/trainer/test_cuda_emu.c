/* The whole stack above the backend on the emulated CUDA backend ("cuda-emu":
 * the .cu sources of cuda_kernels/ run on the CPU by cuda_kernels/emu/), against
 * the CPU backend, on the real stories260k InternLM2. The twin of
 * test_guarded.c (same fixture, data and checks), but the kernels differ
 * (summation orders, tile sizes), so results are compared with tolerances, not
 * bit for bit. Everything runs twice: with f32 activations (tight tolerances,
 * below) and with bf16 activations (every op's output rounded to bf16; the
 * backend's act_dtype, the other pass runs on a copy of its table with the
 * act_dtype changed). With f32 activations each tolerance is about 10x (or
 * more) what was measured, the measured value in brackets:
 *  - eval: ct_model_nll over three packed samples (positions 0-16, 17-29,
 *    30-39) and ct_model_logits (rows 36-39), for fp32 weights, nf4 with
 *    double quantization (head quantized too), and nf4 with bf16 compute. NLL
 *    sums 1e-5 relative [5e-8], logits 1e-4 x max|logit| [8e-7]. With bf16
 *    compute the attention kernels tile keys differently (CPU 64 keys, CUDA 32),
 *    so for a query past key 31 P is rounded to bf16 against another running
 *    max: after it they differ by bf16 noise, of the size of bf16's own error
 *    (CPU bf16 vs CPU fp32: NLL 1e-3, logits 8e-3 x max|logit|): every
 *    sample's NLL 3e-3 [sample 3: 4e-4], logits 2e-2 x max|logit| [6.5e-3].
 *    (Before position 32 the two agree to 4e-9 with OpenBLAS's default sgemm,
 *    but to 9e-5 with OPENBLAS_CORETYPE=Haswell: the emulated cuBLASLt sums in
 *    that kernel's order and a bf16-rounded intermediate can land on the other
 *    side of a rounding boundary; so the bf16 bound applies to every sample);
 *  - generation: nf4 with an uploaded LoRA adapter, a prompt then 8 greedy
 *    steps through the KV cache (the prefill kernel, then attention_decode):
 *    both backends are fed the CPU's greedy tokens, the logits of every feed
 *    within 1e-4 x max|logit| [6e-7], and the cuda-emu argmax is the CPU's
 *    token at every step unless the CPU's logits of the two tokens are within
 *    twice that step's largest logit difference (a near tie, reported) [8 of
 *    8 equal];
 *  - training: QLoRA (nf4 + double quant) in fp32 compute, LoRA dropout 0.1
 *    (the same counter-based masks), gradient checkpointing, accumulation 2,
 *    clipping (max_norm 0.5 against norms of 3-6), no warm-up (so the adapter
 *    moves: lr 2e-3), the evaluation hook (generation), a checkpoint saved
 *    inside an accumulation window and resumed (the cuda-emu run only), and the
 *    final eval_data loss. Per-iteration losses 1e-5 relative [4e-7], eval
 *    loss 1e-5 [4e-8]; the adapter values (final and iteration 4) within 5e-3
 *    of each tensor's largest |value| [5e-4, in a lora_B: AdamW divides each
 *    grad by its own running RMS, so an element whose gradient is a nearly
 *    cancelling sum gets an update as relatively different as that gradient;
 *    absolute: 1.5e-6 with lr 2e-3]. (bf16 compute training is left out: it
 *    differs by bf16 noise, 3e-3 relative in the losses, as above);
 *  - adapters: the adapter written by the cuda-emu run loads into a model on
 *    either backend with logits within 1e-4 x max|logit| [7e-7]; on the CPU,
 *    its logits and those of the CPU run's adapter within 1e-4 [5e-7].
 * With bf16 activations the differences are bf16 noise (the size of the CPU's
 * own bf16-compute vs fp32 difference), tolerances ~3x the measured: NLL 5e-3
 * [1.4e-3], logits 3e-2 [1e-2], generation logits 5e-2 [2.1e-2] (a greedy
 * token may then differ where the CPU's logits of the two tokens are within
 * twice that step's logit difference [once: gap 0.036, difference 0.15]),
 * losses 2e-2 [6.3e-3], eval loss 5e-3 [8e-4], logits with the two runs'
 * adapters 5e-2 [1.9e-3]; adapter values are not compared (noisy grads flip
 * AdamW's early sign-like updates: [1.7x a lora_B's largest value]).
 * Results do not depend on CT_EMU_ORDER (every kernel sums in a fixed order).
 * ~30 s (most of it the emulated training runs). Skips (77) when the build has no emulated backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_inline.h"
#include "stack_fixture.h"
#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/adapter.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"
#include "trainer/train.h"

static char g_dir[64];
static char g_model[CT_PATH_MAX];
static char g_data[CT_PATH_MAX];

static const char *g_pass = ""; /* "f32" or "bf16": the activations of this pass */
static const ct_backend *g_emu;  /* cuda-emu, or a copy with the other act_dtype */
static const ct_backend *emu(void) { return g_emu; }

/* The tolerances (see the top comment), by the backend's activation dtype. */
typedef struct {
    double nll, nll_bf16_late; /* NLL sums, relative (late: bf16 compute, past position 31) */
    double logits, logits_bf16; /* logits, relative to max|logit| (bf16: with bf16 compute) */
    double gen_logits;          /* generation: every feed's logits, relative to max|logit| */
    double loss, eval_loss;     /* training: per-iteration and eval_data losses, relative */
    double adapter_values;      /* adapter values, of each tensor's largest (< 0: not checked) */
    double adapter_logits;      /* logits with the CPU run's vs the cuda-emu run's adapter */
} tolerances;
static const tolerances k_tol_f32 = {1e-5, 3e-3, 1e-4, 2e-2, 1e-4, 1e-5, 1e-5, 5e-3, 1e-4};
static const tolerances k_tol_bf16 = {5e-3, 5e-3, 3e-2, 3e-2, 5e-2, 2e-2, 5e-3, -1, 5e-2};
static const tolerances *g_tol = &k_tol_f32;

/* max |a - b| over n, and max |a| into *mag. */
static double max_diff(const float *a, const float *b, int64_t n, double *mag) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        d = isnan(e) ? INFINITY : fmax(d, e);
        m = fmax(m, fabs(a[i]));
    }
    if (mag) *mag = m;
    return d;
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(a), 1e-30); }

/* ---- eval and logits ---- */


static void test_forward(void) {
    const int64_t T = 40, V = 512;
    /* Tolerances (see the top comment): NLL of the samples before position 32,
     * of the third (positions 30..39), and the logits (rows 36..39) relative to
     * max |logit|. */
    const struct {
        const char *name;
        ct_model_options o;
        ct_dtype compute;
        double nll_early, nll_late, logit_tol;
    } variants[] = {
        {"fp32", {0}, CT_F32, g_tol->nll, g_tol->nll, g_tol->logits},
        {"nf4, double quant", {.quant = CT_MODEL_QUANT_NF4, .double_quant = true, .quant_output = true}, CT_F32,
         g_tol->nll, g_tol->nll, g_tol->logits},
        {"nf4, bf16 compute", {.quant = CT_MODEL_QUANT_NF4, .double_quant = true}, CT_BF16,
         g_tol->nll_bf16_late, g_tol->nll_bf16_late, g_tol->logits_bf16},
    };
    for (size_t k = 0; k < sizeof variants / sizeof variants[0]; k++) {
        double nll[2][3] = {{0}};
        int64_t count[2][3] = {{0}};
        float *lg[2];
        for (int b = 0; b < 2; b++) {
            lg[b] = ct_test_need(calloc((size_t)(4 * V), sizeof(float)));
            ct_stack_forward(g_model, b ? emu() : ct_cpu_backend(), &variants[k].o, variants[k].compute, nll[b],
                             count[b], lg[b], T, V);
        }
        double early = fmax(rel(nll[0][0], nll[1][0]), rel(nll[0][1], nll[1][1])), late = rel(nll[0][2], nll[1][2]);
        double mag, dl = max_diff(lg[0], lg[1], 4 * V, &mag);
        CHECK(memcmp(count[0], count[1], sizeof count[0]) == 0, "%s: token counts differ", variants[k].name);
        CHECK(early <= variants[k].nll_early && late <= variants[k].nll_late,
              "%s: cuda-emu NLL %.17g %.17g %.17g vs cpu %.17g %.17g %.17g", variants[k].name, nll[1][0], nll[1][1],
              nll[1][2], nll[0][0], nll[0][1], nll[0][2]);
        CHECK(dl <= variants[k].logit_tol * mag, "%s: logits differ by %.3g (max |logit| %.3g)", variants[k].name,
              dl, mag);
        CHECK(nll[0][0] > 0 && count[0][0] > 0, "NLL %g over %lld tokens", nll[0][0], (long long)count[0][0]);
        printf("forward (%s): NLL per sample %.6f %.6f %.6f; cuda-emu NLL rel diff %.3g (samples 1-2), %.3g "
               "(sample 3), logits max diff %.3g x max|logit| (%.3f)\n",
               variants[k].name, nll[0][0], nll[0][1], nll[0][2], early, late, dl / mag, mag);
        free(lg[0]), free(lg[1]);
    }
}

/* ---- generation ---- */

enum { GEN_STEPS = 8 };

typedef struct {
    ct_model *m;
    ct_generator *g;
} gen_model;

/* nf4 model on be with an adapter whose values are uploaded, and a generator. */
static void gen_open(const ct_backend *be, gen_model *gm) {
    ct_model_options o = {.quant = CT_MODEL_QUANT_NF4, .backend = be};
    memset(gm, 0, sizeof *gm);
    CHECK_OK(ct_model_load(g_model, &o, &gm->m));
    if (!gm->m) return;
    ct_lora_config lc = {.r = 4, .alpha = 8, .targets = CT_LORA_ALL_BLOCK | CT_LORA_OUTPUT, .seed = 5};
    ct_lora *l = NULL;
    CHECK_OK(ct_model_add_lora(gm->m, &lc, false, &l));
    int64_t n = l ? ct_lora_numel(l) : 0;
    float *v = ct_test_need(malloc((size_t)(n ? n : 1) * sizeof *v)); /* [n] host values */
    for (int64_t i = 0; i < n; i++) v[i] = 0.05f * (ct_uniform(9, (uint64_t)i) - 0.5f);
    if (l) CHECK_OK(be->upload(ct_lora_values(l), v, (size_t)n * sizeof *v));
    free(v);
    CHECK_OK(ct_gen_new(ct_model_decoder(gm->m), ct_model_backend(gm->m), 32, &gm->g));
}

static void gen_close(gen_model *gm) {
    ct_gen_free(gm->g);
    ct_model_free(gm->m);
}

static int32_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* Greedy decoding, both generators fed the CPU's tokens: logits of every feed
 * close, and the same argmax except at near ties: where the CPU's logits of
 * the two tokens are closer than twice the largest logit difference of that
 * step. */
static void test_generate(void) {
    const int64_t V = 512;
    gen_model c, e;
    gen_open(ct_cpu_backend(), &c);
    gen_open(emu(), &e);
    if (!c.g || !e.g) {
        gen_close(&c), gen_close(&e);
        return;
    }
    int32_t feed[7] = {1, 20, 33, 47, 100, 7, 250}, toks[GEN_STEPS] = {0};
    int64_t n = 7;
    double worst = 0, mag = 0;
    int same = 0, ties = 0;
    for (int s = 0; s <= GEN_STEPS; s++) {
        float *lc = NULL, *le = NULL;
        CHECK_OK(ct_gen_feed(c.g, feed, n, &lc));
        CHECK_OK(ct_gen_feed(e.g, feed, n, &le));
        if (!lc || !le) break;
        double m, d = max_diff(lc, le, V, &m);
        worst = fmax(worst, d / m), mag = fmax(mag, m);
        CHECK(d <= g_tol->gen_logits * m, "generation feed %d: logits differ by %.3g (max |logit| %.3g)", s, d, m);
        if (s == GEN_STEPS) break;
        int32_t tc = argmax(lc, V), te = argmax(le, V);
        float gap = lc[tc] - lc[te]; /* by the CPU's logits */
        if (tc == te) same++;
        else if (gap <= 2 * d)
            ties++, printf("  step %d: near tie (cpu logit gap %.3g, within twice the step's logit difference %.3g): "
                           "cpu %d, cuda-emu %d\n", s, gap, d, tc, te);
        else CHECK(tc == te, "step %d: greedy token cpu %d, cuda-emu %d (cpu logit gap %.3g)", s, tc, te, gap);
        toks[s] = tc, feed[0] = tc, n = 1;
    }
    CHECK(mag > 0.1, "logits are all ~0 (%g)", mag);
    printf("generation with an adapter (nf4): %d greedy steps, %d same tokens, %d near ties (", GEN_STEPS, same, ties);
    for (int s = 0; s < GEN_STEPS; s++) printf("%s%d", s ? " " : "", toks[s]);
    printf("); logits max diff %.3g x max|logit| (%.3f)\n", worst, mag);
    gen_close(&c), gen_close(&e);
}

/* ---- training ---- */

static const char *k_yaml =
    "max_length: 64\n"
    "pack_to_max_length: true\n"
    "batch_size: 1\n"
    "accumulative_counts: 2\n"
    "max_iters: 6\n"
    "lr: 2.0e-3\n"
    "warmup_ratio: 0\n"
    "max_norm: 0.5\n"
    "save_steps: 3\n"
    "save_total_limit: -1\n"
    "evaluation_freq: 4\n"
    "evaluation_max_new_tokens: 5\n"
    "evaluation_inputs: [Tell me a story.]\n"
    "quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true}\n"
    "lora: {r: 4, lora_alpha: 8, lora_dropout: 0.1}\n"
    "compute_dtype: float32\n"
    "gradient_checkpointing: true\n"
    "seed: 3\n"
    "logging_interval: 1\n";



/* g_dir/<pass>/name: each pass's own runs. */
static void work_path(char *buf, const char *name) { snprintf(buf, CT_PATH_MAX, "%s/%s/%s", g_dir, g_pass, name); }


/* Compares two adapter files tensor by tensor (same names and sizes): the
 * largest max|a - b| / max|a| of a tensor (B starts at zero and stays small, A
 * does not: each against its own scale), that tensor's name into worst_name. */
static double adapter_diff(const char *rel_a, const char *rel_b, char *worst_name, size_t cap) {
    char a[CT_PATH_MAX], b[CT_PATH_MAX];
    work_path(a, rel_a), work_path(b, rel_b);
    ct_st_file *fa = NULL, *fb = NULL;
    double worst = INFINITY;
    CHECK_OK(ct_st_open(a, &fa));
    CHECK_OK(ct_st_open(b, &fb));
    if (fa && fb && ct_st_count(fa) == ct_st_count(fb) && ct_st_count(fa) > 0) {
        worst = 0;
        for (size_t i = 0; i < ct_st_count(fa) && worst < INFINITY; i++) {
            const ct_st_tensor *ta = ct_st_at(fa, i), *tb = ct_st_find(fb, ta->name);
            CHECK(tb && tb->numel == ta->numel, "%s: tensor %s missing or resized in %s", a, ta->name, b);
            if (!tb || tb->numel != ta->numel) {
                worst = INFINITY;
                break;
            }
            float *x = ct_test_need(malloc((size_t)ta->numel * sizeof *x));
            float *y = ct_test_need(malloc((size_t)ta->numel * sizeof *y));
            CHECK_OK(ct_st_read_f32(ta, x));
            CHECK_OK(ct_st_read_f32(tb, y));
            double m, d = max_diff(x, y, ta->numel, &m);
            CHECK(m > 0, "%s: tensor %s is all zeros", a, ta->name);
            double r = m > 0 ? d / m : INFINITY;
            if (r >= worst) worst = r, snprintf(worst_name, cap, "%s", ta->name);
            free(x), free(y);
        }
    } else {
        CHECK(0, "adapters %s and %s: unreadable or different tensor counts", a, b);
    }
    ct_st_close(fa), ct_st_close(fb);
    return worst;
}

/* A run in work dir `name` (under this test's directory) on be. */
static int train(const ct_backend *be, const char *name, const char *resume, int64_t stop_after,
                 ct_stack_losses *l, ct_train_result *res) {
    char wd[CT_PATH_MAX];
    work_path(wd, name);
    return ct_stack_train(g_model, g_data, k_yaml, wd, be, resume, stop_after, l, res);
}

static void test_train(void) {
    ct_stack_losses cpu = {0}, ce = {0};
    ct_train_result rc, r1, r2;
    CHECK_OK(train(ct_cpu_backend(), "cpu", NULL, 0, &cpu, &rc));
    CHECK_OK(train(emu(), "emu", NULL, 3, &ce, &r1)); /* stops inside the window 2..3 */
    CHECK(r1.stopped && r1.iters_done == 3, "cuda-emu first part: %lld iterations", (long long)r1.iters_done);
    CHECK_OK(train(emu(), "emu", "auto", 0, &ce, &r2));
    CHECK(rc.iters_done == 6 && r2.iters_done == 6 && !r2.stopped, "iterations: cpu %lld, cuda-emu %lld",
          (long long)rc.iters_done, (long long)r2.iters_done);
    CHECK(cpu.n == 6 && ce.n == 6, "iterations logged: cpu %d, cuda-emu %d", cpu.n, ce.n);
    double worst = 0;
    for (int i = 0; i < 6; i++) {
        double r = rel(cpu.loss[i], ce.loss[i]);
        worst = fmax(worst, r);
        printf("  iteration %d: loss cpu %.9f cuda-emu %.9f (rel diff %.3g)\n", i, cpu.loss[i], ce.loss[i], r);
        CHECK(r <= g_tol->loss, "iteration %d: loss cpu %.9f cuda-emu %.9f", i, cpu.loss[i], ce.loss[i]);
    }
    double re = rel(rc.eval_loss, r2.eval_loss);
    CHECK(isfinite(rc.eval_loss) && re <= g_tol->eval_loss, "eval loss cpu %.17g cuda-emu %.17g", rc.eval_loss,
          r2.eval_loss);
    char nf[256] = "", nm[256] = "";
    double df = adapter_diff("cpu/adapter/adapter_model.safetensors", "emu/adapter/adapter_model.safetensors", nf,
                             sizeof nf);
    const double tv = g_tol->adapter_values < 0 ? INFINITY : g_tol->adapter_values;
    CHECK(df <= tv, "final adapters: %s differs by %.3g of its largest value", nf, df);
    double dm = adapter_diff("cpu/iter_4_adapter/adapter_model.safetensors",
                             "emu/iter_4_adapter/adapter_model.safetensors", nm, sizeof nm);
    CHECK(dm <= tv, "mid-run adapters: %s differs by %.3g of its largest value", nm, dm);
    printf("training (nf4, checkpointing, dropout, accumulation 2, clipping, resumed mid-window): losses max rel "
           "diff %.3g, eval loss %.9f vs %.9f (rel %.3g); adapter values max diff %.3g (final, %s) and %.3g "
           "(iteration 4, %s) of their tensor's largest |value|\n",
           worst, rc.eval_loss, r2.eval_loss, re, df, nf, dm, nm);
}

/* The adapter of the cuda-emu run loaded into a model on each backend: close
 * logits; and on the CPU, its logits against those of the CPU run's adapter
 * (what the two trainings learned, compared by effect). */
static void test_adapter_load(void) {
    const int64_t T = 12, V = 512;
    char dir[CT_PATH_MAX], cdir[CT_PATH_MAX];
    work_path(dir, "emu/adapter");
    work_path(cdir, "cpu/adapter");
    float *a = ct_test_need(calloc((size_t)(T * V), sizeof(float)));
    float *b = ct_test_need(calloc((size_t)(T * V), sizeof(float)));
    float *c = ct_test_need(calloc((size_t)(T * V), sizeof(float)));
    ct_stack_logits_with_adapter(g_model, ct_cpu_backend(), dir, a, T);
    ct_stack_logits_with_adapter(g_model, emu(), dir, b, T);
    ct_stack_logits_with_adapter(g_model, ct_cpu_backend(), cdir, c, T);
    double mag, d = max_diff(a, b, T * V, &mag), mag_c, dc = max_diff(c, a, T * V, &mag_c);
    CHECK(d <= g_tol->logits * mag && mag > 0.1, "the cuda-emu adapter's logits differ by %.3g (max |logit| %.3g)", d,
          mag);
    CHECK(dc <= g_tol->adapter_logits * mag_c && mag_c > 0.1,
          "logits with the cpu and the cuda-emu runs' adapters differ by %.3g (max |logit| %.3g)", dc, mag_c);
    printf("adapter from the cuda-emu run loaded on both backends: logits max diff %.3g x max|logit| (%.3f); on the "
           "cpu vs the cpu run's adapter: %.3g x max|logit|\n",
           d / mag, mag, dc / mag_c);
    free(a), free(b), free(c);
}

int main(void) {
    const ct_backend *real = ct_cuda_emu_backend();
    if (!real) {
        printf("skipped: %s\n", ct_last_error());
        return CT_TEST_SKIP;
    }
    if (!ct_fixture("stories260k-internlm2/model.safetensors", g_model, sizeof g_model)) return CT_TEST_SKIP;
    ct_fixture("stories260k-internlm2", g_model, sizeof g_model);
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_test_cuda_emu.XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    snprintf(g_data, sizeof g_data, "%s/data.json", g_dir);
    ct_stack_write_data(g_data);
    /* The kernels take f32 and bf16 activations: one pass each, whatever the
     * backend's own act_dtype is (the other pass runs on a copy of its table). */
    static ct_backend other;
    other = *real;
    other.act_dtype = real->act_dtype == CT_BF16 ? CT_F32 : CT_BF16;
    const ct_backend *passes[] = {real->act_dtype == CT_F32 ? real : &other,
                                  real->act_dtype == CT_BF16 ? real : &other};
    for (int k = 0; k < 2; k++) {
        g_emu = passes[k];
        g_tol = k ? &k_tol_bf16 : &k_tol_f32;
        g_pass = k ? "bf16" : "f32";
        char dir[CT_PATH_MAX];
        work_path(dir, "");
        CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
        printf("== cuda-emu with %s activations%s ==\n", g_pass, g_emu == real ? " (the backend's own)" : "");
        void (*const tests[])(void) = {test_forward, test_generate, test_train, test_adapter_load};
        for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
            double t0 = ct_now_s();
            tests[i]();
            printf("  (%.1f s)\n", ct_now_s() - t0);
        }
    }
    if (ct_test_failures == 0) ct_remove_tree(g_dir);
    else fprintf(stderr, "work files kept in %s\n", g_dir);
    return ct_test_finish();
}
