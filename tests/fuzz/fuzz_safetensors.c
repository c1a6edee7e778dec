/* Fuzz target: a .safetensors file (header JSON, offsets, dtypes, shapes) as
 * ct_st_open reads it, then every tensor read back as f32 (bounded). */
#include <stdlib.h>

#include "tests/fuzz/fuzz_common.h"
#include "trainer/io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write("model.safetensors", data, size);
    ct_st_file *f = NULL;
    if (ct_st_open(path, &f) != 0) return 0;
    size_t n = ct_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const ct_st_tensor *t = ct_st_at(f, i);
        fz_assert(t && ct_st_find(f, t->name) != NULL, "every tensor found by its name");
        fz_assert(t->numel >= 0 && t->nbytes <= size, "a tensor lies inside the file");
        if (t->numel > (1 << 20)) continue;
        float *dst = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *dst);
        if (!dst) abort();
        (void)ct_st_read_f32(t, dst);
        free(dst);
        ct_st_release(f, t);
    }
    for (size_t i = 0; i < ct_st_metadata_count(f); i++) {
        const char *k, *v;
        ct_st_metadata_at(f, i, &k, &v);
        fz_assert(k && v && ct_st_metadata(f, k) != NULL, "metadata found by its key");
    }
    ct_st_close(f);
    return 0;
}
