/* bf16 GEMMs with fp32 accumulation (contract and summation order in gemm_bf16.h).
 *
 * Fast path (AVX512-BF16): a GotoBLAS-style blocked GEMM around VDPBF16PS,
 * which multiplies 16 pairs of bf16 by 16 pairs and adds both products to 16
 * fp32 lanes. Both operands are brought to u32 "pairs" bf16(x[k]) | bf16(x[k+1]) << 16
 * (k even; a zero pads an odd K), rounding f32 -> bf16 (RNE) on the way:
 *   op(A), once per M chunk (shared by the threads), unless the caller
 *   converted a plain A already (ct_bf16_rows_make: the same rows, whole):
 *     A [M, K]: a row-major bf16 copy, rows lda2 pairs apart (a bf16 row is
 *       already a row of pairs: a plain conversion); the kernel broadcasts the
 *       pairs of MR rows in place;
 *     Aᵀ (A stored [K, M]): packed micro-panels [K block q][MR-row panel i][pair p][MR]
 *       (a pair is two stored rows, interleaved; 4 panels, 48 columns, per pass);
 *   op(B), once per (K block, NC-column block), by the thread that owns the
 *   columns (a bf16 B as stored, an f32 B rounded as it is packed), from B
 *   [N, K] (Bᵀ: 16 columns × 16 pairs transposed in registers) or B [K, N]
 *   (two stored rows interleaved):
 *     [NR-column micro-panel j][pair p][NR]               (per thread)
 * The microkernel keeps an MR×NR tile of C in MR·NR/16 zmm accumulators and, per
 * pair, loads NR/16 zmm of B and broadcasts one u32 of A per row. Loop nest per
 * thread, over the rows and the NR-column panels it owns:
 *   for NC-column block: for K block: pack B  ->  for MR panel: for NR panel: kernel
 * The packed B block [NC/NR][KCP][NR] (512 KiB) stays in L2 and the A of one
 * MR panel (KCP pairs of MR rows, 48 KiB) is reused from L1/L2 across the NR
 * panels; A's copy for all rows (M·K·2 bytes, one chunk for T = 512 and K up
 * to 16384) is read once per (NC block, K block). The row-major copy of a
 * plain A replaced packed micro-panels (a 16×16 register transpose per 16
 * pairs of 12 rows): same kernel speed, a quarter of the packing time, which
 * showed in the thin LoRA products (N = r = 64: +10-15%) and a little (1-3%)
 * in the frozen-weight ones. VDPBF16PS zmm issues one per cycle with latency
 * ~6 (Zen 4): the 24 independent accumulators of the 12×32 tile hide the
 * latency with room to spare, and the loads (2 zmm + 12 broadcasts per 24
 * VDPBF16PS) stay well below the load ports' rate. KCP covers K <= 2048 in
 * one block: larger tiles and K blocks measured within noise of each other
 * (~95% of the instruction's peak), smaller K blocks slower (partial sums to
 * and from C).
 * Between K blocks a tile's partial sums go to C itself when beta == 0 (old
 * contents are ignored anyway), else to a per-thread buffer so the old C
 * survives for the final c = alpha·sum + beta·c. Storing and reloading an fp32
 * partial is exact: every output is one fixed-order chain over k, whatever the
 * thread count or the partitioning.
 *
 * Fallback: op(A) and op(B) brought to bf16-valued f32 (f32 rounded, bf16
 * widened) in bounded tiles (TILE_BYTES each, any shape, stored layout kept),
 * then cblas_sgemm: the same products, summed in OpenBLAS's order. */
#include "gemm_bf16.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "avx512_bf16.h"

#include "../ct_error.h"
#include "../ct_inline.h"
#include "cpu_kernels.h"

#define TILE_BYTES ((size_t)4 << 20) /* fallback: one converted A chunk / B tile (f32) */

/* One GEMM's arguments: C [M, N] = alpha·bf16(op(A))·bf16(op(B)) + beta·C. */
typedef struct {
    bool ta, tb;    /* op(A) = Aᵀ (A stored [K, M]); op(B) = Bᵀ (B stored [N, K]) */
    ct_dtype bdt;   /* B's elements: CT_BF16 (used as stored) or CT_F32 (rounded) */
    int64_t M, N, K;
    float alpha, beta;
    const float *a; /* [M, K] or, ta, [K, M] (lda) */
    int64_t lda;
    const void *b;  /* [K, N] or, tb, [N, K] (ldb) */
    int64_t ldb;
    float *c;       /* [M, N] (ldc) */
    int64_t ldc;
    const uint32_t *ap; /* fast path, !ta: op(A) already as bf16 rows (apld pairs apart), or NULL */
    int64_t apld;
} gemm_args;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static float bf16r(float x) { return ct_bf16_to_f32(ct_f32_to_bf16(x)); }

/* Element offset `off` of B as a pointer (2- or 4-byte elements). */
static const void *b_at(const gemm_args *g, size_t off) {
    return g->bdt == CT_BF16 ? (const void *)((const uint16_t *)g->b + off)
                             : (const void *)((const float *)g->b + off);
}

