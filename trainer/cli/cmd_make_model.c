/* ctuner make-model: the flags of ct_make_model (trainer/model/make_model.h)
 * and its summary line. */
#include <stdio.h>
#include <time.h>

#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/model/make_model.h"

int ct_cmd_make_model(int argc, char **argv) {
    ct_make_model_options o = {.max_shard = "5GB"};
    const ct_argspec specs[] = {
        {"--config", CT_ARG_STR, &o.config, "CONFIG.json", "model shape: a Hugging Face InternLM2 config.json"},
        {"--out", CT_ARG_STR, &o.out, "DIR", "output model directory (must not exist or be empty)"},
        {"--seed", CT_ARG_INT, &o.seed, "N", "random seed (default 0)"},
        {"--dtype", CT_ARG_STR, &o.dtype, "DTYPE", "bf16, fp16 or fp32 (default: the config's torch_dtype, else fp32)"},
        {"--tokenizer", CT_ARG_STR, &o.tokenizer, "DIR", "copy tokenizer.model (+ its json files) from DIR"},
        {"--max-shard-size", CT_ARG_STR, &o.max_shard, "SIZE", "largest shard file, e.g. 2GB, 500MB (default 5GB)"},
    };
    ct_args a = {.usage = "ctuner make-model --config CONFIG.json --out DIR [--seed N] [--dtype bf16|fp32] "
                          "[--tokenizer DIR] [--max-shard-size 5GB]",
                 .summary = "Write a randomly initialised InternLM2 model of any shape (for tests and benchmarks).",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0])};
    CT_TRY(ct_args_parse(&a, argc, argv));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ct_make_model_report r;
    CT_TRY(ct_make_model(&o, &r));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("make-model: wrote %s: %lld parameters, %s, %lld layers, in %.2f s\n", o.out,
           (long long)r.n_params, r.torch_dtype, (long long)r.n_layers, secs);
    return CT_OK;
}
