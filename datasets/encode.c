/* XTuner's encode_fn in C: see encode.h for the rules. Input and output texts
 * of a turn are tokenized separately (special strings matched inside each, no
 * BOS/EOS added by the tokenizer), which is what makes the label boundaries
 * exact: a token never straddles the input/output border. */
#include "datasets/encode.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

/* Appends the encoding of text; labels are the tokens' own ids when trained,
 * else CT_IGNORE_INDEX. */
static int append_text(const ct_tokenizer *tok, const char *text, size_t len, bool trained, ct_ids *ids,
                       ct_ids *labels) {
    size_t start = ids->n;
    CT_TRY(ct_tok_encode(tok, text, len, false, ids));
    size_t added = ids->n - start;
    CT_TRY(ct_ids_reserve(labels, added));
    for (size_t k = 0; k < added; k++) labels->v[labels->n++] = trained ? ids->v[start + k] : CT_IGNORE_INDEX;
    return CT_OK;
}

static int append_id(int32_t id, bool trained, ct_ids *ids, ct_ids *labels) {
    CT_TRY(ct_ids_push(ids, id));
    return ct_ids_push(labels, trained ? id : CT_IGNORE_INDEX);
}

/* *cut = true when turns were left out because max_length was reached. */
static int encode_turns(const ct_encode_opts *o, const ct_conv *c, ct_ids *ids, ct_ids *labels, bool *cut) {
    const ct_template *t = o->tmpl;
    if (!t) return ct_errorf(CT_EINPUT, "no prompt template given; conversations need one");
    int32_t bos = ct_tok_add_bos_token(o->tok) ? ct_tok_bos_id(o->tok) : -1;
    int32_t eos = ct_tok_eos_id(o->tok);
    if (!t->suffix_as_eos && eos < 0)
        return ct_errorf(CT_EINPUT, "template %s appends EOS after each answer, but the tokenizer has no EOS token; "
                         "set eos_token in tokenizer_config.json or pick a template whose suffix ends a turn",
                         t->name);
    bool need_bos = true;
    int rc = CT_OK;
    for (size_t i = 0; i < c->n_turns && rc == CT_OK; i++) {
        const ct_turn *turn = &c->turns[i];
        if (need_bos && bos >= 0) CT_TRY(append_id(bos, false, ids, labels));
        need_bos = false;
        const char *system = turn->system;
        if (i == 0 && !system) system = o->system;
        char *in = NULL, *out = NULL;
        size_t in_len = 0, out_len = 0;
        rc = ct_template_render_input(t, system, turn->input, &in, &in_len);
        if (!rc) rc = ct_template_render_output(t, turn->output, &out, &out_len);
        if (!rc) rc = append_text(o->tok, in, in_len, false, ids, labels);
        if (!rc) rc = append_text(o->tok, out, out_len, turn->output_loss, ids, labels);
        free(in);
        free(out);
        if (!rc && !t->suffix_as_eos) {
            rc = append_id(eos, turn->output_loss, ids, labels);
            need_bos = true;
        }
        if (!rc && t->sep[0]) rc = append_text(o->tok, t->sep, strlen(t->sep), false, ids, labels);
        /* Later turns would only be cut off: every piece above is tokenized
         * on its own, so stopping here leaves the same prefix. */
        if ((int64_t)ids->n >= o->max_length && i + 1 < c->n_turns) {
            *cut = true;
            break;
        }
    }
    return rc;
}

int ct_encode_conv(const ct_encode_opts *o, const ct_conv *c, ct_ids *ids, ct_ids *labels, ct_encode_info *info) {
    ids->n = labels->n = 0;
    info->truncated = false;
    info->n_trained = 0;
    if (o->max_length <= 0) return ct_errorf(CT_EINPUT, "max_length must be positive (got %lld)", (long long)o->max_length);
    if (c->pretokenized) {
        CT_TRY(ct_ids_reserve(ids, c->ids.n));
        CT_TRY(ct_ids_reserve(labels, c->ids.n));
        memcpy(ids->v, c->ids.v, c->ids.n * sizeof *ids->v);
        memcpy(labels->v, c->labels.v, c->ids.n * sizeof *labels->v);
        ids->n = labels->n = c->ids.n;
    } else {
        bool cut = false;
        CT_TRY(encode_turns(o, c, ids, labels, &cut));
        info->truncated = cut;
    }
    if ((int64_t)ids->n > o->max_length) {
        ids->n = labels->n = (size_t)o->max_length;
        info->truncated = true;
    }
    for (size_t k = 0; k < labels->n; k++) info->n_trained += labels->v[k] >= 0;
    return CT_OK;
}
