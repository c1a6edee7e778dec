/* The InternLM2 decoder (trainer/model/decoder.c) against the independent double
 * reference (ref_internlm2.c) on a tiny random model with awkward sizes:
 * hidden 24, 4 query heads over 2 KV heads (GQA), head_dim 6, intermediate 20,
 * vocab 19, T = 11 tokens holding two packed samples (positions restart, the
 * segment mask keeps them apart), some labels -100, LoRA r = 2 with random
 * non-zero A and B on all five linears (and on the head).
 *
 *  (a) one layer: output vs the reference; grads of every LoRA A/B and of the
 *      layer input vs central differences of the reference (probe loss
 *      sum(r ⊙ out)); dynamic-NTK rope in effect (seq_len 6 > max_pos 4);
 *  (b) 2-layer model: loss vs the reference, all LoRA grads vs central
 *      differences of the reference loss;
 *  (c) checkpointed vs plain layers: identical loss and grads (memcmp), also
 *      with LoRA dropout 0.3 (the recomputation must regenerate the masks);
 *  (d) the same step twice: identical loss and grads;
 *  (e) bf16 base weights: loss and grads vs a reference holding the same
 *      bf16-rounded values (f16: the loss).
 *  (f) backward marks (ct_tape_mark): the backward passes mark n_layers (the
 *      head), then each layer's mark from the top down, and at mark g the
 *      grads of layers >= g and of the head already hold their final values
 *      while those below are still untouched (the promise the overlapped
 *      all-reduce relies on), checkpointed and plain; no marks without
 *      recording; an error from the hook ends the backward with it.
 * (c) and (d) run again on a larger model (T 288, hidden 256, intermediate 256, vocab 256)
 * whose sizes cross the kernels' OpenMP thresholds, with its loss checked
 * against the reference too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "ref_internlm2.h"
#include "testutil.h"
#include "trainer/model/decoder.h"

enum { NL = 5, MAXL = 2 };
static const char *const k_lin[NL] = {"wqkv", "wo", "w1", "w3", "w2"};
static const ct_backend *be;

/* ------------------------------------------------------------ the model */

/* A library tensor and the reference's double copy of the values the library
 * actually holds (after rounding to the tensor's dtype). */
typedef struct {
    ct_tensor *t;
    double *d;
    int64_t n;
    char name[48];
} pair;

/* Model sizes. */
typedef struct {
    int D, Hq, Hkv, hd, F, V, r;
} sizes;

static const sizes k_tiny = {.D = 24, .Hq = 4, .Hkv = 2, .hd = 6, .F = 20, .V = 19, .r = 2};
static const sizes k_large = {.D = 256, .Hq = 8, .Hkv = 2, .hd = 32, .F = 256, .V = 256, .r = 4};

typedef struct {
    int D, Hq, Hkv, hd, F, V, r, n_layers;
    ct_dtype wdt;  /* dtype of every frozen weight */
    float dropout; /* LoRA dropout of every linear */
    float scale;   /* LoRA scale alpha / r */
    pair emb, norm, head_w, head_a, head_b;
    pair an[MAXL], fn[MAXL], w[MAXL][NL], a[MAXL][NL], b[MAXL][NL];
    pair *lora[MAXL * NL * 2 + 2]; /* every trainable tensor, for FD and snapshots */
    int n_lora;
    ct_decoder_layer_weights lw[MAXL];
    ct_decoder_model m;
    ref_layer rl[MAXL];
    ref_model rm;
} tmodel;

static void make_pair(pair *p, const char *name, ct_dtype dt, int ndim, const int64_t *shape,
                      bool trainable, ct_test_rng *rng, double scale, double offset) {
    snprintf(p->name, sizeof p->name, "%s", name);
    p->t = ct_test_need(ct_tensor_new(be, dt, ndim, shape, trainable));
    p->t->name = p->name;
    p->n = ct_numel(p->t);
    float *f = ct_test_need(malloc((size_t)p->n * sizeof(float)));
    ct_test_fill(rng, f, p->n, scale);
    for (int64_t i = 0; i < p->n; i++) f[i] += (float)offset;
    if (ct_convert(p->t->data, dt, f, CT_F32, p->n) || ct_convert(f, CT_F32, p->t->data, dt, p->n))
        ct_test_need(NULL);
    p->d = ct_test_need(malloc((size_t)p->n * sizeof(double)));
    for (int64_t i = 0; i < p->n; i++) p->d[i] = f[i];
    free(f);
}

static void free_pair(pair *p) {
    ct_tensor_free(be, p->t);
    free(p->d);
}

