/* linear_cross_entropy (CPU): the loss vs a double-precision loop reference and
 * every grad (dx, head dA, dB) vs central differences of it, through the tape
 * (ct_backward with a seed != 1), for f32/bf16/f16/nf4 heads, head LoRA with and
 * without dropout (and with A or B frozen), x without grad, ignored labels,
 * token-block boundaries (trained rows not a multiple of the block), several
 * vocab tiles, large logits (the online max grows by a lot), norm > 0, all
 * labels ignored, bad labels, eval mode, bit-identical reruns, a lora_linear →
 * loss chain, a medium shape (parallel loops, many tiles) vs analytic double
 * grads under two tilings, and a 92544 × 4096 bf16 head within bounded scratch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu_kernels.h"
#include "autograd/ct_inline.h"
#include "autograd/ops.h"
#include "autograd/quant.h"
#include "testutil.h"

#define IGN (-100)

typedef struct {
    const char *name;
    int T, D, V, r;
    ct_dtype wdt;
    float p;
    bool lora, x_grad;
    float norm;
    int chunk_rows, tile_rows; /* 0 = defaults */
    const int32_t *labels;     /* [T] */
    float xscale;              /* scale of the random x (0 = 1) */
    bool a_frozen, b_frozen;   /* head LoRA factors without grad */
} xcase;

/* Double reference of the head + loss. */
typedef struct {
    int T, D, V, r;
    bool lora;
    double s, keep_scale, norm, seed_scale;
    double *x, *w, *a, *b;  /* [T,D] [V,D] [r,D] [V,r] */
    double *xbase;          /* [T,D] x as the head's GEMM sees it (bf16-rounded), or NULL: x */
    bool *keep;             /* [T,D] */
    const int32_t *lab;
} xref_t;

static double xref_loss(void *ctx) {
    const xref_t *R = ctx;
    double sum = 0.0;
    int n = 0;
    double *l = malloc(sizeof(double) * (size_t)R->V);
    for (int t = 0; t < R->T; t++) {
        if (R->lab[t] == IGN) continue;
        n++;
        for (int v = 0; v < R->V; v++) {
            double acc = 0.0;
            for (int i = 0; i < R->D; i++) acc += R->x[t * R->D + i] * R->w[(size_t)v * R->D + i];
            if (R->lora)
                for (int k = 0; k < R->r; k++) {
                    double u = 0.0;
                    for (int i = 0; i < R->D; i++)
                        if (R->keep[t * R->D + i]) u += R->x[t * R->D + i] * R->keep_scale * R->a[k * R->D + i];
                    acc += R->s * u * R->b[v * R->r + k];
                }
            l[v] = acc;
        }
        double mx = l[0], se = 0.0;
        for (int v = 1; v < R->V; v++) mx = fmax(mx, l[v]);
        for (int v = 0; v < R->V; v++) se += exp(l[v] - mx);
        sum += mx + log(se) - l[R->lab[t]];
    }
    free(l);
    if (n == 0) return 0.0;
    return R->seed_scale * sum / (R->norm > 0 ? R->norm : (double)n);
}

static double *to_double(const float *v, int64_t n) {
    double *d = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) d[i] = v[i];
    return d;
}

static double max_err(const float *got, const double *want, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)got[i] - want[i]));
    return m;
}

typedef struct {
    ct_tensor *x, *w, *a, *b, *lab;
    float *wf; /* [V, D] rounded head as f32 */
    ct_linear head;
    ct_quant_state qs; /* an nf4 head: w is wq, over qs */
    ct_tensor wq;
} xsetup;

static void xsetup_init(const xcase *c, uint64_t seed, xsetup *S) {
    const ct_backend *be = ct_cpu_backend();
    ct_test_rng rng = {seed};
    int64_t xs[2] = {c->T, c->D}, ws[2] = {c->V, c->D}, as[2] = {c->r, c->D}, bs[2] = {c->V, c->r};
    int64_t T = c->T;
    S->x = ct_tensor_new(be, CT_F32, 2, xs, c->x_grad);
    ct_test_fill(&rng, S->x->data, (int64_t)c->T * c->D, c->xscale > 0.0f ? c->xscale : 1.0);
    int64_t nw = (int64_t)c->V * c->D;
    S->wf = malloc(sizeof(float) * (size_t)nw);
    ct_test_fill(&rng, S->wf, nw, 0.6);
    memset(&S->qs, 0, sizeof S->qs);
    if (c->wdt == CT_NF4) {
        /* Blocks of 32 with double quantization: blocks span rows (D is not a
         * multiple of 32), so vocab tiles start inside blocks. */
        ct_quant_params qp = {CT_QUANT_NF4, 32, true, NULL};
        CHECK_OK(ct_quant_quantize(&S->qs, S->wf, CT_F32, 2, ws, &qp, "output.weight"));
        CHECK_OK(ct_quant_tensor(&S->wq, &S->qs, "output.weight"));
        CHECK_OK(ct_quant_dequantize(&S->qs, 0, nw, S->wf));
        S->w = &S->wq;
    } else {
        S->w = ct_tensor_new(be, c->wdt, 2, ws, false);
        S->w->name = "output.weight";
        ct_convert(S->w->data, c->wdt, S->wf, CT_F32, nw);
        ct_convert(S->wf, CT_F32, S->w->data, c->wdt, nw);
    }
    S->a = S->b = NULL;
    if (c->lora) {
        S->a = ct_tensor_new(be, CT_F32, 2, as, !c->a_frozen);
        S->b = ct_tensor_new(be, CT_F32, 2, bs, !c->b_frozen);
        ct_test_fill(&rng, S->a->data, (int64_t)c->r * c->D, 0.5);
        ct_test_fill(&rng, S->b->data, (int64_t)c->V * c->r, 0.5);
    }
    S->lab = ct_tensor_new(be, CT_I32, 1, &T, false);
    memcpy(S->lab->data, c->labels, sizeof(int32_t) * (size_t)c->T);
    S->head = (ct_linear){S->w, S->a, S->b, 0.5f, c->p, 7, CT_F32};
}

