/* Packing: every sample lands in exactly one row, whole and unchanged (the
 * multiset of samples is the same before and after); rows never exceed
 * max_length; segments are contiguous and numbered 0, 1, ... with positions
 * restarting at 0; shifted labels are the next token's aligned label inside a
 * sample and -100 at each sample's last token and in padding; the shuffle is a
 * pure function of the seed; efficiency numbers match a recount. The loader:
 * the same seed gives the same batches, every epoch visits every row once in
 * its own order, and resuming from a stored cursor gives exactly the batches
 * that followed it. */
#include <stdlib.h>
#include <string.h>

#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "datasets/packing.h"
#include "testutil.h"

/* A synthetic prepared dataset: token t of sample s is s * 4096 + t (so every
 * token says where it came from); labels mask a random prefix (the "prompt"). */
static void make_dataset(ct_dataset *ds, int64_t n, int64_t max_length, uint64_t seed) {
    memset(ds, 0, sizeof *ds);
    ct_test_rng r = {seed};
    ds->max_length = max_length;
    ds->pad_id = 0;
    ds->n_samples = n;
    ds->sample_off = malloc((size_t)(n + 1) * sizeof *ds->sample_off);
    int64_t total = 0;
    for (int64_t s = 0; s < n; s++) {
        ds->sample_off[s] = total;
        double u = ct_test_uniform(&r);
        total += 1 + (int64_t)(u * u * (double)max_length); /* many short, some up to max_length */
        if (total - ds->sample_off[s] > max_length) total = ds->sample_off[s] + max_length;
    }
    ds->sample_off[n] = total;
    ds->ids = malloc((size_t)total * sizeof *ds->ids);
    ds->labels = malloc((size_t)total * sizeof *ds->labels);
    for (int64_t s = 0; s < n; s++) {
        int64_t L = ds->sample_off[s + 1] - ds->sample_off[s];
        int64_t prompt = (int64_t)(ct_test_uniform(&r) * (double)L);
        for (int64_t t = 0; t < L; t++) {
            int32_t id = (int32_t)(s * 4096 + t);
            ds->ids[ds->sample_off[s] + t] = id;
            ds->labels[ds->sample_off[s] + t] = t < prompt ? -100 : id;
            if (t >= prompt && t > 0) ds->stats.n_targets++;
        }
    }
    ds->stats.n_tokens = total;
    ds->stats.n_samples = n;
}

static void test_shift_by_hand(void) {
    const int32_t aligned[] = {-100, -100, 7, 8, -100, 5, 6, -100};
    const int32_t seg[] = {0, 0, 0, 0, 1, 1, 1, -1};
    const int32_t want[] = {-100, 7, 8, -100, 5, 6, -100, -100};
    int32_t got[8];
    ct_labels_shift(aligned, seg, 8, got);
    CHECK(memcmp(got, want, sizeof want) == 0, "shift: %d %d %d %d %d %d %d %d", got[0], got[1], got[2], got[3],
          got[4], got[5], got[6], got[7]);
    memcpy(got, aligned, sizeof got);
    ct_labels_shift(got, seg, 8, got);
    CHECK(memcmp(got, want, sizeof want) == 0, "shift in place");
}

static void test_permutation(void) {
    int64_t a[1000], b[1000], c[1000];
    ct_permutation(42, 0, 1000, a);
    ct_permutation(42, 0, 1000, b);
    ct_permutation(43, 0, 1000, c);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, same permutation");
    CHECK(memcmp(a, c, sizeof a) != 0, "other seed, other permutation");
    char seen[1000] = {0};
    int64_t fixed = 0;
    for (int i = 0; i < 1000; i++) {
        if (a[i] >= 0 && a[i] < 1000) seen[a[i]]++;
        fixed += a[i] == i;
    }
    int ok = 1;
    for (int i = 0; i < 1000; i++) ok &= seen[i] == 1;
    CHECK(ok, "a permutation");
    CHECK(fixed < 10, "shuffled: %lld fixed points", (long long)fixed);
}

