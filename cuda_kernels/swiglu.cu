/* swiglu forward/backward, fp32 math; the scalar formulas are the shared
 * ones of ct_inline.h, exactly what autograd/cpu/swiglu.c runs. Buffers:
 * gate, up, y, dy, dgate, dup [n] activations (f32 or bf16, one dtype per
 * call; kernels templated on the storage A, cuda_common.cuh): loads widen to
 * f32, each result is rounded once when stored (dgate/dup: old value plus the
 * f32 term).
 *
 * Grid-stride loops: 8 elements per thread and step (16-byte loads and
 * stores, act_ld8/act_st8) over the first nv*8 elements, then the tail one
 * element at a time; nv = 0 (a pointer not 16-byte aligned) is the scalar
 * path. Both paths run the same per-element functions (same bits). */
#include "cuda_common.cuh"

static __device__ __forceinline__ float fwd_one(float g, float u) { return ct_silu_s(g, ct_sigmoidf(g)) * u; }

/* du += dy silu(g), dg += dy u silu'(g) (NULL: skipped), for one element. */
static __device__ __forceinline__ void bwd_one(float g, float u, float dy, float *dg, float *du) {
    const float s = ct_sigmoidf(g);
    if (du) *du = *du + dy * ct_silu_s(g, s);
    if (dg) *dg = *dg + dy * u * ct_dsilu_s(g, s);
}

template <class A>
static __global__ void swiglu_fwd_kernel(const A *g, const A *u, A *y, int64_t n, int64_t nv) {
    const int64_t t0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t v = t0; v < nv; v += step) {
        float gv[8], uv[8];
        act_ld8(g, 8 * v, gv);
        act_ld8(u, 8 * v, uv);
        for (int k = 0; k < 8; k++) gv[k] = fwd_one(gv[k], uv[k]);
        act_st8(y, 8 * v, gv);
    }
    for (int64_t i = 8 * nv + t0; i < n; i += step) act_st(y, i, fwd_one(act_ld(g, i), act_ld(u, i)));
}

template <class A>
static __global__ void swiglu_bwd_kernel(const A *g, const A *u, const A *dy, A *dg, A *du,
                                         int64_t n, int64_t nv) {
    const int64_t t0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t v = t0; v < nv; v += step) {
        float gv[8], uv[8], dv[8], dgv[8], duv[8];
        act_ld8(g, 8 * v, gv);
        act_ld8(u, 8 * v, uv);
        act_ld8(dy, 8 * v, dv);
        if (dg) act_ld8(dg, 8 * v, dgv);
        if (du) act_ld8(du, 8 * v, duv);
        for (int k = 0; k < 8; k++)
            bwd_one(gv[k], uv[k], dv[k], dg ? &dgv[k] : nullptr, du ? &duv[k] : nullptr);
        if (dg) act_st8(dg, 8 * v, dgv);
        if (du) act_st8(du, 8 * v, duv);
    }
    for (int64_t i = 8 * nv + t0; i < n; i += step) {
        float dgi = dg ? act_ld(dg, i) : 0.0f, dui = du ? act_ld(du, i) : 0.0f;
        bwd_one(act_ld(g, i), act_ld(u, i), act_ld(dy, i), dg ? &dgi : nullptr, du ? &dui : nullptr);
        if (dg) act_st(dg, i, dgi);
        if (du) act_st(du, i, dui);
    }
}

/* True when every given pointer (NULL: absent) is 16-byte aligned. */
static bool all16(const ct_tensor *a, const ct_tensor *b, const ct_tensor *c, const ct_tensor *d,
                  const ct_tensor *e) {
    const ct_tensor *t[5] = {a, b, c, d, e};
    for (int k = 0; k < 5; k++)
        if (t[k] && !aligned16(t[k]->data)) return false;
    return true;
}

template <class A>
static int swiglu_fwd_launch(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y, int64_t n) {
    const int64_t nv = all16(gate, up, y, nullptr, nullptr) ? n / 8 : 0;
    CT_LAUNCH(swiglu_fwd_kernel<A>, ew_grid(n, nv), kThreads, 0, (const A *)gate->data,
              (const A *)up->data, (A *)y->data, n, nv);
    return CT_OK;
}

template <class A>
static int swiglu_bwd_launch(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                             ct_tensor *dgate, ct_tensor *dup, int64_t n) {
    const int64_t nv = all16(gate, up, dy, dgate, dup) ? n / 8 : 0;
    CT_LAUNCH(swiglu_bwd_kernel<A>, ew_grid(n, nv), kThreads, 0, (const A *)gate->data,
              (const A *)up->data, (const A *)dy->data, dgate ? (A *)dgate->data : nullptr,
              dup ? (A *)dup->data : nullptr, n, nv);
    return CT_OK;
}

int ct_cuda_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y) {
    const ct_tensor *ts[] = {gate, up, y};
    const char *names[] = {"gate", "up", "y"};
    CT_TRY(act_check_same("swiglu", ts, names, 3));
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(gate, swiglu_fwd_launch, gate, up, y, n);
}

int ct_cuda_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                       ct_tensor *dgate, ct_tensor *dup) {
    if (!dgate && !dup) return CT_OK;
    const ct_tensor *ts[] = {gate, up, dy, dgate, dup};
    const char *names[] = {"gate", "up", "dy", "dgate", "dup"};
    CT_TRY(act_check_same("swiglu", ts, names, 5));
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(gate, swiglu_bwd_launch, gate, up, dy, dgate, dup, n);
}
