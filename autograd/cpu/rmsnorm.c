/* rmsnorm over the last dim: y = x * r * w, r = rsqrt(mean(x²) + eps).
 * Backward (per row, D = dim, g = dy * w):
 *   dx = r * g - x * r³ * mean(g * x)
 *   dw += dy * x * r   (summed over rows) */
#include <math.h>

#include "../ct_error.h"
#include "cpu_kernels.h"

int ct_cpu_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                       ct_tensor *rstd) {
    int64_t R = ct_rows(x), D = ct_dim_from_end(x, 1);
    const float *xs = x->data;
    float *ys = y->data;
    float *rs = rstd ? rstd->data : NULL;
#pragma omp parallel for schedule(static) if (R * D > 65536)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = xs + (size_t)r * (size_t)D;
        float *yr = ys + (size_t)r * (size_t)D;
        float ss = 0.0f;
        for (int64_t i = 0; i < D; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)D + eps);
        if (rs) rs[r] = inv;
        for (int64_t i = 0; i < D; i++) yr[i] = xr[i] * inv * ct_cpu_load(w, i);
    }
    return CT_OK;
}

int ct_cpu_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                       const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw) {
    int64_t R = ct_rows(x), D = ct_dim_from_end(x, 1);
    const float *xs = x->data, *rs = rstd->data, *gs = dy->data;
    if (dx) {
        float *dxs = dx->data;
#pragma omp parallel for schedule(static) if (R * D > 65536)
        for (int64_t r = 0; r < R; r++) {
            const float *xr = xs + (size_t)r * (size_t)D, *gr = gs + (size_t)r * (size_t)D;
            float *dr = dxs + (size_t)r * (size_t)D;
            float inv = rs[r], dot = 0.0f;
            for (int64_t i = 0; i < D; i++) dot += gr[i] * ct_cpu_load(w, i) * xr[i];
            float c = inv * inv * inv * dot / (float)D;
            for (int64_t i = 0; i < D; i++) dr[i] += inv * gr[i] * ct_cpu_load(w, i) - c * xr[i];
        }
    }
    if (dw) {
        float *dws = dw->data;
        /* Threads own column ranges: rows summed in order, deterministic. */
#pragma omp parallel for schedule(static) if (R * D > 65536)
        for (int64_t i = 0; i < D; i++) {
            float acc = 0.0f;
            for (int64_t r = 0; r < R; r++) acc += gs[(size_t)r * (size_t)D + (size_t)i] *
                                                 xs[(size_t)r * (size_t)D + (size_t)i] * rs[r];
            dws[i] += acc;
        }
    }
    return CT_OK;
}