/* Checks every row of ds and that each sample appears exactly once. */
static void check_rows(const char *what, const ct_dataset *ds, bool pack) {
    int64_t T = ds->max_length;
    int32_t *ids = malloc((size_t)T * 4), *lab = malloc((size_t)T * 4), *pos = malloc((size_t)T * 4),
            *seg = malloc((size_t)T * 4);
    int64_t *seen = calloc((size_t)ds->n_samples, sizeof *seen);
    int64_t real = 0, targets = 0, bad = 0;
    for (int64_t r = 0; r < ds->rows.n_rows; r++) {
        int64_t n = ct_dataset_fill_row(ds, r, ids, lab, pos, seg);
        CHECK(n >= 1 && n <= T, "%s row %lld: %lld tokens", what, (long long)r, (long long)n);
        real += n;
        int64_t t = 0, nseg = 0;
        while (t < T && seg[t] >= 0) {
            /* a segment: contiguous, numbered in order, one whole sample */
            bad += seg[t] != nseg;
            int32_t s = ids[t] / 4096;
            int64_t start = t;
            while (t < T && seg[t] == seg[start]) {
                bad += pos[t] != t - start || ids[t] != s * 4096 + (t - start);
                t++;
            }
            int64_t L = t - start;
            if (s < 0 || s >= ds->n_samples || L != ds->sample_off[s + 1] - ds->sample_off[s]) {
                bad++;
                continue;
            }
            seen[s]++;
            const int32_t *al = ds->labels + ds->sample_off[s];
            for (int64_t i = 0; i < L; i++) {
                int32_t want = i + 1 < L ? al[i + 1] : -100;
                bad += lab[start + i] != want;
                targets += lab[start + i] != -100;
            }
            nseg++;
        }
        bad += t != n;
        for (; t < T; t++) bad += seg[t] != -1 || lab[t] != -100 || pos[t] != 0 || ids[t] != ds->pad_id;
        if (!pack) bad += nseg != 1;
    }
    CHECK(bad == 0, "%s: %lld layout errors", what, (long long)bad);
    int64_t missing = 0;
    for (int64_t s = 0; s < ds->n_samples; s++) missing += seen[s] != 1;
    CHECK(missing == 0, "%s: %lld samples not seen exactly once", what, (long long)missing);
    CHECK(real == ds->stats.n_tokens && targets == ds->stats.n_targets, "%s: tokens %lld/%lld targets %lld/%lld",
          what, (long long)real, (long long)ds->stats.n_tokens, (long long)targets, (long long)ds->stats.n_targets);
    double slots = (double)ds->rows.n_rows * (double)T;
    CHECK(ct_dataset_token_efficiency(ds) == (double)real / slots &&
              ct_dataset_target_efficiency(ds) == (double)targets / slots,
          "%s: efficiency", what);
    free(ids), free(lab), free(pos), free(seg), free(seen);
}

static void test_pack(void) {
    ct_dataset ds;
    make_dataset(&ds, 3000, 512, 1);
    int64_t *len = malloc(3000 * sizeof *len);
    for (int64_t s = 0; s < 3000; s++) len[s] = ds.sample_off[s + 1] - ds.sample_off[s];

    CHECK_OK(ct_pack(len, 3000, 512, false, false, 0, &ds.rows));
    CHECK(ds.rows.n_rows == 3000 && ds.rows.row_samples[0] == 0 && ds.rows.row_samples[2999] == 2999,
          "unpacked, unshuffled: one sample per row in order");
    check_rows("unpacked", &ds, false);
    double unpacked_eff = ct_dataset_token_efficiency(&ds);
    ct_packing_free(&ds.rows);

    CHECK_OK(ct_pack(len, 3000, 512, true, true, 5, &ds.rows));
    check_rows("packed", &ds, true);
    double packed_eff = ct_dataset_token_efficiency(&ds);
    int64_t lower = (ds.stats.n_tokens + 511) / 512; /* no packing can use fewer rows */
    printf("packing 3000 samples (mean %.1f tokens) into 512: %lld rows (lower bound %lld), token efficiency "
           "%.4f packed vs %.4f unpacked, targets %.4f\n",
           (double)ds.stats.n_tokens / 3000.0, (long long)ds.rows.n_rows, (long long)lower, packed_eff,
           unpacked_eff, ct_dataset_target_efficiency(&ds));
    CHECK(packed_eff > 0.95 && ds.rows.n_rows <= lower + lower / 20, "packing efficiency %.4f (%lld rows)",
          packed_eff, (long long)ds.rows.n_rows);
    ct_packing again;
    CHECK_OK(ct_pack(len, 3000, 512, true, true, 5, &again));
    CHECK(again.n_rows == ds.rows.n_rows && memcmp(again.row_samples, ds.rows.row_samples, 3000 * 8) == 0 &&
              memcmp(again.row_off, ds.rows.row_off, (size_t)(again.n_rows + 1) * 8) == 0,
          "same seed, same packing");
    ct_packing_free(&again);
    CHECK_OK(ct_pack(len, 3000, 512, true, true, 6, &again));
    CHECK(memcmp(again.row_samples, ds.rows.row_samples, 3000 * 8) != 0, "other seed, other packing");
    ct_packing_free(&again);
    ct_packing_free(&ds.rows);

    /* No shuffle: placement starts with sample 0 in row 0. */
    CHECK_OK(ct_pack(len, 3000, 512, true, false, 0, &ds.rows));
    CHECK(ds.rows.row_samples[0] == 0, "unshuffled packing starts with sample 0");
    check_rows("packed unshuffled", &ds, true);
    ct_packing_free(&ds.rows);

    /* Samples of exactly max_length fill a row each; a too-long one is refused. */
    int64_t full[3] = {512, 512, 1};
    CHECK_OK(ct_pack(full, 3, 512, true, false, 0, &ds.rows));
    CHECK(ds.rows.n_rows == 3, "full rows: %lld", (long long)ds.rows.n_rows);
    ct_packing_free(&ds.rows);
    int64_t too_long[2] = {5, 513};
    CHECK(ct_pack(too_long, 2, 512, true, false, 0, &ds.rows) == CT_EINPUT, "longer than max_length");
    free(len);
    ct_dataset_free(&ds);
}

