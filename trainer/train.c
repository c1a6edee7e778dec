/* The training loop: iterations of one micro-batch, gradient accumulation
 * over windows of accumulative_counts iterations, clipping, AdamW at the LR
 * of the iteration that closes the window, and the hooks (progress,
 * checkpoints, evaluation) between iterations.
 *
 * Loss normalisation: before a window runs, the trained tokens of all its
 * micro-batches are counted (a second loader reads the same batches ahead);
 * each iteration's loss is its NLL sum divided by that window total N. The
 * gradients accumulated over the window are then exactly those of
 * "sum of NLL over the window / N", the token mean of the whole window, the
 * same for batch_size 2 x 1 iteration as for batch_size 1 x 2 iterations
 * (up to the order of fp32 additions). mmengine instead divides each
 * iteration's mean by accumulative_counts, which weighs a short sample's
 * tokens more; the token mean is what HF Trainer does since 4.46.
 *
 * Randomness: dropout masks come from tape.step_seed = mix(seed, iteration),
 * so a checkpoint recomputation and a resumed run draw the same masks. */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "trainer/model/adapter.h"
#include "trainer/io/checkpoint.h"
#include "trainer/train_internal.h"

static volatile sig_atomic_t g_stop_signal = 0; /* > 0: a signal number; -1: a request without one */

void ct_train_request_stop(int signo) { g_stop_signal = signo > 0 ? signo : -1; }
void ct_train_clear_stop(void) { g_stop_signal = 0; }

/* Forward and backward of the next micro-batch; grads accumulate into the
 * LoRA grad block. *nll: the batch's NLL sum, *targets its trained tokens,
 * *tokens its real (non-padding) tokens. The batch after it is read and
 * uploaded while the device runs the backward (trainer/input_stage.h). */
static int run_iteration(ct_trainer *t, double *nll, int64_t *targets, int64_t *tokens) {
    int64_t v = t->iter; /* the micro-batch's place in the single-process order (train_dist.c) */
    if (t->world > 1) {
        v = t->iter * t->world + t->rank;
        *nll = 0;
        *targets = *tokens = 0;
        if (v >= t->vtotal) return CT_OK; /* past the run's end: this rank trains nothing */
        /* (unless a batch was read ahead for v: the stage hands out that one) */
        CT_TRY(ct_loader_seek(&t->loader, ct_train_cursor_at(t, v)));
    }
    ct_tape *tp = &t->tape;
    ct_tape_reset(tp);
    ct_staged_batch sb;
    CT_TRY(ct_input_stage_take(&t->stage, &t->loader, tp, &sb));
    const ct_batch *b = sb.batch;
    t->epoch = b->cursor.epoch;
    tp->step_seed = ct_mix64((uint64_t)t->cfg->seed ^ ct_mix64((uint64_t)v));
    ct_decoder_input in = {.pos = sb.pos, .runs = sb.runs, .seq_len = sb.seq_len, .host_ids = b->ids,
                           .embedded = sb.rows};
    /* A window without any trained token (possible with pre-tokenized data)
     * contributes nothing: its loss is 0 whatever the divisor. */
    float norm = (float)(t->window_targets > 0 ? t->window_targets : 1);
    ct_tensor *loss;
    int64_t n_trained = 0;
    CT_TRY(ct_decoder_model_loss(tp, ct_model_decoder(t->model), sb.ids, &in, sb.labels,
                                 t->cfg->gradient_checkpointing, norm, &loss, &n_trained));
    float lv;
    CT_TRY(tp->be->download(&lv, loss->data, sizeof lv));
    if (n_trained > 0 && isfinite(lv)) CT_TRY(ct_backward(tp, loss, 1.0f));
    if (t->world > 1) { /* this rank's next micro-batch, v + world */
        if (v + t->world < t->vtotal) {
            CT_TRY(ct_loader_seek(&t->loader, ct_train_cursor_at(t, v + t->world)));
            CT_TRY(ct_input_stage_prefetch(&t->stage, &t->loader));
        }
    } else if (t->iter + 1 < t->total_iters) {
        CT_TRY(ct_input_stage_prefetch(&t->stage, &t->loader));
    }
    *nll = (double)lv * (double)norm;
    *targets = n_trained;
    *tokens = b->n_tokens;
    return CT_OK;
}

/* Stops the run on a NaN/Inf: nothing more is saved, so the newest
 * checkpoint is the last good state. */
