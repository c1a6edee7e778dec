/* AdamW exactly as torch.optim.AdamW (amsgrad off, maximize off), global
 * gradient-norm clipping as torch.nn.utils.clip_grad_norm_, and non-finite
 * gradient detection.
 *
 * One step at learning rate lr, per element, with t = the step count after
 * incrementing (1 on the first step):
 *     p -= lr * wd * p                      (decoupled weight decay, first)
 *     m  = m + (1 - b1) * (g - m)           (= b1 m + (1-b1) g; torch's lerp_)
 *     v  = b2 v + (1 - b2) g²
 *     p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * Scalars are computed in double and used as fp32, the per-element math is
 * fp32 in torch's order. Element-wise only: results do not depend on the
 * number of OpenMP threads.
 *
 * Memory: both moments of every parameter live in one fp32 block ("AdamW
 * moments"), carved by offset from a size table: m of all params, then v of all
 * params, each tensor's slice starting on a 64-byte boundary.
 *
 * Parameters, grads and moments live on one backend (f32, contiguous; the
 * element loop is its adamw_update entry, the norm its sum_squares and
 * scale); grads are long-lived (e.g. ct_lora's grad block) and must exist when
 * the optimizer is created. The optimizer keeps pointers to the tensors and
 * the backend, which must outlive it.
 *
 * Offload (ct_adamw_config.offload, the run config's optimizer_offload: cpu):
 * the moments live in host memory instead, next to a host master copy of the
 * parameters and a host buffer for their grads (f32 each, 16 bytes per
 * parameter in all on the host, none on the device). A step downloads the
 * grads (clipped on the device before, by the caller), runs the CPU
 * backend's adamw_update over the host copies and uploads the parameters:
 * one download and one upload per run of parameters that are adjacent in
 * the backend's memory with adjacent grads (ct_lora's blocks: one run). The
 * update is the same element-wise formula, so the parameters are those of
 * the optimizer without offload whenever the device's adamw_update gives the
 * CPU's bits (the CUDA kernel does: no FMA contraction). The host copy is
 * read from the device on the first step, and again after ct_adamw_load or
 * ct_adamw_params_changed: write the parameters through the backend only
 * before one of those. On a backend whose memory is the host's (the CPU)
 * offload changes nothing: the state is already in host memory.
 *
 * Checkpoint names (ct_adamw_save/ct_adamw_load): "<prefix>/step" (i64[1]),
 * "<prefix>/exp_avg/<name>" and "<prefix>/exp_avg_sq/<name>" (f32, the
 * parameter's shape), <name> the tensor's name or its index when unnamed. */
#ifndef CT_ADAMW_H
#define CT_ADAMW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/backend.h"
#include "autograd/tensor.h"
#include "trainer/io/checkpoint.h"

typedef struct {
    double beta1, beta2;  /* [0, 1) */
    double eps;           /* >= 0, added to sqrt(v̂) */
    double weight_decay;  /* >= 0, decoupled (p *= 1 - lr*wd) */
    bool offload;         /* moments (and the update) in host memory; see "Offload" above */
} ct_adamw_config;

/* torch.optim.AdamW defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2;
 * no offload. */
ct_adamw_config ct_adamw_defaults(void);
/* CT_EINPUT ("<where>: ...", naming the field and its valid range) unless every
 * field is finite and in range (torch's checks). */
int ct_adamw_config_check(const ct_adamw_config *c, const char *where);

typedef struct ct_adamw ct_adamw;

/* An optimizer on backend be over params[0..n) (each f32 on be's device with
 * an f32 grad of the same shape); moments zeroed (on be, or in host memory
 * with cfg->offload), step 0. CT_EINPUT naming the tensor when one does not
 * qualify; CT_ERUNTIME when out of memory or the backend that runs the update
 * has no adamw_update. *out is owned by the caller. */
int ct_adamw_new(const ct_adamw_config *cfg, const ct_backend *be, ct_tensor *const *params,
                 size_t n, ct_adamw **out);
void ct_adamw_free(ct_adamw *o); /* NULL ok */

/* One update of every parameter from its grad at learning rate lr (>= 0,
 * finite; from the scheduler). Increments the step first. Grads are read, not
 * cleared. */
int ct_adamw_step(ct_adamw *o, double lr);
/* Sets every grad to 0. */
int ct_adamw_zero_grad(ct_adamw *o);

int64_t ct_adamw_get_step(const ct_adamw *o);
/* For resuming; with the moments restored this continues bit-identically. */
void ct_adamw_set_step(ct_adamw *o, int64_t step);
/* The parameters were written from outside the optimizer (through the
 * backend): with offload the next step re-reads its host copy. No-op without. */
void ct_adamw_params_changed(ct_adamw *o);

size_t ct_adamw_count(const ct_adamw *o);
ct_tensor *ct_adamw_param(const ct_adamw *o, size_t i);
/* Moments of parameter i: numel floats each, inside the optimizer's block
 * (the memory of ct_adamw_state_backend: read them through its download). */
float *ct_adamw_exp_avg(const ct_adamw *o, size_t i);
float *ct_adamw_exp_avg_sq(const ct_adamw *o, size_t i);
/* The backend whose memory holds the moments and that runs the update: the
 * parameters' backend, or the CPU backend when offloaded. */
const ct_backend *ct_adamw_state_backend(const ct_adamw *o);

/* "AdamW moments: N floats x 2, X MiB on <backend>" (with offload: "... in
 * host memory (optimizer_offload), + Y MiB host copy of the parameters and
 * grads; the update runs on the host") into buf; returns the bytes of the
 * moments block. */
size_t ct_adamw_plan(const ct_adamw *o, char *buf, size_t cap);

/* Writes step and moments under `prefix` (e.g. "optim"); see the names above. */
int ct_adamw_save(const ct_adamw *o, ct_ckpt_writer *w, const char *prefix);
/* Reads them back, validating names and shapes (CT_EINPUT naming the dataset
 * and file when missing or mismatched); on error the optimizer is unchanged.
 * The file does not say where the moments lived: a checkpoint of an offloaded
 * optimizer loads into one without offload and the other way round. On
 * success the parameters count as changed (ct_adamw_params_changed): load
 * them before the next step, in either order. */
int ct_adamw_load(ct_adamw *o, ct_ckpt_reader *r, const char *prefix);

/* ---- gradient norm and clipping (grad_clip.c) ----
 *
 * Over the grads of params[0..n) (tensors without a grad are skipped, as torch
 * skips grad None). Each tensor's sum of squares is accumulated in double over
 * fixed chunks of elements (independent of the thread count), the chunk sums
 * added in chunk order, the tensors' sums added in list order, then sqrt: the
 * result is bit-identical for any number of OpenMP threads.
 *
 * A NaN or ±Inf anywhere gives CT_ENONFINITE with a message naming the first
 * such tensor and element; *norm is then NaN or +Inf and no grad is changed. */
int ct_grad_global_norm(const ct_backend *be, ct_tensor *const *params, size_t n, double *norm);

/* torch.nn.utils.clip_grad_norm_(max_norm, norm_type=2): total norm as above
 * (returned in *norm, before clipping); when coef = max_norm / (norm + 1e-6) is
 * below 1 every grad is multiplied by (float)coef. max_norm must be > 0. */
int ct_grad_clip_norm(const ct_backend *be, ct_tensor *const *params, size_t n, double max_norm,
                      double *norm);

#endif
