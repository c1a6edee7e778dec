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

/* The 16-byte vector paths of the memory-bound kernels (add, swiglu,
 * rmsnorm, rope, embedding): v[0..7] = p[i..i+7] widened to f32, and
 * p[i..i+7] = v[0..7] rounded exactly as act_st (so a vector path gives the
 * scalar path's bits). f32: two float4, bf16: one uint4 (the element at the
 * lower address in the low half of each 32-bit word). p + i must be 16-byte
 * aligned: entries check their pointers (and row lengths in bytes) with
 * aligned16 and otherwise take the scalar path (on a GPU a misaligned 16-byte
 * access faults; the emulated build fails the launch, ld16/st16).
 * load_w8 is the same for a weight or table of any load_w dtype. */
static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* One 16-byte load or store of a V (uint4, float4). The emulated build
 * checks the alignment (a failed launch, not a fault as on a GPU) and copies
 * bytes, so a misaligned access is reported rather than crashing. */
template <class V> static __device__ __forceinline__ V ld16(const void *p) {
#ifdef CT_EMU_BUILD
    if ((uintptr_t)p & 15u)
        ::ct_emu::set_error(cudaErrorMisalignedAddress, "16-byte load at %p: not 16-byte aligned", p);
    V v;
    memcpy(&v, p, sizeof v);
    return v;
#else
    return *reinterpret_cast<const V *>(p);
#endif
}
template <class V> static __device__ __forceinline__ void st16(void *p, V v) {
#ifdef CT_EMU_BUILD
    if ((uintptr_t)p & 15u)
        ::ct_emu::set_error(cudaErrorMisalignedAddress, "16-byte store at %p: not 16-byte aligned", p);
    memcpy(p, &v, sizeof v);
#else
    *reinterpret_cast<V *>(p) = v;
#endif
}

static __device__ __forceinline__ void unpack8_16(uint4 u, int dt, float v[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
    for (int k = 0; k < 4; k++) {
        const uint16_t lo = (uint16_t)(w[k] & 0xffffu), hi = (uint16_t)(w[k] >> 16);
        v[2 * k] = dt == CT_F16 ? ct_f16_to_f32(lo) : ct_bf16_to_f32(lo);
        v[2 * k + 1] = dt == CT_F16 ? ct_f16_to_f32(hi) : ct_bf16_to_f32(hi);
    }
}

static __device__ __forceinline__ void act_ld8(const float *p, int64_t i, float v[8]) {
    const float4 a = ld16<float4>(p + i), b = ld16<float4>(p + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
static __device__ __forceinline__ void act_ld8(const bf16_t *p, int64_t i, float v[8]) {
    unpack8_16(ld16<uint4>(p + i), CT_BF16, v);
}
static __device__ __forceinline__ void act_st8(float *p, int64_t i, const float v[8]) {
    st16(p + i, make_float4(v[0], v[1], v[2], v[3]));
    st16(p + i + 4, make_float4(v[4], v[5], v[6], v[7]));
}
static __device__ __forceinline__ void act_st8(bf16_t *p, int64_t i, const float v[8]) {
    uint32_t w[4];
    for (int k = 0; k < 4; k++)
        w[k] = (uint32_t)ct_f32_to_bf16(v[2 * k]) | (uint32_t)ct_f32_to_bf16(v[2 * k + 1]) << 16;
    st16(p + i, make_uint4(w[0], w[1], w[2], w[3]));
}
static __device__ __forceinline__ void load_w8(const void *w, int dt, int64_t i, float v[8]) {
    if (dt == CT_F32) act_ld8((const float *)w, i, v);
    else unpack8_16(ld16<uint4>((const uint16_t *)w + i), dt, v);
}

/* Grid of a grid-stride element-wise kernel of kThreads-thread blocks whose
 * loops run over nv 8-element vectors, then the n - 8 nv tail elements one by
 * one: threads for the longer loop, at most one wave of resident blocks on an
 * H100 (132 SMs x 8 blocks of 256 threads); each thread then loops. */
static inline unsigned ew_grid(int64_t n, int64_t nv) {
    const int64_t tail = n - 8 * nv;
    const unsigned b = blocks_for(nv > tail ? nv : tail), cap = 132 * 8;
    return b < 1 ? 1 : b < cap ? b : cap;
}

/* CT_OK when t's dtype is an activation dtype (f32, bf16), else CT_EINPUT
 * naming what and the dtype. */
static inline int act_check(const ct_tensor *t, const char *what) {
    if (t->dtype == CT_F32 || t->dtype == CT_BF16) return CT_OK;
    return ct_errorf(CT_EINPUT, "%s: activations must be float32 or bfloat16, not %s", what,
                     ct_dtype_name(t->dtype));
}

/* CT_OK when ts[0] is an activation (act_check) and every other non-NULL
 * ts[k] of the n has its dtype: the activations of one call share one dtype.
 * Else CT_EINPUT "<op>: <names[k]> is <dt> but <names[0]> is <dt> ...". */
static inline int act_check_same(const char *op, const ct_tensor *const *ts, const char *const *names, int n) {
    CT_TRY(act_check(ts[0], op));
    for (int k = 1; k < n; k++)
        if (ts[k] && ts[k]->dtype != ts[0]->dtype)
            return ct_errorf(CT_EINPUT, "%s: %s is %s but %s is %s (the activations of one call share one dtype)",
                             op, names[k], ct_dtype_name(ts[k]->dtype), names[0], ct_dtype_name(ts[0]->dtype));
    return CT_OK;
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
