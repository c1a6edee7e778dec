/* The memory plan of a training run: what the backend's allocator will hold
 * at the peak of a step, item by item, from config.json and the run config
 * alone (no weights read). `ctuner plan` prints it; the trainer sizes the
 * step's arenas from it (so they are one block each, allocated once before
 * the first step); tests hold it against the allocator's measured peak
 * (docs/DESIGN.md "Memory plan").
 *
 * The items follow the code that allocates them: ct_model_place (frozen
 * weights, one block), ct_lora_new (values and grads, one block each),
 * ct_adamw_new (moments, one block), the tape's main arena (the layer-input
 * checkpoints and the step's grads outside the layers) and scratch arena
 * (one layer's recomputation with its grads, and the kernels' temporaries).
 * The kernels' temporaries are bounded by the same chunk constants the
 * kernels use; they are the least exact part. */
#ifndef CT_MEM_PLAN_H
#define CT_MEM_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "trainer/config/config.h"
#include "trainer/io/hf_config.h"

typedef enum {
    CT_PLAN_QUANT,      /* 4-bit codes + absmax (+ double-quant tables) */
    CT_PLAN_W16,        /* frozen weights kept in their stored dtype (norms, embedding, head, unquantized linears) */
    CT_PLAN_LORA,       /* LoRA A/B, f32 */
    CT_PLAN_GRADS,      /* their grads, f32 */
    CT_PLAN_OPTIM,      /* AdamW moments, 2 x f32 (0 on the device with optimizer_offload: cpu) */
    CT_PLAN_INPUTS,     /* the batch's inputs in two staged slots (trainer/input_stage.h), with the embedding rows when the table is on the host */
    CT_PLAN_CKPT,       /* layer inputs kept for the backward (or every activation without checkpointing) */
    CT_PLAN_STEP,       /* the rest of the main arena: final norm, loss grads, the residual grads */
    CT_PLAN_RECOMPUTE,  /* one layer's recomputed activations and their grads (scratch) */
    CT_PLAN_WORKSPACE,  /* the largest kernel temporary of a layer's backward (scratch) */
    CT_PLAN_LOSS,       /* the chunked cross-entropy's temporaries (scratch) */
    CT_PLAN_SLACK,      /* alignment of every piece to 256 bytes */
    CT_PLAN_CONTEXT,    /* CUDA context and libraries, outside the allocator (GPU only; a typical figure) */
    CT_PLAN_N_ITEMS
} ct_plan_item;

/* The item's name as `ctuner plan` prints it. */
const char *ct_plan_item_name(ct_plan_item i);

typedef struct {
    const ct_hf_config *model; /* config.json of the base model */
    const ct_run_config *run;  /* the run (max_length, batch, LoRA, quantization, checkpointing) */
    bool gpu;                  /* the CUDA backends (bf16 activations) rather than the CPU (f32) */
    bool optimizer_on_host;    /* optimizer_offload: cpu (a no-op on the CPU backend) */
    bool embedding_on_host;    /* embedding_offload: cpu (GPU only; ignored when the head is tied to it) */
    int cpu_threads;           /* the CPU kernels' per-thread buffers; 0 = this machine's OpenMP threads */
} ct_plan_input;

typedef struct {
    uint64_t bytes[CT_PLAN_N_ITEMS];
    char detail[CT_PLAN_N_ITEMS][96]; /* what each item is made of, for the table */
    uint64_t total;                   /* all items */
    uint64_t allocator_total;         /* all items but CT_PLAN_CONTEXT: comparable to the allocator's peak */
    uint64_t main_arena;              /* CKPT + STEP (+ their slack): the tape's main arena */
    uint64_t scratch_arena;           /* RECOMPUTE + WORKSPACE + LOSS (+ slack): the scratch arena */
    uint64_t host_bytes;              /* what the offload options keep in host memory instead */
    int64_t tokens;                   /* rows per step: batch_size x max_length */
} ct_mem_plan;

/* The plan for `max_length` tokens per row (the run's own when <= 0).
 * CT_EINPUT when the model config and the run do not fit together (e.g. a
 * LoRA rank of 0). */
int ct_mem_plan_make(const ct_plan_input *in, int64_t max_length, ct_mem_plan *out);

/* The largest max_length (a multiple of 64, at most the model's
 * max_position_embeddings) whose plan total fits `budget` bytes; 0 when
 * none does. */
int64_t ct_mem_plan_max_length(const ct_plan_input *in, uint64_t budget);

/* The five linears of a decoder layer as LoRA targets, from config.json:
 * bit (CT_LORA_WQKV, _WO, _W1, _W3, _W2) and the [out, in] of each weight. */
void ct_plan_block_linears(const ct_hf_config *m, unsigned bit[5], int64_t out[5], int64_t in[5]);

#endif
