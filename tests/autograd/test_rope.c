/* rope: the CPU kernels and the op against a naive double-precision reference.
 * Forward vs the reference (theta 1e4/1e6, linear and dynamic-NTK scaling,
 * packed wqkv head groups, restarting and large positions), backward vs
 * central differences of the reference, in-place use, accumulation, the tape
 * path, determinism and the errors for bad parameters. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu_kernels.h"
#include "autograd/ops.h"
#include "ref_internlm2.h" /* ct_test_dot_loss: Σ r ⊙ y, to drive ct_backward through ct_rope */
#include "testutil.h"

/* ---- naive reference (double) ---- */

/* The base as HF's InternLM2 rotary classes compute it, written independently
 * of the kernel (exp/log instead of pow). */
static double ref_base(const ct_rope_params *p) {
    if (p->scaling == CT_ROPE_DYNAMIC && p->seq_len > p->max_pos) {
        double d = p->head_dim;
        double r = p->factor * (double)p->seq_len / (double)p->max_pos - (p->factor - 1.0);
        return p->theta * exp(d / (d - 2.0) * log(r));
    }
    return p->theta;
}

/* y = rope(x) on [T, C] with base `base`. */
static void ref_rope(const double *x, const int32_t *pos, int64_t T, int64_t C,
                     const ct_rope_params *p, double base, double *y) {
    int64_t hd = p->head_dim, half = hd / 2, H = C / hd;
    for (int64_t t = 0; t < T; t++) {
        double pt = p->scaling == CT_ROPE_LINEAR ? pos[t] / p->factor : pos[t];
        for (int64_t h = 0; h < H; h++) {
            const double *xh = x + t * C + h * hd;
            double *yh = y + t * C + h * hd;
            if (h % p->group >= p->rotate_per_group) {
                for (int64_t d = 0; d < hd; d++) yh[d] = xh[d];
                continue;
            }
            for (int64_t j = 0; j < half; j++) {
                double a = pt * exp(-(2.0 * j / hd) * log(base));
                yh[j] = xh[j] * cos(a) - xh[j + half] * sin(a);
                yh[j + half] = xh[j + half] * cos(a) + xh[j] * sin(a);
            }
        }
    }
}

typedef struct {
    double *x, *y;
    const double *r;
    const int32_t *pos;
    int64_t T, C;
    const ct_rope_params *p;
} fd_ctx;

static double ref_loss(void *vc) { /* Σ r ⊙ rope(x) */
    fd_ctx *c = vc;
    ref_rope(c->x, c->pos, c->T, c->C, c->p, ref_base(c->p), c->y);
    double s = 0.0;
    for (int64_t i = 0; i < c->T * c->C; i++) s += c->r[i] * c->y[i];
    return s;
}

/* ---- one configuration ---- */

typedef struct {
    const char *name;
    int64_t T, heads;
    ct_rope_params p;
    int32_t pos[16]; /* T <= 16 */
    bool fd;         /* gradient check (small shapes) */
} rope_case;

