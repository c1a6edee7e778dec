/* linear_cross_entropy on the GPU: logits = x·Wᵀ (+ s·(drop(x)·Aᵀ)·Bᵀ), the NLL
 * of the labels and (when asked) its gradient, in one pass over the vocabulary,
 * never holding T×V logits. The twin of autograd/cpu/linear_xent.c: the same
 * algorithm, the same operands rounded (bf16 compute), the same buffers; the
 * GEMMs go through ct_cuda_gemm (cuBLASLt) and a frozen head's vocab tiles
 * through ct_cuda_weight_rows (gemm.h).
 *
 *   for each vocab tile v (W_v [Vt, D], converted once per pass unless the
 *                          head is already in the compute dtype):
 *     for each token block c (Tc rows, the [Tc, Vt] block within 32 MiB):
 *       L = x_c·W_vᵀ (+ s·u_c·B_vᵀ)                                    [Tc, Vt]
 *       per row t (one thread block, xent_online_kernel): m' = max(m_t, max L_t),
 *         P_t = exp(L_t - m'), s_t = s_t·e^(m_t-m') + ΣP_t, acc_t and gb_t
 *         ×= e^(m_t-m') when the max grew; when y_t is in the tile: its logit
 *         is kept and dx_t -= k·W[y_t] (the one-hot part of dL·W)
 *       acc_c += P·W_v   [Tc, D]          gb_c += P·B_v   [Tc, r]
 *   nll_t = m_t + log s_t - L[t, y_t]
 *   dx_t += k·acc_t/s_t + (g_t·A) ⊙ mask_t/(1-p)       (so dx = dL·W + LoRA term)
 *   g_t   = s·k·(gb_t/s_t - B[y_t])   (= s·dL_t·B)      dA += gᵀ·drop(x)
 *   with a trainable B, a second pass over the tiles recomputes L and adds
 *   dB_v += s·dL_vᵀ·u, dL = k·(softmax - onehot) from the final statistics.
 * (k = grad_scale, s = head->scale, u = drop(x)·Aᵀ [n, r].)
 *
 * Only trained rows (label != -100) are computed: the labels are downloaded
 * once at the start (T int32), checked on the host (a label outside [0, V) is
 * CT_EINPUT naming its position, the CPU's message) and the trained rows'
 * tokens and labels uploaded; x's rows are gathered unless all are trained.
 * The per-row NLL [n] (double) is downloaded once at the end and summed on the
 * host in row order, as the CPU does.
 *
 * Compute dtype CT_BF16: the two head GEMMs (logits, acc += P·W_v) take bf16
 * operands (x rounded once into a bf16 copy, the tile in bf16, P rounded as
 * the online kernel writes it) with fp32 sums; the LoRA GEMMs, the softmax
 * statistics and everything else stay fp32, as on the CPU.
 *
 * Activations x and dx are f32 or bf16 (both the same). bf16 x goes to the
 * bf16 head GEMMs as stored (gathered when not every row is trained) and is
 * widened into f32 rows only where an fp32 GEMM reads it (compute f32, the
 * LoRA GEMMs without dropout). A bf16 dx is rounded once: its trained rows
 * are gathered into f32 (dxg [n, D]), take the one-hot part there and, in the
 * scatter, acc (and the LoRA term), then are rounded back into dx.
 *
 * Dropout of the head's LoRA input: ct_uniform(head->id, tok*D + i) < p, kept
 * ones × 1/(1-p), tok the token (row of x) of the element.
 *
 * Determinism: every reduction is a fixed tree (no atomics); every output row
 * is written by one thread block; the GEMMs accumulate tiles and token blocks
 * in a fixed order. Scratch (all released before return): the gathered rows,
 * their bf16 copy and acc (n × D each, at most the size of x), drop(x) [n, D]
 * with LoRA dropout, one converted weight tile, the [Tc, Vt] logits block (and
 * its bf16 copy with bf16 compute), [n, r] LoRA rows and per-row statistics;
 * with bf16 activations: the f32 rows of x only where an fp32 GEMM reads
 * them, the bf16 gather only when some row is untrained, dxg [n, D] f32. */
#include "cuda_common.cuh"
#include "gemm.h"

#define XENT_CHUNK_BYTES ((size_t)32 << 20) /* bound on the [Tc, Vt] f32 logits block */
#define XENT_IGNORE (-100)

