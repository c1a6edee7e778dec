/* Data file -> prepared dataset: split the file into records, then parse,
 * template and tokenize every record in parallel (OpenMP; each record's
 * result goes to its own slot, so the output is the same for any thread
 * count), then gather the kept samples in file order and pack them.
 *
 * Strict mode reports the first bad record in file order (records after a
 * known bad one are not processed); with skip_bad_records, input errors are
 * counted and the first message kept, while runtime errors (memory) still
 * stop the run. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <omp.h>

#include "autograd/ct_error.h"
#include "datasets/dataset.h"
#include "datasets/encode.h"
#include "datasets/file_check.h"

enum { R_UNSET, R_KEPT, R_DROPPED_EMPTY, R_DROPPED_UNTRAINED, R_BAD }; /* R_UNSET: not processed */

typedef struct {
    ct_ids ids, labels; /* (n) the sample, aligned labels */
    int kind;           /* R_* */
    int status;         /* R_BAD: the error code */
    char *msg;          /* R_BAD: the error message (malloc'ed) */
    bool truncated;
} record_result;

/* Parses and encodes record i into *res. */
static void process_record(const ct_ds_file *f, size_t i, ct_ds_format fmt, const ct_ds_parse_opts *po,
                           const ct_encode_opts *eo, record_result *res) {
    ct_conv c;
    bool dropped;
    int rc = ct_ds_record_parse(f, i, fmt, po, &c, &dropped);
    if (!rc && dropped) {
        res->kind = R_DROPPED_EMPTY;
        return;
    }
    ct_encode_info info = {0};
    if (!rc) {
        rc = ct_encode_conv(eo, &c, &res->ids, &res->labels, &info);
        if (rc) rc = ct_error_wrap(rc, "%s:%lld: record %zu", f->path, (long long)f->recs[i].line, i + 1);
        ct_conv_free(&c);
    }
    if (rc) {
        res->kind = R_BAD;
        res->status = rc;
        res->msg = strdup(ct_last_error());
        ct_ids_free(&res->ids);
        ct_ids_free(&res->labels);
        return;
    }
    res->truncated = info.truncated;
    if (info.n_trained == 0) {
        res->kind = R_DROPPED_UNTRAINED;
        ct_ids_free(&res->ids);
        ct_ids_free(&res->labels);
        return;
    }
    res->kind = R_KEPT;
}

static int detect_format(const ct_ds_config *cfg, const ct_ds_file *f, ct_ds_format *fmt) {
    *fmt = cfg->format;
    if (*fmt != CT_DS_AUTO) return CT_OK;
    int rc = CT_EINPUT;
    /* Strict: the first record decides. Skipping: the first that can be read. */
    for (size_t i = 0; i < f->n && rc; i++) {
        rc = ct_ds_detect_format(f, i, fmt);
        if (rc && (!cfg->skip_bad_records || rc != CT_EINPUT)) return rc;
    }
    return rc;
}

/* Moves the kept samples into ds (file order) and fills the stats. */
static int gather(const ct_ds_config *cfg, const ct_ds_file *f, record_result *res, ct_dataset *ds) {
    ct_ds_stats *st = &ds->stats;
    st->n_records = (int64_t)f->n;
    size_t total = 0;
    for (size_t i = 0; i < f->n; i++) {
        record_result *r = &res[i];
        st->n_truncated += r->kind == R_KEPT && r->truncated;
        switch (r->kind) {
        case R_KEPT:
            st->n_samples++;
            total += r->ids.n;
            break;
        case R_DROPPED_EMPTY: st->n_dropped_empty++; break;
        case R_DROPPED_UNTRAINED: st->n_dropped_untrained++; break;
        case R_UNSET: return ct_errorf(CT_ERUNTIME, "%s: record %zu was not processed (internal error)", f->path, i + 1);
        default:
            if (!cfg->skip_bad_records || r->status != CT_EINPUT) return ct_errorf(r->status, "%s", r->msg);
            if (st->n_skipped++ == 0) snprintf(st->first_warning, sizeof st->first_warning, "%s", r->msg);
        }
    }
    if (st->n_samples == 0)
        return ct_errorf(CT_EINPUT, "%s: no sample left to train: %lld records, %lld skipped as bad, %lld without "
                         "output, %lld with no trained token within max_length %lld%s%s",
                         f->path, (long long)st->n_records, (long long)st->n_skipped,
                         (long long)st->n_dropped_empty, (long long)st->n_dropped_untrained,
                         (long long)cfg->max_length, st->first_warning[0] ? "; first problem: " : "",
                         st->first_warning);
    ds->n_samples = st->n_samples;
    ds->sample_off = malloc(((size_t)ds->n_samples + 1) * sizeof *ds->sample_off);
    ds->ids = malloc((total ? total : 1) * sizeof *ds->ids);
    ds->labels = malloc((total ? total : 1) * sizeof *ds->labels);
    if (!ds->sample_off || !ds->ids || !ds->labels)
        return ct_errorf(CT_ERUNTIME, "out of memory holding %zu tokens of %s", total, f->path);
    size_t o = 0;
    int64_t s = 0;
    for (size_t i = 0; i < f->n; i++) {
        record_result *r = &res[i];
        if (r->kind != R_KEPT) continue;
        ds->sample_off[s++] = (int64_t)o;
        memcpy(ds->ids + o, r->ids.v, r->ids.n * sizeof *ds->ids);
        memcpy(ds->labels + o, r->labels.v, r->labels.n * sizeof *ds->labels);
        for (size_t t = 1; t < r->labels.n; t++) st->n_targets += r->labels.v[t] >= 0; /* shifted targets */
        o += r->ids.n;
        ct_ids_free(&r->ids);
        ct_ids_free(&r->labels);
    }
    ds->sample_off[s] = (int64_t)o;
    st->n_tokens = (int64_t)o;
    return CT_OK;
}

