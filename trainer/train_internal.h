/* The trainer's state, shared by the files of the training run: train.c (the
 * loop), train_setup.c (model, LoRA, data, optimizer from the config),
 * train_state.c (checkpoints), train_log.c (progress, metrics, loss curve)
 * and eval_hook.c (answers to evaluation_inputs, eval-data loss). Not a public
 * interface: use trainer/train.h. */
#ifndef CT_TRAIN_INTERNAL_H
#define CT_TRAIN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/tape.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "datasets/template.h"
#include "datasets/tokenizer.h"
#include "trainer/optim/adamw.h"
#include "trainer/config/config.h"
#include "trainer/dist/dist.h"
#include "trainer/input_stage.h"
#include "trainer/model/model.h"
#include "trainer/optim/scheduler.h"
#include "trainer/plan/mem_plan.h"
#include "trainer/train.h"

/* Progress bookkeeping (train_log.c). */
typedef struct {
    FILE *metrics;            /* work_dir/metrics.jsonl, appended per logged iteration */
    int64_t *hist_iter;       /* (n_hist) logged iterations (1-based: iterations done) ... */
    double *hist_loss;        /* ... and their losses: the loss curve */
    size_t n_hist, cap_hist;
    double t0;                /* monotonic seconds when this process started iterating */
    int64_t iter0;            /* iterations done at that time (resumed runs: > 0) */
    /* since the last logged line */
    double t_mark, nll;
    int64_t targets, tokens;
    int64_t tokens_seen;      /* real tokens trained on by the whole run (kept across resumes) */
    int64_t tokens_all;       /* real tokens of every iteration of this process */
    double secs_all;          /* seconds spent in those iterations */
    bool line_open;           /* a live (\r) line is on the terminal */
} ct_train_log;

/* The gradient all-reduce of an optimizer step in buckets, each started as
 * soon as the backward of the window's last micro-batch has passed the
 * layers it holds (train_grad_sync.c). */
typedef struct {
    size_t off, n; /* floats of the LoRA grad block */
    int ready_tag; /* the backward mark after which they are final (tag l: layer l, n_layers: the head) */
} ct_grad_bucket;

typedef struct {
    bool on;          /* grads are summed over ranks (world > 1, or the 1-rank NCCL check) */
    bool overlap;     /* buckets start during the backward ($CTUNER_DIST_OVERLAP, default 1) */
    double cap_mib;   /* a bucket's least size ($CTUNER_DIST_BUCKET_MB, default 16), whole layers */
    ct_grad_bucket *b; /* (n) from the top of the grad block (the head, the last layer) down */
    int n, next;      /* next: the first bucket of this step not yet started */
    bool noted;       /* the "gradient all-reduce ..." line printed */
    int64_t steps, early; /* steps summed; buckets started during a backward */
    double wait_s;    /* time from the end of the backward to the end of the sums */
} ct_grad_sync;

typedef struct {
    const ct_train_options *opt;
    const ct_run_config *cfg;
    FILE *out;                /* NULL when quiet */
    char *config_text;        /* resolved YAML (owned) */
    char work_dir[CT_PATH_MAX];

    ct_hf_config hf;          /* the model's config.json, read before anything is allocated */
    ct_model *model;
    ct_lora *lora;            /* owned by the model */
    ct_tokenizer *tok;
    const ct_template *tmpl;
    ct_dataset ds;
    ct_loader loader;         /* the batches trained on */
    ct_loader peek;           /* the same order, read ahead to count a window's tokens */
    ct_batch peek_batch;
    ct_input_stage stage;     /* the batches trained on, read and uploaded one iteration ahead */
    ct_tape tape;             /* its arenas reserved as the plan says */
    ct_mem_plan plan;         /* the memory plan of this run (what `ctuner plan` prints) */
    ct_adamw *adamw;
    ct_tensor **params;       /* (n_params) LoRA A/B in PEFT order, borrowed from the LoRA */
    size_t n_params;
    ct_scheduler sched;

    int64_t iters_per_epoch, total_iters, total_steps;
    int64_t iter;             /* iterations done */
    int64_t step;             /* optimizer steps done */
    ct_ds_cursor window_cursor; /* where the current window's first batch comes from */
    int64_t window_targets;   /* trained tokens of the whole current window */
    int64_t epoch;            /* epoch of the last batch */
    double last_loss, last_lr, last_grad_norm;
    int64_t last_saved_iter;  /* -1: none yet by this process */
    int skipped_damaged;      /* damaged checkpoints --resume auto passed over */
    ct_train_log log;
    ct_train_result *res;
    /* data-parallel (train_dist.c); world 1: the single-process communicator */
    ct_dist *dist;            /* borrowed: opt->dist or ct_dist_single() */
    int rank, world;
    int64_t vtotal;           /* micro-batches of the whole run in the single-process order */
    float *dist_host;         /* (ct_lora_numel) host staging for the collectives (world > 1) */
    void *dist_records;       /* (world) the per-iteration exchange */
    int stop_all;             /* the stop request agreed on by the ranks (signal, -1, 0: none) */
    int bad_rank;             /* the first rank whose loss was not finite (-1: none) */
    ct_grad_sync gsync;       /* the per-step gradient all-reduce (train_grad_sync.c) */
    int64_t log_cut;          /* > 0: metrics.jsonl is cut after this iteration, not t->iter (a checkpoint
                                 of another world size counts its iterations in its own units) */
} ct_trainer;

