/* A randomly initialised InternLM2 of any shape, written as a Hugging Face
 * model directory (what `ctuner make-model` runs; make_model.c says how the
 * values are drawn), optionally straight to a bitsandbytes 4-bit checkpoint. */
#ifndef CT_MAKE_MODEL_H
#define CT_MAKE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    const char *config;    /* a Hugging Face InternLM2 config.json (required) */
    const char *out;       /* output directory: must not exist, or be empty (required) */
    const char *dtype;     /* "bf16", "fp16", "fp32" (aliases too); NULL: the config's
                            * torch_dtype, else fp32 */
    const char *tokenizer; /* a directory to copy tokenizer.model (+ json files) from, or NULL */
    const char *max_shard; /* largest shard file, e.g. "2GB"; NULL: "5GB" */
    const char *quantize;  /* "nf4" or "fp4": the block linears written as a bitsandbytes 4-bit
                            * checkpoint (trainer/io/bnb_write.h), each quantized as it is
                            * generated; the same files as make-model, then `ctuner quantize`
                            * with the same shard size. NULL: full precision */
    int blocksize;         /* 4-bit elements per absmax block (0: 64) */
    bool no_double_quant;  /* keep one fp32 absmax per block */
    int64_t seed;
} ct_make_model_options;

typedef struct {
    int64_t n_params, n_layers;
    int n_quantized;         /* weights written as 4-bit (0 without quantize) */
    const char *torch_dtype; /* static string: "float32", "bfloat16" or "float16" */
} ct_make_model_report;

/* Writes the model (built under a temporary name beside `out`, renamed into
 * place; nothing is left behind on failure). Every pointer is borrowed;
 * report may be NULL. CT_EINPUT for bad options or an unusable config, before
 * anything is written; CT_ERUNTIME for I/O failures. */
int ct_make_model(const ct_make_model_options *o, ct_make_model_report *report);

#endif
