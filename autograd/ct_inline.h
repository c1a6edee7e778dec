/* Scalar helpers shared by the CPU backend (gcc) and the CUDA backend (nvcc):
 * dtype conversions and the counter-based RNG. Everything is static inline and
 * marked CT_HD so the CPU tests exercise the exact code the GPU runs. */
#ifndef CT_INLINE_H
#define CT_INLINE_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define CT_HD __host__ __device__ __forceinline__
#else
#define CT_HD static inline
#endif

/* bf16 <-> f32: bf16 is the top half of an f32; round to nearest even, NaN kept NaN. */
CT_HD float ct_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

CT_HD uint16_t ct_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* IEEE half <-> f32, exact for every half value; f32 -> half rounds to nearest even.
 * half -> f32 is branch-free (selects only, so loops over it vectorize): the
 * exponent is rebiased; inf/NaN get the rest of the f32 exponent range; a
 * subnormal is renormalised exactly by one f32 subtraction of 2^-14. */
CT_HD float ct_f16_to_f32(uint16_t h) {
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t exp = shifted_exp & o;
    o += (uint32_t)(127 - 15) << 23;
    uint32_t inf_nan = o + ((uint32_t)(128 - 16) << 23);
    uint32_t sub_bits = o + (1u << 23);
    float sub, magic;
    uint32_t magic_bits = 113u << 23; /* 2^-14 */
    memcpy(&sub, &sub_bits, 4);
    memcpy(&magic, &magic_bits, 4);
    sub -= magic;
    uint32_t sub_u;
    memcpy(&sub_u, &sub, 4);
    o = exp == shifted_exp ? inf_nan : (exp == 0 ? sub_u : o);
    o |= (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &o, 4);
    return f;
}

