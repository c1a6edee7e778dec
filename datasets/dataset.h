/* A prepared (tokenized, templated, packed) dataset: every kept sample's ids
 * and aligned labels back to back, and the packing of samples into rows of
 * max_length. Prepared from a data file by ct_dataset_prepare (read, records
 * -> turns -> ids/labels in parallel with the output order fixed, then
 * packed), or loaded from the HDF5 cache (dataset_cache.h). Batches come from
 * the loader (loader.h); ct_dataset_fill_row lays out one row.
 *
 * Row layout (what the model gets), for each sample of the row in order:
 *   ids, positions 0..len-1, seg = index of the sample in the row (0, 1, ...),
 *   labels SHIFTED (label t = token t+1 of the same sample, -100 at each
 *   sample's last token); then padding: id pad_id, label -100, pos 0, seg -1.
 *
 * Ownership: ct_dataset owns all its arrays (ct_dataset_free). The config's
 * strings are borrowed during the call only. */
#ifndef CT_DATASET_H
#define CT_DATASET_H

#include <stdbool.h>
#include <stdint.h>

#include "datasets/dataset_reader.h"
#include "datasets/packing.h"
#include "datasets/tokenizer.h"

typedef struct {
    const char *data_path;       /* .json (array) or .jsonl */
    ct_ds_format format;         /* CT_DS_AUTO: from the first record */
    const char *template_name;   /* "internlm2_chat", ...; unused for pretokenized data */
    const char *system;          /* default system text for records without one (NULL: none) */
    int64_t max_length;          /* samples are cut to it; rows hold max_length tokens */
    bool pack;                   /* pack_to_max_length; false: one sample per row */
    bool shuffle_before_pack;    /* shuffle samples by `seed` before packing */
    uint64_t seed;
    bool skip_bad_records;       /* bad records become counted warnings instead of errors */
    bool alpaca_drop_empty_input; /* see ct_ds_parse_opts */
    int threads;                 /* 0: OpenMP's default; the result does not depend on it */
    const char *tokenizer_path;  /* dir or tokenizer.model (the cache key hashes its files) */
    const char *cache_dir;       /* NULL: no cache (dataset_cache.h) */
} ct_ds_config;

/* The config's defaults: auto format, internlm2_chat, max_length 2048,
 * packed, shuffled with seed 0, strict, no cache. */
ct_ds_config ct_ds_config_default(void);

typedef struct {
    int64_t n_records;         /* records in the file */
    int64_t n_skipped;         /* bad records skipped (skip_bad_records) */
    int64_t n_dropped_empty;   /* nothing to learn by the format (alpaca <nooutput>, no turns) */
    int64_t n_dropped_untrained; /* no trained label left after the cut (XTuner drops them) */
    int64_t n_truncated;       /* samples cut at max_length */
    int64_t n_samples;         /* samples kept */
    int64_t n_tokens;          /* tokens in kept samples */
    int64_t n_targets;         /* loss targets: shifted labels != -100 */
    char first_warning[512];   /* the first skipped record's message ("" when none) */
} ct_ds_stats;

typedef struct {
    int64_t max_length;
    int32_t pad_id;          /* id written into padding (labels there are -100) */
    int64_t n_samples;
    int64_t *sample_off;     /* (n_samples + 1) sample i = tokens [off[i], off[i+1]) */
    int32_t *ids;            /* (sample_off[n_samples]) token ids, sample after sample */
    int32_t *labels;         /* (sample_off[n_samples]) ALIGNED labels (encode.h) */
    ct_packing rows;         /* samples of each row */
    ct_ds_stats stats;
} ct_dataset;

/* Reads, encodes and packs cfg->data_path with tokenizer `tok` (no cache). */
int ct_dataset_prepare(const ct_ds_config *cfg, const ct_tokenizer *tok, ct_dataset *out);
void ct_dataset_free(ct_dataset *ds);

/* Sample i's tokens and aligned labels (pointers into ds); returns its length,
 * or -1 when i is out of range. */
int64_t ct_dataset_sample(const ct_dataset *ds, int64_t i, const int32_t **ids, const int32_t **labels);

/* Writes row r (see the layout above) into arrays of max_length each and
 * returns the number of real tokens in the row. ids and pos may be NULL;
 * labels needs seg (the shift reads the boundaries from it): -1 when labels
 * is given without seg or r is out of range. */
int64_t ct_dataset_fill_row(const ct_dataset *ds, int64_t r, int32_t *ids, int32_t *labels, int32_t *pos,
                            int32_t *seg);

/* Real tokens / slots and loss targets / slots over all rows (slots =
 * rows * max_length): how much of each batch is padding. */
double ct_dataset_token_efficiency(const ct_dataset *ds);
double ct_dataset_target_efficiency(const ct_dataset *ds);

#endif
