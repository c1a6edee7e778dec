/* The memory plan (trainer/plan/mem_plan.h) against what a training run's
 * allocator measures: a few iterations on the CPU and on the emulated CUDA
 * backend (bf16 activations, the GPU's layout), for two shapes:
 *  - the real stories260k InternLM2, QLoRA (nf4 + double quant), gradient
 *    checkpointing, LoRA dropout, fp32 compute, the optimizer and the
 *    embedding table in host memory (on cuda-emu; no-ops on the CPU);
 *  - a random wider model (hidden 128, FFN 352, 3 layers, GQA 4/2, bf16
 *    weights), plain LoRA on bf16 weights, no checkpointing, bf16 compute on
 *    cuda-emu (fp32 on the CPU, whose bf16 GEMM temporaries depend on the
 *    CPU's features).
 * The measured peak is the backend allocator's (dev_peak_mb) plus, on the CPU,
 * the frozen weights it reads in place (mapped or quantized in host memory);
 * the plan's allocator total must be within 10 % of it. The step's arenas are
 * sized by the plan: their high-water mark must use at least 85 % of them (the
 * plan is not padded) and no block beyond the planned two may have been added
 * (the plan did not fall short). And a warm step allocates nothing: the
 * allocator's count stays flat from the second iteration on (on the CPU from
 * the first). Prints the numbers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stack_fixture.h"
#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/make_model.h"
#include "trainer/train.h"

static char g_dir[64];

static const char *k_qlora =
    "max_length: 256\n"
    "pack_to_max_length: true\n"
    "batch_size: 1\n"
    "accumulative_counts: 1\n"
    "max_iters: 3\n"
    "warmup_ratio: 0\n"
    "evaluation_inputs: []\n"
    "quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true}\n"
    "lora: {r: 8, lora_alpha: 16, lora_dropout: 0.1}\n"
    "compute_dtype: float32\n"
    "gradient_checkpointing: true\n"
    "optimizer_offload: cpu\n"
    "save_steps: 0\n";

static const char *k_lora_bf16 =
    "max_length: 192\n"
    "pack_to_max_length: true\n"
    "batch_size: 2\n"
    "accumulative_counts: 1\n"
    "max_iters: 3\n"
    "warmup_ratio: 0\n"
    "evaluation_inputs: []\n"
    "quantization: {load_in_4bit: false}\n"
    "lora: {r: 16, lora_alpha: 16, lora_dropout: 0}\n"
    "gradient_checkpointing: false\n"
    "save_steps: 0\n";

/* The allocator's count of allocations after each iteration. */
typedef struct {
    const ct_backend *be;
    uint64_t n_allocs[8];
} alloc_counts;

static void on_iter(void *ctx, int64_t iter, double loss) {
    (void)loss;
    alloc_counts *a = ctx;
    if (iter >= 0 && iter < 8) a->n_allocs[iter] = a->be->mem_usage(0).n_allocs;
}

