/* Causal, grouped-KV, segment-aware attention on InternLM2's packed qkv,
 * computed blockwise ("flash attention") on the CPU.
 *
 * Layout: a qkv row holds, for each KV head g, G query heads, then k_g, then
 * v_g (head_dim each); query head h reads KV head h / G. Key j is visible to
 * query i iff j <= i and both lie in the same run (packed sample: the runs
 * boundaries), so query i sees the keys [start(i), i] and key j is seen by the
 * queries [j, end(j)).
 *
 * Forward, per (query head, block of BLK queries): walk the visible key blocks
 * with an online softmax (running max m, sum l, unnormalised O), then
 * out = O / l and lse = m + log l. Only out and lse [Hq, T] are kept. Scores
 * are computed transposed (Sᵀ = K·Qᵀ, one row per key) so the softmax
 * statistics are element-wise over queries and vectorize, and Qᵀ is packed
 * once per query block instead of packing Kᵀ for every key block.
 * Backward (FlashAttention-2), work item = a KV head (split by query heads when
 * there are too few KV heads for the threads); per query head, per key block,
 * recompute P = exp(S - lse) for every query block that sees the keys, with
 * D_i = rowsum(dO_i * O_i):
 *   dV += Pᵀ·dO,  dS = P * (dO·Vᵀ - D),  dK += scale·dSᵀ·Q,  dQ += scale·dS·K.
 * Each dQ row belongs to one work item and each dK/dV row to one (item, key
 * block), so every sum runs in a fixed order: results do not depend on the
 * schedule. No T×T buffer exists; per-thread tiles live in `scratch`.
 *
 * K and V are packed once per call into contiguous zero-padded rows, and the
 * backward packs Q and dO of one head at a time, so the inner loops never walk
 * strided qkv rows. Block products use one register-blocked kernel (mm_tile):
 * tile rows are padded to 4, columns to 16.
 *
 * bf16 math (p->compute == CT_BF16, PyTorch autocast's attention): every block
 * product takes bf16-rounded operands (nearest even) and sums the products in
 * fp32: S from bf16 Q and K, P rounded before P·V and dV, dO before dP and dV,
 * dS before dK and dQ. The scale multiplies the fp32 sums (S, dK, dQ); the
 * softmax, m, l, lse, D and every accumulator stay fp32. With AVX512-BF16
 * (attention_bf16.c) the operands are packed once as bf16 pairs: K and V per
 * call (rows for S, pairs of rows for P·V and dS·K, transposed pairs for the
 * backward's S and dP), Q and dO per head, Qᵀ per query block, P and dS per
 * block. Without it (or with ct_bf16_force_fallback) the fp32 code runs on the
 * rounded values with mm_tile_pairs, which adds the products in VDPBF16PS's
 * order: both paths give the same bits for normal numbers. */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <string.h>

#include "../ct_error.h"
#include "../ct_inline.h" /* ct_expf: branch-free, so the softmax loops vectorize */
#include "attention_bf16.h"
#include "cpu_kernels.h"
#include "simd.h" /* VL, vf: one SIMD register of floats */

enum { BLK = 64 }; /* queries and keys per block */

/* Left alone, gcc re-loads b0/b1 as a memory operand of each of their four
 * multiplies; the loads, not the arithmetic, then bound the tile kernel
 * (~20% slower). An empty asm that "modifies" them pins them in registers. */
#if defined(__SSE2__) && (defined(__x86_64__) || defined(__i386__))
#define KEEP_IN_REGISTERS(x, y) __asm__("" : "+x"(x), "+x"(y))
#else
#define KEEP_IN_REGISTERS(x, y) ((void)0)
#endif

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* The 4×(2·VL) register block of mm_tile and mm_tile_pairs: C rows c0..c3,
 * columns j.., in c00..c31; MM_STEP adds row k of B (at bk) times column k of
 * A (at ak, row stride sai). */
#define MM_LOAD_C()                                                                            \
    float *c0 = C + (size_t)i * (size_t)ldc + (size_t)j, *c1 = c0 + ldc, *c2 = c1 + ldc,        \
          *c3 = c2 + ldc;                                                                      \
    vf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0}; \
    if (acc) {                                                                                 \
        memcpy(&c00, c0, vb);                                                                  \
        memcpy(&c01, c0 + VL, vb);                                                             \
        memcpy(&c10, c1, vb);                                                                  \
        memcpy(&c11, c1 + VL, vb);                                                             \
        memcpy(&c20, c2, vb);                                                                  \
        memcpy(&c21, c2 + VL, vb);                                                             \
        memcpy(&c30, c3, vb);                                                                  \
        memcpy(&c31, c3 + VL, vb);                                                             \
    }
#define MM_STEP(ak, bk)                                                                        \
    do {                                                                                       \
        vf b0, b1;                                                                             \
        memcpy(&b0, (bk), vb);                                                                 \
        memcpy(&b1, (bk) + VL, vb);                                                            \
        KEEP_IN_REGISTERS(b0, b1);                                                             \
        float a0 = (ak)[0], a1 = (ak)[sai], a2 = (ak)[2 * sai], a3 = (ak)[3 * sai];            \
        c00 += a0 * b0;                                                                        \
        c01 += a0 * b1;                                                                        \
        c10 += a1 * b0;                                                                        \
        c11 += a1 * b1;                                                                        \
        c20 += a2 * b0;                                                                        \
        c21 += a2 * b1;                                                                        \
        c30 += a3 * b0;                                                                        \
        c31 += a3 * b1;                                                                        \
    } while (0)
