/* The KV cache and the incremental forward (see generate.h).
 *
 * One feed of n tokens at positions p0 .. p0+n-1:
 *   h = tok_embeddings[ids]                                     [n, D]
 *   per layer: x = rmsnorm(h); qkv = rope(wqkv(x), p0..)        [n, Hkv*(G+2)*hd]
 *              k, v of qkv -> cache rows p0..; att = attention   [n, Hq*hd]
 *              h += wo(att); h += w2(swiglu(w1 x2, w3 x2)), x2 = rmsnorm(h)
 *   logits = output(rmsnorm(h[n-1]))                            [1, V]
 * The layer output is copied back into h and the layer's activations are
 * released (arena rewind), so a feed needs one layer's working set, not all. */
#include "trainer/model/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "autograd/ops.h"
#include "autograd/tape.h"

struct ct_generator {
    const ct_decoder_model *m;
    const ct_backend *be;
    int64_t max_len, len;
    int32_t vocab;
    ct_tape tape;      /* activations of a feed (recording off) */
    char *cache;       /* device: n_layers × {K, V} × [max_len, Hkv, hd] in the
                        * backend's activation dtype (bf16 on a GPU) */
    ct_tensor *kc, *vc; /* (n_layers) headers over the cache */
    int32_t *tokens;   /* host (max_len) ids in the cache */
    int32_t *pos;      /* host (max_len) positions of a feed, for upload */
    float *logits;     /* host (vocab) logits of the last fed position */
};

/* Runs an op; on failure keeps its code and says which step failed. */
#define GEN_OP(dst, expr, what)                                                            \
    do {                                                                                   \
        if (!((dst) = (expr))) return ct_error_wrap(ct_last_status(), "generate: %s", (what)); \
    } while (0)

static int check_model(const ct_decoder_model *m) {
    if (m->n_layers < 1 || !m->layers)
        return ct_errorf(CT_EINPUT, "generate: the model has no layers");
    for (int l = 0; l < m->n_layers; l++) {
        int rc = ct_decoder_layer_check(&m->dims, &m->layers[l]);
        if (rc) return ct_error_wrap(rc, "layer %d", l);
    }
    const int64_t D = m->dims.hidden;
    if (!m->tok_embeddings || m->tok_embeddings->ndim != 2 || m->tok_embeddings->shape[1] != D)
        return ct_errorf(CT_EINPUT, "generate: tok_embeddings must be [vocab, %lld]", (long long)D);
    if (!m->norm || ct_numel(m->norm) != D)
        return ct_errorf(CT_EINPUT, "generate: the final norm must have %lld elements", (long long)D);
    const ct_tensor *w = m->output.w;
    if (!w || w->ndim != 2 || w->shape[1] != D || w->shape[0] < 1 || w->shape[0] > INT32_MAX)
        return ct_errorf(CT_EINPUT, "generate: the output head must be [vocab, %lld]", (long long)D);
    return CT_OK;
}

int ct_gen_new(const ct_decoder_model *m, const ct_backend *be, int64_t max_len, ct_generator **out) {
    *out = NULL;
    CT_TRY(check_model(m));
    CT_TRY(ct_backend_require(be, CT_OP_ATTENTION_DECODE, NULL));
    if (max_len < 1 || max_len > INT32_MAX)
        return ct_errorf(CT_EINPUT, "generate: context length %lld must be in 1..%d", (long long)max_len,
                         INT32_MAX);
    ct_generator *g = calloc(1, sizeof *g);
    if (!g) return ct_errorf(CT_ERUNTIME, "generate: out of memory");
    g->m = m;
    g->be = be;
    g->max_len = max_len;
    g->vocab = (int32_t)m->output.w->shape[0];
    const int L = m->n_layers;
    const int64_t row = (int64_t)m->dims.n_kv_heads * m->dims.head_dim; /* Hkv*hd per position */
    const size_t per = (size_t)max_len * (size_t)row;                  /* elements per K or V cache */
    const ct_dtype act = be->act_dtype;
    const size_t per_bytes = ct_dtype_bytes(act, (int64_t)per);
    int rc = ct_tape_init(&g->tape, be, 0);
    if (rc) {
        free(g);
        return rc;
    }
    g->cache = be->mem.alloc(2 * (size_t)L * per_bytes);
    g->kc = calloc((size_t)L, sizeof *g->kc);
    g->vc = calloc((size_t)L, sizeof *g->vc);
    g->tokens = malloc((size_t)max_len * sizeof *g->tokens);
    g->pos = malloc((size_t)max_len * sizeof *g->pos);
    g->logits = malloc((size_t)g->vocab * sizeof *g->logits);
    if (!g->cache || !g->kc || !g->vc || !g->tokens || !g->pos || !g->logits) {
        ct_gen_free(g);
        return ct_errorf(CT_ERUNTIME, "generate: out of memory for a KV cache of %lld positions × %d layers (%.1f MiB)",
                         (long long)max_len, L, 2.0 * L * (double)per_bytes / 1048576.0);
    }
    const int64_t shape[3] = {max_len, m->dims.n_kv_heads, m->dims.head_dim};
    for (int l = 0; l < L; l++) {
        char *k = g->cache + 2 * (size_t)l * per_bytes;
        ct_tensor_init(&g->kc[l], act, be->device, 3, shape, k);
        ct_tensor_init(&g->vc[l], act, be->device, 3, shape, k + per_bytes);
    }
    ct_tape_set_recording(&g->tape, false);
    *out = g;
    return CT_OK;
}

