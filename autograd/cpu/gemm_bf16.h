/* bf16 GEMMs with fp32 accumulation for the CPU backend (cpu/gemm_bf16.c):
 * the products of LoRA training with compute dtype bf16 (the frozen base
 * weight's and the LoRA pair's), in the semantics of a bf16 compute dtype
 * (bitsandbytes, PyTorch autocast): the f32 operands are rounded to bf16
 * (nearest even), every product bf16(a)·bf16(b) is exact in fp32, and the
 * products are summed in fp32.
 *
 * Summation order: on the fast path (AVX512-BF16, VDPBF16PS) every output is
 * one fp32 chain over k = 0, 1, 2, ... in pairs (the instruction adds the
 * products of k+1 and of k in that order), then c = alpha·sum + beta·c. The
 * order depends on neither the thread count nor the shape's partitioning, so
 * results repeat bit for bit. The instruction treats bf16 inputs below 2^-126
 * in magnitude as zero and flushes fp32 results below it to zero (DAZ/FTZ).
 * The fallback (no AVX512-BF16, or forced) forms the same products and sums
 * them with cblas_sgemm, in OpenBLAS's order.
 *
 * State ownership: every pointer is borrowed; `scratch` holds the packing
 * buffers, all released (rewound) before return: on the fast path the bf16
 * copy of op(A) (about M·K·2 bytes, at most 16 MiB per M chunk) and 512 KiB of
 * packed B per thread (plus, for beta != 0 and K > 2048, up to 1 MiB of partial
 * sums per thread); on the fallback two f32 tiles of at most 4 MiB. The GEMMs
 * are called from outside OpenMP parallel regions and parallelise themselves
 * (omp_get_max_threads() threads). */
#ifndef CT_CPU_GEMM_BF16_H
#define CT_CPU_GEMM_BF16_H

#include <stdbool.h>
#include <stdint.h>

#include "../arena.h"
#include "../tensor.h"

/* True when this CPU executes AVX512-BF16 (VDPBF16PS) and the OS saves zmm
 * state; cached after the first call. The environment variable
 * CT_NO_BF16_DOT=1 forces false (tests and benchmarks use it to exercise the
 * fallback). */
bool ct_cpu_bf16_dot_supported(void);

/* The general form: C [M, N] (row stride ldc) = alpha · op(A) · op(B) + beta · C
 *   op(A) [M, K]: A [M, K] f32 (row stride lda), or with trans_a its transpose:
 *     A [K, M] (lda); rounded to bf16 (RNE) as it is packed;
 *   op(B) [K, N]: B [K, N] (row stride ldb), or with trans_b its transpose:
 *     B [N, K] (ldb); b_dtype CT_BF16 (uint16_t bits, used as stored) or CT_F32
 *     (rounded to bf16, RNE, as it is packed).
 * E.g. LoRA's u = x·Aᵀ (trans_b, f32 B), dB = dYᵀ·u and dA = gᵀ·x (trans_a,
 * f32 B), dx = g·A (f32 B); the frozen-weight products are the bf16-B forms
 * below. Summation order, fallback and scratch as above.
 * beta == 0 ignores C's old contents (NaN garbage included). Any M, N, K >= 0.
 * Returns CT_OK, CT_EINPUT for negative sizes, row strides narrower than the
 * stored rows or another b_dtype, CT_ERUNTIME when scratch runs out. */
int ct_bf16_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *a, int64_t lda, const void *b, ct_dtype b_dtype, int64_t ldb,
                 float beta, float *c, int64_t ldc, ct_arena *scratch);

/* ct_bf16_gemm(false, true, ..., CT_BF16, ...):
 * C [M, N] (row stride ldc) = alpha · bf16(A) · Bᵀ + beta · C
 *   A [M, K] f32 (row stride lda), rounded to bf16 (RNE) as it is packed;
 *   B [N, K] bf16 (uint16_t bits, row stride ldb) — a frozen weight W [out, in]:
 *   this is y = x·Wᵀ.
 * beta == 0 ignores C's old contents (NaN garbage included). Any M, N, K >= 0.
 * Returns CT_OK, CT_EINPUT for negative sizes or row strides narrower than the
 * rows, CT_ERUNTIME when scratch runs out (with a message). */
int ct_bf16_gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float *a, int64_t lda,
                    const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc,
                    ct_arena *scratch);

/* ct_bf16_gemm(false, false, ..., CT_BF16, ...):
 * C [M, N] (ldc) = alpha · bf16(A) · B + beta · C
 *   A [M, K] f32 (lda) rounded to bf16; B [K, N] bf16 (ldb) — dx = dy·W with
 *   W [out, in] (K = out, N = in). Same contract as ct_bf16_gemm_nt. */
int ct_bf16_gemm_nn(int64_t M, int64_t N, int64_t K, float alpha, const float *a, int64_t lda,
                    const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc,
                    ct_arena *scratch);

/* op(A) converted once, used by several GEMMs (e.g. x in x·Wᵀ and x·Aᵀ, dY in
 * dY·W and dY·B): a borrowed view of an f32 A [M, K] (row stride lda) and, on
 * the fast path, of its bf16 rows (RNE pairs bf16(a[k]) | bf16(a[k+1]) << 16,
 * a zero pairing an odd K's last element; ld pairs apart; rows up to M rounded
 * up to the micro-panel height, zero). pairs is NULL where nothing was
 * converted (the fallback, an empty A, or a copy too large): the GEMMs then
 * use the f32 A as ct_bf16_gemm would. Results are bit-identical to
 * ct_bf16_gemm(false, ...) with the f32 A. */
typedef struct {
    const float *a;        /* A [M, K] f32 (row stride lda) */
    int64_t lda;
    const uint32_t *pairs; /* the bf16 rows (in the caller's scratch), or NULL */
    int64_t ld;            /* pairs between rows */
    int64_t M, K;
} ct_bf16_rows;

/* *out = A [M, K] (row stride lda), rounded to bf16 rows on the fast path
 * (about M·K·2 bytes of scratch, left allocated: the caller releases it with
 * its own mark; at most 64 MiB, else nothing is converted). Returns CT_OK,
 * CT_EINPUT for negative sizes or lda < K, CT_ERUNTIME when scratch runs out. */
int ct_bf16_rows_make(const float *a, int64_t lda, int64_t M, int64_t K, ct_arena *scratch,
                      ct_bf16_rows *out);

/* *out = columns [k0, k0 + kn) of the view (e.g. a tile of K). The bf16 rows
 * are kept where the slice starts on a pair and ends on one or at K; else
 * the slice uses the f32 A. Returns CT_OK, CT_EINPUT for a slice outside. */
int ct_bf16_rows_cols(const ct_bf16_rows *rows, int64_t k0, int64_t kn, ct_bf16_rows *out);

/* ct_bf16_gemm(false, trans_b, a->M, N, a->K, alpha, a->a, a->lda, b, ...),
 * bit for bit, without converting A again. */
int ct_bf16_gemm_rows(const ct_bf16_rows *a, bool trans_b, int64_t N, float alpha, const void *b,
                      ct_dtype b_dtype, int64_t ldb, float beta, float *c, int64_t ldc,
                      ct_arena *scratch);

/* For tests and benchmarks (not thread-safe): true makes the GEMMs take the
 * cblas_sgemm fallback even where AVX512-BF16 is available. Returns the
 * previous setting. */
bool ct_bf16_force_fallback(bool on);
/* True when the fast path runs: AVX512-BF16 here and no forced fallback. */
bool ct_bf16_fast_path(void);

#endif
