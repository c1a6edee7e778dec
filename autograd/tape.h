/* The tape: reverse-mode autograd over coarse ops.
 *
 * Forward ops append an entry (op, inputs, output, saved state); ct_backward
 * walks the entries in reverse and calls each op's backward, which accumulates
 * into its inputs' grads. Only tensors on a path to a trainable leaf carry
 * requires_grad, so frozen weights never get grads. With recording off (no_grad)
 * nothing is appended and ops save nothing.
 *
 * Memory: tensor headers and saved state come from a host arena (`meta`),
 * activation data from the backend's arena (`data`); both are rewound by
 * ct_tape_reset at the start of a step. `scratch` backs checkpoint recomputation. */
#ifndef CT_TAPE_H
#define CT_TAPE_H

#include <stdbool.h>
#include <stdint.h>

#include "arena.h"
#include "backend.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CT_MAX_OP_INPUTS 6

typedef struct ct_tape ct_tape;
typedef struct ct_tape_entry ct_tape_entry;

/* One op kind: its name (messages) and its backward. The backward reads
 * e->out->grad and accumulates into the grads of e->in[i] that require grad
 * (use ct_grad to get them). */
typedef struct {
    const char *name;
    int (*backward)(ct_tape *tape, const ct_tape_entry *e);
} ct_op_def;

struct ct_tape_entry {
    const ct_op_def *op;
    ct_tensor *out;
    ct_tensor *in[CT_MAX_OP_INPUTS];
    int n_in;
    void *saved; /* op-specific, in the meta arena */
    int tag;     /* a mark's tag (ct_tape_mark; no out, no inputs) */
};

struct ct_tape {
    const ct_backend *be;
    ct_arena meta;     /* host: tensor headers, saved structs */
    ct_arena main;     /* backend: activations and grads of this step */
    ct_arena scratch;  /* backend: checkpoint recomputation, kernel temporaries */
    ct_arena *data;    /* where new tensors go now: &main, or &scratch in a recompute */
    ct_tape_entry *entries;
    int n_entries, cap_entries;
    bool recording;       /* false = no_grad */
    bool in_checkpoint;   /* segments do not nest */
    uint64_t step_seed;   /* with ct_linear.id seeds dropout; set per step */
    /* A dead grad in main: a finished checkpoint segment's output grad, whose
     * memory the next segment's input grad reuses (NULL: none). */
    void *spare_grad;
    size_t spare_bytes;
    /* Called when ct_backward passes a mark (ct_tape_mark); NULL: marks are
     * passed silently. Kept across resets: the caller sets and clears it. */
    int (*on_mark)(void *ctx, int tag);
    void *mark_ctx;
};

/* block_bytes: size of each arena block (0 = 64 MiB). */
int ct_tape_init(ct_tape *t, const ct_backend *be, size_t block_bytes);
void ct_tape_free(ct_tape *t);
/* Start of a step: forget entries, rewind all arenas (no memory returned). */
void ct_tape_reset(ct_tape *t);
/* Turns recording on/off; returns the previous setting. Off = no_grad mode. */
bool ct_tape_set_recording(ct_tape *t, bool on);

/* A tensor in the current data arena (uninitialised, or zeroed); NULL on OOM. */
ct_tensor *ct_tape_new(ct_tape *t, ct_dtype dt, int ndim, const int64_t *shape);
ct_tensor *ct_tape_zeros(ct_tape *t, ct_dtype dt, int ndim, const int64_t *shape);
/* A header without storage (data NULL): the output of an op whose value is
 * never read (the _tail ops in a recomputation), so only its entry and grad
 * exist. */
ct_tensor *ct_tape_header(ct_tape *t, ct_dtype dt, int ndim, const int64_t *shape);
/* A tensor with t's shape in the backend's activation dtype (f32 on the CPU). */
ct_tensor *ct_tape_new_like(ct_tape *tp, const ct_tensor *t);
/* Host memory for saved state, lives until the next reset. */
void *ct_tape_meta(ct_tape *t, size_t bytes);

/* True when recording and any input requires grad: the op must save state. */
bool ct_tape_wants_grad(const ct_tape *t, ct_tensor *const *in, int n_in);
/* Appends an entry and marks out->requires_grad when ct_tape_wants_grad. */
int ct_tape_record(ct_tape *t, const ct_op_def *op, ct_tensor *out, ct_tensor *const *in,
                   int n_in, void *saved);

/* t->grad, created zeroed in the current data arena on first use (f32 for an
 * f32 tensor, else the activation dtype); NULL on OOM. Leaves (parameters)
 * carry their own long-lived grad. */
ct_tensor *ct_grad(ct_tape *tp, ct_tensor *t);

/* Records a mark (while recording, outside a checkpoint segment's forward;
 * else a no-op). ct_backward calls t->on_mark(t->mark_ctx, tag) when its walk
 * reaches the mark, that is once the backward of everything recorded after
 * the mark has run: the grads of parameters used only after it are then
 * final. The decoder marks each layer's start and the head (decoder.h); the
 * trainer starts those grads' all-reduce there, while the backward of the
 * layers below still runs (trainer/train_grad_sync.c). An error from on_mark
 * ends the backward. */
int ct_tape_mark(ct_tape *t, int tag);

/* Seeds d(loss) = seed (loss must have one element) and runs the tape backward. */
int ct_backward(ct_tape *t, ct_tensor *loss, float seed);

/* A checkpointed segment: runs `fn` keeping only its input; during backward the
 * forward is re-run (same dropout masks) and backpropagated. fn must be a pure
 * function of (ctx, in, parameters) and record through `tape`. */
typedef int (*ct_segment_fn)(ct_tape *tape, void *ctx, ct_tensor *in, ct_tensor **out);
int ct_checkpoint(ct_tape *t, ct_segment_fn fn, void *ctx, ct_tensor *in, ct_tensor **out);
/* True while a segment's forward is being re-run in backward (recording, inside
 * a checkpoint): its output value is then never read, only its graph. */
static inline bool ct_tape_recomputing(const ct_tape *t) { return t->in_checkpoint && t->recording; }

/* Heap tensors for parameters and tests: header + storage (and a zeroed f32
 * grad when with_grad) from the backend allocator. Free with ct_tensor_free. */
ct_tensor *ct_tensor_new(const ct_backend *be, ct_dtype dt, int ndim, const int64_t *shape,
                         bool with_grad);
void ct_tensor_free(const ct_backend *be, ct_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