/* [out, in] of linear k. */
static void lin_shape(const tmodel *tm, int k, int64_t *out, int64_t *in) {
    int G = tm->Hq / tm->Hkv;
    int64_t rows[NL] = {(int64_t)tm->Hkv * (G + 2) * tm->hd, tm->D, tm->F, tm->F, tm->D};
    int64_t cols[NL] = {tm->D, (int64_t)tm->Hq * tm->hd, tm->D, tm->D, tm->F};
    *out = rows[k];
    *in = cols[k];
}

/* The same random values for every (wdt, dropout): the rng is seeded here. */
static void build(tmodel *tm, const sizes *sz, int n_layers, ct_dtype wdt, float dropout,
                  bool head_lora) {
    memset(tm, 0, sizeof *tm);
    tm->D = sz->D, tm->Hq = sz->Hq, tm->Hkv = sz->Hkv, tm->hd = sz->hd, tm->F = sz->F;
    tm->V = sz->V, tm->r = sz->r;
    tm->n_layers = n_layers, tm->wdt = wdt, tm->dropout = dropout, tm->scale = 2.0f; /* alpha 4 */
    ct_test_rng rng = {0x1e2d3c4b5a69};
    int64_t D = tm->D, V = tm->V, r = tm->r;
    char nm[48];
    make_pair(&tm->emb, "tok_embeddings", wdt, 2, (int64_t[]){V, D}, false, &rng, 1.0, 0);
    make_pair(&tm->norm, "norm", wdt, 1, &D, false, &rng, 0.1, 1.0);
    make_pair(&tm->head_w, "output", wdt, 2, (int64_t[]){V, D}, false, &rng, 2.0 / sqrt((double)D), 0);
    for (int l = 0; l < n_layers; l++) {
        snprintf(nm, sizeof nm, "layers.%d.attention_norm", l);
        make_pair(&tm->an[l], nm, wdt, 1, &D, false, &rng, 0.1, 1.0);
        snprintf(nm, sizeof nm, "layers.%d.ffn_norm", l);
        make_pair(&tm->fn[l], nm, wdt, 1, &D, false, &rng, 0.1, 1.0);
        ct_linear *lins[NL] = {&tm->lw[l].wqkv, &tm->lw[l].wo, &tm->lw[l].w1, &tm->lw[l].w3,
                               &tm->lw[l].w2};
        ref_linear *rls[NL] = {&tm->rl[l].wqkv, &tm->rl[l].wo, &tm->rl[l].w1, &tm->rl[l].w3,
                               &tm->rl[l].w2};
        for (int k = 0; k < NL; k++) {
            int64_t out, in;
            lin_shape(tm, k, &out, &in);
            double ws = (k == 0 ? 1.2 : 1.0) / sqrt((double)in); /* wqkv a bit hotter: peaky softmax */
            snprintf(nm, sizeof nm, "layers.%d.%s", l, k_lin[k]);
            make_pair(&tm->w[l][k], nm, wdt, 2, (int64_t[]){out, in}, false, &rng, ws, 0);
            snprintf(nm, sizeof nm, "layers.%d.%s.lora_A", l, k_lin[k]);
            make_pair(&tm->a[l][k], nm, CT_F32, 2, (int64_t[]){r, in}, true, &rng, 1.0 / sqrt((double)in), 0);
            snprintf(nm, sizeof nm, "layers.%d.%s.lora_B", l, k_lin[k]);
            make_pair(&tm->b[l][k], nm, CT_F32, 2, (int64_t[]){out, r}, true, &rng, 0.2, 0);
            tm->lora[tm->n_lora++] = &tm->a[l][k];
            tm->lora[tm->n_lora++] = &tm->b[l][k];
            *lins[k] = (ct_linear){tm->w[l][k].t, tm->a[l][k].t, tm->b[l][k].t, tm->scale, dropout,
                                   (uint64_t)(l * NL + k), CT_F32};
            *rls[k] = (ref_linear){tm->w[l][k].d, tm->a[l][k].d, tm->b[l][k].d, (int)out, (int)in,
                                   (int)r, tm->scale};
        }
        tm->lw[l].attention_norm = tm->an[l].t, tm->lw[l].ffn_norm = tm->fn[l].t;
        tm->rl[l].attention_norm = tm->an[l].d, tm->rl[l].ffn_norm = tm->fn[l].d;
    }
    tm->m.output = (ct_linear){tm->head_w.t, NULL, NULL, tm->scale, dropout, 1000, CT_F32};
    tm->rm.output = (ref_linear){tm->head_w.d, NULL, NULL, (int)V, (int)D, (int)r, tm->scale};
    if (head_lora) {
        make_pair(&tm->head_a, "output.lora_A", CT_F32, 2, (int64_t[]){r, D}, true, &rng, 1.0 / sqrt((double)D), 0);
        make_pair(&tm->head_b, "output.lora_B", CT_F32, 2, (int64_t[]){V, r}, true, &rng, 0.3, 0);
        tm->lora[tm->n_lora++] = &tm->head_a;
        tm->lora[tm->n_lora++] = &tm->head_b;
        tm->m.output.a = tm->head_a.t, tm->m.output.b = tm->head_b.t;
        tm->rm.output.a = tm->head_a.d, tm->rm.output.b = tm->head_b.d;
    }
    tm->m.dims = (ct_decoder_dims){.hidden = tm->D, .n_heads = tm->Hq, .n_kv_heads = tm->Hkv,
                                   .head_dim = tm->hd, .intermediate = tm->F, .eps = 1e-5f,
                                   .rope = {.theta = 10000.0, .scaling = CT_ROPE_NONE, .factor = 1.0}};
    tm->m.n_layers = n_layers;
    tm->m.tok_embeddings = tm->emb.t;
    tm->m.layers = tm->lw;
    tm->m.norm = tm->norm.t;
    tm->rm.c = (ref_config){.hidden = tm->D, .n_heads = tm->Hq, .n_kv_heads = tm->Hkv, .head_dim = tm->hd,
                            .intermediate = tm->F, .vocab = tm->V, .eps = (double)1e-5f,
                            .theta = 10000.0, .scaling = REF_ROPE_NONE, .factor = 1.0};
    tm->rm.n_layers = n_layers;
    tm->rm.tok_embeddings = tm->emb.d;
    tm->rm.layers = tm->rl;
    tm->rm.norm = tm->norm.d;
}

