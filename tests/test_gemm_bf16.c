/* bf16 GEMMs (cpu/gemm_bf16.c): ct_bf16_gemm_nt and ct_bf16_gemm_nn on the
 * AVX512-BF16 fast path (skipped, with a note, on CPUs without it) and on the
 * cblas_sgemm fallback, against a double-precision GEMM over the bf16-rounded
 * inputs: odd K, K = 1 and 0, tiny and ragged M/N, several K blocks and M
 * chunks, padded row strides (the padding must stay untouched), alpha != 1,
 * beta 0 (over NaN garbage), 1 and 0.5. Also: round-to-nearest-even of A on
 * exact sums, bit-identical results with 1, 2 and 3 threads, the arena
 * rewound, CT_NO_BF16_DOT, failing scratch and bad arguments.
 *
 * Error bound: every product bf16(a)·bf16(b) is exact in fp32, so the only
 * errors are the fp32 additions (and the alpha/beta epilogue). Recursive
 * summation of K terms is off by at most (K-1)·2^-24·Σ|ab| (worst case); for
 * these random-sign data the error is a random walk of about 2^-24 relative to
 * Σ|ab| (the partial sums are ~√K terms, the rounding errors add in
 * quadrature). TOL = 2e-6 of Σ|alpha·ab| + |beta·c| is ~30× that, yet a
 * missing or doubled product (~1/K of Σ|ab|, >= 1e-3 here for K > 1) or a
 * wrongly rounded A (~2^-9 per product, ~2^-9/√K >= 6e-5 of Σ|ab|) fails it;
 * rounding() pins the ties exactly. The largest ratio seen is printed. */
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

typedef struct {
    bool nn;
    int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
} gcase;

/* Inputs of one case and its reference (on the heap). */
typedef struct {
    float *a;      /* [M, lda] */
    uint16_t *b;   /* nt: [N, ldb]; nn: [K, ldb] */
    float *c0;     /* [M, ldc] C before the call; padding holds a sentinel */
    double *ref;   /* [M, N] alpha·Σ bf16(a)·b + beta·c0 */
    double *scale; /* [M, N] Σ|alpha·a·b| + |beta·c0|: the error scale */
} gdata;

static void make(const gcase *g, uint64_t seed, gdata *d) {
    ct_test_rng rng = {seed};
    int64_t brows = g->nn ? g->K : g->N;
    d->a = ct_test_need(malloc(sizeof(float) * (size_t)(g->M * g->lda + 1)));
    d->b = ct_test_need(malloc(sizeof(uint16_t) * (size_t)(brows * g->ldb + 1)));
    d->c0 = ct_test_need(malloc(sizeof(float) * (size_t)(g->M * g->ldc + 1)));
    d->ref = ct_test_need(malloc(sizeof(double) * (size_t)(g->M * g->N + 1)));
    d->scale = ct_test_need(malloc(sizeof(double) * (size_t)(g->M * g->N + 1)));
    ct_test_fill(&rng, d->a, g->M * g->lda, 1.0);
    for (int64_t i = 0; i < brows * g->ldb; i++)
        d->b[i] = ct_f32_to_bf16((float)(0.5 * ct_test_normal(&rng)));
    for (int64_t m = 0; m < g->M; m++)
        for (int64_t j = 0; j < g->ldc; j++)
            d->c0[m * g->ldc + j] = j >= g->N ? 12345.0f /* padding sentinel */
                                    : g->beta == 0.0f ? NAN
                                                      : (float)ct_test_normal(&rng);
    /* The rounded inputs in double: ad [M, K], bd [N, K] (B as op(B)ᵀ). */
    double *ad = ct_test_need(malloc(sizeof(double) * (size_t)(g->M * g->K + 1)));
    double *bd = ct_test_need(malloc(sizeof(double) * (size_t)(g->N * g->K + 1)));
    for (int64_t m = 0; m < g->M; m++)
        for (int64_t k = 0; k < g->K; k++)
            ad[m * g->K + k] = ct_bf16_to_f32(ct_f32_to_bf16(d->a[m * g->lda + k]));
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t k = 0; k < g->K; k++)
            bd[n * g->K + k] = ct_bf16_to_f32(g->nn ? d->b[k * g->ldb + n] : d->b[n * g->ldb + k]);
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