/* ---- train_limits.c: resource limits, checked before allocating ---- */
/* Reads t->hf; max_length against max_position_embeddings (CT_EINPUT). */
int ct_trainer_check_model_limits(ct_trainer *t);
/* After the data: rows cut to the longest row's length when below max_length. */
void ct_trainer_trim_rows(ct_trainer *t);
/* batch_size larger than the data's rows is CT_EINPUT. */
int ct_trainer_check_batch(const ct_trainer *t);
/* The memory plan against be->mem_available (CT_EINPUT saying how much the
 * run needs and how much there is; no check when unknown). */
int ct_trainer_check_memory(ct_trainer *t, const ct_backend *be);

/* ---- train_setup.c ---- */
/* Model (quantized per the config), LoRA (fresh from seed, or lora.init_from),
 * dataset (cached under work_dir/dataset_cache, or $CTUNER_DATASET_CACHE),
 * loaders, tape, optimizer and schedule. */
int ct_trainer_open(ct_trainer *t, const ct_train_options *opt, ct_train_result *res);
void ct_trainer_close(ct_trainer *t);
/* Trained tokens of the window of `n` iterations starting at cursor c. */
int ct_trainer_count_window(ct_trainer *t, ct_ds_cursor c, int64_t n, int64_t *targets);

/* ---- train_dist.c (trainer/train_dist.c says how the ranks share the work) ---- */
/* After make_loop_state: the virtual totals and schedule for world > 1. */
int ct_train_dist_open(ct_trainer *t);
/* Every rank waits (at most $CTUNER_DIST_DATA_TIMEOUT s, default 3600) for
 * rank 0's dataset preparation. */
int ct_train_dist_data_wait(ct_trainer *t);
void ct_train_dist_close(ct_trainer *t);
/* Micro-batches of the single-process order done after `iter` global iterations. */
int64_t ct_train_vpos(const ct_trainer *t, int64_t iter);
/* The loader cursor of micro-batch v of the single-process order. */
ct_ds_cursor ct_train_cursor_at(const ct_trainer *t, int64_t v);
/* Trained tokens of all ranks' micro-batches of the n global iterations from w0. */
int ct_train_window_targets(ct_trainer *t, int64_t w0, int64_t n, int64_t *targets);
/* Exchanges the iteration's NLL sum, trained and real tokens and stop request
 * (this rank's in, the sums over the ranks out; t->stop_all, t->bad_rank set). */
int ct_train_dist_iter(ct_trainer *t, double *nll, int64_t *targets, int64_t *tokens, int stop);
/* Sums the LoRA grads over the ranks (in place, every rank gets the sum): a
 * window's partial gradient, before a checkpoint inside it. */
int ct_train_dist_reduce_grads(ct_trainer *t);
/* CT_ERUNTIME naming the rank whose LoRA weights differ from rank 0's. */
int ct_train_dist_check_weights(ct_trainer *t, const char *when);
/* Rank 0's checkpoint path and found flag to every rank. */
int ct_train_dist_share_path(ct_trainer *t, char *path, size_t cap, bool *found);

/* ---- train_grad_sync.c ---- */
/* After ct_train_dist_open: the buckets (CT_EINPUT for a bad
 * CTUNER_DIST_BUCKET_MB / CTUNER_DIST_OVERLAP). Off for one plain process. */
int ct_grad_sync_open(ct_trainer *t);
/* Before the micro-batch that closes a window: starts NCCL the first time
 * (every rank) and hooks the tape's backward marks to start the buckets. */
int ct_grad_sync_arm(ct_trainer *t);
/* After that micro-batch (also when this rank trained nothing in it): starts
 * the buckets not started yet and waits for all (every rank, before any
 * other collective). */
int ct_grad_sync_finish(ct_trainer *t);
/* One line on how the sums went ("" when off). */
void ct_grad_sync_summary(const ct_trainer *t, char *buf, size_t cap);
void ct_grad_sync_close(ct_trainer *t);

/* ---- train_state.c ---- */
/* Writes work_dir/iter_<iter>.h5 (+ iter_<iter>_adapter/) and applies
 * save_total_limit; mid_window also stores the partial gradient. */
int ct_train_state_save(ct_trainer *t, bool mid_window);
/* Restores a checkpoint written by ct_train_state_save into an opened trainer. */
int ct_train_state_load(ct_trainer *t, const char *path);

/* ---- train_log.c ---- */
/* Opens metrics.jsonl; a resumed run keeps only the entries up to t->iter. */
int ct_train_log_open(ct_trainer *t);
/* Accounts one finished iteration; prints/writes a line when it is due. */
int ct_train_log_iter(ct_trainer *t, double nll, int64_t targets, int64_t tokens, double secs);
/* A message on its own line (ends a live line first). */
void ct_train_log_note(ct_trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes work_dir/loss_curve.svg from the logged losses. */
int ct_train_log_plot(ct_trainer *t);
/* Appends {"iter", "eval_loss", "eval_tokens"} to metrics.jsonl. */
int ct_train_log_eval_loss(ct_trainer *t, double loss, int64_t tokens);
void ct_train_log_close(ct_trainer *t);
/* Peak resident memory of the process in MiB (getrusage). */
double ct_train_peak_rss_mb(void);
/* The backend allocator's counts (zeros when it does not count). */
ct_mem_usage ct_train_device_mem(const ct_trainer *t);

/* ---- eval_hook.c ---- */
/* Greedy answers to evaluation_inputs (template + SYSTEM), printed and
 * appended to work_dir/eval_log.jsonl; `when` is "before", "after" or "". */
int ct_eval_hook_chat(ct_trainer *t, const char *when);
/* Mean NLL of the current model on a data file (as `ctuner eval`). */
int ct_eval_hook_loss(ct_trainer *t, const char *path, double *loss, int64_t *tokens);

#endif
