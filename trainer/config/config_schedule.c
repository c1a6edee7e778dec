/* What the trainer derives from the config: the dataset preparation,
 * iterations and optimizer steps of a run, and the learning-rate schedule in
 * iterations, computed the way XTuner's mmengine does it
 * (convert_to_iter_based, chained schedulers), so a
 * translated config gets the same learning rate at every iteration. The LR
 * itself comes from the scheduler (trainer/optim/scheduler.h): one implementation. */

#include "autograd/ct_error.h"
#include "trainer/config/config.h"

ct_ds_config ct_config_ds_config(const ct_run_config *c) {
    ct_ds_config dc = ct_ds_config_default();
    dc.data_path = c->data_path;
    dc.format = c->data_format;
    dc.template_name = c->prompt_template;
    dc.system = c->system && c->system[0] ? c->system : NULL;
    dc.max_length = c->max_length;
    dc.pack = c->pack_to_max_length;
    dc.shuffle_before_pack = c->shuffle_before_pack;
    dc.seed = (uint64_t)c->seed;
    dc.skip_bad_records = c->skip_bad_records;
    dc.threads = (int)c->dataloader_num_workers;
    dc.tokenizer_path = c->pretrained_model_name_or_path;
    return dc;
}

int64_t ct_config_iters_per_epoch(const ct_run_config *c, int64_t n_rows) {
    if (n_rows <= 0) return 0;
    return (n_rows + c->batch_size - 1) / c->batch_size;
}

int64_t ct_config_total_iters(const ct_run_config *c, int64_t n_rows) {
    if (c->max_iters > 0) return c->max_iters;
    return c->max_epochs * ct_config_iters_per_epoch(c, n_rows);
}

int64_t ct_config_total_steps(const ct_run_config *c, int64_t n_rows) {
    int64_t t = ct_config_total_iters(c, n_rows);
    return (t + c->accumulative_counts - 1) / c->accumulative_counts;
}

int64_t ct_config_step_last_iter(const ct_run_config *c, int64_t step, int64_t total_iters) {
    int64_t e = (step + 1) * c->accumulative_counts;
    return (e < total_iters ? e : total_iters) - 1;
}

/* XTuner's param_scheduler, written with its variables: warm-up over
 * warmup_ratio * max_epochs epochs (or warmup_ratio * max_iters iterations
 * when max_iters is set), then cosine to 0 until the end. */
static int default_phases(const ct_run_config *c, ct_sched_phase *ph) {
    bool by_epoch = c->max_iters <= 0;
    double span = by_epoch ? (double)c->max_epochs : (double)c->max_iters;
    double warm = c->warmup_ratio * span;
    ph[0] = (ct_sched_phase){.type = CT_SCHED_LINEAR, .start_factor = 1e-5, .end_factor = 1.0, .factor = -1,
                             .by_epoch = by_epoch, .begin = 0, .end = warm};
    ph[1] = (ct_sched_phase){.type = CT_SCHED_COSINE, .eta_min = 0.0, .factor = -1, .by_epoch = by_epoch,
                             .begin = warm, .end = span};
    return 2;
}

int ct_config_scheduler(const ct_run_config *c, int64_t iters_per_epoch, int64_t total_iters, ct_scheduler *out) {
    ct_sched_phase def[2];
    const ct_sched_phase *ph = c->phases;
    int n = c->n_phases;
    if (n < 0) n = default_phases(c, def), ph = def;
    /* Converted here (config semantics: a null end is the end of training, an
     * empty phase is skipped), then handed to the scheduler in iterations. */
    ct_sched_spec spec[CT_CONFIG_MAX_PHASES];
    int k = 0;
    for (int i = 0; i < n; i++) {
        const ct_sched_phase *p = &ph[i];
        if (p->by_epoch && iters_per_epoch <= 0)
            return ct_errorf(CT_EINPUT, "param_scheduler.%d counts epochs, but the dataset gives no iterations per "
                             "epoch (is it empty?)", i);
        int64_t scale = p->by_epoch ? iters_per_epoch : 1;
        /* mmengine: begin = int(begin * epoch_length), end likewise; T_max is scaled, not truncated */
        int64_t b = ct_sched_epoch_to_iter(p->begin, scale);
        int64_t e = p->end < 0 ? total_iters : ct_sched_epoch_to_iter(p->end, scale);
        if (e <= b) continue; /* too short to cover one iteration (e.g. warm-up on a tiny dataset) */
        spec[k] = ct_sched_spec_default(p->type, (double)b, (double)e, false);
        spec[k].start_factor = p->start_factor;
        spec[k].end_factor = p->end_factor;
        spec[k].eta_min = p->eta_min;
        if (p->type == CT_SCHED_CONSTANT) spec[k].factor = p->factor;
        spec[k].t_max = p->T_max > 0 ? p->T_max * (double)scale : 0.0; /* 0: end - begin */
        k++;
    }
    return ct_sched_init(out, c->lr, spec, k, iters_per_epoch, "param_scheduler");
}
