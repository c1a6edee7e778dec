#include "tape.h"

#include <stdlib.h>
#include <string.h>

#include "ct_error.h"

int ct_tape_init(ct_tape *t, const ct_backend *be, size_t block_bytes) {
    memset(t, 0, sizeof *t);
    t->be = be;
    ct_arena_init(&t->meta, ct_host_allocator(), (size_t)1 << 20);
    ct_arena_init(&t->main, be->mem, block_bytes);
    ct_arena_init(&t->scratch, be->mem, block_bytes);
    t->data = &t->main;
    t->recording = true;
    return CT_OK;
}

void ct_tape_free(ct_tape *t) {
    ct_arena_free(&t->meta);
    ct_arena_free(&t->main);
    ct_arena_free(&t->scratch);
    free(t->entries);
    memset(t, 0, sizeof *t);
}

void ct_tape_reset(ct_tape *t) {
    ct_arena_reset(&t->meta);
    ct_arena_reset(&t->main);
    ct_arena_reset(&t->scratch);
    t->data = &t->main;
    t->n_entries = 0;
    t->in_checkpoint = false;
    t->spare_grad = NULL;
    t->spare_bytes = 0;
}

bool ct_tape_set_recording(ct_tape *t, bool on) {
    bool prev = t->recording;
    t->recording = on;
    return prev;
}

void *ct_tape_meta(ct_tape *t, size_t bytes) { return ct_arena_alloc(&t->meta, bytes); }

ct_tensor *ct_tape_new(ct_tape *t, ct_dtype dt, int ndim, const int64_t *shape) {
    ct_tensor *x = ct_tape_meta(t, sizeof *x);
    if (!x) return NULL;
    if (ct_tensor_init(x, dt, t->be->device, ndim, shape, NULL)) return NULL;
    x->data = ct_arena_alloc(t->data, ct_nbytes(x));
    return x->data ? x : NULL;
}

ct_tensor *ct_tape_header(ct_tape *t, ct_dtype dt, int ndim, const int64_t *shape) {
    ct_tensor *x = ct_tape_meta(t, sizeof *x);
    if (!x || ct_tensor_init(x, dt, t->be->device, ndim, shape, NULL)) return NULL;
    x->data = NULL;
    return x;
}

ct_tensor *ct_tape_zeros(ct_tape *t, ct_dtype dt, int ndim, const int64_t *shape) {
    ct_tensor *x = ct_tape_new(t, dt, ndim, shape);
    if (x && t->be->zero(x->data, ct_nbytes(x))) return NULL;
    return x;
}

ct_tensor *ct_tape_new_like(ct_tape *tp, const ct_tensor *t) {
    return ct_tape_new(tp, tp->be->act_dtype, t->ndim, t->shape);
}

bool ct_tape_wants_grad(const ct_tape *t, ct_tensor *const *in, int n_in) {
    if (!t->recording) return false;
    for (int i = 0; i < n_in; i++)
        if (in[i] && in[i]->requires_grad) return true;
    return false;
}

/* A zeroed entry at the end of the tape; NULL with the message set when out of memory. */
static ct_tape_entry *append_entry(ct_tape *t) {
    if (t->n_entries == t->cap_entries) {
        /* Grows during the first steps only; reset keeps the capacity. */
        int cap = t->cap_entries ? 2 * t->cap_entries : 256;
        ct_tape_entry *e = realloc(t->entries, (size_t)cap * sizeof *e);
        if (!e) {
            ct_errorf(CT_ERUNTIME, "tape: out of memory growing to %d entries", cap);
            return NULL;
        }
        t->entries = e;
        t->cap_entries = cap;
    }
    ct_tape_entry *e = &t->entries[t->n_entries++];
    memset(e, 0, sizeof *e);
    return e;
}

int ct_tape_record(ct_tape *t, const ct_op_def *op, ct_tensor *out, ct_tensor *const *in,
                   int n_in, void *saved) {
    if (!ct_tape_wants_grad(t, in, n_in)) return CT_OK;
    if (n_in > CT_MAX_OP_INPUTS)
        return ct_errorf(CT_ERUNTIME, "op %s: %d inputs, at most %d", op->name, n_in,
                         CT_MAX_OP_INPUTS);
    ct_tape_entry *e = append_entry(t);
    if (!e) return CT_ERUNTIME;
    e->op = op;
    e->out = out;
    e->n_in = n_in;
    for (int i = 0; i < n_in; i++) e->in[i] = in[i];
    e->saved = saved;
    out->requires_grad = true;
    return CT_OK;
}

