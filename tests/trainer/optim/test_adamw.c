/* AdamW vs the textbook update in double, gradient norm and clipping vs a
 * plain double loop, non-finite detection, determinism across thread counts,
 * a save/load resume that continues bit-identically, and offload (the state
 * in host memory, the parameters on a device backend: guarded and cuda-emu)
 * against the optimizer without it, transfers counted, resumed across the
 * option both ways. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/backend.h"
#include "autograd/tape.h"
#include "tests/testutil.h"
#include "trainer/optim/adamw.h"
#include "trainer/io/checkpoint.h"

#define NP 3
static const int64_t SHAPES[NP][2] = {{3, 5}, {7, 1}, {300, 200}}; /* the last > OpenMP cutoff */
static const char *NAMES[NP] = {"layer.0.lora_A.weight", "layer.0.lora_B.weight", "big"};

typedef struct {
    ct_tensor *t[NP];
} params;

static void make_params(params *P, uint64_t seed) {
    ct_test_rng r = {seed};
    for (int i = 0; i < NP; i++) {
        P->t[i] = ct_tensor_new(ct_cpu_backend(), CT_F32, 2, SHAPES[i], true);
        P->t[i]->name = NAMES[i];
        ct_test_fill(&r, (float *)P->t[i]->data, ct_numel(P->t[i]), 0.5);
    }
}

static void free_params(params *P) {
    for (int i = 0; i < NP; i++) ct_tensor_free(ct_cpu_backend(), P->t[i]);
}

/* Grads of step s: a pure function of (s, tensor, element). */
static void fill_grads(params *P, int s) {
    for (int i = 0; i < NP; i++) {
        ct_test_rng r = {1000u + 17u * (uint64_t)s + (uint64_t)i};
        ct_test_fill(&r, (float *)P->t[i]->grad->data, ct_numel(P->t[i]), 0.1 * (1 + s % 3));
    }
}

static double lr_of(int s) { return 1e-3 * (1.0 + 0.1 * s); }

/* The textbook AdamW (Loshchilov & Hutter as torch implements it), double. */
typedef struct {
    double *p, *m, *v;
    int64_t n;
} ref_state;

static void ref_step(ref_state *R, const float *g, int t, double lr, double b1, double b2,
                     double eps, double wd) {
    for (int64_t j = 0; j < R->n; j++) {
        R->p[j] -= lr * wd * R->p[j];
        R->m[j] = b1 * R->m[j] + (1 - b1) * g[j];
        R->v[j] = b2 * R->v[j] + (1 - b2) * (double)g[j] * g[j];
        double mhat = R->m[j] / (1 - pow(b1, t)), vhat = R->v[j] / (1 - pow(b2, t));
        R->p[j] -= lr * mhat / (sqrt(vhat) + eps);
    }
}