static void set_rope(tmodel *tm, int ct_kind, int ref_kind, double theta, double factor, int64_t max_pos) {
    tm->m.dims.rope.scaling = ct_kind, tm->rm.c.scaling = ref_kind;
    tm->m.dims.rope.theta = tm->rm.c.theta = theta;
    tm->m.dims.rope.factor = tm->rm.c.factor = factor;
    tm->m.dims.rope.max_pos = tm->rm.c.max_pos = max_pos;
}

static void free_model(tmodel *tm) {
    free_pair(&tm->emb), free_pair(&tm->norm), free_pair(&tm->head_w);
    if (tm->head_a.t) free_pair(&tm->head_a), free_pair(&tm->head_b);
    for (int l = 0; l < tm->n_layers; l++) {
        free_pair(&tm->an[l]), free_pair(&tm->fn[l]);
        for (int k = 0; k < NL; k++) free_pair(&tm->w[l][k]), free_pair(&tm->a[l][k]), free_pair(&tm->b[l][k]);
    }
}

static void zero_grads(tmodel *tm) {
    for (int i = 0; i < tm->n_lora; i++) memset(tm->lora[i]->t->grad->data, 0, ct_nbytes(tm->lora[i]->t->grad));
}

/* All LoRA grads, concatenated, into a new buffer. */
static float *snapshot(const tmodel *tm, size_t *bytes) {
    size_t n = 0;
    for (int i = 0; i < tm->n_lora; i++) n += ct_nbytes(tm->lora[i]->t->grad);
    char *buf = ct_test_need(malloc(n)), *p = buf;
    for (int i = 0; i < tm->n_lora; i++) {
        size_t b = ct_nbytes(tm->lora[i]->t->grad);
        memcpy(p, tm->lora[i]->t->grad->data, b);
        p += b;
    }
    *bytes = n;
    return (float *)buf;
}

/* ------------------------------------------------------------ step data */

/* Packed samples: positions restart and segment ids change at each sample.
 * Labels are already shifted (label t = the next token of the same sample); the
 * last token of each sample and some prompt tokens are not trained (-100). */
typedef struct {
    int T, n_trained;
    int32_t *id, *lab, *pos, *seg;       /* host [T] */
    ct_tensor *ids, *pos_t, *seg_t, *labels; /* i32 [T] */
} batch;

static ct_tensor *i32_tensor(const int32_t *v, int T) {
    int64_t n = T;
    ct_tensor *t = ct_test_need(ct_tensor_new(be, CT_I32, 1, &n, false));
    memcpy(t->data, v, (size_t)T * sizeof(int32_t));
    return t;
}

/* n_samples samples of the given lengths; prompt: how many leading tokens of
 * each sample are untrained. */
