/* lora_linear on the GPU: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ and its backward. The
 * twin of autograd/cpu/lora_linear.c (same operands rounded, same dropout
 * mask, same order of the updates); every product is a ct_cuda_gemm (gemm.cu).
 *
 * Shapes: x [T, in], W [out, in] frozen, A [r, in], B [out, r], u [T, r],
 * y / dY [T, out]; A, B, u, dA, dB f32.
 *
 * Frozen W: an f32 W with compute f32, or a bf16 W with compute bf16, goes to
 * the GEMM as stored; any other (f16, nf4/fp4, or the other float type) is
 * converted one row tile at a time (ct_cuda_weight_rows, ct_cuda_tile_rows
 * bytes of scratch) into the compute type. With compute bf16 every GEMM
 * operand is bf16 (f32 sums, f32 outputs): the activation x (or dY) is rounded
 * to a scratch copy once and shared by the GEMMs that read it; A, B, u and
 * g = s·dY·B are rounded where they enter a GEMM, as the CPU's bf16 GEMMs do
 * when they pack them.
 *
 * Dropout (LoRA input only): element (t, i) is dropped when
 * ct_uniform(seed, t*in + i) < p, kept ones are × 1/(1-p) (in f32, then
 * rounded for bf16). The mask is regenerated in backward, one token chunk
 * (kDropChunkBytes of f32) at a time:
 *   dB += s·dYᵀ·u     g = s·dY·B     dA += gᵀ·drop(x)
 *   dx += dY·W + (g·A) ⊙ mask/(1-p)
 * Scratch comes from `scratch` and is rewound before return. */
#include "cuda_common.cuh"
#include "gemm.h"

static const size_t kDropChunkBytes = (size_t)32 << 20;

/* dst[i] = bf16(src[i]) (nearest even). */
static __global__ void round_bf16_kernel(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = ct_f32_to_bf16(src[i]);
}

/* dst[i] = drop(src[i]) for the n elements from flat index base of a [T, in]
 * activation: 0 where ct_uniform(seed, base + i) < p, else src[i]·keep. */
static __global__ void dropout_kernel(const float *src, void *dst, int to_bf16, int64_t n, uint64_t base,
                                      uint64_t seed, float p, float keep) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ct_uniform(seed, base + (uint64_t)i) < p ? 0.0f : src[i] * keep;
    if (to_bf16) ((uint16_t *)dst)[i] = ct_f32_to_bf16(v);
    else ((float *)dst)[i] = v;
}

/* dx[i] += drop(d[i]) (the mask of dropout_kernel). */
static __global__ void add_dropped_kernel(const float *d, float *dx, int64_t n, uint64_t base, uint64_t seed,
                                          float p, float keep) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ct_uniform(seed, base + (uint64_t)i) < p ? 0.0f : d[i] * keep;
    dx[i] += v;
}

static int scratch_alloc(ct_arena *scratch, size_t bytes, void **out) {
    *out = ct_arena_alloc(scratch, bytes ? bytes : 1);
    return *out ? CT_OK : CT_ERUNTIME;
}

/* The GEMM operand for n f32 elements: src itself (f32 compute) or its bf16
 * copy in scratch. */
static int operand(const float *src, int64_t n, bool bf16, ct_arena *scratch, const void **out) {
    if (!bf16) {
        *out = src;
        return CT_OK;
    }
    void *dst;
    CT_TRY(scratch_alloc(scratch, (size_t)n * sizeof(uint16_t), &dst));
    if (n > 0) CT_LAUNCH(round_bf16_kernel, blocks_for(n), kThreads, 0, src, (uint16_t *)dst, n);
    *out = dst;
    return CT_OK;
}

static size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

/* True when W goes to the GEMM as stored (its dtype is the compute type). */
static bool w_direct(const ct_tensor *w, cudaDataType_t t) {
    return (w->dtype == CT_F32 && t == CUDA_R_32F) || (w->dtype == CT_BF16 && t == CUDA_R_16BF);
}

/* Rows per converted W tile: the bound of gemm.h, rounded down to a multiple
 * of 64 when larger (tile offsets keep the operands' alignment). */
static int64_t w_tile_rows(const ct_tensor *w, cudaDataType_t t) {
    int64_t N = ct_rows(w), K = ct_dim_from_end(w, 1);
    int64_t tile = ct_cuda_tile_rows(K, N, type_bytes(t));
    if (tile > 64 && tile < N) tile -= tile % 64;
    return tile;
}

