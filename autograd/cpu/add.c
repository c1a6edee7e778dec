/* add: y = a + b in one pass (reads a and b, writes y), instead of copying a
 * into y and then adding b (which reads and writes y once more). The backward
 * is two axpys (common.c). */
#include "../ct_error.h"
#include "cpu_kernels.h"

int ct_cpu_add_fwd(const ct_tensor *a, const ct_tensor *b, ct_tensor *y) {
    int64_t n = ct_numel(a);
    const float *as = a->data, *bs = b->data;
    float *ys = y->data;
    /* Element-wise; y may equal a or b (each element read before it is written). */
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) ys[i] = as[i] + bs[i];
    return CT_OK;
}
