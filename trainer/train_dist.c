/* The data-parallel side of the training run (trainer/dist/dist.h is the
 * communicator): which micro-batches a rank trains, the global window token
 * count, the per-iteration exchange (loss, tokens, stop requests, who failed),
 * the gradient all-reduce and the cross-rank check of the LoRA weights.
 *
 * The order: a run of N ranks with accumulative_counts A trains exactly the
 * micro-batches, windows, learning rates and loss normalisation of the
 * single-process run with accumulative_counts N x A and N times the
 * iterations: the single-process order of batch_size batches (the "virtual"
 * sequence, v = 0, 1, ...) is dealt out so that global iteration i gives
 * micro-batch v = i * N + k to rank k. The LR schedule runs on that virtual
 * sequence (bpe = batches per epoch, vtotal = max_iters x N or max_epochs x
 * bpe micro-batches), and a window's divisor is the trained tokens of all of
 * its N x A micro-batches. Dropout masks are drawn per micro-batch (seed, v).
 * When vtotal is not a multiple of N, the ranks past its end in the last
 * iteration train nothing. Everything here is the identity for world 1. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/train_internal.h"

int ct_train_dist_open(ct_trainer *t) {
    t->vtotal = t->total_iters;
    if (t->world == 1) return CT_OK;
    const ct_run_config *c = t->cfg;
    int64_t N = t->world, bpe = t->iters_per_epoch;
    t->vtotal = c->max_iters > 0 ? c->max_iters * N : c->max_epochs * bpe;
    t->total_iters = (t->vtotal + N - 1) / N;
    t->total_steps = (t->total_iters + c->accumulative_counts - 1) / c->accumulative_counts;
    /* The schedule of the single-process order: what the config counts in
     * (global) iterations, max_iters and the iteration-based phases, scaled
     * to micro-batches; epochs are bpe micro-batches. */
    ct_run_config v = *c; /* shallow: strings stay the config's */
    if (v.max_iters > 0) v.max_iters *= N;
    for (int i = 0; i < v.n_phases; i++) {
        ct_sched_phase *p = &v.phases[i];
        if (p->by_epoch) continue;
        p->begin *= (double)N;
        if (p->end >= 0) p->end *= (double)N;
        p->T_max *= (double)N;
    }
    CT_TRY(ct_config_scheduler(&v, bpe, t->vtotal, &t->sched));
    if (t->out)
        fprintf(t->out, "data parallel: %d ranks (%s), global batch %lld x %lld x %d = %lld rows per optimizer "
                "step; the order of a single process with accumulative_counts %lld\n", t->world, t->dist->ops->name,
                (long long)c->batch_size, (long long)c->accumulative_counts, t->world,
                (long long)(c->batch_size * c->accumulative_counts * N), (long long)(c->accumulative_counts * N));
    t->dist_host = malloc((size_t)ct_lora_numel(t->lora) * sizeof *t->dist_host);
    if (!t->dist_host) return ct_errorf(CT_ERUNTIME, "out of memory for the all-reduce's host buffer");
    return CT_OK;
}

int ct_train_dist_data_wait(ct_trainer *t) {
    if (t->world == 1) return CT_OK;
    double limit = 3600;
    const char *e = getenv("CTUNER_DIST_DATA_TIMEOUT");
    if (e && e[0]) {
        char *end;
        double v = strtod(e, &end);
        if (*end || !(v > 0) || !isfinite(v))
            return ct_errorf(CT_EINPUT, "CTUNER_DIST_DATA_TIMEOUT=%s: expected a number of seconds > 0", e);
        limit = v;
    }
    return t->dist->ops->barrier(t->dist, limit, "waiting for rank 0 to prepare the dataset cache "
                                 "(CTUNER_DIST_DATA_TIMEOUT sets this limit)");
}

int64_t ct_train_vpos(const ct_trainer *t, int64_t iter) {
    int64_t v = iter * t->world;
    return v < t->vtotal ? v : t->vtotal;
}

ct_ds_cursor ct_train_cursor_at(const ct_trainer *t, int64_t v) {
    return (ct_ds_cursor){v / t->iters_per_epoch, v % t->iters_per_epoch};
}

