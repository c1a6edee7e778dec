/* Training checkpoints: work_dir/iter_<N>.h5 (N = iterations done) with
 * everything a bit-identical continuation needs, and the PEFT adapter beside
 * it (iter_<N>_adapter/).
 *
 * Datasets of the HDF5 file (trainer/io/checkpoint.h is the container):
 *   train/version        i32  CT_TRAIN_STATE_VERSION
 *   train/iter           i64  iterations done
 *   train/step           i64  optimizer steps done
 *   train/total_iters    i64  the run's length when saved (informative)
 *   train/cursor         i64[2] (epoch, batch) of the next batch
 *   train/window_cursor  i64[2] where the current accumulation window began
 *   train/mid_window     i32  1: saved inside a window (a stop request); the
 *                              partial gradient is in grad/<key>
 *   train/shape          i64[2] batch_size, accumulative_counts
 *   train/world          i64  ranks of the run (absent: 1); iter, step and
 *                              the cursors are in its units, the cursors those
 *                              of the single-process order (train_dist.c);
 *                              another world size resumes the same micro-batch
 *                              order when batch_size x accumulative_counts x
 *                              world is the same
 *   train/data           i64[3] samples, rows, trained tokens of the dataset
 *   train/tokens_seen    i64  real tokens trained on so far
 *   train/seed           u64  the seed of every RNG; all of them are counter
 *                              based (data order: seed + epoch; dropout: seed +
 *                              iteration), so seed + counters are the RNG state
 *   log/interval_nll     u64  the bits of the double NLL sum of the iterations
 *                              since the last logged line, and
 *   log/interval_counts  i64[2] their trained and real tokens: the resumed
 *                              run logs the same numbers
 *   config               str  the resolved config (YAML)
 *   lora/<peft key>      f32  A and B
 *   grad/<peft key>      f32  only when mid_window
 *   optim/...            AdamW step and moments (trainer/optim/adamw.h)
 * The file is written first (atomically), then the adapter directory, then
 * save_total_limit is applied: a crash leaves at worst a checkpoint without
 * its adapter, never a half-written file. With several ranks, rank 0 alone
 * writes (every rank holds the same weights and optimizer state; a partial
 * gradient has been summed over the ranks first) and on loading only rank 0
 * takes grad/ (the others start the window's rest from zero). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/model/adapter.h"
#include "trainer/io/checkpoint.h"
#include "trainer/train_internal.h"

#define CT_TRAIN_STATE_VERSION 1

static int put_cursor(ct_ckpt_writer *w, const char *name, ct_ds_cursor c) {
    int64_t v[2] = {c.epoch, c.index};
    return ct_ckpt_put_i64(w, name, 2, v);
}

static int put_state(ct_trainer *t, ct_ckpt_writer *w, bool mid_window) {
    const ct_backend *be = ct_model_backend(t->model);
    int32_t version = CT_TRAIN_STATE_VERSION, mid = mid_window;
    int64_t shape[2] = {t->cfg->batch_size, t->cfg->accumulative_counts};
    int64_t data[3] = {t->ds.n_samples, t->ds.rows.n_rows, t->ds.stats.n_targets};
    uint64_t seed = (uint64_t)t->cfg->seed;
    ct_ckpt_put_i32(w, "train/version", 1, &version);
    ct_ckpt_put_i64(w, "train/iter", 1, &t->iter);
    ct_ckpt_put_i64(w, "train/step", 1, &t->step);
    ct_ckpt_put_i64(w, "train/total_iters", 1, &t->total_iters);
    /* the next micro-batch not yet trained: with several ranks, of the single-process order */
    put_cursor(w, "train/cursor", t->world > 1 ? ct_train_cursor_at(t, ct_train_vpos(t, t->iter))
                                                : ct_input_stage_cursor(&t->stage, &t->loader));
    put_cursor(w, "train/window_cursor", t->window_cursor);
    ct_ckpt_put_i32(w, "train/mid_window", 1, &mid);
    ct_ckpt_put_i64(w, "train/shape", 2, shape);
    int64_t world = t->world;
    ct_ckpt_put_i64(w, "train/world", 1, &world);
    ct_ckpt_put_i64(w, "train/data", 3, data);
    ct_ckpt_put_i64(w, "train/tokens_seen", 1, &t->log.tokens_seen);
    ct_ckpt_put_u64(w, "train/seed", 1, &seed);
    uint64_t nll_bits;
    memcpy(&nll_bits, &t->log.nll, sizeof nll_bits);
    int64_t counts[2] = {t->log.targets, t->log.tokens};
    ct_ckpt_put_u64(w, "log/interval_nll", 1, &nll_bits);
    ct_ckpt_put_i64(w, "log/interval_counts", 2, counts);
    ct_ckpt_put_str(w, "config", t->config_text);
    char name[1024];
    for (size_t i = 0; i < t->n_params; i++) {
        const ct_lora_param *p = ct_lora_at(t->lora, i);
        snprintf(name, sizeof name, "lora/%s", p->name);
        ct_ckpt_put_tensor(w, name, be, p->t);
        if (mid_window) {
            snprintf(name, sizeof name, "grad/%s", p->name);
            ct_ckpt_put_tensor(w, name, be, p->t->grad);
        }
    }
    return ct_adamw_save(t->adamw, w, "optim"); /* errors are sticky: the commit reports the first */
}

