/* lora_linear (CPU): forward vs a double-precision loop reference, every grad
 * (dx, dA, dB) vs central differences of that reference, for f32/bf16/f16 base
 * weights, dropout 0 and 0.3 (the reference draws the same mask from ct_uniform),
 * no LoRA, x without grad, several weight tiles, eval mode, checkpoint
 * recomputation, bounded scratch for a big 16-bit weight, bit-identical reruns,
 * and shape errors. With compute = bf16 (all eight GEMMs on bf16 inputs with
 * fp32 sums): y, dx, dA, dB vs a double reference that rounds where the kernel
 * does, on the fast path and the fallback. The scalar for the grads is f = Σ C ⊙ y with a fixed random
 * cotangent C, so the analytic grads are the op's backward fed with dY = C. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu_kernels.h"
#include "autograd/cpu/gemm_bf16.h"
#include "autograd/ct_inline.h"
#include "autograd/ops.h"
#include "testutil.h"

typedef struct {
    const char *name;
    int T, in, out, r;
    ct_dtype wdt;
    float p;
    bool lora, x_grad;
    size_t tile_bytes; /* 0 = default */
} lcase;

/* The double reference: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ, f = Σ C ⊙ y. */
typedef struct {
    int T, in, out, r;
    bool lora;
    double s, keep_scale;
    double *x, *w, *a, *b, *cot; /* [T,in] [out,in] [r,in] [out,r] [T,out] */
    bool *keep;                  /* [T,in] mask */
} ref_t;

static void ref_forward(const ref_t *R, double *y) {
    for (int t = 0; t < R->T; t++)
        for (int o = 0; o < R->out; o++) {
            double acc = 0.0;
            for (int i = 0; i < R->in; i++) acc += R->x[t * R->in + i] * R->w[o * R->in + i];
            if (R->lora)
                for (int k = 0; k < R->r; k++) {
                    double u = 0.0;
                    for (int i = 0; i < R->in; i++)
                        if (R->keep[t * R->in + i])
                            u += R->x[t * R->in + i] * R->keep_scale * R->a[k * R->in + i];
                    acc += R->s * u * R->b[o * R->r + k];
                }
            y[t * R->out + o] = acc;
        }
}

static double ref_f(void *ctx) {
    const ref_t *R = ctx;
    double *y = malloc(sizeof(double) * (size_t)R->T * (size_t)R->out);
    ref_forward(R, y);
    double f = 0.0;
    for (int i = 0; i < R->T * R->out; i++) f += R->cot[i] * y[i];
    free(y);
    return f;
}

static double *to_double(const float *v, int64_t n) {
    double *d = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) d[i] = v[i];
    return d;
}

static double max_err(const float *got, const double *want, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)got[i] - want[i]));
    return m;
}

/* What the backward pass does after the loss: dY = C, then the tape in reverse. */
static int backprop_from(ct_tape *tp, ct_tensor *y, const float *cot) {
    ct_tensor *g = ct_grad(tp, y);
    if (!g) return CT_ERUNTIME;
    memcpy(g->data, cot, ct_nbytes(g));
    bool prev = ct_tape_set_recording(tp, false);
    int rc = CT_OK;
    for (int i = tp->n_entries - 1; i >= 0 && !rc; i--) {
        ct_tape_entry e = tp->entries[i];
        if (e.out->requires_grad && e.out->grad) rc = e.op->backward(tp, &e);
    }
    ct_tape_set_recording(tp, prev);
    return rc;
}

/* Weights of one case, on the heap. */
typedef struct {
    ct_tensor *x, *w, *a, *b;
    float *cot;   /* [T, out] */
    float *wf;    /* [out, in] the (rounded) base weight as f32 */
    ct_linear lin;
} setup_t;

static void setup(const lcase *c, uint64_t data_seed, setup_t *S) {
    const ct_backend *be = ct_cpu_backend();
    ct_test_rng rng = {data_seed};
    int64_t xs[2] = {c->T, c->in}, ws[2] = {c->out, c->in}, as[2] = {c->r, c->in},
            bs[2] = {c->out, c->r};
    S->x = ct_tensor_new(be, CT_F32, 2, xs, c->x_grad);
    ct_test_fill(&rng, S->x->data, c->T * c->in, 1.0);
    S->wf = malloc(sizeof(float) * (size_t)c->out * (size_t)c->in);
    ct_test_fill(&rng, S->wf, (int64_t)c->out * c->in, 0.5);
    S->w = ct_tensor_new(be, c->wdt, 2, ws, false);
    S->w->name = "layers.0.w";
    ct_convert(S->w->data, c->wdt, S->wf, CT_F32, (int64_t)c->out * c->in);
    ct_convert(S->wf, CT_F32, S->w->data, c->wdt, (int64_t)c->out * c->in); /* rounded */
    S->a = S->b = NULL;
    if (c->lora) {
        S->a = ct_tensor_new(be, CT_F32, 2, as, true);
        S->b = ct_tensor_new(be, CT_F32, 2, bs, true);
        ct_test_fill(&rng, S->a->data, (int64_t)c->r * c->in, 0.5);
        ct_test_fill(&rng, S->b->data, (int64_t)c->out * c->r, 0.5);
    }
    S->cot = malloc(sizeof(float) * (size_t)c->T * (size_t)c->out);
    ct_test_fill(&rng, S->cot, (int64_t)c->T * c->out, 1.0);
    S->lin = (ct_linear){S->w, S->a, S->b, 0.75f, c->p, 42, CT_F32};
}

