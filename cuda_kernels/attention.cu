/* Causal, grouped-KV, segment-aware flash attention on InternLM2's packed qkv;
 * the twin of autograd/cpu/attention.c (bf16 math: attention_bf16.c rounds the
 * same operands).
 *
 * Buffers: qkv [T, C], C = Hkv*(G+2)*hd: per token, for each KV head g, G query
 * heads, then k_g, then v_g (query head h reads KV head h / G); out, dout
 * [T, Hq*hd]; lse [Hq, T] f32 = m + log l (natural log) of each query's softmax;
 * dqkv [T, C] accumulated (+=); runs i32 [n_runs+1] sample boundaries (NULL:
 * one sequence). qkv, out, dout, dqkv are activations: all f32 or all bf16
 * (template A; bf16 is widened to f32 as tiles are staged into registers and
 * shared memory, so the inner loops are f32 either way; stores round). Scratch: start, end i32 [T] (each token's sample) and, in the
 * backward, D f32 [Hq, T].
 *
 * Visibility (as the CPU): the forward lets query i see key j iff
 * start(i0) <= j <= i < end(j) (i0: the first query of i's tile); the backward
 * iff start(i) <= j <= i. Equal for well-formed runs.
 *
 * Thread layout (all three kernels): a tile of 64 rows (AT_ROWS: queries, or keys
 * in the dK/dV kernel), TPR threads per row; a row's head_dim (padded to the
 * template HD, zeros past hd) is split between its TPR threads as float4s
 * p, p+TPR, ... (p = thread % TPR), so the TPR threads of a row read one
 * contiguous run of shared memory and every row of a warp reads the same
 * shared row (a broadcast). Dot products: per-thread partials, then an xor
 * butterfly over the TPR lanes (every lane gets the same bits).
 * - forward: block = (query tile, query head). Q and the output accumulator O
 *   in registers; K and V tiles of AT_BK keys in shared memory; online softmax in
 *   fp32 (m, l per row, kept identically by the row's TPR threads).
 * - backward, dQ (and D = rowsum(dO∘O)): the forward's layout; per key
 *   P = exp(S - lse), dS = P∘(dP - D), dQ += dS·K; dqkv_q += scale·dQ.
 * - backward, dK/dV: block = (key tile, KV head); K, V, dK, dV of its row in
 *   registers; loops over the G query heads of the group and over the query
 *   tiles (AT_BQ rows of Q, dO, lse, D in shared memory) that see its keys:
 *   dV += Pᵀ·dO, dK += dSᵀ·Q. Every sum has one owner thread and a fixed
 *   order: no atomics, results repeat run to run.
 * fp32 math folds the scale into Q (as the CPU); bf16 math rounds Q, K, V, dO
 * and the P, dS operands to bf16, sums in fp32 and scales the fp32 sums.
 *
 * With bf16 math and head_dim a multiple of 16 (the GPU's normal case) the
 * forward and the backward run on tensor cores instead (warp mma, mma.cuh):
 * attn_fwd_mma_kernel, attn_bwd_dq_mma_kernel and attn_bwd_dkv_mma_kernel,
 * same visibility, statistics, rounded operands and block/owner structure.
 * The FMA kernels remain for fp32 math and other head_dims. */
#include "cuda_common.cuh"
#include "mma.cuh"

enum { AT_ROWS = 64, AT_BK = 32, AT_BQ = 32 };

template <int HD> struct attn_geom {
    static constexpr int TPR = HD >= 128 ? 8 : 4; /* threads per row */
    static constexpr int DPT = HD / TPR;          /* dims per thread */
    static constexpr int NV = DPT / 4;            /* float4s per thread */
    static constexpr int THREADS = AT_ROWS * TPR;
};

static __device__ __forceinline__ float attn_bf16r(float x) { return ct_bf16_to_f32(ct_f32_to_bf16(x)); }

/* Sum over the TPR lanes of a row (xor butterfly: all get the same bits). */
template <int TPR> static __device__ __forceinline__ float attn_row_sum(float v) {
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* dst[DPT] = this thread's dims of row src (hd valid columns; zeros past hd or
 * when !ok), times mul, then rounded to bf16 when rnd. */
template <class A, int HD>
static __device__ __forceinline__ void attn_load_part(const A *src, int hd, bool ok, int p, float mul,
                                                 bool rnd, float *dst) {
    typedef attn_geom<HD> Gm;
#pragma unroll
    for (int v = 0; v < Gm::NV; v++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            int d = 4 * (p + Gm::TPR * v) + c;
            float x = ok && d < hd ? mul * act_ld(src, d) : 0.0f;
            dst[4 * v + c] = rnd ? attn_bf16r(x) : x;
        }
}

/* This thread's partial of reg · row (row: HD floats in shared memory). */
template <int HD> static __device__ __forceinline__ float attn_dot_part(const float *reg, const float *row, int p) {
    typedef attn_geom<HD> Gm;
    const float4 *r4 = reinterpret_cast<const float4 *>(row);
    float s = 0.0f;
#pragma unroll
    for (int v = 0; v < Gm::NV; v++) {
        float4 k = r4[p + Gm::TPR * v];
        s += reg[4 * v] * k.x;
        s += reg[4 * v + 1] * k.y;
        s += reg[4 * v + 2] * k.z;
        s += reg[4 * v + 3] * k.w;
    }
    return s;
}

/* acc[DPT] += a · (this thread's dims of row). */
template <int HD> static __device__ __forceinline__ void attn_axpy_part(float a, const float *row, int p, float *acc) {
    typedef attn_geom<HD> Gm;
    const float4 *r4 = reinterpret_cast<const float4 *>(row);
#pragma unroll
    for (int v = 0; v < Gm::NV; v++) {
        float4 k = r4[p + Gm::TPR * v];
        acc[4 * v] += a * k.x;
        acc[4 * v + 1] += a * k.y;
        acc[4 * v + 2] += a * k.z;
        acc[4 * v + 3] += a * k.w;
    }
}

/* dst [rows, HD] (shared) = mul · src rows 0..n-1 (row stride ld, hd columns),
 * zero past them; rounded to bf16 when rnd. The whole block takes part. */
template <class A, int HD>
static __device__ void attn_load_tile(float *dst, const A *src, int64_t ld, int n, int rows, int hd, float mul,
                                 bool rnd) {
    for (int e = threadIdx.x; e < rows * HD; e += blockDim.x) {
        int r = e / HD, d = e % HD;
        float x = r < n && d < hd ? mul * act_ld(src, (int64_t)r * ld + d) : 0.0f;
        dst[e] = rnd ? attn_bf16r(x) : x;
    }
}

/* start[i], end[i]: token i's sample [start, end) from the run boundaries
 * (clamped to [0, T]; a later run wins; a token in no run: [0, T)). */
static __global__ void attn_seg_bounds_kernel(const int32_t *runs, int n_runs, int T, int *start, int *end) {
    int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= T) return;
    int s = 0, e = T;
    for (int k = 0; k < n_runs; k++) {
        int lo = runs[k] < 0 ? 0 : runs[k] > T ? T : runs[k];
        int hi = runs[k + 1] < lo ? lo : runs[k + 1] > T ? T : runs[k + 1];
        if (lo <= i && i < hi) s = lo, e = hi;
    }
    start[i] = s;
    end[i] = e;
}

