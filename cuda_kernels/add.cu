/* axpy (the residual add and its backward) and add_fwd (the residual add in
 * one pass), one thread per element; the twin of autograd/cpu/add.c. Buffers:
 * x, y, a, b [n], all of one dtype: f32 or bf16 (activations and their grads;
 * axpy is also called on f32 tensors that are not activations: the tensors'
 * own dtype picks the instance). Math in f32, each result rounded once when
 * stored. */
#include "cuda_common.cuh"

template <class A> static __global__ void axpy_kernel(float alpha, const A *x, A *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) act_st(y, i, act_ld(y, i) + alpha * act_ld(x, i));
}

/* y = a + b; y may be a or b: each element is read before it is written, by
 * the same thread. */
template <class A> static __global__ void add_fwd_kernel(const A *a, const A *b, A *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) act_st(y, i, act_ld(a, i) + act_ld(b, i));
}

/* CT_EINPUT unless a is f32/bf16 and b and c have its dtype (c may be NULL). */
static int check_same(const char *op, const ct_tensor *a, const ct_tensor *b, const ct_tensor *c) {
    CT_TRY(act_check(a, op));
    const ct_tensor *o[2] = {b, c};
    for (int k = 0; k < 2; k++)
        if (o[k] && o[k]->dtype != a->dtype)
            return ct_errorf(CT_EINPUT, "%s: tensors of mixed dtypes (%s and %s)", op,
                             ct_dtype_name(a->dtype), ct_dtype_name(o[k]->dtype));
    return CT_OK;
}

template <class A> static int axpy_launch(float alpha, const ct_tensor *x, ct_tensor *y, int64_t n) {
    CT_LAUNCH(axpy_kernel<A>, blocks_for(n), kThreads, 0, alpha, (const A *)x->data, (A *)y->data, n);
    return CT_OK;
}

template <class A>
static int add_fwd_launch(const ct_tensor *a, const ct_tensor *b, ct_tensor *y, int64_t n) {
    CT_LAUNCH(add_fwd_kernel<A>, blocks_for(n), kThreads, 0, (const A *)a->data,
              (const A *)b->data, (A *)y->data, n);
    return CT_OK;
}

int ct_cuda_axpy(float alpha, const ct_tensor *x, ct_tensor *y) {
    CT_TRY(check_same("axpy", x, y, nullptr));
    int64_t n = ct_numel(x);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(x, axpy_launch, alpha, x, y, n);
}

int ct_cuda_add_fwd(const ct_tensor *a, const ct_tensor *b, ct_tensor *y) {
    CT_TRY(check_same("add", a, b, y));
    int64_t n = ct_numel(a);
    if (n == 0) return CT_OK;
    return CT_ACT_DISPATCH(a, add_fwd_launch, a, b, y, n);
}