/* ---- dispatch ---- */

static int dot_supported = -1; /* -1 until probed, then 0/1 */
static bool forced_fallback;

bool ct_cpu_bf16_dot_supported(void) {
    int s = __atomic_load_n(&dot_supported, __ATOMIC_RELAXED);
    if (s < 0) {
        s = 0;
#if defined(__x86_64__)
        __builtin_cpu_init();
        /* libgcc reports AVX-512 features only when XCR0 shows that the OS
         * saves the opmask and zmm state, so this covers the OS check too. */
        s = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#endif
        const char *env = getenv("CT_NO_BF16_DOT");
        if (env && *env && strcmp(env, "0") != 0) s = 0;
        __atomic_store_n(&dot_supported, s, __ATOMIC_RELAXED);
    }
    return s;
}

bool ct_bf16_force_fallback(bool on) {
    bool prev = forced_fallback;
    forced_fallback = on;
    return prev;
}

bool ct_bf16_fast_path(void) { return !forced_fallback && ct_cpu_bf16_dot_supported(); }

/* ---- fallback: f32 copies in bounded tiles + cblas_sgemm ---- */

/* dst [rows, cols] (row stride ldd) = the bf16 values of src [rows, cols] (row
 * stride lds; bf16 widened, f32 rounded), rows split over the threads. */
static void to_bf16_values(const void *src, ct_dtype dt, int64_t lds, int64_t rows, int64_t cols,
                           float *dst, int64_t ldd) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t i = 0; i < rows; i++) {
        float *d = dst + (size_t)i * (size_t)ldd;
        if (dt == CT_BF16) {
            const uint16_t *sr = (const uint16_t *)src + (size_t)i * (size_t)lds;
            for (int64_t j = 0; j < cols; j++) d[j] = ct_bf16_to_f32(sr[j]);
        } else {
            const float *sr = (const float *)src + (size_t)i * (size_t)lds;
            for (int64_t j = 0; j < cols; j++) d[j] = bf16r(sr[j]);
        }
    }
}

static int fallback_gemm(const gemm_args *g, ct_arena *scratch) {
    int64_t M = g->M, N = g->N, K = g->K;
    int64_t mch = ct_cpu_rows_within(TILE_BYTES, K, M); /* rows of op(A) per chunk */
    int64_t tile = ct_cpu_rows_within(TILE_BYTES, K, N); /* columns of op(B) per tile */
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    /* op(A) chunk: [mch, K], or ta: [K, mch] (columns of the stored A) */
    float *ar = ct_arena_alloc(scratch, (size_t)mch * (size_t)K * sizeof(float));
    /* op(B) tile: tb: [tile, K] rows n of B; else [K, tile] columns n of B */
    float *bt = ar ? ct_arena_alloc(scratch, (size_t)tile * (size_t)K * sizeof(float)) : NULL;
    if (!bt) {
        ct_arena_rewind(scratch, mark);
        return ct_error_wrap(CT_ERUNTIME, "bf16 gemm %lldx%lldx%lld: fallback buffers",
                             (long long)M, (long long)N, (long long)K);
    }
    for (int64_t m0 = 0; m0 < M; m0 += mch) {
        int64_t mc = min64(mch, M - m0);
        if (g->ta)
            to_bf16_values(g->a + m0, CT_F32, g->lda, K, mc, ar, mc);
        else
            to_bf16_values(g->a + (size_t)m0 * (size_t)g->lda, CT_F32, g->lda, mc, K, ar, K);
        float *cm = g->c + (size_t)m0 * (size_t)g->ldc;
        for (int64_t n0 = 0; n0 < N; n0 += tile) {
            int64_t nc = min64(tile, N - n0);
            if (g->tb)
                to_bf16_values(b_at(g, (size_t)n0 * (size_t)g->ldb), g->bdt, g->ldb, nc, K, bt, K);
            else
                to_bf16_values(b_at(g, (size_t)n0), g->bdt, g->ldb, K, nc, bt, nc);
            /* C[m0.., n0..] = alpha·op(Ar)·op(Bt) + beta·C   (mc×K)·(K×nc) */
            cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                        g->tb ? CblasTrans : CblasNoTrans, (int)mc, (int)nc, (int)K, g->alpha, ar,
                        g->ta ? (int)mc : (int)K, bt, g->tb ? (int)K : (int)nc, g->beta, cm + n0,
                        (int)g->ldc);
        }
    }
    ct_arena_rewind(scratch, mark);
    return CT_OK;
}

/* ---- fast path: AVX512-BF16 ---- */
#if defined(__x86_64__)

#define MR 12        /* rows of A per micro-panel: one broadcast per row and pair */
#define NV 2         /* zmm of accumulators per row */
#define NR (16 * NV) /* columns of B per micro-panel */
#define KCP 1024     /* pairs per K block: K <= 2048 is one block (no partial sums) */
#define NC 128       /* columns per packed B block [NC/NR][KCP][NR] u32 = 512 KiB (L2) */
#define PF_AHEAD 8   /* pack_b_nt prefetches this many 64-byte steps ahead */
#define A_CHUNK_BYTES ((size_t)16 << 20) /* op(A)'s bf16 copy of one M chunk, at most */
#define MAX_CHUNK_ROWS 2048 /* with own partial sums: bounds their buffer (chunks: MR·170 rows) */

