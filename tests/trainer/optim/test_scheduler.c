/* LR schedules vs the closed-form formulas and vs a step-by-step simulation of
 * mmengine's chained schedulers (written here from mmengine's _get_value
 * rules, independent of scheduler.c). */
#include <math.h>
#include <string.h>

#include "tests/testutil.h"
#include "trainer/optim/scheduler.h"

static void check_lr(const ct_scheduler *s, int64_t it, double want, const char *what) {
    double got = ct_sched_lr_at(s, it);
    CHECK(fabs(got - want) <= 1e-12 * fabs(want) + 1e-300,
          "%s: iteration %lld: lr %.17g, want %.17g", what, (long long)it, got, want);
}

/* ---- mmengine's chained schedulers, simulated ----
 * Each scheduler: begin/end in its own steps (iterations, or epochs with
 * period = iters per epoch), last_step from -1; the optimizer's lr is one
 * double. Constructors run step() once (global step 0), then step() follows
 * every iteration (epoch-based ones: every `period` iterations). */
typedef struct {
    ct_sched_kind kind;
    int64_t begin, end, period;
    double a, b;   /* linear: start, end factor; cosine: eta_min, T_max; constant: factor */
    int64_t last_step, global_step;
} sim_sched;

static void sim_step(sim_sched *s, double *lr) {
    s->global_step++;
    if (!(s->begin <= s->global_step && s->global_step < s->end)) return;
    int64_t k = ++s->last_step;
    int64_t total = s->end - s->begin - 1;
    switch (s->kind) {
    case CT_SCHED_LINEAR:
        if (k == 0) *lr *= s->a;
        else *lr *= 1.0 + (s->b - s->a) / (total * s->a + (k - 1) * (s->b - s->a));
        break;
    case CT_SCHED_COSINE:
        if (k != 0)
            *lr = (1 + cos(M_PI * k / s->b)) / (1 + cos(M_PI * (k - 1) / s->b)) * (*lr - s->a) +
                  s->a;
        break;
    case CT_SCHED_CONSTANT:
        if (k == 0) *lr *= s->a;
        else if (k == total) *lr *= 1.0 / s->a;
        break;
    }
}

/* lr used by iterations 0..n-1 under the simulated list. */
static void simulate(sim_sched *list, int ns, double base, double *out, int64_t n) {
    double lr = base;
    for (int j = 0; j < ns; j++) {
        list[j].last_step = -1;
        list[j].global_step = -1;
        sim_step(&list[j], &lr);
    }
    for (int64_t i = 0; i < n; i++) {
        out[i] = lr;
        for (int j = 0; j < ns; j++)
            if ((i + 1) % list[j].period == 0) sim_step(&list[j], &lr);
    }
}

static void check_vs_sim(const ct_scheduler *s, sim_sched *list, int ns, int64_t n,
                         const char *what) {
    static double want[4096];
    simulate(list, ns, s->base_lr, want, n);
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double got = ct_sched_lr_at(s, i);
        if (!(fabs(got - want[i]) <= 1e-9 * fabs(want[i]) + 1e-18)) {
            if (bad++ < 5)
                fprintf(stderr, "%s: iteration %lld: %.17g vs mmengine %.17g\n", what, (long long)i,
                        got, want[i]);
        }
    }
    CHECK(bad == 0, "%s: %d iterations differ from the mmengine simulation", what, bad);
}

