/* The backend interface: memory functions, one forward and one backward
 * kernel per op, the optimizer's entries, and a capability query. The CPU
 * backend (cpu/) is the reference; the CUDA backend (cuda_kernels/) and the
 * tests' guarded backend (guarded/) implement the same table. Ops (the ops
 * folder) do shape checks and tape bookkeeping and call these; kernels do the
 * math only. docs/DESIGN.md has the whole contract ("The backend interface")
 * and the checklists for adding an op or a kernel ("Checklists").
 *
 * Conventions for every kernel:
 * - all tensors live on the backend's device: code above the backend never
 *   reads or writes their memory except through upload/download (the guarded
 *   backend enforces this in the tests);
 * - activations and their grads are in the backend's act_dtype (f32 on the
 *   CPU); statistics (rmsnorm's rstd, attention's lse, the loss) are f32;
 *   frozen weights may be f32/bf16/f16 (nf4/fp4 via t->quant); LoRA weights,
 *   their grads and the optimizer state are f32;
 * - backward kernels ACCUMULATE into grad tensors (+=); a NULL grad means
 *   "not needed": skip that work entirely;
 * - temporaries come from `scratch` and are released by the kernel with an
 *   arena mark/rewind before it returns;
 * - return 0 or a ct_status with the message set.
 * A NULL entry is an op the backend lacks: ct_backend_require (below) turns
 * its use into a CT_ERUNTIME naming the op and the backend, never a call. */
#ifndef CT_BACKEND_H
#define CT_BACKEND_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "arena.h"
#include "mem_track.h"
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

/* The base of the frequencies (the CPU's and the GPU's). Dynamic NTK as in
 * HF's InternLM2DynamicNTKScalingRotaryEmbedding: only when the sequence is
 * longer than max_position_embeddings,
 *   base = theta * ((factor * len / max_pos) - (factor - 1)) ^ (hd / (hd - 2)).
 * The op checks head_dim > 2 whenever this branch applies. */
static inline double ct_rope_base(const ct_rope_params *p) {
    if (p->scaling == CT_ROPE_DYNAMIC && p->seq_len > p->max_pos) {
        double d = (double)p->head_dim;
        double r = p->factor * (double)p->seq_len / (double)p->max_pos - (p->factor - 1.0);
        return p->theta * pow(r, d / (d - 2.0));
    }
    return p->theta;
}

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

/* The ops a backend may offer (ct_backend_supports). Each names the entries
 * it needs: an op is supported when all of them are non-NULL and the
 * backend's supports_op (if any) accepts the dtypes asked about. */
typedef enum {
    CT_OP_EMBEDDING,        /* embedding_fwd (the op also needs embedding_bwd for a trainable
                             * table and refuses one without it) */
    CT_OP_RMSNORM,          /* rmsnorm_fwd, rmsnorm_bwd (add_rmsnorm_fwd optional) */
    CT_OP_ROPE,             /* rope_fwd, rope_bwd */
    CT_OP_ATTENTION,        /* attention_fwd, attention_bwd */
    CT_OP_ATTENTION_DECODE, /* attention_decode */
    CT_OP_SWIGLU,           /* swiglu_fwd, swiglu_bwd */
    CT_OP_ADD,              /* axpy (add_fwd optional) */
    CT_OP_LORA_LINEAR,      /* lora_linear_fwd, lora_linear_bwd */
    CT_OP_LINEAR_XENT,      /* linear_xent_fwd */
    CT_OP_ADAMW,            /* adamw_update */
    CT_OP_GRAD_NORM,        /* sum_squares, scale: global norm and clipping */
    CT_OP_COUNT
} ct_op_id;

/* "embedding", "rmsnorm", ...: the names messages and `ctuner info` use. */
const char *ct_op_name(ct_op_id op);

/* What an op is asked to run with. Fields that do not apply to the op are
 * ignored; CT_DTYPE_COUNT means "any" (do not ask). */
typedef struct {
    ct_dtype weight;  /* frozen weight storage: f32/bf16/f16/nf4 (lora_linear, linear_xent,
                       * embedding table, rmsnorm weight) */
    ct_dtype compute; /* GEMM / block-product math: CT_F32 or CT_BF16 */
} ct_op_query;

/* AdamW's per-step scalars, computed on the host in double (as torch does
 * from Python floats) and used as fp32 by the kernel; see trainer/optim/adamw.h
 * for the update they define. */
typedef struct {
    float decay;     /* 1 - lr·weight_decay (applied only when use_decay) */
    float w1;        /* 1 - beta1: the lerp weight of the first moment */
    float b2, w2;    /* beta2, 1 - beta2 */
    float neg_step;  /* -lr / (1 - beta1^t) */
    float bc2_sqrt;  /* sqrt(1 - beta2^t) */
    float eps;
    int use_decay;   /* weight_decay != 0 */
} ct_adamw_scalars;

/* One tensor of a multi-tensor optimizer call: raw pointers into this
 * backend's memory (the list itself is host memory, borrowed for the call). */
