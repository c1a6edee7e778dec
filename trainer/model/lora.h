/* LoRA slots on an InternLM2 decoder (docs/DESIGN.md, "LoRA and PEFT adapters").
 *
 * A ct_lora holds the A/B pairs of every targeted linear: all A/B values in one
 * f32 block and (when trainable) all their grads in a second block, tensors
 * carved out of them by offset from one size table. Attaching points each
 * targeted ct_linear of the decoder at its pair (a, b, scale, dropout); freeing
 * detaches them again. Init as PEFT: A [r, in] uniform in ±1/sqrt(in)
 * (kaiming-uniform, a = √5) from the counter-based RNG seeded by (seed, linear
 * id), B [out, r] zeros, scale alpha/r (alpha/sqrt(r) with rsLoRA).
 *
 * Linear ids (ct_linear.id, seeds dropout masks) are stable: layer*8 + slot with
 * slots wqkv 0, wo 1, w1 2, w3 3, w2 4; the output head n_layers*8 + 5. The
 * model loader sets them (ct_lora_linear_id) whether or not LoRA is attached.
 *
 * Parameter order ("PEFT key order", used by the optimizer and the adapter
 * writer): layer by layer wqkv, wo, w1, w3, w2 (InternLM2's module order), then
 * the output head; A before B. Names are PEFT's safetensors keys, e.g.
 * "base_model.model.model.layers.0.attention.wqkv.lora_A.weight",
 * "base_model.model.output.lora_B.weight".
 *
 * Ownership: ct_lora_new returns an object owned by the caller (ct_lora_free).
 * It keeps a pointer to the decoder model and the backend, which must outlive
 * it; parameter names and tensors live as long as the ct_lora. */
#ifndef CT_LORA_H
#define CT_LORA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trainer/model/decoder.h"

/* Target bits, one per linear kind. */
enum {
    CT_LORA_WQKV = 1u << 0,
    CT_LORA_WO = 1u << 1,
    CT_LORA_W1 = 1u << 2,
    CT_LORA_W3 = 1u << 3,
    CT_LORA_W2 = 1u << 4,
    CT_LORA_OUTPUT = 1u << 5,
    CT_LORA_ALL_BLOCK = 0x1fu, /* XTuner's all-linear choice for InternLM2 */
};

/* Slots inside a layer (ct_lora_linear_id); the head is slot CT_LORA_SLOT_OUTPUT
 * of "layer" n_layers. */
enum { CT_LORA_SLOT_WQKV = 0, CT_LORA_SLOT_WO, CT_LORA_SLOT_W1, CT_LORA_SLOT_W3, CT_LORA_SLOT_W2,
       CT_LORA_SLOT_OUTPUT, CT_LORA_SLOTS_PER_LAYER = 8 };

typedef struct {
    int r;            /* rank, >= 1 */
    double alpha;     /* lora_alpha */
    float dropout;    /* lora_dropout, [0, 1) */
    unsigned targets; /* CT_LORA_* bits, non-empty */
    bool use_rslora;  /* scale alpha/sqrt(r) instead of alpha/r */
    uint64_t seed;    /* A's init */
} ct_lora_config;

/* "wqkv" -> CT_LORA_WQKV, ...; 0 when unknown. And back ("?" when not one bit). */
unsigned ct_lora_target_from_name(const char *name);
const char *ct_lora_target_name(unsigned bit);
/* Comma-separated target names ("wqkv,wo,w1,w2,w3", "all" = the five block
 * linears) into bits; CT_EINPUT naming the bad name. */
int ct_lora_parse_targets(const char *list, unsigned *targets);

/* alpha / r, or alpha / sqrt(r) with rsLoRA. */
float ct_lora_scale(const ct_lora_config *c);
/* CT_EINPUT ("<where>: ...") unless r >= 1, alpha finite, dropout in [0, 1),
 * targets non-empty and known. */
int ct_lora_config_check(const ct_lora_config *c, const char *where);

/* The stable id of linear `slot` in `layer` (see above). */
uint64_t ct_lora_linear_id(int layer, int slot);

typedef struct {
    const char *name;  /* PEFT key (owned by the ct_lora) */
    ct_tensor *t;      /* f32 [r, in] (A) or [out, r] (B); t->grad: long-lived, or NULL */
    int layer;         /* -1 for the head */
    unsigned target;   /* CT_LORA_* bit */
    bool is_b;         /* lora_B (else lora_A) */
} ct_lora_param;

typedef struct ct_lora ct_lora;

/* Allocates the pairs for cfg->targets on the decoder's linears (shapes from
 * their weights), initialises them and attaches them. trainable: A/B get
 * requires_grad and a zeroed long-lived grad block (else no grads: eval,
 * chat). CT_EINPUT for a bad config or a decoder that already has LoRA on a
 * targeted linear; CT_ERUNTIME when out of memory. */
int ct_lora_new(const ct_lora_config *cfg, ct_decoder_model *dm, const ct_backend *be,
                bool trainable, ct_lora **out);
/* Detaches from the decoder (a = b = NULL on the linears it set) and frees. NULL ok. */
void ct_lora_free(ct_lora *l);

const ct_lora_config *ct_lora_get_config(const ct_lora *l);
/* The decoder the slots are attached to. */
const ct_decoder_model *ct_lora_decoder(const ct_lora *l);
/* The backend whose memory holds the values and grads. */
const ct_backend *ct_lora_backend(const ct_lora *l);

/* Parameters in PEFT key order (2 per targeted linear). */
size_t ct_lora_count(const ct_lora *l);
const ct_lora_param *ct_lora_at(const ct_lora *l, size_t i);
/* By PEFT key; NULL when absent. */
const ct_lora_param *ct_lora_find(const ct_lora *l, const char *name);

/* The flat blocks, in parameter order (each tensor's values contiguous):
 * numel floats of values, and of grads (NULL when not trainable). Device
 * memory of the backend. */
int64_t ct_lora_numel(const ct_lora *l);
float *ct_lora_values(const ct_lora *l);
float *ct_lora_grads(const ct_lora *l);
/* Zeroes the grad block (no-op when not trainable). */
int ct_lora_zero_grads(ct_lora *l);
/* Re-runs the initialisation (A uniform from the seed, B zero). */
int ct_lora_reset(ct_lora *l);

/* The memory plan, one line per class ("LoRA params: 151,011,328 floats,
 * 576.1 MiB"), into buf (NUL-terminated, truncated to cap). Returns the total
 * bytes the ct_lora holds. */
size_t ct_lora_plan(const ct_lora *l, char *buf, size_t cap);

#endif
