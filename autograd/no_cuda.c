/* ct_cuda_backend and ct_cuda_emu_backend, and the benchmark helpers of
 * cuda_kernels/bench_gemm.cu, for builds without them (no CUDA toolkit, or
 * CT_CUDA_EMU=OFF). */
#include "backend.h"
#include "ct_error.h"

#ifndef CT_HAVE_CUDA
const ct_backend *ct_cuda_backend(void) {
    ct_errorf(CT_ERUNTIME, "this build has no CUDA backend (nvcc was not found at configure time)");
    return NULL;
}

int ct_cuda_bench_gemm(int64_t M, int64_t N, int64_t K, int bf16, int iters, double *ms_per_call) {
    (void)M, (void)N, (void)K, (void)bf16, (void)iters, (void)ms_per_call;
    return ct_errorf(CT_ERUNTIME, "this build has no CUDA backend: no cuBLASLt GEMM to time");
}

const char *ct_cuda_device_name(void) {
    ct_errorf(CT_ERUNTIME, "this build has no CUDA backend");
    return NULL;
}
#endif

#ifndef CT_HAVE_CUDA_EMU
const ct_backend *ct_cuda_emu_backend(void) {
    ct_errorf(CT_ERUNTIME, "this build has no emulated CUDA backend (nvcc was not found at "
                           "configure time, or CT_CUDA_EMU=OFF)");
    return NULL;
}

int ct_cuda_emu_bench_gemm(int64_t M, int64_t N, int64_t K, int bf16, int iters,
                           double *ms_per_call) {
    (void)M, (void)N, (void)K, (void)bf16, (void)iters, (void)ms_per_call;
    return ct_errorf(CT_ERUNTIME, "this build has no emulated CUDA backend: no GEMM to time");
}

const char *ct_cuda_emu_device_name(void) {
    ct_errorf(CT_ERUNTIME, "this build has no emulated CUDA backend");
    return NULL;
}
#endif
