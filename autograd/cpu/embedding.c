/* embedding: y[t, :] = table[ids[t], :]. */
#include "../ct_error.h"
#include "cpu_kernels.h"

int ct_cpu_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y) {
    int64_t T = ct_numel(ids), D = table->shape[1], V = table->shape[0];
    const int32_t *id = ids->data;
    float *out = y->data;
    for (int64_t t = 0; t < T; t++)
        if (id[t] < 0 || id[t] >= V)
            return ct_errorf(CT_EINPUT, "embedding: token id %d at position %lld outside vocab of %lld",
                             id[t], (long long)t, (long long)V);
#pragma omp parallel for schedule(static) if (T * D > 65536)
    for (int64_t t = 0; t < T; t++)
        ct_cpu_weight_rows_f32(table, id[t], 1, out + (size_t)t * (size_t)D); /* dtype checked by the op */
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
