/* lora_linear on the GPU: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ and its backward. The
 * twin of autograd/cpu/lora_linear.c (same operands rounded, same dropout
 * mask, same order of the updates); every product is a ct_cuda_gemm (gemm.cu).
 *
 * Shapes: x [T, in], W [out, in] frozen, A [r, in], B [out, r], u [T, r],
 * y / dY [T, out]; A, B, dA, dB f32; the activations x, y, u, dY, dx f32 or
 * bf16 (all the same dtype; bf16: fwd_bf16 / bwd_bf16_run at the end of the
 * file, the paragraph there). What follows up to there is the f32 path.
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
 * activation (A: f32 or bf16): 0 where ct_uniform(seed, base + i) < p, else
 * src[i]·keep (p = 0, keep = 1: a plain copy, widened or rounded). */
template <class A>
static __global__ void dropout_kernel(const A *src, void *dst, int to_bf16, int64_t n, uint64_t base, uint64_t seed,
                                      float p, float keep) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = p > 0.0f && ct_uniform(seed, base + (uint64_t)i) < p ? 0.0f : act_ld(src, i) * keep;
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

/* C [M, N] = alpha·X·Wᵀ + beta·C; X [M, K] of type t (row stride ldx), W [N, K];
 * C f32 or (ct: bf16 compute only) bf16, each tile's result rounded once. */
