/* Packing samples into rows of max_length tokens that keep sample boundaries:
 * a sample (already cut to max_length) lies whole in one row; inside a row
 * each sample gets its own segment id and positions that restart at 0, so
 * attention never crosses a boundary. Samples are shuffled by seed before
 * packing (XTuner's shuffle_before_pack), then placed first-fit into the last
 * CT_PACK_OPEN_ROWS rows still open, which fills rows to ~98-99% on chat data
 * while staying linear and deterministic. Unpacked: one sample per row.
 *
 * Ownership: ct_packing owns its arrays (ct_packing_free). */
#ifndef CT_PACKING_H
#define CT_PACKING_H

#include <stdbool.h>
#include <stdint.h>

#define CT_PACK_OPEN_ROWS 64

typedef struct {
    int64_t n_rows;
    int64_t *row_off;     /* (n_rows + 1) offsets into row_samples */
    int64_t *row_samples; /* (n_samples) sample indices, row after row, in placement order */
} ct_packing;

/* Packs n samples of lengths len[i] (1..max_length each) into rows.
 * pack false: one sample per row. shuffle false: samples in file order. */
int ct_pack(const int64_t *len, int64_t n, int64_t max_length, bool pack, bool shuffle, uint64_t seed,
            ct_packing *out);
void ct_packing_free(ct_packing *p);

/* A permutation of 0..n-1 that is a pure function of (seed, stream): the
 * pack shuffle uses stream 0, the loader's epoch e uses stream e + 1. */
void ct_permutation(uint64_t seed, uint64_t stream, int64_t n, int64_t *perm);

/* Aligned labels -> shifted labels for one row of T tokens: shifted[t] =
 * aligned[t+1] when token t+1 belongs to the same sample (same seg, seg >= 0),
 * else -100 (the last token of every sample, padding). shifted may alias
 * aligned (it is filled front to back). */
void ct_labels_shift(const int32_t *aligned, const int32_t *seg, int64_t T, int32_t *shifted);

#endif
