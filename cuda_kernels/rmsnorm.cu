/* rmsnorm forward/backward, and the forward fused with the residual add
 * before it (add_rmsnorm_fwd): one block per row, fp32 statistics; weights
 * f32/bf16/f16. The twin of autograd/cpu/rmsnorm.c.
 *
 * Buffers: x, y, dy, dx, a, b, sum [R, D] activations (f32 or bf16, one dtype per call);
 * w [D] f32/bf16/f16; rstd [R] f32; dw [D] f32. Kernels are templated on the
 * activation storage A (cuda_common.cuh): loads widen to f32, the sums, rstd
 * and every intermediate are f32, stores round once (dx: its old value plus
 * the f32 term, rounded once).
 *
 * Row passes: with nv = D/8 > 0 (every row and w 16-byte aligned, checked by
 * the entry; else nv = 0, the scalar path) each thread takes 8 consecutive
 * elements per step (act_ld8/act_st8, load_w8), then the row's D - 8 nv tail
 * elements one by one. Each output element is computed by the same
 * expression in both paths; only the sums' order depends on the path.
 *
 * The fused forward (ADD): the first pass forms each x = a + b, rounds it to
 * A (add_fwd's store), writes it to sum and squares the rounded value; the
 * second pass reads sum back (this thread's own elements, just written: in
 * cache). The same elements in the same order as rmsnorm_fwd over add_fwd's
 * output, so the same bits, with a and b read once and no separate pass that
 * reads sum. */
#include "cuda_common.cuh"

static __device__ __forceinline__ float fwd_one(float x, float inv, float w) { return x * inv * w; }

/* v rounded to A as act_st stores it, widened back (sum's value as stored). */
static __device__ __forceinline__ float act_round(const float *, float v) { return v; }
static __device__ __forceinline__ float act_round(const bf16_t *, float v) { return ct_bf16_to_f32(ct_f32_to_bf16(v)); }

/* dx + (rstd dy w - c x) for one element. */
static __device__ __forceinline__ float bwd_one(float dx, float inv, float g, float w, float c, float x) {
    return dx + (inv * g * w - c * x);
}

/* ADD: x is sum, formed here from a and b (written through sum, the same
 * memory as x); else a, b, sum are unused. */
template <class A, bool ADD>
static __global__ void rmsnorm_fwd_kernel(const A *x, const void *w, int wdt, float eps, A *y,
                                          float *rstd, int64_t D, int64_t nv, const A *a, const A *b,
                                          A *sum) {
    __shared__ float sh[256];
    const int64_t row = blockIdx.x * D;
    const A *xr = x + row;
    A *yr = y + row;
    float ss = 0.0f;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
        float xv[8];
        if (ADD) {
            float bv[8];
            act_ld8(a + row, 8 * v, xv);
            act_ld8(b + row, 8 * v, bv);
            for (int k = 0; k < 8; k++) xv[k] = act_round(xr, xv[k] + bv[k]);
            act_st8(sum + row, 8 * v, xv);
        } else {
            act_ld8(xr, 8 * v, xv);
        }
        for (int k = 0; k < 8; k++) ss += xv[k] * xv[k];
    }
    for (int64_t i = 8 * nv + threadIdx.x; i < D; i += blockDim.x) {
        float v;
        if (ADD) {
            v = act_round(xr, act_ld(a + row, i) + act_ld(b + row, i));
            act_st(sum + row, i, v);
        } else {
            v = act_ld(xr, i);
        }
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    float inv = rsqrtf(ss / (float)D + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = inv;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
        float xv[8], wv[8];
        act_ld8(xr, 8 * v, xv);
        load_w8(w, wdt, 8 * v, wv);
        for (int k = 0; k < 8; k++) xv[k] = fwd_one(xv[k], inv, wv[k]);
        act_st8(yr, 8 * v, xv);
    }
    for (int64_t i = 8 * nv + threadIdx.x; i < D; i += blockDim.x)
        act_st(yr, i, fwd_one(act_ld(xr, i), inv, load_w(w, wdt, i)));
}

