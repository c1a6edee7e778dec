/* The 4-bit NF4/FP4 code tables and the scalar quantize/dequantize steps of
 * bitsandbytes' blockwise quantization, shared by the CPU (gcc) and CUDA (nvcc)
 * backends: everything is static inline CT_HD, tables live in macros, nothing
 * here allocates or owns memory.
 *
 * Bit-compatibility notes (checked against bitsandbytes csrc/kernels.cu and
 * csrc/cuda/blockwise_quantization.cu, functions dQuantizeNF4, dQuantizeFP4,
 * dQuantize<0>, kQuantizeBlockwise, kDequantizeBlockwise):
 * - A value x is normalised as x * (1.0f / absmax) and mapped to the code whose
 *   range contains it, using bitsandbytes' own fp32 decision thresholds with a
 *   strict '>' (a value equal to a threshold gets the lower code). The
 *   thresholds are the float literals of bnb's decision trees, copied, not
 *   recomputed: four NF4 ones are one ulp off the fp32 midpoint of their
 *   neighbours (bnb printed float64 midpoints that sit exactly on a float tie),
 *   and the FP4 ones are short decimals (up to 1e-5 relative off).
 * - NaN (only from 0 * (1/0) in an all-zero block) compares false everywhere:
 *   NF4 code 0 (-1.0), FP4 code 0 (+0.0). Dequantized with absmax 0 that gives
 *   -0.0 and +0.0: an all-zero block comes back as zeros.
 * - Double quantization's 8-bit step is bnb's dQuantize<0>: a 7-step binary
 *   search over the 256-entry map, then a midpoint test ('>' towards the upper
 *   neighbour, '<' towards the lower one; exact midpoints stay on the pivot).
 * - Dequantized absmax = map8[q] * nested_absmax + offset with two roundings (bnb
 *   does it in two separate kernels). nvcc would fuse that into an FMA, so the
 *   CUDA side spells out __fmul_rn; gcc builds this project in ISO C mode,
 *   where floating-point contraction is off. */
#ifndef CT_QUANT_TABLES_H
#define CT_QUANT_TABLES_H

#include <stdint.h>

#include "ct_inline.h"

/* NF4 code c (0..15) -> value: bnb's nf4 quant_map (docs/DESIGN.md, "NF4 and FP4"). */
#define CT_NF4_VALUES                                                                      \
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,           \
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,          \
     0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,                   \
     0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,                    \
     0.7229568362236023f, 1.0f}

/* FP4 (e2m1, bias 3, no inf/nan) code -> value, scaled by 1/12 so the largest
 * magnitude is 1: bnb's get_4bit_type("fp4") = [0, .0625, 8, 12, 4, 6, 2, 3,
 * -0, -.0625, -8, -12, -4, -6, -2, -3] / 12. Bit 3 is the sign. */
#define CT_FP4_VALUES                                                                      \
    {0.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 1.0f, 4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f, \
     3.0f / 12.0f, -0.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -1.0f, -4.0f / 12.0f,          \
     -6.0f / 12.0f, -2.0f / 12.0f, -3.0f / 12.0f}

/* bnb's NF4 decision thresholds in ascending order: code = number of them below x. */
#define CT_NF4_T0 (-0.8480964004993439f)
#define CT_NF4_T1 (-0.6106329262256622f)
#define CT_NF4_T2 (-0.4599952697753906f)
#define CT_NF4_T3 (-0.33967943489551544f)
#define CT_NF4_T4 (-0.23460740596055984f)
#define CT_NF4_T5 (-0.13791173323988914f)
#define CT_NF4_T6 (-0.045525018125772476f)
#define CT_NF4_T7 (0.03979014977812767f)
#define CT_NF4_T8 (0.1202552504837513f)
#define CT_NF4_T9 (0.2035212516784668f)
#define CT_NF4_T10 (0.2920137718319893f)
#define CT_NF4_T11 (0.3893125355243683f)
#define CT_NF4_T12 (0.5016634166240692f)
#define CT_NF4_T13 (0.6427869200706482f)
#define CT_NF4_T14 (0.8614784181118011f)

/* bnb's FP4 thresholds on |x|, ascending; rank r -> code CT_FP4_RANK_CODE[r]. */
#define CT_FP4_T0 (0.00260417f)
#define CT_FP4_T1 (0.0859375f)
#define CT_FP4_T2 (0.20833333f)
#define CT_FP4_T3 (0.29166667f)
#define CT_FP4_T4 (0.4166667f)
#define CT_FP4_T5 (0.583333f)
#define CT_FP4_T6 (0.8333333f)

CT_HD float ct_nf4_value(unsigned code) {
    const float t[16] = CT_NF4_VALUES;
    return t[code & 15u];
}

