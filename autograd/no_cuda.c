/* ct_cuda_backend for builds without the CUDA toolkit. */
#ifndef CT_HAVE_CUDA
#include "backend.h"
#include "ct_error.h"

const ct_backend *ct_cuda_backend(void) {
    ct_errorf(CT_ERUNTIME, "this build has no CUDA backend (nvcc was not found at configure time)");
    return NULL;
}
#else
typedef int ct_no_cuda_unused; /* ISO C forbids an empty translation unit */
#endif
