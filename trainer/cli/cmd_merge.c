/* ctuner merge: fold a LoRA adapter into its base model and write a Hugging
 * Face model directory (trainer/model/merge.h does the work). Ctrl-C (SIGINT/SIGTERM)
 * stops the merge at the next tensor and removes the temp directory, so no
 * partial output is left; the command then fails with exit code 1. */
#include <stdio.h>
#include <sys/resource.h>

#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/merge_cli.h"
#include "trainer/io/safetensors.h"

int ct_cmd_merge(int argc, char **argv) {
    const char *base = NULL, *adapter = NULL, *out = NULL, *dtype = NULL, *shard = "2GB", *quant = NULL;
    const ct_argspec specs[] = {
        {"--base", CT_ARG_STR, &base, "MODEL_DIR", "the full-precision base model (Hugging Face directory)"},
        {"--adapter", CT_ARG_STR, &adapter, "ADAPTER_DIR", "the LoRA adapter (PEFT directory: ours, PEFT's, XTuner's)"},
        {"--out", CT_ARG_STR, &out, "OUT_DIR", "output model directory (must not exist or be empty)"},
        {"--dtype", CT_ARG_STR, &dtype, "DTYPE", "bf16, fp16 or fp32 (default: the base's dtype)"},
        {"--max-shard-size", CT_ARG_STR, &shard, "SIZE", "largest shard file, e.g. 2GB, 500MB (default 2GB)"},
        {"--quantize", CT_ARG_STR, &quant, "nf4", "also write the block linears as a bitsandbytes 4-bit checkpoint "
                                                 "(nf4 or fp4, double quantization)"},
    };
    ct_args a = {.usage = "ctuner merge --base MODEL_DIR --adapter ADAPTER_DIR --out OUT_DIR [--dtype bf16|fp16|fp32] "
                          "[--max-shard-size 2GB] [--quantize nf4]",
                 .summary = "Merge a LoRA adapter into its base model (W + scale·B·A in fp32) and write a model "
                            "directory that transformers, vLLM and LMDeploy load.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0])};
    CT_TRY(ct_args_parse(&a, argc, argv));
    if (!base) return ct_errorf(CT_EINPUT, "--base MODEL_DIR is required (see 'ctuner merge --help')");
    if (!adapter) return ct_errorf(CT_EINPUT, "--adapter ADAPTER_DIR is required (see 'ctuner merge --help')");
    if (!out) return ct_errorf(CT_EINPUT, "--out OUT_DIR is required (see 'ctuner merge --help')");
    ct_merge_options o = {.base_dir = base, .adapter_dir = adapter, .out_dir = out, .dtype = -1};
    if (dtype) CT_TRY(ct_merge_parse_dtype(dtype, &o));
    CT_TRY(ct_st_parse_size(shard, &o.max_shard_bytes));
    if (quant) {
        int q = ct_quant_type_from_name(quant);
        if (q < 0) return ct_errorf(CT_EINPUT, "--quantize '%s' is not nf4 or fp4", quant);
        o.quantize = true;
        o.quant_type = (ct_quant_type)q;
    }
    ct_merge_report r;
    CT_TRY(ct_merge_until_signal(&o, &r));
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("merge: wrote %s: %d weights merged (r=%d, scale %g), %d copied, %d converted", out, r.n_merged, r.r,
           (double)r.scale, r.n_copied, r.n_converted);
    if (o.quantize) printf(", %d quantized to %s", r.n_quantized, ct_quant_type_name(o.quant_type));
    printf("; %s, %d shard%s, %.1f MB, %d other files; %.2f s, peak RSS %.1f MiB\n", ct_merge_dtype_label(r.dtype),
           r.n_shards, r.n_shards == 1 ? "" : "s", (double)r.bytes / 1e6, r.n_files, r.seconds,
           (double)ru.ru_maxrss / 1024.0);
    return CT_OK;
}