static int frozen_xwt(const void *x, int64_t ldx, int64_t M, const ct_tensor *w, cudaDataType_t t,
                      float alpha, float beta, void *c, int64_t ldc, cudaDataType_t ct, ct_arena *scratch) {
    int64_t N = ct_rows(w), K = ct_dim_from_end(w, 1);
    if (w_direct(w, t)) /* C = alpha·X·Wᵀ + beta·C   (M×K)·(K×N) */
        return ct_cuda_gemm(false, true, M, N, K, alpha, x, ldx, w->data, K, t, beta, c, ldc, ct);
    int64_t tile = w_tile_rows(w, t);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    void *wt; /* [tile, K] of type t */
    int rc = scratch_alloc(scratch, (size_t)tile * (size_t)K * type_bytes(t), &wt);
    for (int64_t n0 = 0; !rc && n0 < N; n0 += tile) {
        int64_t nt = N - n0 < tile ? N - n0 : tile;
        rc = ct_cuda_weight_rows(w, n0, nt, t, wt);
        /* C[:, n0:n0+nt] = alpha·X·Wtᵀ + beta·C[:, n0:n0+nt]   (M×K)·(K×nt) */
        if (!rc)
            rc = ct_cuda_gemm(false, true, M, nt, K, alpha, x, ldx, wt, K, t, beta,
                              (char *)c + (size_t)n0 * type_bytes(ct), ldc, ct);
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
template <class A>
static int lora_down_dropped(const A *xs, int64_t T, int64_t in, int64_t r, float p, uint64_t seed,
                             const void *ac, cudaDataType_t t, float *us, ct_arena *scratch) {
    float keep = 1.0f / (1.0f - p);
    int64_t tc = drop_chunk_rows(in, T);
    void *xd; /* [tc, in] of type t */
    CT_TRY(scratch_alloc(scratch, (size_t)tc * (size_t)in * type_bytes(t), &xd));
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
        int64_t n = T - t0 < tc ? T - t0 : tc;
        auto *k = &dropout_kernel<A>;
        CT_LAUNCH(k, blocks_for(n * in), kThreads, 0, xs + t0 * in, xd, (int)(t == CUDA_R_16BF), n * in,
                  (uint64_t)(t0 * in), seed, p, keep);
        /* u[t0:t0+n] = drop(x[t0:t0+n])·Aᵀ   (n×in)·(in×r) */
        CT_TRY(ct_cuda_gemm(false, true, n, r, in, 1.0f, xd, in, ac, in, t, 0.0f, us + t0 * r, r, CUDA_R_32F));
    }
    return CT_OK;
}

/* Forward with f32 activations. */
static int fwd_f32(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y, ct_tensor *u,
                   ct_arena *scratch) {
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
        rc = frozen_xwt(xc, in, T, lin->w, t, 1.0f, 0.0f, ys, out, CUDA_R_32F, scratch);
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
            auto *k = &dropout_kernel<float>;
            CT_LAUNCH(k, blocks_for(n * in), kThreads, 0, xs + t0 * in, buf, (int)bf, n * in, base, seed, p, keep);
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

/* Backward with f32 activations. */
static int bwd_f32(const ct_tensor *x, const ct_linear *lin, uint64_t seed, const ct_tensor *u, const ct_tensor *dy,
                   ct_tensor *dx, ct_tensor *da, ct_tensor *db, ct_arena *scratch) {
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

/* ------------------------------------------------------ bf16 activations
 * x, y, u, dY, dx bf16 [rows, cols] (uint16_t bits). With compute bf16, x and
 * dY go to the GEMMs as stored. y = x·Wᵀ + s·u·Bᵀ and dx + dY·W + (g·A) ⊙ mask
 * are summed in an f32 tile and rounded once (kAccBytes of scratch: y by
 * column tiles that follow W's row tiles, dx by column tiles with W's blocks
 * [rows, tile columns] converted per tile, each W element once). u is the f32
 * GEMM result rounded to bf16. With compute f32 the activations are widened
 * to f32 one token chunk at a time (x and dY chunks of kAccBytes) for exact
 * fp32 GEMMs; a converted W is then converted once per chunk. */

static const size_t kAccBytes = (size_t)32 << 20;

/* dst [n, cols] (dense) = src [n, cols] (row stride lds) widened. */
static __global__ void widen_kernel(const bf16_t *src, int64_t lds, float *dst, int64_t cols, int64_t count) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    dst[i] = act_ld(src, (i / cols) * lds + i % cols);
}

/* dst [n, cols] (row stride ldd) = src [n, cols] (dense) rounded to bf16. */
static __global__ void round_kernel(const float *src, bf16_t *dst, int64_t ldd, int64_t cols, int64_t count) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    act_st(dst, (i / cols) * ldd + i % cols, src[i]);
}

/* The dx tile before dY·W: acc [n, cols] = dx[rows, i0:i0+cols] (dx row stride
 * in, first row t0) + (lora: acc ⊙ mask/(1-p), the g·A term with its dropout
 * mask, index (t0 + row)·in + i0 + col; p = 0: acc as it is). */
static __global__ void acc_init_kernel(const bf16_t *dx, float *acc, int64_t cols, int64_t count, int64_t t0,
                                       int64_t i0, int64_t in, int lora, uint64_t seed, float p, float keep) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    int64_t at = (t0 + i / cols) * in + i0 + i % cols;
    float v = act_ld(dx, at);
    if (lora) v += p > 0.0f && ct_uniform(seed, (uint64_t)at) < p ? 0.0f : acc[i] * keep;
    acc[i] = v;
}

static int widen(const bf16_t *src, int64_t lds, float *dst, int64_t n, int64_t cols) {
    if (n * cols > 0) CT_LAUNCH(widen_kernel, blocks_for(n * cols), kThreads, 0, src, lds, dst, cols, n * cols);
    return CT_OK;
}

static int round_into(const float *src, bf16_t *dst, int64_t ldd, int64_t n, int64_t cols) {
    if (n * cols > 0) CT_LAUNCH(round_kernel, blocks_for(n * cols), kThreads, 0, src, dst, ldd, cols, n * cols);
    return CT_OK;
}

/* Rows of an f32 [rows, cols] tile within kAccBytes (at least 1, at most
 * total), a multiple of 64 when between 64 and total (tile offsets keep the
 * operands' alignment). */
static int64_t acc_rows(int64_t cols, int64_t total) {
    int64_t n = (int64_t)(kAccBytes / ((size_t)(cols > 0 ? cols : 1) * sizeof(float)));
    if (n >= total) return total > 0 ? total : 1;
    if (n > 64) n -= n % 64;
    return n < 1 ? 1 : n;
}

/* rows rounded down to a multiple of 64 when between 64 and total. */
static int64_t align64(int64_t rows, int64_t total) {
    if (rows > 64 && rows < total) rows -= rows % 64;
    return rows < 1 ? 1 : rows;
}

