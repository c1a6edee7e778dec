/* The optimizer's CPU kernels: AdamW's element-wise update, sums of squares
 * for the global grad norm, and the clipping scale (contracts in backend.h;
 * the math's definition in trainer/optim/adamw.h).
 *
 * Determinism: the update and the scale are element-wise (static schedule, no
 * reduction). A sum of squares cuts its tensor into fixed CHUNK-element pieces
 * whatever the thread count; each piece is a sequential double loop and the
 * piece sums are added in piece order by one thread: threads decide only who
 * computes which piece, never the order of any addition. */
#include "../ct_error.h"
#include "cpu_kernels.h"

#include <math.h>

#define CHUNK 8192 /* elements per piece */
#define BATCH 256  /* pieces summed per parallel round (partials on the stack) */

int ct_cpu_adamw_update(const ct_adamw_scalars *s, const ct_adamw_slot *slots, size_t n) {
    const float decay = s->decay, w1 = s->w1, b2 = s->b2, w2 = s->w2, neg_step = s->neg_step,
                bc2_sqrt = s->bc2_sqrt, eps = s->eps;
    const int use_decay = s->use_decay;
    for (size_t i = 0; i < n; i++) {
        float *p = slots[i].p, *m = slots[i].m, *v = slots[i].v;
        const float *g = slots[i].g;
        int64_t numel = slots[i].n;
#pragma omp parallel for schedule(static) if (numel > 32768)
        for (int64_t j = 0; j < numel; j++) {
            float pj = p[j], gj = g[j];
            if (use_decay) pj = pj * decay;
            float mj = m[j];
            mj = w1 < 0.5f ? mj + w1 * (gj - mj) : gj - (gj - mj) * (1.0f - w1); /* torch lerp */
            float vj = v[j] * b2 + w2 * gj * gj;
            float denom = sqrtf(vj) / bc2_sqrt + eps;
            p[j] = pj + neg_step * (mj / denom);
            m[j] = mj;
            v[j] = vj;
        }
    }
    return CT_OK;
}

/* Sum of squares of x[0..n) in double, in the fixed piece order. */
static double sum_squares(const float *x, int64_t n) {
    double total = 0.0;
    int64_t pieces = (n + CHUNK - 1) / CHUNK;
    double part[BATCH];
    for (int64_t p0 = 0; p0 < pieces; p0 += BATCH) {
        int nb = (int)(pieces - p0 < BATCH ? pieces - p0 : BATCH);
#pragma omp parallel for schedule(static) if (nb > 1)
        for (int b = 0; b < nb; b++) {
            int64_t lo = (p0 + b) * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
            double s = 0.0;
            for (int64_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
            part[b] = s;
        }
        for (int b = 0; b < nb; b++) total += part[b];
    }
    return total;
}

int ct_cpu_sum_squares(const float *const *xs, const int64_t *ns, size_t n, double *sums) {
    for (size_t i = 0; i < n; i++) sums[i] = sum_squares(xs[i], ns[i]);
    return CT_OK;
}

int ct_cpu_scale(float c, float *const *xs, const int64_t *ns, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float *x = xs[i];
        int64_t numel = ns[i];
#pragma omp parallel for schedule(static) if (numel > 32768)
        for (int64_t j = 0; j < numel; j++) x[j] *= c;
    }
    return CT_OK;
}