static void test_vs_reference(double wd) {
    ct_adamw_config c = ct_adamw_defaults();
    c.weight_decay = wd;
    c.beta2 = 0.99; /* bias correction of v still large at step 10 */
    params P;
    make_params(&P, 7);
    ref_state R[NP];
    for (int i = 0; i < NP; i++) {
        R[i].n = ct_numel(P.t[i]);
        R[i].p = malloc((size_t)R[i].n * sizeof(double));
        R[i].m = calloc((size_t)R[i].n, sizeof(double));
        R[i].v = calloc((size_t)R[i].n, sizeof(double));
        for (int64_t j = 0; j < R[i].n; j++) R[i].p[j] = ((float *)P.t[i]->data)[j];
    }
    float *p0 = malloc(sizeof(float) * 15);
    memcpy(p0, P.t[0]->data, sizeof(float) * 15);
    ct_adamw *o = NULL;
    CHECK_OK(ct_adamw_new(&c, ct_cpu_backend(), P.t, NP, &o));
    for (int s = 1; s <= 10 && o; s++) {
        fill_grads(&P, s);
        for (int i = 0; i < NP; i++)
            ref_step(&R[i], (const float *)P.t[i]->grad->data, s, lr_of(s), c.beta1, c.beta2,
                     c.eps, wd);
        CHECK_OK(ct_adamw_step(o, lr_of(s)));
        CHECK(ct_adamw_get_step(o) == s, "step %lld", (long long)ct_adamw_get_step(o));
        if (s == 1) {
            /* Bias correction at step 1: m̂ = g, v̂ = g², so the move is
             * lr * g / (|g| + eps) after decay: almost exactly lr * sign(g). */
            const float *g = (const float *)P.t[0]->grad->data;
            double want[15];
            for (int j = 0; j < 15; j++)
                want[j] = p0[j] * (1 - lr_of(1) * wd) - lr_of(1) * g[j] / (fabs(g[j]) + c.eps);
            ct_check_close("step 1 closed form", (const float *)P.t[0]->data, want, 15, 1e-7, 1e-6);
        }
        if (s == 1 || s == 10) {
            for (int i = 0; i < NP; i++) {
                char what[64];
                snprintf(what, sizeof what, "wd %g step %d param %d", wd, s, i);
                ct_check_close(what, (const float *)P.t[i]->data, R[i].p, R[i].n, 2e-7, 2e-6);
                snprintf(what, sizeof what, "wd %g step %d exp_avg %d", wd, s, i);
                ct_check_close(what, ct_adamw_exp_avg(o, (size_t)i), R[i].m, R[i].n, 1e-8, 1e-5);
                snprintf(what, sizeof what, "wd %g step %d exp_avg_sq %d", wd, s, i);
                ct_check_close(what, ct_adamw_exp_avg_sq(o, (size_t)i), R[i].v, R[i].n, 1e-12,
                               1e-5);
            }
        }
    }
    /* zero_grad clears every grad. */
    CHECK_OK(ct_adamw_zero_grad(o));
    bool zero = true;
    for (int i = 0; i < NP; i++)
        for (int64_t j = 0; j < ct_numel(P.t[i]); j++)
            zero &= ((float *)P.t[i]->grad->data)[j] == 0.0f;
    CHECK(zero, "zero_grad left a non-zero grad");
    /* Moments sit in one block, 64-byte aligned slices, m before v. */
    char plan[128];
    size_t bytes = ct_adamw_plan(o, plan, sizeof plan);
    CHECK(bytes >= 2 * sizeof(float) * (15 + 7 + 60000) && strstr(plan, "AdamW moments"), "%s",
          plan);
    CHECK(((uintptr_t)ct_adamw_exp_avg(o, 1) & 63) == 0, "exp_avg slice not aligned");
    CHECK(ct_adamw_exp_avg_sq(o, 0) > ct_adamw_exp_avg(o, NP - 1), "v must follow all m");
    ct_adamw_free(o);
    free(p0);
    for (int i = 0; i < NP; i++) {
        free(R[i].p);
        free(R[i].m);
        free(R[i].v);
    }
    free_params(&P);
}

/* Runs `steps` steps with `threads` OpenMP threads; returns the final params
 * concatenated (malloc'ed) and the grad norm of the last grads. */
static float *run_steps(int threads, int steps, double *norm) {
    omp_set_num_threads(threads);
    params P;
    make_params(&P, 11);
    ct_adamw_config c = ct_adamw_defaults();
    ct_adamw *o = NULL;
    CHECK_OK(ct_adamw_new(&c, ct_cpu_backend(), P.t, NP, &o));
    for (int s = 1; s <= steps && o; s++) {
        fill_grads(&P, s);
        CHECK_OK(ct_grad_clip_norm(ct_cpu_backend(), P.t, NP, 1.0, norm));
        CHECK_OK(ct_adamw_step(o, lr_of(s)));
    }
    int64_t total = 0;
    for (int i = 0; i < NP; i++) total += ct_numel(P.t[i]);
    float *out = malloc((size_t)total * sizeof(float)), *at = out;
    for (int i = 0; i < NP; i++) {
        memcpy(at, P.t[i]->data, ct_nbytes(P.t[i]));
        at += ct_numel(P.t[i]);
    }
    ct_adamw_free(o);
    free_params(&P);
    return out;
}

