/* Resource limits checked up front, before the model or the step's memory is
 * allocated (docs/ERRORS.md lists the messages):
 *   - max_length within the model's max_position_embeddings, unless the run
 *     says max_length_beyond_model: true;
 *   - rows only as long as the data needs: the longest packed row (or the
 *     longest sample unpacked) when that is below max_length;
 *   - batch_size at most the rows the data makes;
 *   - the memory plan (trainer/plan/mem_plan.h) within what the backend can
 *     still allocate: host RAM on the CPU, free device memory on CUDA.
 *   - lora.r within the targeted layers' widths (ct_lora_new checks it too,
 *     for every other caller). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/lora.h"
#include "trainer/train_internal.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

int ct_trainer_check_model_limits(ct_trainer *t) {
    const ct_run_config *c = t->cfg;
    if (!ct_path_is_dir(c->pretrained_model_name_or_path)) /* as ct_model_load says it */
        return ct_errorf(CT_EINPUT, "%s: not a directory (give a Hugging Face model directory)",
                         c->pretrained_model_name_or_path);
    CT_TRY(ct_hf_config_load(c->pretrained_model_name_or_path, &t->hf));
    int64_t pos = t->hf.max_position_embeddings;
    if (c->max_length > pos && !c->max_length_beyond_model)
        return ct_errorf(CT_EINPUT,
                         "max_length %lld is above the model's max_position_embeddings %lld (%s/config.json): lower "
                         "max_length, or set max_length_beyond_model: true to train past the positions the model "
                         "knows", (long long)c->max_length, (long long)pos, c->pretrained_model_name_or_path);
    /* lora.r against the targeted linears' smaller sides, from config.json
     * (ct_lora_new checks the same on the weights; here it comes before the
     * weights and the memory plan, whose estimate a huge r would dominate). */
    unsigned bit[6]; /* the block's five linears (ct_plan_block_linears), then the head */
    int64_t out[6], in[6];
    ct_plan_block_linears(&t->hf, bit, out, in);
    bit[5] = CT_LORA_OUTPUT, out[5] = t->hf.vocab_size, in[5] = t->hf.hidden_size;
    int64_t r_max = INT64_MAX;
    unsigned narrow = 0;
    for (int i = 0; i < 6; i++) {
        int64_t side = in[i] < out[i] ? in[i] : out[i];
        if ((c->lora.target_modules & bit[i]) && side < r_max) r_max = side, narrow = bit[i];
    }
    if (narrow && c->lora.r > r_max)
        return ct_errorf(CT_EINPUT, "lora.r %lld is larger than the targeted layers allow: %s is %lld wide on its "
                         "smaller side, and a LoRA pair's rank cannot exceed min(in, out); use lora.r <= %lld",
                         (long long)c->lora.r, ct_lora_target_name(narrow), (long long)r_max, (long long)r_max);
    return CT_OK;
}

void ct_trainer_trim_rows(ct_trainer *t) {
    const ct_packing *p = &t->ds.rows;
    int64_t longest = 0;
    for (int64_t r = 0; r < p->n_rows; r++) {
        int64_t n = 0;
        for (int64_t k = p->row_off[r]; k < p->row_off[r + 1]; k++) {
            int64_t i = p->row_samples[k];
            n += t->ds.sample_off[i + 1] - t->ds.sample_off[i];
        }
        if (n > longest) longest = n;
    }
    /* Padding past the longest row only costs memory and time: the tokens
     * of a row never see its padding (causal attention, labels -100). */
    if (longest >= 2 && longest < t->ds.max_length) t->ds.max_length = longest;
}

int ct_trainer_check_batch(const ct_trainer *t) {
    const ct_packing *p = &t->ds.rows;
    if (t->cfg->batch_size > p->n_rows)
        return ct_errorf(CT_EINPUT,
                         "batch_size %lld is larger than the data: %s makes %lld row%s of %lld tokens; lower "
                         "batch_size to at most %lld (or add data)", (long long)t->cfg->batch_size,
                         t->cfg->data_path, (long long)p->n_rows, p->n_rows == 1 ? "" : "s",
                         (long long)t->ds.max_length, (long long)p->n_rows);
    return CT_OK;
}

int ct_trainer_check_memory(ct_trainer *t, const ct_backend *be) {
    if (!be->mem_available) return CT_OK;
    uint64_t avail = 0;
    if (be->mem_available(&avail) != CT_OK) return CT_OK; /* unknown: nothing to refuse on */
    const ct_run_config *c = t->cfg;
    ct_plan_input in = {.model = &t->hf, .run = c, .gpu = be->device != CT_CPU,
                        .optimizer_on_host = c->optimizer_offload == CT_OFFLOAD_CPU,
                        .embedding_on_host = c->embedding_offload == CT_OFFLOAD_CPU};
    ct_mem_plan p;
    CT_TRY(ct_mem_plan_make(&in, t->ds.max_length, &p));
    /* On a GPU the CUDA context is already in use once the free memory is
     * known: compare what the allocator will hold. */
    uint64_t need = be->device == CT_CPU ? p.total : p.allocator_total;
    if (need <= avail) return CT_OK;
    return ct_errorf(CT_EINPUT,
                     "this run needs an estimated %.2f GiB on %s (batch_size %lld x %lld tokens; `ctuner plan` "
                     "itemizes it), and only %.2f GiB is available: lower batch_size or max_length, use "
                     "load_in_4bit, gradient_checkpointing or the offload options (docs/TRAINING.md)",
                     (double)need / GIB, be->name, (long long)c->batch_size, (long long)t->ds.max_length,
                     (double)avail / GIB);
}