int ct_train_state_save(ct_trainer *t, bool mid_window) {
    char path[CT_PATH_MAX], adir[CT_PATH_MAX];
    CT_TRY(ct_ckpt_iter_path(path, sizeof path, t->work_dir, t->iter));
    if (t->rank != 0) { /* rank 0 writes it */
        t->last_saved_iter = t->iter;
        snprintf(t->res->checkpoint, sizeof t->res->checkpoint, "%s", path);
        return CT_OK;
    }
    int n = snprintf(adir, sizeof adir, "%s/iter_%lld_adapter", t->work_dir, (long long)t->iter);
    if (n < 0 || (size_t)n >= sizeof adir) return ct_errorf(CT_EINPUT, "%s: work_dir path too long", t->work_dir);
    ct_ckpt_writer *w = NULL;
    CT_TRY(ct_ckpt_writer_open(path, &w));
    put_state(t, w, mid_window);
    int rc = ct_ckpt_writer_commit(w);
    if (rc) return ct_error_wrap(rc, "saving checkpoint %s", path);
    CT_TRY(ct_adapter_save(adir, t->lora, ct_model_path(t->model)));
    int removed = 0;
    CT_TRY(ct_ckpt_retain(t->work_dir, (int)t->cfg->save_total_limit, &removed));
    t->last_saved_iter = t->iter;
    snprintf(t->res->checkpoint, sizeof t->res->checkpoint, "%s", path);
    ct_train_log_note(t, "saved %s%s (+ %s)%s\n", path, mid_window ? " inside an accumulation window" : "", adir,
                      removed ? ", older checkpoints removed (save_total_limit)" : "");
    return CT_OK;
}

/* ---- loading ---- */

/* A checkpoint's LoRA value that is NaN/Inf (a run that diverged before the
 * save, a damaged file) is refused at load, naming the checkpoint: resuming
 * would only train on NaN. t is in be's memory. */
static int check_finite(const char *path, const char *name, const ct_backend *be, const ct_tensor *t) {
    int64_t n = ct_numel(t);
    const float *v = t->data;
    float *host = NULL; /* [n] host copy off the CPU */
    if (be->device != CT_CPU) {
        host = malloc((size_t)n * sizeof *host);
        if (!host) return ct_errorf(CT_ERUNTIME, "out of memory checking %s", name);
        int rc = be->download(host, t->data, (size_t)n * sizeof *host);
        if (rc) {
            free(host);
            return rc;
        }
        v = host;
    }
    int rc = CT_OK;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            rc = ct_errorf(CT_EINPUT, "%s: dataset '%s' holds a non-finite value (%g at element %lld): the checkpoint "
                           "is damaged or the run had diverged before it was saved; resume from an older checkpoint",
                           path, name, (double)v[i], (long long)i);
            break;
        }
    free(host);
    return rc;
}

static int get_i64(ct_ckpt_reader *r, const char *name, int64_t n, int64_t *v) { return ct_ckpt_get_i64(r, name, n, v); }

static int get_cursor(ct_ckpt_reader *r, const char *name, ct_ds_cursor *c) {
    int64_t v[2];
    CT_TRY(get_i64(r, name, 2, v));
    *c = (ct_ds_cursor){v[0], v[1]};
    return CT_OK;
}

