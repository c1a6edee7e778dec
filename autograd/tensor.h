/* Tensors: dtype, shape (up to 4-D, contiguous row-major), device, optional grad.
 *
 * A tensor struct never owns its data: the storage belongs to an arena (per-step
 * activations, see arena.h) or to a parameter block (long-lived weights, LoRA
 * params, optimizer state). Grads of trainable tensors are always f32. */
#ifndef CT_TENSOR_H
#define CT_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CT_MAX_DIMS 4

typedef enum {
    CT_F32 = 0,
    CT_BF16,
    CT_F16,
    CT_I32,
    CT_U8,
    CT_NF4, /* two 4-bit codes per byte, even element in the high nibble; see quant state */
    CT_DTYPE_COUNT
} ct_dtype;

/* Where a tensor's memory is. CT_GUARDED: the tests' guarded backend (host
 * pages the host may not touch outside backend calls), a device like CUDA.
 * CT_CUDA_EMU: the emulated CUDA backend (host memory behind the CUDA runtime
 * calls of cuda_kernels/emu/). */
typedef enum { CT_CPU = 0, CT_CUDA = 1, CT_GUARDED = 2, CT_CUDA_EMU = 3 } ct_device;

const char *ct_device_name(ct_device dev); /* "cpu", "cuda", "guarded", "cuda-emu" */

typedef struct ct_tensor {
    ct_dtype dtype;
    ct_device device;
    int ndim;
    int64_t shape[CT_MAX_DIMS];
    void *data;             /* not owned */
    struct ct_tensor *grad; /* f32, same shape; NULL until a gradient reaches it */
    bool requires_grad;     /* trainable leaf, or computed from one while recording */
    const char *name;       /* for messages; may be NULL; not owned */
    const void *quant;      /* CT_NF4 (nf4 or fp4) weights: their ct_quant_state (quant.h),
                               whose codes are `data`; not owned */
} ct_tensor;

const char *ct_dtype_name(ct_dtype dt);
/* Parses "f32"/"float32"/"fp32", "bf16"/"bfloat16", "f16"/"fp16"/"float16", ...;
 * returns -1 when unknown. */
int ct_dtype_from_name(const char *name);

/* Bytes needed for n elements (nf4: ceil(n/2)). */
size_t ct_dtype_bytes(ct_dtype dt, int64_t n);

int64_t ct_numel(const ct_tensor *t);
size_t ct_nbytes(const ct_tensor *t);
/* Size of dim i counted from the end (i=1 is the last); 1 past ndim. */
int64_t ct_dim_from_end(const ct_tensor *t, int i);
/* Product of all dims but the last: the "rows" of a row-major matrix view. */
int64_t ct_rows(const ct_tensor *t);

/* Fills a tensor header (no storage). ndim 1..4; returns 0 or CT_EINPUT. */
int ct_tensor_init(ct_tensor *t, ct_dtype dt, ct_device dev, int ndim, const int64_t *shape,
                   void *data);

bool ct_same_shape(const ct_tensor *a, const ct_tensor *b);
/* "[2, 3, 4]" into buf; returns buf. */
const char *ct_shape_str(const ct_tensor *t, char *buf, size_t cap);

/* Element-wise conversions between host buffers (n elements). Supported:
 * f32/bf16/f16 in any direction (rounding to nearest even). */
int ct_convert(void *dst, ct_dtype dst_dt, const void *src, ct_dtype src_dt, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