static void test_xtuner_default(void) {
    const double lr = 2e-4;
    ct_scheduler s;
    /* warmup_ratio 0.03 of 3 epochs, 100 iterations per epoch: the warm-up
     * ends at int(0.09 * 100) = 9, cosine runs over [9, 300), T_max 291. */
    CHECK_OK(ct_sched_init_xtuner(&s, lr, 0.03, 3, 0.0, 100, "cfg"));
    CHECK(s.n == 2 && s.phase[0].end == 9 && s.phase[1].begin == 9 && s.phase[1].end == 300,
          "phases n=%d", s.n);
    const double sf = 1e-5;
    check_lr(&s, 0, lr * sf, "xtuner");
    check_lr(&s, 1, lr * (sf + (1 - sf) * 1.0 / 8), "xtuner");
    check_lr(&s, 4, lr * (sf + (1 - sf) * 4.0 / 8), "xtuner");
    check_lr(&s, 8, lr, "xtuner");               /* last warm-up iteration: factor 1 */
    check_lr(&s, 9, lr, "xtuner");               /* cosine k = 0 */
    check_lr(&s, 10, lr * (1 + cos(M_PI * 1 / 291)) / 2, "xtuner");
    check_lr(&s, 150, lr * (1 + cos(M_PI * 141 / 291)) / 2, "xtuner");
    check_lr(&s, 299, lr * (1 + cos(M_PI * 290 / 291)) / 2, "xtuner");
    check_lr(&s, 300, lr * (1 + cos(M_PI * 290 / 291)) / 2, "xtuner"); /* held after the end */
    check_lr(&s, 5000, lr * (1 + cos(M_PI * 290 / 291)) / 2, "xtuner");
    sim_sched sim[2] = {{CT_SCHED_LINEAR, 0, 9, 1, sf, 1.0, 0, 0},
                        {CT_SCHED_COSINE, 9, 300, 1, 0.0, 291, 0, 0}};
    check_vs_sim(&s, sim, 2, 320, "xtuner vs mmengine");

    /* eta_min > 0 and an odd epoch length: int(0.09 * 37) = 3. */
    CHECK_OK(ct_sched_init_xtuner(&s, 1e-3, 0.03, 3, 1e-5, 37, "cfg"));
    sim_sched sim2[2] = {{CT_SCHED_LINEAR, 0, 3, 1, sf, 1.0, 0, 0},
                         {CT_SCHED_COSINE, 3, 111, 1, 1e-5, 108, 0, 0}};
    check_vs_sim(&s, sim2, 2, 130, "xtuner eta_min vs mmengine");
    for (int64_t it = 3; it < 111; it += 7)
        check_lr(&s, it, 1e-5 + (1e-3 - 1e-5) * (1 + cos(M_PI * (double)(it - 3) / 108)) / 2,
                 "cosine");

    /* No warm-up: the cosine alone, from the base lr. */
    CHECK_OK(ct_sched_init_xtuner(&s, lr, 0.0, 1, 0.0, 50, "cfg"));
    CHECK(s.n == 1, "warmup 0 keeps %d phases", s.n);
    check_lr(&s, 0, lr, "no warmup");
    check_lr(&s, 25, lr * (1 + cos(M_PI * 25 / 50)) / 2, "no warmup");
}

static void test_constant(void) {
    ct_scheduler s;
    CHECK_OK(ct_sched_init(&s, 3e-4, NULL, 0, 0, "cfg"));
    for (int64_t it = 0; it < 1000; it += 97) check_lr(&s, it, 3e-4, "plain constant");

    /* ConstantLR(factor 0.5) over iterations [0, 10): 0.5 until 8, restored at 9. */
    ct_sched_spec sp = ct_sched_spec_default(CT_SCHED_CONSTANT, 0, 10, false);
    sp.factor = 0.5;
    CHECK_OK(ct_sched_init(&s, 1.0, &sp, 1, 0, "cfg"));
    check_lr(&s, 0, 0.5, "constant");
    check_lr(&s, 8, 0.5, "constant");
    check_lr(&s, 9, 1.0, "constant");
    check_lr(&s, 50, 1.0, "constant");
    sim_sched sim = {CT_SCHED_CONSTANT, 0, 10, 1, 0.5, 0, 0, 0};
    check_vs_sim(&s, &sim, 1, 40, "constant vs mmengine");

    /* Then a cosine from iteration 10, and a linear warm-up starting later. */
    ct_sched_spec two[3] = {ct_sched_spec_default(CT_SCHED_LINEAR, 5, 20, false),
                            ct_sched_spec_default(CT_SCHED_CONSTANT, 20, 30, false),
                            ct_sched_spec_default(CT_SCHED_COSINE, 30, 90, false)};
    two[0].start_factor = 0.1;
    two[0].end_factor = 0.8; /* leaves 0.8 * base: the next phases start from there */
    two[1].factor = 0.25;
    two[2].eta_min = 1e-6;
    CHECK_OK(ct_sched_init(&s, 1e-3, two, 3, 0, "cfg"));
    check_lr(&s, 0, 1e-3, "before the first phase");
    check_lr(&s, 4, 1e-3, "before the first phase");
    check_lr(&s, 5, 1e-4, "linear k=0");
    check_lr(&s, 19, 8e-4, "linear end");
    check_lr(&s, 20, 2e-4, "constant k=0 from 0.8");
    check_lr(&s, 29, 8e-4, "constant restored");
    check_lr(&s, 30, 8e-4, "cosine from the entering lr");
    sim_sched sim3[3] = {{CT_SCHED_LINEAR, 5, 20, 1, 0.1, 0.8, 0, 0},
                         {CT_SCHED_CONSTANT, 20, 30, 1, 0.25, 0, 0, 0},
                         {CT_SCHED_COSINE, 30, 90, 1, 1e-6, 60, 0, 0}};
    check_vs_sim(&s, sim3, 3, 120, "three phases vs mmengine");
}

