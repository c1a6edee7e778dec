/* Private to trainer/model*.c: reading bitsandbytes 4-bit weights out of a
 * safetensors checkpoint (model_bnb.c). Not part of the public API. */
#ifndef CT_MODEL_INTERNAL_H
#define CT_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "autograd/quant.h"
#include "trainer/io/safetensors.h"

/* The tensors of one bitsandbytes 4-bit weight "X.weight" and its parsed
 * quant_state JSON. Pointers are into the checkpoint (not owned). */
typedef struct {
    const ct_st_tensor *codes;            /* X.weight: u8 [(n+1)/2, 1] */
    const ct_st_tensor *absmax;           /* X.weight.absmax: u8 [nblocks] nested, else f32 */
    const ct_st_tensor *quant_map;        /* f32 [16] */
    const ct_st_tensor *nested_absmax;    /* f32 [ceil(nblocks / nested_blocksize)], or NULL */
    const ct_st_tensor *nested_quant_map; /* f32 [256], or NULL */
    const ct_st_tensor *state;            /* u8 JSON bytes */
    ct_quant_type type;
    int blocksize, nested_blocksize;
    bool nested;
    float offset;
    ct_dtype src_dtype;
} ct_bnb_weight;

/* Whether "<wname>.quant_state.bitsandbytes__nf4" (or __fp4) exists. */
bool ct_bnb_present(const ct_st_file *f, const char *wname);

/* Finds and checks every part of the 4-bit weight `wname` whose original
 * shape must be [rows, cols]; CT_EINPUT naming the tensor and file otherwise.
 * Marks the parts' file indices in used[] (indexed like ct_st_at). */
int ct_bnb_probe(const ct_st_file *f, const char *wname, int64_t rows, int64_t cols, bool *used,
                 ct_bnb_weight *bw);

/* Bytes of f32 arrays that are misaligned in the mapping and must be copied. */
size_t ct_bnb_copy_bytes(const ct_bnb_weight *bw);

/* Fills st (borrowed arrays, st->owned NULL) for a probed weight; misaligned
 * f32 arrays are copied to *cursor, which advances. */
int ct_bnb_state(const ct_bnb_weight *bw, int64_t rows, int64_t cols, const char *wname,
                 ct_quant_state *st, unsigned char **cursor);

/* Index of a tensor of f (a pointer returned by ct_st_find/ct_st_at). */
size_t ct_st_index_of(const ct_st_file *f, const ct_st_tensor *t);

#endif
