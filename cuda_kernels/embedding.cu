/* embedding gather (table f32/bf16/f16) and its backward scatter-add; the twin
 * of autograd/cpu/embedding.c. Buffers: table, dtable [V, D]; ids i32 [T];
 * y, dy [T, D] f32. */
#include "cuda_common.cuh"

static __global__ void embedding_fwd_kernel(const void *table, int dt, const int32_t *ids, float *y,
                                     int64_t D) {
    int64_t t = blockIdx.x;
    int64_t row = (int64_t)ids[t] * D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) y[t * D + i] = load_w(table, dt, row + i);
}

/* dtable[ids[t], d] += dy[t, d]: one thread per column d walking the tokens in
 * order, so a row hit by several tokens sums them in token order like the CPU
 * (deterministic, no atomics); a warp's loads and stores are 32 consecutive
 * floats of one row. */
static __global__ void embedding_bwd_kernel(const int32_t *__restrict__ ids,
                                            const float *__restrict__ dy, float *dtable, int64_t T,
                                            int64_t D) {
    int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    for (int64_t t = 0; t < T; t++) dtable[(int64_t)ids[t] * D + d] += dy[t * D + d];
}

int ct_cuda_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y) {
    int64_t T = ct_numel(ids), D = table->shape[1];
    if (T == 0) return CT_OK;
    CT_LAUNCH(embedding_fwd_kernel, (unsigned)T, 256, 0, table->data, (int)table->dtype,
                                              (const int32_t *)ids->data, (float *)y->data, D);
    return CT_OK;
}

int ct_cuda_embedding_bwd(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable) {
    int64_t T = ct_numel(ids), D = dtable->shape[1];
    if (T == 0 || D == 0) return CT_OK;
    const int threads = 64; /* small blocks: D/64 of them share the columns */
    CT_LAUNCH(embedding_bwd_kernel, (unsigned)((D + threads - 1) / threads), threads, 0,
              (const int32_t *)ids->data, (const float *)dy->data, (float *)dtable->data, T, D);
    return CT_OK;
}