_Static_assert(NC % NR == 0 && KCP % 16 == 0, "blocking");
_Static_assert(CT_ARENA_ALIGN % 64 == 0, "packed panels need 64-byte aligned scratch");

/* Kernel flags: LOAD starts from the partial sums in `part` (else from zero);
 * FINAL writes c = alpha·acc + beta·c (else stores the partial sums to `part`). */
enum { K_LOAD = 1, K_FINAL = 2 };

/* Masks of the valid lanes of each accumulator column group for nr valid columns. */
CT_AVX512BF16 static inline __mmask16 col_mask(int nr, int v) {
    int left = nr - 16 * v;
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* The MR×NR tile of C: rows [0, mr), columns [0, nr) are real (the packed
 * panels are zero-padded beyond). Pair p of row r of A is a[r·ars + p·aps]:
 * a packed micro-panel [kc][MR] (ars 1, aps MR) or MR rows of a row-major bf16
 * A (ars = its row stride in pairs, aps 1); b [kc][NR] (64-byte aligned). */
CT_AVX512BF16 static inline __attribute__((always_inline)) void
kernel_body(int64_t kc, const uint32_t *a, int64_t ars, int64_t aps, const uint32_t *b,
            float *part, int64_t ldp, int flags, float *c, int64_t ldc, float alpha, float beta,
            int mr, int nr) {
    __m512 acc[MR][NV];
    __mmask16 mask[NV];
    for (int v = 0; v < NV; v++) mask[v] = col_mask(nr, v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[r][v] = (flags & K_LOAD) && r < mr
                            ? _mm512_maskz_loadu_ps(mask[v], part + (size_t)r * (size_t)ldp + 16 * v)
                            : _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; p++) {
        __m512bh bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = (__m512bh)_mm512_load_si512(b + p * NR + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * ars + p * aps]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], bv[v], av);
        }
    }
    if (flags & K_FINAL) {
        __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
        for (int r = 0; r < mr; r++)
            for (int v = 0; v < NV; v++) {
                float *cp = c + (size_t)r * (size_t)ldc + 16 * v;
                __m512 y = _mm512_mul_ps(va, acc[r][v]); /* beta == 0: C is not read */
                if (beta != 0.0f)
                    y = _mm512_fmadd_ps(va, acc[r][v],
                                        _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask[v], cp)));
                _mm512_mask_storeu_ps(cp, mask[v], y);
            }
    } else {
        for (int r = 0; r < mr; r++)
            for (int v = 0; v < NV; v++)
                _mm512_mask_storeu_ps(part + (size_t)r * (size_t)ldp + 16 * v, mask[v], acc[r][v]);
    }
}

/* a: a packed micro-panel [kc][MR]. */
CT_AVX512BF16 static void kernel_packed(int64_t kc, const uint32_t *a, const uint32_t *b,
                                        float *part, int64_t ldp, int flags, float *c, int64_t ldc,
                                        float alpha, float beta, int mr, int nr) {
    kernel_body(kc, a, 1, MR, b, part, ldp, flags, c, ldc, alpha, beta, mr, nr);
}

/* a: MR rows of a row-major bf16 A, lda pairs apart. */
CT_AVX512BF16 static void kernel_rows(int64_t kc, const uint32_t *a, int64_t lda,
                                      const uint32_t *b, float *part, int64_t ldp, int flags,
                                      float *c, int64_t ldc, float alpha, float beta, int mr,
                                      int nr) {
    kernel_body(kc, a, lda, 1, b, part, ldp, flags, c, ldc, alpha, beta, mr, nr);
}

/* 16 pairs of one f32 row from k (even), rounded to bf16: lane j = bf16(x[k+2j]) |
 * bf16(x[k+2j+1]) << 16; elements at or past K read as zero. */
CT_AVX512BF16 static inline __m512i row_pairs_f32(const float *row, int64_t k, int64_t K) {
    int64_t left = K - k;
    __m512 lo, hi;
    if (left >= 32) {
        lo = _mm512_loadu_ps(row + k);
        hi = _mm512_loadu_ps(row + k + 16);
    } else {
        __mmask16 ml = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        __mmask16 mh = left > 16 ? (__mmask16)((1u << (left - 16)) - 1u) : (__mmask16)0;
        lo = _mm512_maskz_loadu_ps(ml, row + k);
        hi = _mm512_maskz_loadu_ps(mh, row + k + 16);
    }
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* low half from lo: lane j = pair j */
}

/* One f32 row of K elements rounded to bf16, as kp = ceil(K/2) pairs (a zero
 * pads an odd K) in out (64-byte aligned, room for kp rounded up to 16). */
