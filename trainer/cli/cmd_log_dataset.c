/* ctuner log-dataset CONFIG.yaml [--show text|masked|ids|labels|all] [--index N] [--count K] [--set ...]
 *
 * What the model will see, without loading it (XTuner's `xtuner
 * log-dataset`): the data prepared exactly as `ctuner train` prepares it
 * (format, template, SYSTEM, max_length cut, packing with the config's
 * seed), then the statistics (records, dropped and cut samples, tokens,
 * trained tokens), the packing efficiency (real tokens and trained tokens per
 * slot of the packed rows), the run's length in iterations and optimizer
 * steps, and K samples from N on (kept samples in file order, counted from 0)
 * rendered as datasets/render.h shows them: text (special tokens written
 * out), masked (trained spans between « and »), ids, labels (-100 = not
 * trained; aligned: label t belongs to token t). Default --show masked. */
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/dataset.h"
#include "datasets/render.h"
#include "datasets/template.h"
#include "datasets/tokenizer.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"

static int prepare(const ct_run_config *c, const ct_tokenizer *tok, ct_dataset *ds) {
    const ct_template *t;
    CT_TRY(ct_template_get(c->prompt_template, "prompt_template", &t));
    ct_ds_config dc = ct_config_ds_config(c);
    return ct_dataset_prepare(&dc, tok, ds);
}

static void print_stats(const ct_run_config *c, const ct_dataset *ds) {
    const ct_ds_stats *s = &ds->stats;
    printf("data: %s (format %s, template %s, max_length %lld, %s)\n", c->data_path, ct_ds_format_name(c->data_format),
           c->prompt_template, (long long)c->max_length, c->pack_to_max_length ? "packed" : "one sample per row");
    printf("records: %lld; kept samples: %lld; skipped (bad): %lld; dropped (nothing to learn): %lld; dropped (no "
           "trained token after the cut): %lld; cut at max_length: %lld\n", (long long)s->n_records,
           (long long)s->n_samples, (long long)s->n_skipped, (long long)s->n_dropped_empty,
           (long long)s->n_dropped_untrained, (long long)s->n_truncated);
    if (s->n_skipped && s->first_warning[0]) printf("first skipped record: %s\n", s->first_warning);
    printf("tokens: %lld; trained (loss targets): %lld; mean sample length %.1f\n", (long long)s->n_tokens,
           (long long)s->n_targets, s->n_samples ? (double)s->n_tokens / (double)s->n_samples : 0.0);
    int64_t rows = ds->rows.n_rows;
    printf("packing: %lld rows of %lld tokens, %.2f samples per row; token efficiency %.2f%% (real tokens per slot), "
           "target efficiency %.2f%% (trained tokens per slot)\n", (long long)rows, (long long)ds->max_length,
           rows ? (double)s->n_samples / (double)rows : 0.0, 100.0 * ct_dataset_token_efficiency(ds),
           100.0 * ct_dataset_target_efficiency(ds));
    if (rows > 0)
        printf("run: %lld iterations per epoch (batch_size %lld), %lld iterations, %lld optimizer steps "
               "(accumulative_counts %lld)\n", (long long)ct_config_iters_per_epoch(c, rows), (long long)c->batch_size,
               (long long)ct_config_total_iters(c, rows), (long long)ct_config_total_steps(c, rows),
               (long long)c->accumulative_counts);
}

static int show_sample(const ct_tokenizer *tok, const ct_dataset *ds, int64_t i, const char *show) {
    const int32_t *ids, *labels;
    int64_t n = ct_dataset_sample(ds, i, &ids, &labels), trained = 0;
    for (int64_t k = 0; k < n; k++) trained += labels[k] >= 0;
    printf("\n---- sample %lld: %lld tokens, %lld trained ----\n", (long long)i, (long long)n, (long long)trained);
    static const char *const modes[] = {"text", "masked", "ids", "labels"};
    for (int m = 0; m < 4; m++) {
        if (strcmp(show, "all") != 0 && strcmp(show, modes[m]) != 0) continue;
        ct_show mode;
        CT_TRY(ct_show_parse(modes[m], &mode));
        char *out = NULL;
        CT_TRY(ct_render_sample(tok, ids, labels, (size_t)n, mode, &out, NULL));
        printf("[%s]\n%s\n", modes[m], out);
        free(out);
    }
    return CT_OK;
}

static int run(const char *path, const char *show, int64_t index, int64_t count, const char **sets, int n_sets) {
    ct_show probe;
    if (strcmp(show, "all") != 0 && ct_show_parse(show, &probe) != CT_OK)
        return ct_errorf(CT_EINPUT, "--show '%s': use text, masked, ids, labels or all", show);
    if (index < 0) return ct_errorf(CT_EINPUT, "--index %lld must be >= 0", (long long)index);
    if (count < 0) return ct_errorf(CT_EINPUT, "--count %lld must be >= 0", (long long)count);
    ct_run_config c;
    CT_TRY(ct_config_load(path, sets, n_sets, &c));
    ct_tokenizer *tok = NULL;
    ct_dataset ds;
    memset(&ds, 0, sizeof ds);
    int rc = ct_tok_load(c.pretrained_model_name_or_path, &tok);
    if (!rc) rc = prepare(&c, tok, &ds);
    if (!rc) print_stats(&c, &ds);
    if (!rc && count > 0 && index >= ds.n_samples)
        rc = ct_errorf(CT_EINPUT, "--index %lld: the data has %lld kept samples (0..%lld)", (long long)index,
                       (long long)ds.n_samples, (long long)ds.n_samples - 1);
    for (int64_t i = index; !rc && i < index + count && i < ds.n_samples; i++) rc = show_sample(tok, &ds, i, show);
    ct_dataset_free(&ds);
    ct_tok_free(tok);
    ct_config_free(&c);
    return rc;
}

int ct_cmd_log_dataset(int argc, char **argv) {
    const char *show = "masked", *set = NULL;
    int64_t index = 0, count = 1;
    const ct_argspec specs[] = {
        {"--show", CT_ARG_STR, &show, "MODE", "text, masked (default), ids, labels or all"},
        {"--index", CT_ARG_INT, &index, "N", "first sample shown (kept samples in file order, from 0; default 0)"},
        {"--count", CT_ARG_INT, &count, "K", "samples shown (default 1; 0: statistics only)"},
        {"--set", CT_ARG_STR, &set, "KEY.PATH=VALUE", "override a config setting (repeat for more)"},
    };
    ct_args a = {.usage = "ctuner log-dataset CONFIG.yaml [--show text|masked|ids|labels|all] [--index N] "
                          "[--count K] [--set key.path=value ...]",
                 .summary = "Show the training data after templating, masking and packing, with the packing "
                            "statistics, without loading the model.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0]),
                 .min_positional = 1,
                 .max_positional = 1};
    CT_TRY(ct_args_parse(&a, argc, argv));
    const char **sets = NULL;
    int n_sets = 0;
    CT_TRY(ct_args_collect(&a, argc, argv, "--set", &sets, &n_sets));
    int rc = run(a.positional[0], show, index, count, sets, n_sets);
    free(sets);
    return rc;
}