typedef struct {
    float *p;       /* [n] parameter */
    const float *g; /* [n] its grad */
    float *m, *v;   /* [n] its AdamW moments */
    int64_t n;
} ct_adamw_slot;

typedef struct ct_backend {
    const char *name;
    ct_device device;
    ct_dtype act_dtype;      /* activations and their grads between ops: CT_F32 on the
                              * CPU (the GPU backend will use CT_BF16 with fp32
                              * statistics); ops allocate their outputs in it */
    uint32_t compute_dtypes; /* bit (1u << dt) for each GEMM math it offers (CT_F32, CT_BF16) */
    uint32_t weight_dtypes;  /* bit (1u << dt) for each frozen-weight storage its linear
                              * kernels read (f32, bf16, f16, nf4) */
    /* Optional finer check (NULL: the masks above decide). */
    bool (*supports_op)(ct_op_id op, const ct_op_query *q);
    /* Optional: how this machine runs a compute dtype, one phrase for `ctuner
     * info` and the training log (e.g. the CPU's "AVX512-BF16"); NULL or a
     * NULL return: nothing to say. */
    const char *(*compute_note)(ct_dtype compute);

    /* --- memory --- */
    ct_allocator mem;
    int (*zero)(void *p, size_t bytes);
    int (*copy)(void *dst, const void *src, size_t bytes);           /* same device */
    int (*upload)(void *dst, const void *host_src, size_t bytes);    /* host -> device */
    int (*download)(void *host_dst, const void *src, size_t bytes);  /* device -> host */
    int (*sync)(void);
    /* What mem holds (current, peak, allocations), from its own tracker
     * (mem_track.h); with reset_peak the peak restarts from current. Optional:
     * NULL means the backend does not count. */
    ct_mem_usage (*mem_usage)(int reset_peak);
    /* Bytes mem could still allocate (the CPU: host_mem.h; CUDA: the free
     * device memory), for the trainer's check of the memory plan before it
     * allocates. Optional: NULL, or an error, means unknown (no check). */
    int (*mem_available)(uint64_t *bytes);
    /* Staged uploads: the next batch copied in while the device computes.
     * Optional (all four or none; NULL: callers upload synchronously).
     * Two slots (0, 1), each a page-locked host buffer the backend owns:
     * - stage_host(slot, bytes): waits until the slot's last upload has been
     *   copied, then returns its buffer (at least bytes; grown when smaller,
     *   so only the first calls allocate); NULL with the message set;
     * - stage_upload(slot, dst, bytes): copies the buffer's first bytes to
     *   device memory dst on a copy stream, after the device work queued
     *   before the slot's last stage_fence; returns at once;
     * - stage_wait(slot): device work queued after this call waits for the
     *   slot's upload;
     * - stage_fence(slot): the device work queued so far is the last to read
     *   the slot's device buffer (the next upload into it must not overwrite
     *   what that work still reads).
     * stage_release frees the buffers (after the uploads complete). */
    void *(*stage_host)(int slot, size_t bytes);
    int (*stage_upload)(int slot, void *dst, size_t bytes);
    int (*stage_wait)(int slot);
    int (*stage_fence)(int slot);
    void (*stage_release)(void);

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
    /* sum = a + b, then y = rmsnorm(sum)·w as rmsnorm_fwd (rstd [rows] or NULL),
     * in one pass over each row: a residual add and the norm that reads it.
     * sum is rounded to the activation dtype before the norm reads it, so sum,
     * y and rstd equal add_fwd then rmsnorm_fwd's bit for bit. a, b, sum, y
     * [R, D] activations; sum may be a or b, y is none of them. Optional: NULL
     * means ct_add_rmsnorm runs ct_add then ct_rmsnorm (the same values). */
    int (*add_rmsnorm_fwd)(const ct_tensor *a, const ct_tensor *b, const ct_tensor *w, float eps,
                           ct_tensor *sum, ct_tensor *y, ct_tensor *rstd);

    /* y = rope(x) at positions pos (i32 [T]); x, y [T, H*head_dim]; y may equal x. */
    int (*rope_fwd)(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *y);
    int (*rope_bwd)(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *dx);

    /* out [T, Hq*hd] from qkv [T, Hkv*(G+2)*hd]; runs (i32 [n_runs + 1], the
     * boundaries of the packed samples, ct_segment_runs in ops.h; made and
     * validated on the host) or NULL for one sequence; lse [Hq, T] saved for
     * backward. Blockwise: no T×T buffer per head. */
    int (*attention_fwd)(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                         ct_tensor *out, ct_tensor *lse, ct_arena *scratch);
    int (*attention_bwd)(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
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

    /* --- optimizer: f32 tensors on this device --- */
    /* AdamW over n tensors (multi-tensor): per element, in torch's order,
     *   p *= decay (when use_decay); m = lerp(m, g, w1); v = b2·v + w2·g²;
     *   p += neg_step · m / (sqrt(v) / bc2_sqrt + eps).
     * Element-wise: the same bits for any thread or block count. */
    int (*adamw_update)(const ct_adamw_scalars *s, const ct_adamw_slot *slots, size_t n);
    /* sums[i] = Σ x_i[j]² in double for each of n tensors x_i [ns[i]] (host
     * array out), in a fixed order that does not depend on the thread count
     * (the global grad norm is sqrt of the sum of sums in list order). */
    int (*sum_squares)(const float *const *xs, const int64_t *ns, size_t n, double *sums);
    /* x_i *= c for each of n tensors (gradient clipping). */
    int (*scale)(float c, float *const *xs, const int64_t *ns, size_t n);
} ct_backend;

/* CT_OK for the compute dtypes ops and kernels know (CT_F32, CT_BF16);
 * otherwise CT_EINPUT "<what>: compute dtype X: only float32 and bfloat16 are
 * offered" (no prefix when what is NULL). Whether a backend offers one is
 * ct_backend_supports' question. */
int ct_compute_dtype_check(ct_dtype compute, const char *what);

/* dst [numel(t)] = t's values as f32 (t f32, bf16 or f16 in be's memory:
 * downloaded, then widened on the host). For results in the activation dtype
 * the host reads (logits). CT_ERUNTIME when out of memory or the download
 * fails. */
int ct_backend_download_f32(const ct_backend *be, float *dst, const ct_tensor *t);

/* True when `be` can run `op` with what q asks (NULL q: the entries only). */
bool ct_backend_supports(const ct_backend *be, ct_op_id op, const ct_op_query *q);

/* CT_OK when ct_backend_supports(be, op, q); otherwise CT_ERUNTIME with a
 * message naming the op, the backend and the dtypes asked for. Ops call it
 * before their first kernel call. */
int ct_backend_require(const ct_backend *be, ct_op_id op, const ct_op_query *q);

/* Writes what `be` offers to f, indented lines under the caller's heading:
 * activation dtype, compute dtypes, weight dtypes, the ops it offers and, on
 * a line of its own, those it lacks (`ctuner info`). */
void ct_backend_describe(const ct_backend *be, FILE *f);

/* The CPU backend: always available. */
const ct_backend *ct_cpu_backend(void);

/* The CUDA backend, or NULL when this build has none or no GPU is usable
 * (message set saying why). Never crashes when the driver is missing. */
const ct_backend *ct_cuda_backend(void);

/* The emulated CUDA backend ("cuda-emu", cuda_kernels/emu/): the CUDA
 * kernels' own sources run on the CPU by an emulator, for checking them
 * without a GPU (slow: not for training speed). NULL (message set) in builds
 * without nvcc. */
const ct_backend *ct_cuda_emu_backend(void);

/* For bench/bench_ops (cuda_kernels/bench_gemm.cu), each in a cuda and a
 * cuda-emu flavour; in builds without one, its pair returns CT_ERUNTIME /
 * NULL with the message set (no_cuda.c).
 * *_bench_gemm: ms per call of a plain cuBLASLt GEMM C[M,N] (f32) = A[M,K] ·
 * B[N,K]ᵀ with bf16 (bf16 != 0) or f32 inputs, fp32 accumulation, random
 * data, one warm-up then `iters` timed calls: the ceiling the GEMM-based
 * kernels are measured against. *_device_name: one line describing the device
 * (name, compute capability, SMs, memory), in static storage. */
int ct_cuda_bench_gemm(int64_t M, int64_t N, int64_t K, int bf16, int iters, double *ms_per_call);
int ct_cuda_emu_bench_gemm(int64_t M, int64_t N, int64_t K, int bf16, int iters,
                           double *ms_per_call);
const char *ct_cuda_device_name(void);
const char *ct_cuda_emu_device_name(void);

/* The guarded test backend (guarded/guarded_backend.c): the CPU kernels over
 * memory that is unreadable outside backend calls. NULL (message set) in
 * builds without CT_TEST_BACKENDS. */
const ct_backend *ct_guarded_backend(void);

/* The backend a user names (`device:` in a run config, `--device` on eval and
 * chat): "cpu", "cuda", "cuda-emu" (builds with nvcc: the emulator, for
 * checking), or "auto": the CPU until the CUDA backend has passed its parity
 * run on a GPU (no CUDA line has run on one yet). `what` prefixes messages
 * ("device", "--device"). An unknown name, or a backend this build or machine
 * lacks, is CT_EINPUT saying why and what to use instead. */
int ct_backend_by_name(const char *name, const char *what, const ct_backend **out);

/* Every backend this build has, available or not: names[i] and the backend
 * (NULL where unavailable, e.g. cuda without a GPU; why[i] then says why,
 * else ""). Returns the count (at most cap). For `ctuner info` and the
 * parity harness. */
int ct_backend_list(const char **names, const ct_backend **bes, const char **why, int cap);

#ifdef __cplusplus
}
#endif
#endif