void ct_gen_free(ct_generator *g) {
    if (!g) return;
    if (g->cache) g->be->mem.free(g->cache);
    ct_tape_free(&g->tape);
    free(g->kc);
    free(g->vc);
    free(g->tokens);
    free(g->pos);
    free(g->logits);
    free(g);
}

int64_t ct_gen_len(const ct_generator *g) { return g->len; }
int64_t ct_gen_max_len(const ct_generator *g) { return g->max_len; }
int32_t ct_gen_vocab(const ct_generator *g) { return g->vocab; }
const int32_t *ct_gen_tokens(const ct_generator *g) { return g->tokens; }

int ct_gen_truncate(ct_generator *g, int64_t len) {
    if (len < 0 || len > g->len)
        return ct_errorf(CT_EINPUT, "generate: cannot truncate a cache of %lld positions to %lld",
                         (long long)g->len, (long long)len);
    g->len = len; /* rows past len are overwritten by the next feed */
    return CT_OK;
}

/* A tensor header over rows [r0, r0+n) of a [rows, cols] tensor (any dtype). */
static ct_tensor *row_view(ct_tape *t, const ct_tensor *x, int64_t r0, int64_t n) {
    ct_tensor *v = ct_tape_meta(t, sizeof *v);
    const int64_t cols = ct_dim_from_end(x, 1), shape[2] = {n, cols};
    if (!v || ct_tensor_init(v, x->dtype, x->device, 2, shape, (char *)x->data + ct_dtype_bytes(x->dtype, r0 * cols)))
        return NULL;
    return v;
}

/* Layer l on h [n, D] (updated in place) for tokens at p0 .. p0+n-1. With
 * last_only (the last layer: only the last position reaches the head) every
 * row still gives its keys and values to the cache, but attention, wo and the
 * feed-forward run on the last row alone, which is the only row updated. */
