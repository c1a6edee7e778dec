/* The InternLM2 decoder layer and model forward from the ops (see decoder.h). */
#include "decoder.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "autograd/ct_error.h"

/* Runs an op; on failure (message and code already set by the op) adds which
 * step failed, keeping the op's code (CT_EINPUT for bad input such as an
 * out-of-range token id, CT_ERUNTIME for memory or device failures). */
#define CT_OP(dst, expr, what)                                         \
    do {                                                               \
        if (!((dst) = (expr))) return ct_error_wrap(ct_last_status(), "%s", (what)); \
    } while (0)

int ct_decoder_positions_check(const int32_t *pos, int64_t T, int64_t *seq_len) {
    *seq_len = 0;
    if (T < 1 || T > INT32_MAX)
        return ct_errorf(CT_EINPUT, "decoder input: %lld tokens (need 1..%d)", (long long)T, INT32_MAX);
    int64_t max_pos = -1;
    for (int64_t i = 0; i < T; i++) {
        if (pos[i] < 0)
            return ct_errorf(CT_EINPUT, "decoder input: negative position %d at token %lld", pos[i],
                             (long long)i);
        if (pos[i] > max_pos) max_pos = pos[i];
    }
    *seq_len = max_pos + 1;
    return CT_OK;
}

int ct_decoder_input_make(ct_decoder_input *in, ct_tape *t, const int32_t *pos, const int32_t *seg,
                          int64_t T) {
    memset(in, 0, sizeof *in);
    int64_t seq_len;
    CT_TRY(ct_decoder_positions_check(pos, T, &seq_len));
    ct_tensor *pt = ct_tape_new(t, CT_I32, 1, &T);
    if (!pt || t->be->upload(pt->data, pos, (size_t)T * sizeof *pos))
        return ct_error_wrap(CT_ERUNTIME, "decoder input: positions");
    ct_tensor *runs = NULL;
    if (seg && !(runs = ct_segment_runs_tensor(t, seg, T)))
        return ct_error_wrap(ct_last_status(), "decoder input");
    in->pos = pt;
    in->runs = runs;
    in->seq_len = seq_len;
    return CT_OK;
}

/* CT_EINPUT unless t is [rows, cols] (any dtype). */
static int check_matrix(const ct_tensor *t, const char *what, int64_t rows, int64_t cols) {
    if (!t) return ct_errorf(CT_EINPUT, "decoder: %s weight missing", what);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        char s[64];
        return ct_errorf(CT_EINPUT, "decoder: %s%s%s is %s, expected [%lld, %lld]; check the model config", what,
                         t->name ? " " : "", t->name ? t->name : "", ct_shape_str(t, s, sizeof s),
                         (long long)rows, (long long)cols);
    }
    return CT_OK;
}

static int check_vector(const ct_tensor *t, const char *what, int64_t n) {
    if (!t) return ct_errorf(CT_EINPUT, "decoder: %s weight missing", what);
    if (ct_numel(t) != n)
        return ct_errorf(CT_EINPUT, "decoder: %s%s%s has %lld elements, expected %lld (hidden size)",
                         what, t->name ? " " : "", t->name ? t->name : "", (long long)ct_numel(t),
                         (long long)n);
    return CT_OK;
}

int ct_decoder_layer_check(const ct_decoder_dims *d, const ct_decoder_layer_weights *w) {
    if (d->hidden <= 0 || d->n_heads <= 0 || d->n_kv_heads <= 0 || d->head_dim <= 0 ||
        d->intermediate <= 0 || d->n_heads % d->n_kv_heads != 0 || d->head_dim % 2 != 0)
        return ct_errorf(CT_EINPUT,
                         "decoder: bad dims (hidden %d, heads %d, kv heads %d, head_dim %d, "
                         "intermediate %d): all positive, heads a multiple of kv heads, head_dim even",
                         d->hidden, d->n_heads, d->n_kv_heads, d->head_dim, d->intermediate);
    int64_t D = d->hidden, F = d->intermediate, hd = d->head_dim;
    int64_t G = d->n_heads / d->n_kv_heads;
    CT_TRY(check_vector(w->attention_norm, "attention_norm", D));
    CT_TRY(check_vector(w->ffn_norm, "ffn_norm", D));
    CT_TRY(check_matrix(w->wqkv.w, "wqkv", (int64_t)d->n_kv_heads * (G + 2) * hd, D));
    CT_TRY(check_matrix(w->wo.w, "wo", D, (int64_t)d->n_heads * hd));
    CT_TRY(check_matrix(w->w1.w, "w1", F, D));
    CT_TRY(check_matrix(w->w3.w, "w3", F, D));
    CT_TRY(check_matrix(w->w2.w, "w2", D, F));
    return CT_OK;
}

