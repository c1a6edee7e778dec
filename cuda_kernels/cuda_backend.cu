/* The CUDA backend table: device memory, detection, and the kernels of this
 * folder. Detection never crashes: any error from the runtime (no driver, no
 * device) means "no GPU" and the caller stays on the CPU backend. */
#include <cstdio>

#include <cuda_runtime.h>

#include "autograd/backend.h"
#include "cuda_check.h"
#include "cuda_kernels.h"

static void *cuda_alloc(size_t n) {
    void *p = nullptr;
    if (cudaMalloc(&p, n ? n : 256) != cudaSuccess) return nullptr;
    return p;
}

static void cuda_free(void *p) { cudaFree(p); }

static int cuda_zero(void *p, size_t n) {
    CT_CUDA_TRY(cudaMemsetAsync(p, 0, n, 0));
    return CT_OK;
}

static int cuda_copy(void *dst, const void *src, size_t n) {
    if (dst != src) CT_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, 0));
    return CT_OK;
}

static int cuda_upload(void *dst, const void *src, size_t n) {
    CT_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
    return CT_OK;
}

static int cuda_download(void *dst, const void *src, size_t n) {
    CT_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
    return CT_OK;
}

static int cuda_sync(void) {
    CT_CUDA_TRY(cudaDeviceSynchronize());
    return CT_OK;
}

extern "C" const ct_backend *ct_cuda_backend(void) {
    static ct_backend be;
    static int probed = 0, usable = 0;
    static char why[256];
    if (!probed) {
        probed = 1;
        int n = 0;
        cudaError_t err = cudaGetDeviceCount(&n);
        if (err != cudaSuccess) {
            snprintf(why, sizeof why, "no usable GPU: %s", cudaGetErrorString(err));
        } else if (n == 0) {
            snprintf(why, sizeof why, "no GPU found");
        } else {
            usable = 1;
            be.device = CT_CUDA;
            be.mem.alloc = cuda_alloc;
            be.mem.free = cuda_free;
            be.zero = cuda_zero;
            be.copy = cuda_copy;
            be.upload = cuda_upload;
            be.download = cuda_download;
            be.sync = cuda_sync;
            be.axpy = ct_cuda_axpy;
            be.swiglu_fwd = ct_cuda_swiglu_fwd;
            be.swiglu_bwd = ct_cuda_swiglu_bwd;
            be.rmsnorm_fwd = ct_cuda_rmsnorm_fwd;
            be.rmsnorm_bwd = ct_cuda_rmsnorm_bwd;
            be.embedding_fwd = ct_cuda_embedding_fwd;
            be.name = "cuda";
        }
    }
    if (!usable) {
        ct_errorf(CT_ERUNTIME, "%s", why);
        return nullptr;
    }
    return &be;
}
