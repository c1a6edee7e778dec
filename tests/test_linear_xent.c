/* linear_cross_entropy (CPU): the loss vs a double-precision loop reference and
 * every grad (dx, head dA, dB) vs central differences of it, through the tape
 * (ct_backward with a seed != 1), for f32/bf16/f16 heads, head LoRA with and
 * without dropout, x without grad, ignored labels, chunk boundaries (T not a
 * multiple of the chunk), several weight tiles, norm > 0, all labels ignored,
 * bad labels, eval mode, bit-identical reruns, a lora_linear → loss chain, and
 * a 92544 × 4096 bf16 head within bounded scratch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu_kernels.h"
#include "autograd/ct_inline.h"
#include "autograd/ops.h"
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
} xcase;

/* Double reference of the head + loss. */
typedef struct {
    int T, D, V, r;
    bool lora;
    double s, keep_scale, norm, seed_scale;
    double *x, *w, *a, *b;  /* [T,D] [V,D] [r,D] [V,r] */
    unsigned char *keep;    /* [T,D] */
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
} xsetup;

static void xsetup_init(const xcase *c, uint64_t seed, xsetup *S) {
    const ct_backend *be = ct_cpu_backend();
    ct_test_rng rng = {seed};
    int64_t xs[2] = {c->T, c->D}, ws[2] = {c->V, c->D}, as[2] = {c->r, c->D}, bs[2] = {c->V, c->r};
    int64_t T = c->T;
    S->x = ct_tensor_new(be, CT_F32, 2, xs, c->x_grad);
    ct_test_fill(&rng, S->x->data, (int64_t)c->T * c->D, 1.0);
    int64_t nw = (int64_t)c->V * c->D;
    S->wf = malloc(sizeof(float) * (size_t)nw);
    ct_test_fill(&rng, S->wf, nw, 0.6);
    S->w = ct_tensor_new(be, c->wdt, 2, ws, false);
    S->w->name = "output.weight";
    ct_convert(S->w->data, c->wdt, S->wf, CT_F32, nw);
    ct_convert(S->wf, CT_F32, S->w->data, c->wdt, nw);
    S->a = S->b = NULL;
    if (c->lora) {
        S->a = ct_tensor_new(be, CT_F32, 2, as, true);
        S->b = ct_tensor_new(be, CT_F32, 2, bs, true);
        ct_test_fill(&rng, S->a->data, (int64_t)c->r * c->D, 0.5);
        ct_test_fill(&rng, S->b->data, (int64_t)c->V * c->r, 0.5);
    }
    S->lab = ct_tensor_new(be, CT_I32, 1, &T, false);
    memcpy(S->lab->data, c->labels, sizeof(int32_t) * (size_t)c->T);
    S->head = (ct_linear){S->w, S->a, S->b, 0.5f, c->p, 7};
}

static void xsetup_free(xsetup *S) {
    const ct_backend *be = ct_cpu_backend();
    ct_tensor_free(be, S->x);
    ct_tensor_free(be, S->w);
    ct_tensor_free(be, S->a);
    ct_tensor_free(be, S->b);
    ct_tensor_free(be, S->lab);
    free(S->wf);
}

static void xref_init(const xcase *c, const xsetup *S, uint64_t mask_seed, float p, xref_t *R) {
    *R = (xref_t){c->T, c->D, c->V, c->r, c->lora, S->head.scale, 1.0 / (1.0 - (double)p),
                  c->norm, 1.0, NULL, NULL, NULL, NULL, NULL, c->labels};
    R->x = to_double(S->x->data, (int64_t)c->T * c->D);
    R->w = to_double(S->wf, (int64_t)c->V * c->D);
    R->a = c->lora ? to_double(S->a->data, (int64_t)c->r * c->D) : NULL;
    R->b = c->lora ? to_double(S->b->data, (int64_t)c->V * c->r) : NULL;
    R->keep = malloc((size_t)c->T * (size_t)c->D);
    for (int64_t i = 0; i < (int64_t)c->T * c->D; i++)
        R->keep[i] = !(ct_uniform(mask_seed, (uint64_t)i) < p);
}

static void xref_free(xref_t *R) {
    free(R->x);
    free(R->w);
    free(R->a);
    free(R->b);
    free(R->keep);
}

