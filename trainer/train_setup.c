/* Building a training run from its config: the model (quantized on load as
 * the config's quantization section says), the LoRA slots (fresh from the
 * seed, or lora.init_from), the prepared dataset (through the HDF5 cache),
 * two loaders over the same order (one trains, one reads a window ahead to
 * count its trained tokens), the tape, AdamW and the schedule. Everything
 * per-iteration is allocated here once, so the loop itself only uses the
 * tape's arenas. */
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/dataset_cache.h"
#include "trainer/model/adapter.h"
#include "trainer/train_internal.h"

/* Where the frozen weights went (device backends only: on the CPU
 * everything is in host memory). */
static void print_placement(const ct_trainer *t) {
    const ct_backend *be = ct_model_backend(t->model);
    if (be->device == CT_CPU) return;
    ct_model_memory mem;
    ct_model_get_memory(t->model, &mem);
    const double mib = 1.0 / (1 << 20);
    if (mem.embedding_on_host)
        fprintf(t->out, "placement: %.1f MiB of frozen weights on %s; the embedding table (%.1f MiB) stays in host "
                "memory, its rows gathered there each step (embedding_offload: cpu)\n", (double)mem.device_bytes * mib,
                be->name, (double)mem.host_bytes * mib);
    else if (t->cfg->embedding_offload == CT_OFFLOAD_CPU)
        fprintf(t->out, "placement: %.1f MiB of frozen weights on %s, the embedding table included: it is tied to "
                "the output head (tie_word_embeddings), which needs it there, so embedding_offload: cpu does not "
                "apply\n", (double)mem.device_bytes * mib, be->name);
    else
        fprintf(t->out, "placement: %.1f MiB of frozen weights on %s, the embedding table included "
                "(embedding_offload: none)\n", (double)mem.device_bytes * mib, be->name);
}

static int load_model(ct_trainer *t) {
    const ct_run_config *c = t->cfg;
    /* The caller's backend (tests) wins over the config's device. */
    const ct_backend *be = t->opt->backend;
    if (!be) CT_TRY(ct_backend_by_name(ct_config_device_name(c->device), "device:", &be));
    ct_model_options mo = {.backend = be, .embedding_on_device = c->embedding_offload == CT_OFFLOAD_NONE};
    if (c->quantization.load_in_4bit) {
        mo.quant = c->quantization.quant_type == CT_QUANT_FP4 ? CT_MODEL_QUANT_FP4 : CT_MODEL_QUANT_NF4;
        mo.double_quant = c->quantization.double_quant;
        mo.blocksize = (int)c->quantization.blocksize;
        mo.quant_output = c->quantization.quantize_output;
    }
    CT_TRY(ct_model_load(c->pretrained_model_name_or_path, &mo, &t->model));
    CT_TRY(ct_model_set_compute(t->model, c->compute_dtype));
    be = ct_model_backend(t->model);
    if (t->out) print_placement(t);
    const char *note = be->compute_note ? be->compute_note(c->compute_dtype) : NULL;
    if (t->out && c->compute_dtype == CT_BF16)
        fprintf(t->out, "compute: bf16 GEMMs with fp32 sums%s%s\n", note ? ", " : "", note ? note : "");

    ct_lora_config lc = {.r = (int)c->lora.r, .alpha = c->lora.lora_alpha, .dropout = (float)c->lora.lora_dropout,
                         .targets = c->lora.target_modules, .use_rslora = c->lora.use_rslora,
                         .seed = (uint64_t)c->seed};
    CT_TRY(ct_lora_config_check(&lc, "lora"));
    CT_TRY(ct_model_add_lora(t->model, &lc, true, &t->lora));
    /* lora.init_from: the adapter's A/B replace the fresh init; its r and
     * targets must be the config's (alpha and dropout are the config's). */
    if (c->lora.init_from) {
        int rc = ct_adapter_load_into(c->lora.init_from, t->lora);
        if (rc) return ct_error_wrap(rc, "lora.init_from");
    }
    return CT_OK;
}

