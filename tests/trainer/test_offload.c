/* The two placement options (embedding_offload, optimizer_offload) across
 * the whole stack, on the real stories260k InternLM2, on cuda-emu (bf16
 * activations, the backend's own, and f32 for eval) and on the guarded
 * backend (memory unreadable outside its calls), each against the same
 * backend with the option the other way. Every comparison is bit for bit:
 *  - eval (ct_model_nll of three packed samples, ct_model_logits) and cached
 *    generation (every feed's logits) with the embedding table in host
 *    memory (the default; the rows gathered on the host, rounded to bf16 as
 *    the device kernel rounds) equal those with the table on the device;
 *    the memory report says where it is; a model with tied embeddings keeps
 *    the table on the device and the training log says why;
 *  - training (QLoRA nf4 + double quant, checkpointing, dropout 0.1,
 *    accumulation 2, clipping, the evaluation hook, the eval_data loss): a run
 *    with both options cpu, stopped inside an accumulation window and resumed
 *    with both none (and, on the guarded backend and the CPU, a run resumed
 *    with both cpu from the checkpoint of a run with both none) give that
 *    run's per-iteration losses, eval loss and adapter bytes (AdamW's update
 *    on the host gives the device kernel's bits: the CUDA kernel rounds every
 *    operation as the CPU does, no FMA; test_adamw checks both resume
 *    directions on cuda-emu too); the training log says where the embedding
 *    table and AdamW's moments are;
 *  - on the CPU backend both options change nothing: same losses and adapter.
 * ~1 min, most of it the emulated bf16 training runs. Skips (77) without the
 * fixture; the cuda-emu part is skipped in builds without it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_inline.h"
#include "stack_fixture.h"
#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/generate.h"
#include "trainer/model/make_model.h"
#include "trainer/model/model.h"
#include "trainer/train.h"

static char g_dir[64];
static char g_model[CT_PATH_MAX], g_tied[CT_PATH_MAX], g_data[CT_PATH_MAX];

static void work_path(char *buf, const char *name) { snprintf(buf, CT_PATH_MAX, "%s/%s", g_dir, name); }

/* ---- eval and generation ---- */

/* ct_stack_forward with the table on the device and in host memory: equal. */
static void test_forward(const ct_backend *be) {
    const int64_t T = 40, V = 512;
    const ct_model_options variants[2] = {{0}, {.quant = CT_MODEL_QUANT_NF4, .double_quant = true}};
    for (int k = 0; k < 2; k++) {
        double nll[2][3];
        int64_t count[2][3];
        float *lg[2];
        for (int dev = 0; dev < 2; dev++) {
            ct_model_options o = variants[k];
            o.embedding_on_device = dev == 1;
            lg[dev] = ct_test_need(calloc((size_t)(4 * V), sizeof(float)));
            ct_stack_forward(g_model, be, &o, CT_F32, nll[dev], count[dev], lg[dev], T, V);
        }
        CHECK(memcmp(nll[0], nll[1], sizeof nll[0]) == 0 && memcmp(count[0], count[1], sizeof count[0]) == 0,
              "%s (%s activations, %s): NLL with the table on the host %.17g, on the device %.17g", be->name,
              ct_dtype_name(be->act_dtype), k ? "nf4" : "fp32", nll[0][0], nll[1][0]);
        CHECK(memcmp(lg[0], lg[1], (size_t)(4 * V) * sizeof(float)) == 0, "%s (%s activations, %s): logits differ",
              be->name, ct_dtype_name(be->act_dtype), k ? "nf4" : "fp32");
        CHECK(nll[0][0] > 0 && count[0][0] > 0, "NLL %g over %lld tokens", nll[0][0], (long long)count[0][0]);
        free(lg[0]), free(lg[1]);
    }
    /* the memory report */
    ct_model_options o = {.backend = be};
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(g_model, &o, &m));
    if (m) {
        ct_model_memory mem;
        ct_model_get_memory(m, &mem);
        const uint64_t table = 512u * 64u * 4u; /* vocab x hidden, f32 */
        CHECK(mem.embedding_on_host && mem.host_bytes == table &&
                  ct_model_decoder(m)->tok_embeddings->device == CT_CPU,
              "%s: embedding on host %d, %llu host bytes", be->name, mem.embedding_on_host,
              (unsigned long long)mem.host_bytes);
    }
    ct_model_free(m);
    printf("%s (%s activations): eval NLL and logits (fp32, nf4) equal with the embedding table on the host and on "
           "the device\n", be->name, ct_dtype_name(be->act_dtype));
}

