/* Helpers shared by the whole-stack tests that run the model on another
 * backend against the CPU (test_guarded.c, test_cuda_emu.c): their small
 * conversation dataset and the logits of a model with a trained adapter. */
#ifndef CT_TEST_STACK_FIXTURE_H
#define CT_TEST_STACK_FIXTURE_H

#include <stdint.h>

#include "autograd/backend.h"

/* Writes the 16-record conversation dataset (4 prompts × 4 answers) to path. */
void ct_stack_write_data(const char *path);

/* The model at model_dir (nf4, double quant) placed on be, the PEFT adapter
 * in adapter_dir loaded into it: out [T, V] = logits of a fixed T-token
 * sequence (T <= 12). Failures are test failures (CHECK). */
void ct_stack_logits_with_adapter(const char *model_dir, const ct_backend *be, const char *adapter_dir,
                                  float *out, int64_t T);

#endif