static void xsetup_free(xsetup *S) {
    const ct_backend *be = ct_cpu_backend();
    ct_tensor_free(be, S->x);
    if (S->w == &S->wq)
        ct_quant_free(&S->qs);
    else
        ct_tensor_free(be, S->w);
    ct_tensor_free(be, S->a);
    ct_tensor_free(be, S->b);
    ct_tensor_free(be, S->lab);
    free(S->wf);
}

static void xref_init(const xcase *c, const xsetup *S, uint64_t mask_seed, float p, xref_t *R) {
    *R = (xref_t){c->T, c->D, c->V, c->r, c->lora, S->head.scale, 1.0 / (1.0 - (double)p),
                  c->norm, 1.0, NULL, NULL, NULL, NULL, NULL, NULL, c->labels};
    R->x = to_double(S->x->data, (int64_t)c->T * c->D);
    R->w = to_double(S->wf, (int64_t)c->V * c->D);
    R->a = c->lora ? to_double(S->a->data, (int64_t)c->r * c->D) : NULL;
    R->b = c->lora ? to_double(S->b->data, (int64_t)c->V * c->r) : NULL;
    R->keep = ct_test_keep_mask(mask_seed, (int64_t)c->T * c->D, p);
}

static void xref_free(xref_t *R) {
    free(R->x);
    free(R->w);
    free(R->a);
    free(R->b);
    free(R->keep);
}

/* Vocab tiles of tile_rows rows and logits blocks of chunk_rows tokens × one tile
 * (0 = the defaults, which hold these small cases whole). */
typedef struct {
    size_t chunk, tile, wtile;
} xsizes;

static xsizes set_sizes(const xcase *c) {
    int64_t vt = c->tile_rows > 0 && c->tile_rows < c->V ? c->tile_rows : c->V;
    xsizes prev;
    prev.chunk = ct_cpu_set_xent_chunk_bytes((size_t)c->chunk_rows * (size_t)vt * 4);
    prev.tile = ct_cpu_set_xent_tile_bytes((size_t)c->tile_rows * (size_t)c->D * 4);
    prev.wtile = ct_cpu_set_weight_tile_bytes((size_t)c->tile_rows * (size_t)c->D * 4);
    return prev;
}

static void restore_sizes(xsizes prev) {
    ct_cpu_set_xent_chunk_bytes(prev.chunk);
    ct_cpu_set_xent_tile_bytes(prev.tile);
    ct_cpu_set_weight_tile_bytes(prev.wtile);
}

static void run_case(const xcase *c) {
    xsizes prev = set_sizes(c);
    xsetup S;
    xsetup_init(c, 500 + (uint64_t)c->T + (uint64_t)c->wdt * 3, &S);
    ct_tape tp;
    ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
    tp.step_seed = 31;
    int64_t n_tr = -1;
    ct_tensor *loss = ct_linear_cross_entropy(&tp, S.x, &S.head, S.lab, c->norm, &n_tr);
    CHECK_PTR(loss);
    if (!loss) goto done;
    int want_n = 0;
    for (int t = 0; t < c->T; t++) want_n += c->labels[t] != IGN;
    CHECK(n_tr == want_n, "%s: n_trained %lld, want %d", c->name, (long long)n_tr, want_n);
    CHECK(loss->ndim == 1 && ct_numel(loss) == 1, "%s: loss shape", c->name);
    xref_t R;
    xref_init(c, &S, ct_mix64(31 ^ ct_mix64(7)), c->p, &R);
    double want = xref_loss(&R);
    char what[128];
    snprintf(what, sizeof what, "%s: loss", c->name);
    ct_check_close(what, loss->data, &want, 1, 1e-6, 1e-6);
    printf("%-30s loss %.6f  |err| %.2e\n", c->name, ((float *)loss->data)[0],
           fabs(((float *)loss->data)[0] - want));
    if (want_n == 0) CHECK(((float *)loss->data)[0] == 0.0f, "%s: loss of nothing trained must be 0", c->name);

    const float seed = 0.7f; /* d(total)/d(loss): the grads must scale with it */
    CHECK_OK(ct_backward(&tp, loss, seed));
    R.seed_scale = seed;
    struct { const char *n; ct_tensor *t; double *ref; int64_t len; } g[3] = {
        {"dx", S.x, R.x, (int64_t)c->T * c->D},
        {"dA", S.a, R.a, (int64_t)c->r * c->D},
        {"dB", S.b, R.b, (int64_t)c->V * c->r},
    };
    for (int k = 0; k < 3; k++) {
        if (!g[k].t) continue;
        if (k == 0 && !c->x_grad) {
            CHECK(S.x->grad == NULL, "%s: dx computed although x needs no grad", c->name);
            continue;
        }
        if ((k == 1 && c->a_frozen) || (k == 2 && c->b_frozen)) {
            CHECK(g[k].t->grad == NULL, "%s: %s computed for a frozen factor", c->name, g[k].n);
            continue;
        }
        double *fd = malloc(sizeof(double) * (size_t)g[k].len);
        ct_fd_grad(xref_loss, &R, g[k].ref, g[k].len, 1e-3, fd);
        snprintf(what, sizeof what, "%s: %s vs finite differences", c->name, g[k].n);
        CHECK(g[k].t->grad != NULL, "%s: no grad", what);
        if (g[k].t->grad) {
            ct_check_close(what, g[k].t->grad->data, fd, g[k].len, 2e-6, 1e-5);
            printf("%-30s %s max |err| %.2e\n", c->name, g[k].n, max_err(g[k].t->grad->data, fd, g[k].len));
        }
        free(fd);
    }
    xref_free(&R);
done:
    ct_tape_free(&tp);
    xsetup_free(&S);
    restore_sizes(prev);
}

