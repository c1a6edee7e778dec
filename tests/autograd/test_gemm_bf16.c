/* bf16 GEMMs (cpu/gemm_bf16.c): ct_bf16_gemm in all eight layouts (A or Aᵀ,
 * B or Bᵀ, B bf16 or f32) and its wrappers ct_bf16_gemm_nt / ct_bf16_gemm_nn,
 * on the AVX512-BF16 fast path (skipped, with a note, on CPUs without it) and
 * on the cblas_sgemm fallback, against a double-precision GEMM over the
 * bf16-rounded inputs: odd K, K = 1 and 0, tiny and ragged M/N, several K
 * blocks and M chunks, padded row strides (the padding must stay untouched),
 * alpha != 1, beta 0 (over NaN garbage), 1 and 0.5. Also: round-to-nearest-even
 * of the f32 operands (A, Aᵀ and f32 B) on exact sums, bit-identical results
 * with 1, 2 and 3 threads, the arena rewound, CT_NO_BF16_DOT, failing scratch
 * and bad arguments. The shared bf16 rows (ct_bf16_rows_make / _cols /
 * ct_bf16_gemm_rows) give C bit-identical to ct_bf16_gemm with the f32 A.
 *
 * Error bound: every product bf16(a)·bf16(b) is exact in fp32, so the only
 * errors are the fp32 additions (and the alpha/beta epilogue). Recursive
 * summation of K terms is off by at most (K-1)·2^-24·Σ|ab| (worst case); for
 * these random-sign data the error is a random walk of about 2^-24 relative to
 * Σ|ab| (the partial sums are ~√K terms, the rounding errors add in
 * quadrature). TOL = 2e-6 of Σ|alpha·ab| + |beta·c| is ~30× that, yet a
 * missing or doubled product (~1/K of Σ|ab|, >= 1e-3 here for K > 1) or a
 * wrongly rounded operand (~2^-9 per product, ~2^-9/√K >= 6e-5 of Σ|ab|) fails
 * it; rounding() pins the ties exactly. The largest ratio seen is printed. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/arena.h"
#include "autograd/cpu/gemm_bf16.h"
#include "autograd/ct_inline.h"
#include "testutil.h"

#define TOL 2e-6

static double g_max_rel[2]; /* fast, fallback: largest |c - ref| / (Σ|alpha·ab| + |beta·c_old|) */

/* Layout bits: op(A) = Aᵀ, op(B) = Bᵀ (B [N, K]; the nt wrapper's layout), B f32. */
enum { TA = 1, TB = 2, BF32 = 4 };

typedef struct {
    int lay; /* TA | TB | BF32 */
    int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
} gcase;

static const char *lay_name(int lay) {
    static const char *names[8] = {"nn bf16", "tn bf16", "nt bf16", "tt bf16",
                                   "nn f32",  "tn f32",  "nt f32",  "tt f32"};
    return names[lay & 7];
}

/* Rows of the stored A and B. */
static int64_t a_rows(const gcase *g) { return g->lay & TA ? g->K : g->M; }
static int64_t b_rows(const gcase *g) { return g->lay & TB ? g->N : g->K; }

/* Inputs of one case and its reference (on the heap). */
typedef struct {
    float *a;      /* [a_rows, lda] */
    void *b;       /* [b_rows, ldb] bf16 bits or f32 */
    float *c0;     /* [M, ldc] C before the call; padding holds a sentinel */
    double *ref;   /* [M, N] alpha·Σ bf16(a)·bf16(b) + beta·c0 */
    double *scale; /* [M, N] Σ|alpha·a·b| + |beta·c0|: the error scale */
} gdata;

static double bf16r(float x) { return ct_bf16_to_f32(ct_f32_to_bf16(x)); }

/* Element (row, col) of the stored B as its bf16 value. */
static double b_val(const gcase *g, const void *b, int64_t row, int64_t col) {
    size_t i = (size_t)(row * g->ldb + col);
    return g->lay & BF32 ? bf16r(((const float *)b)[i]) : ct_bf16_to_f32(((const uint16_t *)b)[i]);
}

