/* CUDA kernels behind the backend table (signatures: autograd/backend.h). */
#ifndef CT_CUDA_KERNELS_H
#define CT_CUDA_KERNELS_H

#include "autograd/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

int ct_cuda_axpy(float alpha, const ct_tensor *x, ct_tensor *y);
int ct_cuda_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y);
int ct_cuda_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                       ct_tensor *dgate, ct_tensor *dup);
int ct_cuda_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                        ct_tensor *rstd);
int ct_cuda_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                        const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw);
int ct_cuda_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y);

#ifdef __cplusplus
}
#endif
#endif
