/* The training data order: a per-epoch permutation of the packed rows,
 * recomputed from (seed, epoch) whenever the epoch changes, so a cursor is all
 * a checkpoint needs to resume the exact sequence of batches. */
#include "datasets/loader.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

int ct_loader_init(ct_loader *l, const ct_dataset *ds, int64_t batch_size, uint64_t seed, bool shuffle,
                   bool drop_last) {
    memset(l, 0, sizeof *l);
    if (batch_size < 1) return ct_errorf(CT_EINPUT, "batch_size must be at least 1 (got %lld)", (long long)batch_size);
    if (ds->rows.n_rows < 1) return ct_errorf(CT_EINPUT, "the dataset has no rows to train on");
    if (drop_last && ds->rows.n_rows < batch_size)
        return ct_errorf(CT_EINPUT, "batch_size %lld is larger than the dataset's %lld rows and drop_last is set: "
                         "no batch would be made; lower batch_size", (long long)batch_size,
                         (long long)ds->rows.n_rows);
    l->order = malloc((size_t)ds->rows.n_rows * sizeof *l->order);
    if (!l->order) return ct_errorf(CT_ERUNTIME, "out of memory for the data order");
    l->ds = ds;
    l->batch_size = batch_size;
    l->seed = seed;
    l->shuffle = shuffle;
    l->drop_last = drop_last;
    l->order_epoch = -1;
    return CT_OK;
}

void ct_loader_free(ct_loader *l) {
    free(l->order);
    memset(l, 0, sizeof *l);
}

int64_t ct_loader_batches_per_epoch(const ct_loader *l) {
    int64_t n = l->ds->rows.n_rows, b = l->batch_size;
    return l->drop_last ? n / b : (n + b - 1) / b;
}

ct_ds_cursor ct_loader_cursor(const ct_loader *l) { return l->cur; }

int ct_loader_seek(ct_loader *l, ct_ds_cursor c) {
    int64_t nb = ct_loader_batches_per_epoch(l);
    if (c.epoch < 0 || c.index < 0 || c.index > nb)
        return ct_errorf(CT_EINPUT, "data cursor (epoch %lld, batch %lld) does not fit this dataset (%lld batches "
                         "per epoch); was the checkpoint made with other data or batch size?",
                         (long long)c.epoch, (long long)c.index, (long long)nb);
    if (c.index == nb) c = (ct_ds_cursor){c.epoch + 1, 0};
    l->cur = c;
    return CT_OK;
}

int ct_batch_alloc(ct_batch *b, int64_t rows, int64_t T) {
    memset(b, 0, sizeof *b);
    size_t n = (size_t)rows * (size_t)T;
    b->ids = malloc(n * sizeof *b->ids);
    b->labels = malloc(n * sizeof *b->labels);
    b->pos = malloc(n * sizeof *b->pos);
    b->seg = malloc(n * sizeof *b->seg);
    if (!b->ids || !b->labels || !b->pos || !b->seg) {
        ct_batch_free(b);
        return ct_errorf(CT_ERUNTIME, "out of memory for a batch of %lld x %lld", (long long)rows, (long long)T);
    }
    b->rows = rows;
    b->T = T;
    return CT_OK;
}

void ct_batch_free(ct_batch *b) {
    free(b->ids);
    free(b->labels);
    free(b->pos);
    free(b->seg);
    memset(b, 0, sizeof *b);
}

int ct_loader_next(ct_loader *l, ct_batch *b) {
    const ct_dataset *ds = l->ds;
    int64_t T = ds->max_length, n_rows = ds->rows.n_rows;
    if (b->rows != l->batch_size || b->T != T)
        return ct_errorf(CT_ERUNTIME, "batch buffer is %lld x %lld, the loader gives %lld x %lld", (long long)b->rows,
                         (long long)b->T, (long long)l->batch_size, (long long)T);
    if (l->order_epoch != l->cur.epoch) {
        if (l->shuffle) ct_permutation(l->seed, (uint64_t)l->cur.epoch + 1, n_rows, l->order);
        else
            for (int64_t r = 0; r < n_rows; r++) l->order[r] = r;
        l->order_epoch = l->cur.epoch;
    }
    b->cursor = l->cur;
    b->n_tokens = b->n_targets = 0;
    int64_t first = l->cur.index * l->batch_size;
    b->n_rows = n_rows - first < l->batch_size ? n_rows - first : l->batch_size;
    for (int64_t i = 0; i < l->batch_size; i++) {
        size_t o = (size_t)i * (size_t)T;
        if (i < b->n_rows) {
            b->n_tokens += ct_dataset_fill_row(ds, l->order[first + i], b->ids + o, b->labels + o, b->pos + o, b->seg + o);
        } else { /* a padding row: nothing to attend to or learn */
            for (int64_t t = 0; t < T; t++) {
                b->ids[o + t] = ds->pad_id;
                b->labels[o + t] = -100;
                b->pos[o + t] = 0;
                b->seg[o + t] = -1;
            }
        }
    }
    for (size_t t = 0; t < (size_t)l->batch_size * (size_t)T; t++) b->n_targets += b->labels[t] != -100;
    if (++l->cur.index >= ct_loader_batches_per_epoch(l)) l->cur = (ct_ds_cursor){l->cur.epoch + 1, 0};
    return CT_OK;
}