static void make(const gcase *g, uint64_t seed, gdata *d) {
    ct_test_rng rng = {seed};
    int64_t an = a_rows(g) * g->lda, bn = b_rows(g) * g->ldb;
    d->a = ct_test_need(malloc(sizeof(float) * (size_t)(an + 1)));
    d->b = ct_test_need(malloc(sizeof(float) * (size_t)(bn + 1)));
    d->c0 = ct_test_need(malloc(sizeof(float) * (size_t)(g->M * g->ldc + 1)));
    d->ref = ct_test_need(malloc(sizeof(double) * (size_t)(g->M * g->N + 1)));
    d->scale = ct_test_need(malloc(sizeof(double) * (size_t)(g->M * g->N + 1)));
    ct_test_fill(&rng, d->a, an, 1.0);
    if (g->lay & BF32)
        ct_test_fill(&rng, d->b, bn, 0.5);
    else
        for (int64_t i = 0; i < bn; i++)
            ((uint16_t *)d->b)[i] = ct_f32_to_bf16((float)(0.5 * ct_test_normal(&rng)));
    for (int64_t m = 0; m < g->M; m++)
        for (int64_t j = 0; j < g->ldc; j++)
            d->c0[m * g->ldc + j] = j >= g->N ? 12345.0f /* padding sentinel */
                                    : g->beta == 0.0f ? NAN
                                                      : (float)ct_test_normal(&rng);
    /* The rounded inputs in double: ad [M, K] = op(A), bd [N, K] = op(B)ᵀ. */
    double *ad = ct_test_need(malloc(sizeof(double) * (size_t)(g->M * g->K + 1)));
    double *bd = ct_test_need(malloc(sizeof(double) * (size_t)(g->N * g->K + 1)));
    for (int64_t m = 0; m < g->M; m++)
        for (int64_t k = 0; k < g->K; k++)
            ad[m * g->K + k] = bf16r(g->lay & TA ? d->a[k * g->lda + m] : d->a[m * g->lda + k]);
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t k = 0; k < g->K; k++)
            bd[n * g->K + k] = g->lay & TB ? b_val(g, d->b, n, k) : b_val(g, d->b, k, n);
    for (int64_t m = 0; m < g->M; m++)
        for (int64_t n = 0; n < g->N; n++) {
            const double *ar = ad + m * g->K, *br = bd + n * g->K;
            double acc = 0.0, abs = 0.0;
            for (int64_t k = 0; k < g->K; k++) {
                double p = ar[k] * br[k];
                acc += p;
                abs += fabs(p);
            }
            double cold = g->beta == 0.0f ? 0.0 : (double)g->beta * d->c0[m * g->ldc + n];
            d->ref[m * g->N + n] = g->alpha * acc + cold;
            d->scale[m * g->N + n] = fabs(g->alpha) * abs + fabs(cold);
        }
    free(ad);
    free(bd);
}

static void drop(gdata *d) {
    free(d->a);
    free(d->b);
    free(d->c0);
    free(d->ref);
    free(d->scale);
}

/* bf16 B with op(A) = A goes through the wrappers on odd seeds (their own
 * entry points), else through ct_bf16_gemm. */
static int call(const gcase *g, const gdata *d, float *c, ct_arena *ar, bool wrapper) {
    if (wrapper && !(g->lay & (TA | BF32)))
        return g->lay & TB ? ct_bf16_gemm_nt(g->M, g->N, g->K, g->alpha, d->a, g->lda, d->b, g->ldb,
                                             g->beta, c, g->ldc, ar)
                           : ct_bf16_gemm_nn(g->M, g->N, g->K, g->alpha, d->a, g->lda, d->b, g->ldb,
                                             g->beta, c, g->ldc, ar);
    return ct_bf16_gemm(g->lay & TA, g->lay & TB, g->M, g->N, g->K, g->alpha, d->a, g->lda, d->b,
                        g->lay & BF32 ? CT_F32 : CT_BF16, g->ldb, g->beta, c, g->ldc, ar);
}

/* Runs one case on the current path into c (a copy of c0) and checks it
 * against the reference and the padding; returns false on a failed check. */