int ct_train_window_targets(ct_trainer *t, int64_t w0, int64_t n, int64_t *targets) {
    if (t->world == 1) return ct_trainer_count_window(t, ct_train_cursor_at(t, w0), n, targets);
    int64_t mine = 0;
    for (int64_t j = 0; j < n; j++) {
        int64_t v = (w0 + j) * t->world + t->rank;
        if (v >= t->vtotal) break;
        CT_TRY(ct_loader_seek(&t->peek, ct_train_cursor_at(t, v)));
        CT_TRY(ct_loader_next(&t->peek, &t->peek_batch));
        mine += t->peek_batch.n_targets;
    }
    CT_TRY(t->dist->ops->allreduce(t->dist, &mine, 1, CT_DIST_I64, "the window's token count"));
    *targets = mine;
    return CT_OK;
}

/* One rank's account of an iteration. */
typedef struct {
    double nll;
    int64_t targets, tokens;
    int32_t stop; /* the signal this rank was asked to stop by (-1: without one), 0: none */
    int32_t pad;
} iter_record;

int ct_train_dist_iter(ct_trainer *t, double *nll, int64_t *targets, int64_t *tokens, int stop) {
    t->bad_rank = -1;
    if (t->world == 1) return CT_OK;
    iter_record mine = {*nll, *targets, *tokens, stop, 0};
    iter_record *all = t->dist_records;
    if (!all && !(all = t->dist_records = calloc((size_t)t->world, sizeof *all)))
        return ct_errorf(CT_ERUNTIME, "out of memory");
    CT_TRY(t->dist->ops->allgather(t->dist, &mine, all, sizeof mine, "the iteration's losses"));
    /* summed in rank order on every rank: the same bits everywhere */
    double s = 0;
    int64_t tg = 0, tk = 0;
    for (int r = 0; r < t->world; r++) {
        if (!isfinite(all[r].nll) && t->bad_rank < 0) t->bad_rank = r;
        if (all[r].stop && !t->stop_all) t->stop_all = all[r].stop;
        s += all[r].nll;
        tg += all[r].targets;
        tk += all[r].tokens;
    }
    *nll = s;
    *targets = tg;
    *tokens = tk;
    return CT_OK;
}

/* (a window's partial sum, for a checkpoint saved inside it; the step's sum
 * is train_grad_sync.c's, overlapped with the backward) */
int ct_train_dist_reduce_grads(ct_trainer *t) {
    if (t->world == 1 && !t->dist->nccl) return CT_OK; /* (nccl: the 1-rank NCCL check, dist.h) */
    return ct_dist_allreduce_backend_f32(t->dist, ct_model_backend(t->model), ct_lora_grads(t->lora),
                                         (size_t)ct_lora_numel(t->lora), t->dist_host, "the gradient all-reduce");
}

/* FNV-1a over the bits of the LoRA values. */
static uint64_t fnv(const float *x, size_t n) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof *x; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int ct_train_dist_check_weights(ct_trainer *t, const char *when) {
    if (t->world == 1) return CT_OK;
    size_t n = (size_t)ct_lora_numel(t->lora);
    CT_TRY(ct_model_backend(t->model)->download(t->dist_host, ct_lora_values(t->lora), n * sizeof(float)));
    uint64_t mine = fnv(t->dist_host, n), *all = calloc((size_t)t->world, sizeof *all);
    if (!all) return ct_errorf(CT_ERUNTIME, "out of memory");
    int rc = t->dist->ops->allgather(t->dist, &mine, all, sizeof mine, "the LoRA weight check");
    for (int r = 1; r < t->world && !rc; r++)
        if (all[r] != all[0])
            rc = ct_errorf(CT_ERUNTIME, "%s: the LoRA weights of rank %d (checksum %016llx) differ from rank 0's "
                           "(%016llx): the ranks no longer train one model (a rank resumed from another checkpoint, "
                           "or an all-reduce gave different sums on different ranks)", when, r,
                           (unsigned long long)all[r], (unsigned long long)all[0]);
    free(all);
    return rc;
}

int ct_train_dist_share_path(ct_trainer *t, char *path, size_t cap, bool *found) {
    if (t->world == 1) return CT_OK;
    struct {
        int32_t found;
        char path[CT_PATH_MAX];
    } msg;
    memset(&msg, 0, sizeof msg);
    msg.found = *found;
    snprintf(msg.path, sizeof msg.path, "%s", path);
    CT_TRY(t->dist->ops->bcast(t->dist, &msg, sizeof msg, "the checkpoint to resume from"));
    *found = msg.found != 0;
    snprintf(path, cap, "%s", msg.path);
    return CT_OK;
}

void ct_train_dist_close(ct_trainer *t) {
    free(t->dist_host);
    free(t->dist_records);
    t->dist_host = NULL;
    t->dist_records = NULL;
}
