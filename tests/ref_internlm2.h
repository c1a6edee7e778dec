/* An independent, plain double-precision InternLM2 for tests: naive loops, the
 * full T×T attention matrix with causal + segment mask, rope on half-split
 * pairs, rmsnorm, swiglu, LoRA applied as x·Wᵀ + s·(x·Aᵀ)·Bᵀ (no dropout). It
 * shares no code with the library, so agreement is evidence for both.
 *
 * All arrays belong to the caller and are only read; results go to caller
 * buffers. Weights are [out, in] row-major, activations [T, features].
 *
 * Also here: a probe loss op for tape tests (sum(r ⊙ y)), see the end. */
#ifndef CT_REF_INTERNLM2_H
#define CT_REF_INTERNLM2_H

#include <stdint.h>

#include "autograd/tape.h"

enum { REF_ROPE_NONE = 0, REF_ROPE_LINEAR = 1, REF_ROPE_DYNAMIC = 2 };

typedef struct {
    const double *w; /* [out, in] */
    const double *a; /* [r, in], NULL = no LoRA */
    const double *b; /* [out, r] */
    int out, in, r;
    double scale;    /* LoRA scale s */
} ref_linear;

typedef struct {
    int hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab;
    double eps;
    double theta;    /* rope_theta */
    int scaling;     /* REF_ROPE_* */
    double factor;   /* rope_scaling.factor */
    int64_t max_pos; /* max_position_embeddings */
} ref_config;

typedef struct {
    const double *attention_norm, *ffn_norm; /* [hidden] */
    ref_linear wqkv, wo, w1, w3, w2;
} ref_layer;

typedef struct {
    ref_config c;
    int n_layers;
    const double *tok_embeddings; /* [vocab, hidden] */
    const ref_layer *layers;      /* [n_layers] */
    const double *norm;           /* [hidden] */
    ref_linear output;            /* [vocab, hidden] (+ LoRA if a != NULL) */
} ref_model;

/* y [T, out] = x [T, in] · Wᵀ + s · (x·Aᵀ)·Bᵀ. */
void ref_linear_forward(const ref_linear *l, int T, const double *x, double *y);

/* One decoder layer: out [T, hidden] from h [T, hidden]. pos [T] restart per
 * sample; seg [T] sample ids (NULL = one sample); the dynamic rope rule uses
 * seq_len = max(pos) + 1. */
void ref_layer_forward(const ref_config *c, const ref_layer *L, int T, const int32_t *pos,
                       const int32_t *seg, const double *h, double *out);

/* The model's loss: mean over tokens with labels[t] != -100 of
 * -log softmax(logits[t])[labels[t]] (0 when none is trained). Labels are
 * already aligned with the inputs (HF shifts them before its loss; so does the
 * caller here). logits [T, vocab] is filled when non-NULL. */
double ref_model_loss(const ref_model *m, int T, const int32_t *ids, const int32_t *pos,
                      const int32_t *seg, const int32_t *labels, double *logits);

/* ---- probe loss for tape tests ----
 * loss (1 element) = sum_i r[i] * y[i] for a fixed host array r (numel(y)
 * values, kept by pointer until backward). Backward: dy += dloss · r. On the
 * CPU backend. NULL on failure with the message set. */
ct_tensor *ct_test_dot_loss(ct_tape *t, ct_tensor *y, const float *r);

#endif