static bool run_check(const char *path, const gcase *g, const gdata *d, float *c, ct_arena *ar,
                      bool wrapper) {
    double *max_rel = &g_max_rel[strcmp(path, "fallback") == 0];
    memcpy(c, d->c0, sizeof(float) * (size_t)(g->M * g->ldc));
    size_t used = ar->used;
    int rc = call(g, d, c, ar, wrapper);
    CHECK_OK(rc);
    CHECK(ar->used == used, "%s: scratch not rewound (%zu -> %zu bytes)", path, used, ar->used);
    if (rc) return false;
    int64_t bad = 0, worst = -1;
    double worst_excess = 0.0;
    for (int64_t m = 0; m < g->M; m++)
        for (int64_t j = 0; j < g->ldc; j++) {
            float got = c[m * g->ldc + j];
            if (j >= g->N) { /* padding of the row stride */
                if (got != 12345.0f) bad++;
                continue;
            }
            double err = fabs((double)got - d->ref[m * g->N + j]);
            double sc = d->scale[m * g->N + j];
            double lim = TOL * sc + 1e-30;
            if (sc > 0.0 && err / sc > *max_rel) *max_rel = err / sc;
            if (!(err <= lim)) {
                bad++;
                double ex = isnan(err) ? INFINITY : err / lim;
                if (worst < 0 || ex > worst_excess) worst = m * g->N + j, worst_excess = ex;
            }
        }
    CHECK(bad == 0,
          "%s %s M=%lld N=%lld K=%lld ld=%lld/%lld/%lld alpha=%g beta=%g: %lld bad; worst [%lld] "
          "got %.9g want %.9g (scale %.3g)",
          path, lay_name(g->lay), (long long)g->M, (long long)g->N, (long long)g->K,
          (long long)g->lda, (long long)g->ldb, (long long)g->ldc, g->alpha, g->beta,
          (long long)bad, (long long)worst,
          worst < 0 ? 0.0 : (double)c[(worst / g->N) * g->ldc + worst % g->N],
          worst < 0 ? 0.0 : d->ref[worst], worst < 0 ? 0.0 : d->scale[worst]);
    return bad == 0;
}

/* One case on both paths (the fast one where the CPU has it). */
static void check_case(const gcase *g, uint64_t seed, bool fast, ct_arena *ar) {
    gdata d;
    make(g, seed, &d);
    float *c = ct_test_need(malloc(sizeof(float) * (size_t)(g->M * g->ldc + 1)));
    if (fast) {
        ct_bf16_force_fallback(false);
        run_check("fast", g, &d, c, ar, seed % 2);
    }
    ct_bf16_force_fallback(true);
    run_check("fallback", g, &d, c, ar, seed % 2);
    ct_bf16_force_fallback(false);
    free(c);
    drop(&d);
}

/* A case with dense strides plus `pad` (0: dense) in every layout's terms. */
static gcase mk(int lay, int64_t M, int64_t N, int64_t K, int pad, float alpha, float beta) {
    int64_t acols = lay & TA ? M : K, bcols = lay & TB ? K : N;
    return (gcase){lay, M, N, K, acols + pad * 5, bcols + pad * 3, N + pad * 7, alpha, beta};
}