static int nonfinite(ct_trainer *t, const char *what) {
    char last[CT_PATH_MAX] = "";
    bool found = false;
    if (ct_ckpt_find_latest(t->work_dir, last, sizeof last, NULL, &found)) found = false;
    char who[32] = "";
    if (t->world > 1 && t->bad_rank >= 0) snprintf(who, sizeof who, " on rank %d", t->bad_rank);
    return ct_errorf(CT_ERUNTIME, "iteration %lld (optimizer step %lld): %s%s; training stopped without saving. %s%s%s",
                     (long long)t->iter, (long long)t->step + 1, what, who,
                     found ? "The last good checkpoint is " : "No checkpoint was saved yet",
                     found ? last : "", found ? " (continue from it with --resume after lowering lr or max_norm, or "
                                                "checking the data)" : " (lower lr or max_norm, or check the data)");
}

static int optimizer_step(ct_trainer *t) {
    /* the LR of the iteration closing the window (of the micro-batch closing it, world > 1) */
    double lr = ct_sched_lr_at(&t->sched, ct_train_vpos(t, t->iter) - 1);
    double norm = 0;
    const ct_backend *be = ct_model_backend(t->model);
    int rc = t->cfg->max_norm > 0 ? ct_grad_clip_norm(be, t->params, t->n_params, t->cfg->max_norm, &norm)
                                  : ct_grad_global_norm(be, t->params, t->n_params, &norm);
    if (rc == CT_ENONFINITE) {
        char msg[768];
        snprintf(msg, sizeof msg, "the gradient is not finite (%s)", ct_last_error());
        return nonfinite(t, msg);
    }
    CT_TRY(rc);
    CT_TRY(ct_adamw_step(t->adamw, lr));
    CT_TRY(ct_adamw_zero_grad(t->adamw));
    t->step++;
    t->last_lr = lr;
    t->last_grad_norm = norm;
    return CT_OK;
}

/* A checkpoint falls due every save_steps iterations; one due inside the
 * window [w0, iter) is written when the window closes. */
static bool save_due(const ct_trainer *t) {
    int64_t s = t->cfg->save_steps, acc = t->cfg->accumulative_counts;
    if (s <= 0) return false;
    int64_t w0 = (t->iter - 1) / acc * acc;
    return t->iter / s > w0 / s;
}

/* With several ranks, the request any rank got in this iteration (agreed on
 * in the iteration's exchange): every rank stops after the same iteration. */
static int stop_signal(const ct_trainer *t) { return t->world > 1 ? t->stop_all : g_stop_signal; }

static bool stop_requested(const ct_trainer *t) {
    return stop_signal(t) != 0 || (t->opt->stop_after > 0 && t->iter >= t->opt->stop_after);
}