/* The layer body: every op records itself, so it serves the plain layer, the
 * checkpoint forward (recording off) and the checkpoint recomputation alike. */
static int layer_body(ct_tape *t, const ct_decoder_dims *d, const ct_decoder_layer_weights *w,
                      const ct_decoder_input *in, ct_tensor *h, ct_tensor **out) {
    int G = d->n_heads / d->n_kv_heads;
    /* wqkv's output is [T, Hkv*(G+2)*hd]: per KV head, G query heads and k rotate,
     * v passes through. */
    ct_rope_params rp = d->rope;
    rp.head_dim = d->head_dim;
    rp.group = G + 2;
    rp.rotate_per_group = G + 1;
    rp.seq_len = in->seq_len;
    ct_attn_params ap = {.n_kv_heads = d->n_kv_heads,
                         .group = G,
                         .head_dim = d->head_dim,
                         .scale = (float)(1.0 / sqrt((double)d->head_dim)),
                         .compute = d->attn_compute};

    ct_tensor *x, *qkv, *qkv_r, *att, *o, *h1;     /* attention block, all [T, ·] */
    CT_OP(x, ct_rmsnorm(t, h, w->attention_norm, d->eps), "attention_norm");   /* [T, D] */
    CT_OP(qkv, ct_lora_linear(t, x, &w->wqkv), "wqkv");           /* [T, Hkv*(G+2)*hd] */
    CT_OP(qkv_r, ct_rope(t, qkv, in->pos, &rp), "rope");          /* same shape */
    CT_OP(att, ct_attention(t, qkv_r, in->runs, &ap), "attention"); /* [T, Hq*hd] */
    CT_OP(o, ct_lora_linear(t, att, &w->wo), "wo");               /* [T, D] */

    ct_tensor *x2, *gate, *up, *act, *down;         /* feed-forward block */
    /* The attention residual h1 = h + o and ffn_norm in one pass (the same
     * values and entries as ct_add then ct_rmsnorm); both are needed again in
     * a recomputation, so there is no tail variant. */
    CT_OP(x2, ct_add_rmsnorm(t, h, o, w->ffn_norm, d->eps, &h1),
          "attention residual + ffn_norm");                       /* [T, D] both */
    CT_OP(gate, ct_lora_linear(t, x2, &w->w1), "w1");             /* [T, F] */
    CT_OP(up, ct_lora_linear(t, x2, &w->w3), "w3");               /* [T, F] */
    CT_OP(act, ct_swiglu(t, gate, up), "swiglu");                 /* [T, F] */
    /* The layer's output is what a checkpoint keeps, so its recomputation
     * skips w2's GEMM and the residual add (the _tail ops). */
    CT_OP(down, ct_lora_linear_tail(t, act, &w->w2), "w2");       /* [T, D] */
    CT_OP(*out, ct_add_tail(t, h1, down), "ffn residual");        /* [T, D] */
    return CT_OK;
}

static int check_layer_input(const ct_decoder_dims *d, const ct_decoder_input *in,
                             const ct_tensor *h, ct_dtype act) {
    if (!in->pos) return ct_errorf(CT_EINPUT, "decoder: no positions (call ct_decoder_input_make)");
    if (h->dtype != act || h->ndim != 2 || h->shape[1] != d->hidden || h->shape[0] != ct_numel(in->pos)) {
        char s[64];
        return ct_errorf(CT_EINPUT, "decoder: hidden states %s %s, expected %s [%lld, %d] (tokens, hidden)",
                         ct_dtype_name(h->dtype), ct_shape_str(h, s, sizeof s), ct_dtype_name(act),
                         (long long)ct_numel(in->pos), d->hidden);
    }
    return CT_OK;
}

int ct_decoder_layer(ct_tape *t, const ct_decoder_dims *d, const ct_decoder_layer_weights *w,
                     const ct_decoder_input *in, ct_tensor *h, ct_tensor **out) {
    CT_TRY(ct_decoder_layer_check(d, w));
    CT_TRY(check_layer_input(d, in, h, t->be->act_dtype));
    return layer_body(t, d, w, in, h, out);
}

/* What a checkpointed segment needs to re-run the layer. Lives in the tape's
 * meta arena until ct_tape_reset, i.e. past the step's backward. */
typedef struct {
    ct_decoder_dims dims;
    const ct_decoder_layer_weights *w;
    ct_decoder_input in;
} layer_segment;

static int layer_segment_fn(ct_tape *t, void *ctx, ct_tensor *in, ct_tensor **out) {
    const layer_segment *s = ctx;
    return layer_body(t, &s->dims, s->w, &s->in, in, out);
}

