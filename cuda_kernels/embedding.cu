/* embedding gather (table f32/bf16/f16); the twin of autograd/cpu/embedding.c. */
#include "cuda_common.cuh"

__global__ void embedding_fwd_kernel(const void *table, int dt, const int32_t *ids, float *y,
                                     int64_t D) {
    int64_t t = blockIdx.x;
    int64_t row = (int64_t)ids[t] * D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) y[t * D + i] = load_w(table, dt, row + i);
}

extern "C" int ct_cuda_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y) {
    int64_t T = ct_numel(ids), D = table->shape[1];
    if (T == 0) return CT_OK;
    embedding_fwd_kernel<<<(unsigned)T, 256>>>(table->data, (int)table->dtype,
                                              (const int32_t *)ids->data, (float *)y->data, D);
    CT_CUDA_TRY(cudaGetLastError());
    return CT_OK;
}
