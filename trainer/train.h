/* The training run (`ctuner train`): a resolved run config in, LoRA adapter,
 * checkpoints and logs out (docs/TRAINING.md describes the run for users).
 *
 * Units as in config.h: an iteration is one micro-batch of batch_size packed
 * rows; an optimizer step closes every accumulative_counts iterations and at
 * the last one. Each iteration's loss is its NLL sum divided by the number of
 * trained tokens of the whole accumulation window (counted before the window
 * runs), so the accumulated gradient is that of the window's token mean,
 * whatever the split into micro-batches.
 *
 * Determinism: every random number is counter-based: the data order is a
 * function of (seed, epoch), the LoRA init of seed, dropout masks of (seed,
 * iteration, linear). With the CPU backend the same config and thread count
 * give bit-identical losses and adapters, and a run resumed from any of its
 * checkpoints continues bit-identically (train_state.c stores what that needs).
 *
 * Stopping: ct_train_request_stop (async-signal-safe, for SIGINT/SIGTERM
 * handlers) makes the run finish the iteration in progress, save a checkpoint
 * (in the middle of an accumulation window too: the partial gradient is saved
 * with it) and return CT_OK with result->stopped set.
 *
 * Ownership: options and the config are borrowed for the call; the result is
 * filled by value. Output goes to opt->out (progress, evaluation answers). */
#ifndef CT_TRAIN_H
#define CT_TRAIN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/backend.h"
#include "trainer/config/config.h"
#include "trainer/io/fsutil.h"

typedef struct {
    const ct_run_config *cfg; /* resolved (defaults filled, overrides applied) */
    const char *config_text;  /* its YAML as saved in work_dir/config.yaml; NULL: written from cfg */
    const char *resume;       /* NULL: fresh; "auto": the newest checkpoint of work_dir (fresh when
                                 there is none); else the path of an iter_N.h5 */
    const char *eval_data;    /* NULL, or a data file whose loss under the final model (dropout
                                 off, samples one by one as `ctuner eval`) is reported at the end */
    FILE *out;                /* progress and evaluation answers; NULL = stdout */
    bool live;                /* a TTY: one \r-updated progress line instead of a line per log */
    bool quiet;               /* no progress or answers at all (tests) */
    int64_t stop_after;       /* > 0: stop (as on a signal) once this many iterations are done */
    /* Called after every iteration with its 0-based number and its loss (NLL
     * mean over the iteration's trained tokens); NULL: none. */
    void (*on_iter)(void *ctx, int64_t iter, double loss);
    void *cb_ctx;
    /* The backend to train on; NULL: the config's device (tests pass the
     * guarded backend here). */
    const ct_backend *backend;
    /* The communicator of a data-parallel run (trainer/dist/dist.h; borrowed);
     * NULL: one process. */
    struct ct_dist *dist;
} ct_train_options;

typedef struct {
    int64_t iters_done;       /* iterations done when the run returned */
    int64_t total_iters;
    int64_t steps_done;       /* optimizer steps */
    bool stopped;             /* stopped on request, with a checkpoint saved */
    int stop_signal;          /* the signal number given to ct_train_request_stop (0: none) */
    double last_loss;         /* loss of the last iteration */
    double eval_loss;         /* loss on eval_data (NaN when none) */
    int64_t eval_tokens;      /* scored tokens of eval_data */
    double tokens_per_s;      /* real (non-padding) tokens per second of this process's iterations */
    double peak_rss_mb;       /* peak resident memory of the process */
    double dev_peak_mb;       /* peak of the backend allocator (device memory on a GPU) */
    double plan_mb;           /* the memory plan's prediction of that peak (ctuner plan's allocator total) */
    double weights_outside_mb; /* frozen weights not in the allocator (the CPU's mapped/quantized
                                * weights; 0 once placed on a device): the plan counts them */
    double arena_used_mb;     /* the step arenas' high-water marks (main + scratch) ... */
    double arena_reserved_mb; /* ... and what they hold: the plan's sizes, more if it fell short */
    char checkpoint[CT_PATH_MAX]; /* the last checkpoint written ("" when none) */
} ct_train_result;

/* Runs (or resumes) the training of opt->cfg. CT_EINPUT for bad settings,
 * data, model or checkpoint (naming the file), CT_ERUNTIME for failures while
 * running, including a non-finite loss or gradient (the message names the
 * iteration; the last good checkpoint is left as it was). */
int ct_train(const ct_train_options *opt, ct_train_result *res);

/* Asks the running ct_train to stop after the iteration in progress.
 * Async-signal-safe; signo is reported in ct_train_result.stop_signal. */
void ct_train_request_stop(int signo);
/* Clears a request (a new run in the same process). */
void ct_train_clear_stop(void);

#endif
