/* The one wrapper around cuBLASLt (gemm.cu) and the frozen-weight tiles the
 * linear kernels feed it (weight_tile.cu). On a GPU the GEMM runs on tensor
 * cores through cuBLASLt; in the emulated build the same calls reach the
 * host cuBLASLt of emu/cublaslt.cc (OpenBLAS underneath).
 *
 * Row-major throughout (the wrapper maps it onto cuBLASLt's column-major). */
#ifndef CT_CUDA_GEMM_H
#define CT_CUDA_GEMM_H

#include "cuda_includes.h"

/* C [M, N] (row stride ldc) = alpha · op(A) · op(B) + beta · C, where
 *   op(A) [M, K] is A stored row-major [M, K] (lda) or, with trans_a, [K, M];
 *   op(B) [K, N] is B stored row-major [K, N] (ldb) or, with trans_b, [N, K].
 * A and B: CUDA_R_32F or CUDA_R_16BF (both the same type); C: CUDA_R_32F (or
 * CUDA_R_16BF with bf16 inputs). Accumulation is always fp32
 * (CUBLAS_COMPUTE_32F: no TF32 for f32 inputs, so f32 math is exact fp32).
 * beta = 0 never reads C. Workspace and handle are the backend's (created on
 * first use). Errors: CT_ERUNTIME naming the cuBLASLt call. */
int ct_cuda_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void *A, int64_t lda, const void *B, int64_t ldb, cudaDataType_t ab_type,
                 float beta, void *C, int64_t ldc, cudaDataType_t c_type);

/* dst [n, cols] (dense, row stride cols) = rows [r0, r0 + n) of the frozen
 * weight w [rows, cols] converted to dst_type (CUDA_R_32F or CUDA_R_16BF):
 * f32/bf16/f16 converted element-wise (bf16 rounding to nearest even, as
 * ct_f32_to_bf16), nf4/fp4 dequantized from w->quant exactly as bitsandbytes
 * (and ct_quant_dequantize) does, then rounded when dst_type is bf16. The
 * state's arrays (codes, absmax or qabsmax + nested_absmax) are device
 * memory; its code[16] and map8[256] are host values passed to the kernel. */
int ct_cuda_weight_rows(const ct_tensor *w, int64_t r0, int64_t n, cudaDataType_t dst_type,
                        void *dst);

/* dst [n, m] (dense, row stride m) = the block rows [r0, r0 + n) x columns
 * [c0, c0 + m) of the frozen weight w, converted as ct_cuda_weight_rows does
 * (which is this with c0 = 0, m = cols): for dx = dY·W one column tile at a
 * time, each weight element converted once. */
int ct_cuda_weight_block(const ct_tensor *w, int64_t r0, int64_t n, int64_t c0, int64_t m,
                         cudaDataType_t dst_type, void *dst);

/* Rows of a [rows, cols] tile of elem_bytes elements that fit in `bytes` (at
 * least 1, at most rows), with the bound on one weight tile below. */
int64_t ct_cuda_tile_rows(int64_t cols, int64_t rows, size_t elem_bytes);
/* The bound on one converted weight tile in bytes (default 32 MiB; 0 restores
 * it); returns the previous one. For tests (small tiles exercise the tiling). */
size_t ct_cuda_set_weight_tile_bytes(size_t bytes);

#endif
