/* Helpers shared by the kernels of this folder: launch geometry for
 * one-thread-per-element kernels, loading a weight element of any float dtype
 * (conversions from the shared ct_inline.h), deterministic warp and block sums.
 *
 * Rules every .cu here follows (so the emulated build, emu/, runs it too):
 * - include only this header (system headers go in cuda_includes.h);
 * - kernels and file-local helpers are `static`; entry points are the C++
 *   functions of cuda_kernels.h (no extern "C": the emulated build puts the
 *   same code in namespace ct_emu);
 * - launch only through CT_LAUNCH, dynamic shared memory only through
 *   CT_DYN_SHARED, runtime errors through CT_CUDA_TRY;
 * - no inline PTX, tensor-core intrinsics, cp.async or cooperative groups:
 *   tensor cores come through the GEMM wrapper (gemm.cu, cuBLASLt) or the
 *   warp mma wrapper (mma.cuh: the one inline PTX, with an emulated twin);
 * - warp collectives with a full mask over whole warps (block sizes are
 *   multiples of 32). */
#ifndef CT_CUDA_COMMON_CUH
#define CT_CUDA_COMMON_CUH

#include "cuda_includes.h"
#include "cuda_check.h"
#include "cuda_kernels.h"

static const int kThreads = 256;

static inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

static __device__ __forceinline__ float load_w(const void *w, int dt, int64_t i) {
    if (dt == CT_BF16) return ct_bf16_to_f32(((const uint16_t *)w)[i]);
    if (dt == CT_F16) return ct_f16_to_f32(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

/* Activations (and their grads, the KV cache, lora_linear's u) are f32 or
 * bf16 (the backend's act_dtype; the kernels take either, by the tensors'
 * dtype). A bf16 activation is stored as its uint16_t bits; loads widen to
 * f32, stores round to nearest even (ct_f32_to_bf16: the CPU's rounding).
 * Kernels are templated on the storage type A and all math is f32:
 *   template <class A> kernel(const A *x, ...) { float v = act_ld(x, i); act_st(y, i, v); }
 * and the entry picks the instance with CT_ACT_DISPATCH. */
typedef uint16_t bf16_t;
static __device__ __forceinline__ float act_ld(const float *p, int64_t i) { return p[i]; }
static __device__ __forceinline__ float act_ld(const bf16_t *p, int64_t i) { return ct_bf16_to_f32(p[i]); }
static __device__ __forceinline__ void act_st(float *p, int64_t i, float v) { p[i] = v; }
static __device__ __forceinline__ void act_st(bf16_t *p, int64_t i, float v) { p[i] = ct_f32_to_bf16(v); }

/* CT_OK when t's dtype is an activation dtype (f32, bf16), else CT_EINPUT
 * naming what and the dtype. */
static inline int act_check(const ct_tensor *t, const char *what) {
    if (t->dtype == CT_F32 || t->dtype == CT_BF16) return CT_OK;
    return ct_errorf(CT_EINPUT, "%s: activations must be float32 or bfloat16, not %s", what,
                     ct_dtype_name(t->dtype));
}

/* result = fn<float>(args...) or fn<bf16_t>(args...) by t's dtype (checked
 * first with act_check). */
#define CT_ACT_DISPATCH(t, fn, ...)                                                        \
    ((t)->dtype == CT_BF16 ? fn<bf16_t>(__VA_ARGS__) : fn<float>(__VA_ARGS__))

/* Sum over the 32 lanes of a warp (xor butterfly: every lane gets the same,
 * order fixed). */
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum over blockDim.x (a power of two, at most 1024) threads,
 * deterministic (fixed tree order); sh has blockDim.x elements. Every thread
 * gets the sum. T: float or double. */
template <class T> static __device__ inline T block_sum(T v, T *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

/* IEEE single operations, each rounded on its own as the CPU's C code does
 * (nvcc would otherwise fuse a*b+c into an FMA): for kernels that must give
 * the CPU's bits (AdamW, rope). */
static __device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

static __device__ __forceinline__ float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

static __device__ __forceinline__ float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

static __device__ __forceinline__ float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

static __device__ __forceinline__ float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
    return __fsqrt_rn(a);
#else
    return sqrtf(a);
#endif
}

#endif