/* What one call works on. Device buffers come from scratch; row j is the j-th
 * trained row (token tok[j]). */
typedef struct {
    const ct_linear *h;
    int64_t n, D, V, r; /* trained rows, hidden size, vocab, LoRA rank (0: none) */
    int64_t Vt, Tc;     /* vocab tile rows, token rows per logits block */
    float k;            /* grad_scale */
    bool bf16;          /* head->compute == CT_BF16: the head GEMMs in bf16 */
    bool in_place;      /* the head is stored in the compute dtype: tiles are views */
    const int64_t *tok; /* [n] token of each trained row */
    const int32_t *y;   /* [n] label of each trained row */
    const float *x;     /* [n, D] the trained rows of x in f32 (f32 x itself when all are trained);
                         * NULL for bf16 x where no fp32 GEMM reads it */
    const uint16_t *xb; /* [n, D] x in bf16 (bf16 compute; bf16 x itself when all are trained), else NULL */
    float *xd;          /* [n, D] drop(x) (LoRA with p > 0), else NULL */
    float *dx;          /* rows taking the one-hot part: the caller's f32 dx [T, D] (row tok[j]),
                         * dxg [n, D] (row j) for a bf16 dx, or NULL without dx */
    const int64_t *dx_tok; /* tok for an f32 dx, NULL for dxg */
    void *wt;           /* [Vt, D] converted tile in the compute dtype, NULL when in place */
    float *L;           /* [Tc, Vt] logits block, then P (dL in the dB pass) */
    uint16_t *Pb;       /* [Tc, Vt] P rounded to bf16 (bf16 compute with dx), else NULL */
    float *mx;          /* [n] running max of each row's logits */
    double *se;         /* [n] running Σ exp(logit - mx) */
    float *ly;          /* [n] label logit */
    double *nll;        /* [n] per-row NLL */
    float *acc;         /* [n, D] Σ P·W (rescaled), then k·acc/s; NULL without dx */
    float *u;           /* [n, r] drop(x)·Aᵀ; NULL without LoRA */
    float *gb;          /* [n, r] Σ P·B (rescaled), then g = s·dL·B; NULL unless LoRA and dA or dx */
} xent_ctx;

static cudaDataType_t ab_type(const xent_ctx *c) { return c->bf16 ? CUDA_R_16BF : CUDA_R_32F; }

static int64_t rows_within(size_t bytes, int64_t cols, int64_t rows) {
    int64_t m = (int64_t)(bytes / ((size_t)(cols > 0 ? cols : 1) * sizeof(float)));
    if (m < 1) m = 1;
    return m < rows ? m : rows;
}

/* ------------------------------------------------------------- kernels */

/* Block-wide max over blockDim.x == kThreads threads, fixed tree
 * order; every thread gets the result. */
static __device__ inline float block_max_f(float v, float *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

/* mx [n] = -inf, se [n] = 0. */
static __global__ void xent_init_kernel(float *mx, double *se, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        mx[i] = -INFINITY;
        se[i] = 0.0;
    }
}

/* One block per trained row j (token tok[j]) of x [T, D] (A: f32 or bf16):
 * xg[j] = x[tok[j]] in f32 (NULL: no gather), xb[j] = bf16 of it (NULL:
 * none), xd[j] = its dropout (NULL: none). */
template <class A>
static __global__ void xent_rows_kernel(const A *x, const int64_t *tok, int64_t D, float *xg, uint16_t *xb,
                                        float *xd, uint64_t seed, float p, float keep) {
    int64_t j = blockIdx.x;
    uint64_t base = (uint64_t)tok[j] * (uint64_t)D;
    const A *src = x + base;
    size_t o = (size_t)j * (size_t)D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float v = act_ld(src, i);
        if (xg) xg[o + i] = v;
        if (xb) xb[o + i] = ct_f32_to_bf16(v);
        if (xd) xd[o + i] = ct_uniform(seed, base + (uint64_t)i) < p ? 0.0f : v * keep;
    }
}

/* The online-softmax step of rows [c0, c0 + gridDim.x) over the tile in L
 * [m, nv] (vocab [v0, v0 + nv)), one block per row (see the top of the file).
 * With keep_p, L becomes P = exp(L - m') (and Pb its bf16 rounding when set).
 * wv: the tile W_v [nv, D] in f32 or (wbf16) bf16, for dx's one-hot part on
 * dx's row tok[t] (tok NULL: row t). */
