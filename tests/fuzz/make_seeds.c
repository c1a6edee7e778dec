/* Writes the binary seed inputs the fixtures lack into OUTDIR/<target>/:
 *   checkpoint/seed.h5          a small checkpoint with fuzz_checkpoint.c's names
 *   ds_cache/seed.h5            a dataset cache of 8 conversations, key 0..31,
 *                               max_length 64, the stories260k tokenizer
 *   safetensors/seed.safetensors  F32/BF16/F16/I32 tensors with metadata
 * Usage: make_seeds OUTDIR (run by tests/fuzz/run.sh). */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/ct_error.h"
#include "datasets/dataset_cache.h"
#include "datasets/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { /* fuzz_common.h declares it */
    (void)data;
    (void)size;
    return 0;
}

static int fail(const char *what) {
    fprintf(stderr, "make_seeds: %s: %s\n", what, ct_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds OUTDIR\n");
        return 2;
    }
    char p[4096];
    const char *out = argv[1];
    for (const char *sub = "checkpoint\0ds_cache\0safetensors\0"; *sub; sub += strlen(sub) + 1) {
        snprintf(p, sizeof p, "%s/%s", out, sub);
        mkdir(out, 0755);
        mkdir(p, 0755);
    }

    /* checkpoint */
    snprintf(p, sizeof p, "%s/checkpoint/seed.h5", out);
    ct_ckpt_writer *w = NULL;
    if (ct_ckpt_writer_open(p, &w)) return fail("checkpoint");
    int32_t version = 1, mid = 0;
    uint64_t seed = 7, nll = 0x3ff0000000000000ull;
    int64_t step = 3, shape[2] = {4, 3};
    float a[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    ct_ckpt_put_i32(w, "train/version", 1, &version);
    ct_ckpt_put_i32(w, "train/mid_window", 1, &mid);
    ct_ckpt_put_u64(w, "train/seed", 1, &seed);
    ct_ckpt_put_u64(w, "log/interval_nll", 1, &nll);
    ct_ckpt_put_i64(w, "optim/step", 1, &step);
    ct_ckpt_put_f32(w, "lora/a", 2, shape, a);
    ct_ckpt_put_str(w, "config", "lr: 0.0002\nlora: {r: 8}\n");
    if (ct_ckpt_writer_commit(w)) return fail("checkpoint");

    /* dataset cache */
    static const char json[] =
        "[{\"conversation\": [{\"input\": \"Tell me a story.\", \"output\": \"Once upon a time, there was a girl.\"}]},"
        " {\"conversation\": [{\"input\": \"Who is Tom?\", \"output\": \"Tom is a big boy.\"}]},"
        " {\"conversation\": [{\"system\": \"Be kind.\", \"input\": \"Where?\", \"output\": \"The cat sat on the mat.\"},"
        " {\"input\": \"And?\", \"output\": \"The dog found a red ball.\"}]}]";
    ct_tokenizer *tok = NULL;
    snprintf(p, sizeof p, "%s/stories260k-internlm2", fz_fixtures());
    if (ct_tok_load(p, &tok)) return fail("tokenizer");
    ct_ds_config cfg = ct_ds_config_default();
    cfg.data_path = fz_write("data.json", (const uint8_t *)json, sizeof json - 1);
    cfg.max_length = 64;
    cfg.threads = 1;
    ct_dataset ds;
    memset(&ds, 0, sizeof ds);
    if (ct_dataset_prepare(&cfg, tok, &ds)) return fail("dataset");
    uint8_t key[32];
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)i;
    snprintf(p, sizeof p, "%s/ds_cache/seed.h5", out);
    if (ct_ds_cache_save(p, key, &ds)) return fail("dataset cache");
    ct_dataset_free(&ds);
    ct_tok_free(tok);

    /* safetensors */
    ct_st_writer *sw = NULL;
    uint16_t half[6] = {0x3f80, 0x4000, 0x4040, 0xbf80, 0x0000, 0x7f80};
    int32_t ints[3] = {1, -2, 3};
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s0[2] = {0, 4};
    if (ct_st_writer_new(&sw) || ct_st_writer_metadata(sw, "format", "pt") ||
        ct_st_writer_add(sw, "model.layers.0.attention.wqkv.weight", CT_ST_F32, 2, shape, a) ||
        ct_st_writer_add(sw, "bf", CT_ST_BF16, 2, s23, half) || ct_st_writer_add(sw, "h", CT_ST_F16, 2, s23, half) ||
        ct_st_writer_add(sw, "i", CT_ST_I32, 1, s3, ints) || ct_st_writer_add(sw, "empty", CT_ST_F32, 2, s0, a))
        return fail("safetensors");
    snprintf(p, sizeof p, "%s/safetensors/seed.safetensors", out);
    if (ct_st_writer_save(sw, p, NULL, NULL)) return fail("safetensors");
    ct_st_writer_free(sw);
    printf("seeds written to %s\n", out);
    return 0;
}
