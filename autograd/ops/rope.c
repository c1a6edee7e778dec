/* rope: checks the layout and the scaling parameters, saves a copy of the
 * parameters (positions are the second input) for the backward, which rotates
 * dy back by the same angles. */
#include <math.h>

#include "../ct_error.h"
#include "../ops.h"

typedef struct {
    ct_rope_params p; /* copy: the caller's struct may not outlive the step */
} rope_saved;

static int rope_backward(ct_tape *t, const ct_tape_entry *e) {
    const rope_saved *s = e->saved;
    ct_tensor *x = e->in[0];
    if (!x->requires_grad) return CT_OK;
    ct_tensor *dx = ct_grad(t, x);
    if (!dx) return CT_ERUNTIME;
    return t->be->rope_bwd(e->out->grad, e->in[1], &s->p, dx);
}

static const ct_op_def k_rope = {"rope", rope_backward};

/* Rejects parameter sets the kernels cannot apply; cols = x's last dim. */
static int rope_check(const ct_rope_params *p, int64_t cols) {
    if (p->head_dim < 2 || p->head_dim % 2)
        return ct_errorf(CT_EINPUT, "rope: head_dim %d must be even and >= 2", p->head_dim);
    if (cols % p->head_dim)
        return ct_errorf(CT_EINPUT, "rope: row width %lld is not a multiple of head_dim %d",
                         (long long)cols, p->head_dim);
    int64_t heads = cols / p->head_dim;
    if (p->group < 1 || heads % p->group || p->rotate_per_group < 0 ||
        p->rotate_per_group > p->group)
        return ct_errorf(CT_EINPUT,
                         "rope: %lld heads cannot be taken in groups of %d rotating the first %d "
                         "(need group >= 1 dividing the head count, 0 <= rotate <= group)",
                         (long long)heads, p->group, p->rotate_per_group);
    if (!(p->theta > 0.0) || !isfinite(p->theta))
        return ct_errorf(CT_EINPUT, "rope: rope_theta %g must be a positive number", p->theta);
    switch (p->scaling) {
    case CT_ROPE_NONE: return CT_OK;
    case CT_ROPE_LINEAR:
    case CT_ROPE_DYNAMIC: break;
    default: return ct_errorf(CT_EINPUT, "rope: unknown rope_scaling kind %d", p->scaling);
    }
    if (!(p->factor > 0.0) || !isfinite(p->factor))
        return ct_errorf(CT_EINPUT, "rope: rope_scaling.factor %g must be a positive number",
                         p->factor);
    if (p->scaling == CT_ROPE_DYNAMIC) {
        if (p->max_pos < 1)
            return ct_errorf(CT_EINPUT,
                             "rope: dynamic scaling needs max_position_embeddings >= 1 (got %lld)",
                             (long long)p->max_pos);
        if (p->seq_len > p->max_pos && p->head_dim <= 2)
            return ct_errorf(CT_EINPUT,
                             "rope: dynamic NTK scaling needs head_dim > 2 (exponent d/(d-2)), got %d",
                             p->head_dim);
    }
    return CT_OK;
}

ct_tensor *ct_rope(ct_tape *t, ct_tensor *x, ct_tensor *pos, const ct_rope_params *p) {
    char sx[64], sp[64];
    if (x->dtype != t->be->act_dtype || x->ndim < 2 || pos->dtype != CT_I32 ||
        ct_numel(pos) != ct_rows(x)) {
        ct_errorf(CT_EINPUT, "rope: x %s must be [T, heads*head_dim] in the backend's activation dtype and pos %s i32 [T] (got %s, %s)",
                  ct_shape_str(x, sx, sizeof sx), ct_shape_str(pos, sp, sizeof sp),
                  ct_dtype_name(x->dtype), ct_dtype_name(pos->dtype));
        return NULL;
    }
    if (rope_check(p, ct_dim_from_end(x, 1))) return NULL;
    ct_tensor *in[2] = {x, pos};
    bool grad = ct_tape_wants_grad(t, in, 2);
    ct_tensor *y = ct_tape_new_like(t, x);
    if (!y || ct_backend_require(t->be, CT_OP_ROPE, NULL) || t->be->rope_fwd(x, pos, p, y)) return NULL;
    rope_saved *s = NULL;
    if (grad) {
        if (!(s = ct_tape_meta(t, sizeof *s))) return NULL;
        s->p = *p;
    }
    if (ct_tape_record(t, &k_rope, y, in, 2, s)) return NULL;
    return y;
}
