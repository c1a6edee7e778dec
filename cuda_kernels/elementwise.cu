/* Element-wise kernels: axpy (residual add), swiglu. One thread per element,
 * fp32 math; the scalar formulas are the shared ones of ct_inline.h, exactly
 * what cpu/swiglu.c runs. */
#include "autograd/ct_inline.h"
#include "cuda_check.h"
#include "cuda_kernels.h"

static const int kThreads = 256;

static unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

__global__ void axpy_kernel(float alpha, const float *x, float *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += alpha * x[i];
}

__global__ void swiglu_fwd_kernel(const float *g, const float *u, float *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = ct_silu_s(g[i], ct_sigmoidf(g[i])) * u[i];
}

__global__ void swiglu_bwd_kernel(const float *g, const float *u, const float *dy, float *dg,
                                  float *du, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float s = ct_sigmoidf(g[i]);
        if (du) du[i] += dy[i] * ct_silu_s(g[i], s);
        if (dg) dg[i] += dy[i] * u[i] * ct_dsilu_s(g[i], s);
    }
}

extern "C" int ct_cuda_axpy(float alpha, const ct_tensor *x, ct_tensor *y) {
    int64_t n = ct_numel(x);
    if (n == 0) return CT_OK;
    axpy_kernel<<<blocks_for(n), kThreads>>>(alpha, (const float *)x->data, (float *)y->data, n);
    CT_CUDA_TRY(cudaGetLastError());
    return CT_OK;
}

extern "C" int ct_cuda_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y) {
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    swiglu_fwd_kernel<<<blocks_for(n), kThreads>>>((const float *)gate->data, (const float *)up->data,
                                                   (float *)y->data, n);
    CT_CUDA_TRY(cudaGetLastError());
    return CT_OK;
}

extern "C" int ct_cuda_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                                  ct_tensor *dgate, ct_tensor *dup) {
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    swiglu_bwd_kernel<<<blocks_for(n), kThreads>>>(
        (const float *)gate->data, (const float *)up->data, (const float *)dy->data,
        dgate ? (float *)dgate->data : nullptr, dup ? (float *)dup->data : nullptr, n);
    CT_CUDA_TRY(cudaGetLastError());
    return CT_OK;
}
