/* CT_CUBLAS_TRY(fn, args...): calls the cuBLASLt function fn and turns a
 * status other than CUBLAS_STATUS_SUCCESS into a CT_ERUNTIME naming the call
 * and the status (e.g. "gemm.cu:120: cublasLtMatmul failed:
 * CUBLAS_STATUS_NOT_SUPPORTED (15)"), returned from the calling function.
 * Every cuBLASLt call of this folder goes through it (gemm.cu). In the
 * emulated build the names reach the host cuBLASLt (emu/cublaslt.cc) through
 * the renaming macros of emu/cuda_emu.h; the message keeps the real name. */
#ifndef CT_CUBLAS_CHECK_H
#define CT_CUBLAS_CHECK_H

#include "cuda_includes.h"

#define CT_CUBLAS_TRY(fn, ...)                                                             \
    do {                                                                                   \
        cublasStatus_t ct_cublas_st_ = fn(__VA_ARGS__);                                    \
        if (ct_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                        \
            return ct_errorf(CT_ERUNTIME, "%s:%d: %s failed: %s (%d)", __FILE__, __LINE__, #fn, \
                             cublasLtGetStatusName(ct_cublas_st_), (int)ct_cublas_st_);    \
    } while (0)

#endif