static int loop(ct_trainer *t) {
    const ct_run_config *c = t->cfg;
    int64_t acc = c->accumulative_counts;
    if (g_stop_signal != 0 && t->world == 1 && t->iter < t->total_iters) { /* during setup: nothing new to save */
        t->res->stopped = true;
        t->res->stop_signal = g_stop_signal > 0 ? g_stop_signal : 0;
        ct_train_log_note(t, "stopped before the first iteration; nothing new to save\n");
        return CT_OK;
    }
    while (t->iter < t->total_iters) {
        if (t->iter % acc == 0) { /* a window starts: count its trained tokens first */
            int64_t left = t->total_iters - t->iter;
            if (t->world > 1) { /* all ranks' micro-batches of the window */
                t->window_cursor = ct_train_cursor_at(t, ct_train_vpos(t, t->iter));
                CT_TRY(ct_train_window_targets(t, t->iter, left < acc ? left : acc, &t->window_targets));
            } else {
                t->window_cursor = ct_input_stage_cursor(&t->stage, &t->loader);
                CT_TRY(ct_trainer_count_window(t, t->window_cursor, left < acc ? left : acc, &t->window_targets));
            }
        }
        double t0 = ct_now_s(), nll = 0;
        int64_t targets = 0, tokens = 0;
        bool closes = (t->iter + 1) % acc == 0 || t->iter + 1 == t->total_iters;
        /* the window's last backward: the grads' all-reduce starts layer by
         * layer during it, and ends before the next collective */
        if (closes) CT_TRY(ct_grad_sync_arm(t));
        CT_TRY(run_iteration(t, &nll, &targets, &tokens)); /* (on an error, closing the trainer unhooks the tape) */
        if (closes) CT_TRY(ct_grad_sync_finish(t));
        t->iter++;
        CT_TRY(ct_train_dist_iter(t, &nll, &targets, &tokens, g_stop_signal)); /* sums over the ranks */
        double loss = targets > 0 ? nll / (double)targets : 0.0;
        t->last_loss = loss;
        if (!isfinite(nll)) {
            char msg[128];
            snprintf(msg, sizeof msg, "the loss is %s", isnan(nll) ? "NaN" : "infinite");
            return nonfinite(t, msg);
        }
        if (t->opt->on_iter) t->opt->on_iter(t->opt->cb_ctx, t->iter - 1, loss);
        if (closes) CT_TRY(optimizer_step(t));
        CT_TRY(ct_train_log_iter(t, nll, targets, tokens, ct_now_s() - t0));
        if (t->world > 1 && (t->iter % c->logging_interval == 0 || t->iter == t->total_iters)) {
            char when[64];
            snprintf(when, sizeof when, "after iteration %lld", (long long)t->iter);
            CT_TRY(ct_train_dist_check_weights(t, when));
        }
        if (t->iter == t->total_iters) break; /* the end saves and evaluates */
        if (closes && save_due(t)) CT_TRY(ct_train_state_save(t, false));
        if (t->rank == 0 && c->evaluation_freq > 0 && t->iter % c->evaluation_freq == 0)
            CT_TRY(ct_eval_hook_chat(t, ""));
        if (stop_requested(t)) {
            /* inside a window, the saved partial gradient is the sum over the ranks */
            if (!closes && t->last_saved_iter != t->iter) CT_TRY(ct_train_dist_reduce_grads(t));
            if (t->last_saved_iter != t->iter) CT_TRY(ct_train_state_save(t, !closes));
            t->res->stopped = true;
            t->res->stop_signal = stop_signal(t) > 0 ? stop_signal(t) : 0;
            ct_train_log_note(t, "stopped after iteration %lld of %lld; checkpoint %s (continue with --resume auto)\n",
                              (long long)t->iter, (long long)t->total_iters, t->res->checkpoint);
            return CT_OK;
        }
    }
    return CT_OK;
}

static int finish(ct_trainer *t) {
    if (t->last_saved_iter != t->iter) CT_TRY(ct_train_state_save(t, false));
    char dir[CT_PATH_MAX], sums[320];
    ct_grad_sync_summary(t, sums, sizeof sums);
    if (sums[0]) ct_train_log_note(t, "%s", sums);
    if (t->rank != 0) return CT_OK; /* rank 0 writes the adapter and evaluates */
    CT_TRY(ct_path_join(dir, sizeof dir, t->work_dir, "adapter"));
    CT_TRY(ct_adapter_save(dir, t->lora, ct_model_path(t->model)));
    ct_train_log_note(t, "final adapter: %s\n", dir);
    CT_TRY(ct_eval_hook_chat(t, "after"));
    if (t->opt->eval_data) {
        CT_TRY(ct_eval_hook_loss(t, t->opt->eval_data, &t->res->eval_loss, &t->res->eval_tokens));
        CT_TRY(ct_train_log_eval_loss(t, t->res->eval_loss, t->res->eval_tokens));
        ct_train_log_note(t, "eval loss on %s: %.9g over %lld tokens (ppl %.6g)\n", t->opt->eval_data,
                          t->res->eval_loss, (long long)t->res->eval_tokens, exp(t->res->eval_loss));
    }
    return CT_OK;
}

/* The resolved YAML, stored in every checkpoint. */
static int config_text(ct_trainer *t) {
    if (t->opt->config_text) {
        t->config_text = strdup(t->opt->config_text);
        return t->config_text ? CT_OK : ct_errorf(CT_ERUNTIME, "out of memory");
    }
    size_t len = 0;
    FILE *f = open_memstream(&t->config_text, &len);
    if (!f) return ct_errorf(CT_ERUNTIME, "out of memory");
    int rc = ct_config_write_yaml(t->cfg, f);
    if (fclose(f) != 0 && !rc) rc = ct_errorf(CT_ERUNTIME, "writing the config text failed");
    return rc;
}

static void note_damaged(void *ctx, const char *path, const char *why) {
    ct_trainer *t = ctx;
    ct_train_log_note(t, "resume auto: skipping %s, it is damaged (%s)\n", path, why);
    t->skipped_damaged++;
}

