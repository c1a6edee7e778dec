/* mmengine-style learning-rate phases resolved to a pure function of the
 * iteration (semantics and boundary rules in scheduler.h). */
#include "scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "autograd/ct_error.h"

static const char *kind_name(ct_sched_kind k) {
    switch (k) {
    case CT_SCHED_LINEAR: return "LinearLR";
    case CT_SCHED_COSINE: return "CosineAnnealingLR";
    case CT_SCHED_CONSTANT: return "ConstantLR";
    }
    return "?";
}

ct_sched_spec ct_sched_spec_default(ct_sched_kind kind, double begin, double end, bool by_epoch) {
    return (ct_sched_spec){.kind = kind, .begin = begin, .end = end, .by_epoch = by_epoch,
                           .convert_to_iter_based = false, .start_factor = 1.0 / 3,
                           .end_factor = 1.0, .eta_min = 0.0, .t_max = 0.0, .factor = 1.0 / 3};
}

int64_t ct_sched_epoch_to_iter(double epochs, int64_t iters_per_epoch) {
    return (int64_t)(epochs * (double)iters_per_epoch); /* C's cast truncates like int() */
}

static bool is_inf_end(double end) { return end >= CT_SCHED_INF; }

/* Iterations covered by [begin, end) steps of `period` iterations (saturating). */
static int64_t to_iters(int64_t steps, int64_t period) {
    if (steps == INT64_MAX) return INT64_MAX;
    return steps > INT64_MAX / period ? INT64_MAX : steps * period;
}

/* The phase's value at its step k (0 <= k < end - begin) from `enter`. */
static double phase_value(const ct_sched_span *p, int64_t k) {
    int64_t last = p->end == INT64_MAX ? INT64_MAX : p->end - p->begin - 1; /* K */
    switch (p->kind) {
    case CT_SCHED_LINEAR: {
        if (last <= 0) return p->enter * p->start_factor;
        double frac = (double)(k < last ? k : last) / (double)last;
        return p->enter * (p->start_factor + (p->end_factor - p->start_factor) * frac);
    }
    case CT_SCHED_COSINE:
        return p->eta_min + (p->enter - p->eta_min) *
                                (1.0 + cos(M_PI * (double)k / p->t_max)) / 2.0;
    case CT_SCHED_CONSTANT:
        return (k == 0 || k < last) ? p->enter * p->factor : p->enter;
    }
    return p->enter;
}

static int check_range01(double v, const char *what, const char *where, int i, ct_sched_kind k) {
    if (!(v >= 0.0 && v <= 1.0))
        return ct_errorf(CT_EINPUT, "%s[%d] (%s): %s = %g must be between 0 and 1", where, i,
                         kind_name(k), what, v);
    return CT_OK;
}

/* Spec -> phase in steps; checks values as mmengine's constructors do. */
static int resolve(const ct_sched_spec *sp, int i, int64_t ipe, const char *where,
                   ct_sched_span *ph) {
    ct_sched_kind k = sp->kind;
    if (k != CT_SCHED_LINEAR && k != CT_SCHED_COSINE && k != CT_SCHED_CONSTANT)
        return ct_errorf(CT_EINPUT, "%s[%d]: unknown scheduler kind %d", where, i, (int)k);
    if (!(sp->begin >= 0.0 && isfinite(sp->begin)) || !(sp->end > sp->begin) || isnan(sp->end))
        return ct_errorf(CT_EINPUT, "%s[%d] (%s): need 0 <= begin < end, got begin %g, end %g",
                         where, i, kind_name(k), sp->begin, sp->end);
    if (sp->by_epoch && ipe <= 0)
        return ct_errorf(CT_EINPUT, "%s[%d] (%s): by_epoch needs the number of iterations per "
                         "epoch (got %lld)", where, i, kind_name(k), (long long)ipe);
    bool convert = sp->by_epoch && sp->convert_to_iter_based;
    double t_max = sp->t_max;
    if (convert) {
        ph->begin = ct_sched_epoch_to_iter(sp->begin, ipe);
        ph->end = is_inf_end(sp->end) ? INT64_MAX : ct_sched_epoch_to_iter(sp->end, ipe);
        if (t_max > 0.0) t_max *= (double)ipe;
        ph->period = 1;
    } else {
        /* Steps are whole iterations or whole epochs. */
        if (sp->begin != floor(sp->begin) || (!is_inf_end(sp->end) && sp->end != floor(sp->end)))
            return ct_errorf(CT_EINPUT, "%s[%d] (%s): begin %g / end %g must be whole %s (or set "
                             "convert_to_iter_based)", where, i, kind_name(k), sp->begin, sp->end,
                             sp->by_epoch ? "epochs" : "iterations");
        ph->begin = (int64_t)sp->begin;
        ph->end = is_inf_end(sp->end) ? INT64_MAX : (int64_t)sp->end;
        ph->period = sp->by_epoch ? ipe : 1;
    }
    if (ph->end <= ph->begin)
        return ct_errorf(CT_EINPUT, "%s[%d] (%s): end must be larger than begin, got begin %lld, "
                         "end %lld iterations after conversion (%lld per epoch): the phase is "
                         "shorter than one iteration", where, i, kind_name(k),
                         (long long)ph->begin, (long long)ph->end, (long long)ipe);
    ph->kind = k;
    ph->start_factor = sp->start_factor;
    ph->end_factor = sp->end_factor;
    ph->eta_min = sp->eta_min;
    ph->factor = sp->factor;
    switch (k) {
    case CT_SCHED_LINEAR:
        CT_TRY(check_range01(sp->start_factor, "start_factor", where, i, k));
        CT_TRY(check_range01(sp->end_factor, "end_factor", where, i, k));
        break;
    case CT_SCHED_CONSTANT:
        CT_TRY(check_range01(sp->factor, "factor", where, i, k));
        break;
    case CT_SCHED_COSINE:
        if (!isfinite(sp->eta_min))
            return ct_errorf(CT_EINPUT, "%s[%d] (%s): eta_min must be finite", where, i,
                             kind_name(k));
        if (t_max == 0.0) {
            if (ph->end == INT64_MAX)
                return ct_errorf(CT_EINPUT, "%s[%d] (%s): an open-ended phase needs T_max", where,
                                 i, kind_name(k));
            t_max = (double)(ph->end - ph->begin);
        }
        if (!(t_max > 0.0 && isfinite(t_max)))
            return ct_errorf(CT_EINPUT, "%s[%d] (%s): T_max = %g must be > 0", where, i,
                             kind_name(k), sp->t_max);
        break;
    }
    ph->t_max = t_max;
    return CT_OK;
}

