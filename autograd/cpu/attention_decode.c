/* Cached ("decode") attention for generation on the CPU.
 *
 * A KV cache holds the rotated keys and the values of every position seen so
 * far: k_cache, v_cache [max_len, Hkv, hd] f32 (row p = position p). A call
 * brings T new tokens at absolute positions p0 .. p0+T-1 in InternLM2's packed
 * qkv layout (per KV head g: G query heads, then k_g, then v_g; q and k
 * already rotated at those positions). It first copies each token's k_g, v_g
 * into cache row p0+t, then (out != NULL) attends causally against the cache:
 * query head h of token t sees the keys [0, p0+t] of KV head g = h / G,
 *   s_j = scale · q·k_j,   out_h = Σ_j softmax(s)_j · v_j,
 * in fp32 with a max-subtracted softmax.
 *
 * Work item = (token, KV head): the G query heads of the group share every K
 * and V row as it streams past, so each cache row is read once per item.
 * Items are independent and every sum runs in a fixed order, so the result
 * does not depend on the thread count or schedule. Per-thread scores [G, L]
 * and accumulators [G, hd] come from `scratch` (no allocation once the arena
 * has grown to the context length). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "../ct_error.h"
#include "cpu_kernels.h"
#include "simd.h" /* VL, vf: one SIMD register of floats */

/* a·b over n floats: two vector accumulators, then a scalar tail. The order of
 * the additions is fixed by n alone. */
static float dot(const float *a, const float *b, int64_t n) {
    vf s0 = {0}, s1 = {0};
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        vf a0, a1, b0, b1;
        memcpy(&a0, a + i, sizeof a0);
        memcpy(&a1, a + i + VL, sizeof a1);
        memcpy(&b0, b + i, sizeof b0);
        memcpy(&b1, b + i + VL, sizeof b1);
        s0 += a0 * b0;
        s1 += a1 * b1;
    }
    s0 += s1;
    float s = 0.0f;
    for (int k = 0; k < VL; k++) s += s0[k];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* The problem, resolved once per call. */
typedef struct {
    int64_t T, C;       /* new tokens; qkv row width Hkv*(G+2)*hd */
    int64_t Hkv, G, hd; /* KV heads, query heads per KV head, head_dim */
    int64_t p0;         /* position of the first new token */
    float scale;
} dec_dims;

/* Column of query head qi (0..G-1) of KV head g in a qkv row; k_g and v_g follow
 * the group's G query heads. */
static size_t q_col(const dec_dims *a, int64_t g, int64_t qi) {
    return (size_t)((g * (a->G + 2) + qi) * a->hd);
}
static size_t k_col(const dec_dims *a, int64_t g) { return q_col(a, g, a->G); }

/* Token t, KV head g: out columns of its G query heads.
 * s [G, L] scores then probabilities, acc [G, hd] the weighted sum of V. */
static void decode_item(const dec_dims *a, const float *qkv, const float *kc, const float *vc,
                        int64_t t, int64_t g, float *out, float *s, float *acc) {
    const int64_t L = a->p0 + t + 1; /* keys 0 .. p0+t */
    const size_t kv_ld = (size_t)(a->Hkv * a->hd), kv_off = (size_t)(g * a->hd);
    const float *row = qkv + (size_t)t * (size_t)a->C;
    for (int64_t j = 0; j < L; j++) {
        const float *k = kc + (size_t)j * kv_ld + kv_off;
        for (int64_t qi = 0; qi < a->G; qi++)
            s[(size_t)qi * (size_t)L + (size_t)j] = a->scale * dot(row + q_col(a, g, qi), k, a->hd);
    }
    for (int64_t qi = 0; qi < a->G; qi++) {
        float *sq = s + (size_t)qi * (size_t)L;
        float m = -INFINITY, l = 0.0f;
        for (int64_t j = 0; j < L; j++) m = sq[j] > m ? sq[j] : m;
        for (int64_t j = 0; j < L; j++) {
            sq[j] = expf(sq[j] - m);
            l += sq[j];
        }
        float inv = 1.0f / l;
        for (int64_t j = 0; j < L; j++) sq[j] *= inv;
    }
    memset(acc, 0, (size_t)(a->G * a->hd) * sizeof *acc);
    for (int64_t j = 0; j < L; j++) { /* acc_q += p_qj · v_j   (keys in order) */
        const float *v = vc + (size_t)j * kv_ld + kv_off;
        for (int64_t qi = 0; qi < a->G; qi++) {
            float p = s[(size_t)qi * (size_t)L + (size_t)j];
            float *o = acc + (size_t)qi * (size_t)a->hd;
            for (int64_t d = 0; d < a->hd; d++) o[d] += p * v[d];
        }
    }
    const int64_t out_w = a->Hkv * a->G * a->hd;
    for (int64_t qi = 0; qi < a->G; qi++)
        memcpy(out + (size_t)t * (size_t)out_w + (size_t)((g * a->G + qi) * a->hd),
               acc + (size_t)qi * (size_t)a->hd, (size_t)a->hd * sizeof *acc);
}

