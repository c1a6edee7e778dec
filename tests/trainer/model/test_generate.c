/* KV-cache generation (trainer/model/generate.c, autograd/cpu/attention_decode.c,
 * trainer/model/text_stream.c).
 *
 * On random InternLM2 models built in memory (GQA, odd sizes; with and
 * without LoRA on every linear and the head; linear rope scaling; NF4 block
 * weights; a larger one that crosses the kernels' OpenMP thresholds):
 *  (a) the prefill's logits equal the training forward's (decoder + head, all
 *      rows) and the double reference (tests/ref_internlm2.h) at the last
 *      prompt position;
 *  (b) a chunk of several tokens fed onto the cache, then one token at a time:
 *      every feed's logits equal the training forward's row and the reference;
 *  (c) greedy generation equals a cache-free greedy loop (full forward over the
 *      whole sequence per token) token for token; stop ids end it;
 *  (d) rewinding the cache and feeding again repeats the logits bit for bit;
 *      overflowing the cache or an unknown id is CT_EINPUT and changes nothing.
 * Streaming text with the real InternLM2 tokenizer: characters split over byte
 * tokens come out whole, the pieces join to the full decode, stop strings cut.
 * On the real stories260k model: greedy text from BOS is English, repeatable,
 * and equal to the cache-free recomputation of trainer/model/model.h; with a random
 * LoRA on all linears and the head the tokens change, still equal the
 * cache-free ones, and the same after saving and loading the PEFT adapter. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/quant.h"
#include "datasets/tokenizer.h"
#include "ref_internlm2.h"
#include "testutil.h"
#include "trainer/model/adapter.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"

enum { NL = 5, MAXL = 3, MAXT = 64 };
static const ct_backend *be;

/* ------------------------------------------------------------ random models */

typedef struct {
    int D, Hq, Hkv, hd, F, V, L, r; /* r = 0: no LoRA */
    bool nf4;                        /* block linears quantized */
    bool rope_linear;                /* rope_scaling linear, factor 2 */
} spec;

typedef struct {
    spec s;
    ct_tensor *owned[MAXT];        /* every heap tensor */
    double *dbl[MAXT];             /* every reference copy */
    int n_owned, n_dbl;
    ct_quant_state qs[MAXL][NL];   /* NF4 states of the block linears */
    ct_tensor qt[MAXL][NL];        /* their CT_NF4 headers */
    ct_decoder_layer_weights lw[MAXL];
    ct_decoder_model m;
    ref_layer rl[MAXL];
    ref_model rm;
} tmodel;

/* A random f32 tensor and its double copy (N(offset, scale²)). */
static ct_tensor *rand_tensor(tmodel *tm, ct_test_rng *rng, int ndim, const int64_t *shape, double scale,
                              double offset, const double **copy) {
    ct_tensor *t = ct_test_need(ct_tensor_new(be, CT_F32, ndim, shape, false));
    int64_t n = ct_numel(t);
    float *f = t->data;
    ct_test_fill(rng, f, n, scale);
    double *d = ct_test_need(malloc((size_t)n * sizeof *d));
    for (int64_t i = 0; i < n; i++) d[i] = (double)(f[i] += (float)offset);
    tm->owned[tm->n_owned++] = t;
    tm->dbl[tm->n_dbl++] = d;
    *copy = d;
    return t;
}

