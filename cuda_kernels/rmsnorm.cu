/* rmsnorm forward/backward: one block per row, fp32 statistics; weights
 * f32/bf16/f16. The twin of autograd/cpu/rmsnorm.c. */
#include "cuda_common.cuh"

static __global__ void rmsnorm_fwd_kernel(const float *x, const void *w, int wdt, float eps, float *y,
                                   float *rstd, int64_t D) {
    __shared__ float sh[256];
    const float *xr = x + blockIdx.x * D;
    float *yr = y + blockIdx.x * D;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, sh);
    float inv = rsqrtf(ss / (float)D + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = inv;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = xr[i] * inv * load_w(w, wdt, i);
}

static __global__ void rmsnorm_bwd_dx_kernel(const float *x, const void *w, int wdt, const float *rstd,
                                      const float *dy, float *dx, int64_t D) {
    __shared__ float sh[256];
    const float *xr = x + blockIdx.x * D, *gr = dy + blockIdx.x * D;
    float *dr = dx + blockIdx.x * D;
    float inv = rstd[blockIdx.x], dot = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) dot += gr[i] * load_w(w, wdt, i) * xr[i];
    dot = block_sum(dot, sh);
    float c = inv * inv * inv * dot / (float)D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        dr[i] += inv * gr[i] * load_w(w, wdt, i) - c * xr[i];
}

/* dw[i] += sum_r dy[r,i] x[r,i] rstd[r]: one thread per column, rows in order. */
static __global__ void rmsnorm_bwd_dw_kernel(const float *x, const float *rstd, const float *dy, float *dw,
                                      int64_t R, int64_t D) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= D) return;
    float acc = 0.0f;
    for (int64_t r = 0; r < R; r++) acc += dy[r * D + i] * x[r * D + i] * rstd[r];
    dw[i] += acc;
}

int ct_cuda_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                                   ct_tensor *rstd) {
    int64_t R = ct_rows(x), D = ct_dim_from_end(x, 1);
    if (R == 0) return CT_OK;
    CT_LAUNCH(rmsnorm_fwd_kernel, (unsigned)R, 256, 0, (const float *)x->data, w->data, (int)w->dtype, eps,
                                            (float *)y->data, rstd ? (float *)rstd->data : nullptr, D);
    return CT_OK;
}

int ct_cuda_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                                   const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw) {
    int64_t R = ct_rows(x), D = ct_dim_from_end(x, 1);
    if (R == 0) return CT_OK;
    if (dx)
        CT_LAUNCH(rmsnorm_bwd_dx_kernel, (unsigned)R, 256, 0, (const float *)x->data, w->data, (int)w->dtype,
                                                   (const float *)rstd->data, (const float *)dy->data,
                                                   (float *)dx->data, D);
    if (dw)
        CT_LAUNCH(rmsnorm_bwd_dw_kernel, (unsigned)((D + 255) / 256), 256, 0, (const float *)x->data, (const float *)rstd->data, (const float *)dy->data,
            (float *)dw->data, R, D);
    return CT_OK;
}