int ct_dataset_prepare(const ct_ds_config *cfg, const ct_tokenizer *tok, ct_dataset *out) {
    memset(out, 0, sizeof *out);
    if (!cfg->data_path) return ct_errorf(CT_EINPUT, "no dataset file given");
    if (cfg->max_length <= 0 || cfg->max_length > INT32_MAX)
        return ct_errorf(CT_EINPUT, "max_length must be in 1..%d (got %lld)", INT32_MAX, (long long)cfg->max_length);
    ct_ds_file f;
    CT_TRY(ct_ds_file_read(cfg->data_path, &f));
    ct_ds_format fmt;
    const ct_template *tmpl = NULL;
    int rc = detect_format(cfg, &f, &fmt);
    if (!rc && fmt != CT_DS_PRETOKENIZED) rc = ct_template_get(cfg->template_name, "prompt_template", &tmpl);
    record_result *res = rc ? NULL : calloc(f.n, sizeof *res);
    if (!rc && !res) rc = ct_errorf(CT_ERUNTIME, "out of memory for %zu records", f.n);
    if (rc) {
        ct_ds_file_free(&f);
        return rc;
    }
    ct_ds_parse_opts po = {cfg->alpaca_drop_empty_input, ct_tok_vocab_size(tok)};
    ct_encode_opts eo = {tok, tmpl, cfg->system, cfg->max_length};
    json_decref(json_object()); /* jansson seeds its hash on first use: do it before the threads */

    int64_t first_bad = INT64_MAX; /* strict mode: records after this one need no work */
    int64_t n = (int64_t)f.n;
    int threads = cfg->threads > 0 ? cfg->threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        int64_t fb;
#pragma omp atomic read
        fb = first_bad;
        if (i > fb || ct_cancel_signal()) continue; /* SIGINT/SIGTERM: stop tokenizing */
        process_record(&f, (size_t)i, fmt, &po, &eo, &res[i]);
        if (res[i].kind == R_BAD && (!cfg->skip_bad_records || res[i].status != CT_EINPUT)) {
#pragma omp critical(ct_ds_first_bad)
            if (i < first_bad) {
#pragma omp atomic write
                first_bad = i;
            }
        }
    }
    rc = ct_cancel_check("tokenizing the data");
    if (!rc) rc = gather(cfg, &f, res, out);
    for (size_t i = 0; i < f.n; i++) {
        ct_ids_free(&res[i].ids);
        ct_ids_free(&res[i].labels);
        free(res[i].msg);
    }
    free(res);
    ct_ds_file_free(&f);
    if (rc) {
        ct_dataset_free(out);
        return rc;
    }
    out->max_length = cfg->max_length;
    int32_t pad = ct_tok_pad_id(tok);
    out->pad_id = pad >= 0 ? pad : (ct_tok_eos_id(tok) >= 0 ? ct_tok_eos_id(tok) : 0);
    int64_t *len = malloc((size_t)out->n_samples * sizeof *len); /* (n_samples) */
    if (!len) {
        ct_dataset_free(out);
        return ct_errorf(CT_ERUNTIME, "out of memory");
    }
    for (int64_t s = 0; s < out->n_samples; s++) len[s] = out->sample_off[s + 1] - out->sample_off[s];
    rc = ct_pack(len, out->n_samples, cfg->max_length, cfg->pack, cfg->shuffle_before_pack, cfg->seed, &out->rows);
    free(len);
    if (rc) ct_dataset_free(out);
    return rc;
}