static void build(tmodel *tm, const spec *s, uint64_t seed) {
    memset(tm, 0, sizeof *tm);
    tm->s = *s;
    ct_test_rng rng = {seed};
    const int G = s->Hq / s->Hkv;
    const int64_t D = s->D, V = s->V, r = s->r;
    const int64_t rows[NL] = {(int64_t)s->Hkv * (G + 2) * s->hd, D, s->F, s->F, D};
    const int64_t cols[NL] = {D, (int64_t)s->Hq * s->hd, D, D, s->F};
    const double lora_scale = 1.5;
    const double *d;
    tm->m.tok_embeddings = rand_tensor(tm, &rng, 2, (int64_t[]){V, D}, 1.0, 0, &tm->rm.tok_embeddings);
    tm->m.norm = rand_tensor(tm, &rng, 1, &D, 0.1, 1.0, &tm->rm.norm);
    tm->m.output.w = rand_tensor(tm, &rng, 2, (int64_t[]){V, D}, 2.0 / sqrt((double)D), 0, &d);
    tm->rm.output = (ref_linear){d, NULL, NULL, (int)V, (int)D, (int)r, lora_scale};
    tm->m.output.scale = (float)lora_scale;
    tm->m.output.id = 1000;
    if (r) {
        tm->m.output.a = rand_tensor(tm, &rng, 2, (int64_t[]){r, D}, 1.0 / sqrt((double)D), 0, &tm->rm.output.a);
        tm->m.output.b = rand_tensor(tm, &rng, 2, (int64_t[]){V, r}, 0.3, 0, &tm->rm.output.b);
    }
    for (int l = 0; l < s->L; l++) {
        tm->lw[l].attention_norm = rand_tensor(tm, &rng, 1, &D, 0.1, 1.0, &tm->rl[l].attention_norm);
        tm->lw[l].ffn_norm = rand_tensor(tm, &rng, 1, &D, 0.1, 1.0, &tm->rl[l].ffn_norm);
        ct_linear *lins[NL] = {&tm->lw[l].wqkv, &tm->lw[l].wo, &tm->lw[l].w1, &tm->lw[l].w3, &tm->lw[l].w2};
        ref_linear *rls[NL] = {&tm->rl[l].wqkv, &tm->rl[l].wo, &tm->rl[l].w1, &tm->rl[l].w3, &tm->rl[l].w2};
        for (int k = 0; k < NL; k++) {
            double ws = (k == 0 ? 1.5 : 1.0) / sqrt((double)cols[k]); /* wqkv hotter: peaky attention */
            ct_tensor *w = rand_tensor(tm, &rng, 2, (int64_t[]){rows[k], cols[k]}, ws, 0, &d);
            *lins[k] = (ct_linear){.w = w, .scale = (float)lora_scale, .id = (uint64_t)(l * 8 + k)};
            *rls[k] = (ref_linear){d, NULL, NULL, (int)rows[k], (int)cols[k], (int)r, lora_scale};
            if (s->nf4) {
                /* the reference holds the dequantized values the kernels see */
                ct_quant_params qp = {.type = CT_QUANT_NF4, .blocksize = 64, .double_quant = true};
                if (ct_quant_quantize(&tm->qs[l][k], w->data, CT_F32, 2, w->shape, &qp, "w") ||
                    ct_quant_tensor(&tm->qt[l][k], &tm->qs[l][k], "w"))
                    ct_test_need(NULL);
                int64_t n = ct_numel(w);
                float *f = ct_test_need(malloc((size_t)n * sizeof *f));
                if (ct_quant_dequantize(&tm->qs[l][k], 0, n, f)) ct_test_need(NULL);
                for (int64_t i = 0; i < n; i++) ((double *)d)[i] = f[i];
                free(f);
                lins[k]->w = &tm->qt[l][k];
            }
            if (r) {
                lins[k]->a = rand_tensor(tm, &rng, 2, (int64_t[]){r, cols[k]}, 1.0 / sqrt((double)cols[k]), 0,
                                         &rls[k]->a);
                lins[k]->b = rand_tensor(tm, &rng, 2, (int64_t[]){rows[k], r}, 0.2, 0, &rls[k]->b);
            }
        }
    }
    double factor = s->rope_linear ? 2.0 : 1.0;
    tm->m.dims = (ct_decoder_dims){.hidden = s->D, .n_heads = s->Hq, .n_kv_heads = s->Hkv, .head_dim = s->hd,
                                   .intermediate = s->F, .eps = 1e-5f,
                                   .rope = {.theta = 10000.0, .scaling = s->rope_linear ? CT_ROPE_LINEAR : CT_ROPE_NONE,
                                            .factor = factor, .max_pos = 4096}};
    tm->m.n_layers = s->L;
    tm->m.layers = tm->lw;
    tm->rm.c = (ref_config){.hidden = s->D, .n_heads = s->Hq, .n_kv_heads = s->Hkv, .head_dim = s->hd,
                            .intermediate = s->F, .vocab = s->V, .eps = (double)1e-5f, .theta = 10000.0,
                            .scaling = s->rope_linear ? REF_ROPE_LINEAR : REF_ROPE_NONE, .factor = factor,
                            .max_pos = 4096};
    tm->rm.n_layers = s->L;
    tm->rm.layers = tm->rl;
}

