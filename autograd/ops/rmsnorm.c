/* rmsnorm: saves the per-row rstd [rows] for backward. ct_add_rmsnorm: the
 * residual add before it in the same kernel call (add_rmsnorm_fwd), recorded
 * as the two ops it replaces. */
#include "../ct_error.h"
#include "../ops.h"

typedef struct {
    ct_tensor *rstd; /* [rows] f32 */
    float eps;
} rmsnorm_saved;

static int rmsnorm_backward(ct_tape *t, const ct_tape_entry *e) {
    const rmsnorm_saved *s = e->saved;
    ct_tensor *x = e->in[0], *w = e->in[1];
    ct_tensor *dx = NULL, *dw = NULL;
    if (x->requires_grad && !(dx = ct_grad(t, x))) return CT_ERUNTIME;
    if (w->requires_grad && !(dw = ct_grad(t, w))) return CT_ERUNTIME;
    return t->be->rmsnorm_bwd(x, w, s->rstd, e->out->grad, dx, dw);
}

static const ct_op_def k_rmsnorm = {"rmsnorm", rmsnorm_backward};

/* CT_EINPUT unless x (or the sum that will be x) and w suit the op. */
static int check(const ct_tape *t, const ct_tensor *x, const ct_tensor *w) {
    bool wfloat = w->dtype == CT_F32 || w->dtype == CT_BF16 || w->dtype == CT_F16;
    if (x->dtype != t->be->act_dtype || ct_numel(w) != ct_dim_from_end(x, 1) || !wfloat ||
        (w->requires_grad && w->dtype != CT_F32))
        return ct_errorf(CT_EINPUT, "rmsnorm: x must be in the backend's activation dtype with last dim %lld = weight size %lld; weight "
                         "f32/bf16/f16, f32 when trainable (got %s)",
                         (long long)ct_dim_from_end(x, 1), (long long)ct_numel(w), ct_dtype_name(w->dtype));
    return CT_OK;
}

/* y = rmsnorm(x)·w, recorded. With a and b (the fused path) x is their sum,
 * written by add_rmsnorm_fwd in the same call; else x is read. */
static ct_tensor *norm(ct_tape *t, ct_tensor *x, ct_tensor *w, float eps, ct_tensor *a, ct_tensor *b) {
    ct_tensor *in[2] = {x, w};
    bool grad = ct_tape_wants_grad(t, in, 2);
    ct_tensor *y = ct_tape_new_like(t, x);
    if (!y) return NULL;
    rmsnorm_saved *s = NULL;
    if (grad) {
        int64_t rows = ct_rows(x);
        s = ct_tape_meta(t, sizeof *s);
        if (!s || !(s->rstd = ct_tape_new(t, CT_F32, 1, &rows))) return NULL;
        s->eps = eps;
    }
    ct_tensor *rstd = s ? s->rstd : NULL;
    if (ct_backend_require(t->be, CT_OP_RMSNORM, &(ct_op_query){w->dtype, CT_DTYPE_COUNT}) ||
        (a ? t->be->add_rmsnorm_fwd(a, b, w, eps, x, y, rstd) : t->be->rmsnorm_fwd(x, w, eps, y, rstd)))
        return NULL;
    if (ct_tape_record(t, &k_rmsnorm, y, in, 2, s)) return NULL;
    return y;
}

ct_tensor *ct_rmsnorm(ct_tape *t, ct_tensor *x, ct_tensor *w, float eps) {
    return check(t, x, w) ? NULL : norm(t, x, w, eps, NULL, NULL);
}

ct_tensor *ct_add_rmsnorm(ct_tape *t, ct_tensor *a, ct_tensor *b, ct_tensor *w, float eps, ct_tensor **sum) {
    *sum = NULL;
    if (check(t, a, w)) return NULL;
    /* The add's entry first: backward runs the norm's, which adds into the
     * sum's grad, before the add's passes that grad on to a and b. */
    bool fused = t->be->add_rmsnorm_fwd != NULL;
    ct_tensor *s = fused ? ct_add_entry(t, a, b) : ct_add(t, a, b);
    ct_tensor *y = s ? norm(t, s, w, eps, fused ? a : NULL, b) : NULL;
    if (y) *sum = s;
    return y;
}
