/* AVX512-BF16 packing and block product for cpu/attention.c (contract in
 * attention_bf16.h). The functions carry a target attribute instead of needing
 * -march flags; attention.c calls them only after ct_attn_bf16_dot().
 *
 * The block product keeps a 4×(16·nv) tile of C (nv <= 4 zmm per row) in
 * registers: per pair, nv loads of B and 4 broadcasts of A feed 4·nv
 * VDPBF16PS. With nv = 4 (a 64-wide block) the 16 independent accumulators
 * cover the instruction's latency (~6 cycles on Zen 4, one per cycle);
 * measured inside attention (T = 512, head_dim 64) the products run at ~400
 * GFLOP/s on 2 Zen 4 cores, ~90% of the instruction's peak. */
#include "attention_bf16.h"

#include "gemm_bf16.h" /* ct_cpu_bf16_dot_supported, ct_bf16_force_fallback */

#include "avx512_bf16.h"
#if defined(__x86_64__)

bool ct_attn_bf16_dot(void) { return ct_bf16_fast_path(); }

/* The lanes of 16 that hold columns < left. */
static inline __mmask16 lanes(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* One 4×(16·nv) tile; nv a constant once inlined, so the loops unroll and the
 * accumulators stay in registers. */
CT_AVX512BF16 static inline __attribute__((always_inline)) void
tile(const int nv, int64_t np, const uint32_t *a, int64_t sar, int64_t sap, const uint32_t *b,
     int64_t ldb, float *c, int64_t ldc, float alpha, bool acc) {
    __m512 s[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            s[r][v] = acc ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
    for (int64_t p = 0; p < np; p++, a += sap, b += ldb) {
        __m512bh bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            bv[v] = (__m512bh)_mm512_loadu_si512(b + 16 * v);
            /* else gcc re-loads B for each row: 13 loads per 16 products */
            __asm__("" : "+v"(bv[v]));
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * sar]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) s[r][v] = _mm512_dpbf16_ps(s[r][v], bv[v], av);
        }
    }
    __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(c + r * ldc + 16 * v, acc ? s[r][v] : _mm512_mul_ps(va, s[r][v]));
}

/* Rows [0, M) of one column strip 16·nv wide. One function per nv, never
 * inlined: register allocation stays local (inlined into one body, gcc parks
 * integers in the vector registers the accumulators need and spills). */
#define STRIP(NV)                                                                                  \
    CT_AVX512BF16 __attribute__((noinline)) static void strip##NV(                                 \
        int64_t M, int64_t np, const uint32_t *a, int64_t sar, int64_t sap, const uint32_t *b,     \
        int64_t ldb, float *c, int64_t ldc, float alpha, bool acc) {                               \
        for (int64_t i = 0; i < M; i += 4)                                                         \
            tile(NV, np, a + i * sar, sar, sap, b, ldb, c + i * ldc, ldc, alpha, acc);             \
    }
STRIP(1)
STRIP(2)
STRIP(3)
STRIP(4)

CT_AVX512BF16 void ct_attn_bf16_mm(int64_t M, int64_t N, int64_t np, const uint32_t *a,
                                   int64_t sar, int64_t sap, const uint32_t *b, int64_t ldb,
                                   float *c, int64_t ldc, float alpha, bool acc) {
    for (int64_t j = 0; j < N; j += 64) {
        switch (N - j >= 64 ? 4 : (N - j) / 16) {
        case 4: strip4(M, np, a, sar, sap, b + j, ldb, c + j, ldc, alpha, acc); break;
        case 3: strip3(M, np, a, sar, sap, b + j, ldb, c + j, ldc, alpha, acc); break;
        case 2: strip2(M, np, a, sar, sap, b + j, ldb, c + j, ldc, alpha, acc); break;
        default: strip1(M, np, a, sar, sap, b + j, ldb, c + j, ldc, alpha, acc); break;
        }
    }
}

CT_AVX512BF16 void ct_attn_bf16_rows(const float *x, int64_t ldx, int64_t rows, int64_t n,
                                     int64_t rows_out, int64_t n_pad, uint32_t *dst, int64_t ldd) {
    for (int64_t r = 0; r < rows_out; r++) {
        const float *xr = x + r * ldx;
        uint32_t *d = dst + r * ldd;
        for (int64_t c = 0; c < n_pad; c += 16) {
            __m512 v = r < rows ? _mm512_maskz_loadu_ps(lanes(n - c), xr + c) : _mm512_setzero_ps();
            _mm256_storeu_si256((__m256i *)(d + c / 2), (__m256i)_mm512_cvtneps_pbh(v));
        }
    }
}

