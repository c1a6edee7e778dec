/* rmsnorm over the last dim: y = x * r * w, r = rsqrt(mean(x²) + eps), and
 * the same fused with the residual add before it (x = a + b: add_rmsnorm_fwd).
 * Backward (per row, D = dim, g = dy * w):
 *   dx = r * g - x * r³ * mean(g * x)
 *   dw += dy * x * r   (summed over rows)
 *
 * Layout: x, y, dy, dx, a, b [R, D] row-major; w, dw [D]; rstd [R].
 *
 * Each thread owns a contiguous block of rows. The weight is read as f32 from a
 * per-thread stack buffer converted once (bf16/f16) or straight from w (f32),
 * so the inner loops are plain vectorizable f32 loops. Row sums (mean(x²),
 * mean(g·x)) use DOT_LANES independent partial sums combined by a fixed tree:
 * they vectorize without -ffast-math and do not depend on the thread count.
 * dw: each thread sums its rows into a partial [D] (fused with the dx pass),
 * then the threads reduce the partials column-slice by column-slice in thread
 * order: deterministic for a fixed thread count, and every array is walked
 * along rows (the former column walk with a row stride missed cache on every
 * element).
 * Rows wider than W_CHUNK are processed in column chunks of W_CHUNK (the stack
 * buffers' size); the common widths (<= 8192) take the single-chunk path. */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <string.h>

#include "../ct_error.h"
#include "../ct_inline.h"
#include "cpu_kernels.h"

enum {
    W_CHUNK = 8192,  /* columns per stack buffer (32 KiB each, two per thread) */
    DOT_LANES = 32,  /* partial sums per row reduction */
};

/* Below this many elements a parallel region costs more than it saves. */
#define RMSNORM_PAR_MIN 65536

/* Columns [c0, c0+n) of the weight as f32: w's own storage when it is f32,
 * else converted into buf [n]. */
static const float *weight_f32(const ct_tensor *w, int64_t c0, int64_t n, float *buf) {
    switch (w->dtype) {
    case CT_BF16: {
        const uint16_t *h = (const uint16_t *)w->data + c0;
        for (int64_t i = 0; i < n; i++) buf[i] = ct_bf16_to_f32(h[i]);
        return buf;
    }
    case CT_F16: {
        const uint16_t *h = (const uint16_t *)w->data + c0;
        for (int64_t i = 0; i < n; i++) buf[i] = ct_f16_to_f32(h[i]);
        return buf;
    }
    default: return (const float *)w->data + c0; /* f32: checked by the caller */
    }
}

static int check_weight(const ct_tensor *w) {
    if (w->dtype == CT_F32 || w->dtype == CT_BF16 || w->dtype == CT_F16) return CT_OK;
    return ct_errorf(CT_EINPUT, "rmsnorm: weight %s of dtype %s (the CPU kernel reads f32/bf16/f16)",
                     w->name ? w->name : "?", ct_dtype_name(w->dtype));
}

/* Reduces DOT_LANES partial sums in a fixed pairwise order. */
static float lanes_sum(float *acc) {
    for (int w = DOT_LANES / 2; w > 0; w /= 2)
        for (int k = 0; k < w; k++) acc[k] += acc[k + w];
    return acc[0];
}

/* Σ x[i]² over n; element i goes to partial sum i % DOT_LANES. */
static float sum_sq(const float *x, int64_t n) {
    float acc[DOT_LANES] = {0};
    int64_t i = 0;
    for (; i + DOT_LANES <= n; i += DOT_LANES)
        for (int k = 0; k < DOT_LANES; k++) acc[k] += x[i + k] * x[i + k];
    for (int k = 0; i + k < n; k++) acc[k] += x[i + k] * x[i + k];
    return lanes_sum(acc);
}

/* Σ g[i]·w[i]·x[i] over n, lanes as in sum_sq. */
static float sum_gwx(const float *g, const float *w, const float *x, int64_t n) {
    float acc[DOT_LANES] = {0};
    int64_t i = 0;
    for (; i + DOT_LANES <= n; i += DOT_LANES)
        for (int k = 0; k < DOT_LANES; k++) acc[k] += g[i + k] * w[i + k] * x[i + k];
    for (int k = 0; i + k < n; k++) acc[k] += g[i + k] * w[i + k] * x[i + k];
    return lanes_sum(acc);
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The forward over R rows of D: y = x * r * w, r into rs (NULL: not saved).
 * With as/bs (add_rmsnorm_fwd) each row of x is first written as as + bs,
 * then normalised while it is in cache: the same sums, so the same bits as
 * add_fwd then rmsnorm_fwd. */
static void norm_fwd(const float *as, const float *bs, float *xs_out, const float *xs, const ct_tensor *w,
                     float eps, float *ys, float *rs, int64_t R, int64_t D) {
#pragma omp parallel if (R * D > RMSNORM_PAR_MIN)
    {
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t r0 = R * tid / nt, r1 = R * (tid + 1) / nt; /* this thread's rows */
        float wbuf[W_CHUNK]; /* w columns as f32 */
        const bool one = D <= W_CHUNK;
        const float *wf = one ? weight_f32(w, 0, D, wbuf) : NULL;
        for (int64_t r = r0; r < r1; r++) {
            const size_t row = (size_t)r * (size_t)D;
            const float *xr = xs + row;
            float *yr = ys + row;
            if (as) { /* element-wise; sum may be a or b: each read before it is written */
                const float *ar = as + row, *br = bs + row;
                float *sr = xs_out + row;
                for (int64_t i = 0; i < D; i++) sr[i] = ar[i] + br[i];
            }
            float inv = 1.0f / sqrtf(sum_sq(xr, D) / (float)D + eps);
            if (rs) rs[r] = inv;
            for (int64_t c0 = 0; c0 < D; c0 += W_CHUNK) {
                int64_t n = min64(W_CHUNK, D - c0);
                const float *wc = one ? wf : weight_f32(w, c0, n, wbuf);
                const float *xc = xr + c0;
                float *yc = yr + c0;
                for (int64_t i = 0; i < n; i++) yc[i] = xc[i] * inv * wc[i];
            }
        }
    }
}

int ct_cpu_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                       ct_tensor *rstd) {
    CT_TRY(check_weight(w));
    norm_fwd(NULL, NULL, NULL, x->data, w, eps, y->data, rstd ? rstd->data : NULL, ct_rows(x),
             ct_dim_from_end(x, 1));
    return CT_OK;
}

