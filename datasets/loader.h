/* Batches of packed rows for training: each epoch visits every row once in an
 * order that is a pure function of (seed, epoch) (ct_permutation stream
 * epoch + 1), batch_size rows at a time. The position is a cursor (epoch,
 * index = batches already given in that epoch) that a checkpoint stores;
 * seeking to it later gives exactly the batches that would have followed.
 * A batch holds, per row, max_length ids, SHIFTED labels (label t = the
 * token that should follow token t; -100 = no loss), positions (restarting
 * per sample) and segment ids (-1 = padding), as i32 host arrays.
 *
 * Ownership: the loader borrows the dataset (it must outlive the loader) and
 * owns its order array (ct_loader_free); ct_batch owns its arrays
 * (ct_batch_free). */
#ifndef CT_LOADER_H
#define CT_LOADER_H

#include <stdbool.h>
#include <stdint.h>

#include "datasets/dataset.h"

typedef struct {
    int64_t epoch; /* 0-based */
    int64_t index; /* batches already given in this epoch */
} ct_ds_cursor;

typedef struct {
    int64_t rows, T;     /* capacity: batch_size rows of max_length */
    int64_t n_rows;      /* rows holding samples; later rows (last batch of an epoch) are all padding */
    int32_t *ids;        /* (rows, T) */
    int32_t *labels;     /* (rows, T) shifted */
    int32_t *pos;        /* (rows, T) */
    int32_t *seg;        /* (rows, T) */
    int64_t n_tokens;    /* real tokens in the batch */
    int64_t n_targets;   /* labels != -100 */
    ct_ds_cursor cursor; /* where this batch was taken from */
} ct_batch;

typedef struct {
    const ct_dataset *ds;
    int64_t batch_size;
    uint64_t seed;
    bool shuffle;        /* false: rows in dataset order every epoch */
    bool drop_last;      /* true: an epoch's last, partial batch is skipped */
    ct_ds_cursor cur;    /* the next batch */
    int64_t *order;      /* (rows) row order of epoch order_epoch */
    int64_t order_epoch; /* -1: none computed yet */
} ct_loader;

int ct_loader_init(ct_loader *l, const ct_dataset *ds, int64_t batch_size, uint64_t seed, bool shuffle,
                   bool drop_last);
void ct_loader_free(ct_loader *l);

int64_t ct_loader_batches_per_epoch(const ct_loader *l);
/* The position of the next batch (index < batches_per_epoch always). */
ct_ds_cursor ct_loader_cursor(const ct_loader *l);
/* Moves to a stored cursor; index == batches_per_epoch means the start of the
 * next epoch. Anything else out of range is CT_EINPUT (a checkpoint made for
 * other data or batch size). */
int ct_loader_seek(ct_loader *l, ct_ds_cursor c);

int ct_batch_alloc(ct_batch *b, int64_t rows, int64_t T);
void ct_batch_free(ct_batch *b);
/* Fills b (allocated for batch_size x max_length) with the next batch and advances. */
int ct_loader_next(ct_loader *l, ct_batch *b);

#endif