CT_AVX512BF16 void ct_attn_bf16_pairs(const float *x, int64_t ldx, int64_t rows, int64_t n,
                                      int64_t np, int64_t n_pad, uint32_t *dst, int64_t ldd) {
    /* cvtne2ps gives bf16 lanes lo0..lo15, hi0..hi15; pair j is lanes j, 16+j */
    static const uint16_t k_interleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                              21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                              11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_loadu_si512(k_interleave);
    for (int64_t j = 0; j < np; j++) {
        const float *r0 = x + 2 * j * ldx, *r1 = r0 + ldx;
        bool h0 = 2 * j < rows, h1 = 2 * j + 1 < rows;
        uint32_t *d = dst + j * ldd;
        for (int64_t c = 0; c < n_pad; c += 16) {
            __mmask16 m = lanes(n - c);
            __m512 lo = h0 ? _mm512_maskz_loadu_ps(m, r0 + c) : _mm512_setzero_ps();
            __m512 hi = h1 ? _mm512_maskz_loadu_ps(m, r1 + c) : _mm512_setzero_ps();
            __m512i t = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(d + c, _mm512_permutexvar_epi16(idx, t));
        }
    }
}


CT_AVX512BF16 void ct_attn_bf16_pairs_t(const float *x, int64_t ldx, int64_t rows, int64_t n,
                                        int64_t np, int64_t t_pad, uint32_t *dst, int64_t ldd) {
    for (int64_t t0 = 0; t0 < t_pad; t0 += 16)
        for (int64_t p0 = 0; p0 < np; p0 += 16) {
            __m512i v[16]; /* v[r]: pairs p0 .. p0+15 of row t0+r */
            for (int r = 0; r < 16; r++) {
                if (t0 + r >= rows) {
                    v[r] = _mm512_setzero_si512();
                    continue;
                }
                const float *xr = x + (t0 + r) * ldx;
                int64_t k = 2 * p0;
                __m512 lo = _mm512_maskz_loadu_ps(lanes(n - k), xr + k);
                __m512 hi = _mm512_maskz_loadu_ps(lanes(n - k - 16), xr + k + 16);
                v[r] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* u32 lane j = pair p0+j */
            }
            ct_avx512_transpose16(v);
            for (int64_t j = 0; j < 16 && p0 + j < np; j++)
                _mm512_storeu_si512(dst + (p0 + j) * ldd + t0, v[j]);
        }
}

#else /* no x86-64: the fallback always runs; these are never called */

bool ct_attn_bf16_dot(void) { return false; }
void ct_attn_bf16_mm(int64_t M, int64_t N, int64_t np, const uint32_t *a, int64_t sar,
                     int64_t sap, const uint32_t *b, int64_t ldb, float *c, int64_t ldc,
                     float alpha, bool acc) {
    (void)M, (void)N, (void)np, (void)a, (void)sar, (void)sap, (void)b, (void)ldb, (void)c,
        (void)ldc, (void)alpha, (void)acc;
}
void ct_attn_bf16_rows(const float *x, int64_t ldx, int64_t rows, int64_t n, int64_t rows_out,
                       int64_t n_pad, uint32_t *dst, int64_t ldd) {
    (void)x, (void)ldx, (void)rows, (void)n, (void)rows_out, (void)n_pad, (void)dst, (void)ldd;
}
void ct_attn_bf16_pairs(const float *x, int64_t ldx, int64_t rows, int64_t n, int64_t np,
                        int64_t n_pad, uint32_t *dst, int64_t ldd) {
    (void)x, (void)ldx, (void)rows, (void)n, (void)np, (void)n_pad, (void)dst, (void)ldd;
}
void ct_attn_bf16_pairs_t(const float *x, int64_t ldx, int64_t rows, int64_t n, int64_t np,
                          int64_t t_pad, uint32_t *dst, int64_t ldd) {
    (void)x, (void)ldx, (void)rows, (void)n, (void)np, (void)t_pad, (void)dst, (void)ldd;
}

#endif