/* Forward, bf16 activations: u first (f32 scratch, then rounded into u), then
 * y per token chunk (all T with compute bf16) and column tile. */
static int fwd_bf16(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y, ct_tensor *u,
                    ct_arena *scratch) {
    int64_t T = ct_rows(x), in = ct_dim_from_end(x, 1), out = ct_rows(lin->w);
    bf16_t *ys = y ? (bf16_t *)y->data : nullptr; /* [T, out]; NULL: only u is wanted */
    bool lora = lin->a && (ys || u);
    if (T == 0 || (!ys && !lora)) return CT_OK;
    bool bf = lin->compute == CT_BF16;
    cudaDataType_t t = bf ? CUDA_R_16BF : CUDA_R_32F;
    size_t es = type_bytes(t);
    float p = lin->dropout;
    const bf16_t *xs = (const bf16_t *)x->data; /* [T, in] */
    if (bf && !lora) /* y = x·Wᵀ, rounded by the GEMM   (T×in)·(in×out) */
        return frozen_xwt(xs, in, T, lin->w, t, 1.0f, 0.0f, ys, out, CUDA_R_16BF, scratch);
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int rc = CT_OK;
    int64_t r = lora ? ct_rows(lin->a) : 0;
    const void *uc = nullptr, *bc = nullptr; /* u [T, r] and B [out, r] as GEMM operands of type t */
    if (lora) {
        void *ub;
        rc = scratch_alloc(scratch, (size_t)T * (size_t)r * sizeof(float), &ub);
        float *us = (float *)ub; /* [T, r] f32 */
        ct_arena_mark down = ct_arena_get_mark(scratch);
        const void *ac = nullptr; /* A [r, in] */
        if (!rc) rc = operand((const float *)lin->a->data, r * in, bf, scratch, &ac);
        if (!rc && bf && p <= 0.0f) /* u = x·Aᵀ   (T×in)·(in×r) */
            rc = ct_cuda_gemm(false, true, T, r, in, 1.0f, xs, in, ac, in, t, 0.0f, us, r, CUDA_R_32F);
        else if (!rc) /* the dropped (or, compute f32, widened) x chunk by chunk */
            rc = lora_down_dropped(xs, T, in, r, p, seed, ac, t, us, scratch);
        ct_arena_rewind(scratch, down);
        if (!rc && u) rc = round_into(us, (bf16_t *)u->data, r, T, r);
        if (!rc && ys) {
            if (bf && u) uc = u->data; /* = bf16(us) */
            else if (!rc) rc = operand(us, T * r, bf, scratch, &uc);
            if (!rc) rc = operand((const float *)lin->b->data, out * r, bf, scratch, &bc);
        }
    }
    if (rc || !ys) {
        ct_arena_rewind(scratch, mark);
        return rc;
    }
    bool direct = w_direct(lin->w, t);
    int64_t tt = bf ? T : acc_rows(in, T); /* token rows per chunk */
    int64_t nt = acc_rows(tt, out);        /* y columns (W rows) per tile */
    if (!direct && nt > w_tile_rows(lin->w, t)) nt = align64(w_tile_rows(lin->w, t), out);
    void *xf = nullptr, *wt = nullptr, *cb = nullptr;
    if (!bf) rc = scratch_alloc(scratch, (size_t)tt * (size_t)in * sizeof(float), &xf); /* [tt, in] */
    if (!rc && !direct) rc = scratch_alloc(scratch, (size_t)nt * (size_t)in * es, &wt); /* [nt, in] */
    if (!rc) rc = scratch_alloc(scratch, (size_t)tt * (size_t)nt * sizeof(float), &cb); /* [tt, nt] */
    float *c = (float *)cb;
    for (int64_t t0 = 0; !rc && t0 < T; t0 += tt) {
        int64_t m = T - t0 < tt ? T - t0 : tt;
        const void *xop = xs + t0 * in;
        if (!bf) {
            rc = widen(xs + t0 * in, in, (float *)xf, m, in);
            xop = xf;
        }
        for (int64_t n0 = 0; !rc && n0 < out; n0 += nt) {
            int64_t n = out - n0 < nt ? out - n0 : nt;
            const void *wv = (const char *)lin->w->data + (size_t)n0 * (size_t)in * es; /* W[n0:n0+n] */
            if (!direct) {
                rc = ct_cuda_weight_rows(lin->w, n0, n, t, wt);
                wv = wt;
            }
            /* C = x[t0:t0+m]·W[n0:n0+n]ᵀ   (m×in)·(in×n) */
            if (!rc) rc = ct_cuda_gemm(false, true, m, n, in, 1.0f, xop, in, wv, in, t, 0.0f, c, n, CUDA_R_32F);
            /* C += s·u[t0:t0+m]·B[n0:n0+n]ᵀ   (m×r)·(r×n) */
            if (!rc && lora)
                rc = ct_cuda_gemm(false, true, m, n, r, lin->scale, (const char *)uc + (size_t)(t0 * r) * es, r,
                                  (const char *)bc + (size_t)(n0 * r) * es, r, t, 1.0f, c, n, CUDA_R_32F);
            if (!rc) rc = round_into(c, ys + t0 * out + n0, out, m, n);
        }
    }
    ct_arena_rewind(scratch, mark);
    return rc;
}