#define MM_STORE_C()                                                                           \
    memcpy(c0, &c00, vb);                                                                      \
    memcpy(c0 + VL, &c01, vb);                                                                 \
    memcpy(c1, &c10, vb);                                                                      \
    memcpy(c1 + VL, &c11, vb);                                                                 \
    memcpy(c2, &c20, vb);                                                                      \
    memcpy(c2 + VL, &c21, vb);                                                                 \
    memcpy(c3, &c30, vb);                                                                      \
    memcpy(c3 + VL, &c31, vb)

/* C[M×N] (acc ? += : =) A·B with A(i,k) = A[i*sai + k*sak] (so a transposed
 * operand needs no copy), B [K×N] row stride ldb, C row stride ldc;
 * M % 4 == 0, N % 16 == 0. Each C element is summed over k in order
 * (reproducible); a 4×(2·VL) block of C stays in registers. */
static void mm_tile(int64_t M, int64_t N, int64_t K, const float *A, int64_t sai, int64_t sak,
                    const float *B, int64_t ldb, float *C, int64_t ldc, bool acc) {
    const size_t vb = sizeof(vf);
    for (int64_t i = 0; i < M; i += 4) {
        for (int64_t j = 0; j < N; j += 2 * VL) {
            MM_LOAD_C();
            const float *a = A + (size_t)i * (size_t)sai, *b = B + (size_t)j;
            for (int64_t k = 0; k < K; k++, a += sak, b += ldb) MM_STEP(a, b);
            MM_STORE_C();
        }
    }
}

/* mm_tile summing in VDPBF16PS's order: k = 1, 0, 3, 2, ... (K odd: the last k
 * alone). With bf16-valued A and B every product is exact, so this is the fast
 * path's sum bit for bit (the bf16 math's fallback). */
static void mm_tile_pairs(int64_t M, int64_t N, int64_t K, const float *A, int64_t sai,
                          int64_t sak, const float *B, int64_t ldb, float *C, int64_t ldc,
                          bool acc) {
    const size_t vb = sizeof(vf);
    for (int64_t i = 0; i < M; i += 4) {
        for (int64_t j = 0; j < N; j += 2 * VL) {
            MM_LOAD_C();
            const float *a = A + (size_t)i * (size_t)sai, *b = B + (size_t)j;
            for (int64_t k = 0; k < K; k += 2, a += 2 * sak, b += 2 * ldb) {
                if (k + 1 < K) MM_STEP(a + sak, b + ldb);
                MM_STEP(a, b);
            }
            MM_STORE_C();
        }
    }
}

typedef void (*mm_fn)(int64_t M, int64_t N, int64_t K, const float *A, int64_t sai, int64_t sak,
                      const float *B, int64_t ldb, float *C, int64_t ldc, bool acc);

/* The block products' math: fp32; bf16 on rounded f32 values (fallback); bf16
 * pairs with VDPBF16PS (attention_bf16.c). */
enum { MATH_F32, MATH_BF16_ROUND, MATH_BF16_DOT };

/* The problem, resolved once per call. */
typedef struct {
    int64_t T, C;       /* tokens; qkv row width Hkv*(G+2)*hd */
    int64_t Hkv, G, Hq; /* KV heads, query heads per KV head, query heads */
    int64_t hd, hdp;    /* head_dim; padded to 16 */
    int64_t hp;         /* (hd + 1) / 2: pairs of a head's row (bf16 dot) */
    int math;           /* MATH_* */
    float scale;
    const int64_t *start; /* (T) first token of each token's sample */
    const int64_t *end;   /* (T) one past the last token of each token's sample */
} attn_dims;

static size_t q_col(const attn_dims *a, int64_t h) {
    return (size_t)(((h / a->G) * (a->G + 2) + h % a->G) * a->hd);
}
static size_t k_col(const attn_dims *a, int64_t g) { return (size_t)((g * (a->G + 2) + a->G) * a->hd); }
static size_t v_col(const attn_dims *a, int64_t g) { return k_col(a, g) + (size_t)a->hd; }

static float bf16_round(float x) { return ct_bf16_to_f32(ct_f32_to_bf16(x)); }

/* x[r][c] = bf16_round(x[r][c]) for r < rows, c < n (row stride ld). */
static void round_rows(float *x, int64_t ld, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < n; c++) x[r * ld + c] = bf16_round(x[r * ld + c]);
}

/* x[r][c] *= mul for r < rows, c < n (row stride ld). */
static void scale_rows(float *x, int64_t ld, int64_t rows, int64_t n, float mul) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < n; c++) x[r * ld + c] *= mul;
}

/* dst [n_pad, hdp] = mul * src rows r0.. (row stride ld, hd columns from col),
 * zero padded to n_pad rows and hdp columns; rnd: then rounded to bf16 values. */
static void pack_rows(const attn_dims *a, const float *src, int64_t ld, size_t col, int64_t r0,
                      int64_t n, int64_t n_pad, float mul, bool rnd, float *dst) {
    for (int64_t r = 0; r < n_pad; r++) {
        float *d = dst + (size_t)r * (size_t)a->hdp;
        if (r < n) {
            const float *s = src + (size_t)(r0 + r) * (size_t)ld + col;
            if (rnd)
                for (int64_t c = 0; c < a->hd; c++) d[c] = bf16_round(mul * s[c]);
            else
                for (int64_t c = 0; c < a->hd; c++) d[c] = mul * s[c];
            for (int64_t c = a->hd; c < a->hdp; c++) d[c] = 0.0f;
        } else {
            memset(d, 0, (size_t)a->hdp * sizeof *d);
        }
    }
}

/* dst [hd, BLK] = mul * transpose of qkv rows r0.. (hd columns from col),
 * columns n.. zero up to n_pad; rnd: then rounded to bf16 values. */
