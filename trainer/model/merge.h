/* Merging a LoRA adapter into its base model (docs/DESIGN.md, "LoRA and PEFT adapters"), or, with
 * no adapter, rewriting a model (ctuner quantize: a bitsandbytes 4-bit
 * checkpoint of a full-precision model). For every
 * targeted linear W' = W + scale · B · A, computed in fp32 from the base's own
 * full-precision weights, then cast once to the output dtype; every other tensor
 * is copied byte for byte (converted when the output dtype differs). The result
 * is a Hugging Face model directory: config.json (torch_dtype = the output
 * dtype), model.safetensors or shards + model.safetensors.index.json,
 * generation_config.json, tokenizer files and custom-code *.py copied.
 *
 * With quantize the block linears (wqkv, wo, w1, w3, w2; the head too with
 * quantize_output) are written as a bitsandbytes 4-bit checkpoint (nf4 or fp4,
 * double quantization unless no_double_quant, blocks of 64 unless blocksize),
 * as transformers saves a model loaded with load_in_4bit (docs/DESIGN.md, "bitsandbytes 4-bit checkpoints";
 * trainer/io/bnb_write.h): the merged weight is cast to the output dtype and
 * quantized from that, so the file equals what quantize-on-load of the
 * unquantized merge gives. Embeddings, norms and (by default) the head stay in
 * the output dtype; config.json gains quantization_config.
 *
 * Memory: the base is read through the mmap and the output streamed shard by
 * shard; the peak is the adapter (f32) plus one merged tensor in f32 (plus,
 * with quantization, the absmax arrays of one output shard, 1/32 of its size
 * (1/8 without double quantization); the shard's 4-bit codes wait in an
 * unlinked scratch file in the temp directory, because a shard's f32 parts are
 * written before its u8 parts).
 *
 * Refused with CT_EINPUT before anything is written: a quantized base (a
 * bitsandbytes checkpoint cannot be merged or re-quantized exactly), an
 * adapter that does not fit the base (shapes, r, target modules:
 * trainer/model/adapter.h checks), LoRA on a tied output head, an OUT_DIR that
 * exists and is not empty, a bad 4-bit type or blocksize. The output is
 * built in a temp directory beside OUT_DIR and renamed into place at the end;
 * on any failure the temp directory is removed and OUT_DIR is not created. */
#ifndef CT_MERGE_H
#define CT_MERGE_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/quant.h"
#include "autograd/tensor.h"

#define CT_MERGE_DEFAULT_SHARD 2000000000ull /* "2GB", as transformers' default */

/* Called before each output tensor is produced, with the bytes written so far
 * and in all. A non-zero return aborts the merge with that status (the
 * callback sets the message): Ctrl-C handling, progress, injected failures. */
typedef int (*ct_merge_progress_fn)(void *ctx, const char *tensor, uint64_t done_bytes, uint64_t total_bytes);

typedef struct {
    const char *base_dir;     /* full-precision HF model directory */
    const char *adapter_dir;  /* PEFT adapter directory (ours, PEFT's, XTuner's);
                                 NULL = none: the base rewritten (quantized, converted) */
    const char *out_dir;      /* must not exist, or be an empty directory */
    int dtype;                /* CT_F32 / CT_BF16 / CT_F16, or -1 = the base's dtype */
    uint64_t max_shard_bytes; /* 0 = CT_MERGE_DEFAULT_SHARD */
    bool quantize;            /* write the block linears as bitsandbytes 4-bit */
    ct_quant_type quant_type; /* CT_QUANT_NF4 (default) or CT_QUANT_FP4 */
    int blocksize;            /* 4-bit block: 0 = 64; a power of two in 32..4096 */
    bool no_double_quant;     /* plain f32 absmax instead of bnb's double quantization */
    bool quantize_output;     /* the output head too (not when tied to the embeddings) */
    ct_merge_progress_fn progress; /* may be NULL */
    void *progress_ctx;
} ct_merge_options;

/* What a merge did. */
typedef struct {
    ct_dtype dtype;          /* output dtype */
    int r;                   /* adapter rank */
    float scale;             /* alpha / r (or alpha / sqrt(r) with rsLoRA) */
    int n_merged;            /* weights that got W + scale·B·A */
    int n_copied;            /* tensors copied byte for byte */
    int n_converted;         /* tensors only converted to the output dtype */
    int n_quantized;         /* weights written as 4-bit */
    int n_files;             /* non-weight files copied (tokenizer, generation config, *.py) */
    int n_shards;            /* safetensors files written */
    uint64_t src_bytes;      /* tensor bytes of the base */
    uint64_t bytes;          /* tensor bytes written */
    double seconds;          /* wall time */
} ct_merge_report;

/* Runs the merge (see above). report may be NULL. CT_EINPUT before anything is
 * written for a bad option (type, blocksize, dtype) as for a refused input. */
int ct_merge(const ct_merge_options *o, ct_merge_report *report);

#endif