/* The problem, resolved once per call. */
struct attn_dims {
    int T, Hkv, G, Hq, hd;
    int64_t C;
    float scale;
    bool bf; /* bf16 math */
};

static __host__ __device__ __forceinline__ int64_t attn_q_col(int G, int hd, int h) {
    return ((int64_t)(h / G) * (G + 2) + h % G) * hd;
}
static __host__ __device__ __forceinline__ int64_t attn_k_col(int G, int hd, int g) {
    return ((int64_t)g * (G + 2) + G) * hd;
}

/* ---------------- forward ---------------- */

/* Block = (query tile, query head h); out rows [i0, i0+64) of head h, lse[h, i]. */
template <class A, int HD, bool BF>
static __global__ void __launch_bounds__(attn_geom<HD>::THREADS) attn_fwd_kernel(const A *qkv, const int *seg_start, const int *seg_end, attn_dims a,
                                       A *out, float *lse) {
    typedef attn_geom<HD> Gm;
    CT_DYN_SHARED(float, sh);
    float *ks = sh, *vs = ks + AT_BK * HD; /* [AT_BK, HD] K, V of the key tile */
    int *kend = (int *)(vs + AT_BK * HD);  /* [AT_BK] end of each key's sample */
    const int h = blockIdx.y, g = h / a.G;
    const int i0 = (int)(gridDim.x - 1 - blockIdx.x) * AT_ROWS; /* late tiles (most keys) first */
    const int p = threadIdx.x % Gm::TPR, i = i0 + threadIdx.x / Gm::TPR;
    const bool valid = i < a.T;
    const int64_t kc = attn_k_col(a.G, a.hd, g);

    float q[Gm::DPT], o[Gm::DPT];
    /* fp32: scale·Q; bf16: Q rounded (the scale multiplies S) */
    attn_load_part<A, HD>(qkv + (int64_t)(valid ? i : 0) * a.C + attn_q_col(a.G, a.hd, h), a.hd, valid, p,
                  BF ? 1.0f : a.scale, BF, q);
#pragma unroll
    for (int d = 0; d < Gm::DPT; d++) o[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    const int k_stop = a.T - i0 < AT_ROWS ? a.T : i0 + AT_ROWS;
    for (int k0 = seg_start[i0]; k0 < k_stop; k0 += AT_BK) {
        const int nk = k_stop - k0 < AT_BK ? k_stop - k0 : AT_BK;
        __syncthreads(); /* the previous tile is read */
        attn_load_tile<A, HD>(ks, qkv + (int64_t)k0 * a.C + kc, a.C, nk, AT_BK, a.hd, 1.0f, BF);
        attn_load_tile<A, HD>(vs, qkv + (int64_t)k0 * a.C + kc + a.hd, a.C, nk, AT_BK, a.hd, 1.0f, BF);
        for (int j = threadIdx.x; j < AT_BK; j += blockDim.x) kend[j] = j < nk ? seg_end[k0 + j] : 0;
        __syncthreads();

        float s[AT_BK];
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < AT_BK; j++) {
            float t = attn_row_sum<Gm::TPR>(attn_dot_part<HD>(q, ks + j * HD, p));
            if (BF) t *= a.scale;
            bool vis = valid && j < nk && k0 + j <= i && i < kend[j];
            s[j] = vis ? t : -INFINITY;
            mx = fmaxf(mx, s[j]);
        }
        float mn = fmaxf(mx, m);
        float alpha = mn == -INFINITY ? 1.0f : ct_expf(m - mn);
        m = mn;
        l *= alpha;
#pragma unroll
        for (int d = 0; d < Gm::DPT; d++) o[d] *= alpha;
#pragma unroll
        for (int j = 0; j < AT_BK; j++) {
            float pj = s[j] == -INFINITY ? 0.0f : ct_expf(s[j] - m);
            l += pj; /* keys summed in order */
            attn_axpy_part<HD>(BF ? attn_bf16r(pj) : pj, vs + j * HD, p, o);
        }
    }
    if (!valid) return;
    const float inv = 1.0f / l;
    A *y = out + (int64_t)i * a.Hq * a.hd + (int64_t)h * a.hd;
#pragma unroll
    for (int v = 0; v < Gm::NV; v++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            int d = 4 * (p + Gm::TPR * v) + c;
            if (d < a.hd) act_st(y, d, o[4 * v + c] * inv);
        }
    if (p == 0) lse[(int64_t)h * a.T + i] = m + logf(l);
}

/* ---------------- forward, bf16 math on tensor cores ---------------- */

/* An fp32 accumulator tile x[2][4] (two 16x8 halves, mma's C layout) rounded
 * to bf16 as an A fragment (the layouts line up: mma.cuh). */
static __device__ __forceinline__ void attn_a_frag(const float x[2][4], uint32_t a[4]) {
    a[0] = ct_mma_pack_bf16(x[0][0], x[0][1]);
    a[1] = ct_mma_pack_bf16(x[0][2], x[0][3]);
    a[2] = ct_mma_pack_bf16(x[1][0], x[1][1]);
    a[3] = ct_mma_pack_bf16(x[1][2], x[1][3]);
}

/* The bf16-math forward for head_dim a multiple of 16, on the warp mma
 * (mma.cuh; FlashAttention-2's layout). Block = (64 queries, query head h),
 * 4 warps of 16 query rows each; lane (gr = lane / 4, tq = lane % 4) owns
 * rows r0 = gr and r1 = gr + 8 of its warp's 16 (the mma's C layout). Q's
 * fragments (bf16) stay in registers for the whole head_dim (padded to HD with
 * zeros); per tile of AM_BK = 64 keys, K ([key][dim]) and Vᵀ ([dim][key]) are
 * staged in shared memory as bf16 pairs (rounded from the activation dtype),
 * then S = Q·Kᵀ (fp32 sums) × scale, masked as the FMA kernel masks, the
 * online softmax in fp32 (row max over the 4 lanes of a quad), P rounded to
 * bf16 as the A fragments of O += P·V (the S accumulators' layout is P's A
 * layout). l sums the unrounded P per lane, then over the quad at the end;
 * lse = m + log l. The CPU's bf16 path rounds the same operands (Q, K, V, P).
 * Key tiles (and 16-key steps) past a warp's last row are skipped: all masked.
 * Rows of words: padded by AM_PAD bf16 so a warp's fragment loads hit 32
 * different banks. */
enum { AM_WARPS = 4, AM_ROWS = 16 * AM_WARPS, AM_BK = 64, AM_PAD = 8 };