/* C [M, N] = alpha·X·Wᵀ + beta·C; X [M, K] of type t (row stride ldx), W [N, K]. */
static int frozen_xwt(const void *x, int64_t ldx, int64_t M, const ct_tensor *w, cudaDataType_t t,
                      float alpha, float beta, float *c, int64_t ldc, ct_arena *scratch) {
    int64_t N = ct_rows(w), K = ct_dim_from_end(w, 1);
    if (w_direct(w, t)) /* C = alpha·X·Wᵀ + beta·C   (M×K)·(K×N) */
        return ct_cuda_gemm(false, true, M, N, K, alpha, x, ldx, w->data, K, t, beta, c, ldc, CUDA_R_32F);
    int64_t tile = w_tile_rows(w, t);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    void *wt; /* [tile, K] of type t */
    int rc = scratch_alloc(scratch, (size_t)tile * (size_t)K * type_bytes(t), &wt);
    for (int64_t n0 = 0; !rc && n0 < N; n0 += tile) {
        int64_t nt = N - n0 < tile ? N - n0 : tile;
        rc = ct_cuda_weight_rows(w, n0, nt, t, wt);
        /* C[:, n0:n0+nt] = alpha·X·Wtᵀ + beta·C[:, n0:n0+nt]   (M×K)·(K×nt) */
        if (!rc)
            rc = ct_cuda_gemm(false, true, M, nt, K, alpha, x, ldx, wt, K, t, beta, c + n0, ldc, CUDA_R_32F);
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}

/* C [M, K] += alpha·G·W; G [M, N] of type t (row stride ldg), W [N, K]. */
static int frozen_gw(const void *g, int64_t ldg, int64_t M, const ct_tensor *w, cudaDataType_t t, float alpha,
                     float *c, int64_t ldc, ct_arena *scratch) {
    int64_t N = ct_rows(w), K = ct_dim_from_end(w, 1);
    if (w_direct(w, t)) /* C += alpha·G·W   (M×N)·(N×K) */
        return ct_cuda_gemm(false, false, M, K, N, alpha, g, ldg, w->data, K, t, 1.0f, c, ldc, CUDA_R_32F);
    int64_t tile = w_tile_rows(w, t);
    size_t es = type_bytes(t);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    void *wt; /* [tile, K] of type t */
    int rc = scratch_alloc(scratch, (size_t)tile * (size_t)K * es, &wt);
    for (int64_t n0 = 0; !rc && n0 < N; n0 += tile) {
        int64_t nt = N - n0 < tile ? N - n0 : tile;
        rc = ct_cuda_weight_rows(w, n0, nt, t, wt);
        /* C += alpha·G[:, n0:n0+nt]·Wt   (M×nt)·(nt×K) */
        if (!rc)
            rc = ct_cuda_gemm(false, false, M, K, nt, alpha, (const char *)g + (size_t)n0 * es, ldg, wt, K, t,
                              1.0f, c, ldc, CUDA_R_32F);
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}

/* Token rows per dropout chunk of an [T, in] activation. */
static int64_t drop_chunk_rows(int64_t in, int64_t T) {
    int64_t n = (int64_t)(kDropChunkBytes / ((size_t)(in > 0 ? in : 1) * sizeof(float)));
    if (n > T) n = T;
    return n < 1 ? 1 : n;
}

/* u [T, r] = drop(x)·Aᵀ, the dropped copy of x made one token chunk at a
 * time; ac: A [r, in] as a GEMM operand of type t. */
static int lora_down_dropped(const float *xs, int64_t T, int64_t in, int64_t r, float p, uint64_t seed,
                             const void *ac, cudaDataType_t t, float *us, ct_arena *scratch) {
    float keep = 1.0f / (1.0f - p);
    int64_t tc = drop_chunk_rows(in, T);
    void *xd; /* [tc, in] of type t */
    CT_TRY(scratch_alloc(scratch, (size_t)tc * (size_t)in * type_bytes(t), &xd));
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
        int64_t n = T - t0 < tc ? T - t0 : tc;
        CT_LAUNCH(dropout_kernel, blocks_for(n * in), kThreads, 0, xs + t0 * in, xd, (int)(t == CUDA_R_16BF),
                  n * in, (uint64_t)(t0 * in), seed, p, keep);
        /* u[t0:t0+n] = drop(x[t0:t0+n])·Aᵀ   (n×in)·(in×r) */
        CT_TRY(ct_cuda_gemm(false, true, n, r, in, 1.0f, xd, in, ac, in, t, 0.0f, us + t0 * r, r, CUDA_R_32F));
    }
    return CT_OK;
}

int ct_cuda_lora_linear_fwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y,
                            ct_tensor *u, ct_arena *scratch) {
    int64_t T = ct_rows(x), in = ct_dim_from_end(x, 1), out = ct_rows(lin->w);
    float *ys = y ? (float *)y->data : nullptr; /* [T, out]; NULL: only u is wanted */
    bool lora = lin->a && (ys || u);
    if (T == 0 || (!ys && !lora)) return CT_OK;
    bool bf = lin->compute == CT_BF16;
    cudaDataType_t t = bf ? CUDA_R_16BF : CUDA_R_32F;
    float p = lin->dropout;
    const float *xs = (const float *)x->data;
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int rc = CT_OK;
    /* x as a GEMM operand: for y = x·Wᵀ and, without dropout, u = x·Aᵀ */
    const void *xc = xs;
    if (ys || (lora && p <= 0.0f)) rc = operand(xs, T * in, bf, scratch, &xc);
    if (!rc && ys) /* y = x·Wᵀ   (T×in)·(in×out) */
        rc = frozen_xwt(xc, in, T, lin->w, t, 1.0f, 0.0f, ys, out, scratch);
    if (!rc && lora) {
        int64_t r = ct_rows(lin->a);
        void *ub = u ? u->data : nullptr;
        if (!ub) rc = scratch_alloc(scratch, (size_t)T * (size_t)r * sizeof(float), &ub);
        float *us = (float *)ub; /* [T, r] */
        const void *ac = nullptr; /* A [r, in] */
        if (!rc) rc = operand((const float *)lin->a->data, r * in, bf, scratch, &ac);
        if (!rc && p <= 0.0f) { /* u = x·Aᵀ   (T×in)·(in×r) */
            rc = ct_cuda_gemm(false, true, T, r, in, 1.0f, xc, in, ac, in, t, 0.0f, us, r, CUDA_R_32F);
        } else if (!rc) {
            rc = lora_down_dropped(xs, T, in, r, p, seed, ac, t, us, scratch);
        }
        if (!rc && ys) { /* y += s·u·Bᵀ   (T×r)·(r×out) */
            const void *uc = nullptr, *bc = nullptr;
            rc = operand(us, T * r, bf, scratch, &uc);
            if (!rc) rc = operand((const float *)lin->b->data, out * r, bf, scratch, &bc);
            if (!rc)
                rc = ct_cuda_gemm(false, true, T, out, r, lin->scale, uc, r, bc, r, t, 1.0f, ys, out,
                                  CUDA_R_32F);
        }
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}

/* The LoRA part of backward: dB, dA and the LoRA term of dx. dyc: dY as a
 * GEMM operand (type t). */
static int lora_bwd(const float *xs, int64_t T, int64_t in, int64_t out, const ct_linear *lin, uint64_t seed,
                    const float *us, const void *dyc, cudaDataType_t t, float *dxs, float *das, float *dbs,
                    ct_arena *scratch) {
    int64_t r = ct_rows(lin->a);
    bool bf = t == CUDA_R_16BF;
    size_t es = type_bytes(t);
    float s = lin->scale, p = lin->dropout;
    if (dbs) { /* dB += s·dYᵀ·u   (out×T)·(T×r) */
        const void *uc;
        CT_TRY(operand(us, T * r, bf, scratch, &uc));
        CT_TRY(ct_cuda_gemm(true, false, out, r, T, s, dyc, out, uc, r, t, 1.0f, dbs, r, CUDA_R_32F));
    }
    if (!das && !dxs) return CT_OK;
    const void *bc, *gc, *ac = nullptr;
    void *g; /* [T, r] f32 */
    CT_TRY(operand((const float *)lin->b->data, out * r, bf, scratch, &bc));
    CT_TRY(scratch_alloc(scratch, (size_t)T * (size_t)r * sizeof(float), &g));
    /* g = s·dY·B   (T×out)·(out×r) */
    CT_TRY(ct_cuda_gemm(false, false, T, r, out, s, dyc, out, bc, r, t, 0.0f, g, r, CUDA_R_32F));
    CT_TRY(operand((const float *)g, T * r, bf, scratch, &gc));
    if (dxs) CT_TRY(operand((const float *)lin->a->data, r * in, bf, scratch, &ac));
    if (p <= 0.0f) {
        if (das) { /* dA += gᵀ·x   (r×T)·(T×in) */
            const void *xc;
            CT_TRY(operand(xs, T * in, bf, scratch, &xc));
            CT_TRY(ct_cuda_gemm(true, false, r, in, T, 1.0f, gc, r, xc, in, t, 1.0f, das, in, CUDA_R_32F));
        }
        if (dxs) /* dx += g·A   (T×r)·(r×in) */
            CT_TRY(ct_cuda_gemm(false, false, T, in, r, 1.0f, gc, r, ac, in, t, 1.0f, dxs, in, CUDA_R_32F));
        return CT_OK;
    }
    /* With dropout the mask is regenerated per token chunk into buf. */
    float keep = 1.0f / (1.0f - p);
    int64_t tc = drop_chunk_rows(in, T);
    void *buf; /* [tc, in]: drop(x) of type t for dA, then g·A in f32 for dx */
    CT_TRY(scratch_alloc(scratch, (size_t)tc * (size_t)in * sizeof(float), &buf));
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
        int64_t n = T - t0 < tc ? T - t0 : tc;
        const void *gcc = (const char *)gc + (size_t)(t0 * r) * es; /* g[t0:t0+n] [n, r] */
        uint64_t base = (uint64_t)(t0 * in);
        if (das) {
            CT_LAUNCH(dropout_kernel, blocks_for(n * in), kThreads, 0, xs + t0 * in, buf, (int)bf, n * in, base,
                      seed, p, keep);
            /* dA += g[t0:t0+n]ᵀ·drop(x[t0:t0+n])   (r×n)·(n×in) */
            CT_TRY(ct_cuda_gemm(true, false, r, in, n, 1.0f, gcc, r, buf, in, t, 1.0f, das, in, CUDA_R_32F));
        }
        if (dxs) {
            /* buf = g[t0:t0+n]·A   (n×r)·(r×in), then dx += buf ⊙ mask/(1-p) */
            CT_TRY(ct_cuda_gemm(false, false, n, in, r, 1.0f, gcc, r, ac, in, t, 0.0f, buf, in, CUDA_R_32F));
            CT_LAUNCH(add_dropped_kernel, blocks_for(n * in), kThreads, 0, (const float *)buf, dxs + t0 * in,
                      n * in, base, seed, p, keep);
        }
    }
    return CT_OK;
}