static void run_case(const rope_case *rc, ct_test_rng *rng) {
    const ct_backend *be = ct_cpu_backend();
    const ct_rope_params *p = &rc->p;
    int64_t T = rc->T, C = rc->heads * p->head_dim, n = T * C;
    int64_t shape[2] = {T, C};
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, shape, false);
    ct_tensor *y = ct_tensor_new(be, CT_F32, 2, shape, false);
    ct_tensor *y2 = ct_tensor_new(be, CT_F32, 2, shape, false);
    ct_tensor *pos = ct_tensor_new(be, CT_I32, 1, &T, false);
    double *xd = malloc((size_t)n * sizeof *xd), *yd = malloc((size_t)n * sizeof *yd);
    double *rd = malloc((size_t)n * sizeof *rd), *g = malloc((size_t)n * sizeof *g);
    float *r = malloc((size_t)n * sizeof *r);
    float *xs = x->data;
    memcpy(pos->data, rc->pos, (size_t)T * sizeof(int32_t));
    ct_test_fill(rng, xs, n, 1.0);
    ct_test_fill(rng, r, n, 1.0);
    for (int64_t i = 0; i < n; i++) xd[i] = xs[i], rd[i] = r[i];

    /* forward vs the reference */
    char what[128];
    CHECK_OK(ct_cpu_rope_fwd(x, pos, p, y));
    ref_rope(xd, rc->pos, T, C, p, ref_base(p), yd);
    snprintf(what, sizeof what, "%s: forward", rc->name);
    ct_check_close(what, y->data, yd, n, 1e-6, 1e-6);

    /* pass-through heads are copied exactly */
    const float *ys = y->data;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < rc->heads; h++)
            if (h % p->group >= p->rotate_per_group) {
                size_t off = (size_t)(t * C + h * p->head_dim);
                CHECK(memcmp(ys + off, xs + off, (size_t)p->head_dim * sizeof(float)) == 0,
                      "%s: pass-through head %lld of token %lld changed", rc->name, (long long)h,
                      (long long)t);
            }

    /* same bits again, and in place */
    CHECK_OK(ct_cpu_rope_fwd(x, pos, p, y2));
    CHECK(memcmp(y->data, y2->data, (size_t)n * sizeof(float)) == 0, "%s: forward not repeatable", rc->name);
    memcpy(y2->data, xs, (size_t)n * sizeof(float));
    CHECK_OK(ct_cpu_rope_fwd(y2, pos, p, y2));
    CHECK(memcmp(y->data, y2->data, (size_t)n * sizeof(float)) == 0, "%s: in-place differs", rc->name);

    if (rc->fd) {
        /* backward accumulates onto what dx holds: start from random values */
        fd_ctx c = {xd, yd, rd, rc->pos, T, C, p};
        ct_fd_grad(ref_loss, &c, xd, n, 1e-3, g);
        float *pre = malloc((size_t)n * sizeof *pre);
        ct_test_fill(rng, pre, n, 1.0);
        memcpy(y2->data, pre, (size_t)n * sizeof(float));
        memcpy(y->data, r, (size_t)n * sizeof(float)); /* dy = r */
        CHECK_OK(ct_cpu_rope_bwd(y, pos, p, y2));
        for (int64_t i = 0; i < n; i++) g[i] += pre[i];
        snprintf(what, sizeof what, "%s: dx (accumulated) vs finite differences", rc->name);
        ct_check_close(what, y2->data, g, n, 1e-5, 1e-5);
        free(pre);
    }
    ct_tensor_free(be, x);
    ct_tensor_free(be, y);
    ct_tensor_free(be, y2);
    ct_tensor_free(be, pos);
    free(xd), free(yd), free(rd), free(g), free(r);
}

static ct_rope_params plain(int hd, int group, int rot, double theta) {
    ct_rope_params p = {.head_dim = hd, .group = group, .rotate_per_group = rot, .theta = theta,
                        .scaling = CT_ROPE_NONE, .factor = 1.0};
    return p;
}

