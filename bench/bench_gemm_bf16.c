/* bf16 GEMM benchmark: GFLOP/s of ct_bf16_gemm_nt (y = x·Wᵀ) and
 * ct_bf16_gemm_nn (dx = dy·W) on the frozen-weight shapes of a LoRA training
 * step with T tokens, then of ct_bf16_gemm with f32 B on the six LoRA GEMMs
 * (rank r) of a 125M InternLM2's linears, for the AVX512-BF16 fast path, the
 * cblas_sgemm fallback and plain OpenBLAS sgemm on the same shapes with f32 B,
 * in the same run; best of `reps` after a warm-up. Last, lora_linear's pairs of
 * GEMMs that share their A (x·Wᵀ with x·Aᵀ, dY·W with s·dY·B) on the fast
 * path: each converting A itself vs one ct_bf16_rows_make for both.
 * Usage: bench_gemm_bf16 [reps] [T] [r]. Prints two markdown tables. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "autograd/ct_clock.h"
#include "autograd/arena.h"
#include "autograd/cpu/gemm_bf16.h"
#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"

static void *need(size_t bytes) {
    void *p = malloc(bytes);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static void fill(float *x, int64_t n, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) x[i] = 2.0f * ct_uniform(seed, (uint64_t)i) - 1.0f;
}

enum { FAST, FALLBACK, SGEMM };

/* One GEMM: C [M, N] = alpha·op(A)·op(B) + beta·C; B bf16 (b16) or f32 (b32). */
typedef struct {
    const char *name;
    bool ta, tb, bf32;
    int64_t M, N, K;
    float alpha, beta;
} gemm_t;

/* Seconds of the best of reps runs of one variant (SGEMM: with the f32 B). */
static double time_one(int variant, const gemm_t *g, const float *a, const uint16_t *b16,
                       const float *b32, float *c, ct_arena *scratch, int reps) {
    double best = 1e30;
    bool prev = ct_bf16_force_fallback(variant == FALLBACK);
    int64_t lda = g->ta ? g->M : g->K, ldb = g->tb ? g->K : g->N;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = ct_now_s();
        int rc = CT_OK;
        if (variant == SGEMM)
            cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                        g->tb ? CblasTrans : CblasNoTrans, (int)g->M, (int)g->N, (int)g->K,
                        g->alpha, a, (int)lda, b32, (int)ldb, g->beta, c, (int)g->N);
        else
            rc = ct_bf16_gemm(g->ta, g->tb, g->M, g->N, g->K, g->alpha, a, lda,
                              g->bf32 ? (const void *)b32 : (const void *)b16,
                              g->bf32 ? CT_F32 : CT_BF16, ldb, g->beta, c, g->N, scratch);
        double dt = ct_now_s() - t0;
        if (rc) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            exit(1);
        }
        if (r > 0 && dt < best) best = dt; /* run 0 warms caches and the arena */
    }
    ct_bf16_force_fallback(prev);
    return best;
}

/* Times one GEMM on the three variants and prints a table row; returns the
 * fast path's and sgemm's seconds through *tf, *ts. */