static void test_determinism(void) {
    int64_t total = 15 + 7 + 60000;
    double n1, n1b, n2, n3;
    float *a = run_steps(1, 4, &n1), *b = run_steps(1, 4, &n1b), *c = run_steps(2, 4, &n2),
          *d = run_steps(3, 4, &n3);
    CHECK(memcmp(a, b, (size_t)total * 4) == 0, "same inputs, same threads: params differ");
    CHECK(memcmp(a, c, (size_t)total * 4) == 0, "1 vs 2 threads: params differ");
    CHECK(memcmp(a, d, (size_t)total * 4) == 0, "1 vs 3 threads: params differ");
    CHECK(n1 == n1b && n1 == n2 && n1 == n3, "grad norms differ: %.17g %.17g %.17g", n1, n2, n3);
    free(a);
    free(b);
    free(c);
    free(d);
    omp_set_num_threads(2);
}

static double hand_norm(params *P) {
    double s = 0;
    for (int i = 0; i < NP; i++) {
        const float *g = (const float *)P->t[i]->grad->data;
        for (int64_t j = 0; j < ct_numel(P->t[i]); j++) s += (double)g[j] * g[j];
    }
    return sqrt(s);
}

static void test_clipping(void) {
    params P;
    make_params(&P, 3);
    fill_grads(&P, 2); /* norm ≈ 0.2 * sqrt(60022) ≈ 49 */
    double want = hand_norm(&P), norm = 0;
    CHECK_OK(ct_grad_global_norm(ct_cpu_backend(), P.t, NP, &norm));
    CHECK(fabs(norm - want) <= 1e-12 * want, "norm %.17g vs %.17g", norm, want);

    /* max_norm above the norm: grads untouched, bit for bit. */
    float *keep = malloc(ct_nbytes(P.t[2]));
    memcpy(keep, P.t[2]->grad->data, ct_nbytes(P.t[2]));
    CHECK_OK(ct_grad_clip_norm(ct_cpu_backend(), P.t, NP, want * 2, &norm));
    CHECK(memcmp(keep, P.t[2]->grad->data, ct_nbytes(P.t[2])) == 0,
          "grads changed without clipping");

    /* max_norm 1: grads scaled by 1 / (norm + 1e-6), as torch. */
    double *scaled[NP];
    for (int i = 0; i < NP; i++) {
        int64_t n = ct_numel(P.t[i]);
        scaled[i] = malloc((size_t)n * sizeof(double));
        for (int64_t j = 0; j < n; j++)
            scaled[i][j] = ((float *)P.t[i]->grad->data)[j] * (1.0 / (want + 1e-6));
    }
    CHECK_OK(ct_grad_clip_norm(ct_cpu_backend(), P.t, NP, 1.0, &norm));
    CHECK(fabs(norm - want) <= 1e-12 * want, "clip returns the norm before clipping: %g", norm);
    for (int i = 0; i < NP; i++) {
        ct_check_close("clipped grads", (const float *)P.t[i]->grad->data, scaled[i],
                       ct_numel(P.t[i]), 1e-9, 1e-6);
        free(scaled[i]);
    }
    CHECK(fabs(hand_norm(&P) - 1.0) < 1e-5, "clipped norm %g", hand_norm(&P));
    CHECK(ct_grad_clip_norm(ct_cpu_backend(), P.t, NP, 0.0, &norm) == CT_EINPUT, "max_norm 0 accepted");

    /* Large but finite grads are not mistaken for overflow. */
    ((float *)P.t[1]->grad->data)[3] = 3e38f;
    CHECK_OK(ct_grad_global_norm(ct_cpu_backend(), P.t, NP, &norm));
    CHECK(isfinite(norm) && norm >= 3e38, "norm %g", norm);

    /* NaN / Inf: distinct status naming tensor and element; grads untouched. */
    ((float *)P.t[1]->grad->data)[3] = 0.5f;
    ((float *)P.t[2]->grad->data)[12345] = NAN;
    memcpy(keep, P.t[2]->grad->data, ct_nbytes(P.t[2]));
    int rc = ct_grad_clip_norm(ct_cpu_backend(), P.t, NP, 1e-3, &norm);
    CHECK(rc == CT_ENONFINITE, "NaN grad gave %d", rc);
    CHECK(strstr(ct_last_error(), "'big'") && strstr(ct_last_error(), "NaN") &&
              strstr(ct_last_error(), "12345"), "message: %s", ct_last_error());
    CHECK(memcmp(keep, P.t[2]->grad->data, ct_nbytes(P.t[2])) == 0, "grads changed on NaN");
    ((float *)P.t[2]->grad->data)[12345] = 0.0f;
    ((float *)P.t[0]->grad->data)[4] = -INFINITY;
    rc = ct_grad_global_norm(ct_cpu_backend(), P.t, NP, &norm);
    CHECK(rc == CT_ENONFINITE && isinf(norm), "Inf grad gave %d, norm %g", rc, norm);
    CHECK(strstr(ct_last_error(), NAMES[0]) && strstr(ct_last_error(), "Inf"), "message: %s",
          ct_last_error());
    free(keep);
    free_params(&P);
}