int ct_cpu_attention_decode(const ct_tensor *qkv, int64_t p0, const ct_attn_params *p,
                            ct_tensor *k_cache, ct_tensor *v_cache, ct_tensor *out,
                            ct_arena *scratch) {
    dec_dims a = {.T = ct_rows(qkv), .C = ct_dim_from_end(qkv, 1), .Hkv = p->n_kv_heads,
                  .G = p->group, .hd = p->head_dim, .p0 = p0, .scale = p->scale};
    const int64_t max_len = ct_numel(k_cache) / (a.Hkv > 0 && a.hd > 0 ? a.Hkv * a.hd : 1);
    if (a.Hkv < 1 || a.G < 1 || a.hd < 1 || a.C != a.Hkv * (a.G + 2) * a.hd ||
        ct_numel(v_cache) != ct_numel(k_cache) || ct_numel(k_cache) != max_len * a.Hkv * a.hd)
        return ct_errorf(CT_EINPUT, "cached attention: qkv width %lld or cache size %lld does not match "
                         "%lld kv heads × (%lld+2) × head_dim %lld",
                         (long long)a.C, (long long)ct_numel(k_cache), (long long)a.Hkv,
                         (long long)a.G, (long long)a.hd);
    if (p0 < 0 || p0 + a.T > max_len)
        return ct_errorf(CT_EINPUT, "cached attention: positions %lld..%lld do not fit a cache of %lld",
                         (long long)p0, (long long)(p0 + a.T - 1), (long long)max_len);
    if (a.T == 0) return CT_OK;

    /* cache row p0+t, KV head g  <-  k_g, v_g of token t */
    const float *x = qkv->data;
    float *kc = k_cache->data, *vc = v_cache->data; /* [max_len, Hkv, hd] */
    for (int64_t t = 0; t < a.T; t++)
        for (int64_t g = 0; g < a.Hkv; g++) {
            size_t dst = ((size_t)(p0 + t) * (size_t)a.Hkv + (size_t)g) * (size_t)a.hd;
            const float *src = x + (size_t)t * (size_t)a.C + k_col(&a, g);
            memcpy(kc + dst, src, (size_t)a.hd * sizeof *kc);
            memcpy(vc + dst, src + a.hd, (size_t)a.hd * sizeof *vc);
        }
    if (!out) return CT_OK;

    const int nt = omp_get_max_threads();
    const int64_t L = p0 + a.T; /* longest key range of any item */
    const size_t ws = (size_t)(a.G * L + a.G * a.hd); /* floats per thread: s, acc */
    ct_arena_mark mark = ct_arena_get_mark(scratch);
    float *buf = ct_arena_alloc(scratch, (size_t)nt * ws * sizeof(float));
    if (!buf) {
        ct_arena_rewind(scratch, mark);
        return ct_error_wrap(CT_ERUNTIME, "cached attention: scratch for %lld keys", (long long)L);
    }
    const int64_t items = a.T * a.Hkv;
    const int par = a.T * a.Hkv * a.G * L * a.hd > 32768;
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int64_t it = 0; it < items; it++) {
        float *s = buf + (size_t)omp_get_thread_num() * ws; /* [G, L] */
        decode_item(&a, x, kc, vc, it / a.Hkv, it % a.Hkv, out->data, s, s + a.G * L);
    }
    ct_arena_rewind(scratch, mark);
    return CT_OK;
}
