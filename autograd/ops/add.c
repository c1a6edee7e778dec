/* add: y = a + b. Backward: da += dy, db += dy. The forward uses the backend's
 * fused add_fwd when it has one, else copy + axpy; ct_add_entry leaves it to
 * the caller (ct_add_rmsnorm, ops/rmsnorm.c). */
#include "../ct_error.h"
#include "../ops.h"

static int add_backward(ct_tape *t, const ct_tape_entry *e) {
    for (int i = 0; i < 2; i++) {
        ct_tensor *x = e->in[i];
        if (!x->requires_grad) continue;
        ct_tensor *g = ct_grad(t, x);
        if (!g) return CT_ERUNTIME;
        CT_TRY(t->be->axpy(1.0f, e->out->grad, g));
    }
    return CT_OK;
}

static const ct_op_def k_add = {"add", add_backward};

/* The output's value is ADD_COMPUTE'd here, ADD_STORAGE only (the caller
 * writes it: ct_add_entry), or ADD_NONE: never read (ct_add_tail in a
 * recomputation), so not even stored. */
enum { ADD_COMPUTE, ADD_STORAGE, ADD_NONE };

static ct_tensor *add(ct_tape *t, ct_tensor *a, ct_tensor *b, int value) {
    char sa[64], sb[64];
    if (!ct_same_shape(a, b) || a->dtype != t->be->act_dtype || b->dtype != a->dtype) {
        ct_errorf(CT_ERUNTIME, "add: shapes %s and %s (%s, %s) must match and be the backend's activation dtype",
                  ct_shape_str(a, sa, sizeof sa), ct_shape_str(b, sb, sizeof sb),
                  ct_dtype_name(a->dtype), ct_dtype_name(b->dtype));
        return NULL;
    }
    ct_tensor *y = value != ADD_NONE ? ct_tape_new_like(t, a) : ct_tape_header(t, t->be->act_dtype, a->ndim, a->shape);
    if (!y || ct_backend_require(t->be, CT_OP_ADD, NULL)) return NULL;
    if (value != ADD_COMPUTE) {
        /* only the output and the entry matter here */
    } else if (t->be->add_fwd) { /* one pass: read a, b, write y */
        if (t->be->add_fwd(a, b, y)) return NULL;
    } else if (t->be->copy(y->data, a->data, ct_nbytes(a)) || t->be->axpy(1.0f, b, y)) {
        return NULL;
    }
    ct_tensor *in[2] = {a, b};
    if (ct_tape_record(t, &k_add, y, in, 2, NULL)) return NULL;
    return y;
}

ct_tensor *ct_add(ct_tape *t, ct_tensor *a, ct_tensor *b) { return add(t, a, b, ADD_COMPUTE); }

ct_tensor *ct_add_tail(ct_tape *t, ct_tensor *a, ct_tensor *b) {
    return add(t, a, b, ct_tape_recomputing(t) ? ADD_NONE : ADD_COMPUTE);
}

ct_tensor *ct_add_entry(ct_tape *t, ct_tensor *a, ct_tensor *b) { return add(t, a, b, ADD_STORAGE); }
