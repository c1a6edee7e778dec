/* The optimizer's kernels: AdamW's element-wise update, sums of squares for
 * the global grad norm, and the clipping scale (contracts in backend.h; the
 * twin of autograd/cpu/optim.c).
 *
 * Multi-tensor launches (as PyTorch's multi_tensor_apply): up to kMaxTensors
 * tensors go into one kernel-parameter struct (TensorList) with, per tensor,
 * the first block it owns; each block finds its tensor and works on one
 * fixed-size chunk of it. The host lists (ct_adamw_slot, xs/ns) hold device
 * pointers and are packed into the struct, never copied to the device.
 *
 * Determinism: the update and the scale are element-wise, and AdamW's
 * formula is rounded step by step exactly as the CPU's (no FMA contraction),
 * so both give the CPU's bits. A sum of squares cuts its tensor into
 * kPiece-element pieces: each block sums one piece in double (thread-strided,
 * then a fixed tree), a second kernel sums each tensor's pieces in the same
 * way; the order depends on nothing but the sizes. Piece sums live in a
 * device buffer kept across calls and grown when needed (the backend is used
 * from one host thread). */
#include "cuda_common.cuh"

enum {
    kMaxTensors = 32,   /* tensors per launch (the struct stays ~1.6 KB of parameters) */
    kChunk = 4096,      /* elements per block: adamw, scale */
    kPiece = 8192,      /* elements per block: sum of squares */
    kOptThreads = 256,  /* a power of two: the double tree below */
};

/* Up to kMaxTensors tensors of one launch. p..v: AdamW's slot (scale uses p,
 * sum_squares g); first[k]: the first block of tensor k, first[count] = the
 * grid size. */
struct TensorList {
    float *p[kMaxTensors];
    const float *g[kMaxTensors];
    float *m[kMaxTensors];
    float *v[kMaxTensors];
    int64_t n[kMaxTensors];
    int64_t first[kMaxTensors + 1];
    int count;
};

/* The tensor owning block b (empty tensors own no block). */
static __device__ __forceinline__ int list_find(const TensorList &L, int64_t b) {
    int k = 0;
    while (L.first[k + 1] <= b) k++;
    return k;
}

/* ------------------------------------------------------------------ AdamW */

/* One chunk of one tensor per block: per element, in torch's order,
 * p *= decay; m = lerp(m, g, w1); v = b2 v + w2 g²; p += neg_step m / (sqrt(v)/bc2_sqrt + eps). */
static __global__ void adamw_kernel(const TensorList L, const ct_adamw_scalars s) {
    const int k = list_find(L, blockIdx.x);
    const int64_t n = L.n[k], lo = (blockIdx.x - L.first[k]) * (int64_t)kChunk;
    const int64_t hi = lo + kChunk < n ? lo + kChunk : n;
    float *p = L.p[k], *m = L.m[k], *v = L.v[k];
    const float *g = L.g[k];
    const float one_w1 = sub_rn(1.0f, s.w1);
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        float pj = p[j], gj = g[j], mj = m[j];
        if (s.use_decay) pj = mul_rn(pj, s.decay);
        mj = s.w1 < 0.5f ? add_rn(mj, mul_rn(s.w1, sub_rn(gj, mj))) /* torch lerp */
                         : sub_rn(gj, mul_rn(sub_rn(gj, mj), one_w1));
        float vj = add_rn(mul_rn(v[j], s.b2), mul_rn(mul_rn(s.w2, gj), gj));
        float denom = add_rn(div_rn(sqrt_rn(vj), s.bc2_sqrt), s.eps);
        p[j] = add_rn(pj, mul_rn(s.neg_step, div_rn(mj, denom)));
        m[j] = mj;
        v[j] = vj;
    }
}

int ct_cuda_adamw_update(const ct_adamw_scalars *s, const ct_adamw_slot *slots, size_t n) {
    size_t i = 0;
    while (i < n) {
        TensorList L = {};
        int64_t blocks = 0;
        for (; i < n && L.count < kMaxTensors; i++) {
            int k = L.count++;
            L.p[k] = slots[i].p, L.g[k] = slots[i].g, L.m[k] = slots[i].m, L.v[k] = slots[i].v;
            L.n[k] = slots[i].n;
            L.first[k] = blocks;
            blocks += (slots[i].n + kChunk - 1) / kChunk;
        }
        L.first[L.count] = blocks;
        if (blocks > 0) CT_LAUNCH(adamw_kernel, (unsigned)blocks, kOptThreads, 0, L, *s);
    }
    return CT_OK;
}