static void free_model(tmodel *tm) {
    for (int i = 0; i < tm->n_owned; i++) ct_tensor_free(be, tm->owned[i]);
    for (int i = 0; i < tm->n_dbl; i++) free(tm->dbl[i]);
    for (int l = 0; l < MAXL; l++)
        for (int k = 0; k < NL; k++) ct_quant_free(&tm->qs[l][k]);
}

/* ------------------------------------------------------------ references */

/* The training forward (decoder + head on every row, recording off): [T, V]. */
static void train_logits(const tmodel *tm, const int32_t *ids, int T, float *out) {
    ct_tape tape;
    ct_tape_init(&tape, be, 0);
    ct_tape_set_recording(&tape, false);
    int64_t shape[1] = {T};
    ct_tensor *ids_t = ct_test_need(ct_tape_new(&tape, CT_I32, 1, shape));
    int32_t *pos = ct_test_need(malloc((size_t)T * sizeof *pos)); /* [T] 0..T-1 */
    for (int t = 0; t < T; t++) ((int32_t *)ids_t->data)[t] = ids[t], pos[t] = t;
    ct_decoder_input in;
    ct_tensor *hidden, *logits;
    CHECK_OK(ct_decoder_input_make(&in, &tape, pos, NULL, T));
    free(pos);
    CHECK_OK(ct_decoder_model_hidden(&tape, &tm->m, ids_t, &in, false, &hidden));
    logits = ct_test_need(ct_lora_linear(&tape, hidden, &tm->m.output));
    memcpy(out, logits->data, (size_t)T * (size_t)tm->s.V * sizeof *out);
    ct_tape_free(&tape);
}

/* The double reference: [T, V]. */
static void ref_logits(const tmodel *tm, const int32_t *ids, int T, double *out) {
    int32_t *pos = ct_test_need(malloc((size_t)T * sizeof *pos)), *labels = ct_test_need(malloc((size_t)T * sizeof *labels));
    for (int t = 0; t < T; t++) pos[t] = t, labels[t] = -100;
    ref_model_loss(&tm->rm, T, ids, pos, NULL, labels, out);
    free(pos);
    free(labels);
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++) best = x[i] > x[best] ? i : best;
    return best;
}

/* ------------------------------------------------------------ (a)-(d) */

/* P prompt ids, a chunk of C ids, then single ids up to T; logits checked at
 * every feed against the training forward and the reference. */