static void make_batch(batch *b, int V, int n_samples, const int *len, int prompt, uint64_t seed) {
    ct_test_rng rng = {seed};
    b->T = 0;
    for (int i = 0; i < n_samples; i++) b->T += len[i];
    int T = b->T;
    b->id = ct_test_need(malloc((size_t)T * sizeof(int32_t))), b->lab = ct_test_need(malloc((size_t)T * sizeof(int32_t)));
    b->pos = ct_test_need(malloc((size_t)T * sizeof(int32_t))), b->seg = ct_test_need(malloc((size_t)T * sizeof(int32_t)));
    for (int i = 0, t = 0; i < n_samples; i++)
        for (int j = 0; j < len[i]; j++, t++) b->pos[t] = j, b->seg[t] = i;
    for (int t = 0; t < T; t++) b->id[t] = (int32_t)(ct_test_uniform(&rng) * V);
    b->n_trained = 0;
    for (int t = 0; t < T; t++) {
        bool last = t + 1 == T || b->seg[t + 1] != b->seg[t];
        b->lab[t] = last || b->pos[t] < prompt ? -100 : b->id[t + 1];
        b->n_trained += b->lab[t] != -100;
    }
    b->ids = i32_tensor(b->id, T), b->pos_t = i32_tensor(b->pos, T);
    b->seg_t = i32_tensor(b->seg, T), b->labels = i32_tensor(b->lab, T);
}

static void free_batch(batch *b) {
    ct_tensor_free(be, b->ids), ct_tensor_free(be, b->pos_t), ct_tensor_free(be, b->seg_t);
    ct_tensor_free(be, b->labels);
    free(b->id), free(b->lab), free(b->pos), free(b->seg);
}

/* One training step of the library model: forward, loss, backward. */
static float run_model(ct_tape *tp, tmodel *tm, batch *b, bool ckpt, uint64_t step_seed) {
    ct_tape_reset(tp);
    tp->step_seed = step_seed;
    ct_decoder_input in;
    ct_tensor *loss = NULL;
    int64_t n_trained = -1;
    CHECK_OK(ct_decoder_input_make(&in, tp, b->pos, b->seg, b->T));
    CHECK_OK(ct_decoder_model_loss(tp, &tm->m, b->ids, &in, b->labels, ckpt, 0.0f, &loss, &n_trained));
    if (!loss) return NAN;
    CHECK(n_trained == b->n_trained, "%lld trained tokens, expected %d", (long long)n_trained, b->n_trained);
    CHECK_OK(ct_backward(tp, loss, 1.0f));
    return *(float *)loss->data;
}

typedef struct {
    tmodel *tm;
    batch *b;
} model_ctx;

static double ref_loss(void *p) {
    model_ctx *c = p;
    return ref_model_loss(&c->tm->rm, c->b->T, c->b->id, c->b->pos, c->b->seg, c->b->lab, NULL);
}

/* Every LoRA grad of the last step vs central differences of the reference. */
static void check_lora_grads(tmodel *tm, ct_fd_fn f, void *ctx, double atol, double rtol) {
    double worst = 0, gmax = 0;
    for (int i = 0; i < tm->n_lora; i++) {
        pair *p = tm->lora[i];
        double *g = ct_test_need(malloc((size_t)p->n * sizeof(double)));
        ct_fd_grad(f, ctx, p->d, p->n, 1e-5, g);
        const float *got = p->t->grad->data;
        for (int64_t j = 0; j < p->n; j++) {
            worst = fmax(worst, fabs(got[j] - g[j]));
            gmax = fmax(gmax, fabs(g[j]));
        }
        char what[80];
        snprintf(what, sizeof what, "d %s vs FD", p->name);
        ct_check_close(what, got, g, p->n, atol, rtol);
        free(g);
    }
    printf("  %d LoRA tensors: max |grad - FD| %.3g (max |FD| %.3g)\n", tm->n_lora, worst, gmax);
}

/* ------------------------------------------------------------ (a) one layer */

typedef struct {
    tmodel *tm;
    batch *b;
    double *h;      /* [T, D] layer input */
    const float *r; /* [T, D] probe weights */
} layer_ctx;

static double ref_layer_loss(void *p) {
    layer_ctx *c = p;
    int D = c->tm->D, T = c->b->T;
    double *out = ct_test_need(malloc((size_t)T * D * sizeof(double)));
    ref_layer_forward(&c->tm->rm.c, &c->tm->rl[0], T, c->b->pos, c->b->seg, c->h, out);
    double s = 0;
    for (int i = 0; i < T * D; i++) s += c->r[i] * out[i];
    free(out);
    return s;
}