static int call(const gcase *g, const gdata *d, float *c, ct_arena *ar) {
    return g->nn ? ct_bf16_gemm_nn(g->M, g->N, g->K, g->alpha, d->a, g->lda, d->b, g->ldb,
                                   g->beta, c, g->ldc, ar)
                 : ct_bf16_gemm_nt(g->M, g->N, g->K, g->alpha, d->a, g->lda, d->b, g->ldb,
                                   g->beta, c, g->ldc, ar);
}

/* Runs one case on the current path into c (a copy of c0) and checks it
 * against the reference and the padding; returns false on a failed check. */
static bool run_check(const char *path, const gcase *g, const gdata *d, float *c, ct_arena *ar) {
    double *max_rel = &g_max_rel[strcmp(path, "fallback") == 0];
    memcpy(c, d->c0, sizeof(float) * (size_t)(g->M * g->ldc));
    size_t used = ar->used;
    int rc = call(g, d, c, ar);
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
          path, g->nn ? "nn" : "nt", (long long)g->M, (long long)g->N, (long long)g->K,
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
        run_check("fast", g, &d, c, ar);
    }
    ct_bf16_force_fallback(true);
    run_check("fallback", g, &d, c, ar);
    ct_bf16_force_fallback(false);
    free(c);
    drop(&d);
}

static void shapes(bool fast, ct_arena *ar) {
    static const int64_t Ms[] = {1, 2, 3, 5, 17, 64, 130};
    static const int64_t Ns[] = {1, 7, 33, 100, 257};
    static const int64_t Ks[] = {1, 2, 3, 31, 64, 385, 1100, 17, 768, 5};
    static const float betas[] = {0.0f, 1.0f, 0.5f};
    int i = 0;
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++, i++)
            for (int nn = 0; nn < 2; nn++) {
                int64_t M = Ms[mi], N = Ns[ni], K = Ks[(size_t)(i + 3 * nn) % 10];
                /* big shapes get the small K, to keep the reference cheap */
                if (M * N > 8000 && K > 400) K = K % 2 ? 385 : 64;
                if (M * N <= 8000 && i % 4 == 1) K = 1100;
                int pad = i % 3; /* 0: dense; else strides wider than the rows */
                gcase g = {nn, M, N, K, K + pad * 5, (nn ? N : K) + pad * 3, N + pad * 7,
                           i % 2 ? 0.75f : 1.0f, betas[(size_t)(i + nn) % 3]};
                check_case(&g, 100 + (uint64_t)i * 2 + (uint64_t)nn, fast, ar);
            }
    /* Several K blocks (2048 k each) with beta != 0 (partial sums kept apart
     * from C) and 0 (partial sums in C), a last block of one odd pair, two M
     * chunks (the packed A is bounded: 16 MiB), N past one column block (128). */
    gcase big[] = {{false, 270, 20, 8193, 8193, 8193, 21, 1.0f, 0.5f},
                   {true, 270, 20, 8193, 8200, 20, 20, -1.5f, 0.0f},
                   {false, 1100, 3, 8193, 8193, 8193, 3, 1.0f, 1.0f},
                   {true, 37, 300, 2049, 2049, 301, 305, 0.5f, 0.5f},
                   {false, 64, 300, 1100, 1100, 1103, 300, 1.0f, 1.0f}};
    for (size_t j = 0; j < sizeof big / sizeof big[0]; j++) check_case(&big[j], 900 + j, fast, ar);
}

