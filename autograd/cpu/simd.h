/* One SIMD register of floats for the CPU kernels (attention.c,
 * attention_decode.c): VL = 8 with AVX, else 4 (wider generic vectors without
 * hardware support compile to slow piecewise code). Loads and stores go
 * through memcpy: no alignment or aliasing assumptions. */
#ifndef CT_CPU_SIMD_H
#define CT_CPU_SIMD_H

#ifdef __AVX__
enum { VL = 8 };
#else
enum { VL = 4 };
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float))));

#endif