static void test_layer(ct_tape *tp, batch *b) {
    printf("(a) one decoder layer, dynamic NTK rope\n");
    tmodel tm;
    build(&tm, &k_tiny, 1, CT_F32, 0.0f, false);
    int T = b->T;
    /* seq_len = max(pos)+1 = 6 > max_pos 4: the NTK base applies. */
    set_rope(&tm, CT_ROPE_DYNAMIC, REF_ROPE_DYNAMIC, 10000.0, 2.0, 4);
    ct_test_rng rng = {5};
    int64_t hs[2] = {T, tm.D};
    ct_tensor *h = ct_test_need(ct_tensor_new(be, CT_F32, 2, hs, true)); /* layer input, trainable */
    ct_test_fill(&rng, h->data, T * tm.D, 1.0);
    float *r = ct_test_need(malloc((size_t)T * tm.D * sizeof(float)));
    ct_test_fill(&rng, r, T * tm.D, 1.0);
    layer_ctx c = {&tm, b, ct_test_need(malloc((size_t)T * tm.D * sizeof(double))), r};
    for (int i = 0; i < T * tm.D; i++) c.h[i] = ((float *)h->data)[i];

    float *first = NULL, *first_dh = NULL;
    size_t bytes = 0;
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        ct_tape_reset(tp);
        zero_grads(&tm);
        memset(h->grad->data, 0, ct_nbytes(h->grad));
        ct_decoder_input in;
        CHECK_OK(ct_decoder_input_make(&in, tp, b->pos, b->seg, b->T));
        CHECK(in.seq_len == 6, "seq_len %lld, expected max(pos)+1 = 6", (long long)in.seq_len);
        ct_tensor *out = NULL;
        CHECK_OK(ckpt ? ct_decoder_layer_checkpointed(tp, &tm.m.dims, &tm.lw[0], &in, h, &out)
                      : ct_decoder_layer(tp, &tm.m.dims, &tm.lw[0], &in, h, &out));
        if (!out) break;
        ct_tensor *loss = ct_test_need(ct_test_dot_loss(tp, out, r));
        CHECK_OK(ct_backward(tp, loss, 1.0f));
        if (!ckpt) {
            double *want = ct_test_need(malloc((size_t)T * tm.D * sizeof(double)));
            ref_layer_forward(&tm.rm.c, &tm.rl[0], T, b->pos, b->seg, c.h, want);
            double worst = 0;
            for (int i = 0; i < T * tm.D; i++) worst = fmax(worst, fabs(((float *)out->data)[i] - want[i]));
            printf("  output vs reference: max |err| %.3g\n", worst);
            ct_check_close("layer output", out->data, want, T * tm.D, 1e-5, 1e-5);
            free(want);
            check_lora_grads(&tm, ref_layer_loss, &c, 2e-5, 1e-3);
            double *g = ct_test_need(malloc((size_t)T * tm.D * sizeof(double)));
            ct_fd_grad(ref_layer_loss, &c, c.h, T * tm.D, 1e-5, g);
            double w2 = 0;
            for (int i = 0; i < T * tm.D; i++) w2 = fmax(w2, fabs(((float *)h->grad->data)[i] - g[i]));
            printf("  d input vs FD: max |err| %.3g\n", w2);
            ct_check_close("d layer input vs FD", h->grad->data, g, T * tm.D, 2e-5, 1e-3);
            free(g);
            first = snapshot(&tm, &bytes);
            first_dh = ct_test_need(malloc(ct_nbytes(h->grad)));
            memcpy(first_dh, h->grad->data, ct_nbytes(h->grad));
        } else {
            size_t b2;
            float *again = snapshot(&tm, &b2);
            CHECK(b2 == bytes && memcmp(again, first, bytes) == 0, "checkpointed layer: LoRA grads differ");
            CHECK(memcmp(first_dh, h->grad->data, ct_nbytes(h->grad)) == 0,
                  "checkpointed layer: input grad differs");
            free(again);
        }
    }
    /* seg NULL: the whole step is one causal sequence (the reference agrees). */
    ct_tape_reset(tp);
    ct_decoder_input in;
    CHECK_OK(ct_decoder_input_make(&in, tp, b->pos, NULL, b->T));
    ct_tensor *out = NULL;
    CHECK_OK(ct_decoder_layer(tp, &tm.m.dims, &tm.lw[0], &in, h, &out));
    double *want = ct_test_need(malloc((size_t)T * tm.D * sizeof(double)));
    ref_layer_forward(&tm.rm.c, &tm.rl[0], T, b->pos, NULL, c.h, want);
    if (out) ct_check_close("layer output, no segments", out->data, want, T * tm.D, 1e-5, 1e-5);
    free(want);

    free(first), free(first_dh), free(c.h), free(r);
    ct_tensor_free(be, h);
    free_model(&tm);
}

