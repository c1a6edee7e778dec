/* swiglu: silu(gate) * up; backward recomputes the sigmoid from the inputs. */
#include "../ct_error.h"
#include "../ops.h"

static int swiglu_backward(ct_tape *t, const ct_tape_entry *e) {
    ct_tensor *g = e->in[0], *u = e->in[1];
    ct_tensor *dg = NULL, *du = NULL;
    if (g->requires_grad && !(dg = ct_grad(t, g))) return CT_ERUNTIME;
    if (u->requires_grad && !(du = ct_grad(t, u))) return CT_ERUNTIME;
    return t->be->swiglu_bwd(g, u, e->out->grad, dg, du);
}

static const ct_op_def k_swiglu = {"swiglu", swiglu_backward};

ct_tensor *ct_swiglu(ct_tape *t, ct_tensor *gate, ct_tensor *up) {
    char sa[64], sb[64];
    if (!ct_same_shape(gate, up) || gate->dtype != t->be->act_dtype || up->dtype != gate->dtype) {
        ct_errorf(CT_EINPUT, "swiglu: gate %s and up %s must be of one shape, in the backend's activation dtype",
                  ct_shape_str(gate, sa, sizeof sa), ct_shape_str(up, sb, sizeof sb));
        return NULL;
    }
    ct_tensor *y = ct_tape_new_like(t, gate);
    if (!y || ct_backend_require(t->be, CT_OP_SWIGLU, NULL) || t->be->swiglu_fwd(gate, up, y)) return NULL;
    ct_tensor *in[2] = {gate, up};
    if (ct_tape_record(t, &k_swiglu, y, in, 2, NULL)) return NULL;
    return y;
}
