/* CPU kernels (fp32 math, OpenMP + OpenBLAS), one file per op, gathered into
 * the CPU backend table in cpu_backend.c. Signatures: see backend.h. */
#ifndef CT_CPU_KERNELS_H
#define CT_CPU_KERNELS_H

#include "../backend.h"

/* Reads element i of a frozen float tensor (f32/bf16/f16) as f32. */
float ct_cpu_load(const ct_tensor *t, int64_t i);
/* Converts rows [r0, r0+n) of a frozen [rows, cols] weight (f32/bf16/f16) to f32
 * in dst [n, cols]. (nf4/fp4 arrive with the quantization issue.) */
int ct_cpu_weight_rows_f32(const ct_tensor *w, int64_t r0, int64_t n, float *dst);

int ct_cpu_axpy(float alpha, const ct_tensor *x, ct_tensor *y);

int ct_cpu_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y);
int ct_cpu_embedding_bwd(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable);
int ct_cpu_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                       ct_tensor *rstd);
int ct_cpu_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                       const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw);
int ct_cpu_rope_fwd(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *y);
int ct_cpu_rope_bwd(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *dx);
int ct_cpu_attention_fwd(const ct_tensor *qkv, const ct_tensor *seg, const ct_attn_params *p,
                         ct_tensor *out, ct_tensor *lse, ct_arena *scratch);
int ct_cpu_attention_bwd(const ct_tensor *qkv, const ct_tensor *seg, const ct_attn_params *p,
                         const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout,
                         ct_tensor *dqkv, ct_arena *scratch);
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

#endif
