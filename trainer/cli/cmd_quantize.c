/* ctuner quantize: write a full-precision model as a bitsandbytes 4-bit
 * checkpoint (the layout transformers saves after load_in_4bit; see
 * trainer/io/bnb_write.h) that transformers + bitsandbytes and ctuner load without
 * re-quantizing. It is trainer/model/merge.h without an adapter. Ctrl-C stops at the
 * next tensor and removes the temp directory (exit 1, nothing written). */
#include <stdio.h>
#include <sys/resource.h>

#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/merge_cli.h"
#include "trainer/io/safetensors.h"

/* The flags into merge options (CT_EINPUT naming the flag when one is bad). */
static int read_flags(const char *qtype, bool dq, bool no_dq, int64_t blocksize, const char *dtype,
                      const char *shard, ct_merge_options *o) {
    int q = ct_quant_type_from_name(qtype);
    if (q < 0) return ct_errorf(CT_EINPUT, "--quant-type '%s' is not nf4 or fp4", qtype);
    o->quant_type = (ct_quant_type)q;
    if (dq && no_dq) return ct_errorf(CT_EINPUT, "--double-quant and --no-double-quant contradict each other");
    o->no_double_quant = no_dq;
    if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)))
        return ct_errorf(CT_EINPUT, "--blocksize %lld is not a power of two in 32..4096 (bitsandbytes uses 64)",
                         (long long)blocksize);
    o->blocksize = (int)blocksize;
    if (dtype) CT_TRY(ct_merge_parse_dtype(dtype, o));
    return ct_st_parse_size(shard, &o->max_shard_bytes);
}

int ct_cmd_quantize(int argc, char **argv) {
    const char *out = NULL, *qtype = "nf4", *dtype = NULL, *shard = "2GB";
    bool dq = false, no_dq = false, qout = false;
    int64_t blocksize = CT_QUANT_DEFAULT_BLOCKSIZE;
    const ct_argspec specs[] = {
        {"--out", CT_ARG_STR, &out, "OUT_DIR", "output model directory (must not exist or be empty)"},
        {"--quant-type", CT_ARG_STR, &qtype, "TYPE", "nf4 or fp4 (default nf4)"},
        {"--double-quant", CT_ARG_FLAG, &dq, NULL, "quantize the absmax values too (the default)"},
        {"--no-double-quant", CT_ARG_FLAG, &no_dq, NULL, "keep one fp32 absmax per block"},
        {"--blocksize", CT_ARG_INT, &blocksize, "N", "elements per absmax block, a power of two in 32..4096 (64)"},
        {"--quantize-output", CT_ARG_FLAG, &qout, NULL, "also quantize the output head (default: kept unquantized)"},
        {"--max-shard-size", CT_ARG_STR, &shard, "SIZE", "largest shard file, e.g. 2GB, 500MB (default 2GB)"},
        {"--dtype", CT_ARG_STR, &dtype, "DTYPE", "bf16, fp16 or fp32 for the unquantized tensors and the "
                                                 "quant_state dtype (default: the model's)"},
    };
    ct_args a = {.usage = "ctuner quantize MODEL_DIR --out OUT_DIR [--quant-type nf4|fp4] [--no-double-quant] "
                          "[--blocksize 64] [--quantize-output] [--max-shard-size 2GB] [--dtype bf16|fp16|fp32]",
                 .summary = "Write a full-precision model as a bitsandbytes 4-bit checkpoint (block linears in "
                            "NF4/FP4) that transformers + bitsandbytes and ctuner load as it is.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0]),
                 .min_positional = 1,
                 .max_positional = 1};
    CT_TRY(ct_args_parse(&a, argc, argv));
    if (!out) return ct_errorf(CT_EINPUT, "--out OUT_DIR is required (see 'ctuner quantize --help')");
    ct_merge_options o = {.base_dir = a.positional[0], .out_dir = out, .dtype = -1, .quantize = true,
                          .quantize_output = qout};
    CT_TRY(read_flags(qtype, dq, no_dq, blocksize, dtype, shard, &o));
    ct_merge_report r;
    CT_TRY(ct_merge_until_signal(&o, &r));
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("quantize: wrote %s: %d weights to %s (%s, blocksize %d, head %s); %.2f MB -> %.2f MB (%.2fx); %s, "
           "%d shard%s, %d other files; %.2f s, peak RSS %.1f MiB\n",
           out, r.n_quantized, ct_quant_type_name(o.quant_type), o.no_double_quant ? "no double quant" : "double quant",
           o.blocksize, qout ? "quantized" : "unquantized", (double)r.src_bytes / 1e6, (double)r.bytes / 1e6,
           r.bytes ? (double)r.src_bytes / (double)r.bytes : 0.0, ct_merge_dtype_label(r.dtype), r.n_shards,
           r.n_shards == 1 ? "" : "s", r.n_files, r.seconds, (double)ru.ru_maxrss / 1024.0);
    return CT_OK;
}