ct_tensor *ct_grad(ct_tape *tp, ct_tensor *t) {
    if (!t->grad) t->grad = ct_tape_zeros(tp, t->dtype == CT_F32 ? CT_F32 : tp->be->act_dtype, t->ndim, t->shape);
    return t->grad;
}

/* A mark: no output, no inputs, only its tag (ct_tape_mark); run_backward
 * calls on_mark for it, never a backward. */
static const ct_op_def k_mark_op = {"mark", NULL};

int ct_tape_mark(ct_tape *t, int tag) {
    if (!t->recording || t->in_checkpoint) return CT_OK;
    ct_tape_entry *e = append_entry(t);
    if (!e) return CT_ERUNTIME;
    e->op = &k_mark_op;
    e->tag = tag;
    return CT_OK;
}

/* Runs the backward of entries [from, n_entries) in reverse. Entries are copied
 * before the call: a checkpoint's backward appends (and may reallocate) entries. */
static int run_backward(ct_tape *t, int from) {
    for (int i = t->n_entries - 1; i >= from; i--) {
        ct_tape_entry e = t->entries[i];
        if (e.op == &k_mark_op) {
            int rc = t->on_mark ? t->on_mark(t->mark_ctx, e.tag) : CT_OK;
            if (rc) return ct_error_wrap(rc, "at backward mark %d", e.tag);
            continue;
        }
        if (!e.out->requires_grad || !e.out->grad) continue; /* nothing flowed here */
        int rc = e.op->backward(t, &e);
        if (rc) return ct_error_wrap(rc, "backward of %s", e.op->name);
    }
    return CT_OK;
}

int ct_backward(ct_tape *t, ct_tensor *loss, float seed) {
    if (ct_numel(loss) != 1)
        return ct_errorf(CT_ERUNTIME, "backward: loss must have one element, has %lld",
                         (long long)ct_numel(loss));
    if (!loss->requires_grad) return CT_OK; /* nothing trainable reaches the loss */
    ct_tensor *g = ct_grad(t, loss);
    if (!g) return CT_ERUNTIME;
    CT_TRY(t->be->upload(g->data, &seed, sizeof seed));
    bool prev = ct_tape_set_recording(t, false); /* backward records nothing */
    int rc = run_backward(t, 0);
    ct_tape_set_recording(t, prev);
    return rc;
}

/* ---- checkpointed segments ---- */

typedef struct {
    ct_segment_fn fn;
    void *ctx;
} checkpoint_saved;

/* The segment input's grad (main arena). Once a segment's backward has run,
 * its output's grad is dead (every consumer of the output ran its backward
 * earlier), so its memory serves the next segment's input grad when that
 * fits: a checkpointed decoder holds two [T, D] grads, not one per layer. */
static ct_tensor *segment_input_grad(ct_tape *t, ct_tensor *in) {
    if (in->grad || !t->spare_grad) return ct_grad(t, in);
    ct_tensor *g = ct_tape_header(t, in->dtype == CT_F32 ? CT_F32 : t->be->act_dtype, in->ndim, in->shape);
    if (!g) return NULL;
    if (ct_nbytes(g) > t->spare_bytes) return ct_grad(t, in);
    g->data = t->spare_grad;
    t->spare_grad = NULL;
    if (t->be->zero(g->data, ct_nbytes(g))) return NULL;
    in->grad = g;
    return g;
}

static int checkpoint_backward(ct_tape *t, const ct_tape_entry *e) {
    const checkpoint_saved *s = e->saved;
    ct_tensor *in = e->in[0];
    ct_tensor *gin = NULL;
    if (in->requires_grad && !(gin = segment_input_grad(t, in))) return CT_ERUNTIME; /* main arena */

    ct_arena_mark meta_mark = ct_arena_get_mark(&t->meta);
    ct_arena_mark scratch_mark = ct_arena_get_mark(&t->scratch);
    int first = t->n_entries;
    t->data = &t->scratch;
    t->in_checkpoint = true;
    bool prev = ct_tape_set_recording(t, true);

    /* A fresh leaf sharing the input's data; its grad is the input's grad, so
     * the recomputed segment accumulates straight into it. */
    int rc = CT_ERUNTIME;
    ct_tensor *x = ct_tape_meta(t, sizeof *x);
    ct_tensor *y = NULL;
    if (x) {
        *x = *in;
        x->grad = gin;
        rc = s->fn(t, s->ctx, x, &y);
    }
    if (!rc && !ct_same_shape(y, e->out))
        rc = ct_errorf(CT_ERUNTIME, "checkpoint: recomputed output changed shape");
    if (!rc && y->requires_grad) {
        y->grad = e->out->grad;
        ct_tape_set_recording(t, false);
        rc = run_backward(t, first);
    }
    t->n_entries = first;
    ct_tape_set_recording(t, prev);
    t->in_checkpoint = false;
    t->data = &t->main;
    ct_arena_rewind(&t->scratch, scratch_mark);
    ct_arena_rewind(&t->meta, meta_mark);
    if (!rc && e->out->grad && e->out->grad->data) { /* dead from here on (see segment_input_grad) */
        t->spare_grad = e->out->grad->data;
        t->spare_bytes = ct_nbytes(e->out->grad);
    }
    return rc;
}