static void shapes(bool fast, ct_arena *ar) {
    static const int64_t Ms[] = {1, 2, 3, 5, 17, 64, 130};
    static const int64_t Ns[] = {1, 7, 33, 100, 257};
    static const int64_t Ks[] = {1, 2, 3, 31, 64, 385, 1100, 17, 768, 5};
    static const float betas[] = {0.0f, 1.0f, 0.5f};
    int i = 0;
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++, i++)
            for (int lay = 0; lay < 8; lay++) {
                int64_t M = Ms[mi], N = Ns[ni], K = Ks[(size_t)(i + 3 * lay) % 10];
                /* big shapes get the small K, to keep the reference cheap */
                if (M * N > 8000 && K > 400) K = K % 2 ? 385 : 64;
                if (M * N <= 8000 && (i + lay) % 4 == 1) K = 1100;
                int pad = (i + lay) % 3; /* 0: dense; else strides wider than the rows */
                gcase g = mk(lay, M, N, K, pad, (i + lay) % 2 ? 0.75f : 1.0f,
                             betas[(size_t)(i + lay) % 3]);
                check_case(&g, 100 + (uint64_t)i * 8 + (uint64_t)lay, fast, ar);
            }
    /* Several K blocks (2048 k each) with beta != 0 (partial sums kept apart
     * from C) and 0 (partial sums in C), a last block of one odd pair, two M
     * chunks (the packed A is bounded: 16 MiB), N past one column block (128);
     * the LoRA shapes (r = 64: dB = dYᵀ·u, dA = gᵀ·x, u = x·Aᵀ, dx = g·A). */
    gcase big[] = {mk(TB, 270, 20, 8193, 0, 1.0f, 0.5f),
                   {0, 270, 20, 8193, 8200, 20, 20, -1.5f, 0.0f},
                   mk(TB, 1100, 3, 8193, 0, 1.0f, 1.0f),
                   {0, 37, 300, 2049, 2049, 301, 305, 0.5f, 0.5f},
                   {TB, 64, 300, 1100, 1100, 1103, 300, 1.0f, 1.0f},
                   mk(TA | BF32, 21, 19, 4100, 1, 1.0f, 0.5f),
                   mk(TA | TB | BF32, 40, 9, 2051, 2, -0.5f, 0.0f),
                   mk(BF32, 13, 150, 4099, 0, 1.0f, 1.0f),
                   mk(TB | BF32, 1100, 5, 8193, 0, 1.0f, 0.0f),
                   mk(TA, 1100, 3, 8193, 1, 1.0f, 1.0f),
                   mk(TA | BF32, 200, 64, 512, 0, 0.25f, 1.0f),
                   mk(TA | BF32, 64, 200, 512, 3, 1.0f, 1.0f),
                   mk(TB | BF32, 512, 64, 200, 0, 1.0f, 0.0f),
                   mk(BF32, 512, 200, 64, 1, 1.0f, 1.0f),
                   /* M past the row cap of the partial-sum buffer (2040 rows:
                    * the packed A once overflowed when the cap was no multiple
                    * of 12) and, without that buffer, one chunk of 2100 rows */
                   mk(TB, 2049, 5, 4100, 1, 1.0f, 0.5f),
                   mk(TA | BF32, 2100, 64, 300, 0, 1.0f, 1.0f),
                   mk(TB, 2049, 33, 100, 1, 1.0f, 0.0f),
                   /* A's row-major copy with a padded row stride (K = 512, 2048) */
                   mk(TB, 40, 70, 2048, 1, 1.0f, 0.5f),
                   mk(BF32, 30, 50, 512, 0, 1.0f, 1.0f)};
    for (size_t j = 0; j < sizeof big / sizeof big[0]; j++) check_case(&big[j], 900 + j, fast, ar);
}

/* Ties of f32 -> bf16 must round to even, and exact sums must come out exact:
 * the f32 A (either layout) and the f32 B, against exact bf16 B values. */
static void rounding(bool fast, ct_arena *ar) {
    enum { M = 13, N = 35, K = 41 };
    /* halfway cases: 1+2^-8 -> 1, 1+3·2^-8 -> 1+2^-6, 2+2^-7 -> 2, -(1+2^-8) -> -1 */
    static const float ties[] = {1.00390625f, 1.01171875f, 2.0078125f, -1.00390625f, 3.0f, -0.5f};
    static float a[M * K], at[K * M], c[M * N];
    static float bt32[N * K], bn32[K * N]; /* f32 B with ties, [N, K] and [K, N] */
    static uint16_t bt[N * K], bn[K * N];  /* exact bf16 B, [N, K] and [K, N] */
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) a[m * K + k] = at[k * M + m] = ties[(m * 7 + k * 3) % 6];
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            float v = (float)((n * 5 + k * 11) % 9 - 4); /* small integers: exact in bf16 */
            bt[n * K + k] = bn[k * N + n] = ct_f32_to_bf16(v);
            bt32[n * K + k] = bn32[k * N + n] = ties[(n * 5 + k) % 6];
        }
    for (int path = fast ? 0 : 1; path < 2; path++) {
        ct_bf16_force_fallback(path == 1);
        for (int lay = 0; lay < 8; lay++) {
            bool ta = lay & TA, tb = lay & TB, f32 = lay & BF32;
            const void *b = f32 ? (tb ? (const void *)bt32 : (const void *)bn32)
                                : (tb ? (const void *)bt : (const void *)bn);
            /* f32 B: A is the small integers (B's values, as f32), B has the ties */
            static float ai[M * K], ait[K * M];
            for (int m = 0; m < M; m++)
                for (int k = 0; k < K; k++)
                    ai[m * K + k] = ait[k * M + m] = (float)((m * 5 + k * 11) % 9 - 4);
            const float *aa = f32 ? (ta ? ait : ai) : (ta ? at : a);
            int rc = ct_bf16_gemm(ta, tb, M, N, K, 1.0f, aa, ta ? M : K, b, f32 ? CT_F32 : CT_BF16,
                                  tb ? K : N, 0.0f, c, N, ar);
            CHECK_OK(rc);
            int bad = 0;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double want = 0.0; /* exact: ~20 significant bits at most */
                    for (int k = 0; k < K; k++)
                        want += f32 ? (double)ai[m * K + k] * bf16r(bt32[n * K + k])
                                    : bf16r(a[m * K + k]) * (double)ct_bf16_to_f32(bt[n * K + k]);
                    bad += (double)c[m * N + n] != want;
                }
            CHECK(bad == 0, "%s %s: %d sums not exact (ties must round to even)",
                  path ? "fallback" : "fast", lay_name(lay), bad);
        }
    }
    ct_bf16_force_fallback(false);
    /* The rounding itself: 1+2^-8 is a tie between 1 and 1+2^-7. */
    CHECK(ct_f32_to_bf16(1.00390625f) == 0x3f80 && ct_f32_to_bf16(1.01171875f) == 0x3f82,
          "ct_f32_to_bf16 ties: %04x %04x", ct_f32_to_bf16(1.00390625f), ct_f32_to_bf16(1.01171875f));
}

