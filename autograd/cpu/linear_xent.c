/* linear_cross_entropy on the CPU: logits = x·Wᵀ (+ s·(drop(x)·Aᵀ)·Bᵀ), NLL of the
 * labels, and (when asked) the gradient, all in one pass over token chunks.
 *
 * Only trained tokens (label != -100) are gathered; they are processed `C` at a
 * time so just a [C, V] logits buffer exists (C from xent_chunk_bytes, 32 MiB by
 * default: 90 rows for V = 92544). Per chunk (Liger-kernel style):
 *   L = xc·Wᵀ (+ LoRA)                               [C, V]
 *   nll_j = logsumexp(L_j) - L_j[label_j]
 *   dL = grad_scale·(softmax(L) - onehot(label))    (in place in L)
 *   dxc = dL·W (+ (g·A) ⊙ mask/(1-p)), g = s·dL·B    [C, D], scattered into dx
 *   dB += s·dLᵀ·u,  dA += gᵀ·drop(xc),  u = drop(xc)·Aᵀ
 * The dropout seed of the head's LoRA path is head->id (the op passes the mixed
 * step seed there); mask element (t, i) uses index t*D + i with t the token.
 *
 * Determinism: per-row statistics are computed by one thread each, the NLL sum
 * runs over rows in order, and every GEMM accumulates chunks in order. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "../ct_error.h"
#include "cpu_kernels.h"

#define DEFAULT_CHUNK_BYTES ((size_t)32 << 20)
#define IGNORE_INDEX (-100)

static size_t xent_chunk_bytes = DEFAULT_CHUNK_BYTES;

size_t ct_cpu_set_xent_chunk_bytes(size_t bytes) {
    size_t prev = xent_chunk_bytes;
    xent_chunk_bytes = bytes ? bytes : DEFAULT_CHUNK_BYTES;
    return prev;
}

/* Buffers of one chunk, all from scratch. */
typedef struct {
    int64_t C;   /* rows per chunk */
    float *xc;   /* [C, D] gathered inputs */
    float *xdc;  /* [C, D] drop(xc); also the (g·A) temporary of dx; NULL without dropout */
    float *L;    /* [C, V] logits, then dL */
    double *nll; /* [C] */
    float *uc;   /* [C, r] drop(xc)·Aᵀ; NULL without LoRA */
    float *gc;   /* [C, r] s·dL·B; NULL unless dA or dx with LoRA */
    float *dxc;  /* [C, D] gradient of the gathered rows; NULL unless dx */
} chunk_bufs;

static float *alloc_f(ct_arena *a, int64_t rows, int64_t cols) {
    return ct_arena_alloc(a, (size_t)rows * (size_t)cols * sizeof(float));
}

/* Rows of L get their NLL in nll[]; with grads, L becomes grad_scale·(softmax - onehot).
 * One thread per row: each row's sums run in index order. */
