/* CUDA error handling: CT_CUDA_TRY turns a failed runtime call into a ct_status
 * with the call text and location (errors travel up; main decides); CT_LAUNCH
 * is the one way a kernel is launched (nvcc's <<<>>> or the emulator's
 * scheduler), followed by the launch's error check. */
#ifndef CT_CUDA_CHECK_H
#define CT_CUDA_CHECK_H

#include "cuda_includes.h"

#define CT_CUDA_TRY(expr)                                                                  \
    do {                                                                                   \
        cudaError_t ct_cuda_err_ = (expr);                                                 \
        if (ct_cuda_err_ != cudaSuccess)                                                   \
            return ct_errorf(CT_ERUNTIME, "%s:%d: %s failed: %s", __FILE__, __LINE__, #expr, \
                             cudaGetErrorString(ct_cuda_err_));                            \
    } while (0)

/* CT_LAUNCH(kernel, grid, block, smem_bytes, args...): launches on the current
 * stream and returns a CT_ERUNTIME from the calling function when the launch
 * fails (on the emulator: also when the kernel faults, e.g. a divergent
 * barrier). `kernel` is one token: name a template instance with more than
 * one argument through a pointer first (auto *k = &f<A, B>;). */
#ifdef CT_EMU_BUILD
#define CT_LAUNCH(kernel, grid, block, smem, ...)                                          \
    do {                                                                                   \
        ::ct_emu::launch(dim3(grid), dim3(block), (size_t)(smem), #kernel, __FILE__, __LINE__, \
                         [&]() { kernel(__VA_ARGS__); });                                  \
        CT_CUDA_TRY(cudaGetLastError());                                                   \
    } while (0)
#else
#define CT_LAUNCH(kernel, grid, block, smem, ...)                                          \
    do {                                                                                   \
        kernel<<<(grid), (block), (smem), ct_cuda_stream()>>>(__VA_ARGS__);                \
        CT_CUDA_TRY(cudaGetLastError());                                                   \
    } while (0)
#endif

/* CT_DYN_SHARED(T, name): `T *name` pointing at the launch's dynamic shared
 * memory (16-byte aligned); one per kernel. */
#ifdef CT_EMU_BUILD
#define CT_DYN_SHARED(T, name) T *name = reinterpret_cast<T *>(::ct_emu::dyn_smem())
#else
#define CT_DYN_SHARED(T, name)                                                             \
    extern __shared__ __align__(16) unsigned char ct_dyn_smem_[];                          \
    T *name = reinterpret_cast<T *>(ct_dyn_smem_)
#endif

/* The stream every kernel and copy of the backend runs on: the legacy
 * default stream. Only the staged batch uploads run beside it, on a copy
 * stream of their own (input_stage.cu). */
static inline cudaStream_t ct_cuda_stream(void) { return 0; }

#endif