static void teardown(setup_t *S) {
    const ct_backend *be = ct_cpu_backend();
    ct_tensor_free(be, S->x);
    ct_tensor_free(be, S->w);
    ct_tensor_free(be, S->a);
    ct_tensor_free(be, S->b);
    free(S->cot);
    free(S->wf);
}

static void ref_init(const lcase *c, const setup_t *S, uint64_t mask_seed, float p, ref_t *R) {
    R->T = c->T;
    R->in = c->in;
    R->out = c->out;
    R->r = c->r;
    R->lora = c->lora;
    R->s = S->lin.scale;
    R->keep_scale = 1.0 / (1.0 - (double)p);
    R->x = to_double(S->x->data, (int64_t)c->T * c->in);
    R->w = to_double(S->wf, (int64_t)c->out * c->in);
    R->a = c->lora ? to_double(S->a->data, (int64_t)c->r * c->in) : NULL;
    R->b = c->lora ? to_double(S->b->data, (int64_t)c->out * c->r) : NULL;
    R->cot = to_double(S->cot, (int64_t)c->T * c->out);
    R->keep = ct_test_keep_mask(mask_seed, (int64_t)c->T * c->in, p);
}

static void ref_free(ref_t *R) {
    free(R->x);
    free(R->w);
    free(R->a);
    free(R->b);
    free(R->cot);
    free(R->keep);
}

static uint64_t mask_seed_of(uint64_t step_seed, uint64_t id) {
    return ct_mix64(step_seed ^ ct_mix64(id));
}

/* Forward + backward through the op; FD checks of every grad. */
static void run_case(const lcase *c) {
    const ct_backend *be = ct_cpu_backend();
    size_t prev_tile = ct_cpu_set_weight_tile_bytes(c->tile_bytes);
    setup_t S;
    setup(c, 1000 + (uint64_t)c->T * 7 + (uint64_t)c->wdt, &S);
    ct_tape tp;
    ct_tape_init(&tp, be, (size_t)1 << 20);
    tp.step_seed = 99;
    ct_tensor *y = ct_lora_linear(&tp, S.x, &S.lin);
    CHECK_PTR(y);
    if (!y) goto done;
    CHECK(y->ndim == 2 && y->shape[0] == c->T && y->shape[1] == c->out, "%s: output shape", c->name);
    CHECK(y->requires_grad == (c->lora || c->x_grad), "%s: requires_grad propagates", c->name);
    ref_t R;
    ref_init(c, &S, mask_seed_of(99, 42), c->p, &R);
    int64_t ny = (int64_t)c->T * c->out;
    double *yref = malloc(sizeof(double) * (size_t)ny);
    ref_forward(&R, yref);
    char what[128];
    snprintf(what, sizeof what, "%s: forward", c->name);
    ct_check_close(what, y->data, yref, ny, 1e-5, 1e-5);
    printf("%-28s forward max |err| %.2e\n", c->name, max_err(y->data, yref, ny));
    free(yref);

    if (y->requires_grad) {
        CHECK_OK(backprop_from(&tp, y, S.cot));
        double h = 1e-3;
        struct { const char *n; ct_tensor *t; double *ref; int64_t len; } g[3] = {
            {"dx", S.x, R.x, (int64_t)c->T * c->in},
            {"dA", S.a, R.a, (int64_t)c->r * c->in},
            {"dB", S.b, R.b, (int64_t)c->out * c->r},
        };
        for (int k = 0; k < 3; k++) {
            if (!g[k].t) continue;
            if (k == 0 && !c->x_grad) {
                CHECK(S.x->grad == NULL, "%s: dx computed although x needs no grad", c->name);
                continue;
            }
            double *fd = malloc(sizeof(double) * (size_t)g[k].len);
            ct_fd_grad(ref_f, &R, g[k].ref, g[k].len, h, fd);
            snprintf(what, sizeof what, "%s: %s vs finite differences", c->name, g[k].n);
            CHECK(g[k].t->grad != NULL, "%s: no grad", what);
            if (g[k].t->grad) {
                ct_check_close(what, g[k].t->grad->data, fd, g[k].len, 1e-5, 1e-5);
                printf("%-28s %s max |err| %.2e\n", c->name, g[k].n,
                       max_err(g[k].t->grad->data, fd, g[k].len));
            }
            free(fd);
        }
    }
    ref_free(&R);
done:
    ct_tape_free(&tp);
    teardown(&S);
    ct_cpu_set_weight_tile_bytes(prev_tile);
}