/* The checkpoint's config against the current one: a resumed run continues
 * with the current settings; a difference is worth a note. */
static void compare_config(ct_trainer *t, const char *path, const char *text) {
    ct_run_config old;
    if (ct_config_parse(text, strlen(text), path, NULL, 0, &old) != CT_OK) {
        ct_error_clear();
        ct_train_log_note(t, "note: the config stored in %s does not parse any more; continuing with the current one\n",
                          path);
        return;
    }
    char *wd = old.work_dir;
    old.work_dir = t->cfg->work_dir;
    if (!ct_config_equal(&old, t->cfg))
        ct_train_log_note(t, "note: the config differs from the one %s was made with; continuing with the current "
                          "one (a bit-identical continuation needs the same settings)\n", path);
    old.work_dir = wd;
    ct_config_free(&old);
}

/* A checkpoint of a run with another number of ranks: the same micro-batch
 * order continues when the micro-batches per optimizer step are the same
 * (batch_size x accumulative_counts x world) and the micro-batches done so
 * far fill whole iterations of this world size. */
static int translate_world(const ct_trainer *t, const char *path, const int64_t shape[2], int64_t world, int32_t mid,
                           int64_t *iter, int64_t *step) {
    const ct_run_config *c = t->cfg;
    int64_t had = shape[0] * shape[1] * world, now = c->batch_size * c->accumulative_counts * t->world;
    int64_t done = *iter * world;
    if (shape[0] != c->batch_size || had != now)
        return ct_errorf(CT_EINPUT, "%s: made by %lld ranks with batch_size %lld x accumulative_counts %lld (%lld rows "
                         "per optimizer step); with %d ranks set batch_size %lld and accumulative_counts %lld%s", path,
                         (long long)world, (long long)shape[0], (long long)shape[1], (long long)(shape[0] * shape[1] * world),
                         t->world, (long long)shape[0], (long long)(shape[1] * world / t->world),
                         shape[1] * world % t->world ? " (not a whole number: use another world size)" : "");
    if (done % t->world != 0)
        return ct_errorf(CT_EINPUT, "%s: saved after %lld micro-batches, which %d ranks cannot continue (not a "
                         "multiple of %d)", path, (long long)done, t->world, t->world);
    (void)mid;
    *iter = done / t->world;
    (void)step; /* optimizer steps are the same count whatever the world size */
    return CT_OK;
}

