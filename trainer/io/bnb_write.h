/* Writing bitsandbytes 4-bit weights into a streamed safetensors file, as
 * transformers saves a model loaded with load_in_4bit (docs/DESIGN.md, "bitsandbytes 4-bit checkpoints").
 * Used by ctuner merge --quantize and ctuner quantize (trainer/model/merge.c).
 *
 * A 4-bit weight "X.weight" becomes the parts bitsandbytes' state_dict has:
 *   X.weight                                  u8 [(n+1)/2, 1] packed codes
 *   X.weight.absmax                           u8 [nblocks] (double quant) or f32
 *   X.weight.quant_map                        f32 [16]
 *   X.weight.nested_absmax                    f32 [ceil(nblocks/256)] (double quant)
 *   X.weight.nested_quant_map                 f32 [256] (double quant)
 *   X.weight.quant_state.bitsandbytes__nf4    u8 JSON (QuantState.as_dict(packed))
 * The caller declares each weight (ct_bnb_writer_add) before the save and
 * hands every tensor the safetensors writer asks for to ct_bnb_writer_fill,
 * which produces the parts it owns. The first part of a weight asked for
 * quantizes it: the load callback gives its values in f32, which are rounded
 * to the output dtype first, so the file equals quantize-on-load of the
 * unquantized output. Its small arrays (absmax, nested absmax) stay in memory
 * until all its parts are written; its codes wait in an unlinked scratch file
 * (the writer orders a shard by dtype, so f32 parts come before u8 ones), so
 * memory does not grow with the shard size.
 *
 * Ownership: the writer owns its scratch file and copies of the names; free
 * it with ct_bnb_writer_free (also after a failure). */
#ifndef CT_BNB_WRITE_H
#define CT_BNB_WRITE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "autograd/quant.h"
#include "autograd/tensor.h"
#include "trainer/io/safetensors.h"

/* Puts the values of the weight declared with `src` into *values (numel f32,
 * row-major; the writer may overwrite them); the buffer stays the caller's. */
typedef int (*ct_bnb_load_fn)(void *ctx, void *src, float **values);

typedef struct ct_bnb_writer ct_bnb_writer;

/* p: type, blocksize (0 = 64), double_quant (map8 must be NULL). dtype: the
 * dtype the weights would have unquantized (quant_state "dtype"; values are
 * rounded to it before quantizing). scratch_dir: where the unlinked scratch
 * file of codes is made (e.g. the output's temp directory). CT_EINPUT for a
 * bad type, blocksize or dtype. */
int ct_bnb_writer_new(const ct_quant_params *p, ct_dtype dtype, const char *scratch_dir, ct_bnb_load_fn load,
                      void *load_ctx, ct_bnb_writer **out);
void ct_bnb_writer_free(ct_bnb_writer *bw); /* NULL is fine */

/* Declares the parts of the 4-bit weight `name` (shape [rows, cols]) in w;
 * `src` is handed back to the load callback. */
int ct_bnb_writer_add(ct_bnb_writer *bw, ct_st_writer *w, const char *name, const int64_t shape[2], void *src);

/* Produces tensor t when it is a part of a declared weight (*handled true);
 * otherwise *handled is false and nothing happens. */
int ct_bnb_writer_fill(ct_bnb_writer *bw, ct_st_writer *w, const ct_st_tensor *t, bool *handled);

/* Weights quantized so far. */
int ct_bnb_writer_count(const ct_bnb_writer *bw);

/* transformers' BitsAndBytesConfig.to_dict() for such a checkpoint (sorted
 * keys), the config.json "quantization_config"; the head is listed in
 * llm_int8_skip_modules unless quant_output. New reference, NULL when out of
 * memory. */
json_t *ct_bnb_quantization_config(const ct_quant_params *p, bool quant_output);

#endif