static __global__ void xent_online_kernel(float *L, uint16_t *Pb, int64_t nv, int64_t c0, int64_t v0,
                                          const int32_t *y, const int64_t *tok, float *mx, double *se,
                                          float *ly, float *acc, float *gb, int64_t D, int64_t r,
                                          float *dx, const void *wv, int wbf16, float k, int keep_p) {
    __shared__ float shf[kThreads];
    __shared__ double shd[kThreads];
    __shared__ float sh_fac;
    int64_t j = blockIdx.x, t = c0 + j;
    float *l = L + (size_t)j * (size_t)nv; /* [nv] */
    int64_t yi = (int64_t)y[t] - v0;
    if (yi >= 0 && yi < nv) {
        /* read before any thread overwrites L (the barrier in block_max_f) */
        if (threadIdx.x == 0) ly[t] = l[yi];
        if (dx) { /* dx_t -= k·W[y_t]: the one-hot part of dL·W */
            float *d = dx + (size_t)(tok ? tok[t] : t) * (size_t)D;
            size_t wo = (size_t)yi * (size_t)D;
            for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
                float w = wbf16 ? ct_bf16_to_f32(((const uint16_t *)wv)[wo + i]) : ((const float *)wv)[wo + i];
                d[i] -= k * w;
            }
        }
    }
    float bm = -INFINITY;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) bm = fmaxf(bm, l[i]);
    bm = block_max_f(bm, shf);
    float m_old = mx[t], m_new = fmaxf(bm, m_old);
    double sum = 0.0;
    uint16_t *pb = Pb ? Pb + (size_t)j * (size_t)nv : nullptr;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        float e = ct_expf(l[i] - m_new);
        if (keep_p) {
            l[i] = e;
            if (pb) pb[i] = ct_f32_to_bf16(e);
        }
        sum += (double)e;
    }
    sum = block_sum(sum, shd); /* every thread has read mx[t] before this barrier */
    if (threadIdx.x == 0) {
        /* The max grew: what was summed so far is relative to the old one. On the
         * first tile (m_old = -inf) everything is still 0. */
        float f = m_new > m_old && m_old != -INFINITY ? ct_expf(m_old - m_new) : 1.0f;
        se[t] = se[t] * (double)f + sum;
        mx[t] = m_new;
        sh_fac = f;
    }
    __syncthreads();
    float f = sh_fac;
    if (f != 1.0f) {
        if (acc)
            for (int64_t i = threadIdx.x; i < D; i += blockDim.x) acc[(size_t)t * (size_t)D + i] *= f;
        if (gb)
            for (int64_t i = threadIdx.x; i < r; i += blockDim.x) gb[(size_t)t * (size_t)r + i] *= f;
    }
}

/* After pass 1, one block per trained row t: nll_t = m_t + log s_t - L[t, y_t];
 * acc_t *= k/s_t (the softmax part of dL·W); g_t = s·k·(gb_t/s_t - B[y_t]). */
static __global__ void xent_finish_kernel(const float *mx, const double *se, const float *ly,
                                          const int32_t *y, double *nll, float *acc, int64_t D,
                                          float *gb, const float *B, int64_t r, float k, float sk) {
    int64_t t = blockIdx.x;
    double s = se[t];
    if (threadIdx.x == 0) nll[t] = (double)mx[t] + log(s) - (double)ly[t];
    if (acc) {
        float f = (float)((double)k / s);
        float *a = acc + (size_t)t * (size_t)D;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) a[i] *= f;
    }
    if (gb) {
        float f = (float)(1.0 / s);
        float *g = gb + (size_t)t * (size_t)r;
        const float *by = B + (size_t)y[t] * (size_t)r; /* [r] */
        for (int64_t i = threadIdx.x; i < r; i += blockDim.x) g[i] = sk * (g[i] * f - by[i]);
    }
}

/* dx[tok[j]] = (dxg ? dxg[j] : dx[tok[j]]) + (acc[j] + gA[j] ⊙ mask_j/(1-p)
 * when gA is set: the LoRA term), summed in f32 and stored once (A: f32 or
 * bf16); one block per trained row (distinct tokens: no two blocks share a row). */