static int resume(ct_trainer *t) {
    const char *r = t->opt->resume;
    char path[CT_PATH_MAX] = "";
    bool found = true;
    /* Our temp files of an interrupted save (a kill -9, a full disk). */
    int reclaimed = 0;
    CT_TRY(ct_ckpt_reclaim(t->work_dir, &reclaimed));
    if (reclaimed)
        ct_train_log_note(t, "removed %d temporary file(s) left in %s by an interrupted save\n", reclaimed,
                          t->work_dir);
    if (r && strcmp(r, "auto") == 0)
        CT_TRY(ct_ckpt_find_intact(t->work_dir, path, sizeof path, NULL, &found, note_damaged, t));
    else if (r) snprintf(path, sizeof path, "%s", r);
    CT_TRY(ct_train_dist_share_path(t, path, sizeof path, &found)); /* rank 0's choice */
    if (!r || !found) {
        /* A fresh run must not mix its checkpoints with an older run's
         * (retention and --resume auto go by iteration number). */
        char old[CT_PATH_MAX];
        bool any = false;
        CT_TRY(ct_ckpt_find_latest(t->work_dir, old, sizeof old, NULL, &any));
        if (any && t->skipped_damaged && t->rank == 0)
            return ct_errorf(CT_EINPUT, "resume auto: no checkpoint in %s is intact (%d damaged, the newest %s): "
                             "resume from a copy with --resume PATH, or move them away to start over",
                             t->work_dir, t->skipped_damaged, old);
        if (any && t->rank == 0)
            return ct_errorf(CT_EINPUT, "work_dir %s already holds checkpoints of a run (%s): continue it with "
                             "--resume auto, or train into another --work-dir", t->work_dir, old);
        if (r) ct_train_log_note(t, "resume auto: no checkpoint in %s, starting from the beginning\n", t->work_dir);
        return CT_OK;
    }
    CT_TRY(ct_train_state_load(t, path));
    ct_train_log_note(t, "resumed from %s: iteration %lld of %lld, optimizer step %lld\n", path, (long long)t->iter,
                      (long long)t->total_iters, (long long)t->step);
    /* A run killed between a save and its retention step left one checkpoint
     * too many: apply save_total_limit now (not when a damaged newer one was
     * skipped: the one resumed from must stay). */
    if (r && strcmp(r, "auto") == 0 && !t->skipped_damaged) CT_TRY(ct_ckpt_retain(t->work_dir, (int)t->cfg->save_total_limit, NULL));
    return CT_OK;
}

int ct_train(const ct_train_options *opt, ct_train_result *res) {
    memset(res, 0, sizeof *res);
    res->eval_loss = NAN;
    ct_trainer t;
    int rc = ct_trainer_open(&t, opt, res);
    if (!rc) rc = config_text(&t);
    if (!rc) rc = resume(&t);
    if (!rc) rc = ct_train_log_open(&t);
    if (!rc) rc = ct_train_dist_check_weights(&t, "before the first iteration"); /* one model on every rank */
    if (!rc && t.rank == 0) rc = ct_eval_hook_chat(&t, "before");
    if (!rc) rc = loop(&t);
    if (!rc && !res->stopped) rc = finish(&t);
    if (!rc && t.rank == 0 && t.log.n_hist > 0) rc = ct_train_log_plot(&t);
    res->iters_done = t.iter;
    res->total_iters = t.total_iters;
    res->steps_done = t.step;
    res->last_loss = t.last_loss;
    res->tokens_per_s = t.log.secs_all > 0 ? (double)t.log.tokens_all / t.log.secs_all : 0.0;
    res->peak_rss_mb = ct_train_peak_rss_mb();
    res->dev_peak_mb = (double)ct_train_device_mem(&t).peak / 1048576.0;
    res->plan_mb = (double)t.plan.allocator_total / 1048576.0;
    res->arena_used_mb = (double)(t.tape.main.peak + t.tape.scratch.peak) / 1048576.0;
    res->arena_reserved_mb = (double)(ct_arena_reserved(&t.tape.main) + ct_arena_reserved(&t.tape.scratch)) / 1048576.0;
    if (t.model) {
        ct_model_memory mm;
        ct_model_get_memory(t.model, &mm);
        if (!mm.device_bytes)
            res->weights_outside_mb = (double)(mm.mapped_bytes + mm.copied_bytes + mm.quant_bytes) / 1048576.0;
    }
    if (!rc && t.out)
        fprintf(t.out, "%s %lld iterations, %.0f tokens/s, peak RSS %.0f MiB, %s peak %.0f MiB\n",
                res->stopped ? "stopped after" : "done:", (long long)t.iter, res->tokens_per_s, res->peak_rss_mb,
                t.model ? ct_model_backend(t.model)->name : "device", res->dev_peak_mb);
    ct_trainer_close(&t);
    return rc;
}
