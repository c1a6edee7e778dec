/* ctuner make-model: the flags of ct_make_model (trainer/model/make_model.h)
 * and its summary line (with the peak RSS: a 4-bit 7B model is written in
 * about one weight's memory). */
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>

#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/model/make_model.h"

int ct_cmd_make_model(int argc, char **argv) {
    ct_make_model_options o = {.max_shard = "5GB"};
    int64_t blocksize = 0;
    const ct_argspec specs[] = {
        {"--config", CT_ARG_STR, &o.config, "CONFIG.json", "model shape: a Hugging Face InternLM2 config.json"},
        {"--out", CT_ARG_STR, &o.out, "DIR", "output model directory (must not exist or be empty)"},
        {"--seed", CT_ARG_INT, &o.seed, "N", "random seed (default 0)"},
        {"--dtype", CT_ARG_STR, &o.dtype, "DTYPE", "bf16, fp16 or fp32 (default: the config's torch_dtype, else fp32)"},
        {"--tokenizer", CT_ARG_STR, &o.tokenizer, "DIR", "copy tokenizer.model (+ its json files) from DIR"},
        {"--max-shard-size", CT_ARG_STR, &o.max_shard, "SIZE", "largest shard file, e.g. 2GB, 500MB (default 5GB)"},
        {"--quantize", CT_ARG_STR, &o.quantize, "nf4",
         "write the block linears as a bitsandbytes 4-bit checkpoint (nf4 or fp4), each quantized as it is "
         "generated: the files 'ctuner quantize' would write from the full-precision model"},
        {"--blocksize", CT_ARG_INT, &blocksize, "N", "with --quantize: elements per absmax block, a power of two in "
                                                     "32..4096 (64)"},
        {"--no-double-quant", CT_ARG_FLAG, &o.no_double_quant, NULL, "with --quantize: keep one fp32 absmax per block"},
    };
    ct_args a = {.usage = "ctuner make-model --config CONFIG.json --out DIR [--seed N] [--dtype bf16|fp32] "
                          "[--tokenizer DIR] [--max-shard-size 5GB] [--quantize nf4|fp4 [--blocksize 64] "
                          "[--no-double-quant]]",
                 .summary = "Write a randomly initialised InternLM2 model of any shape (for tests and benchmarks), "
                            "in full precision or as a bitsandbytes 4-bit checkpoint.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0])};
    CT_TRY(ct_args_parse(&a, argc, argv));
    if (blocksize < 0 || blocksize > 4096)
        return ct_errorf(CT_EINPUT, "--blocksize %lld is not a power of two in 32..4096 (bitsandbytes uses 64)",
                         (long long)blocksize);
    o.blocksize = (int)blocksize;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ct_make_model_report r;
    CT_TRY(ct_make_model(&o, &r));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("make-model: wrote %s: %lld parameters, %s, %lld layers", o.out, (long long)r.n_params, r.torch_dtype,
           (long long)r.n_layers);
    if (o.quantize)
        printf(", %d block linears in %s (%s, blocksize %d)", r.n_quantized, o.quantize,
               o.no_double_quant ? "no double quant" : "double quant", o.blocksize ? o.blocksize : 64);
    printf(", in %.2f s, peak RSS %.1f MiB\n", secs, (double)ru.ru_maxrss / 1024.0);
    return CT_OK;
}