static bool batch_equal(const ct_batch *a, const ct_batch *b) {
    size_t n = (size_t)a->rows * (size_t)a->T * sizeof(int32_t);
    return a->n_rows == b->n_rows && a->cursor.epoch == b->cursor.epoch && a->cursor.index == b->cursor.index &&
           a->n_tokens == b->n_tokens && a->n_targets == b->n_targets && memcmp(a->ids, b->ids, n) == 0 &&
           memcmp(a->labels, b->labels, n) == 0 && memcmp(a->pos, b->pos, n) == 0 && memcmp(a->seg, b->seg, n) == 0;
}

static void test_loader(void) {
    ct_dataset ds;
    make_dataset(&ds, 500, 128, 3);
    int64_t *len = malloc(500 * sizeof *len);
    for (int64_t s = 0; s < 500; s++) len[s] = ds.sample_off[s + 1] - ds.sample_off[s];
    CHECK_OK(ct_pack(len, 500, 128, true, true, 9, &ds.rows));
    free(len);
    int64_t R = ds.rows.n_rows, B = 4;
    ct_loader a, b;
    CHECK_OK(ct_loader_init(&a, &ds, B, 11, true, false));
    CHECK_OK(ct_loader_init(&b, &ds, B, 11, true, false));
    int64_t nb = ct_loader_batches_per_epoch(&a);
    CHECK(nb == (R + B - 1) / B, "batches per epoch %lld for %lld rows", (long long)nb, (long long)R);
    ct_batch x, y;
    CHECK_OK(ct_batch_alloc(&x, B, 128));
    CHECK_OK(ct_batch_alloc(&y, B, 128));

    /* Same seed, same batches, for 2.5 epochs; each epoch covers every row once. */
    int64_t total = nb * 5 / 2, mismatches = 0, stored_at = nb + nb / 3;
    ct_ds_cursor stored = {0, 0};
    int32_t *first_ids[3] = {calloc((size_t)R, 4), calloc((size_t)R, 4), calloc((size_t)R, 4)};
    int64_t filled[3] = {0, 0, 0};
    ct_batch *saved = calloc((size_t)total, sizeof *saved); /* batches after the stored cursor */
    for (int64_t k = 0; k < total; k++) {
        if (k == stored_at) stored = ct_loader_cursor(&a);
        CHECK_OK(ct_loader_next(&a, &x));
        CHECK_OK(ct_loader_next(&b, &y));
        mismatches += !batch_equal(&x, &y);
        int64_t e = x.cursor.epoch;
        CHECK(x.cursor.index == k % nb && e == k / nb, "cursor of batch %lld: (%lld, %lld)", (long long)k,
              (long long)e, (long long)x.cursor.index);
        if (e < 3)
            for (int64_t i = 0; i < x.n_rows && filled[e] < R; i++) first_ids[e][filled[e]++] = x.ids[i * 128];
        for (int64_t i = x.n_rows; i < B; i++) /* padding rows of the last batch */
            CHECK(x.seg[i * 128] == -1 && x.labels[i * 128 + 5] == -100, "padding row");
        if (k >= stored_at) {
            CHECK_OK(ct_batch_alloc(&saved[k], B, 128));
            saved[k].n_rows = x.n_rows, saved[k].cursor = x.cursor;
            saved[k].n_tokens = x.n_tokens, saved[k].n_targets = x.n_targets;
            size_t n = (size_t)B * 128 * 4;
            memcpy(saved[k].ids, x.ids, n), memcpy(saved[k].labels, x.labels, n);
            memcpy(saved[k].pos, x.pos, n), memcpy(saved[k].seg, x.seg, n);
        }
    }
    CHECK(mismatches == 0, "same seed: %lld batches differ", (long long)mismatches);
    for (int e = 0; e < 2; e++) { /* every row exactly once per epoch: sorted first tokens are the rows' */
        int64_t dup = 0, missing = 0;
        for (int64_t r = 0; r < R; r++) {
            int32_t want = ds.ids[ds.sample_off[ds.rows.row_samples[ds.rows.row_off[r]]]];
            int64_t c = 0;
            for (int64_t i = 0; i < filled[e]; i++) c += first_ids[e][i] == want;
            missing += c == 0, dup += c > 1;
        }
        CHECK(filled[e] == R && missing == 0 && dup == 0, "epoch %d: %lld rows, %lld missing, %lld twice", e,
              (long long)filled[e], (long long)missing, (long long)dup);
    }
    CHECK(memcmp(first_ids[0], first_ids[1], (size_t)R * 4) != 0, "epochs 0 and 1 in different orders");

    /* Resume from the cursor stored mid-epoch 1: exactly the batches that followed. */
    ct_loader c;
    CHECK_OK(ct_loader_init(&c, &ds, B, 11, true, false));
    CHECK(stored.epoch == 1 && stored.index == nb / 3, "stored cursor (%lld, %lld)", (long long)stored.epoch,
          (long long)stored.index);
    CHECK_OK(ct_loader_seek(&c, stored));
    mismatches = 0;
    for (int64_t k = stored_at; k < total; k++) {
        CHECK_OK(ct_loader_next(&c, &x));
        mismatches += !batch_equal(&x, &saved[k]);
    }
    CHECK(mismatches == 0, "resume: %lld of %lld batches differ", (long long)mismatches,
          (long long)(total - stored_at));
    /* A cursor at the end of an epoch is the start of the next. */
    CHECK_OK(ct_loader_seek(&c, (ct_ds_cursor){0, nb}));
    CHECK(ct_loader_cursor(&c).epoch == 1 && ct_loader_cursor(&c).index == 0, "end-of-epoch cursor");
    CHECK(ct_loader_seek(&c, (ct_ds_cursor){0, nb + 1}) == CT_EINPUT && strstr(ct_last_error(), "does not fit"),
          "cursor out of range: %s", ct_last_error());

    /* Another seed: another order; drop_last: only full batches. */
    ct_loader d;
    CHECK_OK(ct_loader_init(&d, &ds, B, 12, true, true));
    CHECK(ct_loader_batches_per_epoch(&d) == R / B, "drop_last batches");
    CHECK_OK(ct_loader_next(&d, &y));
    CHECK_OK(ct_loader_seek(&a, (ct_ds_cursor){0, 0}));
    CHECK_OK(ct_loader_next(&a, &x));
    CHECK(memcmp(x.ids, y.ids, (size_t)B * 128 * 4) != 0, "other seed, other first batch");
    ct_loader e;
    CHECK(ct_loader_init(&e, &ds, R + 1, 1, true, true) == CT_EINPUT, "drop_last with batch > rows");

    for (int64_t k = stored_at; k < total; k++) ct_batch_free(&saved[k]);
    free(saved);
    for (int i = 0; i < 3; i++) free(first_ids[i]);
    ct_batch_free(&x), ct_batch_free(&y);
    ct_loader_free(&a), ct_loader_free(&b), ct_loader_free(&c), ct_loader_free(&d);
    ct_dataset_free(&ds);
}

int main(void) {
    test_loader();
    test_shift_by_hand();
    test_permutation();
    test_pack();
    return ct_test_finish();
}