template <class A>
static __global__ void xent_scatter_kernel(const float *acc, const float *gA, const int64_t *tok, int64_t D,
                                           A *dx, const float *dxg, uint64_t seed, float p, float keep) {
    int64_t j = blockIdx.x;
    uint64_t base = (uint64_t)tok[j] * (uint64_t)D;
    size_t o = (size_t)j * (size_t)D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float a = acc[o + i];
        if (gA) a += ct_uniform(seed, base + (uint64_t)i) < p ? 0.0f : gA[o + i] * keep;
        int64_t at = (int64_t)(base + (uint64_t)i);
        act_st(dx, at, (dxg ? dxg[o + i] : act_ld(dx, at)) + a);
    }
}

/* The dB pass: L [m, nv] of rows [c0, c0 + m) becomes dL = k·(softmax - onehot). */
static __global__ void xent_dl_kernel(float *L, int64_t nv, int64_t c0, int64_t v0, const int32_t *y,
                                      const float *mx, const double *se, float k) {
    int64_t j = blockIdx.x, t = c0 + j;
    float *l = L + (size_t)j * (size_t)nv; /* [nv] */
    float mt = mx[t], kt = (float)((double)k / se[t]);
    int64_t yi = (int64_t)y[t] - v0;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        float v = ct_expf(l[i] - mt) * kt;
        if (i == yi) v -= k;
        l[i] = v;
    }
}

/* ---------------------------------------------------------------- host */

/* W_v [nv, D] in the compute dtype: a view into the head when in place, else
 * converted into c->wt. */
static int tile_weight(const xent_ctx *c, int64_t v0, int64_t nv, const void **wv) {
    const ct_tensor *w = c->h->w;
    if (c->in_place) {
        size_t off = (size_t)v0 * (size_t)c->D * (c->bf16 ? sizeof(uint16_t) : sizeof(float));
        *wv = (const char *)w->data + off;
        return CT_OK;
    }
    CT_TRY(ct_cuda_weight_rows(w, v0, nv, ab_type(c), c->wt));
    *wv = c->wt;
    return CT_OK;
}

/* c->L [m, nv] = logits of rows [c0, c0+m) against vocab [v0, v0+nv). */
static int block_logits(const xent_ctx *c, int64_t c0, int64_t m, int64_t v0, int64_t nv,
                        const void *wv) {
    int64_t D = c->D, r = c->r;
    size_t xo = (size_t)c0 * (size_t)D;
    const void *xc = c->bf16 ? (const void *)(c->xb + xo) : (const void *)(c->x + xo);
    /* L = x_c·W_vᵀ   (m×D)·(D×nv) */
    CT_TRY(ct_cuda_gemm(false, true, m, nv, D, 1.0f, xc, D, wv, D, ab_type(c), 0.0f, c->L, nv, CUDA_R_32F));
    if (c->u) /* L += s·u_c·B_vᵀ   (m×r)·(r×nv) */
        CT_TRY(ct_cuda_gemm(false, true, m, nv, r, c->h->scale, c->u + (size_t)c0 * (size_t)r, r,
                            (const float *)c->h->b->data + (size_t)v0 * (size_t)r, r, CUDA_R_32F, 1.0f,
                            c->L, nv, CUDA_R_32F));
    return CT_OK;
}