static const int32_t lab7[7] = {3, IGN, 10, 0, IGN, 5, 5};
static const int32_t lab7_none[7] = {IGN, IGN, IGN, IGN, IGN, IGN, IGN};
static const int32_t lab9[9] = {1, 2, 3, 4, 0, 6, 7, 8, 10};

/* Labels outside [0, V) and not -100 are input errors naming the position. */
static void test_bad_labels(void) {
    const int32_t bad1[7] = {3, IGN, 10, 11, IGN, 5, 5}; /* V = 11 */
    const int32_t bad2[7] = {3, IGN, -5, 1, IGN, 5, 5};
    const int32_t *bads[2] = {bad1, bad2};
    const char *pos[2] = {"position 3", "position 2"};
    for (int k = 0; k < 2; k++) {
        xcase c = {"bad", 7, 13, 11, 3, CT_F32, 0.0f, false, true, 0.0f, 0, 0, bads[k], 0.0f, false, false};
        xsetup S;
        xsetup_init(&c, 1, &S);
        ct_tape tp;
        ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
        ct_error_clear();
        ct_tensor *loss = ct_linear_cross_entropy(&tp, S.x, &S.head, S.lab, 0.0f, NULL);
        CHECK(loss == NULL && strstr(ct_last_error(), pos[k]) != NULL,
              "bad label not reported with its position: %s", ct_last_error());
        CHECK(ct_last_status() == CT_EINPUT, "bad label: status %d, want CT_EINPUT", ct_last_status());
        /* The kernel checks too (backends are callable directly): CT_EINPUT. */
        double nll;
        int64_t n;
        CHECK(ct_cpu_backend()->linear_xent_fwd(S.x, &S.head, S.lab, 1.0f, &nll, &n, NULL, NULL,
                                                NULL, &tp.scratch) == CT_EINPUT,
              "kernel accepted a bad label");
        ct_tape_free(&tp);
        xsetup_free(&S);
    }
}

/* Eval: nothing recorded, no dropout even with head->dropout > 0. */
static void test_eval(void) {
    xcase c = {"eval", 7, 13, 11, 3, CT_F32, 0.4f, true, true, 0.0f, 0, 0, lab7, 0.0f, false, false};
    xsetup S;
    xsetup_init(&c, 2, &S);
    ct_tape tp;
    ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
    ct_tape_set_recording(&tp, false);
    ct_tensor *loss = ct_linear_cross_entropy(&tp, S.x, &S.head, S.lab, 0.0f, NULL);
    CHECK_PTR(loss);
    if (loss) {
        xref_t R;
        xref_init(&c, &S, 0, 0.0f, &R);
        double want = xref_loss(&R);
        ct_check_close("eval: loss without dropout", loss->data, &want, 1, 1e-6, 1e-6);
        CHECK(tp.n_entries == 0 && !loss->requires_grad, "eval: recorded");
        xref_free(&R);
    }
    ct_tape_free(&tp);
    xsetup_free(&S);
}

