/* Evaluation during training, like XTuner's EvaluateChatHook: before
 * training, every evaluation_freq iterations and at the end, greedy answers
 * (evaluation_max_new_tokens at most) to each of evaluation_inputs, prompted
 * exactly as `ctuner chat` does (BOS + SYSTEM + INSTRUCTION of the template),
 * printed and appended to work_dir/eval_log.jsonl as
 *   {"iter": N, "when": "before"|"after"|"", "input": ..., "output": ...}.
 * Generation runs in its own generator (own tape, KV cache made per
 * evaluation and freed after), with recording off: no dropout, no grads, no
 * random numbers; the training tape, grads and data order are untouched.
 *
 * And the loss of the final model on a data file (`ctuner train --eval-data`):
 * the samples prepared as `ctuner eval` prepares them (unpacked, the config's
 * template, SYSTEM and max_length), one forward per sample, the NLL summed
 * over all scored tokens and divided by their number. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "autograd/ct_error.h"
#include "trainer/model/generate.h"
#include "trainer/train_internal.h"

#define MAX_STOP_IDS 16

typedef struct {
    char *buf;
    size_t len, cap;
} text_buf;

static int collect(void *ctx, const char *text, size_t len) {
    text_buf *b = ctx;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + len + 1 > cap) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) return ct_errorf(CT_ERUNTIME, "out of memory for an evaluation answer");
        b->buf = nb, b->cap = cap;
    }
    memcpy(b->buf + b->len, text, len);
    b->len += len;
    b->buf[b->len] = '\0';
    return CT_OK;
}

/* BOS + the template's input text for `input` (with SYSTEM), as chat's first turn. */
static int build_prompt(ct_trainer *t, const char *input, ct_ids *out) {
    out->n = 0;
    int32_t bos = ct_tok_bos_id(t->tok);
    if (bos >= 0) CT_TRY(ct_ids_push(out, bos));
    char *text = NULL;
    size_t len = 0;
    const char *sys = t->cfg->system && t->cfg->system[0] ? t->cfg->system : NULL;
    CT_TRY(ct_template_render_input(t->tmpl, sys, input, &text, &len));
    int rc = ct_tok_encode(t->tok, text, len, false, out);
    free(text);
    return rc;
}

/* EOS ids, and the template's stop words: as ids when one special token, else as text. */
static int stop_words(ct_trainer *t, int32_t *ids, size_t *n_ids, const char **texts, size_t *n_texts) {
    *n_ids = *n_texts = 0;
    int32_t eos = ct_tok_eos_id(t->tok);
    int64_t cfg_eos = ct_model_config(t->model)->eos_token_id;
    if (eos >= 0) ids[(*n_ids)++] = eos;
    if (cfg_eos >= 0 && cfg_eos != eos) ids[(*n_ids)++] = (int32_t)cfg_eos;
    for (const char *const *w = t->tmpl->stop_words; w && *w && *n_ids < MAX_STOP_IDS; w++) {
        ct_ids enc = {0};
        int rc = ct_tok_encode(t->tok, *w, strlen(*w), false, &enc);
        if (!rc && enc.n == 1 && ct_tok_is_special(t->tok, enc.v[0])) ids[(*n_ids)++] = enc.v[0];
        else if (!rc) texts[(*n_texts)++] = *w;
        ct_ids_free(&enc);
        CT_TRY(rc);
    }
    return CT_OK;
}