template <class A, int HD>
static __global__ void __launch_bounds__(32 * AM_WARPS)
    attn_fwd_mma_kernel(const A *qkv, const int *seg_start, const int *seg_end, attn_dims a, A *out, float *lse) {
    constexpr int KS = HD / 16, NO = HD / 8, NS = AM_BK / 8, KP = AM_BK / 16;
    constexpr int KW = (HD + AM_PAD) / 2, VW = (AM_BK + AM_PAD) / 2; /* words per row */
    __shared__ __align__(16) uint32_t ks[AM_BK][KW]; /* K tile: ks[j][d/2] = bf16 pair (d, d+1) of key j */
    __shared__ __align__(16) uint32_t vt[HD][VW];    /* Vᵀ tile: vt[d][j/2] = bf16 pair of keys (j, j+1) */
    __shared__ int kend[AM_BK];                      /* end of each key's sample */
    const int h = blockIdx.y, kvh = h / a.G;
    const int i0 = (int)(gridDim.x - 1 - blockIdx.x) * AM_ROWS; /* late tiles (most keys) first */
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32, gr = lane >> 2, tq = lane % 4;
    const int r0 = i0 + 16 * warp + gr, r1 = r0 + 8, w_last = i0 + 16 * warp + 15;
    const int64_t kc = attn_k_col(a.G, a.hd, kvh);

    uint32_t qf[KS][4]; /* Q rows r0, r1 as A fragments (bf16; the scale multiplies S) */
    {
        const int64_t qc = attn_q_col(a.G, a.hd, h);
        const A *q0 = qkv + (int64_t)(r0 < a.T ? r0 : 0) * a.C + qc, *q1 = qkv + (int64_t)(r1 < a.T ? r1 : 0) * a.C + qc;
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const A *q = r & 1 ? q1 : q0;
                const bool ok = (r & 1 ? r1 : r0) < a.T;
                const int d = 16 * kk + 2 * tq + (r >> 1) * 8;
                qf[kk][r] = ct_mma_pack_bf16(ok && d < a.hd ? act_ld(q, d) : 0.0f,
                                             ok && d + 1 < a.hd ? act_ld(q, d + 1) : 0.0f);
            }
    }
    float o[NO][4]; /* O rows r0 (o[n][0..1]) and r1 (o[n][2..3]), dims 8n + 2tq (+1) */
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* rows r0, r1; l: this lane's keys */

    const int k_stop = a.T - i0 < AM_ROWS ? a.T : i0 + AM_ROWS;
    for (int k0 = seg_start[i0]; k0 < k_stop; k0 += AM_BK) {
        const int nk = k_stop - k0 < AM_BK ? k_stop - k0 : AM_BK;
        __syncthreads(); /* the previous tile is read */
        for (int e = (int)threadIdx.x; e < AM_BK * (HD / 2); e += (int)blockDim.x) {
            const int j = e / (HD / 2), d = 2 * (e % (HD / 2));
            const A *src = qkv + (int64_t)(j < nk ? k0 + j : 0) * a.C + kc;
            const bool ok = j < nk && d < a.hd;
            ks[j][d / 2] = ct_mma_pack_bf16(ok ? act_ld(src, d) : 0.0f, ok ? act_ld(src, d + 1) : 0.0f);
        }
        for (int e = (int)threadIdx.x; e < (AM_BK / 2) * HD; e += (int)blockDim.x) {
            const int j = 2 * (e / HD), d = e % HD; /* consecutive threads: consecutive dims */
            const A *src = qkv + (int64_t)(j < nk ? k0 + j : 0) * a.C + kc + a.hd;
            const bool ok0 = j < nk && d < a.hd, ok1 = j + 1 < nk && d < a.hd;
            vt[d][j / 2] = ct_mma_pack_bf16(ok0 ? act_ld(src, d) : 0.0f, ok1 ? act_ld(src + a.C, d) : 0.0f);
        }
        for (int j = (int)threadIdx.x; j < AM_BK; j += (int)blockDim.x) kend[j] = j < nk ? seg_end[k0 + j] : 0;
        __syncthreads();

        /* S = Q·Kᵀ: n-tile n holds keys k0 + 8n + 2tq (+1) of rows r0 (s[n][0..1]), r1 (s[n][2..3]) */
        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            if (k0 + 8 * n > w_last) continue; /* the same in the whole warp */
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                const uint32_t b[2] = {ks[8 * n + gr][8 * kk + tq], ks[8 * n + gr][8 * kk + tq + 4]};
                ct_mma_bf16_16x8x16(s[n], qf[kk], b, s[n]);
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NS; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int j = 8 * n + 2 * tq + (c & 1), i = c < 2 ? r0 : r1;
                const bool vis = i < a.T && j < nk && k0 + j <= i && i < kend[j];
                s[n][c] = vis ? s[n][c] * a.scale : -INFINITY;
                mx[c >> 1] = fmaxf(mx[c >> 1], s[n][c]);
            }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mn = fmaxf(mx[r], m[r]);
            alpha[r] = mn == -INFINITY ? 1.0f : ct_expf(m[r] - mn);
            m[r] = mn;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int n = 0; n < NO; n++) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }
#pragma unroll
        for (int n = 0; n < NS; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const float p = s[n][c] == -INFINITY ? 0.0f : ct_expf(s[n][c] - m[c >> 1]);
                l[c >> 1] += p;
                s[n][c] = p;
            }
        /* O += P·V: P's keys 16kk.. are S's n-tiles 2kk, 2kk+1 */
#pragma unroll
        for (int kk = 0; kk < KP; kk++) {
            if (k0 + 16 * kk > w_last) continue; /* P = 0 there; the same in the whole warp */
            uint32_t pa[4];
            attn_a_frag(&s[2 * kk], pa);
#pragma unroll
            for (int n = 0; n < NO; n++) {
                const uint32_t b[2] = {vt[8 * n + gr][8 * kk + tq], vt[8 * n + gr][8 * kk + tq + 4]};
                ct_mma_bf16_16x8x16(o[n], pa, b, o[n]);
            }
        }
    }
    const int64_t ow = (int64_t)a.Hq * a.hd;
#pragma unroll
    for (int r = 0; r < 2; r++) { /* the row's sum over the quad (every lane the same bits) */
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const int i = r ? r1 : r0;
        if (i >= a.T) continue;
        const float inv = 1.0f / l[r];
        A *y = out + (int64_t)i * ow + (int64_t)h * a.hd;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int d = 8 * n + 2 * tq + c;
                if (d < a.hd) act_st(y, d, o[n][2 * r + c] * inv);
            }
        if (tq == 0) lse[(int64_t)h * a.T + i] = m[r] + logf(l[r]);
    }
}

/* ---------------- backward ---------------- */

/* Block = (query tile, query head h): D[h, i] = rowsum(dO∘O) into dd, then
 * dqkv's q columns of head h += scale · Σ_j dS_ij K_j. */
