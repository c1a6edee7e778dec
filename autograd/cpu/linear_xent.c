/* linear_cross_entropy on the CPU: logits = x·Wᵀ (+ s·(drop(x)·Aᵀ)·Bᵀ), the NLL
 * of the labels and (when asked) its gradient, in one pass over the vocabulary.
 *
 * Why the vocabulary is the outer loop: a 16-bit or NF4 head must be converted
 * to f32 before sgemm. With token chunks outside, every chunk converted the
 * whole [V, D] head again, for the logits and again for dx. Here each vocab tile
 * W_v [Vt, D] (xent_tile_bytes of f32, 4 MiB by default) is converted once per
 * call and used by every trained token while it is hot in cache, with an
 * online softmax as in flash attention (k = grad_scale). An f32 head is used
 * in place, so its tiles are as wide as the logits block allows instead.
 *
 *   for each vocab tile v:
 *     for each token block c (Tc rows, [Tc, Vt] within xent_chunk_bytes;
 *                             usually all trained rows at once):
 *       L = x_c·W_vᵀ (+ s·u_c·B_vᵀ)                                    [Tc, Vt]
 *       per row t: m' = max(m_t, max L_t), P_t = exp(L_t - m'),
 *         s_t = s_t·e^(m_t-m') + ΣP_t, acc_t and gb_t ×= e^(m_t-m') (only
 *         when the max grew); when y_t is in the tile: its logit is kept and
 *         dx_t -= k·W[y_t] (the one-hot part of dL·W, independent of s_t)
 *       acc_c += P·W_v   [Tc, D]          gb_c += P·B_v   [Tc, r]
 *   nll_t = m_t + log s_t - L[t, y_t]
 *   dx_t += k·acc_t/s_t + (g_t·A) ⊙ mask_t/(1-p)       (so dx = dL·W + LoRA term)
 *   g_t   = s·k·(gb_t/s_t - B[y_t])   (= s·dL_t·B)      dA += gᵀ·drop(x)
 *
 * dB_v = s·Σ_t dL_tv·u_t (u = drop(x)·Aᵀ) needs every token's final softmax,
 * known only after the last tile, and cannot be rescaled afterwards (the
 * factor differs per token inside the sum over t). So when B is trainable a
 * second pass over the tiles recomputes L and adds s·dL_vᵀ·u: one more logits
 * GEMM (and tile conversion) per tile, only for a trainable head LoRA, which
 * is rare (PEFT's all-linear leaves the head out).
 *
 * Only trained rows (label != -100) are computed at all; they are gathered
 * first unless every row is trained. Scratch: the gathered rows and acc (n × D
 * each, n trained rows: at most the size of x), one f32 weight tile, the
 * [Tc, Vt] logits block, [n, r] LoRA rows, with LoRA dropout an 8 MiB buffer,
 * and per-row statistics; nothing T×V.
 *
 * Dropout of the head's LoRA input: seed head->id (the op passes the mixed step
 * seed there); mask element (t, i) uses index t*D + i with t the token.
 *
 * Determinism: each row's statistics are updated by one thread in vocab order,
 * the NLL sum runs over rows in order, and every GEMM accumulates tiles and
 * token blocks in a fixed order, so results repeat bit for bit for a given
 * thread count.
 *
 * head->compute == CT_BF16: the two head GEMMs (logits and acc += P·W_v) run
 * in bf16 with fp32 sums (gemm_bf16.h) over a bf16 tile: a bf16 head in place,
 * other dtypes rounded per tile. The softmax statistics and the LoRA GEMMs
 * stay fp32. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "../ct_error.h"
#include "../ct_inline.h"
#include "cpu_kernels.h"
#include "gemm_bf16.h"

#define DEFAULT_CHUNK_BYTES ((size_t)32 << 20)
#define DEFAULT_TILE_BYTES ((size_t)4 << 20)
#define DROP_CHUNK_BYTES ((size_t)8 << 20)
#define IGNORE_INDEX (-100)

static size_t xent_chunk_bytes = DEFAULT_CHUNK_BYTES;
static size_t xent_tile_bytes = DEFAULT_TILE_BYTES;

size_t ct_cpu_set_xent_chunk_bytes(size_t bytes) {
    size_t prev = xent_chunk_bytes;
    xent_chunk_bytes = bytes ? bytes : DEFAULT_CHUNK_BYTES;
    return prev;
}

size_t ct_cpu_set_xent_tile_bytes(size_t bytes) {
    size_t prev = xent_tile_bytes;
    xent_tile_bytes = bytes ? bytes : DEFAULT_TILE_BYTES;
    return prev;
}

/* What one call works on. Buffers come from scratch; row t is the t-th trained
 * row (token tok[t]). */