int ct_cuda_lora_linear_bwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, const ct_tensor *u,
                            const ct_tensor *dy, ct_tensor *dx, ct_tensor *da, ct_tensor *db,
                            ct_arena *scratch) {
    int64_t T = ct_rows(x), in = ct_dim_from_end(x, 1), out = ct_rows(lin->w);
    float *dxs = dx ? (float *)dx->data : nullptr;
    if (!lin->a) da = db = nullptr;
    if (T == 0 || (!dxs && !da && !db)) return CT_OK;
    if (lin->a && !u)
        return ct_errorf(CT_ERUNTIME, "lora_linear %s backward: the forward saved no u = drop(x)·Aᵀ",
                         lin->w->name ? lin->w->name : "?");
    bool bf = lin->compute == CT_BF16;
    cudaDataType_t t = bf ? CUDA_R_16BF : CUDA_R_32F;
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    /* dY as a GEMM operand, shared by dY·W, dYᵀ·u and dY·B */
    const void *dyc = nullptr;
    int rc = operand((const float *)dy->data, T * out, bf, scratch, &dyc);
    if (!rc && dxs) /* dx += dY·W   (T×out)·(out×in) */
        rc = frozen_gw(dyc, out, T, lin->w, t, 1.0f, dxs, in, scratch);
    if (!rc && lin->a)
        rc = lora_bwd((const float *)x->data, T, in, out, lin, seed, (const float *)u->data, dyc, t, dxs,
                      da ? (float *)da->data : nullptr, db ? (float *)db->data : nullptr, scratch);
    ct_arena_rewind(scratch, mark);
    return rc;
}