template <class A, int HD, bool BF>
static __global__ void __launch_bounds__(attn_geom<HD>::THREADS) attn_bwd_dq_kernel(const A *qkv, const int *seg_start, attn_dims a, const A *out,
                                          const float *lse, const A *dout, float *dd, A *dqkv) {
    typedef attn_geom<HD> Gm;
    CT_DYN_SHARED(float, sh);
    float *ks = sh, *vs = ks + AT_BK * HD; /* [AT_BK, HD] K, V of the key tile */
    const int h = blockIdx.y, g = h / a.G;
    const int i0 = (int)(gridDim.x - 1 - blockIdx.x) * AT_ROWS;
    const int p = threadIdx.x % Gm::TPR, i = i0 + threadIdx.x / Gm::TPR;
    const bool valid = i < a.T;
    const int ir = valid ? i : 0;
    const int64_t kc = attn_k_col(a.G, a.hd, g), ow = (int64_t)a.Hq * a.hd;

    float q[Gm::DPT], go[Gm::DPT], dq[Gm::DPT];
    /* D from the fp32 O and dO; then dO rounded for bf16 math */
    attn_load_part<A, HD>(out + (int64_t)ir * ow + (int64_t)h * a.hd, a.hd, valid, p, 1.0f, false, q);
    attn_load_part<A, HD>(dout + (int64_t)ir * ow + (int64_t)h * a.hd, a.hd, valid, p, 1.0f, false, go);
    float di = 0.0f;
#pragma unroll
    for (int d = 0; d < Gm::DPT; d++) di += q[d] * go[d];
    di = attn_row_sum<Gm::TPR>(di);
    if (valid && p == 0) dd[(int64_t)h * a.T + i] = di;
    if (BF)
#pragma unroll
        for (int d = 0; d < Gm::DPT; d++) go[d] = attn_bf16r(go[d]);
    attn_load_part<A, HD>(qkv + (int64_t)ir * a.C + attn_q_col(a.G, a.hd, h), a.hd, valid, p, BF ? 1.0f : a.scale, BF, q);
#pragma unroll
    for (int d = 0; d < Gm::DPT; d++) dq[d] = 0.0f;
    const float li = valid ? lse[(int64_t)h * a.T + i] : 0.0f;
    const int my_start = valid ? seg_start[i] : 0;

    const int k_stop = a.T - i0 < AT_ROWS ? a.T : i0 + AT_ROWS;
    for (int k0 = seg_start[i0]; k0 < k_stop; k0 += AT_BK) {
        const int nk = k_stop - k0 < AT_BK ? k_stop - k0 : AT_BK;
        __syncthreads();
        attn_load_tile<A, HD>(ks, qkv + (int64_t)k0 * a.C + kc, a.C, nk, AT_BK, a.hd, 1.0f, BF);
        attn_load_tile<A, HD>(vs, qkv + (int64_t)k0 * a.C + kc + a.hd, a.C, nk, AT_BK, a.hd, 1.0f, BF);
        __syncthreads();
        for (int j = 0; j < nk; j++) { /* nk is the same in the whole block */
            float s = attn_row_sum<Gm::TPR>(attn_dot_part<HD>(q, ks + j * HD, p));
            float dp = attn_row_sum<Gm::TPR>(attn_dot_part<HD>(go, vs + j * HD, p));
            if (BF) s *= a.scale;
            bool vis = valid && k0 + j >= my_start && k0 + j <= i;
            float pj = vis ? ct_expf(s - li) : 0.0f;
            float ds = pj * (dp - di);
            attn_axpy_part<HD>(BF ? attn_bf16r(ds) : ds, ks + j * HD, p, dq);
        }
    }
    if (!valid) return;
    A *dst = dqkv + (int64_t)i * a.C + attn_q_col(a.G, a.hd, h);
#pragma unroll
    for (int v = 0; v < Gm::NV; v++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            int d = 4 * (p + Gm::TPR * v) + c;
            if (d < a.hd) act_st(dst, d, act_ld(dst, d) + a.scale * dq[4 * v + c]);
        }
}

/* Block = (key tile, KV head g): dqkv's k_g, v_g columns of keys [j0, j0+64)
 * += Σ over the group's heads and the queries that see them (fixed order). */
template <class A, int HD, bool BF>
static __global__ void __launch_bounds__(attn_geom<HD>::THREADS) attn_bwd_dkv_kernel(const A *qkv, const int *seg_start, const int *seg_end,
                                           attn_dims a, const float *lse, const A *dout, const float *dd,
                                           A *dqkv) {
    typedef attn_geom<HD> Gm;
    CT_DYN_SHARED(float, sh);
    float *qs = sh, *gs = qs + AT_BQ * HD;      /* [AT_BQ, HD] Q (scaled for fp32), dO of the query tile */
    float *ls = gs + AT_BQ * HD, *ds_ = ls + AT_BQ; /* [AT_BQ] lse, D */
    int *st = (int *)(ds_ + AT_BQ);              /* [AT_BQ] start of each query's sample */
    const int g = blockIdx.y, j0 = blockIdx.x * AT_ROWS; /* early key tiles (most queries) first */
    const int p = threadIdx.x % Gm::TPR, j = j0 + threadIdx.x / Gm::TPR;
    const bool valid = j < a.T;
    const int jr = valid ? j : 0;
    const int64_t kc = attn_k_col(a.G, a.hd, g), ow = (int64_t)a.Hq * a.hd;

    float k[Gm::DPT], v[Gm::DPT], dk[Gm::DPT], dv[Gm::DPT];
    attn_load_part<A, HD>(qkv + (int64_t)jr * a.C + kc, a.hd, valid, p, 1.0f, BF, k);
    attn_load_part<A, HD>(qkv + (int64_t)jr * a.C + kc + a.hd, a.hd, valid, p, 1.0f, BF, v);
#pragma unroll
    for (int d = 0; d < Gm::DPT; d++) dk[d] = dv[d] = 0.0f;

    const int nk = a.T - j0 < AT_ROWS ? a.T - j0 : AT_ROWS;
    const int q_end = seg_end[j0 + nk - 1]; /* queries that see a key of the tile: [j0, q_end) */
    for (int h = g * a.G; h < (g + 1) * a.G; h++) {
        const int64_t qc = attn_q_col(a.G, a.hd, h);
        for (int q0 = j0; q0 < q_end; q0 += AT_BQ) {
            const int nq = q_end - q0 < AT_BQ ? q_end - q0 : AT_BQ;
            __syncthreads();
            attn_load_tile<A, HD>(qs, qkv + (int64_t)q0 * a.C + qc, a.C, nq, AT_BQ, a.hd, BF ? 1.0f : a.scale, BF);
            attn_load_tile<A, HD>(gs, dout + (int64_t)q0 * ow + (int64_t)h * a.hd, ow, nq, AT_BQ, a.hd, 1.0f, BF);
            for (int r = threadIdx.x; r < AT_BQ; r += blockDim.x) {
                ls[r] = r < nq ? lse[(int64_t)h * a.T + q0 + r] : 0.0f;
                ds_[r] = r < nq ? dd[(int64_t)h * a.T + q0 + r] : 0.0f;
                st[r] = r < nq ? seg_start[q0 + r] : 0;
            }
            __syncthreads();
            for (int r = 0; r < nq; r++) { /* nq is the same in the whole block */
                const int i = q0 + r;
                float s = attn_row_sum<Gm::TPR>(attn_dot_part<HD>(k, qs + r * HD, p));
                float dp = attn_row_sum<Gm::TPR>(attn_dot_part<HD>(v, gs + r * HD, p));
                if (BF) s *= a.scale;
                bool vis = valid && j >= st[r] && j <= i;
                float pj = vis ? ct_expf(s - ls[r]) : 0.0f;
                float ds = pj * (dp - ds_[r]);
                attn_axpy_part<HD>(BF ? attn_bf16r(pj) : pj, gs + r * HD, p, dv);
                attn_axpy_part<HD>(BF ? attn_bf16r(ds) : ds, qs + r * HD, p, dk);
            }
        }
    }
    if (!valid) return;
    /* dK: fp32 folded the scale into Q; bf16 scales the fp32 sum */
    const float dk_mul = BF ? a.scale : 1.0f;
    A *dst = dqkv + (int64_t)j * a.C + kc;
#pragma unroll
    for (int vv = 0; vv < Gm::NV; vv++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            int d = 4 * (p + Gm::TPR * vv) + c;
            if (d < a.hd) {
                act_st(dst, d, act_ld(dst, d) + dk_mul * dk[4 * vv + c]);
                act_st(dst, a.hd + d, act_ld(dst, a.hd + d) + dv[4 * vv + c]);
            }
        }
}

