/* CUDA error handling: CT_CUDA_TRY turns a failed runtime call into a ct_status
 * with the call text and location (errors travel up; main decides). */
#ifndef CT_CUDA_CHECK_H
#define CT_CUDA_CHECK_H

#include <cuda_runtime.h>

#include "autograd/ct_error.h"

#define CT_CUDA_TRY(expr)                                                                  \
    do {                                                                                   \
        cudaError_t ct_cuda_err_ = (expr);                                                 \
        if (ct_cuda_err_ != cudaSuccess)                                                   \
            return ct_errorf(CT_ERUNTIME, "%s:%d: %s failed: %s", __FILE__, __LINE__, #expr, \
                             cudaGetErrorString(ct_cuda_err_));                            \
    } while (0)

#endif
