/* Global gradient L2 norm (deterministic for any thread count), clipping as
 * torch.nn.utils.clip_grad_norm_, and the non-finite gradient check. The
 * per-tensor sums of squares and the scaling are the backend's sum_squares and
 * scale entries (autograd/cpu/optim.c says how the CPU keeps the order fixed);
 * the tensors' sums are added here, in list order, in double. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "autograd/ct_error.h"
#include "trainer/optim/adamw.h"

#define GROUP 64 /* tensors per backend call (argument lists on the stack) */

/* Message naming the first non-finite grad element (called only when the
 * norm came out non-finite, so the download and scan are off the normal path). */
static int report_nonfinite(const ct_backend *be, ct_tensor *const *params, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const ct_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g) continue;
        int64_t numel = ct_numel(g);
        float *x = malloc(ct_nbytes(g) ? ct_nbytes(g) : 1); /* [numel] host copy */
        if (!x) return ct_errorf(CT_ENONFINITE, "the gradient norm is not finite");
        if (be->download(x, g->data, ct_nbytes(g))) {
            free(x);
            return ct_error_wrap(CT_ENONFINITE, "the gradient norm is not finite");
        }
        for (int64_t j = 0; j < numel; j++) {
            if (!isfinite(x[j])) {
                char nb[32];
                const char *nm = params[i]->name;
                if (!nm) {
                    snprintf(nb, sizeof nb, "#%zu", i);
                    nm = nb;
                }
                int rc = ct_errorf(CT_ENONFINITE, "gradient of '%s' is %s at element %lld: the loss "
                                   "diverged (lower the learning rate, check the data, or resume "
                                   "from an earlier checkpoint)", nm, isnan(x[j]) ? "NaN" : "Inf",
                                   (long long)j);
                free(x);
                return rc;
            }
        }
        free(x);
    }
    return ct_errorf(CT_ENONFINITE, "the gradient norm is not finite");
}

/* Gathers up to GROUP grads from params[*at..n) into xs/ns (skipping
 * tensors without a grad); advances *at. Returns the count, or -1 with the
 * message set for a grad that is not f32 on be's device. */
static int gather(const ct_backend *be, ct_tensor *const *params, size_t n, size_t *at, float **xs,
                  int64_t *ns) {
    int k = 0;
    for (; *at < n && k < GROUP; ++*at) {
        const ct_tensor *g = params[*at] ? params[*at]->grad : NULL;
        if (!g) continue;
        if (g->dtype != CT_F32 || g->device != be->device) {
            ct_errorf(CT_EINPUT, "gradient norm: grad of '%s' is not an f32 tensor on backend '%s'",
                      params[*at]->name ? params[*at]->name : "?", be->name);
            return -1;
        }
        xs[k] = (float *)g->data;
        ns[k++] = ct_numel(g);
    }
    return k;
}

int ct_grad_global_norm(const ct_backend *be, ct_tensor *const *params, size_t n, double *norm) {
    CT_TRY(ct_backend_require(be, CT_OP_GRAD_NORM, NULL));
    double total = 0.0, sums[GROUP];
    float *xs[GROUP];
    int64_t ns[GROUP];
    for (size_t at = 0; at < n;) {
        int k = gather(be, params, n, &at, xs, ns);
        if (k < 0) return CT_EINPUT;
        if (k == 0) continue;
        CT_TRY(be->sum_squares((const float *const *)xs, ns, (size_t)k, sums));
        for (int i = 0; i < k; i++) total += sums[i];
    }
    /* A float's square is at most ~1.2e77, so the double sum overflows only
     * from an Inf or NaN input: non-finite norm <=> non-finite grad. */
    *norm = sqrt(total);
    if (!isfinite(*norm)) return report_nonfinite(be, params, n);
    return CT_OK;
}

int ct_grad_clip_norm(const ct_backend *be, ct_tensor *const *params, size_t n, double max_norm,
                      double *norm) {
    if (!(max_norm > 0.0 && isfinite(max_norm)))
        return ct_errorf(CT_EINPUT, "gradient clipping: max_norm = %g must be finite and > 0",
                         max_norm);
    CT_TRY(ct_grad_global_norm(be, params, n, norm));
    double coef = max_norm / (*norm + 1e-6);
    if (coef >= 1.0) return CT_OK; /* torch clamps to 1: multiplying by 1 changes nothing */
    float *xs[GROUP];
    int64_t ns[GROUP];
    for (size_t at = 0; at < n;) {
        int k = gather(be, params, n, &at, xs, ns);
        if (k < 0) return CT_EINPUT;
        if (k > 0) CT_TRY(be->scale((float)coef, xs, ns, (size_t)k));
    }
    return CT_OK;
}