static void softmax_rows(float *L, int64_t m, int64_t V, const int32_t *lab,
                         const int64_t *rows, bool grad, float grad_scale, double *nll) {
#pragma omp parallel for schedule(static) if (m * V > 65536)
    for (int64_t j = 0; j < m; j++) {
        float *l = L + (size_t)j * (size_t)V;
        int32_t y = lab[rows[j]];
        float mx = l[0];
        for (int64_t i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        float ly = l[y];
        double sum = 0.0;
        if (grad) {
            for (int64_t i = 0; i < V; i++) {
                float e = expf(l[i] - mx);
                l[i] = e;
                sum += (double)e;
            }
            float k = (float)((double)grad_scale / sum);
            for (int64_t i = 0; i < V; i++) l[i] *= k;
            l[y] -= grad_scale;
        } else {
            for (int64_t i = 0; i < V; i++) sum += (double)expf(l[i] - mx);
        }
        nll[j] = (double)mx + log(sum) - (double)ly;
    }
}

/* Backward part of one chunk: dL [m, V] is in b->L. */
static int chunk_grads(const ct_linear *h, int64_t m, int64_t D, int64_t V, const int64_t *rows,
                       chunk_bufs *b, float *dxs, float *das, float *dbs, ct_arena *scratch) {
    const float *xl = b->xdc ? b->xdc : b->xc; /* the LoRA input, [m, D] */
    if (dxs) {
        memset(b->dxc, 0, (size_t)m * (size_t)D * sizeof(float));
        /* dxc = dL·W   (m×V)·(V×D) */
        CT_TRY(ct_cpu_gemm_gw(m, b->L, V, h->w, 1.0f, b->dxc, D, scratch));
    }
    if (h->a) {
        int64_t r = h->a->shape[0];
        float s = h->scale, p = h->dropout;
        if (dbs) /* dB += s·dLᵀ·u   (V×m)·(m×r) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)V, (int)r, (int)m, s, b->L,
                        (int)V, b->uc, (int)r, 1.0f, dbs, (int)r);
        if (das || dxs) /* g = s·dL·B   (m×V)·(V×r) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)r, (int)V, s, b->L,
                        (int)V, (const float *)h->b->data, (int)r, 0.0f, b->gc, (int)r);
        if (das) /* dA += gᵀ·drop(xc)   (r×m)·(m×D) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)D, (int)m, 1.0f,
                        b->gc, (int)r, xl, (int)D, 1.0f, das, (int)D);
        if (dxs && p <= 0.0f) /* dxc += g·A   (m×r)·(r×D) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)D, (int)r, 1.0f,
                        b->gc, (int)r, (const float *)h->a->data, (int)D, 1.0f, b->dxc, (int)D);
        if (dxs && p > 0.0f) {
            /* xdc (no longer needed as input) = g·A   (m×r)·(r×D), then ⊙ mask/(1-p) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)D, (int)r, 1.0f,
                        b->gc, (int)r, (const float *)h->a->data, (int)D, 0.0f, b->xdc, (int)D);
            ct_cpu_dropout_rows(b->xdc, b->xdc, m, D, rows, 0, h->id, p);
            size_t cnt = (size_t)m * (size_t)D;
#pragma omp parallel for simd schedule(static) if (cnt > 32768)
            for (size_t i = 0; i < cnt; i++) b->dxc[i] += b->xdc[i];
        }
    }
    if (dxs) {
        /* Scatter: rows are distinct tokens, so no two threads touch one row. */
#pragma omp parallel for schedule(static) if (m * D > 32768)
        for (int64_t j = 0; j < m; j++) {
            float *dst = dxs + (size_t)rows[j] * (size_t)D;
            const float *src = b->dxc + (size_t)j * (size_t)D;
            for (int64_t i = 0; i < D; i++) dst[i] += src[i];
        }
    }
    return CT_OK;
}

static int xent_chunks(const float *xs, int64_t D, int64_t V, const ct_linear *h,
                       const int32_t *lab, const int64_t *idx, int64_t n, float grad_scale,
                       double *nll_sum, float *dxs, float *das, float *dbs, ct_arena *scratch) {
    bool grad = dxs || das || dbs;
    bool lora = h->a != NULL;
    int64_t r = lora ? h->a->shape[0] : 0;
    float p = lora ? h->dropout : 0.0f;
    chunk_bufs b = {0};
    b.C = (int64_t)(xent_chunk_bytes / ((size_t)V * sizeof(float)));
    if (b.C < 1) b.C = 1;
    if (b.C > n) b.C = n;
    b.xc = alloc_f(scratch, b.C, D);
    b.L = alloc_f(scratch, b.C, V);
    b.nll = ct_arena_alloc(scratch, (size_t)b.C * sizeof(double));
    if (!b.xc || !b.L || !b.nll) return CT_ERUNTIME;
    if (lora && (!(b.uc = alloc_f(scratch, b.C, r)) || !(b.gc = alloc_f(scratch, b.C, r))))
        return CT_ERUNTIME;
    if (p > 0.0f && !(b.xdc = alloc_f(scratch, b.C, D))) return CT_ERUNTIME;
    if (dxs && !(b.dxc = alloc_f(scratch, b.C, D))) return CT_ERUNTIME;

    double total = 0.0;
    for (int64_t c0 = 0; c0 < n; c0 += b.C) {
        int64_t m = n - c0 < b.C ? n - c0 : b.C;
        const int64_t *rows = idx + c0; /* token of each chunk row */
#pragma omp parallel for schedule(static) if (m * D > 32768)
        for (int64_t j = 0; j < m; j++)
            memcpy(b.xc + (size_t)j * (size_t)D, xs + (size_t)rows[j] * (size_t)D,
                   (size_t)D * sizeof(float));
        /* L = xc·Wᵀ   (m×D)·(D×V) */
        CT_TRY(ct_cpu_gemm_xwt(m, b.xc, D, h->w, 1.0f, 0.0f, b.L, V, scratch));
        if (lora) {
            if (p > 0.0f) ct_cpu_dropout_rows(b.xc, b.xdc, m, D, rows, 0, h->id, p);
            const float *xl = p > 0.0f ? b.xdc : b.xc;
            /* u = drop(xc)·Aᵀ   (m×D)·(D×r) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)r, (int)D, 1.0f, xl,
                        (int)D, (const float *)h->a->data, (int)D, 0.0f, b.uc, (int)r);
            /* L += s·u·Bᵀ   (m×r)·(r×V) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)V, (int)r, h->scale,
                        b.uc, (int)r, (const float *)h->b->data, (int)r, 1.0f, b.L, (int)V);
        }
        softmax_rows(b.L, m, V, lab, rows, grad, grad_scale, b.nll);
        for (int64_t j = 0; j < m; j++) total += b.nll[j];
        if (grad) CT_TRY(chunk_grads(h, m, D, V, rows, &b, dxs, das, dbs, scratch));
    }
    *nll_sum = total;
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
        rc = xent_chunks(x->data, D, V, head, lab, idx, n, grad_scale, nll_sum,
                         dx ? dx->data : NULL, da ? da->data : NULL, db ? db->data : NULL, scratch);
    if (!rc) *n_trained = n;
    ct_arena_rewind(scratch, mark);
    return rc;
}