static void check_feeds(const tmodel *tm, const char *label, int P, int C, int T, uint64_t seed) {
    const int V = tm->s.V;
    int32_t *ids = ct_test_need(malloc((size_t)T * sizeof *ids));
    ct_test_rng rng = {seed};
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(ct_test_uniform(&rng) * V);
    float *tr = ct_test_need(malloc((size_t)T * (size_t)V * sizeof *tr));
    double *rf = ct_test_need(malloc((size_t)T * (size_t)V * sizeof *rf));
    train_logits(tm, ids, T, tr);
    ref_logits(tm, ids, T, rf);

    ct_generator *g = NULL;
    CHECK_OK(ct_gen_new(&tm->m, be, T + 3, &g));
    if (!g) goto done;
    char what[160];
    float *lg = NULL, *first = ct_test_need(malloc((size_t)V * sizeof *first));
    for (int done_n = 0; done_n < T;) {
        int n = done_n == 0 ? P : done_n == P ? C : 1;
        CHECK_OK(ct_gen_feed(g, ids + done_n, n, &lg));
        done_n += n;
        CHECK(ct_gen_len(g) == done_n, "%s: cache holds %lld positions, want %d", label, (long long)ct_gen_len(g), done_n);
        size_t row = (size_t)(done_n - 1) * (size_t)V;
        snprintf(what, sizeof what, "%s: logits after %d tokens vs training forward", label, done_n);
        ct_check_close_f(what, lg, tr + row, V, 5e-5, 1e-4);
        snprintf(what, sizeof what, "%s: logits after %d tokens vs double reference", label, done_n);
        ct_check_close(what, lg, rf + row, V, 3e-4, 1e-3);
        if (done_n == P + C) memcpy(first, lg, (size_t)V * sizeof *first);
    }
    CHECK(memcmp(ct_gen_tokens(g), ids, (size_t)T * sizeof *ids) == 0, "%s: cached ids differ from the fed ones", label);
    /* overflow and bad ids: CT_EINPUT, nothing changes */
    int64_t len = ct_gen_len(g);
    CHECK(ct_gen_feed(g, ids, 4, &lg) == CT_EINPUT, "%s: 4 tokens into 3 free positions accepted", label);
    int32_t bad = V;
    CHECK(ct_gen_feed(g, &bad, 1, &lg) == CT_EINPUT, "%s: id %d accepted", label, V);
    CHECK(ct_gen_len(g) == len, "%s: a failed feed changed the cache length", label);
    CHECK(ct_gen_truncate(g, len + 1) == CT_EINPUT, "%s: truncating past the end accepted", label);
    /* (d) rewind to P and feed the chunk again: the same logits, bit for bit */
    CHECK_OK(ct_gen_truncate(g, P));
    CHECK_OK(ct_gen_feed(g, ids + P, C, &lg));
    CHECK(lg && memcmp(lg, first, (size_t)V * sizeof *lg) == 0, "%s: re-feeding after a rewind changed the logits", label);
    free(first);
    ct_gen_free(g);
done:
    free(ids);
    free(tr);
    free(rf);
}