static void test_bad_input(void) {
    params P;
    make_params(&P, 5);
    ct_adamw_config c = ct_adamw_defaults();
    ct_adamw *o = NULL;
    c.beta1 = 1.0;
    CHECK(ct_adamw_new(&c, ct_cpu_backend(), P.t, NP, &o) == CT_EINPUT && !o, "beta1 = 1 accepted");
    c = ct_adamw_defaults();
    c.eps = -1;
    CHECK(ct_adamw_config_check(&c, "cfg.yaml") == CT_EINPUT && strstr(ct_last_error(), "eps"),
          "%s", ct_last_error());
    c = ct_adamw_defaults();
    ct_tensor *g = P.t[1]->grad;
    P.t[1]->grad = NULL;
    CHECK(ct_adamw_new(&c, ct_cpu_backend(), P.t, NP, &o) == CT_EINPUT && strstr(ct_last_error(), NAMES[1]), "%s",
          ct_last_error());
    P.t[1]->grad = g;
    CHECK_OK(ct_adamw_new(&c, ct_cpu_backend(), P.t, NP, &o));
    CHECK(ct_adamw_step(o, -1e-3) == CT_EINPUT, "negative lr accepted");
    CHECK(ct_adamw_step(o, NAN) == CT_EINPUT, "NaN lr accepted");
    CHECK(ct_adamw_get_step(o) == 0, "a refused step counted");
    ct_adamw_free(o);
    free_params(&P);
}

/* 3 steps, save params + optimizer, load into fresh objects, 2 more steps:
 * identical to 5 uninterrupted steps. */
static void test_resume(void) {
    char dir[] = "/tmp/ct_adamw_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[256];
    snprintf(path, sizeof path, "%s/iter_3.h5", dir);
    ct_adamw_config c = ct_adamw_defaults();
    params A, B;
    make_params(&A, 21);
    make_params(&B, 99); /* different start: everything must come from the file */
    ct_adamw *oa = NULL, *ob = NULL;
    CHECK_OK(ct_adamw_new(&c, ct_cpu_backend(), A.t, NP, &oa));
    CHECK_OK(ct_adamw_new(&c, ct_cpu_backend(), B.t, NP, &ob));
    for (int s = 1; s <= 3; s++) {
        fill_grads(&A, s);
        CHECK_OK(ct_adamw_step(oa, lr_of(s)));
    }
    ct_ckpt_writer *w = NULL;
    CHECK_OK(ct_ckpt_writer_open(path, &w));
    for (int i = 0; i < NP; i++)
        CHECK_OK(ct_ckpt_put_f32(w, NAMES[i], 2, SHAPES[i], (const float *)A.t[i]->data));
    CHECK_OK(ct_adamw_save(oa, w, "optim"));
    CHECK_OK(ct_ckpt_writer_commit(w));
    ct_ckpt_reader *r = NULL;
    CHECK_OK(ct_ckpt_open(path, &r));
    for (int i = 0; r && i < NP; i++)
        CHECK_OK(ct_ckpt_get_f32(r, NAMES[i], 2, SHAPES[i], (float *)B.t[i]->data));
    if (r) CHECK_OK(ct_adamw_load(ob, r, "optim"));
    CHECK(ct_adamw_get_step(ob) == 3, "step after load %lld", (long long)ct_adamw_get_step(ob));
    /* A load under the wrong prefix fails and leaves the optimizer alone. */
    if (r) {
        CHECK(ct_adamw_load(ob, r, "nope") == CT_EINPUT && strstr(ct_last_error(), "nope/step") &&
                  strstr(ct_last_error(), path), "%s", ct_last_error());
        CHECK(ct_adamw_get_step(ob) == 3, "failed load changed the step");
    }
    ct_ckpt_close(r);
    for (int s = 4; s <= 5; s++) {
        fill_grads(&A, s);
        fill_grads(&B, s);
        CHECK_OK(ct_adamw_step(oa, lr_of(s)));
        CHECK_OK(ct_adamw_step(ob, lr_of(s)));
    }
    for (int i = 0; i < NP; i++) {
        CHECK(memcmp(A.t[i]->data, B.t[i]->data, ct_nbytes(A.t[i])) == 0, "param %d differs", i);
        CHECK(memcmp(ct_adamw_exp_avg_sq(oa, (size_t)i), ct_adamw_exp_avg_sq(ob, (size_t)i),
                     ct_nbytes(A.t[i])) == 0, "exp_avg_sq %d differs", i);
    }
    ct_adamw_free(oa);
    ct_adamw_free(ob);
    free_params(&A);
    free_params(&B);
    unlink(path);
    rmdir(dir);
}

