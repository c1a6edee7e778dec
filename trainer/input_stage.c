/* Input staging (input_stage.h): two slots, batch k in one while batch k+1
 * is read and uploaded into the other. The order of the batches is the
 * loader's, whether or not one was read ahead, so a run's results do not
 * depend on the staging; only the cursor a checkpoint stores has to name the
 * batch not yet trained (ct_input_stage_cursor). */
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ops.h"
#include "trainer/input_stage.h"
#include "trainer/model/decoder.h"

static size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

/* A slot's layout (input_stage.h) for n tokens and rows_bytes of embedding
 * rows: s's offsets and bytes. */
static void slot_layout(ct_input_stage *s, int64_t n, size_t rows_bytes) {
    size_t ints = (size_t)n * sizeof(int32_t);
    s->off_labels = align_up(ints);
    s->off_pos = s->off_labels + align_up(ints);
    s->off_runs = s->off_pos + align_up(ints);
    s->off_rows = s->off_runs + align_up(ints + sizeof(int32_t));
    s->bytes = s->off_rows + rows_bytes;
}

size_t ct_input_stage_slot_bytes(int64_t n, size_t rows_bytes) {
    ct_input_stage s;
    slot_layout(&s, n, rows_bytes);
    return s.bytes;
}

static bool staged(const ct_backend *be) {
    return be->stage_host && be->stage_upload && be->stage_wait && be->stage_fence;
}

int ct_input_stage_init(ct_input_stage *s, const ct_backend *be, int64_t rows, int64_t T,
                        const ct_tensor *host_table) {
    memset(s, 0, sizeof *s);
    s->be = be;
    s->host_table = host_table;
    s->n = rows * T;
    s->D = host_table ? host_table->shape[1] : 0;
    s->cur = 1; /* the first batch goes into slot 0 */
    size_t ints = (size_t)s->n * sizeof(int32_t);
    slot_layout(s, s->n, host_table ? (size_t)ct_dtype_bytes(be->act_dtype, s->n * s->D) : 0);
    s->seg = malloc(ints);
    s->tmp = malloc(ints);
    if (!s->seg || !s->tmp) return ct_errorf(CT_ERUNTIME, "input staging: out of memory for %lld tokens", (long long)s->n);
    for (int i = 0; i < 2; i++) {
        ct_stage_slot *sl = &s->slot[i];
        CT_TRY(ct_batch_alloc(&sl->batch, rows, T));
        sl->dev = be->mem.alloc(s->bytes);
        if (!sl->dev)
            return ct_errorf(CT_ERUNTIME, "input staging: out of %s memory for a %.1f MiB batch slot", be->name,
                             (double)s->bytes / 1048576.0);
        if (!staged(be) && !(sl->plain = malloc(s->bytes)))
            return ct_errorf(CT_ERUNTIME, "input staging: out of host memory for a %.1f MiB batch slot",
                             (double)s->bytes / 1048576.0);
    }
    return CT_OK;
}

void ct_input_stage_free(ct_input_stage *s) {
    if (!s->be) return;
    if (staged(s->be) && s->be->stage_release) s->be->stage_release();
    for (int i = 0; i < 2; i++) {
        ct_stage_slot *sl = &s->slot[i];
        if (sl->dev) s->be->mem.free(sl->dev);
        free(sl->plain);
        ct_batch_free(&sl->batch);
    }
    free(s->seg);
    free(s->tmp);
    memset(s, 0, sizeof *s);
}

/* The loader numbers the samples of each row from 0 and marks padding -1; the
 * attention reads each run of equal ids as one sample, so across the rows of
 * a batch (flattened to one sequence) every run gets an id of its own, and a
 * new row always starts a new run. */
static void unique_segments(const int32_t *seg, int64_t rows, int64_t T, int32_t *out) {
    int32_t id = -1;
    for (int64_t i = 0; i < rows * T; i++) {
        if (i % T == 0 || seg[i] != seg[i - 1]) id++;
        out[i] = id;
    }
}