template <class A>
static __global__ void rmsnorm_bwd_dx_kernel(const A *x, const void *w, int wdt, const float *rstd,
                                             const A *dy, A *dx, int64_t D, int64_t nv) {
    __shared__ float sh[256];
    const A *xr = x + blockIdx.x * D, *gr = dy + blockIdx.x * D;
    A *dr = dx + blockIdx.x * D;
    float inv = rstd[blockIdx.x], dot = 0.0f;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
        float xv[8], gv[8], wv[8];
        act_ld8(xr, 8 * v, xv);
        act_ld8(gr, 8 * v, gv);
        load_w8(w, wdt, 8 * v, wv);
        for (int k = 0; k < 8; k++) dot += gv[k] * wv[k] * xv[k];
    }
    for (int64_t i = 8 * nv + threadIdx.x; i < D; i += blockDim.x)
        dot += act_ld(gr, i) * load_w(w, wdt, i) * act_ld(xr, i);
    dot = block_sum(dot, sh);
    float c = inv * inv * inv * dot / (float)D;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
        float xv[8], gv[8], wv[8], dv[8];
        act_ld8(xr, 8 * v, xv);
        act_ld8(gr, 8 * v, gv);
        load_w8(w, wdt, 8 * v, wv);
        act_ld8(dr, 8 * v, dv);
        for (int k = 0; k < 8; k++) dv[k] = bwd_one(dv[k], inv, gv[k], wv[k], c, xv[k]);
        act_st8(dr, 8 * v, dv);
    }
    for (int64_t i = 8 * nv + threadIdx.x; i < D; i += blockDim.x)
        act_st(dr, i, bwd_one(act_ld(dr, i), inv, act_ld(gr, i), load_w(w, wdt, i), c, act_ld(xr, i)));
}

/* dw[i] += sum_r dy[r,i] x[r,i] rstd[r]: one thread per column, rows in order. */
template <class A>
static __global__ void rmsnorm_bwd_dw_kernel(const A *x, const float *rstd, const A *dy, float *dw,
                                             int64_t R, int64_t D) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= D) return;
    float acc = 0.0f;
    for (int64_t r = 0; r < R; r++) acc += act_ld(dy, r * D + i) * act_ld(x, r * D + i) * rstd[r];
    dw[i] += acc;
}

/* CT_EINPUT unless w is f32/bf16/f16 (what load_w reads). */
static int check_weight(const ct_tensor *w) {
    if (w->dtype == CT_F32 || w->dtype == CT_BF16 || w->dtype == CT_F16) return CT_OK;
    return ct_errorf(CT_EINPUT, "rmsnorm: weight %s of dtype %s (the CUDA kernel reads f32/bf16/f16)",
                     w->name ? w->name : "?", ct_dtype_name(w->dtype));
}

/* CT_EINPUT unless t (rstd, dw; NULL: nothing to check) is f32. */
static int check_f32(const ct_tensor *t, const char *what) {
    if (!t || t->dtype == CT_F32) return CT_OK;
    return ct_errorf(CT_EINPUT, "rmsnorm: %s must be float32, not %s", what, ct_dtype_name(t->dtype));
}

/* D/8 when x and every other given tensor (NULL: absent) start 16-byte
 * aligned and so does every row (D elements of A) and w: the vector paths;
 * else 0. */
static int64_t vec_count(int64_t D, const ct_tensor *x, const ct_tensor *w, const ct_tensor *a,
                         const ct_tensor *b, const ct_tensor *c = nullptr, const ct_tensor *d = nullptr) {
    const ct_tensor *t[5] = {w, a, b, c, d};
    if ((D * (int64_t)ct_dtype_bytes(x->dtype, 1)) % 16 != 0 || !aligned16(x->data)) return 0;
    for (int k = 0; k < 5; k++)
        if (t[k] && !aligned16(t[k]->data)) return 0;
    return D / 8;
}