CT_HD uint16_t ct_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);           /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* overflow -> inf */
    if (absu < 0x38800000u) {                                            /* subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign;                   /* < half of min subnormal */
        uint32_t man = (absu & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(absu >> 23);                             /* 14..24 */
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

/* a·b + c: one fused rounding where the target has FMA (every CUDA GPU; the
 * CPU when built with -mfma, e.g. -march=native), else a multiply and an add.
 * Spelled out so a contracting compiler (nvcc) and gcc evaluate the same IEEE
 * operations: with FMA on both, ct_expf should agree bit for bit between CPU
 * and GPU (not yet checked on a GPU; needs nvcc's default -prec-div, no
 * --use_fast_math). */
#if defined(__CUDA_ARCH__) || defined(__FMA__)
#include <math.h>
#define CT_FMAF(a, b, c) fmaf((a), (b), (c))
#else
#define CT_FMAF(a, b, c) ((a) * (b) + (c))
#endif

/* e^x in fp32 without libm: loops that call it vectorize (libm's expf is one
 * call per element). Branch-free (selects only):
 * - x = n·ln2 + r, |r| <= ln2/2, n = round(x/ln2) by the 1.5·2^23 trick (its
 *   float's low bits hold n, so no float->int conversion); ln2 is split in two
 *   (Cody-Waite: n·0.693359375 is exact) so r keeps full precision;
 * - e^r by Cephes' degree-6 minimax polynomial (Horner, FMA where available:
 *   half the instructions, which is what bounds swiglu on AVX-512);
 * - 2^n applied as two exact normal powers 2^h·2^(n-h), h = round(n/2), so
 *   the one rounding is the last multiply: subnormal results (x down to
 *   -103.97) and overflow to +inf (x > 88.72) come out as a correctly scaled
 *   IEEE product, not clamped.
 * Measured over every float in [-110, 110], with and without FMA: max relative
 * error 8.5e-8 (0.7 ulp) for normal results, <= 0.75 subnormal ulp below.
 * exp(-inf) = 0, exp(+inf) = +inf, exp(NaN) = NaN: the clamps let a NaN
 * through (comparisons with it are false) and whatever exponent bits a NaN n
 * yields multiply a NaN. Without FMA, the result on [-87, 88] is bit-identical
 * to the former exp_poly of cpu/attention.c (same reduction and polynomial). */
CT_HD float ct_expf(float x) {
    const float magic = 12582912.0f;      /* 1.5·2^23 */
    float xc = x < -104.0f ? -104.0f : x; /* e^-104 < 2^-150: rounds to +0 */
    xc = xc > 89.0f ? 89.0f : xc;         /* e^89 > FLT_MAX: rounds to +inf */
    float t = CT_FMAF(xc, 1.44269504088896341f, magic);
    float n = t - magic; /* round(x / ln2), in [-150, 128] */
    float r = CT_FMAF(n, -0.693359375f, xc);
    r = CT_FMAF(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = CT_FMAF(p, r, 1.3981999507e-3f);
    p = CT_FMAF(p, r, 8.3334519073e-3f);
    p = CT_FMAF(p, r, 4.1665795894e-2f);
    p = CT_FMAF(p, r, 1.6666665459e-1f);
    p = CT_FMAF(p, r, 5.0000001201e-1f);
    p = CT_FMAF(p, r * r, r) + 1.0f; /* e^r in [0.70, 1.42] */
    /* h and n - h lie in [-75, 64]; a float k + 1.5·2^23 has the bits
     * 0x4b400000 + k (mod 2^32), so the biased exponent is bits - 0x4b400000 + 127. */
    float th = CT_FMAF(n, 0.5f, magic);   /* exact either way */
    float t2 = (n - (th - magic)) + magic;
    uint32_t bh, b2;
    memcpy(&bh, &th, 4);
    memcpy(&b2, &t2, 4);
    bh = (bh - 0x4b400000u + 127u) << 23;
    b2 = (b2 - 0x4b400000u + 127u) << 23;
    float sh, s2;
    memcpy(&sh, &bh, 4);
    memcpy(&s2, &b2, 4);
    return p * sh * s2;
}

/* sigmoid(x) = 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) for x < 0: the
 * exponential is e^-|x| <= 1, so it never overflows and sigmoid keeps its
 * relative precision for negative x down to the subnormals (1/(1 + e^-x)
 * gives 0 once e^-x overflows at x < -88.7, where sigmoid is still 2.7e-39
 * and x·sigmoid(x) a normal float). 0 at -inf, 1 at +inf, NaN at NaN. */
CT_HD float ct_sigmoidf(float x) {
    float e = ct_expf(x < 0.0f ? x : -x); /* e^-|x|; NaN stays NaN */
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

/* SwiGLU's silu(g) = g·sigmoid(g) given s = ct_sigmoidf(g). g is clamped below
 * at -120 (silu is -0 in fp32 well before that): silu(-inf) = -120·0 = -0,
 * not -inf·0 = NaN. silu(+inf) = +inf. */
CT_HD float ct_silu_s(float g, float s) { return (g < -120.0f ? -120.0f : g) * s; }

/* d silu / dg = s·(1 + g·(1 - s)), s = ct_sigmoidf(g), with g clamped to
 * [-120, 120] (beyond, s is exactly 0 or 1 in fp32): 1 at +inf and 0 at -inf
 * instead of ±inf·0 = NaN. */
CT_HD float ct_dsilu_s(float g, float s) {
    float gc = g < -120.0f ? -120.0f : g;
    gc = gc > 120.0f ? 120.0f : gc;
    return s * CT_FMAF(gc, 1.0f - s, 1.0f);
}

/* Counter-based RNG (SplitMix64 finaliser over seed ^ counter): any element's
 * random number is a pure function of (seed, index), so dropout masks are
 * regenerated in backward and in checkpoint recomputation instead of stored,
 * and every thread/block gets the same numbers in any order. */
CT_HD uint64_t ct_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 random bits. */
CT_HD float ct_uniform(uint64_t seed, uint64_t index) {
    uint64_t z = ct_mix64(seed ^ ct_mix64(index));
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

#endif