/* What backward's dx tiles read (bf16 activations). */
struct dx_job {
    const ct_linear *lin;
    int64_t in, out, r;
    cudaDataType_t t;
    bool lora;       /* the g·A term */
    const void *gc;  /* g [T, r] as a GEMM operand of type t */
    const void *ac;  /* A [r, in] as a GEMM operand of type t */
    int64_t ni, nw;  /* dx columns per tile, W rows per converted block */
    float *acc;      /* [tt, ni] f32 */
    void *wt;        /* [nw, ni] of type t, NULL when W is used as stored */
    uint64_t seed;
};

/* dx[t0:t0+m] = bf16(dx + (g·A) ⊙ mask/(1-p) + dY·W) in column tiles; dyop:
 * dY[t0:t0+m] [m, out] of type t. */
static int dx_rows(const dx_job *j, bf16_t *dxs, int64_t t0, int64_t m, const void *dyop) {
    const ct_linear *lin = j->lin;
    int64_t in = j->in, out = j->out, r = j->r;
    size_t es = type_bytes(j->t);
    float p = j->lora ? lin->dropout : 0.0f;
    for (int64_t i0 = 0; i0 < in; i0 += j->ni) {
        int64_t n = in - i0 < j->ni ? in - i0 : j->ni;
        if (j->lora) /* acc = g[t0:t0+m]·A[:, i0:i0+n]   (m×r)·(r×n) */
            CT_TRY(ct_cuda_gemm(false, false, m, n, r, 1.0f, (const char *)j->gc + (size_t)(t0 * r) * es, r,
                                (const char *)j->ac + (size_t)i0 * es, in, j->t, 0.0f, j->acc, n, CUDA_R_32F));
        CT_LAUNCH(acc_init_kernel, blocks_for(m * n), kThreads, 0, (const bf16_t *)dxs, j->acc, n, m * n, t0, i0,
                  in, (int)j->lora, j->seed, p, 1.0f / (1.0f - p));
        if (!j->wt) { /* acc += dY·W[:, i0:i0+n]   (m×out)·(out×n) */
            CT_TRY(ct_cuda_gemm(false, false, m, n, out, 1.0f, dyop, out,
                                (const char *)lin->w->data + (size_t)i0 * es, in, j->t, 1.0f, j->acc, n,
                                CUDA_R_32F));
        } else {
            for (int64_t k0 = 0; k0 < out; k0 += j->nw) {
                int64_t k = out - k0 < j->nw ? out - k0 : j->nw;
                CT_TRY(ct_cuda_weight_block(lin->w, k0, k, i0, n, j->t, j->wt));
                /* acc += dY[:, k0:k0+k]·W[k0:k0+k, i0:i0+n]   (m×k)·(k×n) */
                CT_TRY(ct_cuda_gemm(false, false, m, n, k, 1.0f, (const char *)dyop + (size_t)k0 * es, out, j->wt,
                                    n, j->t, 1.0f, j->acc, n, CUDA_R_32F));
            }
        }
        CT_TRY(round_into(j->acc, dxs + t0 * in + i0, in, m, n));
    }
    return CT_OK;
}