CT_AVX512BF16 static void row_to_bf16(const float *row, int64_t K, uint32_t *out) {
    for (int64_t k = 0; k < K; k += 32) _mm512_store_si512(out + k / 2, row_pairs_f32(row, k, K));
}



/* Lane j of the result = pair (lo[j], hi[j]) rounded to bf16: bf16(lo[j]) |
 * bf16(hi[j]) << 16. */
CT_AVX512BF16 static inline __m512i pairs_of(__m512 lo, __m512 hi) {
    /* cvtne2ps: bf16 j = lo[j], bf16 16+j = hi[j]; vpermw interleaves them */
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                         24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                         16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* ta: A stored [K, M] f32; a points at column m0 of row 0. Columns [0, mc)
 * (rows of op(A)), mc <= TA_GROUP·MR: the micro-panels of up to TA_GROUP
 * consecutive row panels, pairs [p0, p0+kc), into out + j·pstride [kc][MR]
 * for panel j; rows >= mc are zero. One pair per step: rows 2p and 2p+1 of
 * the stored A, 48 columns each (3 whole cache lines: a panel's 12 columns
 * alone would fetch each line of a strided column walk up to twice), rounded
 * and interleaved, then split into the 4 panels with valignd. */
#define TA_GROUP 4
_Static_assert(TA_GROUP * MR == 48, "pack_a_t moves 3 zmm per row");
CT_AVX512BF16 static void pack_a_t(const float *a, int64_t lda, int64_t mc, int64_t K, int64_t p0,
                                   int64_t kc, uint32_t *out, size_t pstride) {
    const __mmask16 rows = (__mmask16)((1u << MR) - 1u);
    __mmask16 m[3];
    for (int v = 0; v < 3; v++) {
        int64_t left = mc - 16 * v;
        m[v] = left >= 16 ? (__mmask16)0xffff
               : left <= 0 ? (__mmask16)0
                           : (__mmask16)((1u << left) - 1u);
    }
    int np = (int)((mc + MR - 1) / MR); /* panels in this group */
    for (int64_t p = 0; p < kc; p++) {
        int64_t k = 2 * (p0 + p);
        bool odd_end = k + 1 >= K; /* row k+1 is the zero pad */
        const float *r0 = a + (size_t)k * (size_t)lda, *r1 = odd_end ? r0 : r0 + lda;
        __m512i v[3];
        for (int j = 0; j < 3; j++) {
            __m512 x0 = _mm512_maskz_loadu_ps(m[j], r0 + 16 * j);
            __m512 x1 = odd_end ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m[j], r1 + 16 * j);
            v[j] = pairs_of(x0, x1);
        }
        __m512i pan[TA_GROUP] = {v[0], _mm512_alignr_epi32(v[1], v[0], 12),
                                 _mm512_alignr_epi32(v[2], v[1], 8),
                                 _mm512_alignr_epi32(v[2], v[2], 4)};
        for (int j = 0; j < np; j++)
            _mm512_mask_storeu_epi32(out + (size_t)j * pstride + (size_t)p * MR, rows, pan[j]);
    }
}

/* nt: B [N, K] bf16, rows n = columns of op(B). Columns [0, nc) of b (row
 * stride ldb), pairs [p0, p0+kc), into panels [ceil(nc/NR)][kc][NR]; a pair is
 * one u32 of a row, columns >= nc are zero. 16 columns × 16 pairs at a time,
 * transposed in registers. */
CT_AVX512BF16 static void pack_b_nt(const uint16_t *b, int64_t ldb, int64_t nc, int64_t K,
                                    int64_t p0, int64_t kc, uint32_t *out) {
    for (int64_t j0 = 0; j0 < (nc + NR - 1) / NR * NR; j0 += 16) { /* the last panel's padding too */
        uint32_t *o = out + (size_t)(j0 / NR) * (size_t)kc * NR + j0 % NR;
        for (int64_t p = 0; p < kc; p += 16) {
            int64_t k = 2 * (p0 + p), left = K - k;
            __mmask32 m = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1u);
            __m512i x[16]; /* x[i]: pairs p .. p+15 of column j0+i */
            for (int i = 0; i < 16; i++) {
                if (j0 + i >= nc) {
                    x[i] = _mm512_setzero_si512();
                    continue;
                }
                const uint16_t *row = b + (size_t)(j0 + i) * (size_t)ldb + k;
                /* 16 row streams at once: the hardware prefetchers need help */
                if (left > 32 * PF_AHEAD)
                    _mm_prefetch((const char *)(row + 32 * PF_AHEAD), _MM_HINT_T0);
                x[i] = _mm512_maskz_loadu_epi16(m, row);
            }
            ct_avx512_transpose16(x);
            int64_t n = min64(16, kc - p);
            for (int64_t j = 0; j < n; j++) _mm512_store_si512(o + (p + j) * NR, x[j]);
        }
    }
}

/* nn: B [K, N] bf16. Columns [0, nc) of b (row stride ldb), pairs [p0, p0+kc),
 * into panels [ceil(nc/NR)][kc][NR]: rows 2p and 2p+1 interleaved. Row pair by
 * row pair, across all nc columns (long contiguous reads, few pages touched). */
