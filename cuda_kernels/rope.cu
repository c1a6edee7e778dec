/* Rotary position embedding forward/backward (HF rotate_half, InternLM2's head
 * groups, linear and dynamic-NTK scaling); the twin of autograd/cpu/rope.c.
 *
 * Buffers: x, y (forward) or dy, dx (backward) [T, C] activations (f32 or
 * bf16, one dtype per call: the kernel is templated on the storage A,
 * cuda_common.cuh; loads widen to f32, each result is rounded once when
 * stored), viewed as [T, H, hd] with C = H*hd; pos i32 [T]; shared: cs, sn
 * [hd/2] f32.
 *
 * One block per token. Its threads first make the token's hd/2 (cos, ±sin)
 * pairs in shared memory, computed in double exactly as the CPU does
 * (inv_freq_j = 1 / base^(2j/hd), a = pos' * inv_freq_j, then rounded to
 * f32): an f32 angle at position 30000 would be off by ~2e-3 rad. Then every
 * pair (h, j) of the row is rotated, consecutive threads on consecutive j
 * (coalesced), with products and sums rounded separately as the CPU's
 * (no FMA). Heads past rotate_per_group in each group of `group` pass
 * through. The forward may run in place (y == x): each pair is read and
 * written by one thread. The backward rotates by -a and accumulates.
 *
 * With hd/2 and C multiples of 8 and src, dst 16-byte aligned (checked;
 * InternLM2's hd = 128), a thread takes 8 consecutive pairs (j..j+7) per
 * step: 16-byte loads and stores (act_ld8/act_st8) of x[o..o+7] and
 * x[o+half..o+half+7]; else one pair per step (the scalar path). Both paths
 * rotate each pair with rot_pair (same bits). */
#include "cuda_common.cuh"

static const int kRopeThreads = 128;

/* One pair: (r1, r2) = R (a1, a2) (cos c, ±sin s) when rotate, else (a1, a2);
 * then *d1 = r1 (+= with accumulate: *d1 holds the old value), same for d2. */
static __device__ __forceinline__ void rot_pair(float a1, float a2, float c, float s, bool rotate,
                                                int accumulate, float *d1, float *d2) {
    float r1 = a1, r2 = a2; /* pass-through head */
    if (rotate) {
        r1 = add_rn(mul_rn(a1, c), -mul_rn(a2, s));
        r2 = add_rn(mul_rn(a2, c), mul_rn(a1, s));
    }
    *d1 = accumulate ? add_rn(*d1, r1) : r1;
    *d2 = accumulate ? add_rn(*d2, r2) : r2;
}

/* dst (= or +=) R(sign * a) src for the rotated heads, src for the others;
 * vec: the 8-pair path (see the top). Grid: T blocks; dynamic shared memory:
 * hd floats. */
template <class A>
static __global__ void rope_kernel(const A *src, A *dst, const int32_t *pos, int64_t C,
                                   int hd, int group, int rot, double base, double pos_div,
                                   double sign, int accumulate, int vec) {
    CT_DYN_SHARED(float, cs); /* [half] cos(a), then [half] sign*sin(a) */
    const int half = hd / 2;
    float *sn = cs + half;
    const int64_t t = blockIdx.x;
    const double pt = (double)pos[t] / pos_div;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        double inv_freq = 1.0 / pow(base, (double)(2 * j) / (double)hd);
        double a = pt * inv_freq;
        cs[j] = (float)cos(a);
        sn[j] = (float)(sign * sin(a));
    }
    __syncthreads();

    const A *x = src + t * C;
    A *y = dst + t * C;
    const int heads = (int)(C / hd);
    if (vec) {
        const int hv = half / 8; /* 8-pair vectors per head */
        for (int i = threadIdx.x; i < heads * hv; i += blockDim.x) {
            const int h = i / hv, j = (i - h * hv) * 8;
            const int64_t o = (int64_t)h * hd + j;
            const bool rotate = h % group < rot;
            float a1[8], a2[8], d1[8] = {}, d2[8] = {};
            act_ld8(x, o, a1);
            act_ld8(x, o + half, a2);
            if (accumulate) {
                act_ld8(y, o, d1);
                act_ld8(y, o + half, d2);
            }
            for (int k = 0; k < 8; k++)
                rot_pair(a1[k], a2[k], cs[j + k], sn[j + k], rotate, accumulate, &d1[k], &d2[k]);
            act_st8(y, o, d1);
            act_st8(y, o + half, d2);
        }
        return;
    }
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        const int h = i / half, j = i - h * half;
        const int64_t o = (int64_t)h * hd + j;
        float d1 = accumulate ? act_ld(y, o) : 0.0f, d2 = accumulate ? act_ld(y, o + half) : 0.0f;
        rot_pair(act_ld(x, o), act_ld(x, o + half), cs[j], sn[j], h % group < rot, accumulate, &d1, &d2);
        act_st(y, o, d1);
        act_st(y, o + half, d2);
    }
}

template <class A>
static int rope_launch_as(const ct_tensor *src, ct_tensor *dst, const ct_tensor *pos,
                          const ct_rope_params *p, double sign, int accumulate, int64_t T,
                          int64_t C) {
    const double pos_div = p->scaling == CT_ROPE_LINEAR ? p->factor : 1.0;
    const size_t smem = (size_t)p->head_dim * sizeof(float);
    const int vec = (p->head_dim / 2) % 8 == 0 && C % 8 == 0 && aligned16(src->data) &&
                    aligned16(dst->data);
    CT_LAUNCH(rope_kernel<A>, (unsigned)T, kRopeThreads, smem, (const A *)src->data,
              (A *)dst->data, (const int32_t *)pos->data, C, p->head_dim, p->group,
              p->rotate_per_group, ct_rope_base(p), pos_div, sign, accumulate, vec);
    return CT_OK;
}

static int rope_launch(const ct_tensor *src, ct_tensor *dst, const ct_tensor *pos,
                       const ct_rope_params *p, double sign, int accumulate) {
    const ct_tensor *ts[] = {src, dst};
    const char *names[] = {"input", "output"};
    CT_TRY(act_check_same("rope", ts, names, 2));
    const int64_t T = ct_rows(src), C = ct_dim_from_end(src, 1);
    if (T == 0 || C == 0) return CT_OK;
    return CT_ACT_DISPATCH(src, rope_launch_as, src, dst, pos, p, sign, accumulate, T, C);
}

int ct_cuda_rope_fwd(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p,
                     ct_tensor *y) {
    return rope_launch(x, y, pos, p, 1.0, 0);
}

int ct_cuda_rope_bwd(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p,
                     ct_tensor *dx) {
    return rope_launch(dy, dx, pos, p, -1.0, 1);
}