/* The fast path repeats bit for bit with 1, 2 and 3 threads (different M/N
 * partitions of the same sums). */
static void determinism(bool fast, ct_arena *ar) {
    int keep = omp_get_max_threads();
    gcase cases[] = {mk(TB, 130, 257, 1100, 0, 0.75f, 0.5f),
                     {0, 130, 257, 1100, 1100, 257, 260, 1.0f, 0.0f},
                     mk(0, 64, 150, 2500, 0, 1.0f, 0.5f), /* two K blocks */
                     mk(TB, 100, 7, 777, 0, 1.0f, 1.0f),  /* one N panel: split over M */
                     mk(TA | BF32, 64, 300, 2500, 1, 1.0f, 1.0f),
                     mk(TA | TB | BF32, 130, 64, 777, 0, 0.5f, 0.0f),
                     mk(TB | BF32, 130, 64, 1100, 2, 1.0f, 0.0f),
                     mk(BF32, 130, 257, 64, 0, 1.0f, 1.0f)};
    for (size_t j = 0; j < sizeof cases / sizeof cases[0]; j++) {
        const gcase *g = &cases[j];
        gdata d;
        make(g, 700 + j, &d);
        size_t cn = (size_t)(g->M * g->ldc);
        float *c[4]; /* runs with 1, 2, 3 and again 2 threads */
        for (int t = 0; t < 4; t++) c[t] = ct_test_need(malloc(sizeof(float) * cn));
        for (int path = fast ? 0 : 1; path < 2; path++) {
            ct_bf16_force_fallback(path == 1);
            for (int t = 0; t < 4; t++) {
                omp_set_num_threads(path == 1 ? keep : t == 3 ? 2 : t + 1); /* 1, 2, 3, 2 again */
                memcpy(c[t], d.c0, sizeof(float) * cn);
                CHECK_OK(call(g, &d, c[t], ar, false));
            }
            omp_set_num_threads(keep);
            for (int t = 1; t < 4; t++)
                CHECK(memcmp(c[0], c[t], sizeof(float) * cn) == 0,
                      "%s case %zu (%s): run %d differs from run 0 (%s)",
                      path ? "fallback" : "fast", j, lay_name(g->lay), t,
                      path ? "same thread count" : "threads 1 vs 2/3/2");
        }
        ct_bf16_force_fallback(false);
        for (int t = 0; t < 4; t++) free(c[t]);
        drop(&d);
    }
}

/* ct_bf16_gemm_rows over a view made once == ct_bf16_gemm with the f32 A,
 * bit for bit, for every B layout, several N, alpha/beta, column slices, and a
 * view made on the fast path used on the fallback. */
