/* The prepared dataset's accessors: defaults, the row layout that every
 * batch uses, and the efficiency figures. */
#include "datasets/dataset.h"

#include <stdlib.h>
#include <string.h>

#include "datasets/encode.h"

ct_ds_config ct_ds_config_default(void) {
    ct_ds_config c;
    memset(&c, 0, sizeof c);
    c.format = CT_DS_AUTO;
    c.template_name = "internlm2_chat";
    c.max_length = 2048;
    c.pack = true;
    c.shuffle_before_pack = true;
    return c;
}

void ct_dataset_free(ct_dataset *ds) {
    free(ds->sample_off);
    free(ds->ids);
    free(ds->labels);
    ct_packing_free(&ds->rows);
    memset(ds, 0, sizeof *ds);
}

int64_t ct_dataset_sample(const ct_dataset *ds, int64_t i, const int32_t **ids, const int32_t **labels) {
    if (i < 0 || i >= ds->n_samples) return -1;
    if (ids) *ids = ds->ids + ds->sample_off[i];
    if (labels) *labels = ds->labels + ds->sample_off[i];
    return ds->sample_off[i + 1] - ds->sample_off[i];
}

int64_t ct_dataset_fill_row(const ct_dataset *ds, int64_t r, int32_t *ids, int32_t *labels, int32_t *pos,
                            int32_t *seg) {
    if (r < 0 || r >= ds->rows.n_rows || (labels && !seg)) return -1;
    size_t T = (size_t)ds->max_length, o = 0;
    for (int64_t k = ds->rows.row_off[r]; k < ds->rows.row_off[r + 1]; k++) {
        int64_t s = ds->rows.row_samples[k];
        size_t a = (size_t)ds->sample_off[s], L = (size_t)(ds->sample_off[s + 1] - ds->sample_off[s]);
        int32_t j = (int32_t)(k - ds->rows.row_off[r]); /* segment: the sample's place in the row */
        if (ids) memcpy(ids + o, ds->ids + a, L * sizeof *ids);
        if (labels) memcpy(labels + o, ds->labels + a, L * sizeof *labels); /* aligned; shifted below */
        for (size_t i = 0; i < L; i++) {
            if (pos) pos[o + i] = (int32_t)i;
            if (seg) seg[o + i] = j;
        }
        o += L;
    }
    for (size_t t = o; t < T; t++) {
        if (ids) ids[t] = ds->pad_id;
        if (labels) labels[t] = CT_IGNORE_INDEX;
        if (pos) pos[t] = 0;
        if (seg) seg[t] = -1;
    }
    if (labels) ct_labels_shift(labels, seg, (int64_t)T, labels);
    return (int64_t)o;
}

double ct_dataset_token_efficiency(const ct_dataset *ds) {
    double slots = (double)ds->rows.n_rows * (double)ds->max_length;
    return slots > 0 ? (double)ds->stats.n_tokens / slots : 0.0;
}

double ct_dataset_target_efficiency(const ct_dataset *ds) {
    double slots = (double)ds->rows.n_rows * (double)ds->max_length;
    return slots > 0 ? (double)ds->stats.n_targets / slots : 0.0;
}
