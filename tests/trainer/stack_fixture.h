/* Helpers shared by the whole-stack tests that run the model on another
 * backend against the CPU (test_guarded.c, test_cuda_emu.c): their small
 * conversation dataset, an eval forward, a training run from a config text,
 * and the logits of a model with a trained adapter. Failures of the library
 * calls are test failures (CHECK). */
#ifndef CT_TEST_STACK_FIXTURE_H
#define CT_TEST_STACK_FIXTURE_H

#include <stdint.h>
#include <stdio.h>

#include "autograd/backend.h"
#include "trainer/model/model.h"
#include "trainer/train.h"

/* Writes the 16-record conversation dataset (4 prompts × 4 answers) to path. */
void ct_stack_write_data(const char *path);

/* The model at model_dir loaded with `base` onto be (placement checked: device
 * memory held, wqkv on be's device), GEMMs in `compute`; on a fixed T-token
 * input (T <= 40, three packed samples, every 5th label ignored):
 * nll[3], count[3] = ct_model_nll per sample, logits [4, V] = the last 4 rows. */
void ct_stack_forward(const char *model_dir, const ct_backend *be, const ct_model_options *base, ct_dtype compute,
                      double *nll, int64_t *count, float *logits, int64_t T, int64_t V);

/* Per-iteration losses of a run (on_iter). */
typedef struct {
    double loss[16];
    int n;
} ct_stack_losses;

/* ct_train on be with the config `yaml` (no model, data or work dir) plus
 * those three; eval_data = data; resume and stop_after as ct_train_options. */
int ct_stack_train(const char *model_dir, const char *data, const char *yaml, const char *work_dir,
                   const ct_backend *be, const char *resume, int64_t stop_after, ct_stack_losses *l,
                   ct_train_result *res);
/* The same with the training log written to `out` (NULL: quiet). */
int ct_stack_train_log(const char *model_dir, const char *data, const char *yaml, const char *work_dir,
                       const ct_backend *be, const char *resume, int64_t stop_after, ct_stack_losses *l,
                       ct_train_result *res, FILE *out);

/* The model at model_dir (nf4, double quant) placed on be, the PEFT adapter
 * in adapter_dir loaded into it: out [T, V] = logits of a fixed T-token
 * sequence (T <= 12). Failures are test failures (CHECK). */
void ct_stack_logits_with_adapter(const char *model_dir, const ct_backend *be, const char *adapter_dir,
                                  float *out, int64_t T);

#endif