static void test_cases(void) {
    ct_test_rng rng = {42};
    rope_case cases[] = {
        {"plain hd8 theta1e4", 7, 3, plain(8, 1, 1, 1e4), {0, 1, 2, 3, 4, 5, 6}, true},
        {"plain hd16 theta1e6 packed positions", 13, 2, plain(16, 1, 1, 1e6),
         {0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4}, true},
        /* InternLM2 wqkv, G=2: groups of q,q,k,v; v passes through */
        {"wqkv G=2", 5, 8, plain(8, 4, 3, 1e6), {0, 1, 2, 0, 1}, true},
        /* G=3, one KV head, head_dim 16 */
        {"wqkv G=3", 4, 5, plain(16, 5, 4, 1e4), {3, 4, 5, 6}, true},
        {"single token", 1, 3, plain(8, 3, 2, 1e4), {9}, true},
        {"linear x4", 6, 2, {.head_dim = 8, .group = 1, .rotate_per_group = 1, .theta = 1e4,
                             .scaling = CT_ROPE_LINEAR, .factor = 4.0}, {0, 1, 2, 3, 100, 1001}, true},
        {"dynamic below max_pos", 5, 2, {.head_dim = 8, .group = 1, .rotate_per_group = 1,
                                         .theta = 1e4, .scaling = CT_ROPE_DYNAMIC, .factor = 2.0,
                                         .max_pos = 64, .seq_len = 64}, {0, 7, 20, 40, 63}, true},
        {"dynamic above max_pos", 5, 4, {.head_dim = 16, .group = 4, .rotate_per_group = 3,
                                         .theta = 1e6, .scaling = CT_ROPE_DYNAMIC, .factor = 3.0,
                                         .max_pos = 32, .seq_len = 100}, {0, 33, 50, 80, 99}, true},
        /* angle accuracy: an fp32 angle at 30000 is ~2e-3 rad off */
        {"large positions theta1e6", 4, 2, plain(128, 1, 1, 1e6), {30000, 30001, 65535, 123457}, false},
        {"large positions theta1e4", 3, 1, plain(64, 1, 1, 1e4), {29999, 30000, 1000000}, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(&cases[i], &rng);
}

/* Dynamic NTK base against a value computed by hand: theta 1e4, factor 2,
 * len 4096, max_pos 2048, hd 8: base = 1e4 * 3^(4/3) = 43267.487109222246;
 * pair j = 1 has inv_freq = base^(-1/4) = 0.06933612743506347. */
static void test_dynamic_base(void) {
    const ct_backend *be = ct_cpu_backend();
    ct_rope_params p = {.head_dim = 8, .group = 1, .rotate_per_group = 1, .theta = 1e4,
                        .scaling = CT_ROPE_DYNAMIC, .factor = 2.0, .max_pos = 2048, .seq_len = 4096};
    CHECK(fabs(ref_base(&p) - 43267.487109222246) < 1e-9, "reference base %.17g", ref_base(&p));
    int64_t shape[2] = {1, 8}, one = 1;
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, shape, false);
    ct_tensor *y = ct_tensor_new(be, CT_F32, 2, shape, false);
    ct_tensor *pos = ct_tensor_new(be, CT_I32, 1, &one, false);
    float *xs = x->data, *ys = y->data;
    for (int i = 0; i < 8; i++) xs[i] = i == 1 ? 1.0f : 0.0f; /* x[1] = 1: y[1] = cos a, y[5] = sin a */
    ((int32_t *)pos->data)[0] = 3000;
    CHECK_OK(ct_cpu_rope_fwd(x, pos, &p, y));
    double a = 3000.0 * 0.06933612743506347;
    CHECK(fabs(ys[1] - cos(a)) < 2e-7 && fabs(ys[5] - sin(a)) < 2e-7,
          "dynamic base: got cos %.9g sin %.9g, want %.9g %.9g", ys[1], ys[5], cos(a), sin(a));

    /* at or below max_pos the dynamic rule is inactive: exactly the plain rope */
    ct_tensor *y2 = ct_tensor_new(be, CT_F32, 2, shape, false);
    p.seq_len = 2048;
    ct_rope_params q = plain(8, 1, 1, 1e4);
    for (int i = 0; i < 8; i++) xs[i] = (float)(0.3 * i - 1.0);
    CHECK_OK(ct_cpu_rope_fwd(x, pos, &p, y));
    CHECK_OK(ct_cpu_rope_fwd(x, pos, &q, y2));
    CHECK(memcmp(y->data, y2->data, 8 * sizeof(float)) == 0, "inactive dynamic scaling changed the result");
    ct_tensor_free(be, x);
    ct_tensor_free(be, y);
    ct_tensor_free(be, y2);
    ct_tensor_free(be, pos);
}

/* Through the op and the tape: x->grad = Rᵀ r, matching finite differences;
 * a big enough shape that the kernel runs multi-threaded. */
static void test_tape(void) {
    const ct_backend *be = ct_cpu_backend();
    ct_test_rng rng = {7};
    ct_rope_params p = plain(16, 4, 3, 1e6); /* wqkv with G=2 */
    const int64_t T = 300, C = 8 * 16, n = T * C;
    int64_t shape[2] = {T, C};
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, shape, true);
    ct_tensor *pos = ct_tensor_new(be, CT_I32, 1, &T, false);
    int32_t *ps = pos->data;
    for (int64_t t = 0; t < T; t++) ps[t] = (int32_t)(t < 170 ? t : t - 170); /* two samples */
    float *r = malloc((size_t)n * sizeof *r);
    ct_test_fill(&rng, x->data, n, 1.0);
    ct_test_fill(&rng, r, n, 1.0);

    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 20));
    ct_tensor *y = ct_rope(&tape, x, pos, &p);
    CHECK_PTR(y);
    ct_tensor *loss = y ? ct_test_dot_loss(&tape, y, r) : NULL;
    CHECK_PTR(loss);
    if (loss) {
        CHECK(y->requires_grad && loss->requires_grad, "the op did not record");
        CHECK_OK(ct_backward(&tape, loss, 1.0f));
        /* the rotation is linear: dL/dx = Rᵀ r exactly; check it on the reference */
        double *xd = malloc((size_t)n * sizeof *xd), *yd = malloc((size_t)n * sizeof *yd);
        double *rd = malloc((size_t)n * sizeof *rd), *want = malloc((size_t)n * sizeof *want);
        for (int64_t i = 0; i < n; i++) xd[i] = ((float *)x->data)[i], rd[i] = r[i];
        ref_rope(xd, ps, T, C, &p, ref_base(&p), yd);
        ct_check_close("tape: forward", y->data, yd, n, 1e-6, 1e-6);
        /* sampled central differences (the loss is linear, so any step is exact) */
        fd_ctx c = {xd, yd, rd, ps, T, C, &p};
        int bad = 0;
        for (int k = 0; k < 40; k++) {
            int64_t i = (int64_t)(ct_test_uniform(&rng) * (double)n);
            double keep = xd[i];
            xd[i] = keep + 0.5;
            double fp = ref_loss(&c);
            xd[i] = keep - 0.5;
            double fm = ref_loss(&c);
            xd[i] = keep;
            want[k] = fp - fm; /* (f(x+h) - f(x-h)) / 2h with h = 0.5 */
            double got = ((float *)x->grad->data)[i];
            if (fabs(got - want[k]) > 1e-5 + 1e-5 * fabs(want[k])) bad++;
        }
        CHECK(bad == 0, "tape: %d of 40 sampled grads differ from finite differences", bad);
        free(xd), free(yd), free(rd), free(want);
    }
    ct_tape_free(&tape);
    ct_tensor_free(be, x);
    ct_tensor_free(be, pos);
    free(r);
}

