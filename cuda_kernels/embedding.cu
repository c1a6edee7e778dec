/* embedding gather (table f32/bf16/f16) and its backward scatter-add; the twin
 * of autograd/cpu/embedding.c. Buffers: table [V, D] f32/bf16/f16; dtable
 * [V, D] f32; ids i32 [T]; y, dy [T, D] activations (f32 or bf16: kernels
 * templated on the storage A, cuda_common.cuh; a table element is widened to
 * f32 and rounded once when stored). The forward copies 8 elements per thread
 * and step (16-byte loads and stores, load_w8/act_st8) when the table, y and
 * every row of both are 16-byte aligned (nv = D/8, then the D - 8 nv tail one
 * by one), else one at a time (nv = 0). */
#include "cuda_common.cuh"

template <class A>
static __global__ void embedding_fwd_kernel(const void *table, int dt, const int32_t *ids, A *y,
                                            int64_t D, int64_t nv) {
    int64_t t = blockIdx.x;
    int64_t row = (int64_t)ids[t] * D;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
        float e[8];
        load_w8(table, dt, row + 8 * v, e);
        act_st8(y, t * D + 8 * v, e);
    }
    for (int64_t i = 8 * nv + threadIdx.x; i < D; i += blockDim.x)
        act_st(y, t * D + i, load_w(table, dt, row + i));
}

/* dtable[ids[t], d] += dy[t, d]: one thread per column d walking the tokens in
 * order, so a row hit by several tokens sums them in token order like the CPU
 * (deterministic, no atomics); a warp's loads and stores are 32 consecutive
 * elements of one row. */
template <class A>
static __global__ void embedding_bwd_kernel(const int32_t *__restrict__ ids,
                                            const A *__restrict__ dy, float *dtable, int64_t T,
                                            int64_t D) {
    int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    for (int64_t t = 0; t < T; t++) dtable[(int64_t)ids[t] * D + d] += act_ld(dy, t * D + d);
}

template <class A>
static int embedding_fwd_launch(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y,
                                int64_t T, int64_t D) {
    const bool vec = aligned16(table->data) && aligned16(y->data) &&
                     (D * (int64_t)ct_dtype_bytes(table->dtype, 1)) % 16 == 0 &&
                     (D * (int64_t)sizeof(A)) % 16 == 0;
    CT_LAUNCH(embedding_fwd_kernel<A>, (unsigned)T, 256, 0, table->data, (int)table->dtype,
              (const int32_t *)ids->data, (A *)y->data, D, vec ? D / 8 : 0);
    return CT_OK;
}

template <class A>
static int embedding_bwd_launch(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable,
                                int64_t T, int64_t D) {
    const int threads = 64; /* small blocks: D/64 of them share the columns */
    CT_LAUNCH(embedding_bwd_kernel<A>, (unsigned)((D + threads - 1) / threads), threads, 0,
              (const int32_t *)ids->data, (const A *)dy->data, (float *)dtable->data, T, D);
    return CT_OK;
}

int ct_cuda_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y) {
    CT_TRY(act_check(y, "embedding"));
    if (table->dtype != CT_F32 && table->dtype != CT_BF16 && table->dtype != CT_F16)
        return ct_errorf(CT_EINPUT, "embedding: table %s of dtype %s (the CUDA kernel reads f32/bf16/f16)",
                         table->name ? table->name : "?", ct_dtype_name(table->dtype));
    int64_t T = ct_numel(ids), D = table->shape[1];
    if (T == 0) return CT_OK;
    return CT_ACT_DISPATCH(y, embedding_fwd_launch, table, ids, y, T, D);
}

int ct_cuda_embedding_bwd(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable) {
    CT_TRY(act_check(dy, "embedding"));
    if (dtable->dtype != CT_F32)
        return ct_errorf(CT_EINPUT, "embedding: the table's grad must be float32, not %s",
                         ct_dtype_name(dtable->dtype));
    int64_t T = ct_numel(ids), D = dtable->shape[1];
    if (T == 0 || D == 0) return CT_OK;
    return CT_ACT_DISPATCH(dy, embedding_bwd_launch, ids, dy, dtable, T, D);
}
