/* The tokenized-dataset cache: a prepared dataset saved as one HDF5 file in a
 * cache directory, named and keyed by the SHA-256 of everything that shapes it
 * (the data file's bytes, tokenizer.model and tokenizer_config.json bytes,
 * template, system, max_length, packing, shuffle seed, format and reader
 * options, and the cache layout version). A later run with the same inputs
 * loads it instead of tokenizing again; a file that does not verify (other
 * key, truncated, missing or mis-sized dataset, out-of-range ids, payload
 * digest mismatch) is never trusted: the dataset is rebuilt and the file
 * rewritten. Files are written to a temp name, fsync'ed and renamed.
 * Old entries are left in the directory (delete it to reclaim the space).
 *
 * Ownership: *out is owned by the caller (ct_dataset_free); info is filled by
 * value. */
#ifndef CT_DATASET_CACHE_H
#define CT_DATASET_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "datasets/dataset.h"
#include "datasets/tokenizer.h"

#define CT_DS_CACHE_VERSION 1

typedef struct {
    bool hit;               /* loaded from the cache */
    char path[4096];        /* the cache file ("" without a cache dir) */
    char reason[512];       /* why it was built: "no cache file", "corrupt: ...", "no cache dir" */
    char write_error[512];  /* saving failed (the dataset is still returned; the run can go on) */
    int reclaimed;          /* temp files of interrupted cache builds removed */
    uint8_t key[32];
} ct_ds_cache_info;

/* The cache key of a config (reads and hashes the data and tokenizer files). */
int ct_ds_cache_key(const ct_ds_config *cfg, uint8_t key[32]);

/* Saves ds under `path` atomically, stamped with `key`. */
int ct_ds_cache_save(const char *path, const uint8_t key[32], const ct_dataset *ds);

/* Removes the temp files ".ds-*.h5.tmp-XXXXXX" that interrupted saves left in
 * `dir` (a live writer's file is locked and kept). *removed may be NULL. */
int ct_ds_cache_reclaim(const char *dir, int *removed);

/* Loads and verifies `path` against key, max_length and the vocabulary size.
 * CT_EINPUT with the reason in the message when the file is missing or does
 * not verify (then *out is empty). */
int ct_ds_cache_load(const char *path, const uint8_t key[32], int64_t max_length, int32_t vocab_size,
                     ct_dataset *out);

/* The dataset of cfg: from the cache when cfg->cache_dir holds a valid entry,
 * else prepared (ct_dataset_prepare) and saved there. Without a cache_dir it
 * just prepares. tok must be the tokenizer loaded from cfg->tokenizer_path. */
int ct_ds_open(const ct_ds_config *cfg, const ct_tokenizer *tok, ct_dataset *out, ct_ds_cache_info *info);

#endif
