/* axpy (the residual add and its backward) and add_fwd (the residual add in
 * one pass); the twin of autograd/cpu/add.c. Buffers: x, y, a, b [n], all of
 * one dtype: f32 or bf16 (activations and their grads; axpy is also called
 * on f32 tensors that are not activations: the tensors' own dtype picks the
 * instance). Math in f32, each result rounded once when stored.
 *
 * Grid-stride loops: 8 elements per thread and step (16-byte loads and
 * stores, cuda_common.cuh act_ld8/act_st8) over the first nv*8 elements, then
 * the tail one element at a time; nv = 0 (every pointer not 16-byte aligned)
 * is the scalar path. Both paths compute each element with the same
 * expression (axpy_one, add_one), so they give the same bits. */
#include "cuda_common.cuh"

static __device__ __forceinline__ float axpy_one(float alpha, float x, float y) { return y + alpha * x; }
static __device__ __forceinline__ float add_one(float a, float b) { return a + b; }

template <class A>
static __global__ void axpy_kernel(float alpha, const A *x, A *y, int64_t n, int64_t nv) {
    const int64_t t0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t v = t0; v < nv; v += step) {
        float xv[8], yv[8];
        act_ld8(x, 8 * v, xv);
        act_ld8(y, 8 * v, yv);
        for (int k = 0; k < 8; k++) yv[k] = axpy_one(alpha, xv[k], yv[k]);
        act_st8(y, 8 * v, yv);
    }
    for (int64_t i = 8 * nv + t0; i < n; i += step) act_st(y, i, axpy_one(alpha, act_ld(x, i), act_ld(y, i)));
}

/* y = a + b; y may be a or b: each element is read before it is written, by
 * the same thread. */
template <class A>
static __global__ void add_fwd_kernel(const A *a, const A *b, A *y, int64_t n, int64_t nv) {
    const int64_t t0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t v = t0; v < nv; v += step) {
        float av[8], bv[8];
        act_ld8(a, 8 * v, av);
        act_ld8(b, 8 * v, bv);
        for (int k = 0; k < 8; k++) av[k] = add_one(av[k], bv[k]);
        act_st8(y, 8 * v, av);
    }
    for (int64_t i = 8 * nv + t0; i < n; i += step) act_st(y, i, add_one(act_ld(a, i), act_ld(b, i)));
}

template <class A> static int axpy_launch(float alpha, const ct_tensor *x, ct_tensor *y, int64_t n) {
    const int64_t nv = aligned16(x->data) && aligned16(y->data) ? n / 8 : 0;
    CT_LAUNCH(axpy_kernel<A>, ew_grid(n, nv), kThreads, 0, alpha, (const A *)x->data, (A *)y->data,
              n, nv);
    return CT_OK;
}

template <class A>
static int add_fwd_launch(const ct_tensor *a, const ct_tensor *b, ct_tensor *y, int64_t n) {
    const int64_t nv = aligned16(a->data) && aligned16(b->data) && aligned16(y->data) ? n / 8 : 0;
    CT_LAUNCH(add_fwd_kernel<A>, ew_grid(n, nv), kThreads, 0, (const A *)a->data,
              (const A *)b->data, (A *)y->data, n, nv);
    return CT_OK;
}

int ct_cuda_axpy(float alpha, const ct_tensor *x, ct_tensor *y) {
    const ct_tensor *ts[] = {x, y};
    const char *names[] = {"x", "y"};
    CT_TRY(act_check_same("axpy", ts, names, 2));
    int64_t n = ct_numel(x);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(x, axpy_launch, alpha, x, y, n);
}

int ct_cuda_add_fwd(const ct_tensor *a, const ct_tensor *b, ct_tensor *y) {
    const ct_tensor *ts[] = {a, b, y};
    const char *names[] = {"a", "b", "y"};
    CT_TRY(act_check_same("add", ts, names, 3));
    int64_t n = ct_numel(a);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(a, add_fwd_launch, a, b, y, n);
}