/* Reads the next batch into slot i and starts its upload. */
static int fill(ct_input_stage *s, int i, ct_loader *l) {
    ct_stage_slot *sl = &s->slot[i];
    ct_batch *b = &sl->batch;
    const ct_backend *be = s->be;
    sl->ready = false;
    CT_TRY(ct_loader_next(l, b));
    /* the host block: waits until its previous upload has read it */
    char *h = staged(be) ? be->stage_host(i, s->bytes) : sl->plain;
    if (!h) return ct_error_wrap(CT_ERUNTIME, "input staging: the host buffer of slot %d", i);
    size_t ints = (size_t)s->n * sizeof(int32_t);
    memcpy(h, b->ids, ints);
    memcpy(h + s->off_labels, b->labels, ints);
    memcpy(h + s->off_pos, b->pos, ints);
    CT_TRY(ct_decoder_positions_check(b->pos, s->n, &sl->seq_len));
    unique_segments(b->seg, b->rows, b->T, s->seg);
    CT_TRY(ct_segment_runs_tmp(s->seg, s->n, (int32_t *)(h + s->off_runs), s->tmp, &sl->n_runs));
    if (s->host_table) CT_TRY(ct_embedding_gather_host(s->host_table, b->ids, s->n, be->act_dtype, h + s->off_rows));
    int rc = staged(be) ? be->stage_upload(i, sl->dev, s->bytes) : be->upload(sl->dev, h, s->bytes);
    if (rc) return ct_error_wrap(rc, "input staging: uploading a batch (%.1f MiB)", (double)s->bytes / 1048576.0);
    sl->ready = true;
    return CT_OK;
}

int ct_input_stage_prefetch(ct_input_stage *s, ct_loader *l) {
    int next = 1 - s->cur;
    if (s->slot[next].ready) return ct_errorf(CT_ERUNTIME, "input staging: a batch is already read ahead");
    return fill(s, next, l);
}

static ct_tensor *view(ct_tape *tp, ct_dtype dt, int ndim, const int64_t *shape, void *data) {
    ct_tensor *x = ct_tape_header(tp, dt, ndim, shape);
    if (x) x->data = data;
    return x;
}

int ct_input_stage_take(ct_input_stage *s, ct_loader *l, ct_tape *tp, ct_staged_batch *out) {
    memset(out, 0, sizeof *out);
    const ct_backend *be = s->be;
    int next = 1 - s->cur;
    if (!s->slot[next].ready) CT_TRY(fill(s, next, l));
    if (staged(be)) {
        CT_TRY(be->stage_fence(s->cur)); /* every reader of the previous batch is queued by now */
        CT_TRY(be->stage_wait(next));
    }
    ct_stage_slot *sl = &s->slot[next];
    sl->ready = false;
    s->cur = next;
    char *d = sl->dev;
    int64_t n = s->n, nr = sl->n_runs + 1, rows_shape[2] = {s->n, s->D};
    out->batch = &sl->batch;
    out->seq_len = sl->seq_len;
    out->ids = view(tp, CT_I32, 1, &n, d);
    out->labels = view(tp, CT_I32, 1, &n, d + s->off_labels);
    out->pos = view(tp, CT_I32, 1, &n, d + s->off_pos);
    out->runs = view(tp, CT_I32, 1, &nr, d + s->off_runs);
    if (s->host_table) out->rows = view(tp, be->act_dtype, 2, rows_shape, d + s->off_rows);
    if (!out->ids || !out->labels || !out->pos || !out->runs || (s->host_table && !out->rows))
        return ct_errorf(CT_ERUNTIME, "input staging: out of tape memory for the batch's tensors");
    return CT_OK;
}

ct_ds_cursor ct_input_stage_cursor(const ct_input_stage *s, const ct_loader *l) {
    const ct_stage_slot *next = &s->slot[1 - s->cur];
    return next->ready ? next->batch.cursor : ct_loader_cursor(l);
}