/* Outputs and grads of one full run, for bitwise comparisons. */
typedef struct {
    float *y, *dx, *da, *db;
} run_out;

typedef struct {
    const ct_linear *lin;
} seg_ctx;

static int seg_fn(ct_tape *tape, void *ctx, ct_tensor *in, ct_tensor **out) {
    const seg_ctx *sc = ctx;
    *out = ct_lora_linear(tape, in, sc->lin);
    return *out ? CT_OK : CT_ERUNTIME;
}

static float *dup_f(const ct_tensor *t) {
    float *p = malloc(ct_nbytes(t));
    memcpy(p, t->data, ct_nbytes(t));
    return p;
}

static void run_full(const lcase *c, uint64_t step_seed, uint64_t id, bool checkpoint,
                     ct_dtype compute, run_out *o) {
    setup_t S;
    setup(c, 7, &S);
    S.lin.id = id;
    S.lin.compute = compute;
    ct_tape tp;
    ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
    tp.step_seed = step_seed;
    ct_tensor *y = NULL;
    seg_ctx sc = {&S.lin};
    if (checkpoint) CHECK_OK(ct_checkpoint(&tp, seg_fn, &sc, S.x, &y));
    else y = ct_lora_linear(&tp, S.x, &S.lin);
    memset(o, 0, sizeof *o);
    if (y) {
        o->y = dup_f(y);
        CHECK_OK(backprop_from(&tp, y, S.cot));
        o->dx = dup_f(S.x->grad);
        o->da = dup_f(S.a->grad);
        o->db = dup_f(S.b->grad);
    }
    ct_tape_free(&tp);
    teardown(&S);
}

static void free_out(run_out *o) {
    free(o->y);
    free(o->dx);
    free(o->da);
    free(o->db);
}

static bool same_out(const run_out *p, const run_out *q, const lcase *c) {
    if (!p->y || !q->y) return false;
    size_t ny = (size_t)c->T * (size_t)c->out * 4, nx = (size_t)c->T * (size_t)c->in * 4;
    return !memcmp(p->y, q->y, ny) && !memcmp(p->dx, q->dx, nx) &&
           !memcmp(p->da, q->da, (size_t)c->r * (size_t)c->in * 4) &&
           !memcmp(p->db, q->db, (size_t)c->out * (size_t)c->r * 4);
}

/* Determinism, checkpoint mask reproduction, and the seed's dependencies, with
 * fp32 and bf16 compute. */
static void test_repeat_and_checkpoint(void) {
    lcase c = {"repeat", 37, 96, 130, 8, CT_BF16, 0.3f, true, true, 64 * 96 * 4};
    size_t prev = ct_cpu_set_weight_tile_bytes(c.tile_bytes);
    for (int bf = 0; bf < 2; bf++) {
        ct_dtype cd = bf ? CT_BF16 : CT_F32;
        const char *name = bf ? "bf16 compute" : "f32 compute";
        run_out a, b, ck, other_step, other_id;
        run_full(&c, 5, 42, false, cd, &a);
        run_full(&c, 5, 42, false, cd, &b);
        run_full(&c, 5, 42, true, cd, &ck);
        run_full(&c, 6, 42, false, cd, &other_step);
        run_full(&c, 5, 43, false, cd, &other_id);
        CHECK(same_out(&a, &b, &c), "%s: two identical runs differ", name);
        CHECK(same_out(&a, &ck, &c),
              "%s: checkpointed run differs from the plain run (mask not reproduced)", name);
        CHECK(a.y && other_step.y && memcmp(a.y, other_step.y, (size_t)c.T * c.out * 4) != 0,
              "%s: the step seed does not change the dropout mask", name);
        CHECK(a.y && other_id.y && memcmp(a.y, other_id.y, (size_t)c.T * c.out * 4) != 0,
              "%s: the layer id does not change the dropout mask", name);
        free_out(&a);
        free_out(&b);
        free_out(&ck);
        free_out(&other_step);
        free_out(&other_id);
    }
    ct_cpu_set_weight_tile_bytes(prev);
}