static void pack_cols(const attn_dims *a, const float *qkv, size_t col, int64_t r0, int64_t n,
                      int64_t n_pad, float mul, bool rnd, float *dst) {
    for (int64_t r = 0; r < n; r++) {
        const float *s = qkv + (size_t)(r0 + r) * (size_t)a->C + col;
        if (rnd)
            for (int64_t c = 0; c < a->hd; c++)
                dst[(size_t)c * BLK + (size_t)r] = bf16_round(mul * s[c]);
        else
            for (int64_t c = 0; c < a->hd; c++) dst[(size_t)c * BLK + (size_t)r] = mul * s[c];
    }
    for (int64_t c = 0; c < a->hd; c++)
        for (int64_t r = n; r < n_pad; r++) dst[(size_t)c * BLK + (size_t)r] = 0.0f;
}

/* [*lo, *hi) = [x_lo - base, x_hi - base) clamped to [0, n] (empty when equal). */
static void clamp_range(int64_t x_lo, int64_t x_hi, int64_t base, int64_t n, int64_t *lo,
                        int64_t *hi) {
    int64_t l = x_lo - base, h = x_hi - base;
    l = l < 0 ? 0 : l > n ? n : l;
    h = h > n ? n : h < l ? l : h;
    *lo = l;
    *hi = h;
}

/* Each token's run start and end from the run boundaries (NULL: one
 * sequence); boundaries are clamped to [0, T] so a malformed runs tensor
 * cannot send a kernel outside the rows. */
static void segment_bounds(const ct_tensor *runs, int64_t T, int64_t *start, int64_t *end) {
    const int32_t *r = runs ? runs->data : NULL;
    int64_t n = runs ? ct_numel(runs) - 1 : 1;
    for (int64_t i = 0; i < T; i++) start[i] = 0, end[i] = T;
    for (int64_t k = 0; r && k < n; k++) {
        int64_t lo = r[k] < 0 ? 0 : r[k] > T ? T : r[k], hi = r[k + 1] < lo ? lo : r[k + 1] > T ? T : r[k + 1];
        for (int64_t i = lo; i < hi; i++) start[i] = lo, end[i] = hi;
    }
}

static int dims_init(attn_dims *a, const ct_tensor *qkv, const ct_attn_params *p) {
    a->T = ct_rows(qkv);
    a->C = ct_dim_from_end(qkv, 1);
    a->Hkv = p->n_kv_heads;
    a->G = p->group;
    a->Hq = a->Hkv * a->G;
    a->hd = p->head_dim;
    a->hdp = round_up(a->hd, 16);
    a->hp = (a->hd + 1) / 2;
    a->scale = p->scale;
    if (a->Hkv < 1 || a->G < 1 || a->hd < 1 || a->C != a->Hkv * (a->G + 2) * a->hd)
        return ct_errorf(CT_EINPUT, "attention: qkv width %lld does not match %lld kv heads × (%lld+2) × head_dim %lld",
                         (long long)a->C, (long long)a->Hkv, (long long)a->G, (long long)a->hd);
    CT_TRY(ct_compute_dtype_check(p->compute, "attention"));
    a->math = p->compute == CT_F32 ? MATH_F32 : ct_attn_bf16_dot() ? MATH_BF16_DOT : MATH_BF16_ROUND;
    return CT_OK;
}

/* K and V of every KV head, packed once per call and shared, read-only, by
 * all work items: no strided qkv rows in the inner loops. Tp = T + 4 rows
 * (zero rows let a tile's rows run up to 3 past T).
 *   fp32 math:  kv [Hkv, 2, Tp, hdp] f32 (rounded to bf16 values by the fallback);
 *   bf16 dot, forward:  [Hkv, 2, bf_words] u32: K as rows of pairs [Tp, hdp/2]
 *     (S's broadcast operand), V as pairs of rows [Tp/2, hdp] (P·V's);
 *   bf16 dot, backward: Kᵀ and Vᵀ as transposed pairs [Hkv][hp][Tc] each (S's
 *     and dP's vector operand, Tc = T rounded up to 16), then K as pairs of
 *     rows [Hkv][bf_words] (dS·K's). */
static int64_t kv_rows(const attn_dims *a) { return a->T + 4; }
static int64_t t_cols(const attn_dims *a) { return round_up(a->T, 16); }

/* u32 words of a bf16 [Tp, hdp] operand as rows of pairs or as pairs of rows. */
static size_t bf_words(const attn_dims *a) { return (size_t)(kv_rows(a) + 1) * (size_t)a->hdp / 2; }

static size_t kv_floats(const attn_dims *a, bool bwd) {
    if (a->math != MATH_BF16_DOT) return (size_t)(2 * a->Hkv * kv_rows(a) * a->hdp);
    if (!bwd) return (size_t)(2 * a->Hkv) * bf_words(a);
    return (size_t)a->Hkv * ((size_t)(2 * a->hp * t_cols(a)) + bf_words(a));
}

static const float *kv_at(const attn_dims *a, const float *kv, int64_t g, int which) {
    return kv + (size_t)(2 * g + which) * (size_t)kv_rows(a) * (size_t)a->hdp;
}

/* bf16 dot: which = 0 K rows, 1 V pairs (forward); which = 2 Kᵀ, 3 Vᵀ, 4 K pairs (backward). */
static const uint32_t *kvb_at(const attn_dims *a, const float *kv, int64_t g, int which) {
    const uint32_t *b = (const uint32_t *)kv;
    size_t tw = (size_t)(a->hp * t_cols(a));
    if (which < 2) return b + (size_t)(2 * g + which) * bf_words(a);
    if (which < 4) return b + (size_t)((which - 2) * a->Hkv + g) * tw;
    return b + 2 * (size_t)a->Hkv * tw + (size_t)g * bf_words(a);
}