static void shared_rows(bool fast, ct_arena *ar) {
    static const struct { int64_t M, K, pad; } sh[] = {
        {1, 1, 0},      {5, 7, 1},     {13, 33, 0}, {12, 64, 3}, {100, 64, 0},
        {130, 1100, 2}, {25, 2501, 0}, /* two K blocks */
        {2100, 2500, 1} /* two K blocks; beta != 0: own partial sums, two M chunks */};
    static const int64_t Ns[] = {1, 33, 64, 200};
    ct_test_rng rng = {4242};
    for (size_t si = 0; si < sizeof sh / sizeof sh[0]; si++) {
        int64_t M = sh[si].M, K = sh[si].K, lda = K + sh[si].pad;
        float *a = ct_test_need(malloc(sizeof(float) * (size_t)(M * lda)));
        ct_test_fill(&rng, a, M * lda, 1.0);
        int64_t nmax = 200, bn = nmax * K + 1;
        float *bf = ct_test_need(malloc(sizeof(float) * (size_t)bn));
        uint16_t *bh = ct_test_need(malloc(sizeof(uint16_t) * (size_t)bn));
        ct_test_fill(&rng, bf, bn, 0.5);
        for (int64_t i = 0; i < bn; i++) bh[i] = ct_f32_to_bf16(bf[i]);
        size_t cn = (size_t)(M * nmax);
        float *c0 = ct_test_need(malloc(sizeof(float) * cn));
        float *c1 = ct_test_need(malloc(sizeof(float) * cn));
        float *c2 = ct_test_need(malloc(sizeof(float) * cn));
        ct_test_fill(&rng, c0, (int64_t)cn, 1.0);
        for (int made = fast ? 0 : 1; made < 2; made++) {
            ct_bf16_force_fallback(made == 1);
            ct_arena_mark mark = ct_arena_get_mark(ar);
            ct_bf16_rows v;
            CHECK_OK(ct_bf16_rows_make(a, lda, M, K, ar, &v));
            CHECK((v.pairs != NULL) == (made == 0), "rows_make %lldx%lld: pairs %p on %s",
                  (long long)M, (long long)K, (const void *)v.pairs, made ? "fallback" : "fast");
            size_t used = ar->used;
            /* slices: the whole A, pair-aligned, an odd start, an odd width inside */
            int64_t sl[4][2] = {{0, K}, {K >= 4 ? 2 : 0, K >= 4 ? K - 2 : K},
                                {K >= 3 ? 1 : 0, K >= 3 ? K - 1 : K},
                                {0, K >= 4 ? K - 1 - K % 2 : K}}; /* odd width */
            for (int use = made; use < 2; use++) { /* made fast: used fast, then on the fallback */
                ct_bf16_force_fallback(use == 1);
                for (int s = 0; s < 4; s++) {
                    ct_bf16_rows w;
                    CHECK_OK(ct_bf16_rows_cols(&v, sl[s][0], sl[s][1], &w));
                    int64_t k0 = sl[s][0], kn = sl[s][1];
                    for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++)
                        for (int lay = 0; lay < 4; lay++) { /* TB, BF32 */
                            int64_t N = Ns[ni];
                            if (M * N * K > 50000000 && (ni != 1 || s > 1)) continue;
                            bool tb = lay & 1;
                            ct_dtype bdt = lay & 2 ? CT_F32 : CT_BF16;
                            const void *b = lay & 2 ? (const void *)bf : (const void *)bh;
                            int64_t ldb = tb ? kn : N;
                            float alpha = ni % 2 ? 0.75f : 1.0f, beta = lay % 2 ? 0.5f : 0.0f;
                            memcpy(c1, c0, sizeof(float) * cn);
                            memcpy(c2, c0, sizeof(float) * cn);
                            CHECK_OK(ct_bf16_gemm(false, tb, M, N, kn, alpha, a + k0, lda, b, bdt,
                                                  ldb, beta, c1, N, ar));
                            CHECK_OK(ct_bf16_gemm_rows(&w, tb, N, alpha, b, bdt, ldb, beta, c2, N,
                                                       ar));
                            CHECK(ar->used == used, "gemm_rows: scratch not rewound");
                            CHECK(memcmp(c1, c2, sizeof(float) * (size_t)(M * N)) == 0,
                                  "rows made %s used %s M=%lld K=%lld cols [%lld, +%lld) N=%lld "
                                  "tb=%d %s: differs from ct_bf16_gemm",
                                  made ? "fallback" : "fast", use ? "fallback" : "fast",
                                  (long long)M, (long long)K, (long long)k0, (long long)kn,
                                  (long long)N, (int)tb, bdt == CT_F32 ? "f32" : "bf16");
                        }
                }
            }
            ct_arena_rewind(ar, mark);
        }
        ct_bf16_force_fallback(false);
        free(a);
        free(bf);
        free(bh);
        free(c0);
        free(c1);
        free(c2);
    }
    /* An odd-width slice must not read the next column's pair half: a NaN
     * there (times B's zero pad) would poison the sums. */
    if (fast) {
        enum { SM = 13, SK = 8, SN = 33 };
        static float sa[SM * SK], sb[SN * SK], s1[SM * SN], s2[SM * SN];
        ct_test_fill(&rng, sa, SM * SK, 1.0);
        ct_test_fill(&rng, sb, SN * SK, 1.0);
        for (int m = 0; m < SM; m++) sa[m * SK + SK - 1] = NAN;
        ct_arena_mark mark = ct_arena_get_mark(ar);
        ct_bf16_rows v, w;
        CHECK_OK(ct_bf16_rows_make(sa, SK, SM, SK, ar, &v));
        CHECK_OK(ct_bf16_rows_cols(&v, 0, SK - 1, &w));
        CHECK_OK(ct_bf16_gemm(false, true, SM, SN, SK - 1, 1.0f, sa, SK, sb, CT_F32, SK, 0.0f, s1,
                              SN, ar));
        CHECK_OK(ct_bf16_gemm_rows(&w, true, SN, 1.0f, sb, CT_F32, SK, 0.0f, s2, SN, ar));
        CHECK(!isnan(s2[0]) && memcmp(s1, s2, sizeof s1) == 0,
              "odd-width slice before a NaN column: %g vs %g", s2[0], s1[0]);
        ct_arena_rewind(ar, mark);
    }
    ct_bf16_rows v;
    float x[4] = {0};
    CHECK(ct_bf16_rows_make(x, 1, 2, 2, ar, &v) == CT_EINPUT, "rows_make: lda < K");
    CHECK(ct_bf16_rows_make(x, 2, -1, 2, ar, &v) == CT_EINPUT, "rows_make: negative M");
    CHECK_OK(ct_bf16_rows_make(x, 2, 2, 2, ar, &v));
    ct_bf16_rows w;
    CHECK(ct_bf16_rows_cols(&v, 1, 2, &w) == CT_EINPUT, "rows_cols past K");
    ct_error_clear();
}

