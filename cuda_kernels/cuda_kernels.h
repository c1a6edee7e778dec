/* CUDA kernels behind the backend table (signatures and contracts:
 * autograd/backend.h). C++ functions, not extern "C": the emulated build
 * compiles the same sources into namespace ct_emu (emu/), beside the real
 * ones. */
#ifndef CT_CUDA_KERNELS_H
#define CT_CUDA_KERNELS_H

#include "cuda_includes.h"

/* The backend's tracked device allocator (cuda_backend.cu): every device
 * buffer of this folder comes from it, so the run's peak counts them all.
 * NULL when out of memory. */
void *ct_cuda_mem_alloc(size_t bytes);
void ct_cuda_mem_free(void *p);

/* Staged uploads (input_stage.cu; contracts: autograd/backend.h). */
void *ct_cuda_stage_host(int slot, size_t bytes);
int ct_cuda_stage_upload(int slot, void *dst, size_t bytes);
int ct_cuda_stage_wait(int slot);
int ct_cuda_stage_fence(int slot);
void ct_cuda_stage_release(void);

int ct_cuda_axpy(float alpha, const ct_tensor *x, ct_tensor *y);
int ct_cuda_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y);
int ct_cuda_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                       ct_tensor *dgate, ct_tensor *dup);
int ct_cuda_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                        ct_tensor *rstd);
int ct_cuda_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                        const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw);
int ct_cuda_add_rmsnorm_fwd(const ct_tensor *a, const ct_tensor *b, const ct_tensor *w, float eps,
                            ct_tensor *sum, ct_tensor *y, ct_tensor *rstd);
int ct_cuda_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y);
int ct_cuda_attention_fwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                          ct_tensor *out, ct_tensor *lse, ct_arena *scratch);
int ct_cuda_attention_bwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                          const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout,
                          ct_tensor *dqkv, ct_arena *scratch);
int ct_cuda_attention_decode(const ct_tensor *qkv, int64_t p0, const ct_attn_params *p,
                             ct_tensor *k_cache, ct_tensor *v_cache, ct_tensor *out,
                             ct_arena *scratch);
int ct_cuda_lora_linear_fwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y,
                            ct_tensor *u, ct_arena *scratch);
int ct_cuda_lora_linear_bwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, const ct_tensor *u,
                            const ct_tensor *dy, ct_tensor *dx, ct_tensor *da, ct_tensor *db,
                            ct_arena *scratch);
int ct_cuda_linear_xent_fwd(const ct_tensor *x, const ct_linear *head, const ct_tensor *labels,
                            float grad_scale, double *nll_sum, int64_t *n_trained, ct_tensor *dx,
                            ct_tensor *da, ct_tensor *db, ct_arena *scratch);
int ct_cuda_embedding_bwd(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable);
int ct_cuda_rope_fwd(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p,
                     ct_tensor *y);
int ct_cuda_rope_bwd(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p,
                     ct_tensor *dx);
int ct_cuda_add_fwd(const ct_tensor *a, const ct_tensor *b, ct_tensor *y);
int ct_cuda_adamw_update(const ct_adamw_scalars *s, const ct_adamw_slot *slots, size_t n);
int ct_cuda_sum_squares(const float *const *xs, const int64_t *ns, size_t n, double *sums);
int ct_cuda_scale(float c, float *const *xs, const int64_t *ns, size_t n);

#endif
