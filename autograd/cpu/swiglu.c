/* swiglu: y = silu(g) * u, silu(g) = g * sigmoid(g).
 * Backward: du += dy * silu(g);  dg += dy * u * sig(g) * (1 + g * (1 - sig(g))).
 *
 * Element-wise and memory-bound: one pass over the flat arrays. The sigmoid
 * uses ct_expf (ct_inline.h, branch-free) instead of libm's expf so the loops
 * vectorize; silu/dsilu clamp g so ±inf gives 0/inf and 1/0, never inf·0 = NaN.
 * Every element is computed on its own: results do not depend on the thread
 * count. The backward has one loop per (dgate?, dup?) case so no branch sits in
 * the vectorized body. */
#include "../ct_error.h"
#include "../ct_inline.h"
#include "cpu_kernels.h"

/* Below this many elements a parallel region costs more than it saves. */
#define SWIGLU_PAR_MIN 32768

int ct_cpu_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y) {
    int64_t n = ct_numel(gate);
    const float *g = gate->data, *u = up->data;
    float *ys = y->data;
#pragma omp parallel for simd schedule(static) if (n > SWIGLU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        ys[i] = ct_silu_s(gi, ct_sigmoidf(gi)) * u[i];
    }
    return CT_OK;
}

int ct_cpu_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                      ct_tensor *dgate, ct_tensor *dup) {
    int64_t n = ct_numel(gate);
    const float *g = gate->data, *u = up->data, *d = dy->data;
    float *dg = dgate ? dgate->data : NULL, *du = dup ? dup->data : NULL;
    if (dg && du) {
#pragma omp parallel for simd schedule(static) if (n > SWIGLU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            float gi = g[i], s = ct_sigmoidf(gi), di = d[i];
            du[i] += di * ct_silu_s(gi, s);
            dg[i] += di * u[i] * ct_dsilu_s(gi, s);
        }
    } else if (du) {
#pragma omp parallel for simd schedule(static) if (n > SWIGLU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            float gi = g[i];
            du[i] += d[i] * ct_silu_s(gi, ct_sigmoidf(gi));
        }
    } else if (dg) {
#pragma omp parallel for simd schedule(static) if (n > SWIGLU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            float gi = g[i];
            dg[i] += d[i] * u[i] * ct_dsilu_s(gi, ct_sigmoidf(gi));
        }
    }
    return CT_OK;
}