/* ---------------- backward, bf16 math on tensor cores ---------------- */

/* The bf16-math backward for head_dim a multiple of 16 (FlashAttention-2's
 * structure on the warp mma, mma.cuh), two kernels like the FMA backward:
 * - dQ (and D): block = (64 queries, query head h), 4 warps of 16 query rows,
 *   lane (gr, tq) owning rows r0 = gr, r1 = gr + 8 of its warp's (the
 *   forward's layout). D = rowsum(dO∘O) from the unrounded activations into
 *   dd; Q and dO as bf16 A fragments in registers; per tile of AM_BK keys, K
 *   and V staged as rows of bf16 pairs along the head dim; S = Q·Kᵀ and
 *   dP = dO·Vᵀ by mma, P = exp(S·scale − lse), dS = P∘(dP − D) in fp32, then
 *   dQ += dS·K with dS rounded to bf16 as the A fragments (S's accumulator
 *   layout is the A layout) and K's B fragments read along the keys (two
 *   bf16 halves per register); dqkv_q += scale·dQ.
 * - dK/dV: block = (64 keys, KV head), 4 warps of 16 keys (rows c0, c1 as
 *   above); K as A fragments in registers, V's A fragments from shared memory;
 *   for each query head of the group and each tile of BQ queries that see the
 *   keys: Q and dO staged as rows of pairs, Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ by mma,
 *   Pᵀ and dSᵀ in fp32 (lse, D per query column from shared memory), then
 *   dV += Pᵀ·dO and dK += dSᵀ·Q with P, dS rounded to bf16 (B fragments read
 *   along the queries); dqkv_k += scale·dK, dqkv_v += dV.
 * Every sum has one owner and a fixed order (no atomics). The CPU's bf16 path
 * rounds the same operands: Q, K, V, dO, P (for dV), dS (for dK, dQ).
 * Visibility as the FMA backward: start(i) <= j <= i. */

/* The bf16 at column d of a row of bf16 pairs (the low half is the even column). */
static __device__ __forceinline__ uint32_t attn_half(const uint32_t *row, int d) {
    return (row[d >> 1] >> (16 * (d & 1))) & 0xffffu;
}

/* A B fragment read across rows of a [rows][W] tile of bf16 pairs (a
 * transposed operand): b[0] = column d of rows j, j+1; b[1] = of rows j+8, j+9. */
template <int W>
static __device__ __forceinline__ void attn_b_frag_t(const uint32_t (*rows)[W], int j, int d, uint32_t b[2]) {
    b[0] = attn_half(rows[j], d) | attn_half(rows[j + 1], d) << 16;
    b[1] = attn_half(rows[j + 8], d) | attn_half(rows[j + 9], d) << 16;
}

/* rows [0, rows) of dst (words per row W) = bf16 pairs of src rows 0..n-1
 * (row stride ld, hd columns), zeros past them. The whole block takes part. */
template <class A, int HD, int W>
static __device__ void attn_stage_pairs(uint32_t (*dst)[W], const A *src, int64_t ld, int n, int rows, int hd) {
    for (int e = (int)threadIdx.x; e < rows * (HD / 2); e += (int)blockDim.x) {
        const int j = e / (HD / 2), d = 2 * (e % (HD / 2));
        const A *s = src + (int64_t)(j < n ? j : 0) * ld;
        const bool ok = j < n && d < hd;
        dst[j][d / 2] = ct_mma_pack_bf16(ok ? act_ld(s, d) : 0.0f, ok ? act_ld(s, d + 1) : 0.0f);
    }
}

/* A fragments (bf16) of rows r0, r1 of src (row stride ld; zeros for rows >=
 * T and dims >= hd). */
template <class A, int HD>
static __device__ __forceinline__ void attn_a_frags(const A *src, int64_t ld, int r0, int r1, int T, int hd, int tq,
                                                    uint32_t (*f)[4]) {
    const A *s0 = src + (int64_t)(r0 < T ? r0 : 0) * ld, *s1 = src + (int64_t)(r1 < T ? r1 : 0) * ld;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const A *s = r & 1 ? s1 : s0;
            const bool ok = (r & 1 ? r1 : r0) < T;
            const int d = 16 * kk + 2 * tq + (r >> 1) * 8;
            f[kk][r] = ct_mma_pack_bf16(ok && d < hd ? act_ld(s, d) : 0.0f, ok && d + 1 < hd ? act_ld(s, d + 1) : 0.0f);
        }
}

