/* linear_cross_entropy: output projection fused with the loss.
 *
 * When a gradient may flow, the kernel computes the gradient of the NLL sum in
 * the forward pass itself (into tape tensors dx_nll, da_nll, db_nll), so the
 * [T, V] logits are never needed again; backward only scales those by
 * dloss/norm and adds them to the real grads. */
#include <math.h>

#include "../ct_error.h"
#include "../ops.h"

typedef struct {
    ct_tensor *dx_nll; /* [T, D] d(nll_sum)/dx, NULL when x needs no grad */
    ct_tensor *da_nll; /* [r, D] d(nll_sum)/dA, NULL when not needed */
    ct_tensor *db_nll; /* [V, r] d(nll_sum)/dB, NULL when not needed */
    double norm;       /* loss = nll_sum / norm; 0 when nothing was trained */
} xent_saved;

static int xent_backward(ct_tape *t, const ct_tape_entry *e) {
    const xent_saved *s = e->saved;
    if (s->norm <= 0.0) return CT_OK; /* no trained token: every grad is 0 */
    float dloss;
    CT_TRY(t->be->download(&dloss, e->out->grad->data, sizeof dloss));
    float k = (float)((double)dloss / s->norm);
    const ct_tensor *part[3] = {s->dx_nll, s->da_nll, s->db_nll};
    for (int i = 0; i < e->n_in; i++) {
        if (!part[i]) continue;
        ct_tensor *g = ct_grad(t, e->in[i]);
        if (!g) return CT_ERUNTIME;
        CT_TRY(t->be->axpy(k, part[i], g)); /* grad += (dloss/norm)·d(nll_sum) */
    }
    return CT_OK;
}

static const ct_op_def k_linear_xent = {"linear_cross_entropy", xent_backward};

/* The labels' dtype and shape; their values (each -100 or in [0, V)) are the
 * kernel's to check, which names the first bad position (CT_EINPUT): the op
 * never reads device memory. */
static int check_labels(const ct_tensor *labels, int64_t T) {
    char sl[64];
    if (labels->dtype != CT_I32 || ct_numel(labels) != T)
        return ct_errorf(CT_EINPUT, "linear_cross_entropy: labels %s (%s) must be i32 with one label per token (%lld)",
                         ct_shape_str(labels, sl, sizeof sl), ct_dtype_name(labels->dtype), (long long)T);
    return CT_OK;
}

ct_tensor *ct_linear_cross_entropy(ct_tape *t, ct_tensor *x, const ct_linear *head,
                                   ct_tensor *labels, float norm, int64_t *n_trained) {
    if (ct_linear_check("linear_cross_entropy", x, head, t->be->act_dtype)) return NULL;
    int64_t T = ct_rows(x), D = ct_dim_from_end(x, 1);
    if (check_labels(labels, T)) return NULL;
    uint64_t seed;
    ct_linear eff = ct_linear_for_step(t, head, &seed);
    eff.id = seed; /* the kernel contract: head->id carries the mixed dropout seed */

    ct_tensor *in[3] = {x, head->a, head->b};
    int n_in = head->a ? 3 : 1;
    bool grad = ct_tape_wants_grad(t, in, n_in);
    xent_saved *s = NULL;
    if (grad) {
        if (!(s = ct_tape_meta(t, sizeof *s))) return NULL;
        s->dx_nll = s->da_nll = s->db_nll = NULL;
        int64_t xs[2] = {T, D};
        if (x->requires_grad && !(s->dx_nll = ct_tape_zeros(t, x->dtype, 2, xs))) return NULL;
        if (head->a && head->a->requires_grad &&
            !(s->da_nll = ct_tape_zeros(t, CT_F32, 2, head->a->shape)))
            return NULL;
        if (head->b && head->b->requires_grad &&
            !(s->db_nll = ct_tape_zeros(t, CT_F32, 2, head->b->shape)))
            return NULL;
    }
    double nll_sum = 0.0;
    int64_t n = 0;
    ct_op_query q = {head->w->dtype, head->compute};
    if (ct_backend_require(t->be, CT_OP_LINEAR_XENT, &q) || ct_backend_require(t->be, CT_OP_ADD, NULL))
        return NULL;
    if (t->be->linear_xent_fwd(x, &eff, labels, 1.0f, &nll_sum, &n,
                               s ? s->dx_nll : NULL, s ? s->da_nll : NULL, s ? s->db_nll : NULL,
                               &t->scratch))
        return NULL;
    double nrm = n == 0 ? 0.0 : norm > 0.0f ? (double)norm : (double)n;
    float value = nrm > 0.0 ? (float)(nll_sum / nrm) : 0.0f;
    int64_t one = 1;
    ct_tensor *loss = ct_tape_new(t, CT_F32, 1, &one);
    if (!loss || t->be->upload(loss->data, &value, sizeof value)) return NULL;
    if (s) s->norm = nrm;
    if (ct_tape_record(t, &k_linear_xent, loss, in, n_in, s)) return NULL;
    if (n_trained) *n_trained = n;
    return loss;
}