CT_HD float ct_fp4_value(unsigned code) {
    const float t[16] = CT_FP4_VALUES;
    return t[code & 15u];
}

/* NF4 code of a normalised value: bnb's dQuantizeNF4 decision tree, verbatim. */
CT_HD unsigned ct_nf4_quantize_tree(float x) {
    if (x > CT_NF4_T7) {
        if (x > CT_NF4_T11) {
            if (x > CT_NF4_T13) return x > CT_NF4_T14 ? 15u : 14u;
            return x > CT_NF4_T12 ? 13u : 12u;
        }
        if (x > CT_NF4_T9) return x > CT_NF4_T10 ? 11u : 10u;
        return x > CT_NF4_T8 ? 9u : 8u;
    }
    if (x > CT_NF4_T3) {
        if (x > CT_NF4_T5) return x > CT_NF4_T6 ? 7u : 6u;
        return x > CT_NF4_T4 ? 5u : 4u;
    }
    if (x > CT_NF4_T1) return x > CT_NF4_T2 ? 3u : 2u;
    return x > CT_NF4_T0 ? 1u : 0u;
}

/* The same code as a branch-free count of thresholds below x (vectorizes on
 * the CPU). Equal to the tree for every float: the thresholds ascend, and NaN
 * is below none of them in both forms. */
CT_HD unsigned ct_nf4_quantize(float x) {
    return (unsigned)(x > CT_NF4_T0) + (unsigned)(x > CT_NF4_T1) + (unsigned)(x > CT_NF4_T2) +
           (unsigned)(x > CT_NF4_T3) + (unsigned)(x > CT_NF4_T4) + (unsigned)(x > CT_NF4_T5) +
           (unsigned)(x > CT_NF4_T6) + (unsigned)(x > CT_NF4_T7) + (unsigned)(x > CT_NF4_T8) +
           (unsigned)(x > CT_NF4_T9) + (unsigned)(x > CT_NF4_T10) + (unsigned)(x > CT_NF4_T11) +
           (unsigned)(x > CT_NF4_T12) + (unsigned)(x > CT_NF4_T13) + (unsigned)(x > CT_NF4_T14);
}

/* FP4 code: bnb's dQuantizeFP4 tree, verbatim (sign bit from x < 0, so -0.0
 * and NaN get the positive code). */
CT_HD unsigned ct_fp4_quantize_tree(float x) {
    unsigned sign = x < 0.0f ? 8u : 0u;
    x = x < 0.0f ? -x : x; /* fabsf without libm on either side */
    if (x > CT_FP4_T3) {
        if (x > CT_FP4_T5) return (x > CT_FP4_T6 ? 3u : 2u) + sign;
        return (x > CT_FP4_T4 ? 5u : 4u) + sign;
    }
    if (x > CT_FP4_T1) return (x > CT_FP4_T2 ? 7u : 6u) + sign;
    return (x > CT_FP4_T0 ? 1u : 0u) + sign;
}

/* The same as a rank count: magnitudes ascend as codes 0,1,6,7,4,5,2,3. */
CT_HD unsigned ct_fp4_quantize(float x) {
    unsigned sign = x < 0.0f ? 8u : 0u;
    float a = x < 0.0f ? -x : x;
    unsigned r = (unsigned)(a > CT_FP4_T0) + (unsigned)(a > CT_FP4_T1) +
                 (unsigned)(a > CT_FP4_T2) + (unsigned)(a > CT_FP4_T3) +
                 (unsigned)(a > CT_FP4_T4) + (unsigned)(a > CT_FP4_T5) + (unsigned)(a > CT_FP4_T6);
    /* rank -> code, packed 4 bits per rank: ranks 0..7 -> 0,1,6,7,4,5,2,3 */
    return ((0x32547610u >> (4u * r)) & 15u) + sign;
}

/* bnb's dQuantize<0>: index of the nearest entry of a sorted 256-entry map
 * (map[0] lowest, map[255] highest). */
CT_HD unsigned ct_dyn8_quantize(const float *map, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = map[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
    }
    if (upper_pivot == 255) upper = map[upper_pivot];
    if (lower_pivot == 0) lower = map[lower_pivot];
    if (x > val) {
        float midpoint = (upper + val) * 0.5f;
        return x > midpoint ? (unsigned)upper_pivot : (unsigned)pivot;
    }
    float midpoint = (lower + val) * 0.5f;
    return x < midpoint ? (unsigned)lower_pivot : (unsigned)pivot;
}

/* One block's absmax from its double-quantized form: map8[q] * nested + offset,
 * rounded after the multiply and after the add (no FMA). */
CT_HD float ct_dyn8_absmax(float map8_q, float nested_absmax, float offset) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(__fmul_rn(map8_q, nested_absmax), offset);
#else
    float m = map8_q * nested_absmax;
    return m + offset;
#endif
}

#endif
