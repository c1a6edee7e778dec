/* The InternLM2 decoder built from the autograd ops (docs/DESIGN.md, "InternLM2 weights"):
 *
 *   layer:  h += wo(attention(rope(wqkv(rmsnorm(h, attention_norm)))))
 *           h += w2(swiglu(w1 x, w3 x)),  x = rmsnorm(h, ffn_norm)
 *   model:  h = tok_embeddings[ids]; N layers; rmsnorm(h, norm);
 *           loss = cross-entropy(output(h), labels)
 *
 * Every linear is a ct_linear (frozen base weight of any dtype, optional LoRA).
 * The weights belong to the caller (the model loader); these functions only read
 * them and record ops on the tape. A layer can run inside a checkpointed segment
 * (ct_checkpoint): only its input is kept and backward recomputes it.
 *
 * Lifetimes: the dims, weights and the tensors of a ct_decoder_input must stay
 * valid until ct_backward of the step has returned (backward and checkpoint
 * recomputation read them); everything these functions create lives in the
 * tape's arenas until ct_tape_reset. */
#ifndef CT_DECODER_H
#define CT_DECODER_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Shape and hyper-parameters of a decoder layer (from config.json). */
typedef struct {
    int hidden;        /* D = hidden_size */
    int n_heads;       /* Hq = num_attention_heads */
    int n_kv_heads;    /* Hkv = num_key_value_heads; Hq % Hkv == 0, G = Hq / Hkv */
    int head_dim;      /* hd (= D / Hq in InternLM2), even */
    int intermediate;  /* F = intermediate_size */
    float eps;         /* rms_norm_eps */
    /* RoPE base values: theta, scaling, factor, max_pos. head_dim, group,
     * rotate_per_group and seq_len are filled per step by the layer. */
    ct_rope_params rope;
    ct_dtype attn_compute; /* ct_attn_params.compute of every layer: CT_F32 (0) or CT_BF16 */
} ct_decoder_dims;

/* One layer's weights ([out, in] like the HF tensors). */
typedef struct {
    ct_tensor *attention_norm; /* [D] */
    ct_tensor *ffn_norm;       /* [D] */
    ct_linear wqkv;            /* [Hkv*(G+2)*hd, D], rows grouped per KV head */
    ct_linear wo;              /* [D, Hq*hd] */
    ct_linear w1;              /* gate [F, D] */
    ct_linear w3;              /* up   [F, D] */
    ct_linear w2;              /* down [D, F] */
} ct_decoder_layer_weights;

/* Per-step inputs shared by every layer, in the tape's backend memory. */
typedef struct {
    ct_tensor *pos;  /* i32 [T]: position of each token, restarting per packed sample */
    ct_tensor *runs; /* i32 [n_runs + 1]: packed samples' boundaries (ct_segment_runs), or NULL */
    int64_t seq_len; /* max(pos) + 1: the length the dynamic-NTK rope rule looks at */
    /* The token ids [T] in host memory (set by the caller after
     * ct_decoder_input_make; read during the forward only): needed when the
     * embedding table stays in host memory (ct_decoder_embed), else NULL is fine. */
    const int32_t *host_ids;
    /* The embedding's output [T, D] in the activation dtype, already on the
     * device (the trainer gathers the rows of a host table while the
     * previous step computes and uploads them with the batch), or NULL:
     * ct_decoder_model_hidden then embeds. */
    ct_tensor *embedded;
} ct_decoder_input;

/* Made on the host where the batch is made, once per step: validates the
 * positions (pos [T] >= 0) and the sample ids (seg [T], contiguous runs, or
 * NULL for one sequence), summarises them (seq_len, the runs) and uploads pos
 * and runs into the tape's arena (they live until the next ct_tape_reset).
 * Nothing above the backend reads them back.
 * CT_EINPUT naming the token for a negative position or a sample id that
 * comes back after another. */
int ct_decoder_input_make(ct_decoder_input *in, ct_tape *t, const int32_t *pos, const int32_t *seg,
                          int64_t T);
/* Its check of the positions alone: *seq_len = max(pos) + 1. */
int ct_decoder_positions_check(const int32_t *pos, int64_t T, int64_t *seq_len);

/* Checks the weights' shapes against dims (CT_EINPUT naming the tensor). The
 * layer functions call it; a model loader can call it once up front. */
int ct_decoder_layer_check(const ct_decoder_dims *d, const ct_decoder_layer_weights *w);

/* One decoder layer: *out [T, D] from h [T, D] (f32). h is not modified. */
int ct_decoder_layer(ct_tape *t, const ct_decoder_dims *d, const ct_decoder_layer_weights *w,
                     const ct_decoder_input *in, ct_tensor *h, ct_tensor **out);

/* The same layer inside a checkpointed segment: the forward keeps only the
 * layer's output (the next layer's input); backward re-runs the layer (same
 * dropout masks) and backpropagates through it. Outside recording it is the
 * plain layer. */
int ct_decoder_layer_checkpointed(ct_tape *t, const ct_decoder_dims *d,
                                  const ct_decoder_layer_weights *w, const ct_decoder_input *in,
                                  ct_tensor *h, ct_tensor **out);

/* A whole model. */
typedef struct {
    ct_decoder_dims dims;
    int n_layers;
    ct_tensor *tok_embeddings;         /* [V, D]: on the tape's device, or in host memory (CT_CPU) */
    ct_decoder_layer_weights *layers;  /* [n_layers] */
    ct_tensor *norm;                   /* [D] final norm */
    ct_linear output;                  /* [V, D] head (not tied) */
} ct_decoder_model;

/* h [T, D] = tok_embeddings[ids] in the activation dtype. With the table in
 * the tape backend's memory, the embedding op over ids (i32 [T] on the
 * device); with the table in host memory while the tape runs on a device
 * (the model's embedding offload), its rows for host_ids [T] gathered on the
 * host and uploaded (ct_embedding_host: the same bits); host_ids NULL is then
 * CT_EINPUT. NULL with the message set. */
ct_tensor *ct_decoder_embed(ct_tape *t, const ct_decoder_model *m, ct_tensor *ids, const int32_t *host_ids);

/* Embedding (in->embedded, or ct_decoder_embed with host ids from in->host_ids) -> n_layers layers
 * (each checkpointed when `checkpoint`) -> final rmsnorm: *hidden [T, D], the
 * input of the output head. Backward marks (ct_tape_mark): tag l before layer
 * l, tag n_layers before the final norm, so when the backward passes mark l
 * the grads of layers l.. n_layers-1 and of the head are final. */
int ct_decoder_model_hidden(ct_tape *t, const ct_decoder_model *m, ct_tensor *ids,
                            const ct_decoder_input *in, bool checkpoint, ct_tensor **hidden);

/* ct_decoder_model_hidden followed by the fused head + cross-entropy:
 * *loss (1 element) = sum of NLL over tokens whose label is not -100, divided by
 * `norm` (norm <= 0: by their count, i.e. the mean). labels i32 [T] are already
 * aligned with the inputs (label t is the token that should follow token t: the
 * caller shifts, as HF does before its loss). *n_trained (may be NULL) gets the
 * number of trained tokens. */
int ct_decoder_model_loss(ct_tape *t, const ct_decoder_model *m, ct_tensor *ids,
                          const ct_decoder_input *in, ct_tensor *labels, bool checkpoint,
                          float norm, ct_tensor **loss, int64_t *n_trained);

#ifdef __cplusplus
}
#endif
#endif
