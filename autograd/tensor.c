#include "tensor.h"

#include <stdio.h>
#include <string.h>

#include "ct_error.h"
#include "ct_inline.h"

static const char *const k_names[CT_DTYPE_COUNT] = {"f32", "bf16", "f16", "i32", "u8", "nf4"};

const char *ct_dtype_name(ct_dtype dt) {
    return (dt >= 0 && dt < CT_DTYPE_COUNT) ? k_names[dt] : "?";
}

int ct_dtype_from_name(const char *s) {
    static const struct {
        const char *name;
        ct_dtype dt;
    } aliases[] = {
        {"f32", CT_F32},   {"fp32", CT_F32},    {"float32", CT_F32}, {"float", CT_F32},
        {"bf16", CT_BF16}, {"bfloat16", CT_BF16}, {"f16", CT_F16},   {"fp16", CT_F16},
        {"float16", CT_F16}, {"half", CT_F16},  {"i32", CT_I32},     {"int32", CT_I32},
        {"u8", CT_U8},     {"uint8", CT_U8},    {"nf4", CT_NF4},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(s, aliases[i].name) == 0) return (int)aliases[i].dt;
    return -1;
}

size_t ct_dtype_bytes(ct_dtype dt, int64_t n) {
    switch (dt) {
    case CT_F32:
    case CT_I32: return (size_t)n * 4;
    case CT_BF16:
    case CT_F16: return (size_t)n * 2;
    case CT_U8: return (size_t)n;
    case CT_NF4: return (size_t)(n + 1) / 2;
    default: return 0;
    }
}

int64_t ct_numel(const ct_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t ct_nbytes(const ct_tensor *t) { return ct_dtype_bytes(t->dtype, ct_numel(t)); }

int64_t ct_dim_from_end(const ct_tensor *t, int i) {
    return (i >= 1 && i <= t->ndim) ? t->shape[t->ndim - i] : 1;
}

int64_t ct_rows(const ct_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++) n *= t->shape[i];
    return n;
}

int ct_tensor_init(ct_tensor *t, ct_dtype dt, ct_device dev, int ndim, const int64_t *shape,
                   void *data) {
    if (ndim < 1 || ndim > CT_MAX_DIMS)
        return ct_errorf(CT_EINPUT, "tensor rank %d not in 1..%d", ndim, CT_MAX_DIMS);
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->device = dev;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ct_errorf(CT_EINPUT, "negative dimension %lld", (long long)shape[i]);
        t->shape[i] = shape[i];
    }
    t->data = data;
    return CT_OK;
}

bool ct_same_shape(const ct_tensor *a, const ct_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *ct_shape_str(const ct_tensor *t, char *buf, size_t cap) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, cap - off, "[");
    for (int i = 0; i < t->ndim && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
    return buf;
}

/* One loop per (src, dst) pair so each vectorizes; the dtype switch is outside. */
#define CT_CONVERT_LOOP(DST_T, SRC_T, EXPR)                                     \
    do {                                                                        \
        DST_T *d_ = (DST_T *)dst;                                               \
        const SRC_T *s_ = (const SRC_T *)src;                                   \
        _Pragma("omp parallel for simd schedule(static) if (n > 65536)")        \
        for (int64_t i = 0; i < n; i++) d_[i] = EXPR(s_[i]);                    \
    } while (0)

int ct_convert(void *dst, ct_dtype dst_dt, const void *src, ct_dtype src_dt, int64_t n) {
    bool ok_src = src_dt == CT_F32 || src_dt == CT_BF16 || src_dt == CT_F16;
    bool ok_dst = dst_dt == CT_F32 || dst_dt == CT_BF16 || dst_dt == CT_F16;
    if (!ok_src || !ok_dst)
        return ct_errorf(CT_EINPUT, "cannot convert %s to %s", ct_dtype_name(src_dt),
                         ct_dtype_name(dst_dt));
    if (src_dt == dst_dt) {
        memmove(dst, src, ct_dtype_bytes(src_dt, n));
        return CT_OK;
    }
    if (dst_dt == CT_F32) {
        if (src_dt == CT_BF16) CT_CONVERT_LOOP(float, uint16_t, ct_bf16_to_f32);
        else CT_CONVERT_LOOP(float, uint16_t, ct_f16_to_f32);
    } else if (src_dt == CT_F32) {
        if (dst_dt == CT_BF16) CT_CONVERT_LOOP(uint16_t, float, ct_f32_to_bf16);
        else CT_CONVERT_LOOP(uint16_t, float, ct_f32_to_f16);
    } else if (dst_dt == CT_BF16) { /* f16 -> bf16 through f32 (exact, then rounded once) */
#define CT_F16_TO_BF16(x) ct_f32_to_bf16(ct_f16_to_f32(x))
        CT_CONVERT_LOOP(uint16_t, uint16_t, CT_F16_TO_BF16);
    } else {
#define CT_BF16_TO_F16(x) ct_f32_to_f16(ct_bf16_to_f32(x))
        CT_CONVERT_LOOP(uint16_t, uint16_t, CT_BF16_TO_F16);
    }
    return CT_OK;
}

const char *ct_device_name(ct_device dev) {
    switch (dev) {
    case CT_CPU: return "cpu";
    case CT_CUDA: return "cuda";
    case CT_GUARDED: return "guarded";
    case CT_CUDA_EMU: return "cuda-emu";
    }
    return "unknown device";
}