/* Two runs of a dropout + LoRA + tiled case give the same bits. */
static void test_repeat(void) {
    int32_t lab[40];
    for (int t = 0; t < 40; t++) lab[t] = t % 7 == 3 ? IGN : (t * 37) % 301;
    xcase c = {"repeat", 40, 48, 301, 4, CT_BF16, 0.3f, true, true, 0.0f, 6, 64, lab, 0.0f, false, false};
    xsizes prev = set_sizes(&c);
    float loss_v[2];
    float *grads[2][3];
    for (int k = 0; k < 2; k++) {
        xsetup S;
        xsetup_init(&c, 9, &S);
        ct_tape tp;
        ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
        tp.step_seed = 77;
        ct_tensor *loss = ct_linear_cross_entropy(&tp, S.x, &S.head, S.lab, 0.0f, NULL);
        CHECK_PTR(loss);
        loss_v[k] = loss ? ((float *)loss->data)[0] : NAN;
        if (loss) CHECK_OK(ct_backward(&tp, loss, 1.0f));
        ct_tensor *ts[3] = {S.x, S.a, S.b};
        for (int i = 0; i < 3; i++) {
            grads[k][i] = malloc(ct_nbytes(ts[i]));
            memcpy(grads[k][i], ts[i]->grad->data, ct_nbytes(ts[i]));
        }
        ct_tape_free(&tp);
        xsetup_free(&S);
    }
    size_t sz[3] = {40 * 48 * 4, 4 * 48 * 4, 301 * 4 * 4};
    CHECK(memcmp(&loss_v[0], &loss_v[1], 4) == 0, "repeat: loss %.9g vs %.9g", loss_v[0], loss_v[1]);
    for (int i = 0; i < 3; i++) {
        CHECK(memcmp(grads[0][i], grads[1][i], sz[i]) == 0, "repeat: grad %d differs", i);
        free(grads[0][i]);
        free(grads[1][i]);
    }
    restore_sizes(prev);
}

/* lora_linear → linear_cross_entropy through ct_backward, against the composed
 * double reference: h = x·W1ᵀ + s1·(drop(x)·A1ᵀ)·B1ᵀ, loss(h). */
typedef struct {
    xref_t head;    /* head.x is overwritten with h */
    int T, in;
    double *x, *w1, *a1, *b1; /* [T,in] [D,in] [r,in] [D,r] */
    bool *keep1;              /* [T,in] */
    double s1, ks1;
} chain_ref;

static double chain_loss(void *ctx) {
    chain_ref *C = ctx;
    int D = C->head.D, r = C->head.r;
    for (int t = 0; t < C->T; t++)
        for (int o = 0; o < D; o++) {
            double acc = 0.0;
            for (int i = 0; i < C->in; i++) acc += C->x[t * C->in + i] * C->w1[o * C->in + i];
            for (int k = 0; k < r; k++) {
                double u = 0.0;
                for (int i = 0; i < C->in; i++)
                    if (C->keep1[t * C->in + i]) u += C->x[t * C->in + i] * C->ks1 * C->a1[k * C->in + i];
                acc += C->s1 * u * C->b1[o * r + k];
            }
            C->head.x[t * D + o] = acc;
        }
    return xref_loss(&C->head);
}

static void test_chain(void) {
    const ct_backend *be = ct_cpu_backend();
    int T = 6, in = 10, D = 8, V = 9, r = 2;
    int32_t lab[6] = {4, IGN, 8, 0, 2, 2};
    ct_test_rng rng = {1234};
    int64_t xs[2] = {T, in}, w1s[2] = {D, in}, a1s[2] = {r, in}, b1s[2] = {D, r};
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, xs, false);
    ct_tensor *w1 = ct_tensor_new(be, CT_F32, 2, w1s, false);
    ct_tensor *a1 = ct_tensor_new(be, CT_F32, 2, a1s, true);
    ct_tensor *b1 = ct_tensor_new(be, CT_F32, 2, b1s, true);
    ct_test_fill(&rng, x->data, T * in, 1.0);
    ct_test_fill(&rng, w1->data, D * in, 0.4);
    ct_test_fill(&rng, a1->data, r * in, 0.4);
    ct_test_fill(&rng, b1->data, D * r, 0.4);
    ct_linear l1 = {w1, a1, b1, 0.8f, 0.25f, 3, CT_F32};
    /* The head: frozen f16 with a LoRA pair, through the same setup as the cases. */
    xcase hc = {"chain head", T, D, V, r, CT_F16, 0.0f, true, false, 0.0f, 0, 0, lab, 0.0f, false, false};
    xsetup S;
    xsetup_init(&hc, 77, &S);

    ct_tape tp;
    ct_tape_init(&tp, be, (size_t)1 << 20);
    tp.step_seed = 2024;
    ct_tensor *h = ct_lora_linear(&tp, x, &l1);
    ct_tensor *loss = h ? ct_linear_cross_entropy(&tp, h, &S.head, S.lab, 0.0f, NULL) : NULL;
    CHECK_PTR(loss);
    if (loss) {
        CHECK_OK(ct_backward(&tp, loss, 1.0f));
        chain_ref C;
        xref_init(&hc, &S, 0, 0.0f, &C.head);
        C.T = T;
        C.in = in;
        C.x = to_double(x->data, T * in);
        C.w1 = to_double(w1->data, D * in);
        C.a1 = to_double(a1->data, r * in);
        C.b1 = to_double(b1->data, D * r);
        C.s1 = l1.scale;
        C.ks1 = 1.0 / (1.0 - 0.25);
        C.keep1 = ct_test_keep_mask(ct_mix64(2024 ^ ct_mix64(3)), (int64_t)T * in, 0.25f);
        double want = chain_loss(&C);
        ct_check_close("chain: loss", loss->data, &want, 1, 1e-6, 1e-6);
        struct { const char *n; ct_tensor *t; double *ref; int len; } g[4] = {
            {"chain dA1", a1, C.a1, r * in}, {"chain dB1", b1, C.b1, D * r},
            {"chain dA2", S.a, C.head.a, r * D}, {"chain dB2", S.b, C.head.b, V * r}};
        for (int k = 0; k < 4; k++) {
            double *fd = malloc(sizeof(double) * (size_t)g[k].len);
            ct_fd_grad(chain_loss, &C, g[k].ref, g[k].len, 1e-3, fd);
            ct_check_close(g[k].n, g[k].t->grad->data, fd, g[k].len, 2e-6, 1e-5);
            printf("%-30s max |err| %.2e\n", g[k].n, max_err(g[k].t->grad->data, fd, g[k].len));
            free(fd);
        }
        CHECK(x->grad == NULL, "chain: x needs no grad but got one");
        free(C.x);
        free(C.w1);
        free(C.a1);
        free(C.b1);
        free(C.keep1);
        xref_free(&C.head);
    }
    ct_tape_free(&tp);
    xsetup_free(&S);
    ct_tensor_free(be, x);
    ct_tensor_free(be, w1);
    ct_tensor_free(be, a1);
    ct_tensor_free(be, b1);
}