CT_AVX512BF16 static void pack_b_nn(const uint16_t *b, int64_t ldb, int64_t nc, int64_t K,
                                    int64_t p0, int64_t kc, uint32_t *out) {
    /* unpacklo/hi_epi16 interleave within 128-bit lanes: lo holds the pairs of
     * columns 0-3, 8-11, 16-19, 24-27, hi those of 4-7, 12-15, ...; these
     * qword indices put them back in column order. */
    const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    int64_t width = (nc + NR - 1) / NR * NR; /* the last panel's padding too */
    for (int64_t p = 0; p < kc; p++) {
        int64_t k = 2 * (p0 + p);
        const uint16_t *r0 = b + (size_t)k * (size_t)ldb, *r1 = k + 1 < K ? r0 + ldb : NULL;
        for (int64_t j0 = 0; j0 < width; j0 += 32) { /* 32 columns per step */
            int64_t left = nc - j0;
            __mmask32 m = left >= 32 ? (__mmask32)0xffffffffu
                          : left <= 0 ? (__mmask32)0
                                      : (__mmask32)((1u << left) - 1u);
            __m512i x0 = _mm512_maskz_loadu_epi16(m, r0 + j0);
            __m512i x1 = r1 ? _mm512_maskz_loadu_epi16(m, r1 + j0) : _mm512_setzero_si512();
            __m512i lo = _mm512_unpacklo_epi16(x0, x1), hi = _mm512_unpackhi_epi16(x0, x1);
            uint32_t *o = out + (size_t)(j0 / NR) * (size_t)kc * NR + (size_t)p * NR + j0 % NR;
            _mm512_store_si512(o, _mm512_permutex2var_epi64(lo, first, hi));
            _mm512_store_si512(o + 16, _mm512_permutex2var_epi64(lo, second, hi));
        }
    }
}
_Static_assert(NV % 2 == 0, "pack_b_nn moves 32 columns per step");

/* pack_b_nt for an f32 B [N, K] (rows n = columns of op(B)), rounded to bf16:
 * 16 columns × 16 pairs at a time, transposed in registers. */
CT_AVX512BF16 static void pack_b_nt_f32(const float *b, int64_t ldb, int64_t nc, int64_t K,
                                        int64_t p0, int64_t kc, uint32_t *out) {
    for (int64_t j0 = 0; j0 < (nc + NR - 1) / NR * NR; j0 += 16) {
        uint32_t *o = out + (size_t)(j0 / NR) * (size_t)kc * NR + j0 % NR;
        for (int64_t p = 0; p < kc; p += 16) {
            __m512i x[16]; /* x[i]: pairs p .. p+15 of column j0+i */
            for (int i = 0; i < 16; i++)
                x[i] = j0 + i < nc
                           ? row_pairs_f32(b + (size_t)(j0 + i) * (size_t)ldb, 2 * (p0 + p), K)
                           : _mm512_setzero_si512();
            ct_avx512_transpose16(x);
            int64_t n = min64(16, kc - p);
            for (int64_t j = 0; j < n; j++) _mm512_store_si512(o + (p + j) * NR, x[j]);
        }
    }
}

/* pack_b_nn for an f32 B [K, N], rounded to bf16: rows 2p and 2p+1, 16
 * columns per step. */
CT_AVX512BF16 static void pack_b_nn_f32(const float *b, int64_t ldb, int64_t nc, int64_t K,
                                        int64_t p0, int64_t kc, uint32_t *out) {
    int64_t width = (nc + NR - 1) / NR * NR; /* the last panel's padding too */
    for (int64_t p = 0; p < kc; p++) {
        int64_t k = 2 * (p0 + p);
        const float *r0 = b + (size_t)k * (size_t)ldb, *r1 = k + 1 < K ? r0 + ldb : NULL;
        for (int64_t j0 = 0; j0 < width; j0 += 16) {
            int64_t left = nc - j0;
            __mmask16 m = left >= 16 ? (__mmask16)0xffff
                          : left <= 0 ? (__mmask16)0
                                      : (__mmask16)((1u << left) - 1u);
            __m512 x0 = _mm512_maskz_loadu_ps(m, r0 + j0);
            __m512 x1 = r1 ? _mm512_maskz_loadu_ps(m, r1 + j0) : _mm512_setzero_ps();
            _mm512_store_si512(out + (size_t)(j0 / NR) * (size_t)kc * NR + (size_t)p * NR + j0 % NR,
                               pairs_of(x0, x1));
        }
    }
}

/* Packs columns [jc, jc+nc) of op(B), pairs [p0, p0+kc), into panels. */
CT_AVX512BF16 static void pack_b(const gemm_args *g, int64_t jc, int64_t nc, int64_t p0,
                                 int64_t kc, uint32_t *out) {
    size_t off = g->tb ? (size_t)jc * (size_t)g->ldb : (size_t)jc;
    if (g->bdt == CT_BF16) {
        const uint16_t *b = (const uint16_t *)g->b + off;
        if (g->tb)
            pack_b_nt(b, g->ldb, nc, g->K, p0, kc, out);
        else
            pack_b_nn(b, g->ldb, nc, g->K, p0, kc, out);
    } else {
        const float *b = (const float *)g->b + off;
        if (g->tb)
            pack_b_nt_f32(b, g->ldb, nc, g->K, p0, kc, out);
        else
            pack_b_nn_f32(b, g->ldb, nc, g->K, p0, kc, out);
    }
}

