/* The micro-batches' inputs, read and uploaded one iteration ahead: while
 * the device computes iteration k, the host reads batch k+1 from the loader,
 * makes its attention runs, gathers its embedding rows (when the table stays
 * in host memory) and starts one upload of all of it into the other of two
 * device slots (autograd/backend.h, "Staged uploads": page-locked buffers and
 * a copy stream on the GPU; a plain synchronous upload elsewhere).
 * docs/DESIGN.md "Input staging". Not a public interface (trainer only). */
#ifndef CT_INPUT_STAGE_H
#define CT_INPUT_STAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/backend.h"
#include "autograd/tape.h"
#include "datasets/loader.h"

/* One slot: a batch as the loader gave it and its device copy. The device
 * block [bytes] holds, in order: ids i32 [n], labels i32 [n], positions
 * i32 [n], run boundaries i32 [n + 1] (16-byte aligned pieces), then, with
 * a host table, the embedding rows [n, D] in the activation dtype. */
typedef struct {
    ct_batch batch;  /* host arrays (owned) */
    int64_t n_runs;  /* packed samples of the batch */
    int64_t seq_len; /* max position + 1 */
    void *dev;       /* device block (owned, the backend's allocator) */
    void *plain;     /* host block when the backend has no staged uploads (owned) */
    bool ready;      /* read and uploaded, not yet handed out */
} ct_stage_slot;

typedef struct {
    const ct_backend *be;
    const ct_tensor *host_table; /* [V, D] in host memory (borrowed), or NULL: the device embeds */
    int64_t n, D;                /* tokens per micro-batch (rows x max_length), hidden size */
    size_t off_labels, off_pos, off_runs, off_rows, bytes; /* a slot's layout; ids at 0 */
    int32_t *seg, *tmp;          /* [n] segment ids made unique across rows, [n] the runs' scratch */
    ct_stage_slot slot[2];
    int cur;                     /* the slot handed out last */
} ct_input_stage;

/* Inputs of one iteration as tensors on the tape's device (views into a
 * slot's device block, valid until the next ct_input_stage_take). */
typedef struct {
    const ct_batch *batch; /* the host arrays (n_tokens, cursor, ids) */
    ct_tensor *ids, *labels, *pos, *runs; /* i32 [n], [n], [n], [n_runs + 1] */
    ct_tensor *rows;       /* [n, D] act: the embedding's output, or NULL */
    int64_t seq_len;
} ct_staged_batch;

/* The bytes of one slot's device block for n tokens and rows_bytes of
 * embedding rows (0 without): what the memory plan counts, twice. */
size_t ct_input_stage_slot_bytes(int64_t n, size_t rows_bytes);

/* Allocates both slots (device blocks from be->mem: counted by the memory
 * plan as "batch inputs"). host_table: the embedding table when it stays in
 * host memory, else NULL. CT_ERUNTIME when out of memory. */
int ct_input_stage_init(ct_input_stage *s, const ct_backend *be, int64_t rows, int64_t T,
                        const ct_tensor *host_table);
void ct_input_stage_free(ct_input_stage *s);

/* The next batch: the prefetched one, or read from l now. Call after
 * ct_tape_reset (the views live in the tape's meta arena). The previous
 * slot's device block is released to the next upload from here on: all the
 * work reading it has been queued. */
int ct_input_stage_take(ct_input_stage *s, ct_loader *l, ct_tape *tp, ct_staged_batch *out);
/* Reads the batch after the one handed out into the other slot and starts
 * its upload; returns before the upload completes. At most once per take. */
int ct_input_stage_prefetch(ct_input_stage *s, ct_loader *l);
/* Where the next batch to train comes from: the prefetched one's cursor, or
 * the loader's. What checkpoints store and windows count from. */
ct_ds_cursor ct_input_stage_cursor(const ct_input_stage *s, const ct_loader *l);

#endif
