/* axpy (the residual add and its backward) and add_fwd (the residual add in
 * one pass), one thread per element; the twin of autograd/cpu/add.c. Buffers:
 * x, y, a, b [n] f32. */
#include "cuda_common.cuh"

static __global__ void axpy_kernel(float alpha, const float *x, float *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += alpha * x[i];
}

/* y = a + b; y may be a or b: each element is read before it is written, by
 * the same thread. */
static __global__ void add_fwd_kernel(const float *a, const float *b, float *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

int ct_cuda_axpy(float alpha, const ct_tensor *x, ct_tensor *y) {
    int64_t n = ct_numel(x);
    if (n == 0) return CT_OK;
    CT_LAUNCH(axpy_kernel, blocks_for(n), kThreads, 0, alpha, (const float *)x->data, (float *)y->data, n);
    return CT_OK;
}

int ct_cuda_add_fwd(const ct_tensor *a, const ct_tensor *b, ct_tensor *y) {
    int64_t n = ct_numel(a);
    if (n == 0) return CT_OK;
    CT_LAUNCH(add_fwd_kernel, blocks_for(n), kThreads, 0, (const float *)a->data,
              (const float *)b->data, (float *)y->data, n);
    return CT_OK;
}