typedef struct {
    const ct_linear *h;
    int64_t n, D, V, r; /* trained rows, hidden size, vocab, LoRA rank (0: none) */
    int64_t Vt, Tc, Rc; /* vocab tile rows, token rows per logits block, rows per drop chunk */
    float k;            /* grad_scale */
    const int64_t *tok; /* [n] token of each trained row */
    const int32_t *y;   /* [n] label of each trained row */
    const float *x;     /* [n, D] the trained rows of x (x itself when all are trained) */
    float *dx;          /* [T, D] the caller's dx, or NULL */
    float *wt;          /* [Vt, D] converted weight tile (f32 compute, head not f32), else NULL */
    uint16_t *wtb;      /* [Vt, D] the tile rounded to bf16 (bf16 compute, head not bf16), else NULL */
    ct_arena *scratch;  /* for the bf16 GEMMs' packing (released by each call) */
    float *L;           /* [Tc, Vt] logits block, then P (dL in the dB pass) */
    float *mx;          /* [n] running max of each row's logits */
    double *se;         /* [n] running Σ exp(logit - mx) */
    float *ly;          /* [n] label logit */
    float *acc;         /* [n, D] Σ P·W (rescaled), then k·acc/s; NULL without dx */
    float *u;           /* [n, r] drop(x)·Aᵀ; NULL without LoRA */
    float *gb;          /* [n, r] Σ P·B (rescaled), then g = s·dL·B; NULL unless dA or dx with LoRA */
    float *drop;        /* [Rc, D] dropout temporaries; NULL unless LoRA with p > 0 */
} xent_ctx;

/* One vocab tile W_v [nv, D]: f32 rows (f32 compute) or bf16 rows (bf16
 * compute); exactly one of the two is set. */
typedef struct {
    const float *f;
    const uint16_t *b;
} wtile;

static bool bf16_math(const xent_ctx *c) { return c->h->compute == CT_BF16; }

/* True when the head's tiles are views of its storage (no converted copy). */
static bool head_in_place(const ct_linear *h) {
    return h->w->dtype == (h->compute == CT_BF16 ? CT_BF16 : CT_F32);
}

/* W_v: a view into the head when head_in_place, else converted into c->wt
 * (and rounded into c->wtb for bf16 compute). */
static int tile_weight(const xent_ctx *c, int64_t v0, int64_t nv, wtile *wv) {
    const ct_tensor *w = c->h->w;
    size_t off = (size_t)v0 * (size_t)c->D;
    wv->f = NULL;
    wv->b = NULL;
    if (head_in_place(c->h)) {
        if (bf16_math(c)) wv->b = (const uint16_t *)w->data + off;
        else wv->f = (const float *)w->data + off;
        return CT_OK;
    }
    if (bf16_math(c)) {
        CT_TRY(ct_cpu_weight_rows_bf16(w, v0, nv, c->wtb));
        wv->b = c->wtb;
    } else {
        CT_TRY(ct_cpu_weight_rows_f32(w, v0, nv, c->wt));
        wv->f = c->wt;
    }
    return CT_OK;
}

/* c->L [m, nv] = logits of rows [c0, c0+m) against vocab [v0, v0+nv). */
static int block_logits(const xent_ctx *c, int64_t c0, int64_t m, int64_t v0, int64_t nv,
                        const wtile *wv) {
    int64_t D = c->D, r = c->r;
    const float *xc = c->x + (size_t)c0 * (size_t)D;
    /* L = x_c·W_vᵀ   (m×D)·(D×nv) */
    if (wv->b)
        CT_TRY(ct_bf16_gemm_nt(m, nv, D, 1.0f, xc, D, wv->b, D, 0.0f, c->L, nv, c->scratch));
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nv, (int)D, 1.0f, xc,
                    (int)D, wv->f, (int)D, 0.0f, c->L, (int)nv);
    if (c->u) /* L += s·u_c·B_vᵀ   (m×r)·(r×nv) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nv, (int)r, c->h->scale,
                    c->u + (size_t)c0 * (size_t)r, (int)r,
                    (const float *)c->h->b->data + (size_t)v0 * (size_t)r, (int)r, 1.0f, c->L,
                    (int)nv);
    return CT_OK;
}

/* The online-softmax step of rows [c0, c0+m) over the tile in c->L (see the top
 * of the file); with keep_p, L becomes P = exp(L - m'). One thread per row, each
 * row's sums in vocab order. */