/* The body of bwd_bf16 (scratch released by the caller). */
static int bwd_bf16_run(const ct_tensor *x, const ct_linear *lin, uint64_t seed, const ct_tensor *u,
                        const ct_tensor *dy, bf16_t *dxs, float *das, float *dbs, ct_arena *scratch) {
    int64_t T = ct_rows(x), in = ct_dim_from_end(x, 1), out = ct_rows(lin->w);
    bool bf = lin->compute == CT_BF16, lora = lin->a != nullptr;
    cudaDataType_t t = bf ? CUDA_R_16BF : CUDA_R_32F;
    size_t es = type_bytes(t);
    const bf16_t *xs = (const bf16_t *)x->data, *dys = (const bf16_t *)dy->data; /* [T, in], [T, out] */
    int64_t r = lora ? ct_rows(lin->a) : 0;
    float s = lin->scale, p = lin->dropout;
    bool need_g = lora && (das || dxs);
    /* dY·W alone with W as stored: one GEMM into dx, rounded once by it */
    if (bf && dxs && !lora && w_direct(lin->w, t)) /* dx += dY·W   (T×out)·(out×in) */
        return ct_cuda_gemm(false, false, T, in, out, 1.0f, dys, out, lin->w->data, in, t, 1.0f, dxs, in,
                            CUDA_R_16BF);
    const void *uop = nullptr, *bc = nullptr;
    float *g = nullptr;  /* [T, r] f32 */
    void *gb = nullptr;  /* [T, r] bf16 copy of g (compute bf16) */
    if (dbs) {
        uop = u->data;
        if (!bf) { /* u widened [T, r] */
            void *uf;
            CT_TRY(scratch_alloc(scratch, (size_t)T * (size_t)r * sizeof(float), &uf));
            CT_TRY(widen((const bf16_t *)u->data, r, (float *)uf, T, r));
            uop = uf;
        }
    }
    if (need_g) {
        void *gv;
        CT_TRY(scratch_alloc(scratch, (size_t)T * (size_t)r * sizeof(float), &gv));
        g = (float *)gv;
        if (bf) CT_TRY(scratch_alloc(scratch, (size_t)T * (size_t)r * sizeof(bf16_t), &gb));
        CT_TRY(operand((const float *)lin->b->data, out * r, bf, scratch, &bc));
    }
    const void *gc = bf ? (const void *)gb : (const void *)g;
    int64_t tt = bf ? T : acc_rows(out, T); /* token rows per chunk */
    void *dyf = nullptr;                    /* [tt, out] f32 (compute f32) */
    if (!bf) CT_TRY(scratch_alloc(scratch, (size_t)tt * (size_t)out * sizeof(float), &dyf));
    ct_arena_mark dx_mark = ct_arena_get_mark(scratch); /* dx's tiles, released before dA */
    dx_job j = {};
    if (dxs) {
        j.lin = lin, j.in = in, j.out = out, j.r = r, j.t = t, j.lora = lora, j.gc = gc, j.seed = seed;
        j.ni = acc_rows(tt, in);
        void *acc;
        CT_TRY(scratch_alloc(scratch, (size_t)tt * (size_t)j.ni * sizeof(float), &acc));
        j.acc = (float *)acc;
        if (!w_direct(lin->w, t)) {
            j.nw = align64(ct_cuda_tile_rows(j.ni, out, es), out);
            CT_TRY(scratch_alloc(scratch, (size_t)j.nw * (size_t)j.ni * es, &j.wt));
        }
        if (lora) CT_TRY(operand((const float *)lin->a->data, r * in, bf, scratch, &j.ac));
    }
    for (int64_t t0 = 0; t0 < T; t0 += tt) {
        int64_t m = T - t0 < tt ? T - t0 : tt;
        const void *dyop = dys + t0 * out; /* dY[t0:t0+m] [m, out] */
        if (!bf) {
            CT_TRY(widen(dys + t0 * out, out, (float *)dyf, m, out));
            dyop = dyf;
        }
        if (dbs) /* dB += s·dY[t0:t0+m]ᵀ·u[t0:t0+m]   (out×m)·(m×r) */
            CT_TRY(ct_cuda_gemm(true, false, out, r, m, s, dyop, out, (const char *)uop + (size_t)(t0 * r) * es, r,
                                t, 1.0f, dbs, r, CUDA_R_32F));
        if (need_g) { /* g[t0:t0+m] = s·dY[t0:t0+m]·B   (m×out)·(out×r) */
            CT_TRY(ct_cuda_gemm(false, false, m, r, out, s, dyop, out, bc, r, t, 0.0f, g + t0 * r, r, CUDA_R_32F));
            if (bf && m * r > 0)
                CT_LAUNCH(round_bf16_kernel, blocks_for(m * r), kThreads, 0, g + t0 * r, (uint16_t *)gb + t0 * r,
                          m * r);
        }
        if (dxs) CT_TRY(dx_rows(&j, dxs, t0, m, dyop));
    }
    if (!das) return CT_OK;
    ct_arena_rewind(scratch, dx_mark);
    if (bf && p <= 0.0f) /* dA += gᵀ·x   (r×T)·(T×in) */
        return ct_cuda_gemm(true, false, r, in, T, 1.0f, gc, r, xs, in, t, 1.0f, das, in, CUDA_R_32F);
    /* drop(x) (or, compute f32, x widened) one token chunk at a time */
    float keep = 1.0f / (1.0f - p);
    int64_t tc = drop_chunk_rows(in, T);
    void *buf; /* [tc, in] of type t */
    CT_TRY(scratch_alloc(scratch, (size_t)tc * (size_t)in * es, &buf));
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
        int64_t n = T - t0 < tc ? T - t0 : tc;
        auto *k = &dropout_kernel<bf16_t>;
        CT_LAUNCH(k, blocks_for(n * in), kThreads, 0, xs + t0 * in, buf, (int)bf, n * in, (uint64_t)(t0 * in), seed,
                  p, keep);
        /* dA += g[t0:t0+n]ᵀ·drop(x[t0:t0+n])   (r×n)·(n×in) */
        CT_TRY(ct_cuda_gemm(true, false, r, in, n, 1.0f, (const char *)gc + (size_t)(t0 * r) * es, r, buf, in, t,
                            1.0f, das, in, CUDA_R_32F));
    }
    return CT_OK;
}

