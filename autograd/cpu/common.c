/* Shared CPU helpers: reading frozen weights of any float dtype (and nf4/fp4) as f32. */
#include <string.h>

#include "../ct_error.h"
#include "../ct_inline.h"
#include "../quant.h"
#include "cpu_kernels.h"

float ct_cpu_load(const ct_tensor *t, int64_t i) {
    switch (t->dtype) {
    case CT_BF16: return ct_bf16_to_f32(((const uint16_t *)t->data)[i]);
    case CT_F16: return ct_f16_to_f32(((const uint16_t *)t->data)[i]);
    default: return ((const float *)t->data)[i];
    }
}

/* An nf4/fp4 weight's quant state is valid and covers the whole tensor. */
static int check_quant(const ct_tensor *w) {
    const ct_quant_state *st = w->quant;
    CT_TRY(ct_quant_check(st, w->name));
    if (st->n != ct_numel(w))
        return ct_errorf(CT_EINPUT, "weight %s: quant state holds %lld elements, the tensor %lld",
                         w->name ? w->name : "?", (long long)st->n, (long long)ct_numel(w));
    return CT_OK;
}

static int unsupported(const ct_tensor *w) {
    return ct_errorf(CT_EINPUT, "weight %s: dtype %s not supported by the CPU backend yet",
                     w->name ? w->name : "?", ct_dtype_name(w->dtype));
}

int ct_cpu_weight_rows_f32(const ct_tensor *w, int64_t r0, int64_t n, float *dst) {
    int64_t cols = ct_dim_from_end(w, 1);
    size_t off = (size_t)r0 * (size_t)cols;
    size_t count = (size_t)n * (size_t)cols;
    switch (w->dtype) {
    case CT_F32: memcpy(dst, (const float *)w->data + off, count * sizeof(float)); return CT_OK;
    case CT_BF16:
    case CT_F16: return ct_convert(dst, CT_F32, (const uint16_t *)w->data + off, w->dtype, (int64_t)count);
    case CT_NF4: /* nf4/fp4: rows are a range of the flattened weight; blocks may span rows */
        CT_TRY(check_quant(w));
        return ct_quant_dequantize(w->quant, (int64_t)off, (int64_t)count, dst);
    default: return unsupported(w);
    }
}

int ct_cpu_weight_rows_bf16(const ct_tensor *w, int64_t r0, int64_t n, uint16_t *dst) {
    int64_t cols = ct_dim_from_end(w, 1);
    size_t off = (size_t)r0 * (size_t)cols;
    size_t count = (size_t)n * (size_t)cols;
    switch (w->dtype) {
    case CT_BF16: memcpy(dst, (const uint16_t *)w->data + off, count * sizeof(uint16_t)); return CT_OK;
    case CT_F32: return ct_convert(dst, CT_BF16, (const float *)w->data + off, CT_F32, (int64_t)count);
    case CT_F16: return ct_convert(dst, CT_BF16, (const uint16_t *)w->data + off, CT_F16, (int64_t)count);
    case CT_NF4:
        CT_TRY(check_quant(w));
        return ct_quant_dequantize_bf16(w->quant, (int64_t)off, (int64_t)count, dst);
    default: return unsupported(w);
    }
}

int64_t ct_cpu_rows_within(size_t bytes, int64_t cols, int64_t rows) {
    int64_t n = (int64_t)(bytes / ((size_t)(cols > 0 ? cols : 1) * sizeof(float)));
    if (n < 1) n = 1;
    return n < rows ? n : rows;
}

int ct_cpu_axpy(float alpha, const ct_tensor *x, ct_tensor *y) {
    const float *xs = x->data;
    float *ys = y->data;
    int64_t n = ct_numel(x);
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) ys[i] += alpha * xs[i];
    return CT_OK;
}