/* ------------------------------------------------------- (b)..(e) the model */

/* fd: also every LoRA grad vs central differences. */
static void test_model(ct_tape *tp, batch *b, ct_dtype wdt, bool fd) {
    printf("(%s) 2-layer model, %s base weights\n", wdt == CT_F32 ? "b" : "e", ct_dtype_name(wdt));
    tmodel tm;
    build(&tm, &k_tiny, 2, wdt, 0.0f, true);
    if (wdt != CT_F32) set_rope(&tm, CT_ROPE_LINEAR, REF_ROPE_LINEAR, 1e6, 2.0, 0);
    model_ctx c = {&tm, b};
    double want = ref_loss(&c);
    float got = run_model(tp, &tm, b, false, 1);
    printf("  loss %.9g, reference %.12g, rel err %.3g\n", got, want, fabs(got - want) / want);
    CHECK(fabs(got - want) <= 1e-5 * want, "loss %.9g vs reference %.12g", got, want);
    if (fd) check_lora_grads(&tm, ref_loss, &c, 2e-5, 1e-3);

    /* no_grad evaluation: nothing recorded, same loss bit for bit. */
    ct_tape_reset(tp);
    bool prev = ct_tape_set_recording(tp, false);
    ct_decoder_input in;
    ct_tensor *loss = NULL;
    CHECK_OK(ct_decoder_input_make(&in, tp, b->pos, b->seg, b->T));
    CHECK_OK(ct_decoder_model_loss(tp, &tm.m, b->ids, &in, b->labels, true, 0.0f, &loss, NULL));
    CHECK(loss && *(float *)loss->data == got && tp->n_entries == 0,
          "no_grad loss %.9g (want %.9g), %d entries", loss ? *(float *)loss->data : NAN, got, tp->n_entries);
    ct_tape_set_recording(tp, prev);

    /* norm > 0 divides the NLL sum by it instead of the trained count. */
    ct_tape_reset(tp); /* the input lived in the tape's arena: made again */
    double want3 = want * b->n_trained / 3.0;
    CHECK_OK(ct_decoder_input_make(&in, tp, b->pos, b->seg, b->T));
    CHECK_OK(ct_decoder_model_loss(tp, &tm.m, b->ids, &in, b->labels, false, 3.0f, &loss, NULL));
    CHECK(loss && fabs(*(float *)loss->data - want3) <= 1e-5 * want3, "norm 3: loss %.9g, want %.9g",
          loss ? *(float *)loss->data : NAN, want3);
    free_model(&tm);
}

static void set_compute(tmodel *tm, ct_dtype compute) {
    for (int l = 0; l < tm->n_layers; l++)
        tm->lw[l].wqkv.compute = tm->lw[l].wo.compute = tm->lw[l].w1.compute = tm->lw[l].w3.compute =
            tm->lw[l].w2.compute = compute;
    tm->m.output.compute = compute;
    tm->m.dims.attn_compute = compute;
}

/* (c) checkpointed vs plain and (d) repeated steps, without and with dropout,
 * and (pass 2) with bf16 frozen-weight GEMMs: the checkpoint's recomputation
 * (which skips the layer's last GEMM) must give the plain run's grads exactly. */