/* ---- offload ---- */

/* The parameters on a device backend as ct_lora lays them out: tensors 0 and
 * 1 adjacent in one value block and one grad block (one run), tensor 2 in
 * blocks of its own (a second run). */
typedef struct {
    const ct_backend *be;
    float *v[2], *g[2]; /* blocks: [numel 0 + numel 1], [numel 2] */
    ct_tensor hdr[NP], grad[NP];
    ct_tensor *t[NP];
} dev_params;

static void dev_make(dev_params *D, const ct_backend *be, const params *P) {
    memset(D, 0, sizeof *D);
    D->be = be;
    int64_t n0 = ct_numel(P->t[0]), n1 = ct_numel(P->t[1]), n2 = ct_numel(P->t[2]);
    D->v[0] = be->mem.alloc((size_t)(n0 + n1) * 4), D->g[0] = be->mem.alloc((size_t)(n0 + n1) * 4);
    D->v[1] = be->mem.alloc((size_t)n2 * 4), D->g[1] = be->mem.alloc((size_t)n2 * 4);
    float *at[NP] = {D->v[0], D->v[0] + n0, D->v[1]}, *gat[NP] = {D->g[0], D->g[0] + n0, D->g[1]};
    for (int i = 0; i < NP; i++) {
        CHECK_OK(ct_tensor_init(&D->hdr[i], CT_F32, be->device, 2, SHAPES[i], at[i]));
        CHECK_OK(ct_tensor_init(&D->grad[i], CT_F32, be->device, 2, SHAPES[i], gat[i]));
        D->hdr[i].name = NAMES[i];
        D->hdr[i].grad = &D->grad[i];
        D->hdr[i].requires_grad = true;
        D->t[i] = &D->hdr[i];
        CHECK_OK(be->upload(at[i], P->t[i]->data, ct_nbytes(P->t[i])));
    }
}

static void dev_free(dev_params *D) {
    for (int k = 0; k < 2; k++) D->be->mem.free(D->v[k]), D->be->mem.free(D->g[k]);
}

/* The host grads of P (fill_grads) uploaded into D's grads. */
static void dev_grads(dev_params *D, params *P, int s) {
    fill_grads(P, s);
    for (int i = 0; i < NP; i++) CHECK_OK(D->be->upload(D->grad[i].data, P->t[i]->grad->data, ct_nbytes(P->t[i])));
}

/* D's parameters downloaded, concatenated (malloc'ed). */
static float *dev_values(const dev_params *D) {
    int64_t total = 0;
    for (int i = 0; i < NP; i++) total += ct_numel(D->t[i]);
    float *out = ct_test_need(malloc((size_t)total * sizeof *out)), *at = out;
    for (int i = 0; i < NP; i++) {
        CHECK_OK(D->be->download(at, D->t[i]->data, ct_nbytes(D->t[i])));
        at += ct_numel(D->t[i]);
    }
    return out;
}

/* Transfers through a counting copy of a backend. */
static const ct_backend *g_counted;
static int g_uploads, g_downloads;
static int count_upload(void *dst, const void *src, size_t n) { return g_uploads++, g_counted->upload(dst, src, n); }
static int count_download(void *dst, const void *src, size_t n) {
    return g_downloads++, g_counted->download(dst, src, n);
}