/* ------------------------------------------------------------------ scale */

static __global__ void scale_kernel(const TensorList L, float c) {
    const int k = list_find(L, blockIdx.x);
    const int64_t n = L.n[k], lo = (blockIdx.x - L.first[k]) * (int64_t)kChunk;
    const int64_t hi = lo + kChunk < n ? lo + kChunk : n;
    float *x = L.p[k];
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) x[j] *= c;
}

int ct_cuda_scale(float c, float *const *xs, const int64_t *ns, size_t n) {
    size_t i = 0;
    while (i < n) {
        TensorList L = {};
        int64_t blocks = 0;
        for (; i < n && L.count < kMaxTensors; i++) {
            int k = L.count++;
            L.p[k] = xs[i], L.n[k] = ns[i], L.first[k] = blocks;
            blocks += (ns[i] + kChunk - 1) / kChunk;
        }
        L.first[L.count] = blocks;
        if (blocks > 0) CT_LAUNCH(scale_kernel, (unsigned)blocks, kOptThreads, 0, L, c);
    }
    return CT_OK;
}

/* ----------------------------------------------------------- sum_squares */

/* part[b] = Σ x² over piece b (one block per piece of every tensor). */
static __global__ void sumsq_pieces_kernel(const TensorList L, double *part) {
    const int k = list_find(L, blockIdx.x);
    const int64_t n = L.n[k], lo = (blockIdx.x - L.first[k]) * (int64_t)kPiece;
    const int64_t hi = lo + kPiece < n ? lo + kPiece : n;
    const float *x = L.g[k];
    __shared__ double sh[kOptThreads];
    double acc = 0.0;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) acc += (double)x[j] * (double)x[j];
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* out[k] = Σ of tensor k's piece sums (one block per tensor). */
static __global__ void sumsq_total_kernel(const TensorList L, const double *part, double *out) {
    const int k = blockIdx.x;
    __shared__ double sh[kOptThreads];
    double acc = 0.0;
    for (int64_t b = L.first[k] + threadIdx.x; b < L.first[k + 1]; b += blockDim.x) acc += part[b];
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) out[k] = acc;
}

/* The device buffer of sums and piece sums, kept across calls. */
static double *g_sumsq_buf = nullptr;
static size_t g_sumsq_cap = 0; /* doubles */

static int sumsq_reserve(size_t count) {
    if (count <= g_sumsq_cap) return CT_OK;
    ct_cuda_mem_free(g_sumsq_buf);
    g_sumsq_buf = nullptr, g_sumsq_cap = 0;
    if (!(g_sumsq_buf = (double *)ct_cuda_mem_alloc(count * sizeof(double))))
        return ct_errorf(CT_ERUNTIME, "grad norm: out of device memory for %zu sums", count);
    g_sumsq_cap = count;
    return CT_OK;
}

int ct_cuda_sum_squares(const float *const *xs, const int64_t *ns, size_t n, double *sums) {
    if (n == 0) return CT_OK;
    /* buffer: n sums, then the most pieces any launch has */
    size_t most = 0;
    for (size_t i0 = 0; i0 < n; i0 += kMaxTensors) {
        size_t pieces = 0;
        for (size_t i = i0; i < n && i < i0 + kMaxTensors; i++)
            pieces += (size_t)((ns[i] + kPiece - 1) / kPiece);
        if (pieces > most) most = pieces;
    }
    int st = sumsq_reserve(n + most);
    if (st) return st;
    double *out = g_sumsq_buf, *part = g_sumsq_buf + n;

    size_t i = 0;
    while (i < n) {
        const size_t i0 = i;
        TensorList L = {};
        int64_t blocks = 0;
        for (; i < n && L.count < kMaxTensors; i++) {
            int k = L.count++;
            L.g[k] = xs[i], L.n[k] = ns[i], L.first[k] = blocks;
            blocks += (ns[i] + kPiece - 1) / kPiece;
        }
        L.first[L.count] = blocks;
        if (blocks > 0) CT_LAUNCH(sumsq_pieces_kernel, (unsigned)blocks, kOptThreads, 0, L, part);
        CT_LAUNCH(sumsq_total_kernel, (unsigned)L.count, kOptThreads, 0, L, (const double *)part,
                  out + i0);
    }
    CT_CUDA_TRY(cudaMemcpy(sums, out, n * sizeof(double), cudaMemcpyDeviceToHost));
    return CT_OK;
}