template <class A, int HD>
static __global__ void __launch_bounds__(32 * AM_WARPS)
    attn_bwd_dq_mma_kernel(const A *qkv, const int *seg_start, attn_dims a, const A *out, const float *lse,
                           const A *dout, float *dd, A *dqkv) {
    constexpr int KS = HD / 16, NO = HD / 8, KP = AM_BK / 16, KW = (HD + AM_PAD) / 2;
    __shared__ __align__(16) uint32_t ks[AM_BK][KW]; /* K tile: ks[j][d/2] = bf16 pair (d, d+1) of key j */
    __shared__ __align__(16) uint32_t vs[AM_BK][KW]; /* V tile, the same layout */
    const int h = blockIdx.y, kvh = h / a.G;
    const int i0 = (int)(gridDim.x - 1 - blockIdx.x) * AM_ROWS; /* late tiles (most keys) first */
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32, gr = lane >> 2, tq = lane % 4;
    const int r0 = i0 + 16 * warp + gr, r1 = r0 + 8, w_last = i0 + 16 * warp + 15;
    const int64_t kc = attn_k_col(a.G, a.hd, kvh), ow = (int64_t)a.Hq * a.hd, oc = (int64_t)h * a.hd;

    float li[2], di[2];
    int st[2];
#pragma unroll
    for (int r = 0; r < 2; r++) { /* D = rowsum(dO∘O): dims tq, tq+4, ... per lane, then over the quad */
        const int i = r ? r1 : r0;
        const bool ok = i < a.T;
        const A *o = out + (int64_t)(ok ? i : 0) * ow + oc, *go = dout + (int64_t)(ok ? i : 0) * ow + oc;
        float s = 0.0f;
        for (int d = tq; d < a.hd; d += 4) s += ok ? act_ld(o, d) * act_ld(go, d) : 0.0f;
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        di[r] = s;
        if (ok && tq == 0) dd[(int64_t)h * a.T + i] = s;
        li[r] = ok ? lse[(int64_t)h * a.T + i] : 0.0f;
        st[r] = ok ? seg_start[i] : 0;
    }
    uint32_t qf[KS][4], gf[KS][4]; /* Q, dO rows r0, r1 as A fragments (bf16) */
    attn_a_frags<A, HD>(qkv + attn_q_col(a.G, a.hd, h), a.C, r0, r1, a.T, a.hd, tq, qf);
    attn_a_frags<A, HD>(dout + oc, ow, r0, r1, a.T, a.hd, tq, gf);
    float dq[NO][4]; /* dQ/scale rows r0 (dq[n][0..1]), r1 (dq[n][2..3]), dims 8n + 2tq (+1) */
#pragma unroll
    for (int n = 0; n < NO; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    const int k_stop = a.T - i0 < AM_ROWS ? a.T : i0 + AM_ROWS;
    for (int k0 = seg_start[i0]; k0 < k_stop; k0 += AM_BK) {
        const int nk = k_stop - k0 < AM_BK ? k_stop - k0 : AM_BK;
        __syncthreads(); /* the previous tile is read */
        attn_stage_pairs<A, HD, KW>(ks, qkv + (int64_t)k0 * a.C + kc, a.C, nk, AM_BK, a.hd);
        attn_stage_pairs<A, HD, KW>(vs, qkv + (int64_t)k0 * a.C + kc + a.hd, a.C, nk, AM_BK, a.hd);
        __syncthreads();

        /* Per 16 keys 16kk..: S, dP (n-tiles 2kk + u, u = 0, 1: keys k0 + 16kk + 8u + 2tq (+1) of rows
         * r0 ([u][0..1]), r1 ([u][2..3])), dS into s, then dQ += dS·K (only 16 keys' S live at once) */
#pragma unroll
        for (int kk = 0; kk < KP; kk++) {
            if (k0 + 16 * kk > w_last) continue; /* all masked; the same in the whole warp */
            float s[2][4], dp[2][4];
#pragma unroll
            for (int u = 0; u < 2; u++) {
                const int n = 2 * kk + u;
                s[u][0] = s[u][1] = s[u][2] = s[u][3] = 0.0f;
                dp[u][0] = dp[u][1] = dp[u][2] = dp[u][3] = 0.0f;
                if (k0 + 8 * n > w_last) continue;
#pragma unroll
                for (int kd = 0; kd < KS; kd++) {
                    const uint32_t bk[2] = {ks[8 * n + gr][8 * kd + tq], ks[8 * n + gr][8 * kd + tq + 4]};
                    ct_mma_bf16_16x8x16(s[u], qf[kd], bk, s[u]);
                    const uint32_t bv[2] = {vs[8 * n + gr][8 * kd + tq], vs[8 * n + gr][8 * kd + tq + 4]};
                    ct_mma_bf16_16x8x16(dp[u], gf[kd], bv, dp[u]);
                }
            }
            /* dS = P∘(dP − D), P = exp(S·scale − lse); 0 where not visible */
#pragma unroll
            for (int u = 0; u < 2; u++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int j = k0 + 16 * kk + 8 * u + 2 * tq + (c & 1), r = c >> 1, i = r ? r1 : r0;
                    const bool vis = i < a.T && j < k0 + nk && j >= st[r] && j <= i;
                    const float p = vis ? ct_expf(s[u][c] * a.scale - li[r]) : 0.0f;
                    s[u][c] = vis ? p * (dp[u][c] - di[r]) : 0.0f;
                }
            /* dQ += dS·K: dS (bf16) as the A fragment (S's accumulator layout); K's
             * B fragment b[0] = K[16kk + 2tq (+1)][8n + gr], b[1] the keys 8 further */
            uint32_t pa[4];
            attn_a_frag(s, pa);
            const int j = 16 * kk + 2 * tq;
#pragma unroll
            for (int n = 0; n < NO; n++) {
                uint32_t b[2];
                attn_b_frag_t(ks, j, 8 * n + gr, b);
                ct_mma_bf16_16x8x16(dq[n], pa, b, dq[n]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = r ? r1 : r0;
        if (i >= a.T) continue;
        A *dst = dqkv + (int64_t)i * a.C + attn_q_col(a.G, a.hd, h);
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int d = 8 * n + 2 * tq + c;
                if (d < a.hd) act_st(dst, d, act_ld(dst, d) + a.scale * dq[n][2 * r + c]);
            }
    }
}

/* Queries per staged tile of the dK/dV kernel (Q, dO and V fit 48 KB). */
template <int HD> struct attn_mma_bq {
    static constexpr int BQ = HD >= 128 ? 32 : 64;
};

template <class A, int HD>
static __global__ void __launch_bounds__(32 * AM_WARPS)
    attn_bwd_dkv_mma_kernel(const A *qkv, const int *seg_start, const int *seg_end, attn_dims a, const float *lse,
                            const A *dout, const float *dd, A *dqkv) {
    constexpr int BQ = attn_mma_bq<HD>::BQ, KS = HD / 16, NO = HD / 8, KP = BQ / 16;
    constexpr int KW = (HD + AM_PAD) / 2;
    __shared__ __align__(16) uint32_t vs[AM_ROWS][KW]; /* V of the block's keys: vs[j][d/2] = bf16 pair */
    __shared__ __align__(16) uint32_t qs[BQ][KW];      /* Q of the query tile, the same layout */
    __shared__ __align__(16) uint32_t gs[BQ][KW];      /* dO of the query tile */
    __shared__ float ls[BQ], dsh[BQ];                  /* lse, D of the query tile */
    __shared__ int sts[BQ];                            /* start of each query's sample */
    const int g = blockIdx.y, j0 = blockIdx.x * AM_ROWS; /* early key tiles (most queries) first */
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32, gr = lane >> 2, tq = lane % 4;
    const int kw = j0 + 16 * warp, c0 = kw + gr, c1 = c0 + 8, wr = 16 * warp + gr; /* wr: c0's row in vs */
    const int64_t kc = attn_k_col(a.G, a.hd, g), ow = (int64_t)a.Hq * a.hd;
    const int nk = a.T - j0 < AM_ROWS ? a.T - j0 : AM_ROWS;

    uint32_t kf[KS][4]; /* K rows c0, c1 as A fragments (bf16) */
    attn_a_frags<A, HD>(qkv + kc, a.C, c0, c1, a.T, a.hd, tq, kf);
    attn_stage_pairs<A, HD, KW>(vs, qkv + (int64_t)j0 * a.C + kc + a.hd, a.C, nk, AM_ROWS, a.hd);
    float dk[NO][4], dv[NO][4]; /* rows c0 ([n][0..1]), c1 ([n][2..3]), dims 8n + 2tq (+1) */
#pragma unroll
    for (int n = 0; n < NO; n++)
#pragma unroll
        for (int c = 0; c < 4; c++) dk[n][c] = dv[n][c] = 0.0f;

    const int q_end = seg_end[j0 + nk - 1]; /* queries that see a key of the tile: [j0, q_end) */
    for (int h = g * a.G; h < (g + 1) * a.G; h++) {
        const int64_t qc = attn_q_col(a.G, a.hd, h);
        for (int q0 = j0; q0 < q_end; q0 += BQ) {
            const int nq = q_end - q0 < BQ ? q_end - q0 : BQ;
            __syncthreads(); /* the previous tile is read (and vs is staged) */
            attn_stage_pairs<A, HD, KW>(qs, qkv + (int64_t)q0 * a.C + qc, a.C, nq, BQ, a.hd);
            attn_stage_pairs<A, HD, KW>(gs, dout + (int64_t)q0 * ow + (int64_t)h * a.hd, ow, nq, BQ, a.hd);
            for (int r = (int)threadIdx.x; r < BQ; r += (int)blockDim.x) {
                ls[r] = r < nq ? lse[(int64_t)h * a.T + q0 + r] : 0.0f;
                dsh[r] = r < nq ? dd[(int64_t)h * a.T + q0 + r] : 0.0f;
                sts[r] = r < nq ? seg_start[q0 + r] : 0;
            }
            __syncthreads();

            /* Per 16 queries 16kk..: Sᵀ, dPᵀ (n-tiles 2kk + u: queries q0 + 16kk + 8u + 2tq (+1) of keys
             * c0 ([u][0..1]), c1 ([u][2..3])), Pᵀ into s, dSᵀ into dp, then dV += Pᵀ·dO, dK += dSᵀ·Q */
#pragma unroll
            for (int kk = 0; kk < KP; kk++) {
                if (q0 + 16 * kk + 15 < kw) continue; /* all masked (queries before the keys); warp-uniform */
                float s[2][4], dp[2][4];
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    const int n = 2 * kk + u;
                    s[u][0] = s[u][1] = s[u][2] = s[u][3] = 0.0f;
                    dp[u][0] = dp[u][1] = dp[u][2] = dp[u][3] = 0.0f;
                    if (q0 + 8 * n + 7 < kw) continue;
#pragma unroll
                    for (int kd = 0; kd < KS; kd++) {
                        const uint32_t bq[2] = {qs[8 * n + gr][8 * kd + tq], qs[8 * n + gr][8 * kd + tq + 4]};
                        ct_mma_bf16_16x8x16(s[u], kf[kd], bq, s[u]);
                        const uint32_t va[4] = {vs[wr][8 * kd + tq], vs[wr + 8][8 * kd + tq],
                                                vs[wr][8 * kd + tq + 4], vs[wr + 8][8 * kd + tq + 4]};
                        const uint32_t bg[2] = {gs[8 * n + gr][8 * kd + tq], gs[8 * n + gr][8 * kd + tq + 4]};
                        ct_mma_bf16_16x8x16(dp[u], va, bg, dp[u]);
                    }
                }
#pragma unroll
                for (int u = 0; u < 2; u++)
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        const int qi = 16 * kk + 8 * u + 2 * tq + (c & 1), i = q0 + qi, j = c < 2 ? c0 : c1;
                        const bool vis = j < a.T && qi < nq && j >= sts[qi] && j <= i;
                        const float p = vis ? ct_expf(s[u][c] * a.scale - ls[qi]) : 0.0f;
                        s[u][c] = p;
                        dp[u][c] = vis ? p * (dp[u][c] - dsh[qi]) : 0.0f;
                    }
                /* P, dS (bf16) as A fragments; B fragments b[0] = X[16kk + 2tq (+1)][8n + gr],
                 * b[1] 8 queries further (X = dO for dV, Q for dK) */
                uint32_t pa[4], da[4];
                attn_a_frag(s, pa);
                attn_a_frag(dp, da);
                const int q = 16 * kk + 2 * tq;
#pragma unroll
                for (int n = 0; n < NO; n++) {
                    uint32_t bg[2], bq[2];
                    attn_b_frag_t(gs, q, 8 * n + gr, bg);
                    ct_mma_bf16_16x8x16(dv[n], pa, bg, dv[n]);
                    attn_b_frag_t(qs, q, 8 * n + gr, bq);
                    ct_mma_bf16_16x8x16(dk[n], da, bq, dk[n]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = r ? c1 : c0;
        if (j >= a.T) continue;
        A *dst = dqkv + (int64_t)j * a.C + kc;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int d = 8 * n + 2 * tq + c;
                if (d < a.hd) {
                    act_st(dst, d, act_ld(dst, d) + a.scale * dk[n][2 * r + c]);
                    act_st(dst, a.hd + d, act_ld(dst, a.hd + d) + dv[n][2 * r + c]);
                }
            }
    }
}

/* ---------------- host side ---------------- */

static int attn_dims_init(attn_dims *a, const ct_tensor *qkv, const ct_attn_params *p) {
    int64_t T = ct_rows(qkv), C = ct_dim_from_end(qkv, 1);
    if (p->n_kv_heads < 1 || p->group < 1 || p->head_dim < 1 ||
        C != (int64_t)p->n_kv_heads * (p->group + 2) * p->head_dim)
        return ct_errorf(CT_EINPUT, "attention: qkv width %lld does not match %d kv heads × (%d+2) × head_dim %d",
                         (long long)C, p->n_kv_heads, p->group, p->head_dim);
    if (p->head_dim > 128)
        return ct_errorf(CT_EINPUT, "attention (cuda): head_dim %d > 128 is not supported", p->head_dim);
    if (T > INT32_MAX / 2)
        return ct_errorf(CT_EINPUT, "attention (cuda): %lld tokens is too many", (long long)T);
    CT_TRY(ct_compute_dtype_check(p->compute, "attention"));
    a->T = (int)T;
    a->C = C;
    a->Hkv = p->n_kv_heads;
    a->G = p->group;
    a->Hq = p->n_kv_heads * p->group;
    a->hd = p->head_dim;
    a->scale = p->scale;
    a->bf = p->compute == CT_BF16;
    return CT_OK;
}

/* start, end [T] (scratch) from runs. */
static int attn_seg_bounds(const attn_dims *a, const ct_tensor *runs, int *start, int *end) {
    int n_runs = runs ? (int)(ct_numel(runs) - 1) : 0;
    CT_LAUNCH(attn_seg_bounds_kernel, blocks_for(a->T), kThreads, 0, runs ? (const int32_t *)runs->data : nullptr,
              n_runs, a->T, start, end);
    return CT_OK;
}

template <class A, int HD>
static int attn_fwd_launch(const attn_dims &a, const A *qkv, const int *st, const int *en, A *out, float *lse) {
    const dim3 grid((unsigned)((a.T + AT_ROWS - 1) / AT_ROWS), (unsigned)a.Hq);
    const size_t smem = 2 * AT_BK * HD * sizeof(float) + AT_BK * sizeof(int);
    auto *k = a.bf ? &attn_fwd_kernel<A, HD, true> : &attn_fwd_kernel<A, HD, false>;
    CT_LAUNCH(k, grid, attn_geom<HD>::THREADS, smem, qkv, st, en, a, out, lse);
    return CT_OK;
}

template <class A, int HD>
static int attn_bwd_launch(const attn_dims &a, const A *qkv, const int *st, const int *en, const A *out,
                      const float *lse, const A *dout, float *dd, A *dqkv) {
    const unsigned tiles = (unsigned)((a.T + AT_ROWS - 1) / AT_ROWS);
    const size_t smem_q = 2 * AT_BK * HD * sizeof(float);
    auto *kq = a.bf ? &attn_bwd_dq_kernel<A, HD, true> : &attn_bwd_dq_kernel<A, HD, false>;
    CT_LAUNCH(kq, dim3(tiles, (unsigned)a.Hq), attn_geom<HD>::THREADS, smem_q, qkv, st, a, out, lse, dout, dd, dqkv);
    const size_t smem_kv = 2 * AT_BQ * HD * sizeof(float) + 2 * AT_BQ * sizeof(float) + AT_BQ * sizeof(int);
    auto *kkv = a.bf ? &attn_bwd_dkv_kernel<A, HD, true> : &attn_bwd_dkv_kernel<A, HD, false>;
    CT_LAUNCH(kkv, dim3(tiles, (unsigned)a.Hkv), attn_geom<HD>::THREADS, smem_kv, qkv, st, en, a, lse, dout, dd, dqkv);
    return CT_OK;
}

template <class A, int HD>
static int attn_fwd_mma_launch(const attn_dims &a, const A *qkv, const int *st, const int *en, A *out, float *lse) {
    const dim3 grid((unsigned)((a.T + AM_ROWS - 1) / AM_ROWS), (unsigned)a.Hq);
    auto *k = &attn_fwd_mma_kernel<A, HD>;
    CT_LAUNCH(k, grid, 32 * AM_WARPS, 0, qkv, st, en, a, out, lse);
    return CT_OK;
}

template <class A, int HD>
static int attn_bwd_mma_launch(const attn_dims &a, const A *qkv, const int *st, const int *en, const A *out,
                               const float *lse, const A *dout, float *dd, A *dqkv) {
    const unsigned tiles = (unsigned)((a.T + AM_ROWS - 1) / AM_ROWS);
    auto *kq = &attn_bwd_dq_mma_kernel<A, HD>; /* first: D into dd */
    CT_LAUNCH(kq, dim3(tiles, (unsigned)a.Hq), 32 * AM_WARPS, 0, qkv, st, a, out, lse, dout, dd, dqkv);
    auto *kkv = &attn_bwd_dkv_mma_kernel<A, HD>;
    CT_LAUNCH(kkv, dim3(tiles, (unsigned)a.Hkv), 32 * AM_WARPS, 0, qkv, st, en, a, lse, dout, dd, dqkv);
    return CT_OK;
}

template <class A>
static int attn_fwd_run(const attn_dims &a, const ct_tensor *qkv, const int *st, const int *en, ct_tensor *out,
                        ct_tensor *lse) {
    const A *x = (const A *)qkv->data;
    A *o = (A *)out->data;
    float *l = (float *)lse->data;
    if (a.bf && a.hd % 16 == 0) { /* bf16 math on tensor cores (head_dim padded with zeros) */
        if (a.hd <= 16) return attn_fwd_mma_launch<A, 16>(a, x, st, en, o, l);
        if (a.hd <= 32) return attn_fwd_mma_launch<A, 32>(a, x, st, en, o, l);
        if (a.hd <= 64) return attn_fwd_mma_launch<A, 64>(a, x, st, en, o, l);
        return attn_fwd_mma_launch<A, 128>(a, x, st, en, o, l);
    }
    if (a.hd <= 16) return attn_fwd_launch<A, 16>(a, x, st, en, o, l);
    if (a.hd <= 32) return attn_fwd_launch<A, 32>(a, x, st, en, o, l);
    if (a.hd <= 64) return attn_fwd_launch<A, 64>(a, x, st, en, o, l);
    return attn_fwd_launch<A, 128>(a, x, st, en, o, l);
}

template <class A>
static int attn_bwd_run(const attn_dims &a, const ct_tensor *qkv, const int *st, const int *en,
                        const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout, float *dd,
                        ct_tensor *dqkv) {
    const A *x = (const A *)qkv->data, *o = (const A *)out->data, *go = (const A *)dout->data;
    const float *l = (const float *)lse->data;
    A *dx = (A *)dqkv->data;
    if (a.bf && a.hd % 16 == 0) { /* bf16 math on tensor cores (head_dim padded with zeros) */
        if (a.hd <= 16) return attn_bwd_mma_launch<A, 16>(a, x, st, en, o, l, go, dd, dx);
        if (a.hd <= 32) return attn_bwd_mma_launch<A, 32>(a, x, st, en, o, l, go, dd, dx);
        if (a.hd <= 64) return attn_bwd_mma_launch<A, 64>(a, x, st, en, o, l, go, dd, dx);
        return attn_bwd_mma_launch<A, 128>(a, x, st, en, o, l, go, dd, dx);
    }
    if (a.hd <= 16) return attn_bwd_launch<A, 16>(a, x, st, en, o, l, go, dd, dx);
    if (a.hd <= 32) return attn_bwd_launch<A, 32>(a, x, st, en, o, l, go, dd, dx);
    if (a.hd <= 64) return attn_bwd_launch<A, 64>(a, x, st, en, o, l, go, dd, dx);
    return attn_bwd_launch<A, 128>(a, x, st, en, o, l, go, dd, dx);
}

int ct_cuda_attention_fwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p, ct_tensor *out,
                          ct_tensor *lse, ct_arena *scratch) {
    attn_dims a = {};
    CT_TRY(attn_dims_init(&a, qkv, p));
    const ct_tensor *acts[] = {qkv, out};
    const char *names[] = {"qkv", "out"};
    CT_TRY(act_check_same("attention forward", acts, names, 2));
    if (a.T == 0) return CT_OK;
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int *st = (int *)ct_arena_alloc(scratch, 2 * (size_t)a.T * sizeof(int)), *en = st ? st + a.T : nullptr;
    if (!st) {
        ct_arena_rewind(scratch, mark);
        return ct_error_wrap(CT_ERUNTIME, "attention forward: scratch for T=%d", a.T);
    }
    int rc = attn_seg_bounds(&a, runs, st, en);
    if (rc == CT_OK) rc = CT_ACT_DISPATCH(qkv, attn_fwd_run, a, qkv, st, en, out, lse);
    ct_arena_rewind(scratch, mark);
    return rc;
}

int ct_cuda_attention_bwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                          const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout, ct_tensor *dqkv,
                          ct_arena *scratch) {
    attn_dims a = {};
    CT_TRY(attn_dims_init(&a, qkv, p));
    const ct_tensor *acts[] = {qkv, out, dout, dqkv};
    const char *names[] = {"qkv", "out", "dout", "dqkv"};
    CT_TRY(act_check_same("attention backward", acts, names, 4));
    if (a.T == 0 || !dqkv) return CT_OK;
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    int *st = (int *)ct_arena_alloc(scratch, 2 * (size_t)a.T * sizeof(int)), *en = st ? st + a.T : nullptr;
    float *dd = (float *)ct_arena_alloc(scratch, (size_t)a.Hq * (size_t)a.T * sizeof(float)); /* [Hq, T] */
    if (!st || !dd) {
        ct_arena_rewind(scratch, mark);
        return ct_error_wrap(CT_ERUNTIME, "attention backward: scratch for T=%d", a.T);
    }
    int rc = attn_seg_bounds(&a, runs, st, en);
    if (rc == CT_OK) rc = CT_ACT_DISPATCH(qkv, attn_bwd_run, a, qkv, st, en, out, lse, dout, dd, dqkv);
    ct_arena_rewind(scratch, mark);
    return rc;
}
