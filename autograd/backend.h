/* The backend interface: memory functions plus one forward and one backward
 * kernel per op. The CPU backend (cpu/) is the reference; the CUDA backend
 * (cuda_kernels/) implements the same table. Ops (the ops folder) do shape checks and
 * tape bookkeeping and call these; kernels do the math only.
 *
 * Conventions for every kernel:
 * - all tensors live on the backend's device; activations and grads are f32
 *   on the CPU; frozen weights may be f32/bf16/f16 (nf4/fp4 via t->quant);
 * - backward kernels ACCUMULATE into grad tensors (+=); a NULL grad means
 *   "not needed": skip that work entirely;
 * - temporaries come from `scratch` and are released by the kernel with an
 *   arena mark/rewind before it returns;
 * - return 0 or a ct_status with the message set. */
#ifndef CT_BACKEND_H
#define CT_BACKEND_H

#include <stdint.h>

#include "arena.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A linear layer y = x·Wᵀ + scale·(drop(x)·Aᵀ)·Bᵀ with a frozen base W and an
 * optional LoRA pair. Owned by the model; the op never frees it. */
typedef struct ct_linear {
    ct_tensor *w;  /* [out, in] frozen: f32/bf16/f16 (nf4/fp4 with quant state) */
    ct_tensor *a;  /* [r, in] f32 trainable, or NULL for no LoRA */
    ct_tensor *b;  /* [out, r] f32 trainable, or NULL */
    float scale;   /* alpha / r, or alpha / sqrt(r) with rsLoRA */
    float dropout; /* probability of zeroing an input element of the LoRA path */
    uint64_t id;   /* stable per layer: with the tape's step seed, seeds the dropout mask */
    ct_dtype compute; /* the GEMMs' math: CT_F32 (0, the default: exact fp32) or CT_BF16
                       * (inputs rounded to bf16, products summed in fp32: bitsandbytes'
                       * compute dtype, PyTorch's bf16 autocast). With CT_BF16 lora_linear's
                       * LoRA GEMMs are bf16 too; A, B and their grads stay f32. */
} ct_linear;

/* Rotary embedding over x viewed as [T, H, head_dim]. Heads are taken in groups
 * of `group` consecutive heads of which the first `rotate_per_group` are rotated
 * and the rest passed through (InternLM2's wqkv layout: group = G + 2 with G
 * query heads and k rotated, v not; a plain [T,H,hd] tensor: group = 1, 1). */
enum { CT_ROPE_NONE = 0, CT_ROPE_LINEAR = 1, CT_ROPE_DYNAMIC = 2 };
typedef struct {
    int head_dim;          /* even */
    int group, rotate_per_group;
    double theta;          /* rope_theta */
    int scaling;           /* CT_ROPE_NONE / LINEAR / DYNAMIC */
    double factor;         /* rope_scaling.factor */
    int64_t max_pos;       /* max_position_embeddings (dynamic NTK) */
    int64_t seq_len;       /* sequence length the dynamic rule looks at */
} ct_rope_params;

/* Causal attention on InternLM2's packed wqkv output: per token, for each KV
 * head g: G query heads, then k_g, then v_g, each head_dim wide. */
typedef struct {
    int n_kv_heads;
    int group;       /* G = query heads per KV head */
    int head_dim;
    float scale;     /* 1/sqrt(head_dim) */
    ct_dtype compute; /* the block products' math: CT_F32 (0, default) or CT_BF16 (inputs
                       * rounded to bf16, fp32 sums; softmax and lse stay fp32) */
} ct_attn_params;

