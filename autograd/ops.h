/* The op set. Each op checks shapes, runs its forward kernel on the tape's
 * backend and records itself when a gradient may flow. Every op returns a new
 * tensor from the tape's arena, or NULL with the error message set.
 * Shapes: T = tokens (batch rows × sequence, flattened), D = hidden size. */
#ifndef CT_OPS_H
#define CT_OPS_H

#include "backend.h"
#include "tape.h"

#ifdef __cplusplus
extern "C" {
#endif

/* [T, D] rows of table [V, D] (frozen or trainable) for ids (i32 [T]). */
ct_tensor *ct_embedding(ct_tape *t, ct_tensor *table, ct_tensor *ids);

/* ct_embedding of a frozen table kept in host memory while the tape runs on
 * another device (a model's embedding offload, trainer/model/model.h): table
 * [V, D] f32/bf16/f16 on CT_CPU, ids [T] a host array. The T rows are
 * gathered on the host, widened to f32 and stored in the tape backend's
 * act_dtype as its embedding kernel stores them (f32 as is, bf16 rounded by
 * ct_f32_to_bf16: the same bits as ct_embedding with the table on the device)
 * into a staging buffer from the tape's meta arena, then uploaded in one
 * transfer into a new [T, D] tensor. Nothing is recorded (no grad flows into
 * a frozen table; a trainable one is refused). CT_EINPUT naming the position
 * for an id outside [0, V). NULL with the message set. */
ct_tensor *ct_embedding_host(ct_tape *t, const ct_tensor *table, const int32_t *ids, int64_t T);
/* The gather alone: dst [T, D] (host memory, the caller's) = the rows of
 * ids in act (CT_F32 or CT_BF16), with ct_embedding_host's checks. */
int ct_embedding_gather_host(const ct_tensor *table, const int32_t *ids, int64_t T, ct_dtype act, void *dst);

/* x [.., D] * rsqrt(mean(x²) + eps) * w [D]; statistics in fp32. */
ct_tensor *ct_rmsnorm(ct_tape *t, ct_tensor *x, ct_tensor *w, float eps);

/* Rotary embedding of x [T, H*head_dim] at positions pos (i32 [T]); see
 * ct_rope_params for which heads rotate. */
ct_tensor *ct_rope(ct_tape *t, ct_tensor *x, ct_tensor *pos, const ct_rope_params *p);

/* Causal, grouped-KV attention on InternLM2's packed qkv [T, Hkv*(G+2)*hd];
 * runs (i32 [n_runs + 1], from ct_segment_runs) keeps packed samples apart,
 * NULL = one sequence. Returns [T, Hq*hd]. */
ct_tensor *ct_attention(ct_tape *t, ct_tensor *qkv, ct_tensor *runs, const ct_attn_params *p);

/* Packed samples as attention sees them, made on the host where the batch is
 * made: from per-token sample ids seg [T] (equal neighbours = one sample),
 * the run boundaries runs [n + 1] (runs[0] = 0, runs[n] = T; run k is tokens
 * [runs[k], runs[k+1])) and n in *n_runs. runs must hold T + 1 values.
 * CT_EINPUT naming the tokens when an id comes back after another one (the
 * samples would not be contiguous runs). */
int ct_segment_runs(const int32_t *seg, int64_t T, int32_t *runs, int64_t *n_runs);
/* The same with the caller's temporary tmp [T] (no allocation). */
int ct_segment_runs_tmp(const int32_t *seg, int64_t T, int32_t *runs, int32_t *tmp, int64_t *n_runs);
/* ct_segment_runs uploaded into a tape tensor i32 [n_runs + 1]; NULL with the
 * message set. */
ct_tensor *ct_segment_runs_tensor(ct_tape *t, const int32_t *seg, int64_t T);

/* silu(gate) * up, both [.., F]. */
ct_tensor *ct_swiglu(ct_tape *t, ct_tensor *gate, ct_tensor *up);

/* a + b (same shape): the residual connection. */
ct_tensor *ct_add(ct_tape *t, ct_tensor *a, ct_tensor *b);

/* a + b and rmsnorm(a + b)·w (ct_rmsnorm's contract): a residual connection
 * and the norm that reads it. Returns the norm's output and sets *sum to
 * a + b (the residual stream; NULL on failure). One pass over the rows where
 * the backend has add_rmsnorm_fwd, else ct_add then ct_rmsnorm: the same bits
 * either way, and the same two tape entries (add, then rmsnorm), so the
 * backward is theirs and checkpoint recomputation needs nothing of its own. */
ct_tensor *ct_add_rmsnorm(ct_tape *t, ct_tensor *a, ct_tensor *b, ct_tensor *w, float eps, ct_tensor **sum);

/* x [T, in] -> [T, out] through a frozen base weight plus LoRA (see ct_linear).
 * Grads: dx when x requires grad, dA/dB when they do; never the base weight. */
ct_tensor *ct_lora_linear(ct_tape *t, ct_tensor *x, const ct_linear *lin);

/* ct_lora_linear and ct_add for a checkpointed segment's last ops, whose output
 * values backward never reads (the segment's output is kept from the first
 * pass). During the recomputation (ct_tape_recomputing) they record the same
 * entries but leave the output values uncomputed: the layer's last GEMM is not
 * run twice. Anywhere else they are ct_lora_linear and ct_add. */
ct_tensor *ct_lora_linear_tail(ct_tape *t, ct_tensor *x, const ct_linear *lin);
ct_tensor *ct_add_tail(ct_tape *t, ct_tensor *a, ct_tensor *b);

/* ct_add's checks, output tensor and tape entry, with the output left
 * unwritten: for an op whose own kernel writes a + b (ct_add_rmsnorm). */
ct_tensor *ct_add_entry(ct_tape *t, ct_tensor *a, ct_tensor *b);

/* Helpers shared by the linear ops (ops/lora_linear.c). ct_linear_check: x [.., in]
 * in the activation dtype `act` (the backend's act_dtype) against lin's shapes
 * and dtypes, dropout in [0, 1); 0 or CT_EINPUT naming the weight. ct_linear_for_step: lin as the kernels see it now (dropout only while
 * training: recording, or inside a checkpoint) and its mask seed, a pure function
 * of (t->step_seed, lin->id). */
int ct_linear_check(const char *op, const ct_tensor *x, const ct_linear *lin, ct_dtype act);
ct_linear ct_linear_for_step(const ct_tape *t, const ct_linear *lin, uint64_t *seed);

/* Output projection fused with the loss: sum over trained tokens of
 * -log softmax(x·Wᵀ)[label], divided by `norm` (norm <= 0: by the number of
 * trained tokens of these labels, i.e. the mean). labels i32 [T], -100 ignored.
 * Returns a 1-element f32 tensor; *n_trained (may be NULL) gets the count. */
ct_tensor *ct_linear_cross_entropy(ct_tape *t, ct_tensor *x, const ct_linear *head,
                                   ct_tensor *labels, float norm, int64_t *n_trained);

#ifdef __cplusplus
}
#endif
#endif