static int layer_step(ct_generator *g, int l, ct_tensor *h, ct_tensor *pos, int64_t p0, bool last_only) {
    ct_tape *t = &g->tape;
    const ct_decoder_dims *d = &g->m->dims;
    const ct_decoder_layer_weights *w = &g->m->layers[l];
    const int G = d->n_heads / d->n_kv_heads;
    const int64_t n = h->shape[0];
    ct_rope_params rp = d->rope; /* per KV head: G query heads and k rotate, v does not */
    rp.head_dim = d->head_dim;
    rp.group = G + 2;
    rp.rotate_per_group = G + 1;
    rp.seq_len = p0 + n; /* the length after this feed (HF's kv_seq_len) */
    ct_attn_params ap = {.n_kv_heads = d->n_kv_heads, .group = G, .head_dim = d->head_dim,
                         .scale = (float)(1.0 / sqrt((double)d->head_dim))};

    ct_tensor *x, *qkv, *qkv_r, *att, *o;
    GEN_OP(x, ct_rmsnorm(t, h, w->attention_norm, d->eps), "attention_norm"); /* [n, D] */
    GEN_OP(qkv, ct_lora_linear(t, x, &w->wqkv), "wqkv");                     /* [n, Hkv*(G+2)*hd] */
    GEN_OP(qkv_r, ct_rope(t, qkv, pos, &rp), "rope");                         /* same */
    if (last_only && n > 1) {
        /* all rows into the cache, then the last row alone from here on */
        CT_TRY(g->be->attention_decode(qkv_r, p0, &ap, &g->kc[l], &g->vc[l], NULL, &t->scratch));
        GEN_OP(qkv_r, row_view(t, qkv_r, n - 1, 1), "last row");              /* [1, Hkv*(G+2)*hd] */
        GEN_OP(h, row_view(t, h, n - 1, 1), "last row");                      /* [1, D] */
        p0 += n - 1;
    }
    if (p0 == 0 && qkv_r->shape[0] > 1) {
        /* prefill: the blockwise causal training kernel, then fill the cache */
        GEN_OP(att, ct_attention(t, qkv_r, NULL, &ap), "attention");          /* [n, Hq*hd] */
        CT_TRY(g->be->attention_decode(qkv_r, 0, &ap, &g->kc[l], &g->vc[l], NULL, &t->scratch));
    } else {
        const int64_t shape[2] = {qkv_r->shape[0], (int64_t)d->n_heads * d->head_dim};
        GEN_OP(att, ct_tape_new(t, g->be->act_dtype, 2, shape), "attention output");
        CT_TRY(g->be->attention_decode(qkv_r, p0, &ap, &g->kc[l], &g->vc[l], att, &t->scratch));
    }
    GEN_OP(o, ct_lora_linear(t, att, &w->wo), "wo");                          /* [n, D] */
    ct_tensor *h1 = NULL, *x2, *gate, *up, *act, *down, *h2;
    GEN_OP(x2, ct_add_rmsnorm(t, h, o, w->ffn_norm, d->eps, &h1),
           "attention residual + ffn_norm");                                  /* [n, D] both */
    GEN_OP(gate, ct_lora_linear(t, x2, &w->w1), "w1");                        /* [n, F] */
    GEN_OP(up, ct_lora_linear(t, x2, &w->w3), "w3");                          /* [n, F] */
    GEN_OP(act, ct_swiglu(t, gate, up), "swiglu");                            /* [n, F] */
    GEN_OP(down, ct_lora_linear(t, act, &w->w2), "w2");                       /* [n, D] */
    GEN_OP(h2, ct_add(t, h1, down), "ffn residual");
    return g->be->copy(h->data, h2->data, ct_nbytes(h2));
}

static int feed(ct_generator *g, const int32_t *ids, int64_t n) {
    ct_tape *t = &g->tape;
    const int64_t p0 = g->len;
    ct_tape_reset(t);
    const int64_t shape[1] = {n};
    ct_tensor *ids_t, *pos_t, *h;
    GEN_OP(ids_t, ct_tape_new(t, CT_I32, 1, shape), "token ids");
    GEN_OP(pos_t, ct_tape_new(t, CT_I32, 1, shape), "positions");
    for (int64_t i = 0; i < n; i++) g->pos[i] = (int32_t)(p0 + i);
    CT_TRY(g->be->upload(ids_t->data, ids, (size_t)n * sizeof *ids));
    CT_TRY(g->be->upload(pos_t->data, g->pos, (size_t)n * sizeof *g->pos));
    GEN_OP(h, ct_decoder_embed(t, g->m, ids_t, ids), "tok_embeddings"); /* [n, D] */

    for (int l = 0; l < g->m->n_layers; l++) {
        /* everything the layer creates is released once its output is in h */
        ct_arena_mark main_mark = ct_arena_get_mark(&t->main), meta_mark = ct_arena_get_mark(&t->meta);
        int rc = layer_step(g, l, h, pos_t, p0, l == g->m->n_layers - 1);
        ct_arena_rewind(&t->main, main_mark);
        ct_arena_rewind(&t->meta, meta_mark);
        if (rc) return ct_error_wrap(rc, "layer %d", l);
    }
    ct_tensor *last, *hn, *lg;
    GEN_OP(last, row_view(t, h, n - 1, 1), "last row");                        /* [1, D] */
    GEN_OP(hn, ct_rmsnorm(t, last, g->m->norm, g->m->dims.eps), "final norm"); /* [1, D] */
    GEN_OP(lg, ct_lora_linear(t, hn, &g->m->output), "output head");          /* [1, V] */
    return ct_backend_download_f32(g->be, g->logits, lg);
}