static ct_adamw *new_opt(const ct_backend *be, dev_params *D, bool offload) {
    ct_adamw_config c = ct_adamw_defaults();
    c.weight_decay = 0.05;
    c.offload = offload;
    ct_adamw *o = NULL;
    CHECK_OK(ct_adamw_new(&c, be, D->t, NP, &o));
    return o;
}

/* Saves o's state and D's parameters to path. */
static void save_state(const char *path, ct_adamw *o, const dev_params *D) {
    ct_ckpt_writer *w = NULL;
    CHECK_OK(ct_ckpt_writer_open(path, &w));
    for (int i = 0; w && i < NP; i++) CHECK_OK(ct_ckpt_put_tensor(w, NAMES[i], D->be, D->t[i]));
    if (w) CHECK_OK(ct_adamw_save(o, w, "optim"));
    CHECK_OK(ct_ckpt_writer_commit(w));
}

/* Restores into o and D; params_first: the parameters before the moments. */
static void load_state(const char *path, ct_adamw *o, dev_params *D, bool params_first) {
    ct_ckpt_reader *r = NULL;
    CHECK_OK(ct_ckpt_open(path, &r));
    if (!r) return;
    if (!params_first) CHECK_OK(ct_adamw_load(o, r, "optim"));
    for (int i = 0; i < NP; i++) CHECK_OK(ct_ckpt_get_tensor(r, NAMES[i], D->be, D->t[i]));
    if (params_first) CHECK_OK(ct_adamw_load(o, r, "optim"));
    ct_ckpt_close(r);
}

/* On `real` (a device backend): five steps of an offloaded optimizer equal
 * five steps of one without offload, bit for bit (the CPU's update and the
 * device's give the same bits: the guarded backend runs the CPU kernels, the
 * CUDA kernel rounds each operation as the CPU does); one download of the
 * grads and one upload of the parameters per run (two runs) and step, plus a
 * download of the parameters on the first step and after a load; a
 * checkpoint of either resumes in the other (parameters loaded before or
 * after the moments). */