/* no_grad mode: no dropout, nothing recorded, nothing saved. */
static void test_eval_mode(void) {
    lcase c = {"eval", 5, 9, 6, 2, CT_F32, 0.5f, true, true, 0};
    setup_t S;
    setup(&c, 3, &S);
    ct_tape tp;
    ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
    ct_tape_set_recording(&tp, false);
    ct_tensor *y = ct_lora_linear(&tp, S.x, &S.lin);
    CHECK_PTR(y);
    if (y) {
        ref_t R;
        ref_init(&c, &S, 0, 0.0f, &R); /* p = 0: every element kept, scale 1 */
        double yref[5 * 6];
        ref_forward(&R, yref);
        ct_check_close("eval: forward without dropout", y->data, yref, 30, 1e-5, 1e-5);
        CHECK(tp.n_entries == 0 && !y->requires_grad, "eval: something was recorded");
        ref_free(&R);
    }
    ct_tape_free(&tp);
    teardown(&S);
}

/* A 4096×512 bf16 weight: scratch holds one tile, never a full f32 copy (8 MiB). */
static void test_bounded_scratch(void) {
    lcase c = {"big bf16", 16, 512, 4096, 4, CT_BF16, 0.0f, true, true, 0};
    setup_t S;
    setup(&c, 11, &S);
    ct_tape tp;
    ct_tape_init(&tp, ct_cpu_backend(), 0);
    ct_tensor *y = ct_lora_linear(&tp, S.x, &S.lin);
    CHECK_PTR(y);
    if (y) {
        CHECK_OK(backprop_from(&tp, y, S.cot));
        /* Spot-check a few outputs against the reference dot products. */
        for (int t = 0; t < c.T; t += 5)
            for (int o = 0; o < c.out; o += 1023) {
                double acc = 0.0, lo = 0.0;
                const float *x = S.x->data, *a = S.a->data, *b = S.b->data;
                for (int i = 0; i < c.in; i++) acc += (double)x[t * c.in + i] * S.wf[(size_t)o * c.in + i];
                for (int k = 0; k < c.r; k++) {
                    double u = 0.0;
                    for (int i = 0; i < c.in; i++) u += (double)x[t * c.in + i] * a[k * c.in + i];
                    lo += u * b[o * c.r + k];
                }
                acc += S.lin.scale * lo;
                float got = ((float *)y->data)[(size_t)t * c.out + o];
                CHECK(fabs(got - acc) <= 1e-4 + 1e-4 * fabs(acc), "big: y[%d,%d] = %g, want %g", t, o, got, acc);
            }
    }
    size_t full = (size_t)c.out * c.in * sizeof(float);
    CHECK(tp.scratch.peak <= ((size_t)4 << 20) + ((size_t)64 << 10) && tp.scratch.peak < full,
          "scratch peak %zu bytes: a whole f32 copy of the weight is %zu", tp.scratch.peak, full);
    printf("big bf16 4096x512: scratch peak %.2f MiB (whole f32 weight %.2f MiB)\n",
           tp.scratch.peak / 1048576.0, full / 1048576.0);
    ct_tape_free(&tp);
    teardown(&S);
}

static double bf16r(double v) { return ct_bf16_to_f32(ct_f32_to_bf16((float)v)); }

/* compute = bf16: every GEMM's inputs are rounded to bf16 (RNE) and the
 * products summed in fp32. The reference mirrors where the kernel rounds, in
 * double:
 *   y  = bf16(x)·bf16(W)ᵀ + s·bf16(u)·bf16(B)ᵀ,   u = bf16(drop(x))·bf16(A)ᵀ
 *   dB = s·bf16(dY)ᵀ·bf16(u)      g = s·bf16(dY)·bf16(B)
 *   dA = bf16(g)ᵀ·bf16(drop(x))   dx = bf16(dY)·bf16(W) + (bf16(g)·bf16(A)) ⊙ keep/(1-p)
 * with drop(x) = x·(1/(1-p)) in f32 as ct_cpu_dropout_rows forms it. So only
 * the fp32 summation differs: |got - ref| <= TOL_BF16·(Σ|terms|) + slack.
 * u and g are fp32 sums that are rounded again: where the exact value lies
 * within the summation error of a bf16 rounding boundary the kernel may round
 * to either neighbour; such an element gets slack = its bf16 spacing times the
 * factors it meets (a handful of elements, if any). Fast path and fallback
 * (and, through the fallback, OpenBLAS's order) must both pass. */
