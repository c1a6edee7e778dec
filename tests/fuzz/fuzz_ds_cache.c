/* Fuzz target: a dataset-cache file (dataset_cache.c's HDF5 layout) as
 * ct_ds_cache_load reads and verifies it for key 0,1,..,31, max_length 64 and
 * the stories260k vocabulary (the seed from make_seeds.c matches); an
 * accepted cache must give rows that fill. */
#include <stdlib.h>
#include <string.h>

#include "datasets/dataset_cache.h"
#include "tests/fuzz/fuzz_common.h"

#define FZ_DS_MAX_LENGTH 64
#define FZ_DS_VOCAB 512

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t key[32];
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)i;
    const char *path = fz_write("ds.h5", data, size);
    ct_dataset ds;
    memset(&ds, 0, sizeof ds);
    if (ct_ds_cache_load(path, key, FZ_DS_MAX_LENGTH, FZ_DS_VOCAB, &ds) == 0) {
        int32_t ids[FZ_DS_MAX_LENGTH], labels[FZ_DS_MAX_LENGTH], pos[FZ_DS_MAX_LENGTH], seg[FZ_DS_MAX_LENGTH];
        for (int64_t i = 0; i < ds.sample_off[ds.n_samples]; i++)
            fz_assert(ds.ids[i] >= 0 && ds.ids[i] < FZ_DS_VOCAB, "cached ids inside the vocabulary");
        for (int64_t r = 0; r < ds.rows.n_rows; r++) {
            int64_t n = ct_dataset_fill_row(&ds, r, ids, labels, pos, seg);
            fz_assert(n >= 0 && n <= FZ_DS_MAX_LENGTH, "a cached row fills");
        }
    }
    ct_dataset_free(&ds);
    return 0;
}
