/* Learning-rate schedules as mmengine's param_scheduler list: LinearLR,
 * CosineAnnealingLR and ConstantLR phases over ranges of steps, with
 * by_epoch / convert_to_iter_based handled like mmengine's runner.
 *
 * lr_at(i) is a pure function of the iteration i (the lr used by iteration i,
 * counting from 0), so resuming needs only the iteration count. "Iteration"
 * is whatever unit the trainer steps the schedule in; mmengine (and XTuner)
 * step it once per dataloader iteration, i.e. per micro-batch, and
 * convert_to_iter_based uses iters_per_epoch = the dataloader's length.
 *
 * How mmengine applies the list, and how this matches it:
 * - each scheduler's step() runs after every iteration (epoch-based ones after
 *   every epoch); the value for iteration i is computed at its global step i
 *   (the constructor's step() is step 0), and only when begin <= i < end,
 *   with last_step k = i - begin;
 * - values are chained: a phase starts from the lr it finds, and outside every
 *   phase the lr keeps the last value set. Here each phase uses mmengine's
 *   closed form applied to the lr entering it ("enter": the base lr, or what
 *   the previous phase left at its last step end-1):
 *     LinearLR   enter * (s + (e - s) * min(k, K) / K),  K = end - begin - 1
 *                (K = 0: s), reaching e at the boundary iteration end-1;
 *     Cosine     eta_min + (enter - eta_min) * (1 + cos(pi * k / T_max)) / 2,
 *                T_max = end - begin unless given; k = 0 gives enter;
 *     ConstantLR enter * factor while k < K, enter at k = K (mmengine restores
 *                the lr at the last step, end-1); a one-step phase never
 *                restores (its k = 0 rule wins, as in mmengine);
 *   which equals the chained recursion exactly in real arithmetic. For
 *   XTuner's default the boundary iteration `warmup` (cosine's begin) gets the
 *   full base lr: warm-up ended at factor 1 on iteration warmup-1, and cosine
 *   at k = 0 keeps it;
 * - before the first phase the lr is the base lr; after a phase's end it stays
 *   at that phase's value for end-1 (e.g. cosine's last value is above
 *   eta_min unless T_max < end - begin).
 * Phases must not overlap (mmengine would then multiply both into the same
 * iteration; ctuner refuses that as CT_EINPUT); their list order is free.
 *
 * Epoch -> iteration (convert_to_iter_based, mmengine's build_iter_from_epoch):
 * begin = int(begin * iters_per_epoch), end = int(end * iters_per_epoch)
 * (truncation toward zero of the double product, as Python's int()), an INF
 * end stays INF; a cosine T_max given in epochs becomes T_max * iters_per_epoch
 * unrounded. Epoch-based phases without conversion change the lr once per
 * epoch: iteration i is in epoch i / iters_per_epoch. */
#ifndef CT_SCHEDULER_H
#define CT_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#define CT_SCHED_MAX_PHASES 8
#define CT_SCHED_INF 1e9 /* mmengine's INF = int(1e9): an end at or beyond it is open */

typedef enum { CT_SCHED_LINEAR = 0, CT_SCHED_COSINE, CT_SCHED_CONSTANT } ct_sched_kind;

/* One entry of param_scheduler, as written in the config. */
typedef struct {
    ct_sched_kind kind;
    double begin, end;          /* epochs when by_epoch, else iterations; end <= CT_SCHED_INF */
    bool by_epoch;
    bool convert_to_iter_based; /* with by_epoch: convert begin/end/T_max to iterations */
    double start_factor;        /* LinearLR, [0, 1] (mmengine default 1/3) */
    double end_factor;          /* LinearLR, [0, 1] (default 1) */
    double eta_min;             /* CosineAnnealingLR (default 0) */
    double t_max;               /* CosineAnnealingLR; 0 = end - begin (in the same unit) */
    double factor;              /* ConstantLR, [0, 1] (default 1/3) */
} ct_sched_spec;

/* A spec with mmengine's defaults for `kind` over [begin, end). */
ct_sched_spec ct_sched_spec_default(ct_sched_kind kind, double begin, double end, bool by_epoch);

typedef struct {
    ct_sched_kind kind;
    int64_t begin, end;   /* in steps; end may be INT64_MAX (open) */
    int64_t period;       /* iterations per step: 1, or iters_per_epoch (epoch-stepped) */
    double start_factor, end_factor, eta_min, t_max, factor;
    double enter;         /* lr entering the phase */
    double held;          /* lr after the phase (its value at step end-1) */
} ct_sched_span;

/* A resolved schedule (plain value; no resources). */
typedef struct {
    double base_lr;
    int n;                /* 0: constant base_lr */
    ct_sched_span phase[CT_SCHED_MAX_PHASES]; /* sorted by begin */
} ct_scheduler;

/* int(epochs * iters_per_epoch), as mmengine converts begin/end. */
int64_t ct_sched_epoch_to_iter(double epochs, int64_t iters_per_epoch);

/* Resolves specs[0..n) for a run of iters_per_epoch iterations per epoch
 * (needed, > 0, only when a spec is by_epoch). CT_EINPUT "<where>[i]: ..." for
 * a bad factor, begin >= end after conversion, T_max <= 0, overlapping
 * phases, too many phases, base_lr not finite or negative. n = 0: constant. */
int ct_sched_init(ct_scheduler *s, double base_lr, const ct_sched_spec *specs, int n,
                  int64_t iters_per_epoch, const char *where);

/* XTuner's default: LinearLR(start_factor 1e-5, [0, warmup_ratio*max_epochs))
 * then CosineAnnealingLR(eta_min, [warmup_ratio*max_epochs, max_epochs)), both
 * by_epoch with convert_to_iter_based. A warm-up that converts to 0 iterations
 * (warmup_ratio 0, or too few iterations) is left out instead of failing. */
int ct_sched_init_xtuner(ct_scheduler *s, double base_lr, double warmup_ratio, double max_epochs,
                         double eta_min, int64_t iters_per_epoch, const char *where);

/* The lr for iteration `iter` (>= 0). */
double ct_sched_lr_at(const ct_scheduler *s, int64_t iter);

#endif
