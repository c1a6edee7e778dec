/* Cached ("decode") attention for generation; the twin of
 * autograd/cpu/attention_decode.c.
 *
 * Buffers: qkv [T, C], C = Hkv*(G+2)*hd (per KV head g: G query heads, then
 * k_g, then v_g; already rotated) for tokens at positions p0 .. p0+T-1;
 * k_cache, v_cache [max_len, Hkv, hd]; out [T, Hq*hd] (optional). qkv, the
 * caches and out are activations: all f32 or all bf16 (template A; the copy
 * moves the stored bits, the attention widens each element to f32).
 * 1. dec_copy_kernel: one thread per element, cache row p0+t, head g <- k_g, v_g
 *    of token t.
 * 2. (out != NULL) dec_attn_kernel: block = (token t, query head h), DEC_WARPS
 *    warps; warp w takes the keys j = w, w + DEC_WARPS, ... <= p0+t of KV head
 *    h / G with its own online softmax (lanes split head_dim; q·k by a warp
 *    sum, s = scale·q·k); the warps' (m, l, o) are then merged in warp order.
 *    Shared: q [hd], o [DEC_WARPS, hd], m, l [DEC_WARPS]. fp32 throughout;
 *    every sum in a fixed order (results repeat run to run). Rounded to bf16
 *    only on the store of out (bf16 activations). */
#include "cuda_common.cuh"

enum { DEC_WARPS = 4, DEC_THREADS = 32 * DEC_WARPS };

template <class A>
static __global__ void dec_copy_kernel(const A *qkv, int64_t T, int64_t C, int64_t Hkv, int64_t G, int64_t hd,
                                       int64_t p0, A *kc, A *vc) {
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; /* over [T, Hkv, hd] */
    if (e >= T * Hkv * hd) return;
    const int64_t d = e % hd, g = (e / hd) % Hkv, t = e / (hd * Hkv);
    const A *src = qkv + t * C + (g * (G + 2) + G) * hd + d;
    const int64_t dst = p0 * Hkv * hd + e; /* row p0+t, head g, dim d */
    kc[dst] = src[0];
    vc[dst] = src[hd];
}

template <class A>
static __global__ void dec_attn_kernel(const A *qkv, const A *kc, const A *vc, int64_t C, int Hkv, int G, int hd,
                                       int64_t p0, float scale, A *out) {
    CT_DYN_SHARED(float, sh);
    float *qs = sh;                  /* [hd] */
    float *os = qs + hd;             /* [DEC_WARPS, hd] */
    float *ms = os + DEC_WARPS * hd; /* [DEC_WARPS] */
    float *ls = ms + DEC_WARPS;      /* [DEC_WARPS] */
    const int t = blockIdx.x, h = blockIdx.y, g = h / G;
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    const A *q = qkv + (int64_t)t * C + ((int64_t)g * (G + 2) + h % G) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = act_ld(q, d);
    for (int e = threadIdx.x; e < DEC_WARPS * hd; e += blockDim.x) os[e] = 0.0f;
    __syncthreads();

    const int64_t L = p0 + t + 1, kv_ld = (int64_t)Hkv * hd; /* keys 0 .. p0+t */
    float *o = os + w * hd;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = w; j < L; j += DEC_WARPS) { /* warp-uniform loop */
        const A *k = kc + j * kv_ld + (int64_t)g * hd, *v = vc + j * kv_ld + (int64_t)g * hd;
        float part = 0.0f;
        for (int d = lane; d < hd; d += 32) part += qs[d] * act_ld(k, d);
        const float s = scale * warp_sum(part);
        const float mn = fmaxf(m, s);
        const float alpha = ct_expf(m - mn); /* m = -inf on the first key: 0 */
        const float pj = ct_expf(s - mn);
        l = l * alpha + pj;
        m = mn;
        for (int d = lane; d < hd; d += 32) o[d] = o[d] * alpha + pj * act_ld(v, d);
    }
    if (lane == 0) ms[w] = m, ls[w] = l;
    __syncthreads();

    float mx = -INFINITY;
    for (int u = 0; u < DEC_WARPS; u++) mx = fmaxf(mx, ms[u]);
    float f[DEC_WARPS], sum = 0.0f;
    for (int u = 0; u < DEC_WARPS; u++) { /* a warp without keys: m = -inf, weight 0 */
        f[u] = ct_expf(ms[u] - mx);
        sum += ls[u] * f[u];
    }
    const float inv = 1.0f / sum;
    A *y = out + (int64_t)t * Hkv * G * hd + (int64_t)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int u = 0; u < DEC_WARPS; u++) acc += os[u * hd + d] * f[u];
        act_st(y, d, acc * inv);
    }
}

template <class A>
static int dec_run(const ct_tensor *qkv, int64_t T, int64_t C, int64_t Hkv, int64_t G, int64_t hd, int64_t p0,
                   float scale, ct_tensor *k_cache, ct_tensor *v_cache, ct_tensor *out) {
    A *kc = (A *)k_cache->data, *vc = (A *)v_cache->data;
    const A *x = (const A *)qkv->data;
    CT_LAUNCH(dec_copy_kernel<A>, blocks_for(T * Hkv * hd), kThreads, 0, x, T, C, Hkv, G, hd, p0, kc, vc);
    if (!out) return CT_OK;
    const size_t smem = (size_t)((1 + DEC_WARPS) * hd + 2 * DEC_WARPS) * sizeof(float);
    CT_LAUNCH(dec_attn_kernel<A>, dim3((unsigned)T, (unsigned)(Hkv * G)), DEC_THREADS, smem, x, kc, vc, C, (int)Hkv,
              (int)G, (int)hd, p0, scale, (A *)out->data);
    return CT_OK;
}

int ct_cuda_attention_decode(const ct_tensor *qkv, int64_t p0, const ct_attn_params *p, ct_tensor *k_cache,
                             ct_tensor *v_cache, ct_tensor *out, ct_arena *scratch) {
    (void)scratch;
    const int64_t T = ct_rows(qkv), C = ct_dim_from_end(qkv, 1), Hkv = p->n_kv_heads, G = p->group,
                  hd = p->head_dim;
    const int64_t max_len = ct_numel(k_cache) / (Hkv > 0 && hd > 0 ? Hkv * hd : 1);
    if (Hkv < 1 || G < 1 || hd < 1 || C != Hkv * (G + 2) * hd || ct_numel(v_cache) != ct_numel(k_cache) ||
        ct_numel(k_cache) != max_len * Hkv * hd)
        return ct_errorf(CT_EINPUT,
                         "cached attention: qkv width %lld or cache size %lld does not match "
                         "%lld kv heads × (%lld+2) × head_dim %lld",
                         (long long)C, (long long)ct_numel(k_cache), (long long)Hkv, (long long)G, (long long)hd);
    if (p0 < 0 || p0 + T > max_len)
        return ct_errorf(CT_EINPUT, "cached attention: positions %lld..%lld do not fit a cache of %lld",
                         (long long)p0, (long long)(p0 + T - 1), (long long)max_len);
    const ct_tensor *acts[] = {qkv, k_cache, v_cache, out};
    const char *names[] = {"qkv", "k_cache", "v_cache", "out"};
    CT_TRY(act_check_same("cached attention", acts, names, 4));
    if (T == 0) return CT_OK;
    return CT_ACT_DISPATCH(qkv, dec_run, qkv, T, C, Hkv, G, hd, p0, p->scale, k_cache, v_cache, out);
}