static void test_conversion(void) {
    /* int() of the double product, as Python: 0.29 * 100 = 28.999999999999996. */
    CHECK(ct_sched_epoch_to_iter(0.03 * 3, 100) == 9, "0.09 epochs");
    CHECK(ct_sched_epoch_to_iter(0.29, 100) == 28, "0.29 epochs");
    CHECK(ct_sched_epoch_to_iter(0.57, 100) == 56, "0.57 epochs");
    CHECK(ct_sched_epoch_to_iter(0.1 * 3, 10) == 3, "0.3 epochs");
    CHECK(ct_sched_epoch_to_iter(3, 1234) == 3702, "3 epochs");
    CHECK(ct_sched_epoch_to_iter(0, 1234) == 0, "0 epochs");

    /* Converted cosine with T_max given in epochs: T_max * iters_per_epoch. */
    ct_sched_spec sp = ct_sched_spec_default(CT_SCHED_COSINE, 0.5, 2, true);
    sp.convert_to_iter_based = true;
    sp.t_max = 3; /* 30 iterations, longer than the range [5, 20) */
    ct_scheduler s;
    CHECK_OK(ct_sched_init(&s, 1.0, &sp, 1, 10, "cfg"));
    CHECK(s.phase[0].begin == 5 && s.phase[0].end == 20 && s.phase[0].t_max == 30.0, "converted");
    check_lr(&s, 12, (1 + cos(M_PI * 7 / 30)) / 2, "converted T_max");
    check_lr(&s, 25, (1 + cos(M_PI * 14 / 30)) / 2, "held after a converted phase");

    /* Epoch-based without conversion: one value per epoch. LinearLR over
     * epochs [0, 3) with 10 iterations per epoch: K = 2. */
    ct_sched_spec lin = ct_sched_spec_default(CT_SCHED_LINEAR, 0, 3, true);
    lin.start_factor = 0.25;
    CHECK_OK(ct_sched_init(&s, 1.0, &lin, 1, 10, "cfg"));
    check_lr(&s, 0, 0.25, "epoch 0");
    check_lr(&s, 9, 0.25, "epoch 0");
    check_lr(&s, 10, 0.625, "epoch 1");
    check_lr(&s, 29, 1.0, "epoch 2");
    sim_sched sim = {CT_SCHED_LINEAR, 0, 3, 10, 0.25, 1.0, 0, 0};
    check_vs_sim(&s, &sim, 1, 60, "epoch-based vs mmengine");
}

static void test_errors(void) {
    ct_scheduler s;
    ct_sched_spec sp[2] = {ct_sched_spec_default(CT_SCHED_LINEAR, 0, 10, false),
                           ct_sched_spec_default(CT_SCHED_COSINE, 5, 20, false)};
    CHECK(ct_sched_init(&s, 1e-3, sp, 2, 0, "cfg.yaml:param_scheduler") == CT_EINPUT &&
              strstr(ct_last_error(), "overlaps") && strstr(ct_last_error(), "cfg.yaml"),
          "overlap: %s", ct_last_error());
    sp[0].start_factor = 1.5;
    CHECK(ct_sched_init(&s, 1e-3, sp, 1, 0, "cfg") == CT_EINPUT &&
              strstr(ct_last_error(), "start_factor"), "%s", ct_last_error());
    sp[0] = ct_sched_spec_default(CT_SCHED_LINEAR, 0, 0.001, true);
    sp[0].convert_to_iter_based = true; /* converts to [0, 0) */
    CHECK(ct_sched_init(&s, 1e-3, sp, 1, 100, "cfg") == CT_EINPUT &&
              strstr(ct_last_error(), "larger than begin"), "%s", ct_last_error());
    sp[0] = ct_sched_spec_default(CT_SCHED_LINEAR, 0, 2, true);
    CHECK(ct_sched_init(&s, 1e-3, sp, 1, 0, "cfg") == CT_EINPUT, "by_epoch without epoch length");
    sp[0] = ct_sched_spec_default(CT_SCHED_COSINE, 0, CT_SCHED_INF, false);
    CHECK(ct_sched_init(&s, 1e-3, sp, 1, 0, "cfg") == CT_EINPUT, "open cosine without T_max");
    CHECK(ct_sched_init(&s, -1.0, NULL, 0, 0, "cfg") == CT_EINPUT, "negative lr");
    CHECK(ct_sched_init_xtuner(&s, 1e-3, 1.5, 3, 0, 100, "cfg") == CT_EINPUT, "warmup_ratio 1.5");
}

int main(void) {
    test_xtuner_default();
    test_constant();
    test_conversion();
    test_errors();
    return ct_test_finish();
}
