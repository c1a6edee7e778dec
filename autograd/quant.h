/* 4-bit blockwise quantization (NF4 / FP4) bit-compatible with bitsandbytes,
 * with optional double quantization of the per-block absmax.
 *
 * Ownership: ct_quant_quantize allocates the state's arrays in one block that
 * the state owns (st->owned); ct_quant_free releases it. A loader may instead
 * fill a state with borrowed arrays (owned = NULL: ct_quant_free then only
 * clears it) and check it with ct_quant_check. A CT_NF4 tensor made by
 * ct_quant_tensor points at the state (t->quant) and its codes (t->data) and
 * owns neither: the state must outlive the tensor.
 *
 * Layout (bitsandbytes): the weight is flattened row-major; element i belongs
 * to block i / blocksize; byte i/2 of `codes` holds element i in its high nibble
 * when i is even, in its low nibble when odd. An odd element count pads the
 * last low nibble with the code of 0.0f * (1/absmax), as bnb's kernel does
 * (NF4: 7 when the block's absmax > 0, 0 when it is 0; FP4: 0).
 * Value of element i: code[c_i] * absmax(i / blocksize), where absmax(b) is
 * absmax[b], or with double quantization
 * map8[qabsmax[b]] * nested_absmax[b / nested_blocksize] + offset. */
#ifndef CT_QUANT_H
#define CT_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CT_QUANT_NF4 = 0, CT_QUANT_FP4 = 1 } ct_quant_type;

#define CT_QUANT_DEFAULT_BLOCKSIZE 64
#define CT_QUANT_NESTED_BLOCKSIZE 256 /* bnb's blocksize for double quantization */

typedef struct ct_quant_state {
    ct_quant_type type;
    int blocksize;               /* elements per absmax block: a power of two, 32..4096 */
    ct_dtype src_dtype;          /* dtype of the quantized weights (bnb quant_state "dtype") */
    int ndim;
    int64_t shape[CT_MAX_DIMS];  /* shape of the original weight */
    int64_t n;                   /* elements = product of shape */
    int64_t nblocks;             /* ceil(n / blocksize) */
    uint8_t *codes;              /* [(n+1)/2] packed 4-bit codes */
    float code[16];              /* value of each 4-bit code (bnb "quant_map") */
    /* absmax: plain (nested false) ... */
    float *absmax;               /* [nblocks] f32; NULL when nested */
    /* ... or double-quantized (nested true) */
    bool nested;
    uint8_t *qabsmax;            /* [nblocks] 8-bit codes of absmax - offset */
    float *nested_absmax;        /* [ceil(nblocks / nested_blocksize)] f32 */
    float offset;                /* mean of the block absmax values (bnb "nested_offset") */
    int nested_blocksize;        /* 256 */
    float map8[256];             /* the 8-bit map (bnb "nested_quant_map") */
    void *owned;                 /* the allocation behind the arrays, or NULL when borrowed */
} ct_quant_state;

typedef struct {
    ct_quant_type type;  /* CT_QUANT_NF4 (bnb_4bit_quant_type "nf4") or CT_QUANT_FP4 */
    int blocksize;       /* 0 = 64 */
    bool double_quant;   /* bnb_4bit_use_double_quant */
    const float *map8;   /* ascending 256-entry map for double quantization (e.g. a
                            checkpoint's nested_quant_map); NULL = ct_quant_dynamic_map */
} ct_quant_params;

/* Quantizes `src` (f32, bf16 or f16, shape[ndim], contiguous) into a fresh
 * state (any previous content of *st is overwritten, not freed). Uses OpenMP.
 * CT_EINPUT, naming `name`, for a bad blocksize or shape, an empty tensor or a
 * non-finite weight; CT_ERUNTIME when out of memory. */
int ct_quant_quantize(ct_quant_state *st, const void *src, ct_dtype src_dt, int ndim,
                      const int64_t *shape, const ct_quant_params *p, const char *name);

/* Writes elements [e0, e0 + count) of the weight as f32 into dst[count].
 * OpenMP-parallel over blocks when called outside a parallel region; the
 * result does not depend on the thread count. CT_EINPUT when the range is
 * outside the weight. */
int ct_quant_dequantize(const ct_quant_state *st, int64_t e0, int64_t count, float *dst);
/* The same as bf16 bits (each f32 value rounded to nearest even, as
 * bitsandbytes dequantizes to a bf16 compute dtype), for the bf16 GEMMs. */
int ct_quant_dequantize_bf16(const ct_quant_state *st, int64_t e0, int64_t count, uint16_t *dst);

/* The absmax of blocks [b0, b0 + count) as f32 (dequantizing the nested form). */
int ct_quant_absmax(const ct_quant_state *st, int64_t b0, int64_t count, float *dst);

/* Checks that a state is consistent (type, blocksize, sizes, arrays present);
 * CT_EINPUT naming `name` with what is wrong. O(1). */
int ct_quant_check(const ct_quant_state *st, const char *name);

/* Fills a CT_NF4 tensor header (device cpu: where a state is made) for the
 * state: shape = st->shape, data = st->codes, quant = st, name = name (not
 * copied). ct_model_place moves the arrays and sets the device. */
int ct_quant_tensor(ct_tensor *t, const ct_quant_state *st, const char *name);

/* Frees what the state owns and clears it. NULL is fine. */
void ct_quant_free(ct_quant_state *st);

/* bnb's create_dynamic_map(signed=True): 256 ascending values in [-1, 1],
 * bit for bit (tests/data/bnb_dynamic_map.txt), computed in fp32 the way x86
 * torch computes it (see quant.c). */
void ct_quant_dynamic_map(float map[256]);

/* The 16 code values of a type (NF4 or FP4). */
void ct_quant_code_table(ct_quant_type type, float code[16]);

/* "nf4" / "fp4"; and the reverse (-1 when unknown). */
const char *ct_quant_type_name(ct_quant_type type);
int ct_quant_type_from_name(const char *name);

#ifdef __cplusplus
}
#endif
#endif