static void row(const gemm_t *g, ct_arena *scratch, int reps, double *tf, double *ts) {
    int64_t an = g->M * g->K, bn = g->N * g->K;
    float *a = need((size_t)an * sizeof(float));
    float *b32 = need((size_t)bn * sizeof(float));
    uint16_t *b16 = need((size_t)bn * sizeof(uint16_t));
    float *c = need((size_t)g->M * (size_t)g->N * sizeof(float));
    fill(a, an, 1);
    fill(b32, bn, 2);
    fill(c, g->M * g->N, 3);
    for (int64_t i = 0; i < bn; i++) b16[i] = ct_f32_to_bf16(b32[i] * 0.05f);
    double flops = 2.0 * (double)g->M * (double)g->N * (double)g->K;
    double f = time_one(FAST, g, a, b16, b32, c, scratch, reps);
    double fb = time_one(FALLBACK, g, a, b16, b32, c, scratch, reps);
    double sg = time_one(SGEMM, g, a, b16, b32, c, scratch, reps);
    printf("| %s | %lld | %lld | %lld | %.1f | %.1f | %.1f | %.2f |\n", g->name, (long long)g->M,
           (long long)g->N, (long long)g->K, flops / f * 1e-9, flops / fb * 1e-9, flops / sg * 1e-9,
           sg / f);
    fflush(stdout);
    if (tf) *tf += f;
    if (ts) *ts += sg;
    free(a);
    free(b32);
    free(b16);
    free(c);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 10;
    int64_t T = argc > 2 ? atoll(argv[2]) : 512;
    int64_t r = argc > 3 ? atoll(argv[3]) : 64;
    /* (N, K) of the frozen GEMMs: qkv-like, o-proj, up, down, wide FFN, vocab head */
    static const int64_t shapes[][2] = {{1280, 768}, {768, 768},   {2048, 768},
                                        {768, 2048}, {4096, 2048}, {32000, 768}};
    ct_arena scratch;
    ct_arena_init(&scratch, ct_host_allocator(), (size_t)64 << 20);
    bool fast = ct_cpu_bf16_dot_supported();
    printf("bf16 GEMM, %d OpenMP threads, best of %d; AVX512-BF16 fast path: %s\n\n",
           omp_get_max_threads(), reps, fast ? "yes" : "no (fast column = fallback)");
    const char *header = "| gemm | M | N | K | bf16 fast GFLOP/s | bf16 fallback GFLOP/s | "
                         "sgemm GFLOP/s | fast / sgemm |\n|---|---|---|---|---|---|---|---|\n";
    printf("%s", header);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int nn = 0; nn < 2; nn++) {
            gemm_t g = {nn ? "nn (dx = dy·W)" : "nt (y = x·Wᵀ)", false, !nn, false, T,
                        shapes[s][0], shapes[s][1], 1.0f, 0.0f};
            row(&g, &scratch, reps, NULL, NULL);
        }
    /* The LoRA GEMMs of the 125M model's linears (in, out): wqkv, wo, w1/w3, w2;
     * f32 B (A, B, u, x are f32), beta as in lora_linear.c. */
    static const int64_t lin[][2] = {{768, 1280}, {768, 768}, {768, 2048}, {2048, 768}};
    printf("\nLoRA GEMMs, r = %lld, T = %lld (f32 B rounded as packed)\n\n%s", (long long)r,
           (long long)T, header);
    double tf = 0.0, ts = 0.0;
    for (size_t l = 0; l < sizeof lin / sizeof lin[0]; l++) {
        int64_t in = lin[l][0], out = lin[l][1];
        gemm_t gs[] = {{"u = x·Aᵀ (nt)", false, true, true, T, r, in, 1.0f, 0.0f},
                       {"y += s·u·Bᵀ (nt)", false, true, true, T, out, r, 0.5f, 1.0f},
                       {"dB += s·dYᵀ·u (tn)", true, false, true, out, r, T, 0.5f, 1.0f},
                       {"g = s·dY·B (nn)", false, false, true, T, r, out, 0.5f, 0.0f},
                       {"dA += gᵀ·x (tn)", true, false, true, r, in, T, 1.0f, 1.0f},
                       {"dx += g·A (nn)", false, false, true, T, in, r, 1.0f, 1.0f}};
        for (size_t j = 0; j < sizeof gs / sizeof gs[0]; j++) row(&gs[j], &scratch, reps, &tf, &ts);
    }
    printf("\nLoRA GEMMs of one layer (fwd + bwd): bf16 fast %.3f ms, sgemm %.3f ms\n", tf * 1e3,
           ts * 1e3);
    /* Shared op(A): the pair with its own conversions vs one shared copy. */
    printf("\nShared A (fast path), T = %lld, r = %lld: ms per pair, best of %d\n\n"
           "| pair | in | out | separate | shared | saved |\n|---|---|---|---|---|---|\n",
           (long long)T, (long long)r, reps);
    for (size_t l = 0; fast && l < sizeof lin / sizeof lin[0]; l++) {
        int64_t in = lin[l][0], out = lin[l][1];
        for (int bwd = 0; bwd < 2; bwd++) {
            int64_t K = bwd ? out : in, N = bwd ? in : out; /* A [T, K]; W as [N, K] or [K, N] */
            float *a = need((size_t)(T * K) * sizeof(float));
            uint16_t *w = need((size_t)(in * out) * sizeof(uint16_t));
            float *lb = need((size_t)(in * out) * sizeof(float)); /* LoRA A [r, in] or B [out, r] */
            float *c1 = need((size_t)(T * N) * sizeof(float));
            float *c2 = need((size_t)(T * r) * sizeof(float));
            fill(a, T * K, 4);
            fill(lb, in * out, 5);
            for (int64_t i = 0; i < in * out; i++) w[i] = ct_f32_to_bf16(lb[i] * 0.05f);
            double best[2] = {1e30, 1e30};
            for (int shared = 0; shared < 2; shared++)
                for (int rr = 0; rr < reps + 1; rr++) {
                    ct_arena_mark mark = ct_arena_get_mark(&scratch);
                    double t0 = ct_now_s();
                    ct_bf16_rows v = {a, K, NULL, 0, T, K};
                    int rc = shared ? ct_bf16_rows_make(a, K, T, K, &scratch, &v) : CT_OK;
                    /* fwd: y = x·Wᵀ, u = x·Aᵀ; bwd: dx = dY·W, g = s·dY·B */
                    if (!rc)
                        rc = ct_bf16_gemm_rows(&v, !bwd, N, 1.0f, w, CT_BF16, K, 0.0f, c1, N,
                                               &scratch);
                    if (!rc)
                        rc = ct_bf16_gemm_rows(&v, !bwd, r, 0.5f, lb, CT_F32, bwd ? r : K, 0.0f,
                                               c2, r, &scratch);
                    double dt = ct_now_s() - t0;
                    ct_arena_rewind(&scratch, mark);
                    if (rc) {
                        fprintf(stderr, "error: %s\n", ct_last_error());
                        exit(1);
                    }
                    if (rr > 0 && dt < best[shared]) best[shared] = dt;
                }
            printf("| %s | %lld | %lld | %.3f | %.3f | %.1f%% |\n",
                   bwd ? "dY·W + s·dY·B" : "x·Wᵀ + x·Aᵀ", (long long)in, (long long)out,
                   best[0] * 1e3, best[1] * 1e3, 100.0 * (1.0 - best[1] / best[0]));
            free(a);
            free(w);
            free(lb);
            free(c1);
            free(c2);
        }
    }
    printf("\npeak scratch: %.1f MiB\n", (double)scratch.peak / (1 << 20));
    ct_arena_free(&scratch);
    return 0;
}