#define TOL_BF16 2e-6

typedef struct {
    double *v, *scale, *slack; /* value, Σ|terms|, slack */
} refv;

static refv refv_new(int64_t n) {
    refv r = {calloc((size_t)n, sizeof(double)), calloc((size_t)n, sizeof(double)),
              calloc((size_t)n, sizeof(double))};
    return r;
}

static void refv_free(refv *r) {
    free(r->v);
    free(r->scale);
    free(r->slack);
}

/* bf16 of the f32 sum of a value v (Σ|terms| = scale): the rounding of v, and
 * in *spacing the gap between the two candidates when the f32 sum could round
 * either way (else 0). */
static double bf16_of_sum(double v, double scale, double *spacing) {
    double w = TOL_BF16 * scale, lo = bf16r(v - w), hi = bf16r(v + w);
    *spacing = lo != hi ? fabs(hi - lo) : 0.0;
    return bf16r(v);
}

/* got vs want ± (TOL_BF16·scale + slack). *worst: the largest |got - want| /
 * scale where no slack applies; *flips counts the elements that needed theirs
 * (a u or g rounded the other way). */
static void check_ref(const char *what, const float *got, const refv *want, int64_t n,
                      double *worst, int *flips) {
    int64_t bad = 0, at = -1;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want->v[i]), tight = TOL_BF16 * want->scale[i] + 1e-30;
        if (want->slack[i] == 0.0 && err / (want->scale[i] + 1e-30) > *worst)
            *worst = err / (want->scale[i] + 1e-30);
        if (err > tight && err <= tight + want->slack[i]) ++*flips;
        if (!(err <= tight + want->slack[i]) && bad++ == 0) at = i;
    }
    CHECK(bad == 0, "%s: %lld of %lld elements off; first [%lld]: got %.9g want %.9g (scale %.3g, "
          "slack %.3g)", what, (long long)bad, (long long)n, (long long)at,
          at < 0 ? 0.0 : (double)got[at], at < 0 ? 0.0 : want->v[at],
          at < 0 ? 0.0 : want->scale[at], at < 0 ? 0.0 : want->slack[at]);
}

/* Fast path vs fallback. The fallback sums with cblas_sgemm, in the order of
 * whichever OpenBLAS kernel the machine picks (OPENBLAS_CORETYPE, thread
 * count), so the two paths are NOT bit-identical: each is within
 * TOL_BF16·scale (+ slack where a u/g lands on the other side of a bf16
 * rounding boundary) of the reference, so they may differ by twice that. The
 * bound does not depend on the BLAS kernel; a flipped u shows up as slack
 * (e.g. 2% of y with OPENBLAS_CORETYPE=Haswell, issue 12). */
static void check_paths(const char *what, const float *fb, const float *fast, const refv *ref,
                        int64_t n) {
    int64_t bad = 0, at = -1;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)fb[i] - (double)fast[i]);
        if (!(err <= 2.0 * (TOL_BF16 * ref->scale[i] + ref->slack[i]) + 1e-30) && bad++ == 0) at = i;
    }
    CHECK(bad == 0, "%s: %lld of %lld elements apart by more than the two paths' bounds; first "
          "[%lld]: %.9g vs %.9g (scale %.3g, slack %.3g)", what, (long long)bad, (long long)n,
          (long long)at, at < 0 ? 0.0 : (double)fb[at], at < 0 ? 0.0 : (double)fast[at],
          at < 0 ? 0.0 : ref->scale[at], at < 0 ? 0.0 : ref->slack[at]);
}

/* The bf16-compute reference of one case (see above). */
typedef struct {
    refv y, dx, da, db;
    int n_ambiguous; /* u and g elements that may round either way */
} bf16_ref;