static void expect_error(ct_tape *t, ct_tensor *x, ct_tensor *pos, ct_rope_params p,
                         const char *needle) {
    ct_error_clear();
    ct_tensor *y = ct_rope(t, x, pos, &p);
    CHECK(y == NULL && strstr(ct_last_error(), needle) != NULL,
          "expected an error mentioning '%s', got '%s'", needle, ct_last_error());
}

static void test_errors(void) {
    const ct_backend *be = ct_cpu_backend();
    int64_t shape[2] = {3, 24}, T = 3, two = 2;
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, shape, false);
    ct_tensor *pos = ct_tensor_new(be, CT_I32, 1, &T, false);
    ct_tensor *pos2 = ct_tensor_new(be, CT_I32, 1, &two, false);
    memset(x->data, 0, ct_nbytes(x));
    memset(pos->data, 0, ct_nbytes(pos));
    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 16));
    expect_error(&tape, x, pos, plain(5, 1, 1, 1e4), "head_dim 5");
    expect_error(&tape, x, pos, plain(16, 1, 1, 1e4), "multiple of head_dim");
    expect_error(&tape, x, pos, plain(8, 2, 1, 1e4), "groups of 2");   /* 3 heads */
    expect_error(&tape, x, pos, plain(8, 3, 4, 1e4), "rotating the first 4");
    expect_error(&tape, x, pos, plain(8, 1, 1, 0.0), "rope_theta");
    expect_error(&tape, x, pos2, plain(8, 1, 1, 1e4), "pos");
    ct_rope_params p = plain(8, 1, 1, 1e4);
    p.scaling = CT_ROPE_LINEAR;
    p.factor = 0.0;
    expect_error(&tape, x, pos, p, "factor");
    ct_rope_params d = {.head_dim = 2, .group = 1, .rotate_per_group = 1, .theta = 1e4,
                        .scaling = CT_ROPE_DYNAMIC, .factor = 2.0, .max_pos = 4, .seq_len = 8};
    expect_error(&tape, x, pos, d, "head_dim > 2");
    d.seq_len = 4; /* inactive: fine */
    ct_error_clear();
    CHECK_PTR(ct_rope(&tape, x, pos, &d));
    ct_tape_free(&tape);
    ct_tensor_free(be, x);
    ct_tensor_free(be, pos);
    ct_tensor_free(be, pos2);
}

int main(void) {
    test_cases();
    test_dynamic_base();
    test_tape();
    test_errors();
    return ct_test_finish();
}