static int load_state(ct_trainer *t, ct_ckpt_reader *r, const char *path) {
    const ct_backend *be = ct_model_backend(t->model);
    int32_t version = 0, mid = 0;
    if (!ct_ckpt_has(r, "train/version"))
        return ct_errorf(CT_EINPUT, "%s: not a training checkpoint (no train/version)", path);
    CT_TRY(ct_ckpt_get_i32(r, "train/version", 1, &version));
    if (version != CT_TRAIN_STATE_VERSION)
        return ct_errorf(CT_EINPUT, "%s: training state version %d; this build reads version %d", path, version,
                         CT_TRAIN_STATE_VERSION);
    int64_t iter, step, shape[2], data[3], tokens_seen;
    uint64_t seed;
    ct_ds_cursor cur, win;
    CT_TRY(get_i64(r, "train/iter", 1, &iter));
    CT_TRY(get_i64(r, "train/step", 1, &step));
    CT_TRY(get_cursor(r, "train/cursor", &cur));
    CT_TRY(get_cursor(r, "train/window_cursor", &win));
    CT_TRY(ct_ckpt_get_i32(r, "train/mid_window", 1, &mid));
    CT_TRY(get_i64(r, "train/shape", 2, shape));
    CT_TRY(get_i64(r, "train/data", 3, data));
    CT_TRY(get_i64(r, "train/tokens_seen", 1, &tokens_seen));
    int64_t world = 1;
    if (ct_ckpt_has(r, "train/world")) CT_TRY(get_i64(r, "train/world", 1, &world));
    if (world < 1) return ct_errorf(CT_EINPUT, "%s: train/world %lld is not a world size", path, (long long)world);
    if (world != t->world) {
        t->log_cut = iter; /* metrics.jsonl counts the saving run's iterations */
        CT_TRY(translate_world(t, path, shape, world, mid, &iter, &step));
    }
    CT_TRY(ct_ckpt_get_u64(r, "train/seed", 1, &seed));
    uint64_t nll_bits;
    int64_t counts[2];
    CT_TRY(ct_ckpt_get_u64(r, "log/interval_nll", 1, &nll_bits));
    CT_TRY(get_i64(r, "log/interval_counts", 2, counts));
    if (data[0] != t->ds.n_samples || data[1] != t->ds.rows.n_rows || data[2] != t->ds.stats.n_targets)
        return ct_errorf(CT_EINPUT, "%s: made for a dataset of %lld samples in %lld rows, this one has %lld in %lld: "
                         "resume with the data and settings (max_length, packing, seed) the run started with", path,
                         (long long)data[0], (long long)data[1], (long long)t->ds.n_samples,
                         (long long)t->ds.rows.n_rows);
    if (iter < 0 || iter > t->total_iters)
        return ct_errorf(CT_EINPUT, "%s: saved after iteration %lld, but this run has %lld iterations", path,
                         (long long)iter, (long long)t->total_iters);
    int64_t acc = t->cfg->accumulative_counts;
    if (mid && world == t->world && (shape[0] != t->cfg->batch_size || shape[1] != acc))
        return ct_errorf(CT_EINPUT, "%s: saved inside an accumulation window of batch_size %lld x %lld; resume it "
                         "with the same batch_size and accumulative_counts", path, (long long)shape[0],
                         (long long)shape[1]);
    char *text = NULL;
    CT_TRY(ct_ckpt_get_str(r, "config", &text));
    compare_config(t, path, text);
    free(text);

    char name[1024];
    for (size_t i = 0; i < t->n_params; i++) {
        const ct_lora_param *p = ct_lora_at(t->lora, i);
        snprintf(name, sizeof name, "lora/%s", p->name);
        CT_TRY(ct_ckpt_get_tensor(r, name, be, p->t));
        CT_TRY(check_finite(path, name, be, p->t));
        snprintf(name, sizeof name, "grad/%s", p->name);
        if (mid && t->rank == 0) CT_TRY(ct_ckpt_get_tensor(r, name, be, p->t->grad));
    }
    if (!mid || t->rank != 0) CT_TRY(ct_adamw_zero_grad(t->adamw));
    CT_TRY(ct_adamw_load(t->adamw, r, "optim"));
    if (ct_adamw_get_step(t->adamw) != step)
        return ct_errorf(CT_EINPUT, "%s: optimizer step %lld but train/step %lld: the file is inconsistent", path,
                         (long long)ct_adamw_get_step(t->adamw), (long long)step);
    if (t->world > 1) cur = ct_train_cursor_at(t, ct_train_vpos(t, iter)); /* run_iteration seeks per micro-batch */
    CT_TRY(ct_loader_seek(&t->loader, cur));
    t->iter = iter;
    t->step = step;
    t->window_cursor = win;
    t->log.tokens_seen = tokens_seen;
    memcpy(&t->log.nll, &nll_bits, sizeof t->log.nll);
    t->log.targets = counts[0];
    t->log.tokens = counts[1];
    t->last_saved_iter = iter;
    snprintf(t->res->checkpoint, sizeof t->res->checkpoint, "%s", path);
    if (mid) { /* the rest of the window runs with the divisor it started with */
        int64_t w0 = iter / acc * acc, left = t->total_iters - w0;
        if (t->world > 1) t->window_cursor = ct_train_cursor_at(t, ct_train_vpos(t, w0));
        if (t->world > 1 || world > 1) CT_TRY(ct_train_window_targets(t, w0, left < acc ? left : acc, &t->window_targets));
        else CT_TRY(ct_trainer_count_window(t, win, left < acc ? left : acc, &t->window_targets));
    }
    if (seed != (uint64_t)t->cfg->seed)
        ct_train_log_note(t, "note: %s was made with seed %llu, the config says %lld: data order and dropout change\n",
                          path, (unsigned long long)seed, (long long)t->cfg->seed);
    return CT_OK;
}

int ct_train_state_load(ct_trainer *t, const char *path) {
    ct_ckpt_reader *r = NULL;
    CT_TRY(ct_ckpt_open(path, &r));
    int rc = load_state(t, r, path);
    ct_ckpt_close(r);
    return rc;
}