static void bf16_reference(const lcase *c, const setup_t *S, uint64_t mask_seed, bf16_ref *R) {
    int T = c->T, in = c->in, out = c->out, r = c->lora ? c->r : 0;
    double s = S->lin.scale;
    float p = c->p, ks = 1.0f / (1.0f - p); /* as ct_cpu_dropout_rows */
    const float *x = S->x->data, *cot = S->cot;
    const float *A = c->lora ? S->a->data : NULL, *B = c->lora ? S->b->data : NULL;
    size_t nx = (size_t)T * (size_t)in, nw = (size_t)out * (size_t)in, ny = (size_t)T * (size_t)out;
    double *xr = malloc(sizeof(double) * nx), *xd = malloc(sizeof(double) * nx);
    double *keep = malloc(sizeof(double) * nx); /* dx's factor: keep/(1-p), or 1 */
    double *wr = malloc(sizeof(double) * nw), *dyr = malloc(sizeof(double) * ny);
    for (size_t i = 0; i < nx; i++) {
        bool kept = !(p > 0.0f && ct_uniform(mask_seed, (uint64_t)i) < p);
        xr[i] = bf16r(x[i]);
        xd[i] = p > 0.0f ? (kept ? bf16r(x[i] * ks) : 0.0) : xr[i];
        keep[i] = p > 0.0f ? (kept ? (double)ks : 0.0) : 1.0;
    }
    for (size_t i = 0; i < nw; i++) wr[i] = bf16r(S->wf[i]);
    for (size_t i = 0; i < ny; i++) dyr[i] = bf16r(cot[i]);
    int64_t nu = (int64_t)T * (r ? r : 1);
    double *ur = calloc((size_t)nu, sizeof(double)), *us = calloc((size_t)nu, sizeof(double));
    double *gr = calloc((size_t)nu, sizeof(double)), *gs = calloc((size_t)nu, sizeof(double));
    R->y = refv_new((int64_t)T * out);
    R->dx = refv_new((int64_t)T * in);
    R->da = refv_new((int64_t)(r ? r : 1) * in);
    R->db = refv_new((int64_t)out * (r ? r : 1));
    R->n_ambiguous = 0;
    for (int t = 0; t < T; t++)
        for (int k = 0; k < r; k++) { /* u, then g: rounded again as GEMM inputs */
            double u = 0.0, ua = 0.0, g = 0.0, ga = 0.0;
            for (int i = 0; i < in; i++) {
                double pr = xd[t * in + i] * bf16r(A[k * in + i]);
                u += pr, ua += fabs(pr);
            }
            for (int o = 0; o < out; o++) {
                double pr = s * dyr[t * out + o] * bf16r(B[o * r + k]);
                g += pr, ga += fabs(pr);
            }
            ur[t * r + k] = bf16_of_sum(u, ua, &us[t * r + k]);
            gr[t * r + k] = bf16_of_sum(g, ga, &gs[t * r + k]);
            R->n_ambiguous += (us[t * r + k] != 0.0) + (gs[t * r + k] != 0.0);
        }
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) {
            double v = 0.0, sc = 0.0, sl = 0.0;
            for (int i = 0; i < in; i++) {
                double pr = xr[t * in + i] * wr[o * in + i];
                v += pr, sc += fabs(pr);
            }
            for (int k = 0; k < r; k++) {
                double b = bf16r(B[o * r + k]), pr = s * ur[t * r + k] * b;
                v += pr, sc += fabs(pr), sl += fabs(s * b) * us[t * r + k];
            }
            R->y.v[t * out + o] = v, R->y.scale[t * out + o] = sc, R->y.slack[t * out + o] = sl;
        }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < in; i++) {
            double v = 0.0, sc = 0.0, lo = 0.0, lsc = 0.0, sl = 0.0, f = keep[t * in + i];
            for (int o = 0; o < out; o++) {
                double pr = dyr[t * out + o] * wr[o * in + i];
                v += pr, sc += fabs(pr);
            }
            for (int k = 0; k < r; k++) {
                double a = bf16r(A[k * in + i]), pr = gr[t * r + k] * a;
                lo += pr, lsc += fabs(pr), sl += fabs(a) * gs[t * r + k];
            }
            R->dx.v[t * in + i] = v + f * lo, R->dx.scale[t * in + i] = sc + f * lsc;
            R->dx.slack[t * in + i] = f * sl;
        }
    for (int k = 0; k < r; k++)
        for (int i = 0; i < in; i++) { /* dA = bf16(g)ᵀ·bf16(drop(x)) */
            double v = 0.0, sc = 0.0, sl = 0.0;
            for (int t = 0; t < T; t++) {
                double pr = gr[t * r + k] * xd[t * in + i];
                v += pr, sc += fabs(pr), sl += gs[t * r + k] * fabs(xd[t * in + i]);
            }
            R->da.v[k * in + i] = v, R->da.scale[k * in + i] = sc, R->da.slack[k * in + i] = sl;
        }
    for (int o = 0; o < out; o++)
        for (int k = 0; k < r; k++) { /* dB = s·bf16(dY)ᵀ·bf16(u) */
            double v = 0.0, sc = 0.0, sl = 0.0;
            for (int t = 0; t < T; t++) {
                double pr = s * dyr[t * out + o] * ur[t * r + k];
                v += pr, sc += fabs(pr), sl += fabs(s * dyr[t * out + o]) * us[t * r + k];
            }
            R->db.v[o * r + k] = v, R->db.scale[o * r + k] = sc, R->db.slack[o * r + k] = sl;
        }
    free(xr), free(xd), free(keep), free(wr), free(dyr), free(ur), free(us), free(gr), free(gs);
}

