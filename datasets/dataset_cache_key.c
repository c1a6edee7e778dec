/* The cache key: SHA-256 over a framed list of (name, value) fields, where
 * file contents enter as their own SHA-256. Each field is framed as
 * name NUL, 8-byte little-endian value length, value, so no two different
 * configs can produce the same byte stream. Thread count is not part of the
 * key: it never changes the prepared data. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/ct_error.h"
#include "datasets/dataset_cache.h"
#include "datasets/file_check.h"
#include "datasets/sha256.h"

static void field(ct_sha256 *h, const char *name, const void *value, size_t n) {
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)n >> (8 * i));
    ct_sha256_update(h, name, strlen(name) + 1);
    ct_sha256_update(h, len, 8);
    ct_sha256_update(h, value, n);
}

static void field_int(ct_sha256 *h, const char *name, long long v) {
    char s[32];
    int n = snprintf(s, sizeof s, "%lld", v);
    field(h, name, s, (size_t)n);
}

/* Streams a regular file (`what` it is, for messages) through SHA-256;
 * *absent = true (and no error) when it does not exist and `optional`. Polls
 * the cancel flag (file_check.h) between chunks. */
static int hash_file(const char *path, const char *what, bool optional, uint8_t digest[32], bool *absent) {
    *absent = false;
    struct stat st;
    if (optional && stat(path, &st) != 0 && errno == ENOENT) {
        *absent = true;
        return CT_OK;
    }
    FILE *f;
    CT_TRY(ct_fopen_regular(path, what, &f, NULL));
    ct_sha256 h;
    ct_sha256_init(&h);
    enum { CHUNK = 1 << 20 };
    char *buf = malloc(CHUNK); /* (CHUNK) read buffer */
    if (!buf) {
        fclose(f);
        return ct_errorf(CT_ERUNTIME, "out of memory");
    }
    size_t got;
    int rc = CT_OK;
    while (!rc && (got = fread(buf, 1, CHUNK, f)) > 0) {
        ct_sha256_update(&h, buf, got);
        rc = ct_cancel_check("hashing the inputs for the dataset cache");
    }
    int err = ferror(f);
    fclose(f);
    free(buf);
    if (rc) return rc;
    if (err) return ct_errorf(CT_ERUNTIME, "%s: read error while hashing", path);
    ct_sha256_final(&h, digest);
    return CT_OK;
}

/* tokenizer.model and tokenizer_config.json of a tokenizer path, found as
 * ct_tok_load finds them (a directory, or a model file with the config beside). */
static int tokenizer_files(const char *path, char *model, char *config, size_t cap) {
    struct stat st;
    if (stat(path, &st) != 0) return ct_errorf(CT_EINPUT, "%s: tokenizer path not found", path);
    int a, b;
    if (S_ISDIR(st.st_mode)) {
        a = snprintf(model, cap, "%s/tokenizer.model", path);
        b = snprintf(config, cap, "%s/tokenizer_config.json", path);
    } else {
        const char *slash = strrchr(path, '/');
        int dl = slash ? (int)(slash - path) : 1;
        a = snprintf(model, cap, "%s", path);
        b = snprintf(config, cap, "%.*s/tokenizer_config.json", dl, slash ? path : ".");
    }
    if (a < 0 || b < 0 || (size_t)a >= cap || (size_t)b >= cap) return ct_errorf(CT_EINPUT, "%s: path too long", path);
    return CT_OK;
}

int ct_ds_cache_key(const ct_ds_config *cfg, uint8_t key[32]) {
    if (!cfg->data_path) return ct_errorf(CT_EINPUT, "no dataset file given");
    if (!cfg->tokenizer_path)
        return ct_errorf(CT_EINPUT, "the dataset cache needs the tokenizer's path (its files are part of the key)");
    char model[4096], config[4096];
    CT_TRY(tokenizer_files(cfg->tokenizer_path, model, config, sizeof model));
    uint8_t d_data[32], d_model[32], d_config[32];
    bool absent;
    CT_TRY(hash_file(cfg->data_path, "the dataset file (data_path)", false, d_data, &absent));
    CT_TRY(hash_file(model, "the tokenizer model", false, d_model, &absent));
    CT_TRY(hash_file(config, "the tokenizer config", true, d_config, &absent));

    ct_sha256 h;
    ct_sha256_init(&h);
    field_int(&h, "ctuner dataset cache", CT_DS_CACHE_VERSION);
    field(&h, "data", d_data, 32);
    field(&h, "tokenizer.model", d_model, 32);
    field(&h, "tokenizer_config.json", absent ? (const void *)"absent" : d_config, absent ? 6 : 32);
    field(&h, "template", cfg->template_name ? cfg->template_name : "", cfg->template_name ? strlen(cfg->template_name) : 0);
    field_int(&h, "has_system", cfg->system != NULL);
    field(&h, "system", cfg->system ? cfg->system : "", cfg->system ? strlen(cfg->system) : 0);
    field_int(&h, "max_length", (long long)cfg->max_length);
    field_int(&h, "pack", cfg->pack);
    field_int(&h, "shuffle_before_pack", cfg->shuffle_before_pack);
    char seed[24];
    int sn = snprintf(seed, sizeof seed, "%llu", (unsigned long long)cfg->seed);
    field(&h, "seed", seed, (size_t)sn);
    const char *fmt = ct_ds_format_name(cfg->format);
    field(&h, "format", fmt, strlen(fmt));
    field_int(&h, "skip_bad_records", cfg->skip_bad_records);
    field_int(&h, "alpaca_drop_empty_input", cfg->alpaca_drop_empty_input);
    ct_sha256_final(&h, key);
    return CT_OK;
}