/* (c) greedy with the cache vs greedy by full recomputation. */
static void check_greedy(const tmodel *tm, const char *label, int P, int N) {
    const int V = tm->s.V;
    int32_t seq[256];
    ct_test_rng rng = {777};
    for (int t = 0; t < P; t++) seq[t] = (int32_t)(ct_test_uniform(&rng) * V);
    ct_sampler s;
    ct_sampling_params sp = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    CHECK_OK(ct_sampler_init(&s, &sp, V));
    ct_generator *g = NULL;
    CHECK_OK(ct_gen_new(&tm->m, be, P + N, &g));
    if (!g) return;
    ct_ids ans = {0};
    ct_gen_result res;
    ct_gen_limits lim = {.max_new_tokens = N};
    CHECK_OK(ct_gen_generate(g, &s, NULL, seq, P, &lim, NULL, NULL, &ans, &res));
    CHECK(ans.n == (size_t)N && res.n_generated == N && res.reason == CT_GEN_MAX_TOKENS,
          "%s: %zu tokens, reason %d; want %d, max tokens", label, ans.n, (int)res.reason, N);
    CHECK(ct_gen_len(g) == P + N - 1, "%s: cache holds %lld, want prompt + all but the last sampled id",
          label, (long long)ct_gen_len(g));
    /* cache-free: the whole sequence through the training forward each step */
    float *tr = ct_test_need(malloc((size_t)(P + N) * (size_t)V * sizeof *tr));
    int same = 0;
    for (int i = 0; i < N; i++) {
        train_logits(tm, seq, P + i, tr);
        seq[P + i] = argmax(tr + (size_t)(P + i - 1) * (size_t)V, V);
        if (i < (int)ans.n && ans.v[i] == seq[P + i]) same++;
        else break;
    }
    CHECK(same == N, "%s: cached greedy equals the cache-free loop for %d of %d tokens", label, same, N);
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        bool seen = false;
        for (int j = 0; j < i; j++) seen |= seq[P + j] == seq[P + i];
        distinct += !seen;
    }
    CHECK(distinct >= 3, "%s: greedy output has %d distinct ids: a degenerate test", label, distinct);
    /* a stop id ends the answer at its first occurrence */
    int at = N / 2;
    int32_t stop = ans.v[at];
    int first = at;
    for (int i = 0; i < at; i++)
        if (ans.v[i] == stop) {
            first = i;
            break;
        }
    ct_ids ans2 = {0};
    CHECK_OK(ct_gen_truncate(g, 0));
    lim.stop_ids = &stop;
    lim.n_stop_ids = 1;
    CHECK_OK(ct_gen_generate(g, &s, NULL, seq, P, &lim, NULL, NULL, &ans2, &res));
    CHECK(res.reason == CT_GEN_STOP_ID && ans2.n == (size_t)first + 1 && ans2.v[first] == stop &&
              memcmp(ans2.v, ans.v, ans2.n * sizeof *ans.v) == 0,
          "%s: stop id %d: reason %d after %zu tokens, want stop after %d", label, stop, (int)res.reason, ans2.n,
          first + 1);
    ct_ids_free(&ans);
    ct_ids_free(&ans2);
    free(tr);
    ct_gen_free(g);
    ct_sampler_free(&s);
}

static void test_random_models(void) {
    const spec tiny = {.D = 30, .Hq = 6, .Hkv = 2, .hd = 6, .F = 22, .V = 37, .L = 2};
    tmodel tm;
    build(&tm, &tiny, 0x5eed01);
    check_feeds(&tm, "tiny", 7, 5, 30, 11);
    check_greedy(&tm, "tiny", 5, 30);
    free_model(&tm);

    spec lora = tiny;
    lora.r = 3;
    lora.rope_linear = true;
    build(&tm, &lora, 0x5eed02);
    check_feeds(&tm, "tiny + LoRA, linear rope", 6, 4, 28, 12);
    check_greedy(&tm, "tiny + LoRA, linear rope", 4, 30);
    free_model(&tm);

    const spec q = {.D = 64, .Hq = 4, .Hkv = 1, .hd = 16, .F = 96, .V = 41, .L = 2, .r = 2, .nf4 = true};
    build(&tm, &q, 0x5eed03);
    check_feeds(&tm, "nf4 + LoRA, MQA", 9, 3, 24, 13);
    check_greedy(&tm, "nf4 + LoRA, MQA", 3, 20);
    free_model(&tm);

    /* long enough for the OpenMP paths of the blockwise and cached kernels */
    const spec big = {.D = 128, .Hq = 8, .Hkv = 2, .hd = 16, .F = 96, .V = 50, .L = 2, .r = 2};
    build(&tm, &big, 0x5eed04);
    check_feeds(&tm, "larger", 200, 30, 300, 14);
    free_model(&tm);
}

/* ------------------------------------------------------------ streaming text */

typedef struct {
    char buf[4096];
    size_t len;
    int pieces, bad_pieces;
} sink;

static bool valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return false;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return false;
        i += k;
    }
    return true;
}

static int sink_emit(void *ctx, const char *text, size_t len) {
    sink *s = ctx;
    s->pieces++;
    if (!valid_utf8((const unsigned char *)text, len) || (len >= 3 && memmem(text, len, "\xEF\xBF\xBD", 3)))
        s->bad_pieces++;
    if (s->len + len < sizeof s->buf) memcpy(s->buf + s->len, text, len), s->len += len;
    s->buf[s->len] = '\0';
    return 0;
}

