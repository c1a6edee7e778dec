/* CPU kernels (fp32 math, OpenMP + OpenBLAS), one file per op, gathered into
 * the CPU backend table in cpu_backend.c. Signatures: see backend.h. */
#ifndef CT_CPU_KERNELS_H
#define CT_CPU_KERNELS_H

#include "../backend.h"

/* What the CPU kernels offer (ct_backend's masks): the CPU table's and the
 * guarded backend's, which runs the same kernels. */
#define CT_CPU_COMPUTE_DTYPES ((1u << CT_F32) | (1u << CT_BF16))
#define CT_CPU_WEIGHT_DTYPES ((1u << CT_F32) | (1u << CT_BF16) | (1u << CT_F16) | (1u << CT_NF4))

/* Reads element i of a frozen float tensor (f32/bf16/f16) as f32. */
float ct_cpu_load(const ct_tensor *t, int64_t i);
/* Converts rows [r0, r0+n) of a frozen [rows, cols] weight (f32/bf16/f16) to f32
 * in dst [n, cols]; nf4/fp4 weights are dequantized (their ct_quant_state). */
int ct_cpu_weight_rows_f32(const ct_tensor *w, int64_t r0, int64_t n, float *dst);
/* The same rounded to bf16 bits (a bf16 weight is copied as stored): the
 * tiles of the bf16 GEMMs. */
int ct_cpu_weight_rows_bf16(const ct_tensor *w, int64_t r0, int64_t n, uint16_t *dst);

/* Rows of a [rows, cols] f32 buffer that fit in `bytes` (at least 1, at most
 * rows): how weight tiles and logits blocks are sized. */
int64_t ct_cpu_rows_within(size_t bytes, int64_t cols, int64_t rows);

int ct_cpu_axpy(float alpha, const ct_tensor *x, ct_tensor *y);
int ct_cpu_add_fwd(const ct_tensor *a, const ct_tensor *b, ct_tensor *y); /* cpu/add.c */
/* Frozen-weight GEMMs of lora_linear (cpu/lora_linear.c). W [N, K] is frozen
 * in any weight dtype: with compute CT_F32 an f32 W goes straight to sgemm,
 * others are converted per row tile into `scratch` (released on return); with
 * CT_BF16 the math is bf16 with fp32 sums (gemm_bf16.h).
 * ct_cpu_gemm_xwt: C [M, N] (row stride ldc) = alpha·X·Wᵀ + beta·C, X [M, K] (ldx).
 * ct_cpu_gemm_gw:  C [M, K] (row stride ldc) += alpha·G·W,          G [M, N] (ldg). */
int ct_cpu_gemm_xwt(int64_t M, const float *x, int64_t ldx, const ct_tensor *w, ct_dtype compute,
                    float alpha, float beta, float *c, int64_t ldc, ct_arena *scratch);
int ct_cpu_gemm_gw(int64_t M, const float *g, int64_t ldg, const ct_tensor *w, ct_dtype compute,
                   float alpha, float *c, int64_t ldc, ct_arena *scratch);
/* Bound on one converted f32 weight tile (default 4 MiB; 0 restores it). Returns
 * the previous bound. Not thread-safe: for tests and benchmarks. */
size_t ct_cpu_set_weight_tile_bytes(size_t bytes);
/* dst [m, cols] = dropout of src [m, cols] (may be the same buffer): element (j, i)
 * is zeroed when ct_uniform(seed, row*cols + i) < p, row = rows ? rows[j] : row0 + j,
 * and kept ones are scaled by 1/(1-p). */
void ct_cpu_dropout_rows(const float *src, float *dst, int64_t m, int64_t cols,
                         const int64_t *rows, int64_t row0, uint64_t seed, float p);
/* linear_xent's bounds (0 restores the default; each returns the previous one;
 * not thread-safe: for tests and benchmarks): the [rows, Vt] logits block
 * (default 32 MiB) and one f32 vocab tile [Vt, D] of the head (default 4 MiB). */
size_t ct_cpu_set_xent_chunk_bytes(size_t bytes);
size_t ct_cpu_set_xent_tile_bytes(size_t bytes);


int ct_cpu_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y);
int ct_cpu_embedding_bwd(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable);
int ct_cpu_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                       ct_tensor *rstd);
int ct_cpu_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                       const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw);
int ct_cpu_add_rmsnorm_fwd(const ct_tensor *a, const ct_tensor *b, const ct_tensor *w, float eps,
                           ct_tensor *sum, ct_tensor *y, ct_tensor *rstd); /* cpu/rmsnorm.c */
int ct_cpu_rope_fwd(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *y);
int ct_cpu_rope_bwd(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *dx);
int ct_cpu_attention_fwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                         ct_tensor *out, ct_tensor *lse, ct_arena *scratch);
int ct_cpu_attention_bwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                         const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout,
                         ct_tensor *dqkv, ct_arena *scratch);
/* Cached attention for generation (attention_decode.c); contract in backend.h. */
int ct_cpu_attention_decode(const ct_tensor *qkv, int64_t p0, const ct_attn_params *p,
                            ct_tensor *k_cache, ct_tensor *v_cache, ct_tensor *out,
                            ct_arena *scratch);
int ct_cpu_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y);
int ct_cpu_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                      ct_tensor *dgate, ct_tensor *dup);
int ct_cpu_lora_linear_fwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y,
                           ct_tensor *u, ct_arena *scratch);
int ct_cpu_lora_linear_bwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed,
                           const ct_tensor *u, const ct_tensor *dy, ct_tensor *dx, ct_tensor *da,
                           ct_tensor *db, ct_arena *scratch);
int ct_cpu_linear_xent_fwd(const ct_tensor *x, const ct_linear *head, const ct_tensor *labels,
                           float grad_scale, double *nll_sum, int64_t *n_trained, ct_tensor *dx,
                           ct_tensor *da, ct_tensor *db, ct_arena *scratch);
/* The optimizer's entries (cpu/optim.c). */
int ct_cpu_adamw_update(const ct_adamw_scalars *s, const ct_adamw_slot *slots, size_t n);
int ct_cpu_sum_squares(const float *const *xs, const int64_t *ns, size_t n, double *sums);
int ct_cpu_scale(float c, float *const *xs, const int64_t *ns, size_t n);

#endif