static int log_answer(ct_trainer *t, FILE *f, const char *when, const char *input, const char *output) {
    json_t *j = json_pack("{s:I, s:s, s:s, s:s}", "iter", (json_int_t)t->iter, "when", when, "input", input,
                          "output", output);
    if (!j) return ct_errorf(CT_ERUNTIME, "evaluation: an answer that is not valid UTF-8 cannot be logged");
    int bad = json_dumpf(j, f, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(j);
    if (bad || fputc('\n', f) == EOF || fflush(f) != 0)
        return ct_errorf(CT_ERUNTIME, "%s/eval_log.jsonl: write error: %s", t->work_dir, strerror(errno));
    return CT_OK;
}

static int answer_all(ct_trainer *t, const char *when, FILE *log, ct_ids *prompt, ct_ids *answer, text_buf *tb) {
    const ct_run_config *c = t->cfg;
    int32_t stop_ids[MAX_STOP_IDS];
    const char *stop_texts[8];
    size_t n_ids, n_texts;
    CT_TRY(stop_words(t, stop_ids, &n_ids, stop_texts, &n_texts));
    int64_t longest = 0;
    for (size_t i = 0; i < c->n_evaluation_inputs; i++) {
        CT_TRY(build_prompt(t, c->evaluation_inputs[i], prompt));
        if ((int64_t)prompt->n > longest) longest = (int64_t)prompt->n;
    }
    ct_generator *g = NULL;
    CT_TRY(ct_gen_new(ct_model_decoder(t->model), ct_model_backend(t->model), longest + c->evaluation_max_new_tokens,
                      &g));
    ct_sampler s;
    ct_sampling_params sp = {.temperature = 0, .top_k = 0, .top_p = 1, .repetition_penalty = 1, .seed = 0};
    int rc = ct_sampler_init(&s, &sp, ct_gen_vocab(g));
    if (rc) {
        ct_gen_free(g);
        return rc;
    }
    int32_t V = ct_tok_vocab_size(t->tok);
    ct_gen_limits lim = {.max_new_tokens = c->evaluation_max_new_tokens, .stop_ids = stop_ids, .n_stop_ids = n_ids,
                         .stop_texts = stop_texts, .n_stop_texts = n_texts,
                         .vocab_limit = V < ct_gen_vocab(g) ? V : 0};
    if (t->out) {
        if (when[0]) ct_train_log_note(t, "evaluation %s training:\n", when);
        else ct_train_log_note(t, "evaluation after iteration %lld:\n", (long long)t->iter);
    }
    for (size_t i = 0; rc == CT_OK && i < c->n_evaluation_inputs; i++) {
        const char *input = c->evaluation_inputs[i];
        ct_gen_result res;
        rc = build_prompt(t, input, prompt);
        if (!rc) rc = ct_gen_truncate(g, 0);
        answer->n = 0;
        tb->len = 0;
        if (!rc) rc = collect(tb, "", 0);
        if (!rc) rc = ct_gen_generate(g, &s, t->tok, prompt->v, (int64_t)prompt->n, &lim, collect, tb, answer, &res);
        if (!rc && t->out) fprintf(t->out, "  %s\n  -> %s\n", input, tb->buf);
        if (!rc) rc = log_answer(t, log, when, input, tb->buf);
    }
    if (t->out) fflush(t->out);
    ct_sampler_free(&s);
    ct_gen_free(g);
    return rc;
}

int ct_eval_hook_chat(ct_trainer *t, const char *when) {
    if (t->cfg->n_evaluation_inputs == 0) return CT_OK;
    char path[CT_PATH_MAX];
    CT_TRY(ct_path_join(path, sizeof path, t->work_dir, "eval_log.jsonl"));
    FILE *log = fopen(path, "a");
    if (!log) return ct_errorf(CT_ERUNTIME, "%s: cannot open for appending: %s", path, strerror(errno));
    ct_ids prompt = {0}, answer = {0};
    text_buf tb = {0};
    int rc = answer_all(t, when, log, &prompt, &answer, &tb);
    if (fclose(log) != 0 && !rc) rc = ct_errorf(CT_ERUNTIME, "%s: write error: %s", path, strerror(errno));
    ct_ids_free(&prompt);
    ct_ids_free(&answer);
    free(tb.buf);
    if (rc) return ct_error_wrap(rc, "evaluation %s", when[0] ? when : "during training");
    return CT_OK;
}

static int eval_samples(ct_trainer *t, const ct_dataset *ds, double *loss, int64_t *tokens) {
    int64_t longest = 0;
    for (int64_t s = 0; s < ds->n_samples; s++)
        if (ds->sample_off[s + 1] - ds->sample_off[s] > longest) longest = ds->sample_off[s + 1] - ds->sample_off[s];
    int32_t *lab = malloc((size_t)longest * sizeof *lab); /* (longest) shifted labels of one sample */
    if (!lab) return ct_errorf(CT_ERUNTIME, "out of memory");
    int64_t V = ct_model_config(t->model)->vocab_size;
    double total = 0;
    int64_t scored = 0;
    int rc = CT_OK;
    for (int64_t s = 0; rc == CT_OK && s < ds->n_samples; s++) {
        int64_t a = ds->sample_off[s], len = ds->sample_off[s + 1] - a;
        for (int64_t i = 0; i < len; i++) {
            if (ds->ids[a + i] < 0 || ds->ids[a + i] >= V)
                rc = ct_errorf(CT_EINPUT, "eval data, sample %lld: token id %d is outside the vocabulary of %lld",
                               (long long)s + 1, ds->ids[a + i], (long long)V);
            lab[i] = i + 1 < len ? ds->labels[a + i + 1] : -100; /* position i predicts token i+1 */
        }
        double nll = 0;
        int64_t count = 0;
        if (!rc) rc = ct_model_nll(t->model, &t->tape, ds->ids + a, lab, NULL, len, 1, &nll, &count);
        total += nll;
        scored += count;
    }
    free(lab);
    if (rc == CT_OK && scored == 0) rc = ct_errorf(CT_EINPUT, "eval data: no token is scored");
    *loss = scored > 0 ? total / (double)scored : 0.0;
    *tokens = scored;
    return rc;
}

int ct_eval_hook_loss(ct_trainer *t, const char *path, double *loss, int64_t *tokens) {
    const ct_run_config *c = t->cfg;
    ct_ds_config dc = ct_ds_config_default();
    dc.data_path = path;
    dc.template_name = c->prompt_template;
    dc.system = c->system && c->system[0] ? c->system : NULL;
    dc.max_length = c->max_length;
    dc.pack = false;
    dc.shuffle_before_pack = false;
    dc.tokenizer_path = c->pretrained_model_name_or_path;
    ct_dataset ds;
    int rc = ct_dataset_prepare(&dc, t->tok, &ds);
    if (rc) return ct_error_wrap(rc, "--eval-data");
    rc = eval_samples(t, &ds, loss, tokens);
    ct_dataset_free(&ds);
    return rc;
}