static void pack_kv(const attn_dims *a, const float *qkv, float *kv, bool bwd, bool par) {
    const int64_t hdp = a->hdp;
    if (a->math != MATH_BF16_DOT) {
#pragma omp parallel for schedule(static) if (par)
        for (int64_t e = 0; e < 2 * a->Hkv; e++) /* e = 2g (k) or 2g+1 (v) */
            pack_rows(a, qkv, a->C, k_col(a, e / 2) + (size_t)(e % 2) * (size_t)a->hd, 0, a->T,
                      kv_rows(a), 1.0f, a->math == MATH_BF16_ROUND,
                      kv + (size_t)e * (size_t)kv_rows(a) * (size_t)hdp);
        return;
    }
    const int64_t per = bwd ? 3 : 2;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t e = 0; e < per * a->Hkv; e++) {
        int64_t g = e / per, which = e % per + (bwd ? 2 : 0);
        const float *k = qkv + k_col(a, g), *v = k + a->hd;
        uint32_t *d = (uint32_t *)kvb_at(a, kv, g, (int)which);
        if (which == 0) ct_attn_bf16_rows(k, a->C, a->T, a->hd, kv_rows(a), hdp, d, hdp / 2);
        if (which == 1) ct_attn_bf16_pairs(v, a->C, a->T, a->hd, (kv_rows(a) + 1) / 2, hdp, d, hdp);
        if (which == 2 || which == 3)
            ct_attn_bf16_pairs_t(which == 2 ? k : v, a->C, a->T, a->hd, a->hp, t_cols(a), d, t_cols(a));
        if (which == 4) ct_attn_bf16_pairs(k, a->C, a->T, a->hd, (kv_rows(a) + 1) / 2, hdp, d, hdp);
    }
}

/* The call's setup shared by forward and backward: run bounds from runs into
 * bounds [2, T] (start, end), then K and V packed into kv. */
static void set_segments_pack_kv(attn_dims *a, const ct_tensor *runs, int64_t *bounds, const float *qkv, float *kv,
                                 bool bwd, bool par) {
    segment_bounds(runs, a->T, bounds, bounds + a->T);
    a->start = bounds;
    a->end = bounds + a->T;
    pack_kv(a, qkv, kv, bwd, par);
}

/* ---------------- forward ---------------- */

typedef struct {
    float *qt;         /* (hd, BLK) (scale·Q)ᵀ of the query block; bf16 dot: (hp, BLK) pairs */
    float *o;          /* (BLK, hdp) unnormalised output */
    float *pt;         /* (BLK, BLK) Sᵀ (key, query), then Pᵀ */
    uint32_t *pp;      /* (BLK/2, BLK) bf16 dot: Pᵀ as pairs of keys (key pair, query) */
    float *m, *l;      /* (BLK) running max and sum per query */
    float *mx, *alpha; /* (BLK) block max; rescale factor of old O and l */
} fwd_ws;

static size_t fwd_ws_floats(const attn_dims *a) {
    return (size_t)(2 * BLK * a->hdp + BLK * BLK + BLK * BLK / 2 + 4 * BLK);
}

static void fwd_ws_carve(const attn_dims *a, float *base, fwd_ws *w) {
    size_t tile = (size_t)(BLK * a->hdp);
    w->qt = base;
    w->o = w->qt + tile;
    w->pt = w->o + tile;
    w->m = w->pt + BLK * BLK;
    w->l = w->m + BLK;
    w->mx = w->l + BLK;
    w->alpha = w->mx + BLK;
    w->pp = (uint32_t *)(w->alpha + BLK);
}

/* Online-softmax update with the key block's scores w->pt [nk, nqp]: turns them
 * into Pᵀ (0 where masked) and rescales m, l and O. */
static void fwd_softmax(const attn_dims *a, int64_t i0, int64_t nq, int64_t nqp, int64_t k0,
                        int64_t nk, const fwd_ws *w) {
    float *m = w->m, *l = w->l, *mx = w->mx, *alpha = w->alpha;
    for (int64_t i = 0; i < nqp; i++) mx[i] = -INFINITY;
    for (int64_t j = 0; j < nk; j++) { /* key k0+j is seen by queries [k0+j, end) */
        const float *s = w->pt + (size_t)j * BLK;
        int64_t lo, hi;
        clamp_range(k0 + j, a->end[k0 + j], i0, nq, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) mx[i] = s[i] > mx[i] ? s[i] : mx[i];
    }
    for (int64_t i = 0; i < nqp; i++) {
        float mn = mx[i] > m[i] ? mx[i] : m[i];
        alpha[i] = mn == -INFINITY ? 1.0f : ct_expf(m[i] - mn);
        m[i] = mn;
        l[i] *= alpha[i];
    }
    for (int64_t j = 0; j < nk; j++) {
        float *s = w->pt + (size_t)j * BLK;
        int64_t lo, hi;
        clamp_range(k0 + j, a->end[k0 + j], i0, nq, &lo, &hi);
        for (int64_t i = 0; i < lo; i++) s[i] = 0.0f;
        for (int64_t i = lo; i < hi; i++) s[i] = ct_expf(s[i] - m[i]);
        for (int64_t i = hi; i < nqp; i++) s[i] = 0.0f;
        for (int64_t i = 0; i < nqp; i++) l[i] += s[i]; /* keys summed in order */
    }
    for (int64_t i = 0; i < nq; i++)
        if (alpha[i] != 1.0f) {
            float *o = w->o + (size_t)i * (size_t)a->hdp;
            for (int64_t d = 0; d < a->hdp; d++) o[d] *= alpha[i];
        }
}

