/* Greedy first-fit packing over a window of open rows, the seeded
 * permutation, and the one place where aligned labels become shifted. */
#include "datasets/packing.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"

void ct_permutation(uint64_t seed, uint64_t stream, int64_t n, int64_t *perm) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    uint64_t state = ct_mix64(seed ^ ct_mix64(stream ^ 0x5ca1ab1eull));
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates; modulo bias < n / 2^64 */
        state += 0x9e3779b97f4a7c15ull;
        uint64_t j = ct_mix64(state) % (uint64_t)(i + 1);
        int64_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

void ct_packing_free(ct_packing *p) {
    free(p->row_off);
    free(p->row_samples);
    memset(p, 0, sizeof *p);
}

int ct_pack(const int64_t *len, int64_t n, int64_t max_length, bool pack, bool shuffle, uint64_t seed,
            ct_packing *out) {
    memset(out, 0, sizeof *out);
    for (int64_t i = 0; i < n; i++)
        if (len[i] < 1 || len[i] > max_length)
            return ct_errorf(CT_EINPUT, "packing: sample %lld has %lld tokens, outside 1..max_length (%lld)",
                             (long long)i, (long long)len[i], (long long)max_length);
    int64_t *order = malloc((size_t)(n ? n : 1) * sizeof *order);       /* (n) placement order */
    int64_t *row_of = malloc((size_t)(n ? n : 1) * sizeof *row_of);     /* (n) row of each placed sample */
    int64_t *fill = malloc((size_t)(n ? n : 1) * sizeof *fill);         /* (rows) tokens in each row */
    out->row_off = calloc((size_t)n + 2, sizeof *out->row_off);         /* (rows + 1) */
    out->row_samples = malloc((size_t)(n ? n : 1) * sizeof *out->row_samples);
    if (!order || !row_of || !fill || !out->row_off || !out->row_samples) {
        free(order), free(row_of), free(fill);
        ct_packing_free(out);
        return ct_errorf(CT_ERUNTIME, "out of memory packing %lld samples", (long long)n);
    }
    if (shuffle) ct_permutation(seed, 0, n, order);
    else
        for (int64_t i = 0; i < n; i++) order[i] = i;

    int64_t open[CT_PACK_OPEN_ROWS]; /* indices of rows still open, oldest first */
    int n_open = 0, rows = 0;
    for (int64_t k = 0; k < n; k++) {
        int64_t s = order[k], L = len[s];
        int slot = -1;
        if (pack)
            for (int o = 0; o < n_open; o++)
                if (fill[open[o]] + L <= max_length) {
                    slot = o;
                    break;
                }
        int64_t r;
        if (slot >= 0) {
            r = open[slot];
        } else {
            r = rows++;
            fill[r] = 0;
            if (pack) {
                if (n_open == CT_PACK_OPEN_ROWS) { /* close the oldest open row */
                    memmove(open, open + 1, (size_t)(n_open - 1) * sizeof *open);
                    n_open--;
                }
                slot = n_open;
                open[n_open++] = r;
            }
        }
        fill[r] += L;
        row_of[k] = r;
        if (pack && fill[r] == max_length) { /* full: no longer a candidate */
            memmove(open + slot, open + slot + 1, (size_t)(n_open - slot - 1) * sizeof *open);
            n_open--;
        }
    }
    /* Counting sort by row keeps each row's samples in placement order. */
    for (int64_t k = 0; k < n; k++) out->row_off[row_of[k] + 1]++;
    for (int64_t r = 0; r < rows; r++) out->row_off[r + 1] += out->row_off[r];
    memcpy(fill, out->row_off, (size_t)rows * sizeof *fill); /* reuse as write cursors */
    for (int64_t k = 0; k < n; k++) out->row_samples[fill[row_of[k]]++] = order[k];
    out->n_rows = rows;
    free(order), free(row_of), free(fill);
    return CT_OK;
}

void ct_labels_shift(const int32_t *aligned, const int32_t *seg, int64_t T, int32_t *shifted) {
    for (int64_t t = 0; t < T; t++) {
        bool same = t + 1 < T && seg[t] >= 0 && seg[t + 1] == seg[t];
        shifted[t] = same ? aligned[t + 1] : -100;
    }
}
