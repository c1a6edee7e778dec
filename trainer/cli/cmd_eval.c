/* ctuner eval: loss and perplexity of a model (optionally with a LoRA adapter)
 * on a dataset.
 *
 * Loss = sum of NLL over all scored tokens / their number (Hugging Face's
 * causal-LM convention: position t predicts token t+1, label -100 is not
 * scored; labels are shifted once per sample here), ppl = exp(loss). The data
 * goes through datasets/ exactly as training data would (format, template,
 * max_length cut; samples without a trained token are dropped as XTuner does),
 * unpacked; --batch-tokens N runs consecutive samples together in one forward
 * of at most N tokens, kept apart by segment ids (per-sample sums equal the
 * one-by-one ones up to fp32 rounding; with dynamic-NTK rope and samples longer
 * than max_position_embeddings the pack's longest sample sets the rope base,
 * as in training). Output: "loss X" and "ppl Y" lines, or
 * with --json one object {"loss", "ppl", "tokens", "samples": [{"nll_sum",
 * "tokens"}, ...]} (kept samples in file order). Runs without recording (no
 * grads) on the CPU. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "autograd/ct_error.h"
#include "datasets/dataset.h"
#include "datasets/packing.h"
#include "datasets/template.h"
#include "datasets/tokenizer.h"
#include "trainer/model/adapter.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/model/model.h"

typedef struct {
    const char *model, *adapter, *data, *format, *tmpl, *system, *quant, *tokenizer, *device;
    int64_t max_length, batch_tokens;
    bool json;
} eval_opts;

typedef struct {
    double *nll;     /* [n_samples] NLL sum per kept sample */
    int64_t *count;  /* [n_samples] scored tokens per sample */
    double nll_total;
    int64_t scored, tokens;
} eval_result;

static int prepare_data(const eval_opts *o, ct_dataset *ds) {
    ct_ds_config c = ct_ds_config_default();
    c.data_path = o->data;
    c.template_name = o->tmpl ? o->tmpl : "internlm2_chat";
    c.system = o->system;
    c.max_length = o->max_length;
    c.pack = false;
    c.shuffle_before_pack = false;
    c.tokenizer_path = o->tokenizer ? o->tokenizer : o->model;
    if (o->format) CT_TRY(ct_ds_format_parse(o->format, &c.format));
    const ct_template *t = NULL;
    CT_TRY(ct_template_get(c.template_name, "--template", &t));
    ct_tokenizer *tok = NULL;
    CT_TRY(ct_tok_load(c.tokenizer_path, &tok));
    int rc = ct_dataset_prepare(&c, tok, ds);
    ct_tok_free(tok);
    if (rc == CT_OK && ds->n_samples == 0)
        rc = ct_errorf(CT_EINPUT, "%s: no sample with a scored token (after templating and the max_length cut)",
                       o->data);
    return rc;
}

/* Runs samples [s0, s1) as one packed forward. Host buffers of `cap` tokens. */
static int run_group(const ct_model *m, ct_tape *tape, const ct_dataset *ds, int64_t s0, int64_t s1,
                     int32_t *ids, int32_t *lab, int32_t *seg, eval_result *r) {
    int64_t T = 0, V = ct_model_config(m)->vocab_size;
    for (int64_t s = s0; s < s1; s++) {
        int64_t a = ds->sample_off[s], len = ds->sample_off[s + 1] - a;
        for (int64_t i = 0; i < len; i++) {
            int32_t id = ds->ids[a + i];
            if (id < 0 || id >= V)
                return ct_errorf(CT_EINPUT, "sample %lld (of the kept samples), token %lld: id %d is outside the "
                                 "model's vocabulary of %lld; is this the model's tokenizer?", (long long)s + 1,
                                 (long long)i, id, (long long)V);
            ids[T + i] = id;
            seg[T + i] = (int32_t)(s - s0);
            lab[T + i] = ds->labels[a + i];
        }
        T += len;
    }
    ct_labels_shift(lab, seg, T, lab); /* once: position i predicts token i+1 of the same sample */
    CT_TRY(ct_model_nll(m, tape, ids, lab, seg, T, (int)(s1 - s0), r->nll + s0, r->count + s0));
    for (int64_t s = s0; s < s1; s++) r->nll_total += r->nll[s], r->scored += r->count[s];
    r->tokens += T;
    return CT_OK;
}

static int evaluate(const eval_opts *o, const ct_model *m, const ct_dataset *ds, eval_result *r) {
    int64_t n = ds->n_samples, longest = 0;
    for (int64_t s = 0; s < n; s++) {
        int64_t len = ds->sample_off[s + 1] - ds->sample_off[s];
        if (len > longest) longest = len;
    }
    int64_t cap = o->batch_tokens > longest ? o->batch_tokens : longest;
    int32_t *buf = malloc((size_t)cap * 3 * sizeof *buf); /* ids, labels, seg: [cap] each */
    r->nll = calloc((size_t)n, sizeof *r->nll);
    r->count = calloc((size_t)n, sizeof *r->count);
    if (!buf || !r->nll || !r->count) {
        free(buf);
        return ct_errorf(CT_ERUNTIME, "out of memory");
    }
    ct_tape tape;
    int rc = ct_tape_init(&tape, ct_model_backend(m), 0);
    for (int64_t s0 = 0; rc == CT_OK && s0 < n;) {
        int64_t s1 = s0 + 1, T = ds->sample_off[s1] - ds->sample_off[s0];
        while (s1 < n && T + ds->sample_off[s1 + 1] - ds->sample_off[s1] <= o->batch_tokens)
            T += ds->sample_off[s1 + 1] - ds->sample_off[s1], s1++;
        rc = run_group(m, &tape, ds, s0, s1, buf, buf + cap, buf + 2 * cap, r);
        s0 = s1;
    }
    ct_tape_free(&tape);
    free(buf);
    return rc;
}