/* Column groups tn (a divisor of nt) of the nt threads' tm × tn grid over mp
 * row panels and npan column panels: the fewest MR×NR tiles for the busiest
 * thread; ties go to more column groups (each row group packs its own B). */
static int pick_tn(int nt, int64_t mp, int64_t npan) {
    int best = 1;
    int64_t best_tiles = INT64_MAX;
    for (int d = 1; d <= nt; d++) {
        if (nt % d) continue;
        int64_t tiles = (npan + d - 1) / d * ((mp + nt / d - 1) / (nt / d));
        if (tiles <= best_tiles) best = d, best_tiles = tiles;
    }
    return best;
}

/* Row stride, in pairs, of the row-major bf16 copy of A: kp rounded up to a
 * cache line, plus one line where that is a multiple of 1 KiB (12 rows 4 KiB
 * apart would share one L1 set). */
static int64_t rows_stride(int64_t kp) {
    int64_t ld = (kp + 15) / 16 * 16;
    return ld % 256 == 0 ? ld + 16 : ld;
}

static int fast_gemm(const gemm_args *g, ct_arena *scratch) {
    int64_t M = g->M, N = g->N, K = g->K;
    int64_t kp = (K + 1) / 2, nq = (kp + KCP - 1) / KCP; /* pairs, K blocks */
    bool own_part = g->beta != 0.0f && nq > 1; /* partial sums can't live in C */
    /* op(A) of one M chunk, rounded to bf16: A [M, K] as row-major rows of lda2
     * pairs (the kernel reads them in place); a transposed A as packed
     * micro-panels [K block][panel][kc][MR] (lda2 = kp). */
    int64_t lda2 = g->ta ? kp : g->ap ? g->apld : rows_stride(kp);
    /* M chunk: within A_CHUNK_BYTES (and MAX_CHUNK_ROWS rows with own partial
     * sums), a multiple of MR rows; then the chunks are evened out (no runt
     * chunk that repacks B for a few rows). */
    int64_t mch = (int64_t)(A_CHUNK_BYTES / ((size_t)lda2 * sizeof(uint32_t))) / MR * MR;
    int64_t cap = own_part ? MAX_CHUNK_ROWS / MR * MR : INT64_MAX;
    mch = mch < MR ? MR : mch > cap ? cap : mch;
    int64_t nch = (M + mch - 1) / mch;
    mch = ((M + nch - 1) / nch + MR - 1) / MR * MR;
    int nthreads = omp_get_max_threads();
    size_t bp_words = (size_t)NC * KCP;                      /* per thread: [NC/NR][KCP][NR] */
    size_t part_floats = own_part ? (size_t)mch * NC : 0;   /* per thread: [rows, NC] */
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    uint32_t *ap = g->ap ? NULL /* converted already */
                         : ct_arena_alloc(scratch, (size_t)mch * (size_t)lda2 * sizeof(uint32_t));
    uint32_t *bp_all =
        g->ap || ap ? ct_arena_alloc(scratch, (size_t)nthreads * bp_words * sizeof(uint32_t))
                    : NULL;
    float *part_all = bp_all && own_part
                          ? ct_arena_alloc(scratch, (size_t)nthreads * part_floats * sizeof(float))
                          : NULL;
    if (!bp_all || (own_part && !part_all)) {
        ct_arena_rewind(scratch, mark);
        return ct_error_wrap(CT_ERUNTIME, "bf16 gemm %lldx%lldx%lld: packing buffers",
                             (long long)M, (long long)N, (long long)K);
    }
    int64_t npan = (N + NR - 1) / NR; /* NR-column panels of C */
    float alpha = g->alpha, beta = g->beta;
#pragma omp parallel num_threads(nthreads) if (M * N * K > 32768)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        uint32_t *bp = bp_all + (size_t)t * bp_words;
        float *part = own_part ? part_all + (size_t)t * part_floats : NULL;
        for (int64_t m0 = 0; m0 < M; m0 += mch) {
            int64_t mc = min64(mch, M - m0), mp = (mc + MR - 1) / MR;
            /* Thread t owns row panels [i0, i1) and columns [na, nb). */
            int tn = pick_tn(nt, mp, npan), tm = nt / tn, ti = t / tn, tj = t % tn;
            int64_t na = npan * tj / tn * NR, nb = min64(N, npan * (tj + 1) / tn * NR);
            /* the rows of this chunk: converted by the caller, or below */
            const uint32_t *arows = g->ap ? g->ap + (size_t)m0 * (size_t)lda2 : ap;
            if (g->ap) {
                /* nothing to convert (m0 is a multiple of MR: the view's zero
                 * rows pad the last panel) */
            } else if (g->ta) { /* micro-panels, TA_GROUP panels per pass */
                int64_t ng = (mp + TA_GROUP - 1) / TA_GROUP;
#pragma omp for schedule(static)
                for (int64_t ig = 0; ig < ng; ig++) {
                    int64_t i = ig * TA_GROUP, rows = min64(TA_GROUP * MR, mc - i * MR);
                    for (int64_t q = 0; q < nq; q++) {
                        int64_t kc = min64(KCP, kp - q * KCP);
                        uint32_t *o = ap + (size_t)q * KCP * (size_t)mp * MR +
                                      (size_t)i * (size_t)kc * MR;
                        pack_a_t(g->a + m0 + i * MR, g->lda, rows, K, q * KCP, kc, o,
                                 (size_t)kc * MR);
                    }
                }
            } else { /* rows; the last panel's padding rows zero */
#pragma omp for schedule(static)
                for (int64_t r = 0; r < mp * MR; r++) {
                    uint32_t *o = ap + (size_t)r * (size_t)lda2;
                    if (r < mc)
                        row_to_bf16(g->a + (size_t)(m0 + r) * (size_t)g->lda, K, o);
                    else
                        memset(o, 0, (size_t)kp * sizeof(uint32_t));
                }
            } /* implicit barrier: A is converted */
            int64_t i0 = mp * ti / tm, i1 = mp * (ti + 1) / tm;
            for (int64_t jc = na; jc < nb && i0 < i1; jc += NC) {
                int64_t nc = min64(NC, nb - jc);
                for (int64_t q = 0; q < nq; q++) {
                    int64_t kc = min64(KCP, kp - q * KCP);
                    pack_b(g, jc, nc, q * KCP, kc, bp);
                    int flags = (q > 0 ? K_LOAD : 0) | (q == nq - 1 ? K_FINAL : 0);
                    for (int64_t i = i0; i < i1; i++) {
                        int mr = (int)min64(MR, mc - i * MR);
                        for (int64_t j = 0; j * NR < nc; j++) {
                            int nr = (int)min64(NR, nc - j * NR);
                            float *cc = g->c + (size_t)(m0 + i * MR) * (size_t)g->ldc +
                                        (size_t)(jc + j * NR);
                            float *pp = own_part ? part + (size_t)(i - i0) * MR * NC + (size_t)j * NR
                                                 : cc;
                            int64_t ldpp = own_part ? NC : g->ldc;
                            const uint32_t *bj = bp + (size_t)j * (size_t)kc * NR;
                            if (g->ta)
                                kernel_packed(kc,
                                              ap + (size_t)q * KCP * (size_t)mp * MR +
                                                  (size_t)i * (size_t)kc * MR,
                                              bj, pp, ldpp, flags, cc, g->ldc, alpha, beta, mr, nr);
                            else
                                kernel_rows(kc,
                                            arows + (size_t)i * MR * (size_t)lda2 + (size_t)q * KCP,
                                            lda2, bj, pp, ldpp, flags, cc, g->ldc, alpha, beta, mr,
                                            nr);
                        }
                    }
                }
            }
#pragma omp barrier /* the next chunk overwrites A's copy */
        }
    }
    ct_arena_rewind(scratch, mark);
    return CT_OK;
}