static int cmp_phase(const void *a, const void *b) {
    const ct_sched_span *x = a, *y = b;
    int64_t bx = to_iters(x->begin, x->period), by = to_iters(y->begin, y->period);
    return (bx > by) - (bx < by);
}

int ct_sched_init(ct_scheduler *s, double base_lr, const ct_sched_spec *specs, int n,
                  int64_t iters_per_epoch, const char *where) {
    s->n = 0;
    s->base_lr = base_lr;
    if (!(base_lr >= 0.0 && isfinite(base_lr)))
        return ct_errorf(CT_EINPUT, "%s: learning rate %g must be finite and >= 0", where, base_lr);
    if (n < 0 || n > CT_SCHED_MAX_PHASES)
        return ct_errorf(CT_EINPUT, "%s: %d schedulers, at most %d are supported", where, n,
                         CT_SCHED_MAX_PHASES);
    for (int i = 0; i < n; i++) CT_TRY(resolve(&specs[i], i, iters_per_epoch, where, &s->phase[i]));
    qsort(s->phase, (size_t)n, sizeof s->phase[0], cmp_phase);
    for (int i = 1; i < n; i++) {
        const ct_sched_span *a = &s->phase[i - 1], *b = &s->phase[i];
        int64_t a_end = to_iters(a->end, a->period), b_begin = to_iters(b->begin, b->period);
        if (b_begin < a_end) {
            char end_s[32];
            if (a_end == INT64_MAX) snprintf(end_s, sizeof end_s, "INF");
            else snprintf(end_s, sizeof end_s, "%lld", (long long)a_end);
            return ct_errorf(CT_EINPUT, "%s: %s over iterations [%lld, %s) overlaps %s starting at "
                             "%lld; ctuner applies one scheduler at a time: make the ranges "
                             "consecutive", where, kind_name(a->kind),
                             (long long)to_iters(a->begin, a->period), end_s, kind_name(b->kind),
                             (long long)b_begin);
        }
    }
    /* Chain: each phase starts from what the previous one left. */
    double lr = base_lr;
    for (int i = 0; i < n; i++) {
        ct_sched_span *p = &s->phase[i];
        p->enter = lr;
        p->held = p->end == INT64_MAX ? lr : phase_value(p, p->end - p->begin - 1);
        lr = p->held;
    }
    s->n = n;
    return CT_OK;
}

int ct_sched_init_xtuner(ct_scheduler *s, double base_lr, double warmup_ratio, double max_epochs,
                         double eta_min, int64_t iters_per_epoch, const char *where) {
    if (!(warmup_ratio >= 0.0 && warmup_ratio < 1.0))
        return ct_errorf(CT_EINPUT, "%s: warmup_ratio = %g must be in [0, 1)", where, warmup_ratio);
    if (!(max_epochs > 0.0 && isfinite(max_epochs)))
        return ct_errorf(CT_EINPUT, "%s: max_epochs = %g must be > 0", where, max_epochs);
    double warm = warmup_ratio * max_epochs; /* epochs, as XTuner's config computes it */
    ct_sched_spec sp[2];
    int n = 0;
    if (ct_sched_epoch_to_iter(warm, iters_per_epoch) > 0) {
        sp[n] = ct_sched_spec_default(CT_SCHED_LINEAR, 0.0, warm, true);
        sp[n].start_factor = 1e-5;
        sp[n].convert_to_iter_based = true;
        n++;
    }
    sp[n] = ct_sched_spec_default(CT_SCHED_COSINE, warm, max_epochs, true);
    sp[n].eta_min = eta_min;
    sp[n].convert_to_iter_based = true;
    n++;
    return ct_sched_init(s, base_lr, sp, n, iters_per_epoch, where);
}

double ct_sched_lr_at(const ct_scheduler *s, int64_t iter) {
    if (iter < 0) iter = 0;
    /* The last phase starting at or before iter decides. */
    const ct_sched_span *p = NULL;
    for (int i = 0; i < s->n; i++) {
        if (to_iters(s->phase[i].begin, s->phase[i].period) <= iter) p = &s->phase[i];
        else break;
    }
    if (!p) return s->base_lr;
    int64_t step = iter / p->period;
    if (step >= p->end) return p->held;
    return phase_value(p, step - p->begin);
}