/* Pushes the ids of `text` one by one; returns whether a stop string hit. */
static bool stream_text(const ct_tokenizer *tok, const char *text, const char *const *stops, size_t n_stops,
                        sink *out, ct_ids *ids) {
    memset(out, 0, sizeof *out);
    ids->n = 0;
    CHECK_OK(ct_tok_encode(tok, text, strlen(text), false, ids));
    ct_text_stream ts;
    const int32_t anchor[1] = {1};
    CHECK_OK(ct_text_stream_init(&ts, tok, anchor, 1, stops, n_stops));
    bool stopped = false;
    for (size_t i = 0; i < ids->n && !stopped; i++) CHECK_OK(ct_text_stream_push(&ts, ids->v[i], sink_emit, out, &stopped));
    CHECK_OK(ct_text_stream_finish(&ts, sink_emit, out));
    ct_text_stream_free(&ts);
    return stopped;
}

static void test_text_stream(void) {
    char path[1024];
    if (!ct_fixture("internlm2-chat-7b/tokenizer.model", path, sizeof path)) return;
    ct_tokenizer *tok = NULL;
    CHECK_OK(ct_tok_load(path, &tok));
    if (!tok) return;
    ct_ids ids = {0};
    sink out;
    /* rare characters fall back to byte tokens: 3- and 4-byte UTF-8 split */
    const char *text = "Tea \xF0\x9F\xA6\x9C\xF0\x9F\xAA\xBC and \xE4\xB9\x82\xE5\x9B\x97 done.";
    stream_text(tok, text, NULL, 0, &out, &ids);
    int bytes = 0;
    for (size_t i = 0; i < ids.n; i++) {
        const char *p = ct_tok_piece(tok, ids.v[i], NULL);
        bytes += p && strncmp(p, "<0x", 3) == 0;
    }
    CHECK(bytes >= 4, "the test text gave only %d byte tokens: it does not test split characters", bytes);
    CHECK(strcmp(out.buf, text) == 0, "streamed \"%s\", want \"%s\"", out.buf, text);
    CHECK(out.bad_pieces == 0 && out.pieces >= 4, "%d of %d streamed pieces were not whole UTF-8", out.bad_pieces,
          out.pieces);
    /* stop strings: text before the first one, nothing after */
    const char *stops[2] = {"Observation:", "<eoa>"};
    CHECK(stream_text(tok, "The answer is 42.\nObservation: more", stops, 2, &out, &ids), "stop string not found");
    CHECK(strcmp(out.buf, "The answer is 42.\n") == 0, "text before the stop string: \"%s\"", out.buf);
    /* a prefix of a stop string at the end is held back, then released at the end */
    CHECK(!stream_text(tok, "wait for Obs", stops, 2, &out, &ids), "a stop-string prefix counted as a stop");
    CHECK(strcmp(out.buf, "wait for Obs") == 0, "held-back text not released at the end: \"%s\"", out.buf);
    /* special tokens are not text */
    CHECK(!stream_text(tok, "hi<|im_end|>", stops, 2, &out, &ids), "special token stopped the stream");
    CHECK(strcmp(out.buf, "hi") == 0, "special token shown as text: \"%s\"", out.buf);
    ct_ids_free(&ids);
    ct_tok_free(tok);
}

/* ------------------------------------------------------------ stories260k */