/* Logits of a prompt then 4 greedy feeds through the KV cache: out [5, V]. */
static void generate_on(const ct_backend *be, bool on_device, float *out, int64_t V) {
    ct_model_options o = {.quant = CT_MODEL_QUANT_NF4, .backend = be, .embedding_on_device = on_device};
    ct_model *m = NULL;
    ct_generator *g = NULL;
    CHECK_OK(ct_model_load(g_model, &o, &m));
    if (m) CHECK_OK(ct_gen_new(ct_model_decoder(m), ct_model_backend(m), 32, &g));
    int32_t feed[6] = {1, 20, 33, 47, 100, 7};
    int64_t n = 6;
    for (int s = 0; g && s < 5; s++) {
        float *lg = NULL;
        CHECK_OK(ct_gen_feed(g, feed, n, &lg));
        if (!lg) break;
        memcpy(out + s * V, lg, (size_t)V * sizeof *out);
        int32_t best = 0;
        for (int32_t i = 1; i < V; i++) best = lg[i] > lg[best] ? i : best;
        feed[0] = best, n = 1;
    }
    ct_gen_free(g);
    ct_model_free(m);
}

static void test_generate(const ct_backend *be) {
    const int64_t V = 512;
    float *a = ct_test_need(calloc((size_t)(5 * V), sizeof(float)));
    float *b = ct_test_need(calloc((size_t)(5 * V), sizeof(float)));
    generate_on(be, false, a, V);
    generate_on(be, true, b, V);
    CHECK(memcmp(a, b, (size_t)(5 * V) * sizeof(float)) == 0 && a[0] != 0.0f,
          "%s: generation logits differ between the table on the host and on the device", be->name);
    printf("%s (%s activations): 5 generation feeds, logits equal\n", be->name, ct_dtype_name(be->act_dtype));
    free(a), free(b);
}

/* ---- training ---- */

static const char *k_yaml =
    "max_length: 64\n"
    "pack_to_max_length: true\n"
    "batch_size: 1\n"
    "accumulative_counts: 2\n"
    "max_iters: 4\n"
    "lr: 2.0e-3\n"
    "warmup_ratio: 0\n" /* the adapter must move */
    "max_norm: 0.5\n"
    "save_steps: 2\n"
    "save_total_limit: -1\n"
    "evaluation_freq: 3\n"
    "evaluation_max_new_tokens: 4\n"
    "evaluation_inputs: [Tell me a story.]\n"
    "quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true}\n"
    "lora: {r: 4, lora_alpha: 8, lora_dropout: 0.1}\n"
    "compute_dtype: float32\n"
    "gradient_checkpointing: true\n"
    "seed: 3\n"
    "logging_interval: 1\n";

/* A run in work dir `name` with both options set to `where` ("none"/"cpu");
 * its log into *log (malloc'ed) when log is non-NULL. */
static int train(const char *model, const ct_backend *be, const char *name, const char *where, const char *resume,
                 int64_t stop_after, ct_stack_losses *l, ct_train_result *res, char **log) {
    char wd[CT_PATH_MAX], yaml[2048];
    work_path(wd, name);
    snprintf(yaml, sizeof yaml, "%soptimizer_offload: %s\nembedding_offload: %s\n", k_yaml, where, where);
    size_t len = 0;
    FILE *out = log ? open_memstream(log, &len) : NULL;
    int rc = ct_stack_train_log(model, g_data, yaml, wd, be, resume, stop_after, l, res, out);
    if (out) fclose(out);
    return rc;
}

static bool same_adapter(const char *run_a, const char *run_b, const char *which) {
    char a[CT_PATH_MAX], b[CT_PATH_MAX], ra[256], rb[256];
    snprintf(ra, sizeof ra, "%s/%s/adapter_model.safetensors", run_a, which);
    snprintf(rb, sizeof rb, "%s/%s/adapter_model.safetensors", run_b, which);
    work_path(a, ra), work_path(b, rb);
    return ct_test_same_file(a, b);
}

/* On be: "<tag>-dev" with both options none; "<tag>-host" with both cpu,
 * stopped at 3 (inside the window 2..3) and resumed with both none; with
 * swap, "<tag>-swap" resumed with both cpu from "<tag>-dev"'s iteration-2
 * checkpoint (on cuda-emu the optimizer's unit test covers that direction:
 * the emulated runs are the slow part). */