/* Output rows [i0, i0+nq) of query head h. */
static void fwd_block(const attn_dims *a, const float *qkv, const float *kv, int64_t h,
                      int64_t i0, int64_t nq, float *out, float *lse, const fwd_ws *w) {
    const int64_t hdp = a->hdp, nq4 = round_up(nq, 4), nqp = round_up(nq, 16);
    const bool dot = a->math == MATH_BF16_DOT, rnd = a->math == MATH_BF16_ROUND;
    const mm_fn mm = rnd ? mm_tile_pairs : mm_tile;
    const int64_t g = h / a->G;
    const float *kr = dot ? NULL : kv_at(a, kv, g, 0), *vr = dot ? NULL : kv_at(a, kv, g, 1);
    const uint32_t *kbf = dot ? kvb_at(a, kv, g, 0) : NULL, *vbf = dot ? kvb_at(a, kv, g, 1) : NULL;
    uint32_t *qtb = (uint32_t *)w->qt;
    if (dot)
        ct_attn_bf16_pairs_t(qkv + (size_t)i0 * (size_t)a->C + q_col(a, h), a->C, nq, a->hd, a->hp,
                             nqp, qtb, BLK);
    else /* fp32: scale·Q; bf16: the scale multiplies S */
        pack_cols(a, qkv, q_col(a, h), i0, nq, nqp, rnd ? 1.0f : a->scale, rnd, w->qt);
    memset(w->o, 0, (size_t)(nq4 * hdp) * sizeof(float));
    for (int64_t i = 0; i < nqp; i++) w->m[i] = -INFINITY, w->l[i] = 0.0f;

    /* bf16: key blocks start even, so their key pairs are V's pair rows (and the
     * fallback pairs the same keys); a key before the sample's start gets P = 0 */
    int64_t k_first = a->math == MATH_F32 ? a->start[i0] : a->start[i0] / 2 * 2;
    for (int64_t k0 = k_first; k0 < i0 + nq; k0 += BLK) {
        int64_t nk = i0 + nq - k0 < BLK ? i0 + nq - k0 : BLK, nk4 = round_up(nk, 4);
        int64_t nkh = (nk + 1) / 2;
        /* Sᵀ = K·(scale·Q)ᵀ   (nk×hd)·(hd×nq); rows past nk are ignored */
        if (dot) {
            ct_attn_bf16_mm(nk4, nqp, a->hp, kbf + (size_t)k0 * (size_t)(hdp / 2), hdp / 2, 1, qtb,
                            BLK, w->pt, BLK, a->scale, false);
        } else {
            mm(nk4, nqp, a->hd, kr + (size_t)k0 * (size_t)hdp, hdp, 1, w->qt, BLK, w->pt, BLK,
               false);
            if (rnd) scale_rows(w->pt, BLK, nk, nqp, a->scale);
        }
        fwd_softmax(a, i0, nq, nqp, k0, nk, w);
        /* O += P·V = (Pᵀ)ᵀ·V   (nq×nk)·(nk×hd) */
        if (dot) {
            ct_attn_bf16_pairs(w->pt, BLK, nk, nqp, nkh, nqp, w->pp, BLK);
            ct_attn_bf16_mm(nq4, hdp, nkh, w->pp, 1, BLK, vbf + (size_t)(k0 / 2) * (size_t)hdp,
                            hdp, w->o, hdp, 1.0f, true);
        } else {
            if (rnd) round_rows(w->pt, BLK, nk, nqp);
            mm(nq4, hdp, nk, w->pt, 1, BLK, vr + (size_t)k0 * (size_t)hdp, hdp, w->o, hdp, true);
        }
    }
    const int64_t out_w = a->Hq * a->hd;
    for (int64_t r = 0; r < nq; r++) {
        const float *o = w->o + (size_t)r * (size_t)hdp;
        float *y = out + (size_t)(i0 + r) * (size_t)out_w + (size_t)(h * a->hd);
        float inv = 1.0f / w->l[r];
        for (int64_t d = 0; d < a->hd; d++) y[d] = o[d] * inv;
        lse[(size_t)h * (size_t)a->T + (size_t)(i0 + r)] = w->m[r] + logf(w->l[r]);
    }
}

int ct_cpu_attention_fwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                         ct_tensor *out, ct_tensor *lse, ct_arena *scratch) {
    attn_dims a;
    CT_TRY(dims_init(&a, qkv, p));
    if (a.T == 0) return CT_OK;
    const int nt = omp_get_max_threads();
    const bool par = a.Hq * a.T * a.T * a.hd > (1 << 20);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int64_t *bounds = ct_arena_alloc(scratch, 2 * (size_t)a.T * sizeof(int64_t)); /* start, end */
    float *kv = ct_arena_alloc(scratch, kv_floats(&a, false) * sizeof(float));
    float *ws = ct_arena_alloc(scratch, (size_t)nt * fwd_ws_floats(&a) * sizeof(float));
    if (!bounds || !kv || !ws) {
        ct_arena_rewind(scratch, mark);
        return ct_error_wrap(CT_ERUNTIME, "attention forward: scratch for T=%lld", (long long)a.T);
    }
    set_segments_pack_kv(&a, runs, bounds, qkv->data, kv, false, par);

    const float *q = qkv->data;
    float *o = out->data, *l = lse->data;
    const int64_t nqb = (a.T + BLK - 1) / BLK, items = a.Hq * nqb;
    /* Late query blocks see the most keys: hand them out first. */
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int64_t it = 0; it < items; it++) {
        fwd_ws w;
        fwd_ws_carve(&a, ws + (size_t)omp_get_thread_num() * fwd_ws_floats(&a), &w);
        int64_t h = it % a.Hq, qb = nqb - 1 - it / a.Hq;
        int64_t i0 = qb * BLK, nq = a.T - i0 < BLK ? a.T - i0 : BLK;
        fwd_block(&a, q, kv, h, i0, nq, o, l, &w);
    }
    ct_arena_rewind(scratch, mark);
    return CT_OK;
}