/* InternLM2-7B's head, 92544 × 4096 in bf16: the loss of 2 tokens (1 trained)
 * and its dx vs double sums, with scratch bounded by the 32 MiB
 * logits block plus one 4 MiB weight tile, far below T×V or an f32 head copy. */
static void test_big_vocab(void) {
    const ct_backend *be = ct_cpu_backend();
    int64_t V = 92544, D = 4096, T = 2;
    int32_t lab[2] = {92543, IGN};
    int64_t ws[2] = {V, D}, xs[2] = {T, D};
    ct_tensor *w = ct_tensor_new(be, CT_BF16, 2, ws, false);
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, xs, true);
    ct_tensor *labels = ct_tensor_new(be, CT_I32, 1, &T, false);
    if (!w || !x || !labels) {
        CHECK(false, "big vocab: cannot allocate the head: %s", ct_last_error());
        goto out;
    }
    memcpy(labels->data, lab, sizeof lab);
    ct_test_rng rng = {5};
    ct_test_fill(&rng, x->data, T * D, 1.0);
    uint16_t *wb = w->data;
    for (int64_t i = 0; i < V * D; i++) /* cheap deterministic pattern in ±0.03 */
        wb[i] = ct_f32_to_bf16((float)((int64_t)(((uint64_t)i * 2654435761u) >> 7) % 2001 - 1000) * 3e-5f);
    ct_linear head = {w, NULL, NULL, 1.0f, 0.0f, 0, CT_F32};
    ct_tape tp;
    ct_tape_init(&tp, be, 0);
    ct_tensor *loss = ct_linear_cross_entropy(&tp, x, &head, labels, 0.0f, NULL);
    CHECK_PTR(loss);
    if (loss) {
        CHECK_OK(ct_backward(&tp, loss, 1.0f));
        const float *xf = x->data;
        double *l = malloc(sizeof(double) * (size_t)V);
        double sum = 0.0, dx0max = 0.0;
        for (int t = 0; t < T; t++) {
            if (lab[t] == IGN) continue;
            double mx = -INFINITY, se = 0.0;
            for (int64_t v = 0; v < V; v++) {
                double acc = 0.0;
                const uint16_t *wr = wb + (size_t)v * (size_t)D;
                for (int64_t i = 0; i < D; i++) acc += (double)xf[t * D + i] * ct_bf16_to_f32(wr[i]);
                l[v] = acc;
                mx = fmax(mx, acc);
            }
            for (int64_t v = 0; v < V; v++) se += exp(l[v] - mx);
            sum += mx + log(se) - l[lab[t]];
            if (t == 0) { /* dx_0 = (softmax - onehot)·W, checked on 64 columns */
                for (int64_t i = 0; i < D; i += 64) {
                    double g = 0.0;
                    for (int64_t v = 0; v < V; v++)
                        g += (exp(l[v] - mx) / se - (v == lab[0])) * ct_bf16_to_f32(wb[(size_t)v * D + i]);
                    double got = ((float *)x->grad->data)[i];
                    dx0max = fmax(dx0max, fabs(got - g));
                    CHECK(fabs(got - g) <= 1e-5 + 1e-3 * fabs(g), "big: dx[0,%lld] = %g want %g", (long long)i, got, g);
                }
            }
        }
        free(l);
        double want = sum;
        ct_check_close("big vocab: loss", loss->data, &want, 1, 1e-5, 1e-6);
        float *dx1 = (float *)x->grad->data + D; /* the ignored token: no gradient */
        bool zero = true;
        for (int64_t i = 0; i < D; i++) zero = zero && dx1[i] == 0.0f;
        CHECK(zero, "big vocab: the ignored token got a gradient");
        size_t bound = ((size_t)36 << 20) + ((size_t)1 << 20);
        CHECK(tp.scratch.peak <= bound, "big vocab: scratch peak %.1f MiB", tp.scratch.peak / 1048576.0);
        printf("big vocab 92544x4096 bf16: loss %.6f |err| %.2e, dx max |err| %.2e, scratch peak %.1f MiB "
               "(an f32 head would be %.0f MiB)\n",
               ((float *)loss->data)[0], fabs(((float *)loss->data)[0] - want), dx0max,
               tp.scratch.peak / 1048576.0, V * D * 4 / 1048576.0);
    }
    ct_tape_free(&tp);