static void test_train(const ct_backend *be, const char *tag, bool swap) {
    char dev[64], host[64], swap_dir[64], from[CT_PATH_MAX];
    snprintf(dev, sizeof dev, "%s-dev", tag), snprintf(host, sizeof host, "%s-host", tag);
    snprintf(swap_dir, sizeof swap_dir, "%s-swap", tag);
    ct_stack_losses ld = {0}, lh = {0}, ls = {0};
    ct_train_result rd, r1, rh, rs;
    char *log_dev = NULL, *log_host = NULL;
    CHECK_OK(train(g_model, be, dev, "none", NULL, 0, &ld, &rd, &log_dev));
    CHECK_OK(train(g_model, be, host, "cpu", NULL, 3, &lh, &r1, &log_host));
    CHECK(r1.stopped && r1.iters_done == 3, "%s: first part %lld iterations", be->name, (long long)r1.iters_done);
    CHECK_OK(train(g_model, be, host, "none", "auto", 0, &lh, &rh, NULL));
    CHECK(rd.iters_done == 4 && rh.iters_done == 4, "%s: iterations %lld %lld", be->name, (long long)rd.iters_done,
          (long long)rh.iters_done);
    CHECK(ld.n == 4 && lh.n == 4 && memcmp(ld.loss, lh.loss, 4 * sizeof(double)) == 0,
          "%s: losses with both offloads (resumed without) differ", be->name);
    CHECK(isfinite(rd.eval_loss) && rd.eval_loss == rh.eval_loss, "%s: eval loss %.17g, %.17g", be->name,
          rd.eval_loss, rh.eval_loss);
    CHECK(same_adapter(dev, host, "adapter"), "%s: final adapters differ", be->name);
    if (swap) {
        snprintf(from, sizeof from, "%s/%s/iter_2.h5", g_dir, dev);
        CHECK_OK(train(g_model, be, swap_dir, "cpu", from, 0, &ls, &rs, NULL));
        CHECK(rs.iters_done == 4 && ls.n == 4 && memcmp(ld.loss + 2, ls.loss + 2, 2 * sizeof(double)) == 0,
              "%s: losses resumed with both offloads differ", be->name);
        CHECK(rd.eval_loss == rs.eval_loss, "%s: eval loss %.17g, resumed with both offloads %.17g", be->name,
              rd.eval_loss, rs.eval_loss);
        CHECK(same_adapter(dev, swap_dir, "adapter"), "%s: final adapter resumed with both offloads differs",
              be->name);
    }
    for (int i = 0; i < 4; i++)
        printf("  iteration %d: loss %.9f (none) %.9f (cpu, then resumed with none) %.9f (resumed with cpu)\n", i,
               ld.loss[i], lh.loss[i], swap && i >= 2 ? ls.loss[i] : NAN);
    CHECK(same_adapter(dev, host, "iter_2_adapter"), "%s: iteration-2 adapters differ", be->name);
    /* what the logs say */
    if (be->device == CT_CPU) {
        CHECK(log_host && !strstr(log_host, "placement:") && strstr(log_host, "AdamW moments") &&
                  strstr(log_host, "on the host") && !strstr(log_host, "optimizer_offload"),
              "cpu log:\n%s", log_host ? log_host : "");
    } else {
        CHECK(log_host && strstr(log_host, "the embedding table (0.1 MiB) stays in host memory") &&
                  strstr(log_host, "in host memory (optimizer_offload)"), "%s log with offload:\n%s", be->name,
              log_host ? log_host : "");
        CHECK(log_dev && strstr(log_dev, "the embedding table included (embedding_offload: none)") &&
                  strstr(log_dev, "AdamW moments") && strstr(log_dev, be->name) &&
                  !strstr(log_dev, "optimizer_offload"), "%s log without offload:\n%s", be->name,
              log_dev ? log_dev : "");
    }
    printf("%s training (nf4, checkpointing, dropout, accumulation 2, clipping, eval hook): with both offloads "
           "(stopped mid-window, resumed without)%s: 4 losses, eval loss %.9f and adapter bytes equal\n", be->name,
           swap ? " and resumed with both from a run without" : "", rd.eval_loss);
    free(log_dev), free(log_host);
}

/* A model with tie_word_embeddings (random, bf16, the fixture's shape and
 * tokenizer): its table stays on the device; with_log: two training
 * iterations whose log says why. */
