/* Fuzz target: an HDF5 training checkpoint (iter_N.h5) as the trainer reads
 * it: ct_ckpt_verify (every dataset and checksum), then ct_ckpt_open and the
 * typed getters on the names a checkpoint holds (the seed from make_seeds.c
 * has these names). */
#include <stdlib.h>

#include "tests/fuzz/fuzz_common.h"
#include "trainer/io/checkpoint.h"

static const char *const k_names[] = {"train/version", "train/seed", "train/mid_window", "config",
                                      "lora/a",        "optim/step", "log/interval_nll", "missing"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write("iter_1.h5", data, size);
    (void)ct_ckpt_verify(path);
    ct_ckpt_reader *r = NULL;
    if (ct_ckpt_open(path, &r) != 0) return 0;
    for (size_t i = 0; i < sizeof k_names / sizeof *k_names; i++) {
        const char *name = k_names[i];
        if (!ct_ckpt_has(r, name)) continue;
        ct_ckpt_kind kind;
        int ndim = 0;
        int64_t shape[CT_CKPT_MAX_DIMS];
        if (ct_ckpt_info(r, name, &kind, &ndim, shape) != 0) continue;
        int64_t n = 1;
        for (int d = 0; d < ndim; d++) {
            fz_assert(shape[d] >= 0, "dims >= 0");
            n = shape[d] > 0 && n > (1 << 20) / shape[d] ? (1 << 21) : n * shape[d];
        }
        if (n > (1 << 20)) continue;
        void *buf = malloc((size_t)(n ? n : 1) * 8);
        if (!buf) abort();
        char *s = NULL;
        switch (kind) {
        case CT_CKPT_F32: (void)ct_ckpt_get_f32(r, name, ndim, shape, buf); break;
        case CT_CKPT_I64: (void)ct_ckpt_get_i64(r, name, n, buf); break;
        case CT_CKPT_U64: (void)ct_ckpt_get_u64(r, name, n, buf); break;
        case CT_CKPT_I32: (void)ct_ckpt_get_i32(r, name, n, buf); break;
        case CT_CKPT_STR:
            if (ct_ckpt_get_str(r, name, &s) == 0) fz_assert(s != NULL, "a string read");
            free(s);
            break;
        }
        free(buf);
    }
    ct_ckpt_close(r);
    return 0;
}