static void block_online(const xent_ctx *c, int64_t c0, int64_t m, int64_t v0, int64_t nv,
                         const wtile *wv, bool keep_p) {
    int64_t D = c->D, r = c->r;
#pragma omp parallel for schedule(static) if (m * nv > 32768)
    for (int64_t j = 0; j < m; j++) {
        int64_t t = c0 + j;
        float *l = c->L + (size_t)j * (size_t)nv; /* [nv] */
        int64_t yi = (int64_t)c->y[t] - v0;
        if (yi >= 0 && yi < nv) {
            c->ly[t] = l[yi];
            if (c->dx) { /* dx_t -= k·W[y_t]: the one-hot part of dL·W */
                float *d = c->dx + (size_t)c->tok[t] * (size_t)D;
                size_t wo = (size_t)yi * (size_t)D;
                if (wv->b)
                    for (int64_t i = 0; i < D; i++) d[i] -= c->k * ct_bf16_to_f32(wv->b[wo + (size_t)i]);
                else
                    for (int64_t i = 0; i < D; i++) d[i] -= c->k * wv->f[wo + (size_t)i];
            }
        }
        /* simd loops (ct_expf vectorizes, libm's expf does not); their
         * reduction order is fixed at compile time, so it repeats. */
        float bm = l[0];
#pragma omp simd reduction(max : bm)
        for (int64_t i = 1; i < nv; i++) bm = l[i] > bm ? l[i] : bm;
        float m_old = c->mx[t], m_new = bm > m_old ? bm : m_old;
        double sum = 0.0;
        if (keep_p) {
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < nv; i++) {
                float e = ct_expf(l[i] - m_new);
                l[i] = e;
                sum += (double)e;
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < nv; i++) sum += (double)ct_expf(l[i] - m_new);
        }
        if (m_new > m_old && m_old != -INFINITY) {
            /* The max grew: what was summed so far is relative to the old one. On
             * the first tile (m_old = -inf) everything is still 0. */
            float f = ct_expf(m_old - m_new);
            c->se[t] *= (double)f;
            if (c->acc) {
                float *a = c->acc + (size_t)t * (size_t)D;
                for (int64_t i = 0; i < D; i++) a[i] *= f;
            }
            if (c->gb) {
                float *g = c->gb + (size_t)t * (size_t)r;
                for (int64_t i = 0; i < r; i++) g[i] *= f;
            }
        }
        c->se[t] += sum;
        c->mx[t] = m_new;
    }
}