int ct_cpu_add_rmsnorm_fwd(const ct_tensor *a, const ct_tensor *b, const ct_tensor *w, float eps,
                           ct_tensor *sum, ct_tensor *y, ct_tensor *rstd) {
    CT_TRY(check_weight(w));
    norm_fwd(a->data, b->data, sum->data, sum->data, w, eps, y->data, rstd ? rstd->data : NULL,
             ct_rows(a), ct_dim_from_end(a, 1));
    return CT_OK;
}

int ct_cpu_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                       const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw) {
    if (!dx && !dw) return CT_OK;
    CT_TRY(check_weight(w));
    const int64_t R = ct_rows(x), D = ct_dim_from_end(x, 1);
    const float *xs = x->data, *rs = rstd->data, *gs = dy->data;
    float *dxs = dx ? dx->data : NULL, *dws = dw ? dw->data : NULL;
    const bool par = R * D > RMSNORM_PAR_MIN;
    const int max_t = par ? omp_get_max_threads() : 1;
    const float *parts[max_t]; /* each thread's dw partial [W_CHUNK], for the reduction */
#pragma omp parallel if (par)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t r0 = R * tid / nt, r1 = R * (tid + 1) / nt; /* this thread's rows */
        float wbuf[W_CHUNK]; /* w columns as f32 */
        float part[W_CHUNK]; /* Σ over this thread's rows of dy·x·r, one column chunk */
        const bool one = D <= W_CHUNK;
        const bool fuse = one && dxs && dws; /* dw partial summed in the dx pass */
        const float *wf = one ? weight_f32(w, 0, D, wbuf) : NULL;
        if (fuse) memset(part, 0, (size_t)D * sizeof(float));

        if (dxs) {
            for (int64_t r = r0; r < r1; r++) {
                const size_t row = (size_t)r * (size_t)D;
                const float *xr = xs + row, *gr = gs + row;
                float *dr = dxs + row;
                const float inv = rs[r];
                float dot = 0.0f;
                if (one) {
                    dot = sum_gwx(gr, wf, xr, D);
                } else {
                    for (int64_t c0 = 0; c0 < D; c0 += W_CHUNK) { /* chunk sums in order */
                        int64_t n = min64(W_CHUNK, D - c0);
                        dot += sum_gwx(gr + c0, weight_f32(w, c0, n, wbuf), xr + c0, n);
                    }
                }
                const float c = inv * inv * inv * dot / (float)D;
                if (fuse) {
                    for (int64_t i = 0; i < D; i++) {
                        dr[i] += inv * gr[i] * wf[i] - c * xr[i];
                        part[i] += gr[i] * xr[i] * inv;
                    }
                } else {
                    for (int64_t c0 = 0; c0 < D; c0 += W_CHUNK) {
                        int64_t n = min64(W_CHUNK, D - c0);
                        const float *wc = one ? wf : weight_f32(w, c0, n, wbuf);
                        const float *gc = gr + c0, *xc = xr + c0;
                        float *dc = dr + c0;
                        for (int64_t i = 0; i < n; i++) dc[i] += inv * gc[i] * wc[i] - c * xc[i];
                    }
                }
            }
        }

        if (dws) {
            /* Every thread runs the same chunk sequence: the barriers match. */
            for (int64_t c0 = 0; c0 < D; c0 += W_CHUNK) {
                const int64_t n = min64(W_CHUNK, D - c0);
                if (!fuse) {
                    memset(part, 0, (size_t)n * sizeof(float));
                    for (int64_t r = r0; r < r1; r++) {
                        const size_t off = (size_t)r * (size_t)D + (size_t)c0;
                        const float *xc = xs + off, *gc = gs + off;
                        const float inv = rs[r];
                        for (int64_t i = 0; i < n; i++) part[i] += gc[i] * xc[i] * inv;
                    }
                }
                parts[tid] = part;
#pragma omp barrier
                /* This thread's column slice: Σ over threads 0..nt-1 in order. */
                const int64_t i0 = n * tid / nt, i1 = n * (tid + 1) / nt;
                for (int64_t i = i0; i < i1; i++) {
                    float s = parts[0][i];
                    for (int t = 1; t < nt; t++) s += parts[t][i];
                    dws[c0 + i] += s;
                }
                /* No thread reuses or leaves (ending its `part`) while others read it. */
#pragma omp barrier
            }
        }
    }
    return CT_OK;
}