out:
    ct_tensor_free(be, w);
    ct_tensor_free(be, x);
    ct_tensor_free(be, labels);
}

/* 300 tokens (200 trained) over a 92544 vocab: full logits would take 106 MiB;
 * the loss keeps scratch within the 32 MiB logits block (a hidden size of 8
 * makes the whole vocab one tile, so 3 token blocks of 90 rows, the last
 * partial) and still matches the double loss. */
static void test_bounded_chunk(void) {
    const ct_backend *be = ct_cpu_backend();
    int64_t V = 92544, D = 8, T = 300;
    int64_t ws[2] = {V, D}, xs[2] = {T, D};
    ct_tensor *w = ct_tensor_new(be, CT_F32, 2, ws, false);
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, xs, true);
    ct_tensor *labels = ct_tensor_new(be, CT_I32, 1, &T, false);
    int32_t *lab = labels->data;
    for (int64_t t = 0; t < T; t++) lab[t] = t % 3 == 1 ? IGN : (int32_t)((t * 7919) % V);
    ct_test_rng rng = {8};
    ct_test_fill(&rng, x->data, T * D, 1.0);
    ct_test_fill(&rng, w->data, V * D, 0.3);
    ct_linear head = {w, NULL, NULL, 1.0f, 0.0f, 0, CT_F32};
    ct_tape tp;
    ct_tape_init(&tp, be, 0);
    int64_t n = 0;
    ct_tensor *loss = ct_linear_cross_entropy(&tp, x, &head, labels, 0.0f, &n);
    CHECK_PTR(loss);
    if (loss) {
        CHECK_OK(ct_backward(&tp, loss, 1.0f));
        const float *xf = x->data, *wf = w->data;
        double *l = malloc(sizeof(double) * (size_t)V), sum = 0.0;
        for (int64_t t = 0; t < T; t++) {
            if (lab[t] == IGN) continue;
            double mx = -INFINITY, se = 0.0;
            for (int64_t v = 0; v < V; v++) {
                double acc = 0.0;
                for (int64_t i = 0; i < D; i++) acc += (double)xf[t * D + i] * wf[v * D + i];
                l[v] = acc;
                mx = fmax(mx, acc);
            }
            for (int64_t v = 0; v < V; v++) se += exp(l[v] - mx);
            sum += mx + log(se) - l[lab[t]];
        }
        free(l);
        double want = sum / 200.0;
        CHECK(n == 200, "bounded: n_trained %lld", (long long)n);
        ct_check_close("bounded: loss", loss->data, &want, 1, 1e-5, 1e-6);
        size_t bound = ((size_t)32 << 20) + ((size_t)1 << 20);
        CHECK(tp.scratch.peak <= bound, "bounded: scratch peak %.1f MiB", tp.scratch.peak / 1048576.0);
        printf("bounded chunk V=92544 T=300: loss |err| %.2e, scratch peak %.1f MiB (full logits %.1f MiB)\n",
               fabs(((float *)loss->data)[0] - want), tp.scratch.peak / 1048576.0,
               (double)T * V * 4 / 1048576.0);
    }
    ct_tape_free(&tp);
    ct_tensor_free(be, w);
    ct_tensor_free(be, x);
    ct_tensor_free(be, labels);
}


/* Loss (seed_scale·nll_sum/norm) and its analytic grads in double: dx [T,D],
 * dA [r,D], dB [V,r] (dA/dB only with LoRA). For shapes too big for finite
 * differences. dL = k·(softmax - onehot), k = seed_scale/norm. */
