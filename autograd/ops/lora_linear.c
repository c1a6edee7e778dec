/* lora_linear: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ over a frozen W and an optional
 * LoRA pair. Saves u = drop(x)·Aᵀ [T, r] and a copy of the layer; x itself is
 * the recorded input. The dropout mask is never stored: its seed is a pure
 * function of (tape->step_seed, lin->id), so backward and checkpoint
 * recomputation regenerate the same mask. */
#include <limits.h>
#include <math.h>

#include "../ct_error.h"
#include "../ct_inline.h"
#include "../ops.h"

typedef struct {
    ct_linear lin; /* copy; dropout is 0 when this forward applied none */
    uint64_t seed;
    ct_tensor *u; /* [T, r] activation dtype, NULL without LoRA */
} lora_saved;

static int lora_linear_backward(ct_tape *t, const ct_tape_entry *e) {
    const lora_saved *s = e->saved;
    ct_tensor *x = e->in[0];
    ct_tensor *a = s->lin.a, *b = s->lin.b;
    ct_tensor *dx = NULL, *da = NULL, *db = NULL;
    if (x->requires_grad && !(dx = ct_grad(t, x))) return CT_ERUNTIME;
    if (a && a->requires_grad && !(da = ct_grad(t, a))) return CT_ERUNTIME;
    if (b && b->requires_grad && !(db = ct_grad(t, b))) return CT_ERUNTIME;
    return t->be->lora_linear_bwd(x, &s->lin, s->seed, s->u, e->out->grad, dx, da, db,
                                  &t->scratch);
}

static const ct_op_def k_lora_linear = {"lora_linear", lora_linear_backward};

static bool frozen_dtype_ok(ct_dtype dt) {
    return dt == CT_F32 || dt == CT_BF16 || dt == CT_F16 || dt == CT_NF4;
}

int ct_linear_check(const char *op, const ct_tensor *x, const ct_linear *lin, ct_dtype act) {
    const ct_tensor *w = lin->w, *a = lin->a, *b = lin->b;
    const char *name = w && w->name ? w->name : "(unnamed weight)";
    char sx[64], sw[64], sa[64], sb[64];
    if (!w || w->ndim != 2 || !frozen_dtype_ok(w->dtype))
        return ct_errorf(CT_EINPUT, "%s %s: the base weight must be a 2-D [out, in] f32/bf16/f16/nf4 tensor",
                         op, name);
    if (x->dtype != act || ct_dim_from_end(x, 1) != w->shape[1])
        return ct_errorf(CT_EINPUT, "%s %s: input %s (%s) does not fit weight %s [out, in]: x must be %s "
                         "activations with last dim = in; check the model config's sizes",
                         op, name, ct_shape_str(x, sx, sizeof sx), ct_dtype_name(x->dtype),
                         ct_shape_str(w, sw, sizeof sw), ct_dtype_name(act));
    if (ct_compute_dtype_check(lin->compute, NULL))
        return ct_error_wrap(CT_EINPUT, "%s %s", op, name);
    if (ct_rows(x) > INT_MAX || w->shape[0] > INT_MAX || w->shape[1] > INT_MAX)
        return ct_errorf(CT_EINPUT, "%s %s: a dimension of x %s or weight %s exceeds %d (BLAS int)",
                         op, name, ct_shape_str(x, sx, sizeof sx), ct_shape_str(w, sw, sizeof sw), INT_MAX);
    if (!a && !b) return CT_OK;
    if (!a || !b || a->ndim != 2 || b->ndim != 2 || a->dtype != CT_F32 || b->dtype != CT_F32 ||
        a->shape[0] < 1 || a->shape[1] != w->shape[1] || b->shape[0] != w->shape[0] ||
        b->shape[1] != a->shape[0])
        return ct_errorf(CT_EINPUT, "%s %s: LoRA A %s and B %s must be f32 [r, in] and [out, r] for weight %s",
                         op, name, a ? ct_shape_str(a, sa, sizeof sa) : "(none)",
                         b ? ct_shape_str(b, sb, sizeof sb) : "(none)", ct_shape_str(w, sw, sizeof sw));
    if (!(lin->dropout >= 0.0f && lin->dropout < 1.0f) || !isfinite(lin->scale))
        return ct_errorf(CT_EINPUT, "%s %s: LoRA dropout %g must be in [0, 1) and scale %g finite",
                         op, name, (double)lin->dropout, (double)lin->scale);
    return CT_OK;
}

ct_linear ct_linear_for_step(const ct_tape *t, const ct_linear *lin, uint64_t *seed) {
    ct_linear eff = *lin;
    /* Training = recording, or the no-record first pass of a checkpoint whose
     * recomputation will record: both must use the same mask. */
    bool training = t->recording || t->in_checkpoint;
    if (!lin->a || !training) eff.dropout = 0.0f;
    *seed = ct_mix64(t->step_seed ^ ct_mix64(lin->id));
    return eff;
}

static ct_tensor *lora_linear(ct_tape *t, ct_tensor *x, const ct_linear *lin, bool value) {
    if (ct_linear_check("lora_linear", x, lin, t->be->act_dtype)) return NULL;
    uint64_t seed;
    ct_linear eff = ct_linear_for_step(t, lin, &seed);
    ct_tensor *in[3] = {x, lin->a, lin->b};
    int n_in = lin->a ? 3 : 1;
    bool grad = ct_tape_wants_grad(t, in, n_in);

    int64_t shape[CT_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[x->ndim - 1] = lin->w->shape[0];
    /* A recomputation of a _tail op never reads y: no storage then. */
    ct_tensor *y = value ? ct_tape_new(t, t->be->act_dtype, x->ndim, shape) : ct_tape_header(t, t->be->act_dtype, x->ndim, shape);
    if (!y) return NULL;
    lora_saved *s = NULL;
    if (grad) {
        if (!(s = ct_tape_meta(t, sizeof *s))) return NULL;
        s->lin = eff;
        s->seed = seed;
        s->u = NULL;
        int64_t ushape[2] = {ct_rows(x), lin->a ? lin->a->shape[0] : 0};
        if (lin->a && !(s->u = ct_tape_new(t, t->be->act_dtype, 2, ushape))) return NULL;
    }
    ct_op_query q = {lin->w->dtype, lin->compute};
    if (ct_backend_require(t->be, CT_OP_LORA_LINEAR, &q)) return NULL;
    if (t->be->lora_linear_fwd(x, &eff, seed, value ? y : NULL, s ? s->u : NULL, &t->scratch))
        return NULL;
    if (ct_tape_record(t, &k_lora_linear, y, in, n_in, s)) return NULL;
    return y;
}

ct_tensor *ct_lora_linear(ct_tape *t, ct_tensor *x, const ct_linear *lin) {
    return lora_linear(t, x, lin, true);
}

ct_tensor *ct_lora_linear_tail(ct_tape *t, ct_tensor *x, const ct_linear *lin) {
    return lora_linear(t, x, lin, !ct_tape_recomputing(t));
}
