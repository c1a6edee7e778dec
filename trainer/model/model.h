/* An InternLM2 model loaded from a Hugging Face directory (config.json +
 * model.safetensors or shards), ready for the decoder (trainer/model/decoder.h).
 *
 * Weights: every tensor is checked against the config (presence, dtype F32/
 * BF16/F16, shape; CT_EINPUT naming the tensor and its file). Frozen weights
 * stay in their stored dtype and are used zero-copy from the read-only mmap
 * (the model owns the mapping; a tensor whose bytes are not aligned to its
 * element size is copied once into a model-owned block). Extra tensors are an
 * error, except "*.rotary_emb.inv_freq" (a buffer older checkpoints saved;
 * recomputed from rope_theta), which is skipped.
 *
 * Quantization (opt->quant nf4/fp4): the block linears (wqkv, wo, w1, w3, w2;
 * the head too with quant_output) are quantized bitsandbytes-style as each
 * tensor streams in from the mmap, whose pages are then released: peak memory
 * is the 4-bit model plus one tensor. A bitsandbytes 4-bit checkpoint (config
 * quantization_config + "X.weight" u8, ".absmax", ".quant_map", ".nested_*",
 * ".quant_state.bitsandbytes__nf4|fp4") loads as stored, without
 * re-quantizing, whatever opt->quant says.
 *
 * Placing (ct_model_place, or opt->backend): a model is loaded on the host,
 * then placed on its backend in one explicit step. Every frozen tensor (norms,
 * linears, head, and the embedding table unless it stays on the host, below)
 * and every 4-bit array (codes, absmax, double-quant state) is uploaded into
 * one block of the backend's memory; the quant states stay host structs
 * (their 16- and 256-entry tables travel with them) pointing at device
 * arrays; the mapping and the host copies are released. LoRA pairs added
 * afterwards are made on the backend.
 *
 * Embedding offload (the default; opt->embedding_on_device turns it off):
 * the embedding table is frozen and only T of its rows are read per step,
 * so placing leaves it in host memory (used in place from the mapping, whose
 * other tensors' pages are released; or a copy of its own when it was
 * misaligned) and the decoder gathers the rows on the host and uploads them
 * (ct_decoder_embed: the same bits as the on-device gather). A head tied to
 * the embeddings (tie_word_embeddings) is a GEMM operand: the table is then
 * placed on the device whatever the option says.
 * docs/DESIGN.md ("Placing a model") says what stays on the host and why.
 * config.json with "bias": true is refused (InternLM2 releases have none).
 *
 * Ownership: ct_model_load returns a model owned by the caller (ct_model_free);
 * everything reached through the accessors (config, decoder weights, LoRA)
 * belongs to the model and lives until ct_model_free. The model is read-only
 * after loading except for its LoRA values, so several tapes may run it from
 * different threads at once as long as no one trains. */
#ifndef CT_MODEL_H
#define CT_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/quant.h"
#include "trainer/model/decoder.h"
#include "trainer/io/hf_config.h"
#include "trainer/model/lora.h"

typedef enum { CT_MODEL_QUANT_NONE = 0, CT_MODEL_QUANT_NF4, CT_MODEL_QUANT_FP4 } ct_model_quant;

/* Zero-initialised = the stored weights as they are, on the CPU. */
typedef struct {
    ct_model_quant quant;      /* quantize block linears on load */
    bool double_quant;         /* bnb_4bit_use_double_quant */
    int blocksize;             /* 0 = 64 */
    bool quant_output;         /* also quantize the output head */
    const ct_backend *backend; /* NULL = CPU; another: ct_model_place after loading */
    bool embedding_on_device;  /* placing: upload the embedding table too (embedding_offload:
                                * none); false, the default: it stays in host memory (see
                                * "Embedding offload" above) */
} ct_model_options;

/* "none" / "nf4" / "fp4" into *q; CT_EINPUT naming the value otherwise. */
int ct_model_quant_from_name(const char *name, ct_model_quant *q);

typedef struct ct_model ct_model;

/* dir: a model directory (config.json + safetensors). opt may be NULL. On
 * error *out is NULL and nothing is left allocated or mapped. */
