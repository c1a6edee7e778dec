/* Row tiles of a frozen weight converted for the GEMMs (contract in gemm.h):
 * ct_cuda_weight_rows and the tile bound. The twin of autograd/cpu/common.c's
 * ct_cpu_weight_rows_f32/_bf16 and ct_cpu_rows_within.
 *
 * f32/bf16/f16 elements are converted one thread per element (bf16 rounding
 * to nearest even, f16 -> bf16 through f32 as ct_convert does); same-dtype
 * rows are a device copy. nf4/fp4 (w->quant a host ct_quant_state whose
 * arrays are device memory) are dequantized as autograd/quant.c's
 * ct_quant_dequantize does: element e of the flattened weight is
 * code[c_e] * absmax(e / blocksize), one fp32 multiply, with absmax(b) =
 * absmax[b] or, double-quantized, ct_dyn8_absmax(map8[qabsmax[b]],
 * nested_absmax[b / nested_blocksize], offset) (multiply, then add: no FMA);
 * rounded to bf16 afterwards when asked (ct_quant_dequantize_bf16). The state's
 * code[16] and map8[256] travel by value in the kernel's parameters.
 * ct_cuda_weight_block does the same for a block of rows and columns (dst
 * element i is weight element off + (i / m)·cols + i % m, off the block's
 * first element): the kernels take that mapping, m == cols being the plain
 * run of rows. */
#include "cuda_common.cuh"
#include "gemm.h"

static const size_t kDefaultTileBytes = (size_t)32 << 20;
static size_t g_tile_bytes = kDefaultTileBytes;

size_t ct_cuda_set_weight_tile_bytes(size_t bytes) {
    size_t prev = g_tile_bytes;
    g_tile_bytes = bytes ? bytes : kDefaultTileBytes;
    return prev;
}

int64_t ct_cuda_tile_rows(int64_t cols, int64_t rows, size_t elem_bytes) {
    size_t row_bytes = (size_t)(cols > 0 ? cols : 1) * (elem_bytes ? elem_bytes : 1);
    int64_t n = (int64_t)(g_tile_bytes / row_bytes);
    if (n > rows) n = rows;
    return n < 1 ? 1 : n;
}

/* The weight element of dst[i] for a block m columns wide in rows of cols
 * elements starting at element off (m == cols: consecutive). */
static __device__ __forceinline__ int64_t block_elem(int64_t off, int64_t i, int64_t m, int64_t cols) {
    return m == cols ? off + i : off + (i / m) * cols + i % m;
}

/* dst[i] = the weight element block_elem(i) converted, i < n. */
static __global__ void convert_kernel(const void *src, int sdt, int64_t off, int64_t m, int64_t cols, int64_t n,
                                      void *dst, int to_bf16) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = load_w(src, sdt, block_elem(off, i, m, cols));
    if (to_bf16) ((uint16_t *)dst)[i] = ct_f32_to_bf16(v);
    else ((float *)dst)[i] = v;
}

/* The quant state's small tables, by value (1088 bytes of kernel parameters). */
struct quant_tables {
    float code[16];
    float map8[256];
};

/* dst[i] = element block_elem(i) of the 4-bit weight, i < n. */
static __global__ void dequant_kernel(const uint8_t *codes, const float *absmax, const uint8_t *qabsmax,
                                      const float *nested_absmax, float offset, int nested_bs, int bs,
                                      quant_tables tab, int64_t off, int64_t m, int64_t cols, int64_t n, void *dst,
                                      int to_bf16) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int64_t e = block_elem(off, i, m, cols), b = e / bs;
    float scale = qabsmax ? ct_dyn8_absmax(tab.map8[qabsmax[b]], nested_absmax[b / nested_bs], offset)
                          : absmax[b];
    uint8_t byte = codes[e >> 1];
    float v = tab.code[(e & 1) ? (byte & 15) : (byte >> 4)] * scale;
    if (to_bf16) ((uint16_t *)dst)[i] = ct_f32_to_bf16(v);
    else ((float *)dst)[i] = v;
}

static const char *wname(const ct_tensor *w) { return w->name ? w->name : "?"; }

static int dequant_rows(const ct_tensor *w, int64_t off, int64_t m, int64_t cols, int64_t count, int to_bf16,
                        void *dst) {
    const ct_quant_state *st = (const ct_quant_state *)w->quant;
    CT_TRY(ct_quant_check(st, w->name));
    if (st->n != ct_numel(w))
        return ct_errorf(CT_EINPUT, "weight %s: quant state holds %lld elements, the tensor %lld", wname(w),
                         (long long)st->n, (long long)ct_numel(w));
    quant_tables tab;
    memcpy(tab.code, st->code, sizeof tab.code);
    memcpy(tab.map8, st->map8, sizeof tab.map8);
    CT_LAUNCH(dequant_kernel, blocks_for(count), kThreads, 0, (const uint8_t *)st->codes,
              (const float *)st->absmax, st->nested ? (const uint8_t *)st->qabsmax : nullptr,
              (const float *)st->nested_absmax, st->offset, st->nested_blocksize, st->blocksize, tab, off, m,
              cols, count, dst, to_bf16);
    return CT_OK;
}

int ct_cuda_weight_block(const ct_tensor *w, int64_t r0, int64_t n, int64_t c0, int64_t m,
                         cudaDataType_t dst_type, void *dst) {
    if (dst_type != CUDA_R_32F && dst_type != CUDA_R_16BF)
        return ct_errorf(CT_EINPUT, "weight %s: tiles are f32 or bf16, not cudaDataType %d", wname(w),
                         (int)dst_type);
    int64_t rows = ct_rows(w), cols = ct_dim_from_end(w, 1);
    if (r0 < 0 || n < 0 || r0 > rows - n || c0 < 0 || m < 0 || c0 > cols - m)
        return ct_errorf(CT_EINPUT, "weight %s: block rows [%lld, %lld) x cols [%lld, %lld) outside its %lld x %lld",
                         wname(w), (long long)r0, (long long)(r0 + n), (long long)c0, (long long)(c0 + m),
                         (long long)rows, (long long)cols);
    int64_t off = r0 * cols + c0, count = n * m;
    if (count == 0) return CT_OK;
    int to_bf16 = dst_type == CUDA_R_16BF;
    switch (w->dtype) {
    case CT_F32:
    case CT_BF16:
    case CT_F16:
        if (m == cols && ((w->dtype == CT_F32 && !to_bf16) || (w->dtype == CT_BF16 && to_bf16))) {
            size_t es = to_bf16 ? 2 : 4;
            CT_CUDA_TRY(cudaMemcpyAsync(dst, (const char *)w->data + (size_t)off * es, (size_t)count * es,
                                        cudaMemcpyDeviceToDevice, ct_cuda_stream()));
            return CT_OK;
        }
        CT_LAUNCH(convert_kernel, blocks_for(count), kThreads, 0, (const void *)w->data, (int)w->dtype, off, m,
                  cols, count, dst, to_bf16);
        return CT_OK;
    case CT_NF4: return dequant_rows(w, off, m, cols, count, to_bf16, dst);
    default:
        return ct_errorf(CT_EINPUT, "weight %s: dtype %s not supported by the CUDA backend", wname(w),
                         ct_dtype_name(w->dtype));
    }
}

int ct_cuda_weight_rows(const ct_tensor *w, int64_t r0, int64_t n, cudaDataType_t dst_type, void *dst) {
    return ct_cuda_weight_block(w, r0, n, 0, ct_dim_from_end(w, 1), dst_type, dst);
}
