/* bf16 GEMM benchmark: GFLOP/s of ct_bf16_gemm_nt (y = x·Wᵀ) and
 * ct_bf16_gemm_nn (dx = dy·W) on the frozen-weight shapes of a LoRA training
 * step with T tokens, for the AVX512-BF16 fast path, the cblas_sgemm fallback
 * and plain OpenBLAS sgemm on the same shapes with f32 B, in the same run;
 * best of `reps` after a warm-up. Usage: bench_gemm_bf16 [reps] [T].
 * Prints a markdown table. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "autograd/arena.h"
#include "autograd/cpu/gemm_bf16.h"
#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

/* Seconds of the best of reps runs of one variant; C = A·op(B), beta 0. */
static double time_one(int variant, bool nn, int64_t M, int64_t N, int64_t K, const float *a,
                       const uint16_t *b16, const float *b32, float *c, ct_arena *scratch,
                       int reps) {
    double best = 1e30;
    bool prev = ct_bf16_force_fallback(variant == FALLBACK);
    for (int r = 0; r < reps + 1; r++) {
        double t0 = now();
        int rc = CT_OK;
        if (variant == SGEMM)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, nn ? CblasNoTrans : CblasTrans, (int)M, (int)N,
                        (int)K, 1.0f, a, (int)K, b32, nn ? (int)N : (int)K, 0.0f, c, (int)N);
        else if (nn)
            rc = ct_bf16_gemm_nn(M, N, K, 1.0f, a, K, b16, N, 0.0f, c, N, scratch);
        else
            rc = ct_bf16_gemm_nt(M, N, K, 1.0f, a, K, b16, K, 0.0f, c, N, scratch);
        double dt = now() - t0;
        if (rc) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            exit(1);
        }
        if (r > 0 && dt < best) best = dt; /* run 0 warms caches and the arena */
    }
    ct_bf16_force_fallback(prev);
    return best;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 10;
    int64_t T = argc > 2 ? atoll(argv[2]) : 512;
    /* (N, K) of the frozen GEMMs: qkv-like, o-proj, up, down, wide FFN, vocab head */
    static const int64_t shapes[][2] = {{1280, 768}, {768, 768},   {2048, 768},
                                        {768, 2048}, {4096, 2048}, {32000, 768}};
    ct_arena scratch;
    ct_arena_init(&scratch, ct_host_allocator(), (size_t)64 << 20);
    bool fast = ct_cpu_bf16_dot_supported();
    printf("bf16 GEMM, %d OpenMP threads, best of %d; AVX512-BF16 fast path: %s\n\n",
           omp_get_max_threads(), reps, fast ? "yes" : "no (fast column = fallback)");
    printf("| gemm | M | N | K | bf16 fast GFLOP/s | bf16 fallback GFLOP/s | sgemm GFLOP/s "
           "| fast / sgemm |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t M = T, N = shapes[s][0], K = shapes[s][1];
        float *a = need((size_t)M * (size_t)K * sizeof(float));     /* [M, K] */
        float *b32 = need((size_t)N * (size_t)K * sizeof(float));   /* [N, K] or [K, N] */
        uint16_t *b16 = need((size_t)N * (size_t)K * sizeof(uint16_t));
        float *c = need((size_t)M * (size_t)N * sizeof(float));     /* [M, N] */
        fill(a, M * K, 1);
        fill(b32, N * K, 2);
        for (int64_t i = 0; i < N * K; i++) b16[i] = ct_f32_to_bf16(b32[i] * 0.05f);
        for (int nn = 0; nn < 2; nn++) {
            double flops = 2.0 * (double)M * (double)N * (double)K;
            double tf = time_one(FAST, nn, M, N, K, a, b16, b32, c, &scratch, reps);
            double tb = time_one(FALLBACK, nn, M, N, K, a, b16, b32, c, &scratch, reps);
            double ts = time_one(SGEMM, nn, M, N, K, a, b16, b32, c, &scratch, reps);
            printf("| %s | %lld | %lld | %lld | %.1f | %.1f | %.1f | %.2f |\n",
                   nn ? "nn (dx = dy·W)" : "nt (y = x·Wᵀ)", (long long)M, (long long)N,
                   (long long)K, flops / tf * 1e-9, flops / tb * 1e-9, flops / ts * 1e-9, ts / tf);
            fflush(stdout);
        }
        free(a);
        free(b32);
        free(b16);
        free(c);
    }
    printf("\npeak scratch: %.1f MiB\n", (double)scratch.peak / (1 << 20));
    ct_arena_free(&scratch);
    return 0;
}
