/* Fuzz target: model.safetensors.index.json (weight_map, metadata.total_size,
 * shard names) as ct_st_index_load reads it. */
#include <string.h>

#include "tests/fuzz/fuzz_common.h"
#include "trainer/io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write("model.safetensors.index.json", data, size);
    ct_st_index idx;
    memset(&idx, 0, sizeof idx);
    if (ct_st_index_load(path, &idx) == 0) {
        for (size_t i = 0; i < idx.n_entries; i++) {
            fz_assert(idx.entries[i].shard >= 0 && idx.entries[i].shard < idx.n_shards, "entry's shard in range");
            fz_assert(!strchr(idx.shards[idx.entries[i].shard], '/'), "shard names are plain file names");
            if (i) fz_assert(strcmp(idx.entries[i - 1].name, idx.entries[i].name) < 0, "entries sorted, unique");
        }
    }
    ct_st_index_free(&idx);
    return 0;
}