/* Ties of f32 -> bf16 must round to even, and exact sums must come out exact. */
static void rounding(bool fast, ct_arena *ar) {
    enum { M = 13, N = 35, K = 41 };
    /* halfway cases: 1+2^-8 -> 1, 1+3·2^-8 -> 1+2^-6, 2+2^-7 -> 2, -(1+2^-8) -> -1 */
    static const float ties[] = {1.00390625f, 1.01171875f, 2.0078125f, -1.00390625f, 3.0f, -0.5f};
    float a[M * K], c[M * N];
    uint16_t bt[N * K], bn[K * N]; /* B for nt [N, K] and the same values for nn [K, N] */
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) a[m * K + k] = ties[(m * 7 + k * 3) % 6];
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            float v = (float)((n * 5 + k * 11) % 9 - 4); /* small integers: exact in bf16 */
            bt[n * K + k] = bn[k * N + n] = ct_f32_to_bf16(v);
        }
    for (int path = fast ? 0 : 1; path < 2; path++) {
        ct_bf16_force_fallback(path == 1);
        for (int nn = 0; nn < 2; nn++) {
            int rc = nn ? ct_bf16_gemm_nn(M, N, K, 1.0f, a, K, bn, N, 0.0f, c, N, ar)
                        : ct_bf16_gemm_nt(M, N, K, 1.0f, a, K, bt, K, 0.0f, c, N, ar);
            CHECK_OK(rc);
            int bad = 0;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double want = 0.0; /* exact: ~20 significant bits at most */
                    for (int k = 0; k < K; k++)
                        want += (double)ct_bf16_to_f32(ct_f32_to_bf16(a[m * K + k])) *
                                ct_bf16_to_f32(bt[n * K + k]);
                    bad += (double)c[m * N + n] != want;
                }
            CHECK(bad == 0, "%s %s: %d sums not exact (ties must round to even)",
                  path ? "fallback" : "fast", nn ? "nn" : "nt", bad);
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
    gcase cases[] = {{false, 130, 257, 1100, 1100, 1100, 257, 0.75f, 0.5f},
                     {true, 130, 257, 1100, 1100, 257, 260, 1.0f, 0.0f},
                     {true, 64, 150, 2500, 2500, 150, 150, 1.0f, 0.5f}, /* two K blocks */
                     {false, 100, 7, 777, 777, 777, 7, 1.0f, 1.0f}}; /* one N panel: split over M */
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
                CHECK_OK(call(g, &d, c[t], ar));
            }
            omp_set_num_threads(keep);
            for (int t = 1; t < 4; t++)
                CHECK(memcmp(c[0], c[t], sizeof(float) * cn) == 0,
                      "%s case %zu: run %d differs from run 0 (%s)", path ? "fallback" : "fast", j,
                      t, path ? "same thread count" : "threads 1 vs 2/3/2");
        }
        ct_bf16_force_fallback(false);
        for (int t = 0; t < 4; t++) free(c[t]);
        drop(&d);
    }
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
    }
    ct_bf16_force_fallback(false);
    ct_arena_free(&bad);
    ct_arena ar;
    ct_arena_init(&ar, ct_host_allocator(), 1 << 20);
    CHECK(ct_bf16_gemm_nn(-1, 4, 8, 1.0f, a, 8, b, 4, 0.0f, c, 4, &ar) == CT_EINPUT, "negative M");
    CHECK(ct_bf16_gemm_nt(4, 4, 8, 1.0f, a, 7, b, 8, 0.0f, c, 4, &ar) == CT_EINPUT, "lda < K");
    CHECK(ct_bf16_gemm_nn(4, 4, 8, 1.0f, a, 8, b, 3, 0.0f, c, 4, &ar) == CT_EINPUT, "ldb < N");
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
    errors(fast);
    printf("max |c - ref| / (Σ|alpha·a·b| + |beta·c|): fast %.3g, fallback %.3g (bound %g); "
           "peak scratch %.1f MiB\n", g_max_rel[0], g_max_rel[1], TOL, (double)ar.peak / (1 << 20));
    ct_arena_free(&ar);
    return ct_test_finish();
}