static void bf16_ref_free(bf16_ref *R) {
    refv_free(&R->y);
    refv_free(&R->dx);
    refv_free(&R->da);
    refv_free(&R->db);
}

static void test_bf16_compute(void) {
    const lcase cases[] = {
        {"bf16 W p=0.3", 37, 96, 130, 8, CT_BF16, 0.3f, true, true, 0},
        {"bf16 W p=0 r=64", 70, 97, 150, 64, CT_BF16, 0.0f, true, true, 0},
        {"f32 W tiles p=0", 37, 96, 130, 8, CT_F32, 0.0f, true, true, 16 * 96 * 4},
        {"f32 W tiles p=0.3 r=64", 29, 64, 72, 64, CT_F32, 0.3f, true, true, 20 * 64 * 4},
        {"f16 W p=0.3 T=3", 3, 33, 17, 2, CT_F16, 0.3f, true, true, 0},
        {"f16 W 1-row tiles p=0", 13, 40, 25, 5, CT_F16, 0.0f, true, true, 1},
        {"bf16 W no lora", 9, 64, 40, 1, CT_BF16, 0.0f, false, true, 0},
        {"bf16 W p=0.3 no dx", 26, 48, 33, 12, CT_BF16, 0.3f, true, false, 0},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    float *fast_y[NC] = {0}; /* the fast path's y, for the fallback to compare with */
    double worst[2][4] = {{0}}; /* [fast, fallback][y, dx, dA, dB]: largest |err| / scale */
    int ambiguous = 0, flips[2] = {0};
    for (int fb = 0; fb < 2; fb++) {
        if (!fb && !ct_cpu_bf16_dot_supported()) {
            printf("bf16 compute: no AVX512-BF16 here; the fallback only\n");
            continue;
        }
        bool prev_fb = ct_bf16_force_fallback(fb);
        const char *path = fb ? "fallback" : "fast";
        for (size_t ci = 0; ci < NC; ci++) {
            const lcase *c = &cases[ci];
            size_t prev_tile = ct_cpu_set_weight_tile_bytes(c->tile_bytes);
            setup_t S;
            setup(c, 500 + ci, &S);
            S.lin.compute = CT_BF16;
            ct_tape tp;
            ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
            tp.step_seed = 99;
            ct_tensor *y = ct_lora_linear(&tp, S.x, &S.lin);
            CHECK_PTR(y);
            if (y) {
                bf16_ref R;
                bf16_reference(c, &S, mask_seed_of(99, 42), &R);
                if (fb) ambiguous += R.n_ambiguous; /* the fallback always runs */
                int64_t nx = (int64_t)c->T * c->in, ny = (int64_t)c->T * c->out;
                char what[160];
                snprintf(what, sizeof what, "bf16 compute, %s (%s): y", c->name, path);
                check_ref(what, y->data, &R.y, ny, &worst[fb][0], &flips[fb]);
                if (!fb) fast_y[ci] = dup_f(y);
                else if (fast_y[ci]) {
                    snprintf(what, sizeof what, "bf16 compute, %s: y fast vs fallback", c->name);
                    check_paths(what, y->data, fast_y[ci], &R.y, ny);
                }
                CHECK_OK(backprop_from(&tp, y, S.cot));
                struct { const char *n; ct_tensor *t; refv *ref; int64_t len; } g[3] = {
                    {"dx", S.x, &R.dx, nx},
                    {"dA", S.a, &R.da, (int64_t)c->r * c->in},
                    {"dB", S.b, &R.db, (int64_t)c->out * c->r}};
                for (int k = 0; k < 3; k++) {
                    if (!g[k].t) continue;
                    snprintf(what, sizeof what, "bf16 compute, %s (%s): %s", c->name, path, g[k].n);
                    if (k == 0 && !c->x_grad) {
                        CHECK(S.x->grad == NULL, "%s computed although x needs no grad", what);
                        continue;
                    }
                    CHECK(g[k].t->grad != NULL, "%s: no grad", what);
                    if (g[k].t->grad)
                        check_ref(what, g[k].t->grad->data, g[k].ref, g[k].len, &worst[fb][k + 1],
                                  &flips[fb]);
                }
                bf16_ref_free(&R);
            }
            ct_tape_free(&tp);
            teardown(&S);
            ct_cpu_set_weight_tile_bytes(prev_tile);
        }
        ct_bf16_force_fallback(prev_fb);
    }
    for (size_t ci = 0; ci < NC; ci++) free(fast_y[ci]);
    for (int fb = !ct_cpu_bf16_dot_supported(); fb < 2; fb++)
        printf("bf16 compute %-8s max |err| / Σ|terms|: y %.2e  dx %.2e  dA %.2e  dB %.2e "
               "(bound %g); %d outputs met a u/g rounded the other way\n",
               fb ? "fallback" : "fast", worst[fb][0], worst[fb][1], worst[fb][2], worst[fb][3],
               TOL_BF16, flips[fb]);
    printf("bf16 compute: %d u/g elements within fp32 error of a bf16 rounding boundary\n",
           ambiguous);
}

static void test_errors(void) {
    const ct_backend *be = ct_cpu_backend();
    int64_t xs[2] = {4, 8}, ws[2] = {6, 9}, as[2] = {2, 8}, bs[2] = {5, 2}, w2s[2] = {6, 8};
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, xs, false);
    ct_tensor *w = ct_tensor_new(be, CT_F32, 2, ws, false);
    ct_tensor *w2 = ct_tensor_new(be, CT_BF16, 2, w2s, false);
    ct_tensor *a = ct_tensor_new(be, CT_F32, 2, as, true);
    ct_tensor *b = ct_tensor_new(be, CT_F32, 2, bs, true);
    w->name = "layers.3.attention.wo.weight";
    w2->name = "layers.3.feed_forward.w1.weight";
    ct_tape tp;
    ct_tape_init(&tp, be, (size_t)1 << 20);
    ct_linear l1 = {w, NULL, NULL, 1.0f, 0.0f, 1, CT_F32};
    CHECK(ct_lora_linear(&tp, x, &l1) == NULL && strstr(ct_last_error(), "wo.weight") &&
              strstr(ct_last_error(), "[4, 8]"),
          "in mismatch not reported: %s", ct_last_error());
    CHECK(ct_last_status() == CT_EINPUT, "in mismatch: status %d, want CT_EINPUT", ct_last_status());
    ct_linear l2 = {w2, a, b, 1.0f, 0.0f, 1, CT_F32};
    CHECK(ct_lora_linear(&tp, x, &l2) == NULL && strstr(ct_last_error(), "w1.weight") &&
              strstr(ct_last_error(), "[5, 2]"),
          "B shape mismatch not reported: %s", ct_last_error());
    CHECK(ct_last_status() == CT_EINPUT, "B mismatch: status %d, want CT_EINPUT", ct_last_status());
    ct_linear l3 = {w2, a, NULL, 1.0f, 0.0f, 1, CT_F32};
    CHECK(ct_lora_linear(&tp, x, &l3) == NULL, "A without B accepted");
    int64_t b6[2] = {6, 2};
    ct_tensor *b2 = ct_tensor_new(be, CT_F32, 2, b6, true);
    ct_linear l4 = {w2, a, b2, 1.0f, 1.0f, 1, CT_F32};
    CHECK(ct_lora_linear(&tp, x, &l4) == NULL && strstr(ct_last_error(), "dropout"),
          "dropout 1 accepted: %s", ct_last_error());
    ct_tape_free(&tp);
    ct_tensor_free(be, x);
    ct_tensor_free(be, w);
    ct_tensor_free(be, w2);
    ct_tensor_free(be, a);
    ct_tensor_free(be, b);
    ct_tensor_free(be, b2);
}

