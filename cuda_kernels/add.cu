/* axpy (the residual add and its backward), one thread per element; the twin
 * of autograd/cpu/add.c. */
#include "cuda_common.cuh"

__global__ void axpy_kernel(float alpha, const float *x, float *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += alpha * x[i];
}

extern "C" int ct_cuda_axpy(float alpha, const ct_tensor *x, ct_tensor *y) {
    int64_t n = ct_numel(x);
    if (n == 0) return CT_OK;
    axpy_kernel<<<blocks_for(n), kThreads>>>(alpha, (const float *)x->data, (float *)y->data, n);
    CT_CUDA_TRY(cudaGetLastError());
    return CT_OK;
}