/* ---------------- backward ---------------- */

/* Per-thread buffers. fp32 math (and the bf16 fallback, on rounded values):
 * kt, vt, q, dout. bf16 dot: pp, dsp, dsb, qb, dob, qp, dop. Both: dk, dv, p,
 * ds, dq. */
typedef struct {
    float *kt;   /* (hd, BLK) Kᵀ of the key block */
    float *vt;   /* (hd, BLK) Vᵀ */
    float *dk;   /* (BLK, hdp) dK of the key block, summed over query blocks */
    float *dv;   /* (BLK, hdp) dV likewise */
    float *p;    /* (BLK, BLK) S (query, key), then P */
    float *ds;   /* (BLK, BLK) dP, then dS */
    float *q;    /* (Tp, hdp) scale·Q of the current head, all tokens (bf16: Q) */
    float *dout; /* (Tp, hdp) dO of the current head */
    float *dq;   /* (Tp, hdp) Σ dS·K of the current head (scaled when written out) */
    uint32_t *pp, *dsp; /* (BLK/2, BLK) P, dS as pairs of queries (query pair, key) */
    uint32_t *dsb;      /* (BLK, BLK/2) dS as rows of pairs of keys */
    uint32_t *qb, *dob; /* [Tp, hdp/2] Q, dO of the head as rows of pairs */
    uint32_t *qp, *dop; /* [Tp/2, hdp] Q, dO as pairs of rows */
} bwd_ws;

static size_t bwd_ws_floats(const attn_dims *a) {
    size_t all = (size_t)(kv_rows(a) * a->hdp), tile = (size_t)(BLK * a->hdp);
    if (a->math == MATH_BF16_DOT)
        return 2 * tile + 2 * BLK * BLK + 3 * (BLK * BLK / 2) + 4 * bf_words(a) + all;
    return 4 * tile + 2 * BLK * BLK + 3 * all;
}

static void bwd_ws_carve(const attn_dims *a, float *base, bwd_ws *w) {
    size_t tile = (size_t)(BLK * a->hdp), all = (size_t)(kv_rows(a) * a->hdp);
    memset(w, 0, sizeof *w);
    w->dk = base;
    w->dv = w->dk + tile;
    w->p = w->dv + tile;
    w->ds = w->p + BLK * BLK;
    w->dq = w->ds + BLK * BLK;
    float *rest = w->dq + all;
    if (a->math == MATH_BF16_DOT) {
        uint32_t *u = (uint32_t *)rest;
        w->pp = u;
        w->dsp = w->pp + BLK * BLK / 2;
        w->dsb = w->dsp + BLK * BLK / 2;
        w->qb = w->dsb + BLK * BLK / 2;
        w->dob = w->qb + bf_words(a);
        w->qp = w->dob + bf_words(a);
        w->dop = w->qp + bf_words(a);
    } else {
        w->kt = rest;
        w->vt = w->kt + tile;
        w->q = w->vt + tile;
        w->dout = w->q + all;
    }
}

/* Inputs of the backward. */
typedef struct {
    const float *qkv, *kv, *out, *lse, *dout;
    const float *dd; /* (Hq, T) D = rowsum(dO * O) */
    float *dqkv;
} bwd_io;

/* Query block [q0, q0+nq) of head h against key block [k0, k0+nk) whose Kᵀ, Vᵀ
 * are packed in w (bf16 dot: in io->kv): adds into w->dk, w->dv and rows of
 * w->dq. Tile rows past nq (up to 3, real rows of the head's buffers) get
 * P = dS = 0, so they add 0. */