int main(void) {
    const lcase cases[] = {
        {"f32 p=0", 7, 13, 11, 3, CT_F32, 0.0f, true, true, 0},
        {"f32 p=0.3", 7, 13, 11, 3, CT_F32, 0.3f, true, true, 0},
        {"bf16 p=0 tiles", 7, 13, 11, 3, CT_BF16, 0.0f, true, true, 4 * 13 * 4},
        {"bf16 p=0.3 tiles", 7, 13, 11, 3, CT_BF16, 0.3f, true, true, 4 * 13 * 4},
        {"f16 p=0.3 no dx", 7, 13, 11, 3, CT_F16, 0.3f, true, false, 0},
        {"f16 p=0.3 1-row tiles", 7, 13, 11, 3, CT_F16, 0.3f, true, true, 1},
        {"f32 no lora", 7, 13, 11, 3, CT_F32, 0.0f, false, true, 0},
        {"bf16 no lora tiles", 7, 13, 11, 3, CT_BF16, 0.0f, false, true, 3 * 13 * 4},
        {"f32 p=0.3 T=1", 1, 5, 3, 1, CT_F32, 0.3f, true, true, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
    test_repeat_and_checkpoint();
    test_eval_mode();
    test_bounded_scratch();
    test_bf16_compute();
    test_errors();
    return ct_test_finish();
}
