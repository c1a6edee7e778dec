/* Global gradient L2 norm (deterministic for any thread count), clipping as
 * torch.nn.utils.clip_grad_norm_, and the non-finite gradient check.
 *
 * Determinism: a tensor is cut into fixed CHUNK-element pieces whatever the
 * thread count; each piece's sum of squares is a sequential double loop, and
 * the piece sums are added in piece order by one thread. Threads only decide
 * who computes which piece, never the order of any addition. */
#include <math.h>
#include <stdio.h>

#include "autograd/ct_error.h"
#include "trainer/optim/adamw.h"

#define CHUNK 8192  /* elements per piece */
#define BATCH 256   /* pieces summed per parallel round (partials on the stack) */

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

/* Message naming the first non-finite grad element (called only when the
 * norm came out non-finite, so the scan is off the normal path). */
static int report_nonfinite(ct_tensor *const *params, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const ct_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g) continue;
        const float *x = (const float *)g->data;
        int64_t numel = ct_numel(g);
        for (int64_t j = 0; j < numel; j++) {
            if (!isfinite(x[j])) {
                char nb[32];
                const char *nm = params[i]->name;
                if (!nm) {
                    snprintf(nb, sizeof nb, "#%zu", i);
                    nm = nb;
                }
                return ct_errorf(CT_ENONFINITE, "gradient of '%s' is %s at element %lld: the loss "
                                 "diverged (lower the learning rate, check the data, or resume "
                                 "from an earlier checkpoint)", nm, isnan(x[j]) ? "NaN" : "Inf",
                                 (long long)j);
            }
        }
    }
    return ct_errorf(CT_ENONFINITE, "the gradient norm is not finite");
}

int ct_grad_global_norm(ct_tensor *const *params, size_t n, double *norm) {
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        const ct_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g) continue;
        if (g->dtype != CT_F32 || g->device != CT_CPU)
            return ct_errorf(CT_EINPUT, "gradient norm: grad of '%s' is not an f32 host tensor",
                             params[i]->name ? params[i]->name : "?");
        total += sum_squares((const float *)g->data, ct_numel(g));
    }
    /* A float's square is at most ~1.2e77, so the double sum overflows only
     * from an Inf or NaN input: non-finite norm <=> non-finite grad. */
    *norm = sqrt(total);
    if (!isfinite(*norm)) return report_nonfinite(params, n);
    return CT_OK;
}

int ct_grad_clip_norm(ct_tensor *const *params, size_t n, double max_norm, double *norm) {
    if (!(max_norm > 0.0 && isfinite(max_norm)))
        return ct_errorf(CT_EINPUT, "gradient clipping: max_norm = %g must be finite and > 0",
                         max_norm);
    CT_TRY(ct_grad_global_norm(params, n, norm));
    double coef = max_norm / (*norm + 1e-6);
    if (coef >= 1.0) return CT_OK; /* torch clamps to 1: multiplying by 1 changes nothing */
    const float c = (float)coef;
    for (size_t i = 0; i < n; i++) {
        ct_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g) continue;
        float *x = (float *)g->data;
        int64_t numel = ct_numel(g);
#pragma omp parallel for schedule(static) if (numel > 32768)
        for (int64_t j = 0; j < numel; j++) x[j] *= c;
    }
    return CT_OK;
}