static void test_tied(const ct_backend *be, bool with_log) {
    ct_model_options o = {.backend = be};
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(g_tied, &o, &m));
    if (m) {
        ct_model_memory mem;
        ct_model_get_memory(m, &mem);
        CHECK(!mem.embedding_on_host && mem.host_bytes == 0 &&
                  ct_model_decoder(m)->tok_embeddings->device == be->device &&
                  ct_model_decoder(m)->output.w == ct_model_decoder(m)->tok_embeddings,
              "%s, tied: embedding on host %d, %llu host bytes", be->name, mem.embedding_on_host,
              (unsigned long long)mem.host_bytes);
    }
    ct_model_free(m);
    if (!with_log) {
        printf("%s: a tied model keeps its embedding table on the device\n", be->name);
        return;
    }
    ct_stack_losses l = {0};
    ct_train_result r;
    char *log = NULL, name[64];
    snprintf(name, sizeof name, "%s-tied", be->name);
    CHECK_OK(train(g_tied, be, name, "cpu", NULL, 2, &l, &r, &log));
    CHECK(log && strstr(log, "tied to the output head (tie_word_embeddings)") && l.n == 2 && isfinite(l.loss[1]),
          "%s, tied: log:\n%s", be->name, log ? log : "");
    printf("%s: a tied model keeps its embedding table on the device (said in the log)\n", be->name);
    free(log);
}

/* Writes the tied model: the fixture's config with tie_word_embeddings. */
static void make_tied(void) {
    char src[CT_PATH_MAX + 16], cfg[CT_PATH_MAX], text[2048];
    snprintf(src, sizeof src, "%s/config.json", g_model);
    work_path(cfg, "tied_config.json");
    work_path(g_tied, "tied");
    FILE *f = fopen(src, "r");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = '\0';
    char *at = strstr(text, "\"tie_word_embeddings\": false");
    CHECK(at != NULL, "%s: no tie_word_embeddings: false", src);
    if (!at) return;
    memcpy(at, "\"tie_word_embeddings\": true ", 28);
    f = fopen(cfg, "w");
    CHECK(f && fputs(text, f) >= 0, "writing %s", cfg);
    if (f) fclose(f);
    ct_make_model_options mo = {.config = cfg, .out = g_tied, .dtype = "bf16", .tokenizer = g_model, .seed = 7};
    CHECK_OK(ct_make_model(&mo, NULL));
}

int main(void) {
    if (!ct_fixture("stories260k-internlm2/model.safetensors", g_model, sizeof g_model)) return CT_TEST_SKIP;
    ct_fixture("stories260k-internlm2", g_model, sizeof g_model);
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_test_offload.XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    work_path(g_data, "data.json");
    ct_stack_write_data(g_data);
    make_tied();
    const bool emu_wanted = ct_test_emu_model_runs("test_offload");
    const ct_backend *emu = emu_wanted ? ct_cuda_emu_backend() : NULL;
    char no_emu[256];
    snprintf(no_emu, sizeof no_emu, "%s", emu || !emu_wanted ? "" : ct_last_error());
    const ct_backend *grd = ct_guarded_backend();
    static ct_backend emu_f32; /* cuda-emu with f32 activations (its own are bf16) */
    if (emu) {
        emu_f32 = *emu;
        emu_f32.act_dtype = CT_F32;
    }
    double t0 = ct_now_s();
    if (grd) {
        test_forward(grd);
        test_generate(grd);
        test_train(grd, "guarded", true);
        test_tied(grd, true);
        printf("  (guarded: %.1f s)\n", ct_now_s() - t0);
    }
    if (emu) {
        t0 = ct_now_s();
        test_forward(&emu_f32);
        test_forward(emu);
        test_generate(emu);
        test_tied(emu, false);
        printf("  (cuda-emu eval and generation: %.1f s)\n", ct_now_s() - t0);
        t0 = ct_now_s();
        test_train(emu, "emu", false);
        printf("  (cuda-emu training: %.1f s)\n", ct_now_s() - t0);
    } else if (emu_wanted) {
        printf("cuda-emu skipped: %s\n", no_emu);
    }
    t0 = ct_now_s();
    test_train(ct_cpu_backend(), "cpu", true);
    printf("  (cpu: %.1f s)\n", ct_now_s() - t0);
    if (ct_test_failures == 0) ct_remove_tree(g_dir);
    else fprintf(stderr, "work files kept in %s\n", g_dir);
    return ct_test_finish();
}