static void bwd_block(const attn_dims *a, const bwd_io *io, int64_t h, int64_t q0, int64_t nq,
                      int64_t k0, int64_t nk, const bwd_ws *w) {
    const int64_t hdp = a->hdp, nq4 = round_up(nq, 4), nkp = round_up(nk, 16), g = h / a->G;
    const bool dot = a->math == MATH_BF16_DOT, rnd = a->math == MATH_BF16_ROUND;
    const mm_fn mm = rnd ? mm_tile_pairs : mm_tile;
    const float *lse = io->lse + (size_t)h * (size_t)a->T, *dd = io->dd + (size_t)h * (size_t)a->T;
    /* fp32 operands (unused by the bf16 dot path) */
    const float *q = dot ? NULL : w->q + (size_t)q0 * (size_t)hdp;
    const float *dout = dot ? NULL : w->dout + (size_t)q0 * (size_t)hdp;
    const float *kr = dot ? NULL : kv_at(a, io->kv, g, 0) + (size_t)k0 * (size_t)hdp;

    /* S = (scale·Q)·Kᵀ   (nq×hd)·(hd×nk);  dP = dO·Vᵀ   (nq×hd)·(hd×nk) */
    if (dot) {
        size_t half = (size_t)(hdp / 2);
        ct_attn_bf16_mm(nq4, nkp, a->hp, w->qb + (size_t)q0 * half, hdp / 2, 1,
                        kvb_at(a, io->kv, g, 2) + k0, t_cols(a), w->p, BLK, a->scale, false);
        ct_attn_bf16_mm(nq4, nkp, a->hp, w->dob + (size_t)q0 * half, hdp / 2, 1,
                        kvb_at(a, io->kv, g, 3) + k0, t_cols(a), w->ds, BLK, 1.0f, false);
    } else {
        mm(nq4, nkp, a->hd, q, hdp, 1, w->kt, BLK, w->p, BLK, false);
        mm(nq4, nkp, a->hd, dout, hdp, 1, w->vt, BLK, w->ds, BLK, false);
        if (rnd) scale_rows(w->p, BLK, nq4, nkp, a->scale);
    }
    for (int64_t r = 0; r < nq4; r++) {
        float *p = w->p + (size_t)r * BLK, *ds = w->ds + (size_t)r * BLK;
        int64_t lo = 0, hi = 0, i = q0 + r;
        if (r < nq) clamp_range(a->start[i], i + 1, k0, nk, &lo, &hi);
        float li = r < nq ? lse[i] : 0.0f, di = r < nq ? dd[i] : 0.0f;
        for (int64_t c = 0; c < lo; c++) p[c] = ds[c] = 0.0f;
        for (int64_t c = lo; c < hi; c++) {
            p[c] = ct_expf(p[c] - li);
            ds[c] = p[c] * (ds[c] - di); /* dS = P * (dP - D) */
        }
        for (int64_t c = hi; c < nkp; c++) p[c] = ds[c] = 0.0f;
    }
    if (dot) {
        const int64_t nqh = (nq + 1) / 2;
        const size_t qh = (size_t)(q0 / 2) * (size_t)hdp;
        ct_attn_bf16_pairs(w->p, BLK, nq4, nkp, nq4 / 2, nkp, w->pp, BLK);
        ct_attn_bf16_pairs(w->ds, BLK, nq4, nkp, nq4 / 2, nkp, w->dsp, BLK);
        ct_attn_bf16_rows(w->ds, BLK, nq4, nkp, nq4, nkp, w->dsb, BLK / 2);
        /* dV += Pᵀ·dO;  dK += dSᵀ·Q (scaled when written out);  dQ += dS·K */
        ct_attn_bf16_mm(nkp, hdp, nqh, w->pp, 1, BLK, w->dop + qh, hdp, w->dv, hdp, 1.0f, true);
        ct_attn_bf16_mm(nkp, hdp, nqh, w->dsp, 1, BLK, w->qp + qh, hdp, w->dk, hdp, 1.0f, true);
        ct_attn_bf16_mm(nq4, hdp, (nk + 1) / 2, w->dsb, BLK / 2, 1,
                        kvb_at(a, io->kv, g, 4) + (size_t)(k0 / 2) * (size_t)hdp, hdp,
                        w->dq + (size_t)q0 * (size_t)hdp, hdp, 1.0f, true);
        return;
    }
    if (rnd) {
        round_rows(w->p, BLK, nq4, nkp);
        round_rows(w->ds, BLK, nq4, nkp);
    }
    /* dV += Pᵀ·dO   (nk×nq)·(nq×hd) */
    mm(nkp, hdp, nq, w->p, 1, BLK, dout, hdp, w->dv, hdp, true);
    /* dK += dSᵀ·(scale·Q)   (nk×nq)·(nq×hd) */
    mm(nkp, hdp, nq, w->ds, 1, BLK, q, hdp, w->dk, hdp, true);
    /* dQ/scale += dS·K   (nq×nk)·(nk×hd) */
    mm(nq4, hdp, nk, w->ds, BLK, 1, kr, hdp, w->dq + (size_t)q0 * (size_t)hdp, hdp, true);
}

/* The per-head operands of bwd_block: Q and dO of head h. */
static void bwd_pack_head(const attn_dims *a, const bwd_io *io, int64_t h, const bwd_ws *w) {
    const int64_t out_w = a->Hq * a->hd, hdp = a->hdp, ph = (kv_rows(a) + 1) / 2;
    const float *qs = io->qkv + q_col(a, h), *ds = io->dout + (size_t)(h * a->hd);
    if (a->math == MATH_BF16_DOT) {
        ct_attn_bf16_rows(qs, a->C, a->T, a->hd, kv_rows(a), hdp, w->qb, hdp / 2);
        ct_attn_bf16_rows(ds, out_w, a->T, a->hd, kv_rows(a), hdp, w->dob, hdp / 2);
        ct_attn_bf16_pairs(qs, a->C, a->T, a->hd, ph, hdp, w->qp, hdp);
        ct_attn_bf16_pairs(ds, out_w, a->T, a->hd, ph, hdp, w->dop, hdp);
    } else {
        bool rnd = a->math == MATH_BF16_ROUND;
        pack_rows(a, io->qkv, a->C, q_col(a, h), 0, a->T, kv_rows(a), rnd ? 1.0f : a->scale, rnd,
                  w->q);
        pack_rows(a, io->dout, out_w, (size_t)(h * a->hd), 0, a->T, kv_rows(a), 1.0f, rnd, w->dout);
    }
}

/* Work item: query heads [h0, h1) of KV head g. Their dK/dV contributions are
 * added into dkv (row stride ldkv, k at column kc, v at kc + hd), head by head
 * and key block by key block; dQ goes straight into dqkv. */