/* The bf16 rows of ct_bf16_rows_make: A [M, K] f32 (lda) into rows of ld
 * pairs, rows [M, rows) zero; row_to_bf16 as fast_gemm does per chunk. */
static void rows_convert(const float *a, int64_t lda, int64_t M, int64_t K, int64_t rows,
                         int64_t ld, uint32_t *out) {
    int64_t kp = (K + 1) / 2;
#pragma omp parallel for schedule(static) if (M * K > 32768)
    for (int64_t r = 0; r < rows; r++) {
        uint32_t *o = out + (size_t)r * (size_t)ld;
        if (r < M)
            row_to_bf16(a + (size_t)r * (size_t)lda, K, o);
        else
            memset(o, 0, (size_t)kp * sizeof(uint32_t));
    }
}
#endif /* __x86_64__ */

/* ---- entry points ---- */

static int run_gemm(const char *name, const gemm_args *g, ct_arena *scratch) {
    if (g->M < 0 || g->N < 0 || g->K < 0)
        return ct_errorf(CT_EINPUT, "%s: negative size %lldx%lldx%lld", name, (long long)g->M,
                         (long long)g->N, (long long)g->K);
    if (g->bdt != CT_BF16 && g->bdt != CT_F32)
        return ct_errorf(CT_EINPUT, "%s: B must be bf16 or f32 (dtype %d)", name, (int)g->bdt);
    int64_t arows = g->ta ? g->K : g->M, acols = g->ta ? g->M : g->K; /* the stored A */
    int64_t brows = g->tb ? g->N : g->K, bcols = g->tb ? g->K : g->N; /* the stored B */
    if ((arows > 0 && g->lda < acols) || (brows > 0 && g->ldb < bcols) ||
        (g->M > 0 && g->ldc < g->N))
        return ct_errorf(CT_EINPUT,
                         "%s %lldx%lldx%lld: row stride narrower than the row (lda %lld, ldb %lld, "
                         "ldc %lld)",
                         name, (long long)g->M, (long long)g->N, (long long)g->K, (long long)g->lda,
                         (long long)g->ldb, (long long)g->ldc);
    if (g->M == 0 || g->N == 0) return CT_OK;
    if (g->K == 0) { /* an empty sum: c = beta·c */
        for (int64_t m = 0; m < g->M; m++)
            for (int64_t n = 0; n < g->N; n++) {
                float *cp = g->c + (size_t)m * (size_t)g->ldc + (size_t)n;
                *cp = g->beta == 0.0f ? 0.0f : g->beta * *cp;
            }
        return CT_OK;
    }
#if defined(__x86_64__)
    if (ct_bf16_fast_path()) return fast_gemm(g, scratch);
#endif
    return fallback_gemm(g, scratch);
}

