/* embedding: y[t, :] = table[ids[t], :]. */
#include <string.h>

#include "../ct_error.h"
#include "../ct_inline.h"
#include "cpu_kernels.h"

/* dst [D] = row `id` of a [V, D] f32/bf16/f16 table as f32, converted inline
 * (vectorized): going through ct_convert cost a one-thread OpenMP region per
 * row, which was most of the time. */
static void row_f32(const ct_tensor *table, int64_t id, int64_t D, float *dst) {
    size_t off = (size_t)id * (size_t)D;
    const uint16_t *h = (const uint16_t *)table->data + off;
    switch (table->dtype) {
    case CT_BF16:
        for (int64_t i = 0; i < D; i++) dst[i] = ct_bf16_to_f32(h[i]);
        break;
    case CT_F16:
        for (int64_t i = 0; i < D; i++) dst[i] = ct_f16_to_f32(h[i]);
        break;
    default: memcpy(dst, (const float *)table->data + off, (size_t)D * sizeof(float)); /* f32 */
    }
}

int ct_cpu_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y) {
    int64_t T = ct_numel(ids), D = table->shape[1], V = table->shape[0];
    const int32_t *id = ids->data;
    float *out = y->data;
    if (table->dtype != CT_F32 && table->dtype != CT_BF16 && table->dtype != CT_F16)
        return ct_errorf(CT_EINPUT, "embedding: table %s of dtype %s (the CPU kernel reads f32/bf16/f16)",
                         table->name ? table->name : "?", ct_dtype_name(table->dtype));
    for (int64_t t = 0; t < T; t++)
        if (id[t] < 0 || id[t] >= V)
            return ct_errorf(CT_EINPUT, "embedding: token id %d at position %lld outside vocab of %lld",
                             id[t], (long long)t, (long long)V);
#pragma omp parallel for schedule(static) if (T * D > 65536)
    for (int64_t t = 0; t < T; t++)
        row_f32(table, id[t], D, out + (size_t)t * (size_t)D);
    return CT_OK;
}

/* Threads own column ranges of dtable, so rows hit by several tokens are
 * summed in token order: deterministic for any thread count. */
int ct_cpu_embedding_bwd(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable) {
    int64_t T = ct_numel(ids), D = dtable->shape[1];
    const int32_t *id = ids->data;
    const float *g = dy->data;
    float *dt = dtable->data;
    const int64_t chunk = 64;
#pragma omp parallel for schedule(static) if (T * D > 65536)
    for (int64_t c0 = 0; c0 < D; c0 += chunk) {
        int64_t c1 = c0 + chunk < D ? c0 + chunk : D;
        for (int64_t t = 0; t < T; t++) {
            float *row = dt + (size_t)id[t] * (size_t)D;
            const float *gr = g + (size_t)t * (size_t)D;
            for (int64_t c = c0; c < c1; c++) row[c] += gr[c];
        }
    }
    return CT_OK;
}
