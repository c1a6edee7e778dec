/* lora_linear on the CPU: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ and its backward.
 *
 * W [out, in] is frozen and never gets a grad. f32 W goes straight to sgemm;
 * 16-bit and quantized (nf4/fp4) W are converted to f32 one row tile at a time into
 * a scratch buffer of bounded size (weight_tile_bytes), so a 14336×4096 bf16
 * layer never exists whole in f32. The frozen-weight GEMMs and the dropout
 * helper here are shared with linear_xent.c (declared in cpu_kernels.h).
 *
 * Dropout acts on the LoRA input only; element (t, i) is dropped when
 * ct_uniform(seed, t*in + i) < p. The mask is regenerated from the seed in
 * backward (never stored); its temporaries are processed in token chunks so
 * the scratch need stays bounded (drop_chunk_bytes) for any T.
 *
 * Backward (dY [T, out], u = drop(x)·Aᵀ [T, r] saved by the forward):
 *   dB += s·dYᵀ·u     g = s·dY·B [T, r]     dA += gᵀ·drop(x)
 *   dx += dY·W + (g·A) ⊙ mask/(1-p)
 * All GEMMs are made outside OpenMP regions (cblas_sgemm, or gemm_bf16.c);
 * every output element is summed in a fixed order, so results repeat bit for
 * bit.
 *
 * With lin->compute == CT_BF16 all eight GEMMs run in bf16 with fp32 sums
 * (gemm_bf16.c): the two frozen-weight ones (x·Wᵀ and dY·W) take a bf16 W as
 * stored and other dtypes rounded to bf16 per row tile; the six LoRA ones
 * round their f32 inputs (drop(x), A, u, B, dY, g) to bf16 as they pack them.
 * u and g are fp32 sums (u is saved in f32) and are rounded only where they
 * enter the next GEMM; A, B, dA and dB stay f32. An activation that is the
 * plain (untransposed) A of two GEMMs is rounded once (ct_bf16_rows_make) and
 * shared: x for x·Wᵀ and x·Aᵀ (no dropout), dY for dY·W and s·dY·B. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "../ct_error.h"
#include "../ct_inline.h"
#include "cpu_kernels.h"
#include "gemm_bf16.h"

#define DEFAULT_TILE_BYTES ((size_t)4 << 20)
#define DROP_CHUNK_BYTES ((size_t)8 << 20)

static size_t weight_tile_bytes = DEFAULT_TILE_BYTES;

size_t ct_cpu_set_weight_tile_bytes(size_t bytes) {
    size_t prev = weight_tile_bytes;
    weight_tile_bytes = bytes ? bytes : DEFAULT_TILE_BYTES;
    return prev;
}

/* Few input rows (token-by-token decoding): a GEMM would re-pack the whole
 * weight for one row. Instead each thread takes a range of weight rows, brings
 * each row to f32 once (in place for f32 weights) and dots it with the M input
 * rows. Every output is one thread's fixed-order sum: deterministic. */
#define CT_GEMV_MAX_ROWS 4

static int gemv_xwt(int64_t M, const float *x, int64_t ldx, const ct_tensor *w, float alpha,
                    float beta, float *c, int64_t ldc, ct_arena *scratch) {
    int64_t N = w->shape[0], K = w->shape[1];
    int nthreads = omp_get_max_threads();
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    float *rows = NULL; /* [nthreads, K]: one converted weight row per thread */
    if (w->dtype != CT_F32) {
        rows = ct_arena_alloc(scratch, (size_t)nthreads * (size_t)K * sizeof(float));
        if (!rows) return CT_ERUNTIME;
        /* Converting row 0 here validates the weight (dtype, quant state) with
         * a proper message; the per-row conversions below then cannot fail. */
        int rc = ct_cpu_weight_rows_f32(w, 0, 1, rows);
        if (rc) {
            ct_arena_rewind(scratch, mark);
            return rc;
        }
    }
#pragma omp parallel num_threads(nthreads) if (N * K > 65536)
    {
        float *buf = rows ? rows + (size_t)omp_get_thread_num() * (size_t)K : NULL;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *wr = (const float *)w->data + (size_t)n * (size_t)K;
            if (buf) {
                (void)ct_cpu_weight_rows_f32(w, n, 1, buf);
                wr = buf;
            }
            for (int64_t m = 0; m < M; m++) {
                const float *xr = x + (size_t)m * (size_t)ldx;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t k = 0; k < K; k++) acc += xr[k] * wr[k];
                float *cm = c + (size_t)m * (size_t)ldc + (size_t)n;
                *cm = alpha * acc + (beta == 0.0f ? 0.0f : beta * *cm);
            }
        }
    }
    ct_arena_rewind(scratch, mark);
    return CT_OK;
}