static const ct_op_def k_checkpoint_op = {"checkpoint", checkpoint_backward};

int ct_checkpoint(ct_tape *t, ct_segment_fn fn, void *ctx, ct_tensor *in, ct_tensor **out) {
    /* Nesting is refused first: inside a segment's forward recording is off, so
     * the no_grad shortcut below would otherwise let it pass until backward. */
    if (t->in_checkpoint) return ct_errorf(CT_ERUNTIME, "checkpoint: segments do not nest");
    if (!t->recording) return fn(t, ctx, in, out); /* no_grad: nothing to save */

    /* Forward without recording; intermediates go to scratch and are dropped. */
    ct_arena_mark scratch_mark = ct_arena_get_mark(&t->scratch);
    t->data = &t->scratch;
    t->in_checkpoint = true;
    ct_tape_set_recording(t, false);
    ct_tensor *y = NULL;
    int rc = fn(t, ctx, in, &y);
    ct_tape_set_recording(t, true);
    t->in_checkpoint = false;
    t->data = &t->main;

    ct_tensor *kept = NULL;
    if (!rc) {
        kept = ct_tape_new(t, y->dtype, y->ndim, y->shape);
        if (!kept) rc = CT_ERUNTIME;
        else rc = t->be->copy(kept->data, y->data, ct_nbytes(y));
    }
    ct_arena_rewind(&t->scratch, scratch_mark);
    if (rc) return rc;

    checkpoint_saved *s = ct_tape_meta(t, sizeof *s);
    if (!s) return CT_ERUNTIME;
    s->fn = fn;
    s->ctx = ctx;
    /* The segment may use trainable parameters even when `in` needs no grad, so
     * the entry is always recorded while recording. */
    ct_tensor *ins[1] = {in};
    bool in_rg = in->requires_grad;
    in->requires_grad = true; /* force the record; restored below */
    rc = ct_tape_record(t, &k_checkpoint_op, kept, ins, 1, s);
    in->requires_grad = in_rg;
    if (rc) return rc;
    *out = kept;
    return CT_OK;
}

/* ---- heap tensors ---- */

ct_tensor *ct_tensor_new(const ct_backend *be, ct_dtype dt, int ndim, const int64_t *shape,
                         bool with_grad) {
    ct_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        ct_errorf(CT_ERUNTIME, "out of memory");
        return NULL;
    }
    if (ct_tensor_init(t, dt, be->device, ndim, shape, NULL)) {
        free(t);
        return NULL;
    }
    size_t bytes = ct_nbytes(t);
    t->data = be->mem.alloc(bytes);
    if (!t->data) goto oom;
    if (with_grad) {
        t->grad = calloc(1, sizeof *t->grad);
        if (!t->grad) goto oom;
        ct_tensor_init(t->grad, CT_F32, be->device, ndim, shape, NULL);
        t->grad->data = be->mem.alloc(ct_nbytes(t->grad));
        if (!t->grad->data || be->zero(t->grad->data, ct_nbytes(t->grad))) goto oom;
        t->requires_grad = true;
    }
    return t;
oom:
    ct_tensor_free(be, t); /* t is gone: the message uses `bytes`, taken before */
    ct_errorf(CT_ERUNTIME, "out of memory allocating a %s tensor of %zu bytes", ct_dtype_name(dt),
              bytes);
    return NULL;
}

void ct_tensor_free(const ct_backend *be, ct_tensor *t) {
    if (!t) return;
    if (t->grad) {
        if (t->grad->data) be->mem.free(t->grad->data);
        free(t->grad);
    }
    if (t->data) be->mem.free(t->data);
    free(t);
}
