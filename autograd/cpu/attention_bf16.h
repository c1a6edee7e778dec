/* The AVX512-BF16 pieces of cpu/attention.c's bf16 math (ct_attn_params.compute
 * == CT_BF16): packing f32 operands into bf16 pairs, and the block product.
 * Internal to the CPU backend.
 *
 * A pair is one u32 holding bf16(x[k]) in its low half and bf16(x[k+1]) in its
 * high half, k even (rounded to nearest even): the operand of VDPBF16PS, which
 * adds to each fp32 lane the products of the lane's pairs, the product of k+1
 * first, then that of k (Intel SDM; on Zen 4, tests/test_attention.c sees the
 * fallback's bits). Products of two bf16 are exact in fp32, so an fp32 loop
 * that adds them in that order gives the same sums: attention.c's
 * fallback does, and agrees bit for bit except where VDPBF16PS treats values
 * below 2^-126 as zero (its inputs, and the packing's VCVTNEPS2BF16 inputs) or
 * flushes such sums to zero.
 *
 * Every function here runs AVX512-BF16 instructions: call them only when
 * ct_attn_bf16_dot() is true. Every pointer is borrowed; nothing is allocated. */
#ifndef CT_CPU_ATTENTION_BF16_H
#define CT_CPU_ATTENTION_BF16_H

#include <stdbool.h>
#include <stdint.h>

/* True when the bf16 math may use these functions: the CPU executes
 * AVX512-BF16 (ct_cpu_bf16_dot_supported) and ct_bf16_force_fallback is off.
 * Call it outside parallel regions (it reads the fallback switch by toggling). */
bool ct_attn_bf16_dot(void);

/* C [M×N] (row stride ldc) = alpha · A·B (acc false: C's old contents ignored)
 * or += A·B (acc true; alpha unused), over np pairs of the reduction: A(i, p) =
 * a[i·sar + p·sap] and B(p, j) = b[p·ldb + j], each a pair. M % 4 == 0, N % 16
 * == 0. Each C element is one fp32 chain: C (or 0), then pair 0, 1, ... */
void ct_attn_bf16_mm(int64_t M, int64_t N, int64_t np, const uint32_t *a, int64_t sar,
                     int64_t sap, const uint32_t *b, int64_t ldb, float *c, int64_t ldc,
                     float alpha, bool acc);

/* Rows [0, rows_out) of dst (row stride ldd u32): row r holds the n_pad / 2
 * pairs of f32 row r of x (row stride ldx), i.e. its bf16 values in order.
 * Rows r >= rows and columns >= n of x read as zero; n_pad % 16 == 0. */
void ct_attn_bf16_rows(const float *x, int64_t ldx, int64_t rows, int64_t n, int64_t rows_out,
                       int64_t n_pad, uint32_t *dst, int64_t ldd);

/* Pairs down the columns: dst[j·ldd + c] = pair(x[2j][c], x[2j+1][c]) for
 * j < np, c < n_pad (n_pad % 16 == 0). Rows >= rows and columns >= n of x read
 * as zero. */
void ct_attn_bf16_pairs(const float *x, int64_t ldx, int64_t rows, int64_t n, int64_t np,
                        int64_t n_pad, uint32_t *dst, int64_t ldd);

/* Pairs along the rows, transposed: dst[p·ldd + t] = pair(x[t][2p], x[t][2p+1])
 * for p < np, t < t_pad (t_pad % 16 == 0). Rows >= rows and columns >= n of x
 * read as zero. */
void ct_attn_bf16_pairs_t(const float *x, int64_t ldx, int64_t rows, int64_t n, int64_t np,
                          int64_t t_pad, uint32_t *dst, int64_t ldd);

#endif