/* Largest bf16 copy ct_bf16_rows_make makes. */
#define ROWS_MAX_BYTES ((size_t)64 << 20)

int ct_bf16_rows_make(const float *a, int64_t lda, int64_t M, int64_t K, ct_arena *scratch,
                      ct_bf16_rows *out) {
    *out = (ct_bf16_rows){a, lda, NULL, 0, M, K};
    if (M < 0 || K < 0 || (M > 0 && lda < K))
        return ct_errorf(CT_EINPUT, "ct_bf16_rows_make: %lldx%lld, lda %lld", (long long)M,
                         (long long)K, (long long)lda);
#if defined(__x86_64__)
    if (M == 0 || K == 0 || !ct_bf16_fast_path()) return CT_OK;
    int64_t kp = (K + 1) / 2, ld = rows_stride(kp), rows = (M + MR - 1) / MR * MR;
    size_t bytes = (size_t)rows * (size_t)ld * sizeof(uint32_t);
    if (bytes > ROWS_MAX_BYTES) return CT_OK; /* the GEMMs convert chunk by chunk */
    uint32_t *p = ct_arena_alloc(scratch, bytes);
    if (!p)
        return ct_error_wrap(CT_ERUNTIME, "ct_bf16_rows_make %lldx%lld", (long long)M,
                             (long long)K);
    rows_convert(a, lda, M, K, rows, ld, p);
    out->pairs = p;
    out->ld = ld;
#else
    (void)scratch;
#endif
    return CT_OK;
}

int ct_bf16_rows_cols(const ct_bf16_rows *rows, int64_t k0, int64_t kn, ct_bf16_rows *out) {
    if (k0 < 0 || kn < 0 || k0 + kn > rows->K)
        return ct_errorf(CT_EINPUT, "ct_bf16_rows_cols: columns [%lld, %lld) of %lld",
                         (long long)k0, (long long)(k0 + kn), (long long)rows->K);
    *out = (ct_bf16_rows){rows->a + k0, rows->lda, NULL, 0, rows->M, kn};
    /* pair-aligned: starts on a pair; its last pair holds no column past the
     * slice (an even width, or the end of A, whose odd tail is zero-padded) */
    if (rows->pairs && k0 % 2 == 0 && (kn % 2 == 0 || k0 + kn == rows->K)) {
        out->pairs = rows->pairs + k0 / 2;
        out->ld = rows->ld;
    }
    return CT_OK;
}

int ct_bf16_gemm_rows(const ct_bf16_rows *a, bool trans_b, int64_t N, float alpha, const void *b,
                      ct_dtype b_dtype, int64_t ldb, float beta, float *c, int64_t ldc,
                      ct_arena *scratch) {
    gemm_args g = {false, trans_b, b_dtype, a->M, N, a->K, alpha, beta, a->a, a->lda, b, ldb,
                   c, ldc, NULL, 0};
    if (ct_bf16_fast_path()) { /* else the fallback reads the f32 A */
        g.ap = a->pairs;
        g.apld = a->ld;
    }
    return run_gemm("ct_bf16_gemm_rows", &g, scratch);
}

int ct_bf16_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *a, int64_t lda, const void *b, ct_dtype b_dtype, int64_t ldb,
                 float beta, float *c, int64_t ldc, ct_arena *scratch) {
    gemm_args g = {trans_a, trans_b, b_dtype, M, N, K, alpha, beta, a, lda, b, ldb, c, ldc,
                   NULL, 0};
    return run_gemm("ct_bf16_gemm", &g, scratch);
}

int ct_bf16_gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float *a, int64_t lda,
                    const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc,
                    ct_arena *scratch) {
    return ct_bf16_gemm(false, true, M, N, K, alpha, a, lda, b, CT_BF16, ldb, beta, c, ldc, scratch);
}

int ct_bf16_gemm_nn(int64_t M, int64_t N, int64_t K, float alpha, const float *a, int64_t lda,
                    const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc,
                    ct_arena *scratch) {
    return ct_bf16_gemm(false, false, M, N, K, alpha, a, lda, b, CT_BF16, ldb, beta, c, ldc, scratch);
}