int ct_gen_feed(ct_generator *g, const int32_t *ids, int64_t n, float **logits) {
    if (n < 1) return ct_errorf(CT_EINPUT, "generate: nothing to feed (0 tokens)");
    if (n > g->max_len - g->len)
        return ct_errorf(CT_EINPUT,
                         "generate: %lld more tokens do not fit the context (%lld of %lld positions used); "
                         "start a new conversation or raise the context length",
                         (long long)n, (long long)g->len, (long long)g->max_len);
    const int32_t V = (int32_t)g->m->tok_embeddings->shape[0];
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V || ids[i] >= g->vocab)
            return ct_errorf(CT_EINPUT, "generate: token id %d at position %lld is outside the vocabulary of %d",
                             ids[i], (long long)i, V < g->vocab ? V : g->vocab);
    int rc = feed(g, ids, n);
    ct_tape_reset(&g->tape);
    if (rc) return rc;
    memcpy(g->tokens + g->len, ids, (size_t)n * sizeof *ids);
    g->len += n;
    if (logits) *logits = g->logits;
    return CT_OK;
}

/* ---------------- the decode loop ---------------- */

static bool is_stop_id(const ct_gen_limits *lim, int32_t id) {
    for (size_t i = 0; i < lim->n_stop_ids; i++)
        if (lim->stop_ids[i] == id) return true;
    return false;
}

/* The loop after the prompt: sample, check the limits, feed, repeat. */
static int decode_loop(ct_generator *g, ct_sampler *s, float *logits, const ct_gen_limits *lim,
                       ct_text_stream *ts, ct_gen_emit_fn emit, void *ctx, ct_ids *answer,
                       ct_gen_result *res) {
    for (;;) {
        int32_t id;
        if (lim->vocab_limit > 0) /* ids the tokenizer cannot decode */
            for (int32_t i = lim->vocab_limit; i < g->vocab; i++) logits[i] = -INFINITY;
        /* penalty context: the prompt and every sampled id (all fed by now) */
        CT_TRY(ct_sampler_next(s, logits, g->tokens, (size_t)g->len, &id));
        res->n_generated++;
        if (answer) CT_TRY(ct_ids_push(answer, id));
        if (is_stop_id(lim, id)) {
            res->reason = CT_GEN_STOP_ID;
            return CT_OK;
        }
        bool stopped = false;
        if (ts) CT_TRY(ct_text_stream_push(ts, id, emit, ctx, &stopped));
        if (stopped) {
            res->reason = CT_GEN_STOP_TEXT;
            return CT_OK;
        }
        if (res->n_generated >= lim->max_new_tokens) {
            res->reason = CT_GEN_MAX_TOKENS;
            return CT_OK;
        }
        if (g->len >= g->max_len) {
            res->reason = CT_GEN_CONTEXT_FULL;
            return CT_OK;
        }
        CT_TRY(ct_gen_feed(g, &id, 1, &logits));
    }
}

int ct_gen_generate(ct_generator *g, ct_sampler *s, const ct_tokenizer *tok, const int32_t *prompt,
                    int64_t n_prompt, const ct_gen_limits *lim, ct_gen_emit_fn emit, void *ctx,
                    ct_ids *answer, ct_gen_result *res) {
    memset(res, 0, sizeof *res);
    if (lim->max_new_tokens < 1)
        return ct_errorf(CT_EINPUT, "generate: max_new_tokens %lld must be >= 1", (long long)lim->max_new_tokens);
    if (s->vocab != g->vocab)
        return ct_errorf(CT_EINPUT, "generate: the sampler's vocabulary (%d) is not the model's (%d)",
                         s->vocab, g->vocab);
    double t0 = ct_now_s();
    float *logits;
    CT_TRY(ct_gen_feed(g, prompt, n_prompt, &logits));
    res->n_prompt = n_prompt;
    double t1 = ct_now_s();
    res->prefill_s = t1 - t0;

    ct_text_stream ts;
    if (tok)
        CT_TRY(ct_text_stream_init(&ts, tok, g->tokens, (size_t)g->len, lim->stop_texts, lim->n_stop_texts));
    int rc = decode_loop(g, s, logits, lim, tok ? &ts : NULL, emit, ctx, answer, res);
    if (tok) {
        if (!rc) rc = ct_text_stream_finish(&ts, emit, ctx);
        ct_text_stream_free(&ts);
    }
    res->decode_s = ct_now_s() - t1;
    return rc;
}