template <class A>
static int rmsnorm_fwd_launch(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                              ct_tensor *rstd, int64_t R, int64_t D) {
    auto *rmsnorm_kernel = &rmsnorm_fwd_kernel<A, false>;
    CT_LAUNCH(rmsnorm_kernel, (unsigned)R, 256, 0, (const A *)x->data, w->data,
              (int)w->dtype, eps, (A *)y->data, rstd ? (float *)rstd->data : nullptr, D,
              vec_count(D, x, w, y, nullptr), nullptr, nullptr, nullptr);
    return CT_OK;
}

/* The fused forward: x is sum, written by the kernel from a and b. */
template <class A>
static int add_rmsnorm_fwd_launch(const ct_tensor *a, const ct_tensor *b, const ct_tensor *w, float eps,
                                  ct_tensor *sum, ct_tensor *y, ct_tensor *rstd, int64_t R, int64_t D) {
    auto *add_rmsnorm_kernel = &rmsnorm_fwd_kernel<A, true>;
    CT_LAUNCH(add_rmsnorm_kernel, (unsigned)R, 256, 0, (const A *)sum->data, w->data,
              (int)w->dtype, eps, (A *)y->data, rstd ? (float *)rstd->data : nullptr, D,
              vec_count(D, sum, w, y, a, b), (const A *)a->data, (const A *)b->data, (A *)sum->data);
    return CT_OK;
}

template <class A>
static int rmsnorm_bwd_launch(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                              const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw, int64_t R,
                              int64_t D) {
    if (dx)
        CT_LAUNCH(rmsnorm_bwd_dx_kernel<A>, (unsigned)R, 256, 0, (const A *)x->data, w->data,
                  (int)w->dtype, (const float *)rstd->data, (const A *)dy->data, (A *)dx->data, D,
                  vec_count(D, x, w, dy, dx));
    if (dw)
        CT_LAUNCH(rmsnorm_bwd_dw_kernel<A>, (unsigned)((D + 255) / 256), 256, 0,
                  (const A *)x->data, (const float *)rstd->data, (const A *)dy->data,
                  (float *)dw->data, R, D);
    return CT_OK;
}

int ct_cuda_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y,
                        ct_tensor *rstd) {
    const ct_tensor *ts[] = {x, y};
    const char *names[] = {"x", "y"};
    CT_TRY(act_check_same("rmsnorm", ts, names, 2));
    CT_TRY(check_weight(w));
    CT_TRY(check_f32(rstd, "rstd"));
    int64_t R = ct_rows(x), D = ct_dim_from_end(x, 1);
    if (R == 0) return CT_OK;
    return CT_ACT_DISPATCH(x, rmsnorm_fwd_launch, x, w, eps, y, rstd, R, D);
}

int ct_cuda_add_rmsnorm_fwd(const ct_tensor *a, const ct_tensor *b, const ct_tensor *w, float eps,
                            ct_tensor *sum, ct_tensor *y, ct_tensor *rstd) {
    const ct_tensor *ts[] = {a, b, sum, y};
    const char *names[] = {"a", "b", "sum", "y"};
    CT_TRY(act_check_same("add_rmsnorm", ts, names, 4));
    CT_TRY(check_weight(w));
    CT_TRY(check_f32(rstd, "rstd"));
    int64_t R = ct_rows(a), D = ct_dim_from_end(a, 1);
    if (R == 0) return CT_OK;
    return CT_ACT_DISPATCH(a, add_rmsnorm_fwd_launch, a, b, w, eps, sum, y, rstd, R, D);
}

int ct_cuda_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd,
                        const ct_tensor *dy, ct_tensor *dx, ct_tensor *dw) {
    if (!dx && !dw) return CT_OK;
    const ct_tensor *ts[] = {x, dy, dx};
    const char *names[] = {"x", "dy", "dx"};
    CT_TRY(act_check_same("rmsnorm", ts, names, 3));
    CT_TRY(check_weight(w));
    CT_TRY(check_f32(rstd, "rstd"));
    CT_TRY(check_f32(dw, "dw"));
    int64_t R = ct_rows(x), D = ct_dim_from_end(x, 1);
    if (R == 0) return CT_OK;
    return CT_ACT_DISPATCH(x, rmsnorm_bwd_launch, x, w, rstd, dy, dx, dw, R, D);
}
