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