int ct_model_load(const char *dir, const ct_model_options *opt, ct_model **out);
void ct_model_free(ct_model *m); /* NULL is fine; frees the LoRA too */

const ct_hf_config *ct_model_config(const ct_model *m);
/* The weights as the decoder functions take them (LoRA pairs attached when
 * there are any). Do not change the pointers; the model owns them. */
const ct_decoder_model *ct_model_decoder(const ct_model *m);
const ct_backend *ct_model_backend(const ct_model *m);
/* The directory given to ct_model_load (base_model_name_or_path). */
const char *ct_model_path(const ct_model *m);

/* The math of every frozen-weight GEMM (the block linears and the head):
 * CT_F32 (the default after loading) or CT_BF16 (ct_linear.compute);
 * CT_EINPUT for any other dtype. */
int ct_model_set_compute(ct_model *m, ct_dtype compute);

/* Creates LoRA slots for cfg and attaches them (see lora.h); the model owns
 * them. CT_EINPUT when the model already has LoRA or cfg is bad. */
int ct_model_add_lora(ct_model *m, const ct_lora_config *cfg, bool trainable, ct_lora **out);
/* Moves the weights to backend be (see "Placing" above; the embedding table
 * as the load options said): a no-op for the backend the model is on. CT_EINPUT when the model is already placed off the
 * CPU or has LoRA attached (place first, then add LoRA); CT_ERUNTIME when be
 * is out of memory (the model must then be freed). */
int ct_model_place(ct_model *m, const ct_backend *be);

/* The attached LoRA, or NULL. */
ct_lora *ct_model_lora(const ct_model *m);
/* Detaches and frees the LoRA (no-op without one). */
void ct_model_drop_lora(ct_model *m);

/* Where the weights' bytes are. */
typedef struct {
    uint64_t mapped_bytes;  /* used in place from the mmap (resident only when touched) */
    uint64_t copied_bytes;  /* copies of misaligned tensors (owned) */
    uint64_t quant_bytes;   /* 4-bit codes + absmax of quantized weights (owned, or
                               mapped for a pre-quantized checkpoint) */
    int n_quantized;        /* weights held as nf4/fp4 */
    bool prequantized;      /* loaded from a bitsandbytes checkpoint */
    int64_t n_params;       /* base parameters (config) */
    uint64_t device_bytes;  /* after ct_model_place off the CPU: the device block (the
                               mapped/copied/quant figures describe the load) */
    uint64_t host_bytes;    /* after ct_model_place off the CPU: frozen bytes that stayed in
                               host memory (the embedding table when offloaded), else 0 */
    bool embedding_on_host; /* after ct_model_place off the CPU: the embedding table is one of them */
} ct_model_memory;
void ct_model_get_memory(const ct_model *m, ct_model_memory *out);

/* ---- forwards without a KV cache (eval; reference for generation) ----
 * Both run in no_grad mode (recording off, restored afterwards) after
 * ct_tape_reset(tape); results are copied out, so the tape may be reset again
 * right after. Token ids outside the vocabulary are CT_EINPUT naming the
 * position. */

/* Negative log-likelihood of packed samples: ids/labels/seg are host arrays [T];
 * sample s is the run of tokens with seg == s (s = 0..n_samples-1, contiguous,
 * in order), positions restart at each sample. labels are already shifted
 * (label t is the token after token t, -100 = not scored). Writes per sample
 * the NLL sum (nll[s], double) and the scored-token count (count[s]). With
 * seg NULL, the T tokens are one sample (n_samples must be 1). */
int ct_model_nll(const ct_model *m, ct_tape *tape, const int32_t *ids, const int32_t *labels,
                 const int32_t *seg, int64_t T, int n_samples, double *nll, int64_t *count);

/* logits [T, V] of one sequence (positions 0..T-1) into a caller buffer (host);
 * rows_from: only rows t >= rows_from are computed and written (logits then
 * holds (T - rows_from) rows), e.g. T-1 for the next-token distribution. */
int ct_model_logits(const ct_model *m, ct_tape *tape, const int32_t *ids, int64_t T,
                    int64_t rows_from, float *logits);

#endif
