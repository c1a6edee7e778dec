/* AVX512-BF16 helpers shared by the bf16 GEMM (gemm_bf16.c) and bf16
 * attention (attention_bf16.c). Functions carry a target attribute, so the
 * build needs no -march flag; callers reach them only after
 * ct_cpu_bf16_dot_supported() said yes. x86-64 only: elsewhere this header
 * defines nothing and the callers use their fallbacks. */
#ifndef CT_CPU_AVX512_BF16_H
#define CT_CPU_AVX512_BF16_H

#if defined(__x86_64__)
#include <immintrin.h>

#define CT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* Transposes 16×16 u32 in registers: afterwards x[j] holds element j of the
 * 16 former rows (unpack within 128-bit lanes, then move the lanes). */
CT_AVX512BF16 static inline void ct_avx512_transpose16(__m512i x[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(x[i], x[i + 1]);     /* rows i, i+1: columns 0,1 | 4,5 | ... */
        t[i + 1] = _mm512_unpackhi_epi32(x[i], x[i + 1]); /* columns 2,3 | 6,7 | ... */
    }
    for (int i = 0; i < 16; i += 4) { /* u[i+c], lane L: rows i..i+3 of column 4L+c */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88); /* lanes 0, 2 of each */
        __m512i v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd); /* lanes 1, 3 */
        __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        x[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        x[c + 4] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        x[c + 8] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
        x[c + 12] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
    }
}

#endif /* __x86_64__ */
#endif