/* ct_cpu_gemm_xwt (gw false, a = X) or ct_cpu_gemm_gw (gw true, a = G) with a
 * 16-bit or quantized W [N, K], converted to f32 one row tile Wt [nt, K] at a
 * time (weight_tile_bytes of scratch). */
static int tiled_gemm(bool gw, int64_t M, const float *a, int64_t lda, const ct_tensor *w, float alpha,
                      float beta, float *c, int64_t ldc, ct_arena *scratch) {
    int64_t N = w->shape[0], K = w->shape[1];
    int64_t tile = ct_cpu_rows_within(weight_tile_bytes, K, N);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    float *wt = ct_arena_alloc(scratch, (size_t)tile * (size_t)K * sizeof(float)); /* [tile, K] */
    int rc = wt ? CT_OK : CT_ERUNTIME;
    for (int64_t n0 = 0; !rc && n0 < N; n0 += tile) {
        int64_t nt = N - n0 < tile ? N - n0 : tile;
        rc = ct_cpu_weight_rows_f32(w, n0, nt, wt);
        if (rc) break;
        if (gw) /* C = alpha·G[:, n0:n0+nt]·Wt + beta·C   (M×nt)·(nt×K) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)nt, alpha,
                        a + n0, (int)lda, wt, (int)K, beta, c, (int)ldc);
        else /* C[:, n0:n0+nt] = alpha·X·Wtᵀ + beta·C[:, n0:n0+nt]   (M×K)·(K×nt) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)nt, (int)K, alpha, a,
                        (int)lda, wt, (int)K, beta, c + n0, (int)ldc);
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}

/* The bf16 versions: a bf16 W goes to the kernel whole; other dtypes are
 * rounded to bf16 one row tile Wt [nt, K] at a time. ar, when not NULL, is
 * the caller's bf16 copy of a (X [M, K], or G [M, N] for gw), shared with
 * other GEMMs; else a is converted here. */
static int gemm_bf16(bool gw, int64_t M, const float *a, int64_t lda, const ct_tensor *w, float alpha,
                     float beta, float *c, int64_t ldc, const ct_bf16_rows *ar, ct_arena *scratch) {
    int64_t N = w->shape[0], K = w->shape[1];
    ct_bf16_rows own = {a, lda, NULL, 0, M, gw ? N : K}; /* f32 only: converted per GEMM */
    if (!ar) ar = &own;
    if (w->dtype == CT_BF16) {
        const uint16_t *wb = w->data;
        if (gw) /* C = alpha·G·W + beta·C   (M×N)·(N×K) */
            return ct_bf16_gemm_rows(ar, false, K, alpha, wb, CT_BF16, K, beta, c, ldc, scratch);
        return ct_bf16_gemm_rows(ar, true, N, alpha, wb, CT_BF16, K, beta, c, ldc, scratch);
    }
    /* weight_tile_bytes of bf16: twice the rows of an f32 tile */
    int64_t tile = ct_cpu_rows_within(2 * weight_tile_bytes, K, N);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    uint16_t *wt = ct_arena_alloc(scratch, (size_t)tile * (size_t)K * sizeof(uint16_t)); /* [tile, K] */
    int rc = wt ? CT_OK : CT_ERUNTIME;
    for (int64_t n0 = 0; !rc && n0 < N; n0 += tile) {
        int64_t nt = N - n0 < tile ? N - n0 : tile;
        rc = ct_cpu_weight_rows_bf16(w, n0, nt, wt);
        if (rc) break;
        if (gw) { /* C = alpha·G[:, n0:n0+nt]·Wt + beta·C; later tiles add   (M×nt)·(nt×K) */
            ct_bf16_rows gc;
            rc = ct_bf16_rows_cols(ar, n0, nt, &gc);
            if (!rc)
                rc = ct_bf16_gemm_rows(&gc, false, K, alpha, wt, CT_BF16, K, n0 ? 1.0f : beta, c,
                                       ldc, scratch);
        } else /* C[:, n0:n0+nt] = alpha·X·Wtᵀ + beta·C[:, n0:n0+nt]   (M×K)·(K×nt) */
            rc = ct_bf16_gemm_rows(ar, true, nt, alpha, wt, CT_BF16, K, beta, c + n0, ldc, scratch);
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}

int ct_cpu_gemm_xwt(int64_t M, const float *x, int64_t ldx, const ct_tensor *w, ct_dtype compute,
                    float alpha, float beta, float *c, int64_t ldc, ct_arena *scratch) {
    int64_t N = w->shape[0], K = w->shape[1];
    if (M == 0 || N == 0) return CT_OK;
    if (compute == CT_BF16)
        return gemm_bf16(false, M, x, ldx, w, alpha, beta, c, ldc, NULL, scratch);
    if (M <= CT_GEMV_MAX_ROWS) return gemv_xwt(M, x, ldx, w, alpha, beta, c, ldc, scratch);
    if (w->dtype == CT_F32) {
        /* C = alpha·X·Wᵀ + beta·C   (M×K)·(K×N) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, alpha, x,
                    (int)ldx, (const float *)w->data, (int)K, beta, c, (int)ldc);
        return CT_OK;
    }
    return tiled_gemm(false, M, x, ldx, w, alpha, beta, c, ldc, scratch);
}

int ct_cpu_gemm_gw(int64_t M, const float *g, int64_t ldg, const ct_tensor *w, ct_dtype compute,
                   float alpha, float *c, int64_t ldc, ct_arena *scratch) {
    int64_t N = w->shape[0], K = w->shape[1];
    if (M == 0 || N == 0) return CT_OK;
    if (compute == CT_BF16)
        return gemm_bf16(true, M, g, ldg, w, alpha, 1.0f, c, ldc, NULL, scratch);
    if (w->dtype == CT_F32) {
        /* C += alpha·G·W   (M×N)·(N×K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)N, alpha, g,
                    (int)ldg, (const float *)w->data, (int)K, 1.0f, c, (int)ldc);
        return CT_OK;
    }
    return tiled_gemm(true, M, g, ldg, w, alpha, 1.0f, c, ldc, scratch); /* C += alpha·G·W, per tile */
}

void ct_cpu_dropout_rows(const float *src, float *dst, int64_t m, int64_t cols,
                         const int64_t *rows, int64_t row0, uint64_t seed, float p) {
    float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (m * cols > 16384)
    for (int64_t j = 0; j < m; j++) {
        uint64_t base = (uint64_t)(rows ? rows[j] : row0 + j) * (uint64_t)cols;
        const float *s = src + (size_t)j * (size_t)cols;
        float *d = dst + (size_t)j * (size_t)cols;
        for (int64_t i = 0; i < cols; i++)
            d[i] = ct_uniform(seed, base + (uint64_t)i) < p ? 0.0f : s[i] * keep_scale;
    }
}

/* One LoRA GEMM, C [M, N] = alpha·op(A)·op(B) + beta·C over f32 operands:
 * cblas_sgemm (compute CT_F32) or bf16 inputs with fp32 sums (CT_BF16). */
static int lora_gemm(ct_dtype compute, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                     float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                     float beta, float *c, int64_t ldc, ct_arena *scratch) {
    if (compute == CT_BF16)
        return ct_bf16_gemm(ta, tb, M, N, K, alpha, a, lda, b, CT_F32, ldb, beta, c, ldc, scratch);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
    return CT_OK;
}

/* u [T, r] = drop(x)·Aᵀ, with the dropped copy of x made chunk by chunk.
 * xr: x's bf16 copy (compute bf16, no dropout), or NULL. */
static int lora_down(const float *xs, int64_t T, int64_t in, const ct_linear *lin, uint64_t seed,
                     float *us, const ct_bf16_rows *xr, ct_arena *scratch) {
    int64_t r = lin->a->shape[0];
    const float *as = lin->a->data; /* [r, in] */
    float p = lin->dropout;
    if (p <= 0.0f && xr) /* u = x·Aᵀ from the shared copy */
        return ct_bf16_gemm_rows(xr, true, r, 1.0f, as, CT_F32, in, 0.0f, us, r, scratch);
    if (p <= 0.0f) /* u = x·Aᵀ   (T×in)·(in×r) */
        return lora_gemm(lin->compute, false, true, T, r, in, 1.0f, xs, in, as, in, 0.0f, us, r,
                         scratch);
    int64_t tc = ct_cpu_rows_within(DROP_CHUNK_BYTES, in, T);
    float *xd = ct_arena_alloc(scratch, (size_t)tc * (size_t)in * sizeof(float)); /* [tc, in] */
    if (!xd) return CT_ERUNTIME;
    int rc = CT_OK;
    for (int64_t t0 = 0; t0 < T && !rc; t0 += tc) {
        int64_t n = T - t0 < tc ? T - t0 : tc;
        ct_cpu_dropout_rows(xs + (size_t)t0 * (size_t)in, xd, n, in, NULL, t0, seed, p);
        /* u[t0:t0+n] = drop(x[t0:t0+n])·Aᵀ   (n×in)·(in×r) */
        rc = lora_gemm(lin->compute, false, true, n, r, in, 1.0f, xd, in, as, in, 0.0f,
                       us + (size_t)t0 * (size_t)r, r, scratch);
    }
    return rc;
}

int ct_cpu_lora_linear_fwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y,
                           ct_tensor *u, ct_arena *scratch) {
    int64_t T = ct_rows(x), in = ct_dim_from_end(x, 1), out = lin->w->shape[0];
    const float *xs = x->data;         /* [T, in] */
    float *ys = y ? y->data : NULL;    /* [T, out]; NULL: only u is wanted */
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int rc = CT_OK;
    /* bf16 without dropout: x·Wᵀ and x·Aᵀ share one bf16 copy of x */
    ct_bf16_rows xr_rows, *xr = NULL;
    if (ys && lin->a && T > 0 && lin->compute == CT_BF16 && lin->dropout <= 0.0f && out > 0) {
        rc = ct_bf16_rows_make(xs, in, T, in, scratch, &xr_rows);
        xr = &xr_rows;
    }
    if (!rc && ys) { /* y = x·Wᵀ   (T×in)·(in×out) */
        if (xr)
            rc = gemm_bf16(false, T, xs, in, lin->w, 1.0f, 0.0f, ys, out, xr, scratch);
        else
            rc = ct_cpu_gemm_xwt(T, xs, in, lin->w, lin->compute, 1.0f, 0.0f, ys, out, scratch);
    }
    if (!rc && lin->a && T > 0 && (ys || u)) {
        int64_t r = lin->a->shape[0];
        float *us = u ? u->data : ct_arena_alloc(scratch, (size_t)T * (size_t)r * sizeof(float));
        rc = us ? lora_down(xs, T, in, lin, seed, us, xr, scratch) : CT_ERUNTIME;
        if (!rc && ys) /* y += s·u·Bᵀ   (T×r)·(r×out) */
            rc = lora_gemm(lin->compute, false, true, T, out, r, lin->scale, us, r,
                           (const float *)lin->b->data, r, 1.0f, ys, out, scratch);
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}

/* The LoRA part of backward: dB, dA and the LoRA term of dx. dyr: dY's
 * bf16 copy shared with dY·W (compute bf16), or NULL. */
static int lora_bwd(const float *xs, int64_t T, int64_t in, int64_t out, const ct_linear *lin,
                    uint64_t seed, const float *us, const float *dys, const ct_bf16_rows *dyr,
                    float *dxs, float *das, float *dbs, ct_arena *scratch) {
    int64_t r = lin->a->shape[0];
    const float *as = lin->a->data, *bs = lin->b->data; /* A [r, in], B [out, r] */
    float s = lin->scale, p = lin->dropout;
    ct_dtype cd = lin->compute;
    int rc = CT_OK;
    if (dbs) /* dB += s·dYᵀ·u   (out×T)·(T×r) */
        rc = lora_gemm(cd, true, false, out, r, T, s, dys, out, us, r, 1.0f, dbs, r, scratch);
    if (rc || (!das && !dxs)) return rc;
    float *g = ct_arena_alloc(scratch, (size_t)T * (size_t)r * sizeof(float)); /* [T, r] */
    if (!g) return CT_ERUNTIME;
    /* g = s·dY·B   (T×out)·(out×r) */
    if (dyr)
        rc = ct_bf16_gemm_rows(dyr, false, r, s, bs, CT_F32, r, 0.0f, g, r, scratch);
    else
        rc = lora_gemm(cd, false, false, T, r, out, s, dys, out, bs, r, 0.0f, g, r, scratch);
    if (rc) return rc;
    if (p <= 0.0f) {
        if (das) /* dA += gᵀ·x   (r×T)·(T×in) */
            rc = lora_gemm(cd, true, false, r, in, T, 1.0f, g, r, xs, in, 1.0f, das, in, scratch);
        if (!rc && dxs) /* dx += g·A   (T×r)·(r×in) */
            rc = lora_gemm(cd, false, false, T, in, r, 1.0f, g, r, as, in, 1.0f, dxs, in, scratch);
        return rc;
    }
    /* With dropout the mask is regenerated per token chunk into buf. */
    int64_t tc = ct_cpu_rows_within(DROP_CHUNK_BYTES, in, T);
    float *buf = ct_arena_alloc(scratch, (size_t)tc * (size_t)in * sizeof(float)); /* [tc, in] */
    if (!buf) return CT_ERUNTIME;
    for (int64_t t0 = 0; t0 < T && !rc; t0 += tc) {
        int64_t n = T - t0 < tc ? T - t0 : tc;
        const float *gc = g + (size_t)t0 * (size_t)r; /* [n, r] */
        if (das) {
            ct_cpu_dropout_rows(xs + (size_t)t0 * (size_t)in, buf, n, in, NULL, t0, seed, p);
            /* dA += g[t0:t0+n]ᵀ·drop(x[t0:t0+n])   (r×n)·(n×in) */
            rc = lora_gemm(cd, true, false, r, in, n, 1.0f, gc, r, buf, in, 1.0f, das, in, scratch);
        }
        if (!rc && dxs) {
            /* buf = g[t0:t0+n]·A   (n×r)·(r×in), then ⊙ mask/(1-p) */
            rc = lora_gemm(cd, false, false, n, in, r, 1.0f, gc, r, as, in, 0.0f, buf, in, scratch);
            if (rc) break;
            ct_cpu_dropout_rows(buf, buf, n, in, NULL, t0, seed, p);
            float *dxc = dxs + (size_t)t0 * (size_t)in;
            size_t cnt = (size_t)n * (size_t)in;
#pragma omp parallel for simd schedule(static) if (cnt > 32768)
            for (size_t i = 0; i < cnt; i++) dxc[i] += buf[i];
        }
    }
    return rc;
}

int ct_cpu_lora_linear_bwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed,
                           const ct_tensor *u, const ct_tensor *dy, ct_tensor *dx, ct_tensor *da,
                           ct_tensor *db, ct_arena *scratch) {
    int64_t T = ct_rows(x), in = ct_dim_from_end(x, 1), out = lin->w->shape[0];
    const float *dys = dy->data; /* [T, out] */
    float *dxs = dx ? dx->data : NULL;
    if (!lin->a) da = db = NULL;
    if (T == 0 || (!dxs && !da && !db)) return CT_OK;
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int rc = CT_OK;
    /* bf16: dY·W and g = s·dY·B share one bf16 copy of dY */
    ct_bf16_rows dyr_rows, *dyr = NULL;
    if (dxs && lin->a && u && lin->compute == CT_BF16 && out > 0) {
        rc = ct_bf16_rows_make(dys, out, T, out, scratch, &dyr_rows);
        dyr = &dyr_rows;
    }
    if (!rc && dxs) { /* dx += dY·W   (T×out)·(out×in) */
        if (dyr)
            rc = gemm_bf16(true, T, dys, out, lin->w, 1.0f, 1.0f, dxs, in, dyr, scratch);
        else
            rc = ct_cpu_gemm_gw(T, dys, out, lin->w, lin->compute, 1.0f, dxs, in, scratch);
    }
    if (!rc && lin->a && (dxs || da || db)) {
        if (!u)
            rc = ct_errorf(CT_ERUNTIME, "lora_linear %s backward: the forward saved no u = drop(x)·Aᵀ",
                           lin->w->name ? lin->w->name : "?");
        else
            rc = lora_bwd(x->data, T, in, out, lin, seed, u->data, dys, dyr, dxs,
                          da ? da->data : NULL, db ? db->data : NULL, scratch);
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}