/* Pass 1: running max, sum and label logit of every row, and acc / gb. */
static int pass_online(const xent_ctx *c) {
    int64_t n = c->n, D = c->D, r = c->r;
    bool keep_p = c->acc || c->gb;
    for (int64_t v0 = 0; v0 < c->V; v0 += c->Vt) {
        int64_t nv = c->V - v0 < c->Vt ? c->V - v0 : c->Vt;
        wtile wv;
        CT_TRY(tile_weight(c, v0, nv, &wv));
        for (int64_t c0 = 0; c0 < n; c0 += c->Tc) {
            int64_t m = n - c0 < c->Tc ? n - c0 : c->Tc;
            CT_TRY(block_logits(c, c0, m, v0, nv, &wv));
            block_online(c, c0, m, v0, nv, &wv, keep_p);
            float *acc_c = c->acc ? c->acc + (size_t)c0 * (size_t)D : NULL;
            if (acc_c && wv.b) /* acc_c += P·W_v   (m×nv)·(nv×D) */
                CT_TRY(ct_bf16_gemm_nn(m, D, nv, 1.0f, c->L, nv, wv.b, D, 1.0f, acc_c, D, c->scratch));
            else if (acc_c)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)D, (int)nv,
                            1.0f, c->L, (int)nv, wv.f, (int)D, 1.0f, acc_c, (int)D);
            if (c->gb) /* gb_c += P·B_v   (m×nv)·(nv×r) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)r, (int)nv,
                            1.0f, c->L, (int)nv,
                            (const float *)c->h->b->data + (size_t)v0 * (size_t)r, (int)r, 1.0f,
                            c->gb + (size_t)c0 * (size_t)r, (int)r);
        }
    }
    return CT_OK;
}

/* Pass 2, only for a trainable B: dB_v += s·dL_vᵀ·u with dL = k·(softmax - onehot)
 * from the final statistics. */
static int pass_db(const xent_ctx *c, float *dbs) {
    int64_t n = c->n, r = c->r;
    for (int64_t v0 = 0; v0 < c->V; v0 += c->Vt) {
        int64_t nv = c->V - v0 < c->Vt ? c->V - v0 : c->Vt;
        wtile wv;
        CT_TRY(tile_weight(c, v0, nv, &wv));
        for (int64_t c0 = 0; c0 < n; c0 += c->Tc) {
            int64_t m = n - c0 < c->Tc ? n - c0 : c->Tc;
            CT_TRY(block_logits(c, c0, m, v0, nv, &wv));
#pragma omp parallel for schedule(static) if (m * nv > 32768)
            for (int64_t j = 0; j < m; j++) {
                int64_t t = c0 + j;
                float *l = c->L + (size_t)j * (size_t)nv; /* [nv] */
                float mt = c->mx[t], kt = (float)((double)c->k / c->se[t]);
#pragma omp simd
                for (int64_t i = 0; i < nv; i++) l[i] = ct_expf(l[i] - mt) * kt;
                int64_t yi = (int64_t)c->y[t] - v0;
                if (yi >= 0 && yi < nv) l[yi] -= c->k;
            }
            /* dB_v += s·dLᵀ·u_c   (nv×m)·(m×r) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nv, (int)r, (int)m,
                        c->h->scale, c->L, (int)nv, c->u + (size_t)c0 * (size_t)r, (int)r, 1.0f,
                        dbs + (size_t)v0 * (size_t)r, (int)r);
        }
    }
    return CT_OK;
}

/* u [n, r] = drop(x)·Aᵀ, the dropped copy made Rc rows at a time. */
static void lora_down(const xent_ctx *c) {
    int64_t n = c->n, D = c->D, r = c->r;
    const float *as = c->h->a->data; /* [r, D] */
    float p = c->h->dropout;
    if (p <= 0.0f) {
        /* u = x·Aᵀ   (n×D)·(D×r) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)r, (int)D, 1.0f, c->x,
                    (int)D, as, (int)D, 0.0f, c->u, (int)r);
        return;
    }
    for (int64_t r0 = 0; r0 < n; r0 += c->Rc) {
        int64_t m = n - r0 < c->Rc ? n - r0 : c->Rc;
        ct_cpu_dropout_rows(c->x + (size_t)r0 * (size_t)D, c->drop, m, D, c->tok + r0, 0, c->h->id, p);
        /* u[r0:r0+m] = drop(x[r0:r0+m])·Aᵀ   (m×D)·(D×r) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)r, (int)D, 1.0f, c->drop,
                    (int)D, as, (int)D, 0.0f, c->u + (size_t)r0 * (size_t)r, (int)r);
    }
}

/* After pass 1: g from gb, dA += gᵀ·drop(x), and dx += k·acc/s + (g·A) ⊙ mask/(1-p). */
static void finish_grads(const xent_ctx *c, float *das) {
    int64_t n = c->n, D = c->D, r = c->r;
    float p = c->h->dropout;
    if (c->acc) { /* acc_t = k·acc_t/s_t: the softmax part of dL·W */
#pragma omp parallel for schedule(static) if (n * D > 32768)
        for (int64_t t = 0; t < n; t++) {
            float f = (float)((double)c->k / c->se[t]);
            float *a = c->acc + (size_t)t * (size_t)D;
            for (int64_t i = 0; i < D; i++) a[i] *= f;
        }
    }
    if (c->gb) { /* g_t = s·k·(gb_t/s_t - B[y_t]) */
        const float *bs = c->h->b->data; /* [V, r] */
        float sk = c->h->scale * c->k;
#pragma omp parallel for schedule(static) if (n * r > 32768)
        for (int64_t t = 0; t < n; t++) {
            float f = (float)(1.0 / c->se[t]);
            float *g = c->gb + (size_t)t * (size_t)r;
            const float *by = bs + (size_t)c->y[t] * (size_t)r;
            for (int64_t i = 0; i < r; i++) g[i] = sk * (g[i] * f - by[i]);
        }
        const float *as = c->h->a->data; /* [r, D] */
        if (p <= 0.0f) {
            if (das) /* dA += gᵀ·x   (r×n)·(n×D) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)D, (int)n, 1.0f,
                            c->gb, (int)r, c->x, (int)D, 1.0f, das, (int)D);
            if (c->acc) /* acc += g·A   (n×r)·(r×D) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)D, (int)r, 1.0f,
                            c->gb, (int)r, as, (int)D, 1.0f, c->acc, (int)D);
        } else {
            for (int64_t r0 = 0; r0 < n; r0 += c->Rc) {
                int64_t m = n - r0 < c->Rc ? n - r0 : c->Rc;
                const float *gc = c->gb + (size_t)r0 * (size_t)r; /* [m, r] */
                if (das) {
                    ct_cpu_dropout_rows(c->x + (size_t)r0 * (size_t)D, c->drop, m, D, c->tok + r0,
                                        0, c->h->id, p);
                    /* dA += g_cᵀ·drop(x_c)   (r×m)·(m×D) */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)D, (int)m,
                                1.0f, gc, (int)r, c->drop, (int)D, 1.0f, das, (int)D);
                }
                if (c->acc) {
                    /* drop = g_c·A   (m×r)·(r×D), then ⊙ mask/(1-p) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)D, (int)r,
                                1.0f, gc, (int)r, as, (int)D, 0.0f, c->drop, (int)D);
                    ct_cpu_dropout_rows(c->drop, c->drop, m, D, c->tok + r0, 0, c->h->id, p);
                    float *ac = c->acc + (size_t)r0 * (size_t)D;
                    size_t cnt = (size_t)m * (size_t)D;
#pragma omp parallel for simd schedule(static) if (cnt > 32768)
                    for (size_t i = 0; i < cnt; i++) ac[i] += c->drop[i];
                }
            }
        }
    }
    if (c->acc) {
        /* Scatter: rows are distinct tokens, so no two threads touch one row. */
#pragma omp parallel for schedule(static) if (n * D > 32768)
        for (int64_t t = 0; t < n; t++) {
            float *dst = c->dx + (size_t)c->tok[t] * (size_t)D;
            const float *src = c->acc + (size_t)t * (size_t)D;
            for (int64_t i = 0; i < D; i++) dst[i] += src[i];
        }
    }
}

static float *alloc_f(ct_arena *a, int64_t rows, int64_t cols) {
    return ct_arena_alloc(a, (size_t)rows * (size_t)cols * sizeof(float));
}

/* Buffers and the two passes for n > 0 trained rows idx[0..n). */
static int xent_run(const float *xs, int64_t T, int64_t D, int64_t V, const ct_linear *h,
                    const int32_t *lab, const int64_t *idx, int64_t n, float grad_scale,
                    double *nll_sum, float *dxs, float *das, float *dbs, ct_arena *scratch) {
    bool lora = h->a != NULL;
    float p = lora ? h->dropout : 0.0f;
    xent_ctx c = {.h = h, .n = n, .D = D, .V = V, .r = lora ? h->a->shape[0] : 0, .k = grad_scale,
                  .tok = idx, .dx = dxs, .scratch = scratch};
    /* xent_tile_bytes of converted tile: bf16 tiles hold twice the rows */
    c.Vt = ct_cpu_rows_within(bf16_math(&c) ? 2 * xent_tile_bytes : xent_tile_bytes, D, V);
    if (head_in_place(h)) {
        /* No converted copy to bound: tiles as wide as the logits block allows
         * for all n rows, so fewer and larger GEMMs (each call and parallel
         * region is a synchronisation point). */
        int64_t vb = ct_cpu_rows_within(xent_chunk_bytes, n, V);
        if (vb > c.Vt) c.Vt = vb;
    }
    c.Tc = ct_cpu_rows_within(xent_chunk_bytes, c.Vt, n);
    c.Rc = ct_cpu_rows_within(DROP_CHUNK_BYTES, D, n);

    int32_t *y = ct_arena_alloc(scratch, (size_t)n * sizeof(int32_t)); /* [n] */
    c.mx = alloc_f(scratch, n, 1);
    c.ly = alloc_f(scratch, n, 1);
    c.se = ct_arena_alloc(scratch, (size_t)n * sizeof(double)); /* [n] */
    c.L = alloc_f(scratch, c.Tc, c.Vt);
    if (!y || !c.mx || !c.ly || !c.se || !c.L) return CT_ERUNTIME;
    if (!head_in_place(h)) { /* one converted tile, in the compute dtype */
        if (bf16_math(&c)) c.wtb = ct_arena_alloc(scratch, (size_t)c.Vt * (size_t)D * sizeof(uint16_t));
        else c.wt = alloc_f(scratch, c.Vt, D);
        if (!c.wt && !c.wtb) return CT_ERUNTIME;
    }
    if (n == T) {
        c.x = xs; /* every row is trained: idx is the identity */
    } else {
        float *xc = alloc_f(scratch, n, D); /* [n, D] */
        if (!xc) return CT_ERUNTIME;
#pragma omp parallel for schedule(static) if (n * D > 32768)
        for (int64_t t = 0; t < n; t++)
            memcpy(xc + (size_t)t * (size_t)D, xs + (size_t)idx[t] * (size_t)D,
                   (size_t)D * sizeof(float));
        c.x = xc;
    }
    if (dxs && !(c.acc = alloc_f(scratch, n, D))) return CT_ERUNTIME;
    if (lora) {
        if (!(c.u = alloc_f(scratch, n, c.r))) return CT_ERUNTIME;
        if ((dxs || das) && !(c.gb = alloc_f(scratch, n, c.r))) return CT_ERUNTIME;
        if (p > 0.0f && !(c.drop = alloc_f(scratch, c.Rc, D))) return CT_ERUNTIME;
    }
    for (int64_t t = 0; t < n; t++) {
        y[t] = lab[idx[t]];
        c.mx[t] = -INFINITY;
        c.se[t] = 0.0;
    }
    c.y = y;
    if (c.acc) memset(c.acc, 0, (size_t)n * (size_t)D * sizeof(float));
    if (c.gb) memset(c.gb, 0, (size_t)n * (size_t)c.r * sizeof(float));

    if (lora) lora_down(&c);
    CT_TRY(pass_online(&c));
    double total = 0.0;
    for (int64_t t = 0; t < n; t++) total += (double)c.mx[t] + log(c.se[t]) - (double)c.ly[t];
    *nll_sum = total;
    finish_grads(&c, das);
    if (dbs) CT_TRY(pass_db(&c, dbs));
    return CT_OK;
}

int ct_cpu_linear_xent_fwd(const ct_tensor *x, const ct_linear *head, const ct_tensor *labels,
                           float grad_scale, double *nll_sum, int64_t *n_trained, ct_tensor *dx,
                           ct_tensor *da, ct_tensor *db, ct_arena *scratch) {
    int64_t T = ct_rows(x), D = ct_dim_from_end(x, 1), V = head->w->shape[0];
    const int32_t *lab = labels->data; /* [T] */
    *nll_sum = 0.0;
    *n_trained = 0;
    if (!head->a) da = db = NULL;
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int64_t *idx = ct_arena_alloc(scratch, (size_t)(T > 0 ? T : 1) * sizeof(int64_t)); /* [T] */
    if (!idx) return CT_ERUNTIME;
    int64_t n = 0;
    int rc = CT_OK;
    for (int64_t t = 0; t < T; t++) {
        if (lab[t] == IGNORE_INDEX) continue;
        if (lab[t] < 0 || lab[t] >= V) {
            rc = ct_errorf(CT_EINPUT, "linear_cross_entropy: label at position %lld is %d, outside [0, %lld) "
                           "and not the ignore index -100; check the data's labels against the vocabulary size",
                           (long long)t, (int)lab[t], (long long)V);
            break;
        }
        idx[n++] = t;
    }
    if (!rc && n > 0)
        rc = xent_run(x->data, T, D, V, head, lab, idx, n, grad_scale, nll_sum,
                      dx ? dx->data : NULL, da ? da->data : NULL, db ? db->data : NULL, scratch);
    if (!rc) *n_trained = n;
    ct_arena_rewind(scratch, mark);
    return rc;
}