/* Pass 1: running max, sum and label logit of every row, and acc / gb. */
static int pass_online(const xent_ctx *c) {
    int64_t n = c->n, D = c->D, r = c->r;
    bool keep_p = c->acc || c->gb;
    for (int64_t v0 = 0; v0 < c->V; v0 += c->Vt) {
        int64_t nv = c->V - v0 < c->Vt ? c->V - v0 : c->Vt;
        const void *wv;
        CT_TRY(tile_weight(c, v0, nv, &wv));
        for (int64_t c0 = 0; c0 < n; c0 += c->Tc) {
            int64_t m = n - c0 < c->Tc ? n - c0 : c->Tc;
            CT_TRY(block_logits(c, c0, m, v0, nv, wv));
            CT_LAUNCH(xent_online_kernel, (unsigned)m, kThreads, 0, c->L, c->Pb, nv, c0, v0, c->y, c->dx_tok,
                      c->mx, c->se, c->ly, c->acc, c->gb, D, r, c->dx, wv, (int)c->bf16, c->k, (int)keep_p);
            if (c->acc) { /* acc_c += P·W_v   (m×nv)·(nv×D) */
                const void *P = c->bf16 ? (const void *)c->Pb : (const void *)c->L;
                CT_TRY(ct_cuda_gemm(false, false, m, D, nv, 1.0f, P, nv, wv, D, ab_type(c), 1.0f,
                                    c->acc + (size_t)c0 * (size_t)D, D, CUDA_R_32F));
            }
            if (c->gb) /* gb_c += P·B_v   (m×nv)·(nv×r), fp32 */
                CT_TRY(ct_cuda_gemm(false, false, m, r, nv, 1.0f, c->L, nv,
                                    (const float *)c->h->b->data + (size_t)v0 * (size_t)r, r, CUDA_R_32F,
                                    1.0f, c->gb + (size_t)c0 * (size_t)r, r, CUDA_R_32F));
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
        const void *wv;
        CT_TRY(tile_weight(c, v0, nv, &wv));
        for (int64_t c0 = 0; c0 < n; c0 += c->Tc) {
            int64_t m = n - c0 < c->Tc ? n - c0 : c->Tc;
            CT_TRY(block_logits(c, c0, m, v0, nv, wv));
            CT_LAUNCH(xent_dl_kernel, (unsigned)m, kThreads, 0, c->L, nv, c0, v0, c->y, c->mx, c->se, c->k);
            /* dB_v += s·dLᵀ·u_c   (nv×m)·(m×r) */
            CT_TRY(ct_cuda_gemm(true, false, nv, r, m, c->h->scale, c->L, nv, c->u + (size_t)c0 * (size_t)r,
                                r, CUDA_R_32F, 1.0f, dbs + (size_t)v0 * (size_t)r, r, CUDA_R_32F));
        }
    }
    return CT_OK;
}

#define XENT_ALLOC(p, type, count)                                                             \
    do {                                                                                       \
        if (!((p) = (type *)ct_arena_alloc(scratch, (size_t)(count) * sizeof(type))))          \
            return CT_ERUNTIME;                                                                \
    } while (0)

/* Buffers, the passes and the NLL for n > 0 trained rows (host lists tok_h,
 * y_h [n]); nll_h [n] host. xs [T, D] and dxs [T, D] (or NULL) are f32, or
 * bf16 when abf. */
static int xent_run(const void *xs, bool abf, int64_t T, int64_t D, int64_t V, const ct_linear *h,
                    const int64_t *tok_h, const int32_t *y_h, int64_t n, float grad_scale,
                    double *nll_h, double *nll_sum, void *dxs, float *das, float *dbs,
                    ct_arena *scratch) {
    bool lora = h->a != NULL;
    float p = lora ? h->dropout : 0.0f, keep = 1.0f / (1.0f - p);
    xent_ctx c = {};
    c.h = h, c.n = n, c.D = D, c.V = V, c.r = lora ? h->a->shape[0] : 0, c.k = grad_scale;
    c.bf16 = h->compute == CT_BF16;
    c.in_place = h->w->dtype == (c.bf16 ? CT_BF16 : CT_F32);
    size_t elem = c.bf16 ? sizeof(uint16_t) : sizeof(float);
    /* one converted tile within the weight-tile bound; an in-place head as wide
     * as the logits block allows for all n rows (fewer, larger GEMMs) */
    c.Vt = ct_cuda_tile_rows(D, V, elem);
    if (c.in_place) {
        int64_t vb = rows_within(XENT_CHUNK_BYTES, n, V);
        if (vb > c.Vt) c.Vt = vb;
    }
    c.Tc = rows_within(XENT_CHUNK_BYTES, c.Vt, n);

    int64_t *tok;
    int32_t *y;
    XENT_ALLOC(tok, int64_t, n);
    XENT_ALLOC(y, int32_t, n);
    XENT_ALLOC(c.mx, float, n);
    XENT_ALLOC(c.se, double, n);
    XENT_ALLOC(c.ly, float, n);
    XENT_ALLOC(c.nll, double, n);
    XENT_ALLOC(c.L, float, c.Tc * c.Vt);
    if (!c.in_place && !(c.wt = ct_arena_alloc(scratch, (size_t)c.Vt * (size_t)D * elem))) return CT_ERUNTIME;
    float *xg = nullptr;  /* [n, D] f32 rows: gathered (f32 x, not every row trained) or widened (bf16 x) */
    uint16_t *xb = nullptr; /* [n, D] bf16 rows made here: rounded (f32 x) or gathered (bf16 x) */
    float *dxg = nullptr; /* [n, D] f32 rows of a bf16 dx */
    if (!abf) {
        if (n != T) XENT_ALLOC(xg, float, n * D);
        c.x = xg ? xg : (const float *)xs;
        if (c.bf16) XENT_ALLOC(xb, uint16_t, n * D);
        c.xb = xb;
        c.dx = (float *)dxs, c.dx_tok = tok;
    } else {
        /* f32 rows where an fp32 GEMM reads x: the logits (compute f32), u and dA without dropout */
        if (!c.bf16 || (lora && p <= 0.0f)) XENT_ALLOC(xg, float, n * D);
        c.x = xg;
        if (c.bf16 && n != T) XENT_ALLOC(xb, uint16_t, n * D);
        c.xb = xb ? xb : (c.bf16 ? (const uint16_t *)xs : nullptr);
        if (dxs) XENT_ALLOC(dxg, float, n * D);
        c.dx = dxg, c.dx_tok = nullptr;
    }
    if (dxs) {
        XENT_ALLOC(c.acc, float, n * D);
        if (c.bf16) XENT_ALLOC(c.Pb, uint16_t, c.Tc * c.Vt);
    }
    if (lora) {
        XENT_ALLOC(c.u, float, n * c.r);
        if (dxs || das) XENT_ALLOC(c.gb, float, n * c.r);
        if (p > 0.0f) XENT_ALLOC(c.xd, float, n * D);
    }
    CT_CUDA_TRY(cudaMemcpy(tok, tok_h, (size_t)n * sizeof(int64_t), cudaMemcpyHostToDevice));
    CT_CUDA_TRY(cudaMemcpy(y, y_h, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice));
    c.tok = tok, c.y = y;
    CT_LAUNCH(xent_init_kernel, blocks_for(n), kThreads, 0, c.mx, c.se, n);
    if (c.acc) CT_CUDA_TRY(cudaMemsetAsync(c.acc, 0, (size_t)n * (size_t)D * sizeof(float), ct_cuda_stream()));
    if (c.gb) CT_CUDA_TRY(cudaMemsetAsync(c.gb, 0, (size_t)n * (size_t)c.r * sizeof(float), ct_cuda_stream()));
    if (!abf && (xg || xb || c.xd)) {
        auto *k = &xent_rows_kernel<float>;
        CT_LAUNCH(k, (unsigned)n, kThreads, 0, (const float *)xs, tok, D, xg, xb, c.xd, h->id, p, keep);
    }
    if (abf && (xg || xb || c.xd)) {
        auto *k = &xent_rows_kernel<bf16_t>;
        CT_LAUNCH(k, (unsigned)n, kThreads, 0, (const bf16_t *)xs, tok, D, xg, xb, c.xd, h->id, p, keep);
    }
    if (dxg) { /* the trained rows of dx, widened */
        auto *k = &xent_rows_kernel<bf16_t>;
        CT_LAUNCH(k, (unsigned)n, kThreads, 0, (const bf16_t *)dxs, tok, D, dxg, nullptr, nullptr, h->id, p, keep);
    }

    if (lora) { /* u = drop(x)·Aᵀ   (n×D)·(D×r), fp32 */
        const float *xin = c.xd ? c.xd : c.x;
        CT_TRY(ct_cuda_gemm(false, true, n, c.r, D, 1.0f, xin, D, h->a->data, D, CUDA_R_32F, 0.0f, c.u, c.r,
                            CUDA_R_32F));
    }
    CT_TRY(pass_online(&c));
    CT_LAUNCH(xent_finish_kernel, (unsigned)n, kThreads, 0, c.mx, c.se, c.ly, c.y, c.nll, c.acc, D, c.gb,
              lora ? (const float *)h->b->data : nullptr, c.r, c.k, lora ? h->scale * c.k : 0.0f);
    const float *gA = nullptr; /* [n, D] g·A before the dropout mask (p > 0) */
    if (c.gb) {
        const float *xin = c.xd ? c.xd : c.x;
        if (das) /* dA += gᵀ·drop(x)   (r×n)·(n×D) */
            CT_TRY(ct_cuda_gemm(true, false, c.r, D, n, 1.0f, c.gb, c.r, xin, D, CUDA_R_32F, 1.0f, das, D,
                                CUDA_R_32F));
        if (c.acc && !c.xd) /* acc += g·A   (n×r)·(r×D) */
            CT_TRY(ct_cuda_gemm(false, false, n, D, c.r, 1.0f, c.gb, c.r, h->a->data, D, CUDA_R_32F, 1.0f,
                                c.acc, D, CUDA_R_32F));
        if (c.acc && c.xd) { /* xd = g·A   (n×r)·(r×D); masked as it is scattered */
            CT_TRY(ct_cuda_gemm(false, false, n, D, c.r, 1.0f, c.gb, c.r, h->a->data, D, CUDA_R_32F, 0.0f,
                                c.xd, D, CUDA_R_32F));
            gA = c.xd;
        }
    }
    if (c.acc && !abf) {
        auto *k = &xent_scatter_kernel<float>;
        CT_LAUNCH(k, (unsigned)n, kThreads, 0, c.acc, gA, c.tok, D, (float *)dxs, (const float *)nullptr, h->id, p,
                  keep);
    }
    if (c.acc && abf) {
        auto *k = &xent_scatter_kernel<bf16_t>;
        CT_LAUNCH(k, (unsigned)n, kThreads, 0, c.acc, gA, c.tok, D, (bf16_t *)dxs, (const float *)dxg, h->id, p,
                  keep);
    }
    if (dbs) CT_TRY(pass_db(&c, dbs));

    CT_CUDA_TRY(cudaMemcpy(nll_h, c.nll, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost));
    double total = 0.0;
    for (int64_t t = 0; t < n; t++) total += nll_h[t];
    *nll_sum = total;
    return CT_OK;
}

int ct_cuda_linear_xent_fwd(const ct_tensor *x, const ct_linear *head, const ct_tensor *labels,
                            float grad_scale, double *nll_sum, int64_t *n_trained, ct_tensor *dx,
                            ct_tensor *da, ct_tensor *db, ct_arena *scratch) {
    int64_t T = ct_rows(x), D = ct_dim_from_end(x, 1), V = head->w->shape[0];
    *nll_sum = 0.0;
    *n_trained = 0;
    if (!head->a) da = db = nullptr;
    const ct_tensor *ts[] = {x, dx};
    const char *names[] = {"x", "dx"};
    CT_TRY(act_check_same("linear_cross_entropy", ts, names, 2));
    if (T == 0) return CT_OK;
    /* host: labels [T], then tok [T] (int64), y [T], nll [T] (double) */
    size_t Ts = (size_t)T;
    char *hb = (char *)ct_host_alloc(Ts * (2 * sizeof(int32_t) + sizeof(int64_t) + sizeof(double)));
    if (!hb) return ct_errorf(CT_ERUNTIME, "linear_cross_entropy: out of host memory for %lld labels", (long long)T);
    int64_t *tok = (int64_t *)hb;
    double *nll = (double *)(hb + Ts * sizeof(int64_t));
    int32_t *lab = (int32_t *)(hb + Ts * (sizeof(int64_t) + sizeof(double)));
    int32_t *y = lab + Ts;
    int rc = CT_OK;
    cudaError_t err = cudaMemcpy(lab, labels->data, Ts * sizeof(int32_t), cudaMemcpyDeviceToHost);
    if (err != cudaSuccess)
        rc = ct_errorf(CT_ERUNTIME, "linear_cross_entropy: downloading the labels failed: %s",
                       cudaGetErrorString(err));
    int64_t n = 0;
    for (int64_t t = 0; !rc && t < T; t++) {
        if (lab[t] == XENT_IGNORE) continue;
        if (lab[t] < 0 || lab[t] >= V) {
            rc = ct_errorf(CT_EINPUT, "linear_cross_entropy: label at position %lld is %d, outside [0, %lld) "
                           "and not the ignore index -100; check the data's labels against the vocabulary size",
                           (long long)t, (int)lab[t], (long long)V);
            break;
        }
        tok[n] = t;
        y[n++] = lab[t];
    }
    if (!rc && n > 0) {
        ct_arena_mark mark = ct_arena_get_mark(scratch);
        rc = xent_run(x->data, x->dtype == CT_BF16, T, D, V, head, tok, y, n, grad_scale, nll, nll_sum,
                      dx ? dx->data : nullptr, da ? (float *)da->data : nullptr,
                      db ? (float *)db->data : nullptr, scratch);
        ct_arena_rewind(scratch, mark);
    }
    if (!rc) *n_trained = n;
    else *nll_sum = 0.0;
    ct_host_free(hb);
    return rc;
}
