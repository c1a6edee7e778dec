/* The warp-level tensor-core product the kernels use, behind one wrapper with
 * an emulated twin (docs/DESIGN.md "Emulated CUDA"):
 *
 *   ct_mma_bf16_16x8x16(d, a, b, c):  D[16×8] = A[16×16] · B[16×8] + C[16×8]
 *
 * bf16 A and B, fp32 C and D, each matrix spread over the 32 lanes of a warp
 * as PTX's `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32` spreads it.
 * Every lane of the warp must make the same call (full warp, converged).
 *
 * Fragment layouts: PTX ISA, section 9.7.14.5.8 "Matrix Fragments for
 * mma.m16n8k16 with floating point type" (Figures 79 and 81 and the
 * accumulator figure after them). With g = laneid >> 2 (groupID) and
 * t = laneid % 4 (threadID_in_group), each uint32_t holding two bf16, the
 * lower 16 bits the first (lower-index) element:
 *   A (row-major 16×16), elements a0..a7 = the halves of a[0..3]:
 *     a[0] = A[g][2t],     A[g][2t+1]        a[1] = A[g+8][2t],   A[g+8][2t+1]
 *     a[2] = A[g][2t+8],   A[g][2t+9]        a[3] = A[g+8][2t+8], A[g+8][2t+9]
 *   B (16×8, k × n, "col": each lane's pairs run along k), b0..b3 = halves of b[0..1]:
 *     b[0] = B[2t][g],     B[2t+1][g]        b[1] = B[2t+8][g],   B[2t+9][g]
 *   C, D (16×8 fp32), c0..c3:
 *     c[0] = C[g][2t]   c[1] = C[g][2t+1]    c[2] = C[g+8][2t]    c[3] = C[g+8][2t+1]
 *
 * nvcc, sm_80 and up: the instruction itself (inline PTX). Emulated build: the
 * lanes gather every lane's fragments (ct_emu::warp_gather, which also checks
 * that the whole warp makes the call from the same line) and each computes its
 * own d[4] by the layouts above, summing the 16 products of a dot in fp32 in
 * k order onto c (the products of two bf16 are exact in fp32; the hardware's
 * internal order and rounding of the sum are unspecified, so a GPU can differ
 * in the last bits). */
#ifndef CT_MMA_CUH
#define CT_MMA_CUH

#include "cuda_includes.h"

/* Two floats rounded to bf16 (nearest even, as ct_f32_to_bf16) in one
 * fragment register: lo in the low half (the lower-index element). */
static __device__ __forceinline__ uint32_t ct_mma_pack_bf16(float lo, float hi) {
    return (uint32_t)ct_f32_to_bf16(lo) | ((uint32_t)ct_f32_to_bf16(hi) << 16);
}

#ifdef CT_EMU_BUILD

/* The twin: called through the macro below so a failed gather names the call
 * site. */
static inline void ct_mma_bf16_16x8x16_at(const char *file, int line, float d[4], const uint32_t a[4],
                                          const uint32_t b[2], const float c[4]) {
    struct frag {
        uint32_t a[4], b[2];
        float c[4];
    };
    frag mine, all[32];
    for (int i = 0; i < 4; i++) mine.a[i] = a[i], mine.c[i] = c[i];
    mine.b[0] = b[0];
    mine.b[1] = b[1];
    ::ct_emu::warp_gather(file, line, &mine, sizeof mine, all);

    /* The whole matrices from the fragments. */
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l % 4;
        const frag &f = all[l];
        for (int r = 0; r < 4; r++) { /* a[r]: rows g (+8 for r odd), cols 2t (+8 for r >= 2) */
            const int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
            A[row][col] = ct_bf16_to_f32((uint16_t)(f.a[r] & 0xffffu));
            A[row][col + 1] = ct_bf16_to_f32((uint16_t)(f.a[r] >> 16));
        }
        for (int r = 0; r < 2; r++) { /* b[r]: k rows 2t (+8 for r = 1), col g */
            B[2 * t + r * 8][g] = ct_bf16_to_f32((uint16_t)(f.b[r] & 0xffffu));
            B[2 * t + r * 8 + 1][g] = ct_bf16_to_f32((uint16_t)(f.b[r] >> 16));
        }
        for (int i = 0; i < 4; i++) C[g + (i >> 1) * 8][2 * t + (i & 1)] = f.c[i];
    }
    const int lane = (int)(threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y) % 32;
    const int g = lane >> 2, t = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
        float s = C[row][col];
        for (int k = 0; k < 16; k++) s += A[row][k] * B[k][col];
        d[i] = s;
    }
}
#define ct_mma_bf16_16x8x16(d, a, b, c) ct_mma_bf16_16x8x16_at(__FILE__, __LINE__, d, a, b, c)

#else

static __device__ __forceinline__ void ct_mma_bf16_16x8x16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                           const float c[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
#else
    /* Never used: the CUDA backend is built for and requires sm_80+ (bf16
     * mma); below that (and in nvcc's host pass) this only has to compile. */
    (void)a, (void)b;
    for (int i = 0; i < 4; i++) d[i] = c[i];
#if defined(__CUDA_ARCH__)
    __trap();
#endif
#endif
}

#endif

#endif