static void run_case(const char *label, const char *model, const char *data, const char *yaml,
                     const ct_backend *be) {
    char work[CT_PATH_MAX], text[4 * CT_PATH_MAX + 1024];
    snprintf(work, sizeof work, "%s/%s-%s", g_dir, label, be->name);
    /* bf16 compute only on the GPU layout: the CPU's bf16 GEMM temporaries depend
     * on the CPU's features (AVX512-BF16 or not), the plan's bound on them is rough */
    snprintf(text, sizeof text, "pretrained_model_name_or_path: '%s'\ndata_path: '%s'\nwork_dir: '%s'\n%s%s",
             model, data, work, yaml,
             strstr(yaml, "compute_dtype") ? "" : be->device == CT_CPU ? "compute_dtype: float32\n"
                                                                        : "compute_dtype: bfloat16\n");
    ct_run_config cfg;
    CHECK_OK(ct_config_parse(text, strlen(text), "test.yaml", NULL, 0, &cfg));
    alloc_counts ac = {.be = be};
    ct_train_options opt = {.cfg = &cfg, .quiet = true, .backend = be, .on_iter = on_iter, .cb_ctx = &ac};
    ct_train_result res;
    int rc = ct_train(&opt, &res);
    CHECK(rc == CT_OK, "%s on %s: %s", label, be->name, ct_last_error());
    ct_config_free(&cfg);
    if (rc) return;
    double measured = res.dev_peak_mb + res.weights_outside_mb;
    double err = (res.plan_mb - measured) / measured;
    printf("%-10s %-8s plan %8.2f MiB  measured %8.2f MiB (allocator %.2f + weights outside %.2f)  %+.1f%%;  "
           "arenas used %.2f of %.2f MiB\n", label, be->name, res.plan_mb, measured, res.dev_peak_mb,
           res.weights_outside_mb, 100.0 * err, res.arena_used_mb, res.arena_reserved_mb);
    CHECK(fabs(err) <= 0.10, "%s on %s: plan %.2f MiB vs measured %.2f MiB (%+.1f%%)", label, be->name,
          res.plan_mb, measured, 100.0 * err);
    /* iteration 0 may make the GPU libraries' lazy buffers (cuBLASLt's
     * workspace, the grad-norm sums: persistent); from then on nothing */
    CHECK(ac.n_allocs[2] == ac.n_allocs[1], "%s on %s: the step allocated (%llu allocations after iteration 1, "
          "%llu after 2)", label, be->name, (unsigned long long)ac.n_allocs[1], (unsigned long long)ac.n_allocs[2]);
    if (be->device == CT_CPU)
        CHECK(ac.n_allocs[2] == ac.n_allocs[0], "cpu: iteration 1 allocated (%llu -> %llu)",
              (unsigned long long)ac.n_allocs[0], (unsigned long long)ac.n_allocs[1]);
    CHECK(res.arena_used_mb >= 0.85 * res.arena_reserved_mb, "%s on %s: the arenas used %.2f of the %.2f MiB "
          "planned: the plan pads them", label, be->name, res.arena_used_mb, res.arena_reserved_mb);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_test_mem_plan.XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    char data[CT_PATH_MAX], stories[CT_PATH_MAX], wide[CT_PATH_MAX], cfgp[CT_PATH_MAX];
    snprintf(data, sizeof data, "%s/data.json", g_dir);
    ct_stack_write_data(data);
    snprintf(stories, sizeof stories, "%s/stories260k-internlm2", CT_FIXTURES);

    /* the wider random model, with the stories tokenizer */
    snprintf(cfgp, sizeof cfgp, "%s/wide.json", g_dir);
    FILE *f = fopen(cfgp, "w");
    CHECK_PTR(f);
    fprintf(f, "{\"architectures\": [\"InternLM2ForCausalLM\"], \"model_type\": \"internlm2\", \"bias\": false, "
               "\"hidden_size\": 128, \"intermediate_size\": 352, \"num_hidden_layers\": 3, "
               "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 512, "
               "\"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000, "
               "\"torch_dtype\": \"bfloat16\", \"tie_word_embeddings\": false}\n");
    fclose(f);
    snprintf(wide, sizeof wide, "%s/wide", g_dir);
    ct_make_model_options mo = {.config = cfgp, .out = wide, .tokenizer = stories, .seed = 5};
    CHECK_OK(ct_make_model(&mo, NULL));

    const bool emu_wanted = ct_test_emu_model_runs("test_mem_plan");
    const ct_backend *bes[2] = {ct_cpu_backend(), emu_wanted ? ct_cuda_emu_backend() : NULL};
    for (int b = 0; b < 2; b++) {
        if (!bes[b]) {
            if (emu_wanted) printf("cuda-emu: not in this build (%s): CPU only\n", ct_last_error());
            continue;
        }
        run_case("qlora", stories, data, k_qlora, bes[b]);
        run_case("lora-bf16", wide, data, k_lora_bf16, bes[b]);
    }
    if (ct_test_failures == 0) ct_remove_tree(g_dir);
    else fprintf(stderr, "work files kept in %s\n", g_dir);
    return ct_test_finish();
}
