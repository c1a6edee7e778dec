/* swiglu: y = silu(g) * u, silu(g) = g * sigmoid(g).
 * Backward: du += dy * silu(g);  dg += dy * u * sig(g) * (1 + g * (1 - sig(g))). */
#include <math.h>

#include "../ct_error.h"
#include "cpu_kernels.h"

int ct_cpu_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y) {
    int64_t n = ct_numel(gate);
    const float *g = gate->data, *u = up->data;
    float *ys = y->data;
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        ys[i] = g[i] * s * u[i];
    }
    return CT_OK;
}

int ct_cpu_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                      ct_tensor *dgate, ct_tensor *dup) {
    int64_t n = ct_numel(gate);
    const float *g = gate->data, *u = up->data, *d = dy->data;
    float *dg = dgate ? dgate->data : NULL, *du = dup ? dup->data : NULL;
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        if (du) du[i] += d[i] * g[i] * s;
        if (dg) dg[i] += d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    }
    return CT_OK;
}