static void test_determinism(ct_tape *tp, const sizes *sz, batch *b) {
    float base_loss = 0;
    for (int pass = 0; pass < 3; pass++) {
        bool with_drop = pass > 0, bf16 = pass == 2;
        float p = with_drop ? 0.3f : 0.0f;
        printf("(c, d) T %d, hidden %d: checkpointed vs plain, repeated steps, LoRA dropout %.1f, %s GEMMs\n",
               b->T, sz->D, (double)p, bf16 ? "bf16" : "f32");
        tmodel tm;
        build(&tm, sz, 2, CT_F32, p, true);
        float l_f32 = 0;
        if (bf16) {
            zero_grads(&tm);
            l_f32 = run_model(tp, &tm, b, false, 42);
            set_compute(&tm, CT_BF16);
        }
        size_t n0, n1, n2, n3;
        zero_grads(&tm);
        float l_plain = run_model(tp, &tm, b, false, 42);
        float *g_plain = snapshot(&tm, &n0);
        zero_grads(&tm);
        float l_ckpt = run_model(tp, &tm, b, true, 42);
        float *g_ckpt = snapshot(&tm, &n1);
        zero_grads(&tm);
        float l_again = run_model(tp, &tm, b, true, 42);
        float *g_again = snapshot(&tm, &n2);
        CHECK(l_plain == l_ckpt, "loss: plain %.9g, checkpointed %.9g", l_plain, l_ckpt);
        CHECK(n0 == n1 && memcmp(g_plain, g_ckpt, n0) == 0, "checkpointed grads differ from plain");
        CHECK(l_again == l_ckpt && memcmp(g_again, g_ckpt, n1) == 0, "a repeated step differs");
        zero_grads(&tm);
        float l_plain2 = run_model(tp, &tm, b, false, 42);
        float *g_plain2 = snapshot(&tm, &n3);
        CHECK(l_plain2 == l_plain && memcmp(g_plain2, g_plain, n0) == 0, "a repeated plain step differs");
        if (bf16) {
            /* bf16 rounding moves the loss a little, and really happens */
            printf("  loss with f32 GEMMs %.9g, bf16 %.9g\n", l_f32, l_plain);
            CHECK(l_plain != l_f32 && fabs(l_plain - l_f32) <= 1e-2 * fabs(l_f32),
                  "bf16 loss %.9g vs f32 %.9g", l_plain, l_f32);
        } else if (!with_drop) {
            base_loss = l_plain;
            model_ctx c = {&tm, b};
            double want = ref_loss(&c);
            printf("  loss %.9g, reference %.12g, rel err %.3g\n", l_plain, want, fabs(l_plain - want) / want);
            CHECK(fabs(l_plain - want) <= 1e-5 * want, "loss %.9g vs reference %.12g", l_plain, want);
        } else {
            /* The masks are really applied and depend on the step seed. */
            zero_grads(&tm);
            float l_other = run_model(tp, &tm, b, true, 43);
            printf("  loss without dropout %.7g, seed 42 %.7g, seed 43 %.7g\n", base_loss, l_plain, l_other);
            CHECK(l_plain != base_loss, "dropout 0.3 did not change the loss");
            CHECK(l_other != l_plain, "another step seed gave the same dropout masks");
        }
        free(g_plain), free(g_ckpt), free(g_again), free(g_plain2);
        free_model(&tm);
    }
}

/* (f) */
typedef struct {
    tmodel *tm;
    int n, tags[MAXL + 2];
    float *snap[MAXL + 2];
    int fail_at; /* the hook fails at this tag (-1: never) */
} mark_log;

static int log_mark(void *ctx, int tag) {
    mark_log *ml = ctx;
    if (tag == ml->fail_at) return ct_errorf(CT_ERUNTIME, "the hook failed on purpose");
    if (ml->n < MAXL + 2) {
        size_t bytes;
        ml->tags[ml->n] = tag;
        ml->snap[ml->n++] = snapshot(ml->tm, &bytes);
    }
    return CT_OK;
}

static void test_marks(ct_tape *tp, batch *b) {
    printf("(f) backward marks: order, and the grads above a mark final when it is passed\n");
    tmodel tm;
    build(&tm, &k_tiny, 2, CT_F32, 0.0f, true);
    /* bytes of the snapshot before layer l's grads (layer-major, the head last) */
    size_t start[MAXL + 2] = {0}, total = 0;
    for (int i = 0; i < tm.n_lora; i++) {
        if (i % (2 * NL) == 0 && i / (2 * NL) <= MAXL) start[i / (2 * NL)] = total;
        total += ct_nbytes(tm.lora[i]->t->grad);
    }
    start[tm.n_layers] = total - ct_nbytes(tm.head_a.t->grad) - ct_nbytes(tm.head_b.t->grad);
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        mark_log ml = {.tm = &tm, .fail_at = -1};
        tp->on_mark = log_mark;
        tp->mark_ctx = &ml;
        zero_grads(&tm);
        run_model(tp, &tm, b, ckpt, 42);
        size_t bytes;
        float *fin = snapshot(&tm, &bytes);
        CHECK(ml.n == tm.n_layers + 1, "%d marks passed, want %d", ml.n, tm.n_layers + 1);
        for (int i = 0; i < ml.n && i <= tm.n_layers; i++) {
            int g = tm.n_layers - i;
            CHECK(ml.tags[i] == g, "mark %d passed as number %d", ml.tags[i], i);
            const char *sn = (const char *)ml.snap[i], *fi = (const char *)fin;
            CHECK(memcmp(sn + start[g], fi + start[g], total - start[g]) == 0,
                  "%s: at mark %d the grads of layers >= %d are not final yet", ckpt ? "checkpointed" : "plain", g, g);
            bool untouched = true, moved = false;
            for (size_t k = 0; k < start[g]; k++) untouched &= sn[k] == 0, moved |= fi[k] != 0;
            CHECK(untouched && (g == 0 || moved), "%s: at mark %d the grads below it were already written",
                  ckpt ? "checkpointed" : "plain", g);
            free(ml.snap[i]);
        }
        free(fin);
        /* the hook's error ends the backward */
        mark_log bad = {.tm = &tm, .fail_at = 1};
        tp->mark_ctx = &bad;
        ct_tape_reset(tp);
        ct_decoder_input in;
        ct_tensor *loss = NULL;
        CHECK_OK(ct_decoder_input_make(&in, tp, b->pos, b->seg, b->T));
        CHECK_OK(ct_decoder_model_loss(tp, &tm.m, b->ids, &in, b->labels, ckpt, 0.0f, &loss, NULL));
        int rc = loss ? ct_backward(tp, loss, 1.0f) : CT_ERUNTIME;
        CHECK(rc == CT_ERUNTIME && strstr(ct_last_error(), "failed on purpose") &&
                  strstr(ct_last_error(), "backward mark 1"), "hook error: rc %d, '%s'", rc, ct_last_error());
        for (int i = 0; i < bad.n; i++) free(bad.snap[i]);
    }
    /* without recording the forward leaves no marks */
    mark_log none = {.tm = &tm, .fail_at = -1};
    tp->mark_ctx = &none;
    ct_tape_reset(tp);
    bool prev = ct_tape_set_recording(tp, false);
    for (int g = 0; g < 3; g++) CHECK_OK(ct_tape_mark(tp, g));
    ct_tape_set_recording(tp, prev);
    CHECK(tp->n_entries == 0, "%d entries recorded with recording off", tp->n_entries);
    tp->on_mark = NULL;
    tp->mark_ctx = NULL;
    free_model(&tm);
}