static void test_offload_on(const ct_backend *real) {
    static ct_backend counted;
    counted = *real;
    counted.upload = count_upload;
    counted.download = count_download;
    g_counted = real;
    const ct_backend *be = &counted;
    char dir[] = "/tmp/ct_adamw_off_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char pa[256], pb[256];
    snprintf(pa, sizeof pa, "%s/plain.h5", dir);
    snprintf(pb, sizeof pb, "%s/offload.h5", dir);
    params P;
    make_params(&P, 31);
    dev_params A, B, C, E;
    dev_make(&A, be, &P), dev_make(&B, be, &P);
    ct_adamw *oa = new_opt(be, &A, false), *ob = new_opt(be, &B, true);
    if (!oa || !ob) goto out;
    CHECK(ct_adamw_state_backend(oa) == be && ct_adamw_state_backend(ob) == ct_cpu_backend(),
          "%s: state backends %s and %s", real->name, ct_adamw_state_backend(oa)->name,
          ct_adamw_state_backend(ob)->name);
    char plan[256];
    ct_adamw_plan(ob, plan, sizeof plan);
    CHECK(strstr(plan, "in host memory (optimizer_offload)") != NULL, "offload plan: %s", plan);
    ct_adamw_plan(oa, plan, sizeof plan);
    CHECK(strstr(plan, real->name) != NULL, "plan without offload: %s", plan);
    for (int s = 1; s <= 5; s++) {
        dev_grads(&A, &P, s), dev_grads(&B, &P, s);
        CHECK_OK(ct_adamw_step(oa, lr_of(s)));
        g_uploads = g_downloads = 0;
        CHECK_OK(ct_adamw_step(ob, lr_of(s)));
        int want_down = s == 1 ? 4 : 2; /* grads of both runs (+ the parameters on the first step) */
        CHECK(g_uploads == 2 && g_downloads == want_down, "%s step %d: %d uploads, %d downloads (want 2, %d)",
              real->name, s, g_uploads, g_downloads, want_down);
        if (s == 3) save_state(pa, oa, &A), save_state(pb, ob, &B);
    }
    float *va = dev_values(&A), *vb = dev_values(&B);
    int64_t total = 15 + 7 + 60000;
    double worst = 0;
    for (int64_t j = 0; j < total; j++) worst = fmax(worst, fabs((double)va[j] - vb[j]));
    CHECK(memcmp(va, vb, (size_t)total * 4) == 0, "%s: offloaded parameters differ by up to %.3g", real->name,
          worst);
    /* the moments: the offloaded ones are host memory */
    float *m = ct_test_need(malloc(ct_nbytes(P.t[2])));
    CHECK_OK(be->download(m, ct_adamw_exp_avg_sq(oa, 2), ct_nbytes(P.t[2])));
    CHECK(memcmp(m, ct_adamw_exp_avg_sq(ob, 2), ct_nbytes(P.t[2])) == 0, "%s: exp_avg_sq differs", real->name);
    free(m);
    /* Resume across the option: C (no offload) from the offloaded run's
     * checkpoint, E (offload) from the other; two more steps each. */
    free_params(&P);
    make_params(&P, 77); /* other starting values: everything must come from the files */
    dev_make(&C, be, &P), dev_make(&E, be, &P);
    ct_adamw *oc = new_opt(be, &C, false), *oe = new_opt(be, &E, true);
    dev_grads(&E, &P, 1);
    if (oe) CHECK_OK(ct_adamw_step(oe, lr_of(1))); /* a step before the load: its state must be replaced */
    if (oc && oe) {
        load_state(pb, oc, &C, true);
        load_state(pa, oe, &E, false); /* moments first: the host copy is re-read at the next step */
        for (int s = 4; s <= 5; s++) {
            dev_grads(&C, &P, s), dev_grads(&E, &P, s);
            CHECK_OK(ct_adamw_step(oc, lr_of(s)));
            CHECK_OK(ct_adamw_step(oe, lr_of(s)));
        }
        float *vc = dev_values(&C), *ve = dev_values(&E);
        CHECK(memcmp(vc, va, (size_t)total * 4) == 0, "%s: resumed without offload from an offloaded checkpoint: "
              "parameters differ", real->name);
        CHECK(memcmp(ve, va, (size_t)total * 4) == 0, "%s: resumed with offload from a checkpoint without: "
              "parameters differ", real->name);
        free(vc), free(ve);
    }
    printf("offload on %s: 5 steps equal bit for bit to the optimizer without offload (max diff %g), 2 uploads and "
           "2 downloads a step, resumed across the option both ways\n", real->name, worst);
    ct_adamw_free(oc), ct_adamw_free(oe);
    dev_free(&C), dev_free(&E);
    free(va), free(vb);
out:
    ct_adamw_free(oa), ct_adamw_free(ob);
    dev_free(&A), dev_free(&B);
    free_params(&P);
    unlink(pa), unlink(pb);
    rmdir(dir);
}

/* Offload on the CPU backend changes nothing: the state is host memory
 * already, no copies are made, the plan says so. */
static void test_offload_cpu(void) {
    params P;
    make_params(&P, 5);
    ct_adamw_config c = ct_adamw_defaults();
    c.offload = true;
    ct_adamw *o = NULL;
    CHECK_OK(ct_adamw_new(&c, ct_cpu_backend(), P.t, NP, &o));
    if (o) {
        char plan[256];
        ct_adamw_plan(o, plan, sizeof plan);
        CHECK(ct_adamw_state_backend(o) == ct_cpu_backend() && strstr(plan, "on the host") &&
                  !strstr(plan, "optimizer_offload"), "cpu with offload: %s", plan);
    }
    ct_adamw_free(o);
    free_params(&P);
}

static void test_offload(void) {
    test_offload_cpu();
    const ct_backend *bes[2] = {ct_guarded_backend(), ct_cuda_emu_backend()};
    for (int k = 0; k < 2; k++) {
        if (bes[k]) test_offload_on(bes[k]);
        else printf("offload: backend %d skipped (%s)\n", k, ct_last_error());
    }
}

int main(void) {
    test_vs_reference(0.0);
    test_vs_reference(0.1);
    test_clipping();
    test_determinism();
    test_bad_input();
    test_resume();
    test_offload();
    return ct_test_finish();
}