static void set_sizes(const xcase *c, size_t *prev_chunk, size_t *prev_tile) {
    *prev_chunk = ct_cpu_set_xent_chunk_bytes((size_t)c->chunk_rows * (size_t)c->V * 4);
    *prev_tile = ct_cpu_set_weight_tile_bytes((size_t)c->tile_rows * (size_t)c->D * 4);
}

static void run_case(const xcase *c) {
    size_t pc, pt;
    set_sizes(c, &pc, &pt);
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
    ct_cpu_set_xent_chunk_bytes(pc);
    ct_cpu_set_weight_tile_bytes(pt);
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
        xcase c = {"bad", 7, 13, 11, 3, CT_F32, 0.0f, false, true, 0.0f, 0, 0, bads[k]};
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
    xcase c = {"eval", 7, 13, 11, 3, CT_F32, 0.4f, true, true, 0.0f, 0, 0, lab7};
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
    xcase c = {"repeat", 40, 48, 301, 4, CT_BF16, 0.3f, true, true, 0.0f, 6, 64, lab};
    size_t pc, pt;
    set_sizes(&c, &pc, &pt);
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
    ct_cpu_set_xent_chunk_bytes(pc);
    ct_cpu_set_weight_tile_bytes(pt);
}

/* lora_linear → linear_cross_entropy through ct_backward, against the composed
 * double reference: h = x·W1ᵀ + s1·(drop(x)·A1ᵀ)·B1ᵀ, loss(h). */
typedef struct {
    xref_t head;    /* head.x is overwritten with h */
    int T, in;
    double *x, *w1, *a1, *b1; /* [T,in] [D,in] [r,in] [D,r] */
    unsigned char *keep1;     /* [T,in] */
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
    ct_linear l1 = {w1, a1, b1, 0.8f, 0.25f, 3};
    /* The head: frozen f16 with a LoRA pair, through the same setup as the cases. */
    xcase hc = {"chain head", T, D, V, r, CT_F16, 0.0f, true, false, 0.0f, 0, 0, lab};
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
        C.keep1 = malloc((size_t)(T * in));
        uint64_t ms = ct_mix64(2024 ^ ct_mix64(3));
        for (int i = 0; i < T * in; i++) C.keep1[i] = !(ct_uniform(ms, (uint64_t)i) < 0.25f);
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
 * logits chunk plus one 4 MiB weight tile, far below T×V or an f32 head copy. */
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
    ct_linear head = {w, NULL, NULL, 1.0f, 0.0f, 0};
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
 * the chunked loss keeps scratch within the 32 MiB chunk (3 chunks, the last
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
    ct_linear head = {w, NULL, NULL, 1.0f, 0.0f, 0};
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

int main(void) {
    const xcase cases[] = {
        {"f32 chunks of 3", 7, 13, 11, 3, CT_F32, 0.0f, false, true, 0.0f, 3, 0, lab7},
        {"f32 chunk 1 norm=4", 7, 13, 11, 3, CT_F32, 0.0f, false, true, 4.0f, 1, 0, lab7},
        {"bf16 lora tiles", 7, 13, 11, 3, CT_BF16, 0.0f, true, true, 0.0f, 3, 4, lab7},
        {"bf16 lora p=0.3 norm=5", 7, 13, 11, 3, CT_BF16, 0.3f, true, true, 5.0f, 2, 4, lab7},
        {"f16 lora p=0.3 no dx", 7, 13, 11, 3, CT_F16, 0.3f, true, false, 0.0f, 4, 1, lab7},
        {"f32 lora one chunk", 9, 13, 11, 3, CT_F32, 0.0f, true, true, 0.0f, 0, 0, lab9},
        {"all ignored", 7, 13, 11, 3, CT_BF16, 0.3f, true, true, 0.0f, 3, 4, lab7_none},
        {"all ignored norm=3", 7, 13, 11, 3, CT_F32, 0.0f, true, true, 3.0f, 3, 0, lab7_none},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
    test_bad_labels();
    test_eval();
    test_repeat();
    test_chain();
    test_bounded_chunk();
    test_big_vocab();
    return ct_test_finish();
}