/* Input errors name what is wrong. */
static void test_errors(ct_tape *tp, batch *b) {
    printf("input errors\n");
    tmodel tm;
    build(&tm, &k_tiny, 1, CT_F32, 0.0f, false);
    ct_decoder_input in;
    int32_t *pos = b->pos, keep = pos[3];
    pos[3] = -2;
    CHECK(ct_decoder_input_make(&in, tp, b->pos, b->seg, b->T) == CT_EINPUT, "negative position accepted");
    CHECK(strstr(ct_last_error(), "token 3") != NULL, "message: %s", ct_last_error());
    pos[3] = keep;
    CHECK_OK(ct_decoder_input_make(&in, tp, b->pos, b->seg, b->T));

    ct_decoder_dims bad = tm.m.dims;
    bad.n_kv_heads = 3; /* 4 heads are not a multiple of 3 */
    CHECK(ct_decoder_layer_check(&bad, &tm.lw[0]) == CT_EINPUT, "heads 4 / kv 3 accepted");
    ct_decoder_layer_weights w = tm.lw[0];
    w.wo = tm.lw[0].w1; /* [F, D] where [D, Hq*hd] belongs */
    ct_tape_reset(tp);
    ct_tensor *out = NULL;
    CHECK(ct_decoder_layer(tp, &tm.m.dims, &w, &in, tm.emb.t, &out) == CT_EINPUT, "wrong wo accepted");
    CHECK(strstr(ct_last_error(), "layers.0.w1") != NULL, "message does not name the tensor: %s",
          ct_last_error());
    ct_tensor *loss = NULL;
    int64_t n = 5;
    ct_tensor *short_labels = ct_test_need(ct_tensor_new(be, CT_I32, 1, &n, false));
    CHECK(ct_decoder_model_loss(tp, &tm.m, b->ids, &in, short_labels, false, 0, &loss, NULL) == CT_EINPUT,
          "5 labels for 11 tokens accepted");
    ct_tensor_free(be, short_labels);
    free_model(&tm);
}

int main(void) {
    be = ct_cpu_backend();
    ct_tape tp;
    CHECK_OK(ct_tape_init(&tp, be, (size_t)8 << 20));
    batch tiny, large;
    make_batch(&tiny, k_tiny.V, 2, (int[]){6, 5}, 1, 77);          /* T 11, 7 trained */
    make_batch(&large, k_large.V, 3, (int[]){100, 120, 68}, 10, 78); /* T 288 */
    test_layer(&tp, &tiny);
    test_model(&tp, &tiny, CT_F32, true);
    test_determinism(&tp, &k_tiny, &tiny);
    test_model(&tp, &tiny, CT_BF16, true);
    test_model(&tp, &tiny, CT_F16, false);
    test_determinism(&tp, &k_large, &large);
    test_errors(&tp, &tiny);
    test_marks(&tp, &tiny);
    free_batch(&tiny), free_batch(&large);
    ct_tape_free(&tp);
    return ct_test_finish();
}
