/* Rotary position embedding, HF "rotate_half" convention (InternLM2).
 *
 * x is [T, C] viewed as [T, H, hd] (C = H*hd). For each rotated head and each
 * pair (j, j + hd/2), with a = pos' * inv_freq_j:
 *   y[j]        = x[j] cos(a) - x[j + hd/2] sin(a)
 *   y[j + hd/2] = x[j + hd/2] cos(a) + x[j] sin(a)
 * inv_freq_j = 1 / base^(2j/hd); pos' = pos / factor with linear scaling;
 * base = theta, or the dynamic-NTK base when the sequence exceeds max_pos.
 * The rotation is orthogonal, so the backward is the rotation by -a applied to
 * dy (accumulated into dx). Heads past `rotate_per_group` in each group pass
 * through unchanged (v in InternLM2's packed wqkv).
 *
 * Angles, cos and sin are computed in double: at position 30000 an fp32 angle
 * would already be off by ~2e-3 rad. Each token needs hd/2 cos/sin pairs shared
 * by all of its heads, so they are made once per token into small per-thread
 * tables; nothing is cached across calls. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "../ct_error.h"
#include "cpu_kernels.h"

/* Frequency pairs per pass: bounds the per-thread tables, any head_dim works. */
enum { ROPE_CHUNK = 256 };

/* dst (= or +=) R(sign * a) src for every rotated head, src passed through for
 * the others. sign = +1: forward; -1: backward (transpose of the rotation).
 * src == dst is allowed when !accumulate: each pair is read before it is written. */
static void rope_apply(const float *src, float *dst, const int32_t *pos, int64_t T, int64_t C,
                       const ct_rope_params *p, double sign, bool accumulate) {
    const int64_t hd = p->head_dim, half = hd / 2, H = C / hd;
    const int group = p->group, rot = p->rotate_per_group;
    const double base = ct_rope_base(p);
    const double pos_div = p->scaling == CT_ROPE_LINEAR ? p->factor : 1.0;

#pragma omp parallel if (T * C > 32768)
    {
        double inv_freq[ROPE_CHUNK]; /* (chunk) frequencies of pairs j0.. */
        float cs[ROPE_CHUNK], sn[ROPE_CHUNK]; /* (chunk) cos, sign*sin at this token */
        for (int64_t j0 = 0; j0 < half; j0 += ROPE_CHUNK) {
            int64_t nj = half - j0 < ROPE_CHUNK ? half - j0 : ROPE_CHUNK;
            for (int64_t j = 0; j < nj; j++)
                inv_freq[j] = 1.0 / pow(base, (double)(2 * (j0 + j)) / (double)hd);
#pragma omp for schedule(static)
            for (int64_t t = 0; t < T; t++) {
                double pt = (double)pos[t] / pos_div;
                for (int64_t j = 0; j < nj; j++) {
                    double a = pt * inv_freq[j];
                    cs[j] = (float)cos(a);
                    sn[j] = (float)(sign * sin(a));
                }
                size_t row = (size_t)t * (size_t)C;
                for (int64_t h = 0; h < H; h++) {
                    const float *x = src + row + (size_t)h * (size_t)hd;
                    float *y = dst + row + (size_t)h * (size_t)hd;
                    if (h % group >= rot) { /* pass-through head: handled in the first pass */
                        if (j0 > 0) continue;
                        if (accumulate) {
                            for (int64_t d = 0; d < hd; d++) y[d] += x[d];
                        } else if (y != x) {
                            memcpy(y, x, (size_t)hd * sizeof *y);
                        }
                        continue;
                    }
                    const float *x1 = x + j0, *x2 = x + j0 + half;
                    float *y1 = y + j0, *y2 = y + j0 + half;
                    if (accumulate) {
                        for (int64_t j = 0; j < nj; j++) {
                            float a1 = x1[j], a2 = x2[j];
                            y1[j] += a1 * cs[j] - a2 * sn[j];
                            y2[j] += a2 * cs[j] + a1 * sn[j];
                        }
                    } else {
                        for (int64_t j = 0; j < nj; j++) {
                            float a1 = x1[j], a2 = x2[j];
                            y1[j] = a1 * cs[j] - a2 * sn[j];
                            y2[j] = a2 * cs[j] + a1 * sn[j];
                        }
                    }
                }
            }
        }
    }
}

int ct_cpu_rope_fwd(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *y) {
    rope_apply(x->data, y->data, pos->data, ct_rows(x), ct_dim_from_end(x, 1), p, 1.0, false);
    return CT_OK;
}

int ct_cpu_rope_bwd(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p,
                    ct_tensor *dx) {
    rope_apply(dy->data, dx->data, pos->data, ct_rows(dy), ct_dim_from_end(dy, 1), p, -1.0, true);
    return CT_OK;
}