static int print_result(const eval_opts *o, const ct_dataset *ds, const eval_result *r) {
    double loss = r->nll_total / (double)r->scored, ppl = exp(loss);
    if (!o->json) {
        printf("loss %.6f\nppl %.6f\n", loss, ppl);
    } else {
        json_t *j = json_object(), *arr = json_array();
        if (!j || !arr) {
            json_decref(j), json_decref(arr);
            return ct_errorf(CT_ERUNTIME, "out of memory");
        }
        for (int64_t s = 0; s < ds->n_samples; s++)
            json_array_append_new(arr, json_pack("{s:f, s:I}", "nll_sum", r->nll[s], "tokens", (json_int_t)r->count[s]));
        json_object_set_new(j, "loss", json_real(loss));
        json_object_set_new(j, "ppl", json_real(ppl));
        json_object_set_new(j, "tokens", json_integer((json_int_t)r->scored));
        json_object_set_new(j, "samples", arr);
        int bad = json_dumpf(j, stdout, JSON_REAL_PRECISION(12));
        json_decref(j);
        fputc('\n', stdout);
        if (bad) return ct_errorf(CT_ERUNTIME, "writing the JSON result failed");
    }
    if (fflush(stdout) != 0) return ct_errorf(CT_ERUNTIME, "writing the output failed: %s", strerror(errno));
    return CT_OK;
}

static int run(const eval_opts *o) {
    ct_model_options mo = {0};
    CT_TRY(ct_backend_by_name(o->device ? o->device : "auto", "--device", &mo.backend));
    CT_TRY(ct_model_quant_from_name(o->quant ? o->quant : "none", &mo.quant));
    mo.double_quant = mo.quant != CT_MODEL_QUANT_NONE; /* QLoRA's usual setting */
    if (o->max_length < 1) return ct_errorf(CT_EINPUT, "--max-length %lld must be >= 1", (long long)o->max_length);
    if (o->batch_tokens < 0) return ct_errorf(CT_EINPUT, "--batch-tokens %lld must be >= 0", (long long)o->batch_tokens);
    ct_dataset ds;
    CT_TRY(prepare_data(o, &ds)); /* bad data fails before a large model is loaded */
    ct_model *m = NULL;
    eval_result r = {0};
    struct timespec t0, t1;
    int rc = ct_model_load(o->model, &mo, &m);
    if (rc == CT_OK && o->adapter) rc = ct_adapter_load(o->adapter, m, false, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (rc == CT_OK) rc = evaluate(o, m, &ds, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc == CT_OK && r.scored == 0)
        rc = ct_errorf(CT_EINPUT, "%s: no token is scored (every label is -100)", o->data);
    if (rc == CT_OK) rc = print_result(o, &ds, &r);
    if (rc == CT_OK) {
        double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        fprintf(stderr, "eval: %lld samples, %lld tokens (%lld scored) in %.2f s, %.0f tokens/s\n",
                (long long)ds.n_samples, (long long)r.tokens, (long long)r.scored, secs,
                secs > 0 ? (double)r.tokens / secs : 0.0);
    }
    free(r.nll);
    free(r.count);
    ct_model_free(m);
    ct_dataset_free(&ds);
    return rc;
}

int ct_cmd_eval(int argc, char **argv) {
    eval_opts o = {.max_length = 2048};
    const ct_argspec specs[] = {
        {"--adapter", CT_ARG_STR, &o.adapter, "DIR", "PEFT LoRA adapter directory to apply"},
        {"--data", CT_ARG_STR, &o.data, "FILE", "dataset: JSON array or JSON Lines"},
        {"--format", CT_ARG_STR, &o.format, "F", "alpaca, openai, conversation, pretokenized (default: detect)"},
        {"--template", CT_ARG_STR, &o.tmpl, "T", "prompt template (default internlm2_chat)"},
        {"--system", CT_ARG_STR, &o.system, "S", "system text for samples without one"},
        {"--max-length", CT_ARG_INT, &o.max_length, "N", "cut samples to N tokens (default 2048)"},
        {"--quant", CT_ARG_STR, &o.quant, "Q", "nf4 or fp4 (blocks of 64, double-quantized absmax) or none (default): quantize the block linears on load"},
        {"--tokenizer", CT_ARG_STR, &o.tokenizer, "DIR", "tokenizer directory (default: MODEL_DIR)"},
        {"--device", CT_ARG_STR, &o.device, "D", "auto (default: the CPU for now), cpu, cuda, cuda-emu (checking only)"},
        {"--batch-tokens", CT_ARG_INT, &o.batch_tokens, "N",
         "run consecutive samples together, up to N tokens per forward (default 0: one by one)"},
        {"--json", CT_ARG_FLAG, &o.json, NULL, "print one JSON object with per-sample NLL sums and token counts"},
    };
    ct_args a = {.usage = "ctuner eval MODEL_DIR [--adapter D] --data FILE [--format F] [--template T] "
                          "[--max-length N] [--quant nf4|fp4|none] [--batch-tokens N] [--device D] [--json]",
                 .summary = "Loss (mean NLL over scored tokens) and perplexity of a model on a dataset.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0]),
                 .min_positional = 1,
                 .max_positional = 1};
    CT_TRY(ct_args_parse(&a, argc, argv));
    if (!o.data) return ct_errorf(CT_EINPUT, "--data FILE is required (usage: %s)", a.usage);
    o.model = a.positional[0];
    return run(&o);
}