static double xref_grads(const xref_t *R, double *dx, double *da, double *db) {
    int T = R->T, D = R->D, V = R->V, r = R->r, n = 0;
    for (int t = 0; t < T; t++) n += R->lab[t] != IGN;
    memset(dx, 0, sizeof(double) * (size_t)T * (size_t)D);
    if (R->lora) {
        memset(da, 0, sizeof(double) * (size_t)r * (size_t)D);
        memset(db, 0, sizeof(double) * (size_t)V * (size_t)r);
    }
    if (n == 0) return 0.0;
    double k = R->seed_scale / (R->norm > 0 ? R->norm : (double)n), sum = 0.0;
    double *l = malloc(sizeof(double) * (size_t)V), *xd = malloc(sizeof(double) * (size_t)D);
    double u[64], g[64];
    for (int t = 0; t < T; t++) {
        int y = R->lab[t];
        if (y == IGN) continue;
        const double *xt = R->x + (size_t)t * D;
        const double *xbt = (R->xbase ? R->xbase : R->x) + (size_t)t * D;
        for (int i = 0; i < D; i++) xd[i] = R->keep[(size_t)t * D + i] ? xt[i] * R->keep_scale : 0.0;
        for (int q = 0; q < r && R->lora; q++) {
            u[q] = 0.0;
            for (int i = 0; i < D; i++) u[q] += xd[i] * R->a[(size_t)q * D + i];
            g[q] = 0.0;
        }
        double mx = -INFINITY, se = 0.0;
        for (int v = 0; v < V; v++) {
            double acc = 0.0;
            for (int i = 0; i < D; i++) acc += xbt[i] * R->w[(size_t)v * D + i];
            for (int q = 0; q < r && R->lora; q++) acc += R->s * u[q] * R->b[(size_t)v * r + q];
            l[v] = acc;
            mx = fmax(mx, acc);
        }
        for (int v = 0; v < V; v++) se += exp(l[v] - mx);
        sum += mx + log(se) - l[y];
        double *dxt = dx + (size_t)t * D;
        for (int v = 0; v < V; v++) {
            double dl = k * (exp(l[v] - mx) / se - (v == y));
            for (int i = 0; i < D; i++) dxt[i] += dl * R->w[(size_t)v * D + i];
            for (int q = 0; q < r && R->lora; q++) {
                g[q] += R->s * dl * R->b[(size_t)v * r + q];
                db[(size_t)v * r + q] += R->s * dl * u[q];
            }
        }
        for (int q = 0; q < r && R->lora; q++)
            for (int i = 0; i < D; i++) {
                da[(size_t)q * D + i] += g[q] * xd[i];
                if (R->keep[(size_t)t * D + i]) dxt[i] += g[q] * R->a[(size_t)q * D + i] * R->keep_scale;
            }
    }
    free(l);
    free(xd);
    return sum / (R->norm > 0 ? R->norm : (double)n);
}

/* 300 tokens (240 trained) × 2000 vocab × 64 hidden with a head LoRA (r = 8,
 * dropout): large enough for the parallel row loops, many tiles and a partial
 * last tile. Runs with the default sizes (one tile, all rows in one block)
 * twice — bit-identical — and with 64-row tiles and 7-row token blocks; each
 * against the analytic double grads. xscale > 1 gives logits of tens, so the
 * running max grows by a lot across tiles. */
static double bf16r(double v) { return ct_bf16_to_f32(ct_f32_to_bf16((float)v)); }

/* compute = CT_BF16: the head's GEMMs see x and W rounded to bf16 (the
 * reference rounds them too) and the softmax weights P rounded in dx's GEMM
 * (acc += bf16(P)·W), which the reference does not: dx is checked to bf16's
 * precision (4e-3 of its largest element); loss, dA, dB stay tight. */
static void test_medium(const char *name, ct_dtype wdt, float xscale, float p, ct_dtype compute) {
    enum { T = 300, D = 64, V = 2000, R_ = 8 };
    int32_t lab[T];
    for (int t = 0; t < T; t++) lab[t] = t % 5 == 2 ? IGN : (int32_t)((t * 7919) % V);
    xcase c = {name, T, D, V, R_, wdt, p, true, true, 0.0f, 0, 0, lab, xscale, false, false};
    xsetup S;
    xsetup_init(&c, 41, &S);
    S.head.compute = compute;
    xref_t R;
    xref_init(&c, &S, ct_mix64(31 ^ ct_mix64(7)), p, &R);
    if (compute == CT_BF16) {
        R.xbase = malloc(sizeof(double) * T * D);
        for (int64_t e = 0; e < (int64_t)T * D; e++) R.xbase[e] = bf16r(R.x[e]);
        for (int64_t e = 0; e < (int64_t)V * D; e++) R.w[e] = bf16r(R.w[e]);
    }
    const float seed = 0.7f;
    R.seed_scale = seed;
    double *ref[3] = {malloc(sizeof(double) * T * D), malloc(sizeof(double) * R_ * D),
                      malloc(sizeof(double) * V * R_)};
    double want = xref_grads(&R, ref[0], ref[1], ref[2]) ;
    int64_t len[3] = {(int64_t)T * D, (int64_t)R_ * D, (int64_t)V * R_};
    ct_tensor *ts[3] = {S.x, S.a, S.b};
    float *got[3][3] = {{NULL}};
    float loss_v[3] = {NAN, NAN, NAN};
    for (int run = 0; run < 3; run++) {
        xcase sz = c;
        sz.tile_rows = run == 2 ? 64 : 0;
        sz.chunk_rows = run == 2 ? 7 : 0;
        xsizes prev = set_sizes(&sz);
        for (int i = 0; i < 3; i++) memset(ts[i]->grad->data, 0, ct_nbytes(ts[i]->grad));
        ct_tape tp;
        ct_tape_init(&tp, ct_cpu_backend(), (size_t)1 << 20);
        tp.step_seed = 31;
        ct_tensor *loss = ct_linear_cross_entropy(&tp, S.x, &S.head, S.lab, 0.0f, NULL);
        CHECK_PTR(loss);
        if (loss) {
            loss_v[run] = ((float *)loss->data)[0];
            CHECK_OK(ct_backward(&tp, loss, seed));
        }
        char what[160];
        snprintf(what, sizeof what, "%s (%s): loss", name, run == 2 ? "tiled" : "defaults");
        ct_check_close(what, &loss_v[run], &want, 1, 1e-5, 2e-6);
        const char *gn[3] = {"dx", "dA", "dB"};
        for (int i = 0; i < 3; i++) {
            got[run][i] = malloc(ct_nbytes(ts[i]->grad));
            memcpy(got[run][i], ts[i]->grad->data, ct_nbytes(ts[i]->grad));
            double mx = 0.0;
            for (int64_t e = 0; e < len[i]; e++) mx = fmax(mx, fabs(ref[i][e]));
            snprintf(what, sizeof what, "%s (%s): %s vs analytic", name, run == 2 ? "tiled" : "defaults", gn[i]);
            ct_check_close(what, got[run][i], ref[i], len[i], (compute == CT_BF16 && i == 0 ? 4e-3 : 2e-5) * mx,
                           1e-4);
            if (run != 1)
                printf("%-30s %s %s max |err| %.2e (max |g| %.2e)\n", name, run == 2 ? "tiled" : "one tile",
                       gn[i], max_err(got[run][i], ref[i], len[i]), mx);
        }
        ct_tape_free(&tp);
        restore_sizes(prev);
    }
    CHECK(memcmp(&loss_v[0], &loss_v[1], sizeof(float)) == 0, "%s: rerun loss %.9g vs %.9g", name,
          loss_v[0], loss_v[1]);
    for (int i = 0; i < 3; i++) {
        CHECK(memcmp(got[0][i], got[1][i], sizeof(float) * (size_t)len[i]) == 0, "%s: rerun grad %d differs",
              name, i);
        for (int run = 0; run < 3; run++) free(got[run][i]);
        free(ref[i]);
    }
    printf("%-30s loss %.6f |err| %.2e (tiled |err| %.2e)\n", name, loss_v[0], fabs(loss_v[0] - want),
           fabs(loss_v[2] - want));
    free(R.xbase);
    xref_free(&R);
    xsetup_free(&S);
}

