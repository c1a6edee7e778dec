/* swiglu forward/backward, one thread per element, fp32 math; the scalar
 * formulas are the shared ones of ct_inline.h, exactly what autograd/cpu/swiglu.c
 * runs. Buffers: gate, up, y, dy, dgate, dup [n] activations (f32 or bf16,
 * one dtype per call; kernels templated on the storage A, cuda_common.cuh):
 * loads widen to f32, each result is rounded once when stored (dgate/dup:
 * old value plus the f32 term). */
#include "cuda_common.cuh"

template <class A>
static __global__ void swiglu_fwd_kernel(const A *g, const A *u, A *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float gi = act_ld(g, i);
        act_st(y, i, ct_silu_s(gi, ct_sigmoidf(gi)) * act_ld(u, i));
    }
}

template <class A>
static __global__ void swiglu_bwd_kernel(const A *g, const A *u, const A *dy, A *dg, A *du,
                                         int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float gi = act_ld(g, i), di = act_ld(dy, i);
        const float s = ct_sigmoidf(gi);
        if (du) act_st(du, i, act_ld(du, i) + di * ct_silu_s(gi, s));
        if (dg) act_st(dg, i, act_ld(dg, i) + di * act_ld(u, i) * ct_dsilu_s(gi, s));
    }
}

/* CT_EINPUT unless a is an activation dtype and every other given tensor
 * (NULL: absent) has a's dtype. */
static int check_acts(const ct_tensor *a, const ct_tensor *b, const ct_tensor *c,
                      const ct_tensor *d, const ct_tensor *e) {
    CT_TRY(act_check(a, "swiglu"));
    const ct_tensor *o[4] = {b, c, d, e};
    for (int k = 0; k < 4; k++)
        if (o[k] && o[k]->dtype != a->dtype)
            return ct_errorf(CT_EINPUT, "swiglu: activations of mixed dtypes (%s and %s)",
                             ct_dtype_name(a->dtype), ct_dtype_name(o[k]->dtype));
    return CT_OK;
}

template <class A>
static int swiglu_fwd_launch(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y, int64_t n) {
    CT_LAUNCH(swiglu_fwd_kernel<A>, blocks_for(n), kThreads, 0, (const A *)gate->data,
              (const A *)up->data, (A *)y->data, n);
    return CT_OK;
}

template <class A>
static int swiglu_bwd_launch(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                             ct_tensor *dgate, ct_tensor *dup, int64_t n) {
    CT_LAUNCH(swiglu_bwd_kernel<A>, blocks_for(n), kThreads, 0, (const A *)gate->data,
              (const A *)up->data, (const A *)dy->data, dgate ? (A *)dgate->data : nullptr,
              dup ? (A *)dup->data : nullptr, n);
    return CT_OK;
}

int ct_cuda_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y) {
    CT_TRY(check_acts(gate, up, y, nullptr, nullptr));
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(gate, swiglu_fwd_launch, gate, up, y, n);
}

int ct_cuda_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy,
                       ct_tensor *dgate, ct_tensor *dup) {
    if (!dgate && !dup) return CT_OK;
    CT_TRY(check_acts(gate, up, dy, dgate, dup));
    int64_t n = ct_numel(gate);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(gate, swiglu_bwd_launch, gate, up, dy, dgate, dup, n);
}