static void bwd_item(const attn_dims *a, const bwd_io *io, int64_t g, int64_t h0, int64_t h1,
                     float *dkv, int64_t ldkv, size_t kc, const bwd_ws *w) {
    const int64_t hdp = a->hdp;
    const bool rnd = a->math == MATH_BF16_ROUND;
    /* dK's scale: fp32 folds it into Q (so ×1, exact); bf16 scales the fp32 sum */
    const float dk_mul = a->math == MATH_F32 ? 1.0f : a->scale;
    for (int64_t h = h0; h < h1; h++) {
        bwd_pack_head(a, io, h, w);
        memset(w->dq, 0, (size_t)(kv_rows(a) * hdp) * sizeof(float));
        for (int64_t k0 = 0; k0 < a->T; k0 += BLK) {
            int64_t nk = a->T - k0 < BLK ? a->T - k0 : BLK, nkp = round_up(nk, 16);
            if (a->math != MATH_BF16_DOT) {
                pack_cols(a, io->qkv, k_col(a, g), k0, nk, nkp, 1.0f, rnd, w->kt);
                pack_cols(a, io->qkv, v_col(a, g), k0, nk, nkp, 1.0f, rnd, w->vt);
            }
            memset(w->dk, 0, (size_t)(nkp * hdp) * sizeof(float));
            memset(w->dv, 0, (size_t)(nkp * hdp) * sizeof(float));
            /* Queries that see a key of this block: [k0, end of the last key's sample). */
            int64_t q_end = a->end[k0 + nk - 1];
            for (int64_t q0 = k0; q0 < q_end; q0 += BLK)
                bwd_block(a, io, h, q0, q_end - q0 < BLK ? q_end - q0 : BLK, k0, nk, w);
            for (int64_t r = 0; r < nk; r++) {
                float *dk = dkv + (size_t)(k0 + r) * (size_t)ldkv + kc, *dv = dk + a->hd;
                const float *sk = w->dk + (size_t)r * (size_t)hdp;
                const float *sv = w->dv + (size_t)r * (size_t)hdp;
                for (int64_t d = 0; d < a->hd; d++) dk[d] += dk_mul * sk[d], dv[d] += sv[d];
            }
        }
        for (int64_t i = 0; i < a->T; i++) {
            float *dq = io->dqkv + (size_t)i * (size_t)a->C + q_col(a, h);
            const float *t = w->dq + (size_t)i * (size_t)hdp;
            for (int64_t d = 0; d < a->hd; d++) dq[d] += a->scale * t[d];
        }
    }
}

int ct_cpu_attention_bwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                         const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout,
                         ct_tensor *dqkv, ct_arena *scratch) {
    attn_dims a;
    CT_TRY(dims_init(&a, qkv, p));
    if (a.T == 0 || !dqkv) return CT_OK;
    const int nt = omp_get_max_threads();
    /* Work items are KV heads. When they cannot keep the threads evenly busy,
     * each group's query heads are split too; the splits write their dK/dV
     * into private partials [Hkv, nsplit, T, 2·hd], summed afterwards in split
     * order (so the result depends on the thread count, not the schedule). */
    int64_t nsplit = 1;
    if (a.Hkv % nt != 0 && a.Hkv < 4 * (int64_t)nt) {
        nsplit = (4 * (int64_t)nt + a.Hkv - 1) / a.Hkv;
        if (nsplit > a.G) nsplit = a.G;
    }
    const int64_t items = a.Hkv * nsplit, part_w = 2 * a.hd;
    const bool par = a.Hq * a.T * a.T * a.hd > (1 << 20);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int64_t *bounds = ct_arena_alloc(scratch, 2 * (size_t)a.T * sizeof(int64_t)); /* start, end */
    float *dd = ct_arena_alloc(scratch, (size_t)(a.Hq * a.T) * sizeof(float));      /* (Hq, T) */
    float *kv = ct_arena_alloc(scratch, kv_floats(&a, true) * sizeof(float));
    float *ws = ct_arena_alloc(scratch, (size_t)nt * bwd_ws_floats(&a) * sizeof(float));
    float *part = NULL; /* (Hkv*nsplit, T, 2*hd) */
    if (nsplit > 1) part = ct_arena_alloc(scratch, (size_t)(items * a.T * part_w) * sizeof(float));
    if (!bounds || !dd || !kv || !ws || (nsplit > 1 && !part)) {
        ct_arena_rewind(scratch, mark);
        return ct_error_wrap(CT_ERUNTIME, "attention backward: scratch for T=%lld", (long long)a.T);
    }
    set_segments_pack_kv(&a, runs, bounds, qkv->data, kv, true, par);
    bwd_io io = {qkv->data, kv, out->data, lse->data, dout->data, dd, dqkv->data};
    const int64_t out_w = a.Hq * a.hd;

    /* D[h, i] = Σ_d dO[i, h, d] · O[i, h, d] */
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < a.T; i++)
        for (int64_t h = 0; h < a.Hq; h++) {
            const float *o = io.out + (size_t)i * (size_t)out_w + (size_t)(h * a.hd);
            const float *go = io.dout + (size_t)i * (size_t)out_w + (size_t)(h * a.hd);
            float s = 0.0f;
            for (int64_t d = 0; d < a.hd; d++) s += o[d] * go[d];
            dd[(size_t)h * (size_t)a.T + (size_t)i] = s;
        }

#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int64_t it = 0; it < items; it++) {
        bwd_ws w;
        bwd_ws_carve(&a, ws + (size_t)omp_get_thread_num() * bwd_ws_floats(&a), &w);
        int64_t g = it / nsplit, s = it % nsplit;
        int64_t h0 = g * a.G + s * a.G / nsplit, h1 = g * a.G + (s + 1) * a.G / nsplit;
        if (nsplit == 1) {
            bwd_item(&a, &io, g, h0, h1, io.dqkv, a.C, k_col(&a, g), &w);
        } else {
            float *pp = part + (size_t)it * (size_t)(a.T * part_w);
            memset(pp, 0, (size_t)(a.T * part_w) * sizeof *pp);
            bwd_item(&a, &io, g, h0, h1, pp, part_w, 0, &w);
        }
    }

    if (nsplit > 1) {
        /* dK, dV of KV head g += Σ_s partial[g, s], in split order. */
#pragma omp parallel for schedule(static) if (par)
        for (int64_t i = 0; i < a.T; i++)
            for (int64_t g = 0; g < a.Hkv; g++) {
                float *dst = io.dqkv + (size_t)i * (size_t)a.C + k_col(&a, g);
                for (int64_t s = 0; s < nsplit; s++) {
                    const float *src = part + ((size_t)(g * nsplit + s) * (size_t)a.T + (size_t)i) *
                                                  (size_t)part_w;
                    for (int64_t d = 0; d < part_w; d++) dst[d] += src[d];
                }
            }
    }
    ct_arena_rewind(scratch, mark);
    return CT_OK;
}