typedef struct ct_backend {
    const char *name;
    ct_device device;

    /* --- memory --- */
    ct_allocator mem;
    int (*zero)(void *p, size_t bytes);
    int (*copy)(void *dst, const void *src, size_t bytes);           /* same device */
    int (*upload)(void *dst, const void *host_src, size_t bytes);    /* host -> device */
    int (*download)(void *host_dst, const void *src, size_t bytes);  /* device -> host */
    int (*sync)(void);

    /* --- ops --- */
    /* y[T,D] = table[ids[t], :]; table [V,D] any float dtype. */
    int (*embedding_fwd)(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y);
    /* dtable[V,D] += scatter(dy) (f32 table only). */
    int (*embedding_bwd)(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable);

    /* y = x * rsqrt(mean(x^2) + eps) * w over the last dim; rstd [rows] saved. */
    int (*rmsnorm_fwd)(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                       ct_tensor *rstd);
    int (*rmsnorm_bwd)(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                       const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw);

    /* y = rope(x) at positions pos (i32 [T]); x, y [T, H*head_dim]; y may equal x. */
    int (*rope_fwd)(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *y);
    int (*rope_bwd)(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *dx);

    /* out [T, Hq*hd] from qkv [T, Hkv*(G+2)*hd]; seg (i32 [T], contiguous runs) or
     * NULL for one sequence; lse [Hq, T] saved for backward. Blockwise: no T×T
     * buffer per head. */
    int (*attention_fwd)(const ct_tensor *qkv, const ct_tensor *seg, const ct_attn_params *p,
                         ct_tensor *out, ct_tensor *lse, ct_arena *scratch);
    int (*attention_bwd)(const ct_tensor *qkv, const ct_tensor *seg, const ct_attn_params *p,
                         const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout,
                         ct_tensor *dqkv, ct_arena *scratch);

    /* Cached attention for generation (KV cache [max_len, Hkv, hd] f32 per layer):
     * copies the k/v of qkv [T, Hkv*(G+2)*hd] (tokens at positions p0..p0+T-1,
     * already rotated) into cache rows p0.., then, when out != NULL, out
     * [T, Hq*hd] = causal attention of each token's queries against cache rows
     * [0, p0+t]. No grad, nothing saved. */
    int (*attention_decode)(const ct_tensor *qkv, int64_t p0, const ct_attn_params *p,
                            ct_tensor *k_cache, ct_tensor *v_cache, ct_tensor *out,
                            ct_arena *scratch);

    /* y = silu(gate) * up. */
    int (*swiglu_fwd)(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y);
    int (*swiglu_bwd)(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                      ct_tensor *dgate, ct_tensor *dup);

    /* y += alpha * x (n elements, f32): residual add and its backward. */
    int (*axpy)(float alpha, const ct_tensor *x, ct_tensor *y);
    /* y = a + b (n elements, f32; y may be a or b): the residual add in one
     * pass. Optional: NULL means the op does copy(y, a) + axpy(1, b, y). */
    int (*add_fwd)(const ct_tensor *a, const ct_tensor *b, ct_tensor *y);

    /* y [T,out] = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ; u [T,r] = drop(x)·Aᵀ saved (NULL when
     * lin->a is NULL, or when nothing is saved: then a scratch temporary). `seed`
     * picks the dropout mask (ct_uniform(seed, t*in+i) < p, kept ones × 1/(1-p));
     * lin->dropout is what applies (the op zeroes it outside training). y NULL:
     * only u is computed (a checkpoint recomputation that never reads y). */
    int (*lora_linear_fwd)(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y,
                           ct_tensor *u, ct_arena *scratch);
    int (*lora_linear_bwd)(const ct_tensor *x, const ct_linear *lin, uint64_t seed,
                           const ct_tensor *u, const ct_tensor *dy, ct_tensor *dx, ct_tensor *da,
                           ct_tensor *db, ct_arena *scratch);

    /* Cross-entropy of logits = x·Wᵀ (+ LoRA) against labels (i32 [T], -100 =
     * ignored), computed over chunks so T×V logits never exist whole.
     * Writes the sum of NLL over trained tokens to *nll_sum and their count to
     * *n_trained. When dx/da/db are non-NULL, accumulates the gradient of
     * (grad_scale * nll_sum) into them in the same pass. A label outside [0, V)
     * other than -100 is CT_EINPUT naming its position. With head->dropout > 0 the
     * LoRA input mask is ct_uniform(head->id, t*D+i) < p: the op passes a copy of
     * the head whose id is already the mixed step seed. */
    int (*linear_xent_fwd)(const ct_tensor *x, const ct_linear *head, const ct_tensor *labels,
                           float grad_scale, double *nll_sum, int64_t *n_trained,
                           ct_tensor *dx, ct_tensor *da, ct_tensor *db, ct_arena *scratch);
} ct_backend;

/* The CPU backend: always available. */
const ct_backend *ct_cpu_backend(void);

/* The CUDA backend, or NULL when this build has none or no GPU is usable
 * (message set saying why). Never crashes when the driver is missing. */
const ct_backend *ct_cuda_backend(void);

#ifdef __cplusplus
}
#endif
#endif
