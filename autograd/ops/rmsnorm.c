/* rmsnorm: saves the per-row rstd [rows] for backward. */
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

ct_tensor *ct_rmsnorm(ct_tape *t, ct_tensor *x, ct_tensor *w, float eps) {
    bool wfloat = w->dtype == CT_F32 || w->dtype == CT_BF16 || w->dtype == CT_F16;
    if (x->dtype != t->be->act_dtype || ct_numel(w) != ct_dim_from_end(x, 1) || !wfloat ||
        (w->requires_grad && w->dtype != CT_F32)) {
        ct_errorf(CT_EINPUT, "rmsnorm: x must be in the backend's activation dtype with last dim %lld = weight size %lld; weight "
                  "f32/bf16/f16, f32 when trainable (got %s)",
                  (long long)ct_dim_from_end(x, 1), (long long)ct_numel(w), ct_dtype_name(w->dtype));
        return NULL;
    }
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
    if (ct_backend_require(t->be, CT_OP_RMSNORM, &(ct_op_query){w->dtype, CT_DTYPE_COUNT}) ||
        t->be->rmsnorm_fwd(x, w, eps, y, s ? s->rstd : NULL))
        return NULL;
    if (ct_tape_record(t, &k_rmsnorm, y, in, 2, s)) return NULL;
    return y;
}