static void test_stories(void) {
    char dir[1024];
    if (!ct_fixture("stories260k-internlm2", dir, sizeof dir)) return;
    ct_model *model = NULL;
    ct_tokenizer *tok = NULL;
    CHECK_OK(ct_model_load(dir, NULL, &model));
    CHECK_OK(ct_tok_load(dir, &tok));
    if (!model || !tok) goto out;
    const ct_decoder_model *dm = ct_model_decoder(model);
    enum { N = 60 };
    int32_t bos = ct_tok_bos_id(tok), eos = ct_tok_eos_id(tok);
    ct_gen_limits lim = {.max_new_tokens = N, .stop_ids = &eos, .n_stop_ids = 1};
    ct_sampling_params sp = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    sink text[2];
    ct_ids ans[2] = {{0}, {0}};
    for (int run = 0; run < 2; run++) {
        ct_generator *g = NULL;
        ct_sampler s;
        ct_gen_result res;
        memset(&text[run], 0, sizeof text[run]);
        CHECK_OK(ct_sampler_init(&s, &sp, (int32_t)dm->output.w->shape[0]));
        CHECK_OK(ct_gen_new(dm, ct_model_backend(model), 512, &g));
        if (g) CHECK_OK(ct_gen_generate(g, &s, tok, &bos, 1, &lim, sink_emit, &text[run], &ans[run], &res));
        ct_gen_free(g);
        ct_sampler_free(&s);
    }
    fprintf(stderr, "stories260k greedy from BOS: \"%s\"\n", text[0].buf);
    CHECK(ans[0].n >= 40, "only %zu tokens before EOS", ans[0].n);
    CHECK(ans[0].n == ans[1].n && memcmp(ans[0].v, ans[1].v, ans[0].n * sizeof *ans[0].v) == 0 &&
              strcmp(text[0].buf, text[1].buf) == 0,
          "two greedy runs differ");
    /* English: printable ASCII words with spaces and the commonest words */
    const char *t = text[0].buf;
    int spaces = 0, ascii = 1, letters = 0;
    for (const char *c = t; *c; c++) {
        spaces += *c == ' ';
        letters += (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z');
        ascii &= (*c >= 32 && *c < 127) || *c == '\n';
    }
    CHECK(ascii && spaces >= 20 && letters > 2 * spaces, "not ASCII words: \"%s\"", t);
    int common = (strstr(t, " the ") != NULL) + (strstr(t, " was ") != NULL) + (strstr(t, " a ") != NULL) +
                 (strstr(t, " and ") != NULL) + (strstr(t, " to ") != NULL);
    CHECK(common >= 3, "only %d of the words the/was/a/and/to in \"%s\"", common, t);
    /* the streamed text is the decode of the answer */
    size_t n_text = ans[0].n - (ans[0].n && ans[0].v[ans[0].n - 1] == eos);
    char *full = NULL;
    size_t full_len = 0;
    CHECK_OK(ct_tok_decode(tok, ans[0].v, n_text, false, &full, &full_len));
    CHECK(full && strcmp(full, t) == 0, "streamed text differs from the decode \"%s\"", full ? full : "");
    free(full);
    /* cache-free: ct_model_logits over the whole sequence per token */
    ct_tape tape;
    ct_tape_init(&tape, ct_model_backend(model), 0);
    int32_t seq[N + 1] = {bos};
    int32_t V = (int32_t)dm->output.w->shape[0];
    float *lg = ct_test_need(malloc((size_t)V * sizeof *lg));
    size_t same = 0;
    for (size_t i = 0; i < ans[0].n; i++) {
        if (ct_model_logits(model, &tape, seq, (int64_t)i + 1, (int64_t)i, lg)) {
            CHECK(false, "%s", ct_last_error());
            break;
        }
        seq[i + 1] = argmax(lg, V);
        if (seq[i + 1] != ans[0].v[i]) break;
        same++;
    }
    CHECK(same == ans[0].n, "cached greedy equals the cache-free recomputation for %zu of %zu tokens", same,
          ans[0].n);
    free(lg);
    ct_tape_free(&tape);
    ct_ids_free(&ans[0]);
    ct_ids_free(&ans[1]);
out:
    ct_tok_free(tok);
    ct_model_free(model);
}

/* stories260k with a random LoRA on every linear and the head: generation
 * changes, still equals the cache-free recomputation, and an adapter saved and
 * loaded into a fresh model (trainer/model/adapter.h) generates the same tokens. */
static int greedy_ids(const ct_model *model, int32_t bos, int N, ct_ids *out) {
    ct_generator *g = NULL;
    ct_sampler s;
    ct_sampling_params sp = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    ct_gen_limits lim = {.max_new_tokens = N};
    ct_gen_result res;
    int rc = ct_gen_new(ct_model_decoder(model), ct_model_backend(model), 256, &g);
    if (!rc) rc = ct_sampler_init(&s, &sp, ct_gen_vocab(g));
    if (!rc) {
        rc = ct_gen_generate(g, &s, NULL, &bos, 1, &lim, NULL, NULL, out, &res);
        ct_sampler_free(&s);
    }
    ct_gen_free(g);
    return rc;
}

static void test_stories_adapter(void) {
    char dir[1024], adir[256];
    if (!ct_fixture("stories260k-internlm2", dir, sizeof dir)) return;
    enum { N = 40 };
    ct_model *base = NULL, *fresh = NULL;
    ct_lora *lora = NULL;
    ct_ids plain = {0}, adapted = {0}, loaded = {0};
    CHECK_OK(ct_model_load(dir, NULL, &base));
    if (!base) return;
    CHECK_OK(greedy_ids(base, 1, N, &plain));
    ct_lora_config lc = {.r = 4, .alpha = 8.0, .targets = CT_LORA_ALL_BLOCK | CT_LORA_OUTPUT, .seed = 3};
    CHECK_OK(ct_model_add_lora(base, &lc, false, &lora));
    if (!lora) goto out;
    ct_test_rng rng = {0xada};
    ct_test_fill(&rng, ct_lora_values(lora), ct_lora_numel(lora), 0.15);
    CHECK_OK(greedy_ids(base, 1, N, &adapted));
    size_t same = 0;
    while (same < plain.n && same < adapted.n && plain.v[same] == adapted.v[same]) same++;
    CHECK(same < plain.n, "the LoRA did not change the greedy tokens");
    /* cache-free with the LoRA attached */
    ct_tape tape;
    ct_tape_init(&tape, ct_model_backend(base), 0);
    int32_t seq[N + 1] = {1};
    int32_t V = (int32_t)ct_model_decoder(base)->output.w->shape[0];
    float *lg = ct_test_need(malloc((size_t)V * sizeof *lg));
    size_t ok = 0;
    for (size_t i = 0; i < adapted.n && !ct_model_logits(base, &tape, seq, (int64_t)i + 1, (int64_t)i, lg); i++) {
        seq[i + 1] = argmax(lg, V);
        if (seq[i + 1] != adapted.v[i]) break;
        ok++;
    }
    CHECK(ok == adapted.n && ok == N, "with LoRA: cached greedy equals the cache-free one for %zu of %zu tokens", ok,
          adapted.n);
    free(lg);
    ct_tape_free(&tape);
    /* the adapter through its files */
    snprintf(adir, sizeof adir, "/tmp/ct_test_generate_adapter_%d", (int)getpid());
    CHECK_OK(ct_adapter_save(adir, lora, dir));
    CHECK_OK(ct_model_load(dir, NULL, &fresh));
    if (fresh) {
        CHECK_OK(ct_adapter_load(adir, fresh, false, NULL));
        CHECK_OK(greedy_ids(fresh, 1, N, &loaded));
        CHECK(loaded.n == adapted.n && memcmp(loaded.v, adapted.v, loaded.n * sizeof *loaded.v) == 0,
              "a saved and reloaded adapter generates other tokens");
    }
    ct_remove_tree(adir);
out:
    ct_ids_free(&plain);
    ct_ids_free(&adapted);
    ct_ids_free(&loaded);
    ct_model_free(fresh);
    ct_model_free(base);
}

int main(void) {
    be = ct_cpu_backend();
    test_random_models();
    test_text_stream();
    test_stories();
    test_stories_adapter();
    return ct_test_finish();
}