static int load_data(ct_trainer *t) {
    const ct_run_config *c = t->cfg;
    CT_TRY(ct_template_get(c->prompt_template, "prompt_template", &t->tmpl));
    CT_TRY(ct_tok_load(c->pretrained_model_name_or_path, &t->tok));
    /* The tokenized data is cached under work_dir (or one shared directory
     * named by $CTUNER_DATASET_CACHE), keyed by everything that shapes it. */
    char cache[CT_PATH_MAX];
    const char *env = getenv("CTUNER_DATASET_CACHE");
    if (env && env[0]) snprintf(cache, sizeof cache, "%s", env);
    else CT_TRY(ct_path_join(cache, sizeof cache, t->work_dir, "dataset_cache"));
    ct_ds_config dc = ct_config_ds_config(c);
    dc.cache_dir = cache;
    ct_ds_cache_info info;
    CT_TRY(ct_ds_open(&dc, t->tok, &t->ds, &info));
    int64_t asked = t->ds.max_length;
    ct_trainer_trim_rows(t);
    if (t->out) {
        const ct_ds_stats *s = &t->ds.stats;
        char cut[96] = "";
        if (t->ds.max_length < asked)
            snprintf(cut, sizeof cut, " (the longest %s; max_length %lld)",
                     c->pack_to_max_length ? "packed row" : "sample", (long long)asked);
        fprintf(t->out, "data: %s: %lld records -> %lld samples (%lld tokens, %lld trained) in %lld rows of %lld%s; "
                "token efficiency %.1f%%; %s\n", c->data_path, (long long)s->n_records, (long long)s->n_samples,
                (long long)s->n_tokens, (long long)s->n_targets, (long long)t->ds.rows.n_rows,
                (long long)t->ds.max_length, cut, 100.0 * ct_dataset_token_efficiency(&t->ds),
                info.hit ? "from the cache" : "tokenized");
        if (s->n_skipped) fprintf(t->out, "data: %lld bad records skipped; first: %s\n", (long long)s->n_skipped,
                                  s->first_warning);
        if (info.write_error[0]) fprintf(t->out, "data: could not write the cache (%s)\n", info.write_error);
    }
    if (t->ds.n_samples == 0 || t->ds.rows.n_rows == 0)
        return ct_errorf(CT_EINPUT, "%s: no sample with a trained token (after templating and the max_length cut)",
                         c->data_path);
    /* Ids beyond the model's vocabulary would fail deep inside an op. */
    int64_t V = t->hf.vocab_size, n = t->ds.sample_off[t->ds.n_samples];
    for (int64_t i = 0; i < n; i++)
        if (t->ds.ids[i] < 0 || t->ds.ids[i] >= V)
            return ct_errorf(CT_EINPUT, "%s: token id %d is outside the model's vocabulary of %lld: the tokenizer "
                             "does not belong to the model", c->data_path, t->ds.ids[i], (long long)V);
    return CT_OK;
}

/* The step's arenas sized by the memory plan (trainer/plan/mem_plan.h): one
 * block each, allocated now, so the first step allocates nothing either and
 * the peak is known before it. A plan that falls short shows as more blocks
 * of 16 MiB (tests hold the plan to the measured peak). */
static int plan_arenas(ct_trainer *t) {
    const ct_backend *be = ct_model_backend(t->model);
    ct_plan_input in = {.model = ct_model_config(t->model), .run = t->cfg, .gpu = be->device != CT_CPU,
                        .optimizer_on_host = t->cfg->optimizer_offload == CT_OFFLOAD_CPU,
                        .embedding_on_host = t->cfg->embedding_offload == CT_OFFLOAD_CPU};
    CT_TRY(ct_mem_plan_make(&in, t->ds.max_length, &t->plan));
    CT_TRY(ct_tape_init(&t->tape, be, (size_t)16 << 20));
    CT_TRY(ct_arena_reserve(&t->tape.main, t->plan.main_arena));
    CT_TRY(ct_arena_reserve(&t->tape.scratch, t->plan.scratch_arena));
    if (t->out)
        fprintf(t->out, "memory: %.1f MiB planned on %s (arenas: main %.1f MiB, scratch %.1f MiB; `ctuner plan` "
                "itemizes)\n", (double)t->plan.allocator_total / 1048576.0, be->name,
                (double)t->plan.main_arena / 1048576.0, (double)t->plan.scratch_arena / 1048576.0);
    return CT_OK;
}

static int make_loop_state(ct_trainer *t) {
    const ct_run_config *c = t->cfg;
    int64_t B = c->batch_size, T = t->ds.max_length;
    uint64_t seed = (uint64_t)c->seed;
    /* XTuner's DefaultSampler: shuffled each epoch, the last batch kept. */
    CT_TRY(ct_loader_init(&t->loader, &t->ds, B, seed, true, false));
    CT_TRY(ct_loader_init(&t->peek, &t->ds, B, seed, true, false));
    CT_TRY(ct_batch_alloc(&t->peek_batch, B, T));
    const ct_backend *be = ct_model_backend(t->model);
    const ct_tensor *table = ct_model_decoder(t->model)->tok_embeddings;
    CT_TRY(ct_input_stage_init(&t->stage, be, B, T, table->device != be->device ? table : NULL));
    CT_TRY(plan_arenas(t));

    t->iters_per_epoch = ct_loader_batches_per_epoch(&t->loader);
    t->total_iters = ct_config_total_iters(c, t->ds.rows.n_rows);
    t->total_steps = ct_config_total_steps(c, t->ds.rows.n_rows);
    if (t->iters_per_epoch != ct_config_iters_per_epoch(c, t->ds.rows.n_rows))
        return ct_errorf(CT_ERUNTIME, "internal: loader and config disagree on iterations per epoch");
    CT_TRY(ct_config_scheduler(c, t->iters_per_epoch, t->total_iters, &t->sched));
    /* mmengine's LinearLR over a single iteration returns start_factor and
     * the next phase starts from there: the LR never warms up. Faithful, but
     * worth saying (a short run with warmup_ratio gets this). */
    for (int i = 0; i < t->sched.n && t->out; i++) {
        const ct_sched_span *p = &t->sched.phase[i];
        if (p->kind == CT_SCHED_LINEAR && p->end - p->begin == 1 && p->start_factor != p->end_factor)
            fprintf(t->out, "note: the LinearLR warm-up covers one iteration, so (as in mmengine) the LR stays at "
                    "start_factor x lr = %.3g from then on; set warmup_ratio: 0, or make the warm-up longer\n",
                    p->enter * p->start_factor);
    }

    t->n_params = ct_lora_count(t->lora);
    t->params = calloc(t->n_params, sizeof *t->params);
    if (!t->params) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; i < t->n_params; i++) t->params[i] = ct_lora_at(t->lora, i)->t;
    ct_adamw_config ac = {.beta1 = c->betas[0], .beta2 = c->betas[1], .eps = c->eps,
                          .weight_decay = c->weight_decay, .offload = c->optimizer_offload == CT_OFFLOAD_CPU};
    CT_TRY(ct_adamw_config_check(&ac, "optimizer"));
    CT_TRY(ct_adamw_new(&ac, ct_model_backend(t->model), t->params, t->n_params, &t->adamw));
    return CT_OK;
}