int ct_decoder_layer_checkpointed(ct_tape *t, const ct_decoder_dims *d,
                                  const ct_decoder_layer_weights *w, const ct_decoder_input *in,
                                  ct_tensor *h, ct_tensor **out) {
    CT_TRY(ct_decoder_layer_check(d, w));
    CT_TRY(check_layer_input(d, in, h, t->be->act_dtype));
    layer_segment *s = ct_tape_meta(t, sizeof *s);
    if (!s) return ct_error_wrap(CT_ERUNTIME, "decoder: checkpoint state");
    s->dims = *d;
    s->w = w;
    s->in = *in;
    return ct_checkpoint(t, layer_segment_fn, s, h, out);
}

ct_tensor *ct_decoder_embed(ct_tape *t, const ct_decoder_model *m, ct_tensor *ids, const int32_t *host_ids) {
    const ct_tensor *table = m->tok_embeddings;
    if (!table) {
        ct_errorf(CT_EINPUT, "decoder: tok_embeddings weight missing");
        return NULL;
    }
    if (table->device == t->be->device) return ct_embedding(t, m->tok_embeddings, ids);
    if (!host_ids) {
        ct_errorf(CT_EINPUT, "decoder: the embedding table is in host memory (embedding offload): the token ids "
                  "are needed on the host too (ct_decoder_input.host_ids)");
        return NULL;
    }
    return ct_embedding_host(t, table, host_ids, ct_numel(ids));
}

int ct_decoder_model_hidden(ct_tape *t, const ct_decoder_model *m, ct_tensor *ids,
                            const ct_decoder_input *in, bool checkpoint, ct_tensor **hidden) {
    if (!in->pos || ids->dtype != CT_I32 || ct_numel(ids) != ct_numel(in->pos))
        return ct_errorf(CT_EINPUT, "decoder: token ids must be i32 with one id per position (%lld ids, %lld positions)",
                         (long long)ct_numel(ids), in->pos ? (long long)ct_numel(in->pos) : 0LL);
    CT_TRY(check_vector(m->norm, "norm", m->dims.hidden));
    if (!m->tok_embeddings || m->tok_embeddings->ndim != 2 ||
        m->tok_embeddings->shape[1] != m->dims.hidden)
        return ct_errorf(CT_EINPUT, "decoder: tok_embeddings must be [vocab, %d]", m->dims.hidden);

    ct_tensor *h; /* [T, D] the residual stream */
    if (in->embedded) {
        h = in->embedded;
        if (h->dtype != t->be->act_dtype || h->ndim != 2 || h->shape[0] != ct_numel(ids) ||
            h->shape[1] != m->dims.hidden)
            return ct_errorf(CT_EINPUT, "decoder: the embedded rows must be %s [%lld, %d]",
                             ct_dtype_name(t->be->act_dtype), (long long)ct_numel(ids), m->dims.hidden);
    } else {
        CT_OP(h, ct_decoder_embed(t, m, ids, in->host_ids), "tok_embeddings");
    }
    for (int l = 0; l < m->n_layers; l++) {
        ct_tensor *next = NULL;
        CT_TRY(ct_tape_mark(t, l));
        int rc = checkpoint ? ct_decoder_layer_checkpointed(t, &m->dims, &m->layers[l], in, h, &next)
                            : ct_decoder_layer(t, &m->dims, &m->layers[l], in, h, &next);
        if (rc) return ct_error_wrap(rc, "layer %d", l);
        h = next;
    }
    CT_TRY(ct_tape_mark(t, m->n_layers));
    CT_OP(*hidden, ct_rmsnorm(t, h, m->norm, m->dims.eps), "final norm"); /* [T, D] */
    return CT_OK;
}

int ct_decoder_model_loss(ct_tape *t, const ct_decoder_model *m, ct_tensor *ids,
                          const ct_decoder_input *in, ct_tensor *labels, bool checkpoint,
                          float norm, ct_tensor **loss, int64_t *n_trained) {
    if (labels->dtype != CT_I32 || ct_numel(labels) != ct_numel(ids))
        return ct_errorf(CT_EINPUT, "decoder: labels must be i32 with one label per token (%lld labels, %lld tokens)",
                         (long long)ct_numel(labels), (long long)ct_numel(ids));
    if (!m->output.w) return ct_errorf(CT_EINPUT, "decoder: output weight missing");
    CT_TRY(check_matrix(m->output.w, "output", ct_dim_from_end(m->output.w, 2), m->dims.hidden));
    ct_tensor *hidden;
    CT_TRY(ct_decoder_model_hidden(t, m, ids, in, checkpoint, &hidden));
    CT_OP(*loss, ct_linear_cross_entropy(t, hidden, &m->output, labels, norm, n_trained), "output loss");
    return CT_OK;
}