int main(void) {
    const xcase cases[] = {
        {"f32 chunks of 3", 7, 13, 11, 3, CT_F32, 0.0f, false, true, 0.0f, 3, 0, lab7, 0.0f, false, false},
        {"f32 chunk 1 norm=4", 7, 13, 11, 3, CT_F32, 0.0f, false, true, 4.0f, 1, 0, lab7, 0.0f, false, false},
        {"bf16 lora tiles", 7, 13, 11, 3, CT_BF16, 0.0f, true, true, 0.0f, 3, 4, lab7, 0.0f, false, false},
        {"bf16 lora p=0.3 norm=5", 7, 13, 11, 3, CT_BF16, 0.3f, true, true, 5.0f, 2, 4, lab7, 0.0f, false, false},
        {"f16 lora p=0.3 no dx", 7, 13, 11, 3, CT_F16, 0.3f, true, false, 0.0f, 4, 1, lab7, 0.0f, false, false},
        {"f32 lora one chunk", 9, 13, 11, 3, CT_F32, 0.0f, true, true, 0.0f, 0, 0, lab9, 0.0f, false, false},
        {"all ignored", 7, 13, 11, 3, CT_BF16, 0.3f, true, true, 0.0f, 3, 4, lab7_none, 0.0f, false, false},
        {"all ignored norm=3", 7, 13, 11, 3, CT_F32, 0.0f, true, true, 3.0f, 3, 0, lab7_none, 0.0f, false, false},
        {"nf4 tiles of 3 chunks of 2", 7, 13, 11, 3, CT_NF4, 0.0f, false, true, 0.0f, 2, 3, lab7, 0.0f, false, false},
        {"nf4 lora p=0.3 tiles", 9, 13, 11, 3, CT_NF4, 0.3f, true, true, 0.0f, 4, 4, lab9, 0.0f, false, false},
        {"bf16 lora large logits", 9, 13, 11, 3, CT_BF16, 0.0f, true, true, 0.0f, 2, 2, lab9, 6.0f, false, false},
        {"f32 lora A frozen p=0.2", 7, 13, 11, 3, CT_F32, 0.2f, true, true, 0.0f, 3, 4, lab7, 0.0f, true, false},
        {"bf16 lora B frozen no dx", 7, 13, 11, 3, CT_BF16, 0.2f, true, false, 0.0f, 3, 4, lab7, 0.0f, false, true},
        {"f16 lora only dB", 9, 13, 11, 3, CT_F16, 0.2f, true, false, 0.0f, 2, 3, lab9, 0.0f, true, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
    test_bad_labels();
    test_eval();
    test_repeat();
    test_chain();
    test_medium("medium bf16 lora p=0.2", CT_BF16, 1.0f, 0.2f, CT_F32);
    test_medium("medium f32 large logits", CT_F32, 5.0f, 0.0f, CT_F32);
    test_medium("medium bf16 compute p=0.2", CT_BF16, 1.0f, 0.2f, CT_BF16);
    test_medium("medium f32 head bf16 compute", CT_F32, 5.0f, 0.0f, CT_BF16);
    test_medium("medium nf4 head bf16 compute", CT_NF4, 1.0f, 0.2f, CT_BF16);
    test_bounded_chunk();
    test_big_vocab();
    return ct_test_finish();
}