int ct_trainer_open(ct_trainer *t, const ct_train_options *opt, ct_train_result *res) {
    memset(t, 0, sizeof *t);
    t->opt = opt;
    t->cfg = opt->cfg;
    t->res = res;
    t->dist = opt->dist ? opt->dist : ct_dist_single();
    t->rank = t->dist->rank;
    t->world = t->dist->world;
    t->bad_rank = -1;
    t->out = opt->quiet || t->rank != 0 ? NULL : opt->out ? opt->out : stdout; /* rank 0 reports */
    t->last_saved_iter = -1;
    snprintf(t->work_dir, sizeof t->work_dir, "%s", t->cfg->work_dir);
    CT_TRY(ct_mkdirs(t->work_dir));
    /* The limits first (trainer/train_limits.c): a run that cannot fit is
     * refused before the weights or the step's memory are allocated. */
    CT_TRY(ct_trainer_check_model_limits(t));
    /* rank 0 prepares the dataset cache, the other ranks then read it */
    if (t->rank == 0) CT_TRY(load_data(t));
    CT_TRY(ct_train_dist_data_wait(t));
    if (t->rank != 0) CT_TRY(load_data(t));
    CT_TRY(ct_trainer_check_batch(t));
    const ct_backend *be = t->opt->backend;
    if (!be) CT_TRY(ct_backend_by_name(ct_config_device_name(t->cfg->device), "device:", &be));
    CT_TRY(ct_trainer_check_memory(t, be));
    CT_TRY(load_model(t));
    CT_TRY(make_loop_state(t));
    CT_TRY(ct_train_dist_open(t));
    CT_TRY(ct_grad_sync_open(t));
    if (t->out) {
        char plan[512];
        ct_lora_plan(t->lora, plan, sizeof plan);
        fprintf(t->out, "%s", plan);
        ct_adamw_plan(t->adamw, plan, sizeof plan);
        fprintf(t->out, "%s", plan);
        fprintf(t->out, "run: %lld iterations (%lld per epoch) of %lld x %lld tokens, %lld optimizer steps of %lld "
                "iterations\n", (long long)t->total_iters, (long long)((t->iters_per_epoch + t->world - 1) / t->world),
                (long long)t->cfg->batch_size, (long long)t->ds.max_length, (long long)t->total_steps,
                (long long)t->cfg->accumulative_counts);
    }
    return CT_OK;
}

void ct_trainer_close(ct_trainer *t) {
    ct_train_log_close(t);
    ct_grad_sync_close(t);
    ct_train_dist_close(t);
    ct_adamw_free(t->adamw);
    free(t->params);
    ct_tape_free(&t->tape);
    ct_input_stage_free(&t->stage);
    ct_batch_free(&t->peek_batch);
    ct_loader_free(&t->loader);
    ct_loader_free(&t->peek);
    ct_dataset_free(&t->ds);
    ct_tok_free(t->tok);
    ct_model_free(t->model); /* frees the LoRA too */
    ct_hf_config_free(&t->hf);
    free(t->config_text);
    memset(t, 0, sizeof *t);
}

int ct_trainer_count_window(ct_trainer *t, ct_ds_cursor c, int64_t n, int64_t *targets) {
    *targets = 0;
    CT_TRY(ct_loader_seek(&t->peek, c));
    for (int64_t i = 0; i < n; i++) {
        CT_TRY(ct_loader_next(&t->peek, &t->peek_batch));
        *targets += t->peek_batch.n_targets;
    }
    return CT_OK;
}
