/* Helpers shared by the kernels of this folder: launch geometry for
 * one-thread-per-element kernels, loading a weight element of any float dtype
 * (conversions from the shared ct_inline.h), a deterministic block sum. */
#ifndef CT_CUDA_COMMON_CUH
#define CT_CUDA_COMMON_CUH

#include "autograd/ct_inline.h"
#include "cuda_check.h"
#include "cuda_kernels.h"

static const int kThreads = 256;

static inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ float load_w(const void *w, int dt, int64_t i) {
    if (dt == CT_BF16) return ct_bf16_to_f32(((const uint16_t *)w)[i]);
    if (dt == CT_F16) return ct_f16_to_f32(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

/* Block-wide sum over 256 threads, deterministic (fixed tree order). */
__device__ inline float block_sum(float v, float *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

#endif