/* ---------------------------------------------------------------- entries */

int ct_cuda_lora_linear_fwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y,
                            ct_tensor *u, ct_arena *scratch) {
    const ct_tensor *ts[] = {x, y, u};
    const char *names[] = {"x", "y", "u"};
    CT_TRY(act_check_same("lora_linear", ts, names, 3));
    return x->dtype == CT_BF16 ? fwd_bf16(x, lin, seed, y, u, scratch) : fwd_f32(x, lin, seed, y, u, scratch);
}

int ct_cuda_lora_linear_bwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, const ct_tensor *u,
                            const ct_tensor *dy, ct_tensor *dx, ct_tensor *da, ct_tensor *db,
                            ct_arena *scratch) {
    const ct_tensor *ts[] = {x, u, dy, dx};
    const char *names[] = {"x", "u", "dY", "dx"};
    CT_TRY(act_check_same("lora_linear", ts, names, 4));
    if (x->dtype != CT_BF16) return bwd_f32(x, lin, seed, u, dy, dx, da, db, scratch);
    if (!lin->a) da = db = nullptr;
    if (ct_rows(x) == 0 || (!dx && !da && !db)) return CT_OK;
    if (lin->a && !u)
        return ct_errorf(CT_ERUNTIME, "lora_linear %s backward: the forward saved no u = drop(x)·Aᵀ",
                         lin->w->name ? lin->w->name : "?");
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int rc = bwd_bf16_run(x, lin, seed, u, dy, dx ? (bf16_t *)dx->data : nullptr, da ? (float *)da->data : nullptr,
                          db ? (float *)db->data : nullptr, scratch);
    ct_arena_rewind(scratch, mark);
    return rc;
}