static void *no_alloc(size_t bytes) {
    (void)bytes;
    return NULL;
}

static void errors(bool fast) {
    ct_arena bad;
    ct_arena_init(&bad, (ct_allocator){no_alloc, free}, 1 << 20);
    float a[4 * 8] = {0}, c[4 * 4];
    uint16_t b[8 * 4] = {0};
    for (int path = fast ? 0 : 1; path < 2; path++) {
        ct_bf16_force_fallback(path == 1);
        ct_error_clear();
        int rc = ct_bf16_gemm_nt(4, 4, 8, 1.0f, a, 8, b, 8, 0.0f, c, 4, &bad);
        CHECK(rc == CT_ERUNTIME && strstr(ct_last_error(), "bf16 gemm"),
              "no scratch: rc %d, message '%s'", rc, ct_last_error());
        ct_error_clear();
        rc = ct_bf16_gemm(true, false, 4, 4, 8, 1.0f, a, 4, a, CT_F32, 4, 0.0f, c, 4, &bad);
        CHECK(rc == CT_ERUNTIME && strstr(ct_last_error(), "bf16 gemm"),
              "no scratch (tn f32): rc %d, message '%s'", rc, ct_last_error());
    }
    ct_bf16_force_fallback(false);
    ct_arena_free(&bad);
    ct_arena ar;
    ct_arena_init(&ar, ct_host_allocator(), 1 << 20);
    CHECK(ct_bf16_gemm_nn(-1, 4, 8, 1.0f, a, 8, b, 4, 0.0f, c, 4, &ar) == CT_EINPUT, "negative M");
    CHECK(ct_bf16_gemm_nt(4, 4, 8, 1.0f, a, 7, b, 8, 0.0f, c, 4, &ar) == CT_EINPUT, "lda < K");
    CHECK(ct_bf16_gemm_nn(4, 4, 8, 1.0f, a, 8, b, 3, 0.0f, c, 4, &ar) == CT_EINPUT, "ldb < N");
    /* The general form checks the stored shapes: Aᵀ [K, M], B [K, N] or [N, K]. */
    struct { bool ta, tb; int64_t lda, ldb, ldc; ct_dtype bdt; const char *what; } bad_args[] = {
        {true, false, 3, 4, 4, CT_F32, "trans_a: lda < M"},
        {false, true, 8, 7, 4, CT_F32, "trans_b: ldb < K"},
        {false, false, 8, 3, 4, CT_F32, "ldb < N"},
        {false, false, 8, 4, 4, CT_F16, "f16 B"},
        {false, false, 8, 4, 3, CT_F32, "ldc < N"}};
    for (size_t i = 0; i < sizeof bad_args / sizeof bad_args[0]; i++)
        CHECK(ct_bf16_gemm(bad_args[i].ta, bad_args[i].tb, 4, 4, 8, 1.0f, a, bad_args[i].lda, a,
                           bad_args[i].bdt, bad_args[i].ldb, 0.0f, c, bad_args[i].ldc,
                           &ar) == CT_EINPUT,
              "%s", bad_args[i].what);
    CHECK_OK(ct_bf16_gemm(true, false, 4, 4, 8, 1.0f, a, 4, a, CT_F32, 4, 0.0f, c, 4, &ar));
    /* Empty shapes leave C alone; K = 0 is an empty sum: c = beta·c. */
    for (int i = 0; i < 16; i++) c[i] = 2.0f;
    CHECK_OK(ct_bf16_gemm_nt(0, 4, 8, 1.0f, a, 8, b, 8, 0.0f, c, 4, &ar));
    CHECK_OK(ct_bf16_gemm_nn(4, 0, 8, 1.0f, a, 8, b, 1, 0.0f, c, 4, &ar));
    CHECK(c[0] == 2.0f && c[15] == 2.0f, "empty GEMM wrote C");
    CHECK_OK(ct_bf16_gemm_nt(4, 4, 0, 1.0f, a, 1, b, 1, 0.5f, c, 4, &ar));
    CHECK(c[0] == 1.0f && c[15] == 1.0f, "K = 0, beta 0.5: %g", c[0]);
    c[3] = NAN;
    CHECK_OK(ct_bf16_gemm_nn(4, 4, 0, 1.0f, a, 1, b, 4, 0.0f, c, 4, &ar));
    CHECK(c[0] == 0.0f && c[3] == 0.0f, "K = 0, beta 0: %g %g", c[0], c[3]);
    ct_arena_free(&ar);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--probe") == 0) { /* child of the CT_NO_BF16_DOT check */
        printf("%d\n", ct_cpu_bf16_dot_supported());
        return 0;
    }
    bool fast = ct_cpu_bf16_dot_supported();
    if (!fast)
        printf("AVX512-BF16 unavailable (CPU, OS or CT_NO_BF16_DOT): fast-path checks skipped, "
               "fallback tested\n");
    /* CT_NO_BF16_DOT=1 is read by a fresh process (the answer is cached). */
    setenv("CT_NO_BF16_DOT", "1", 1);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' --probe", argv[0]);
    FILE *p = popen(cmd, "r");
    int child = -1;
    if (p) {
        if (fscanf(p, "%d", &child) != 1) child = -1;
        pclose(p);
    }
    CHECK(child == 0, "with CT_NO_BF16_DOT=1 the probe says %d", child);
    unsetenv("CT_NO_BF16_DOT");

    ct_arena ar;
    ct_arena_init(&ar, ct_host_allocator(), (size_t)16 << 20);
    shapes(fast, &ar);
    rounding(fast, &ar);
    determinism(fast, &ar);
    shared_rows(fast, &ar);
    errors(fast);
    printf("max |c - ref| / (Σ|alpha·a·b| + |beta·c|): fast %.3g, fallback %.3g (bound %g); "
           "peak scratch %.1f MiB\n", g_max_rel[0], g_max_rel[1], TOL, (double)ar.peak / (1 << 20));
    ct_arena_free(&ar);
    return ct_test_finish();
}
