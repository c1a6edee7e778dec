/* swiglu forward/backward, one thread per element, fp32 math; the scalar
 * formulas are the shared ones of ct_inline.h, exactly what autograd/cpu/swiglu.c
 * runs. */
#include "cuda_common.cuh"

static __global__ void swiglu_fwd_kernel(const float *g, const float *u, float *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = ct_silu_s(g[i], ct_sigmoidf(g[i])) * u[i];
}

static __global__ void swiglu_bwd_kernel(const float *g, const float *u, const float *dy, float *dg,
                                  float *du, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float s = ct_sigmoidf(g[i]);
        if (du) du[i] += dy[i] * ct_silu_s(g[i], s);
        if (dg) dg[i] += dy[i] * u[i] * ct_dsilu_s(g[i], s);
    }
}

int ct_cuda_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y) {
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    CT_LAUNCH(swiglu_fwd_kernel, blocks_for(n), kThreads, 0, (const float *)gate->data, (const float *)up->data,
                                                   (float *)y->data, n);
    return CT_OK;
}

int ct_cuda_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                                  ct_tensor *dgate, ct_tensor *dup) {
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    CT_LAUNCH(swiglu_bwd_kernel, blocks_for(n), kThreads, 0, (const float *)gate->data, (const float *)up->data, (const float *)dy->data,
        dgate ? (float *)dgate->data : nullptr, dup ? (float *)dup->data : nullptr, n);
    return CT_OK;
}
