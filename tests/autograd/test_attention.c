/* attention: the blockwise CPU kernels and the op against a naive double
 * reference (full score matrix, causal + segment mask, softmax). Forward and
 * lse vs the reference; dqkv (accumulated onto existing values) vs central
 * differences of the reference loss Σ r ⊙ out; GQA G=1/2/3, odd T, a single
 * token, packed samples, batch rows, T spanning several 64-blocks; the tape
 * path, also inside a checkpointed segment; bit-identical repeats; errors for
 * bad shapes and non-contiguous ids.
 * bf16 math (compute = CT_BF16): out, lse and dqkv vs a double reference on
 * bf16-rounded operands within first-order bounds of the kernels' remaining
 * roundings, dqkv vs the fp32 kernels, the AVX512-BF16 path vs the fallback,
 * repeats bit for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cpu/cpu_kernels.h"
#include "autograd/cpu/gemm_bf16.h" /* ct_cpu_bf16_dot_supported, ct_bf16_force_fallback */
#include "autograd/ct_inline.h"     /* ct_f32_to_bf16, ct_bf16_to_f32 */
#include "autograd/ops.h"
#include "ref_internlm2.h" /* ct_test_dot_loss: Σ r ⊙ y, to drive ct_backward through ct_attention */
#include "testutil.h"

/* ---- naive reference (double) ---- */

typedef struct {
    int64_t T;
    int Hkv, G, hd;
    double scale;
    const int32_t *seg; /* NULL = one sequence */
} ref_dims;

static int64_t ref_cols(const ref_dims *d) { return (int64_t)d->Hkv * (d->G + 2) * d->hd; }

/* Rows [i_lo, i_hi) of out [T, Hq*hd] (and lse [Hq, T] when non-NULL);
 * s is a (T) score buffer. Key j is visible to i iff j <= i, same seg id. */
static void ref_attn_rows(const ref_dims *d, const double *qkv, int64_t i_lo, int64_t i_hi,
                          double *out, double *lse, double *s) {
    const int64_t C = ref_cols(d), Hq = (int64_t)d->Hkv * d->G, hd = d->hd;
    for (int64_t h = 0; h < Hq; h++) {
        int64_t g = h / d->G;
        int64_t qc = (g * (d->G + 2) + h % d->G) * hd, kc = (g * (d->G + 2) + d->G) * hd, vc = kc + hd;
        for (int64_t i = i_lo; i < i_hi; i++) {
            double mx = -INFINITY;
            for (int64_t j = 0; j <= i; j++) {
                s[j] = -INFINITY;
                if (d->seg && d->seg[j] != d->seg[i]) continue;
                double dot = 0.0;
                for (int64_t e = 0; e < hd; e++) dot += qkv[i * C + qc + e] * qkv[j * C + kc + e];
                s[j] = d->scale * dot;
                if (s[j] > mx) mx = s[j];
            }
            double sum = 0.0;
            for (int64_t j = 0; j <= i; j++) sum += (s[j] = exp(s[j] - mx));
            double *o = out + i * Hq * hd + h * hd;
            for (int64_t e = 0; e < hd; e++) o[e] = 0.0;
            for (int64_t j = 0; j <= i; j++)
                for (int64_t e = 0; e < hd; e++) o[e] += s[j] / sum * qkv[j * C + vc + e];
            if (lse) lse[h * d->T + i] = mx + log(sum);
        }
    }
}

typedef struct {
    const ref_dims *d;
    double *qkv, *out, *s;
    const double *r; /* (T, Hq*hd) */
} fd_ctx;

/* Σ r ⊙ out over rows [i_lo, T): a change at token t reaches only rows >= t. */
static double ref_loss_from(fd_ctx *c, int64_t i_lo, int64_t i_hi) {
    int64_t w = (int64_t)c->d->Hkv * c->d->G * c->d->hd;
    ref_attn_rows(c->d, c->qkv, i_lo, i_hi, c->out, NULL, c->s);
    double l = 0.0;
    for (int64_t i = i_lo * w; i < i_hi * w; i++) l += c->r[i] * c->out[i];
    return l;
}

/* dL/dqkv[idx] by central differences, recomputing only the rows it reaches
 * (a query column: its own row; a key or value column: rows t..T-1). */
static double fd_at(fd_ctx *c, int64_t idx, double h) {
    const ref_dims *d = c->d;
    int64_t C = ref_cols(d), t = idx / C, col = idx % C;
    bool is_q = (col / d->hd) % (d->G + 2) < d->G;
    int64_t hi = is_q ? t + 1 : d->T;
    double keep = c->qkv[idx];
    c->qkv[idx] = keep + h;
    double fp = ref_loss_from(c, t, hi);
    c->qkv[idx] = keep - h;
    double fm = ref_loss_from(c, t, hi);
    c->qkv[idx] = keep;
    return (fp - fm) / (2.0 * h);
}

/* ---- one configuration through the kernels ---- */

typedef struct {
    const char *name;
    int64_t T;
    int Hkv, G, hd;
    float scale;       /* 0: 1/sqrt(hd) */
    const int *seg_len; /* sample lengths summing to T, 0-terminated; NULL = one sequence */
    int n_fd;          /* 0: every coordinate; else this many sampled ones */
} attn_case;

/* The run boundaries the kernels take for per-token sample ids (a heap
 * tensor; NULL for NULL ids). */
static ct_tensor *runs_tensor(const ct_backend *be, const int32_t *ids, int64_t T) {
    if (!ids) return NULL;
    int32_t *r = ct_test_need(malloc((size_t)(T + 1) * sizeof *r));
    int64_t n = 0;
    CHECK_OK(ct_segment_runs(ids, T, r, &n));
    int64_t len = n + 1;
    ct_tensor *t = ct_tensor_new(be, CT_I32, 1, &len, false);
    memcpy(t->data, r, (size_t)len * sizeof *r);
    free(r);
    return t;
}

static void run_case(const attn_case *ac, ct_test_rng *rng) {
    const ct_backend *be = ct_cpu_backend();
    ct_arena scratch;
    ct_arena_init(&scratch, be->mem, 1 << 20);
    ct_attn_params p = {ac->Hkv, ac->G, ac->hd, ac->scale ? ac->scale : 1.0f / sqrtf((float)ac->hd), CT_F32};
    const int64_t T = ac->T, C = (int64_t)ac->Hkv * (ac->G + 2) * ac->hd,
                  Hq = (int64_t)ac->Hkv * ac->G, W = Hq * ac->hd;
    int64_t sq[2] = {T, C}, so[2] = {T, W}, sl[2] = {Hq, T};
    ct_tensor *qkv = ct_tensor_new(be, CT_F32, 2, sq, false);
    ct_tensor *dqkv = ct_tensor_new(be, CT_F32, 2, sq, false);
    ct_tensor *dqkv2 = ct_tensor_new(be, CT_F32, 2, sq, false);
    ct_tensor *out = ct_tensor_new(be, CT_F32, 2, so, false);
    ct_tensor *out2 = ct_tensor_new(be, CT_F32, 2, so, false);
    ct_tensor *dout = ct_tensor_new(be, CT_F32, 2, so, false);
    ct_tensor *lse = ct_tensor_new(be, CT_F32, 2, sl, false);
    ct_tensor *lse2 = ct_tensor_new(be, CT_F32, 2, sl, false);
    ct_tensor *seg = NULL;
    int32_t *ids = NULL;
    if (ac->seg_len) {
        seg = ct_tensor_new(be, CT_I32, 1, &T, false);
        ids = seg->data;
        int64_t t = 0;
        for (int k = 0; ac->seg_len[k]; k++)
            for (int n = 0; n < ac->seg_len[k]; n++) ids[t++] = 1000 - 7 * k; /* decreasing ids */
        CHECK(t == T, "%s: sample lengths sum to %lld, not T", ac->name, (long long)t);
    }
    ct_tensor *runs = runs_tensor(be, ids, T);
    ref_dims d = {T, ac->Hkv, ac->G, ac->hd, p.scale, ids};
    double *xd = malloc((size_t)(T * C) * sizeof *xd), *od = malloc((size_t)(T * W) * sizeof *od);
    double *ld = malloc((size_t)(Hq * T) * sizeof *ld), *s = malloc((size_t)T * sizeof *s);
    double *rd = malloc((size_t)(T * W) * sizeof *rd), *want = malloc((size_t)(T * C) * sizeof *want);
    float *pre = malloc((size_t)(T * C) * sizeof *pre);
    ct_test_fill(rng, qkv->data, T * C, 1.0);
    ct_test_fill(rng, dout->data, T * W, 1.0);
    ct_test_fill(rng, pre, T * C, 1.0);
    for (int64_t i = 0; i < T * C; i++) xd[i] = ((float *)qkv->data)[i];
    for (int64_t i = 0; i < T * W; i++) rd[i] = ((float *)dout->data)[i];

    char what[160];
    CHECK_OK(ct_cpu_attention_fwd(qkv, runs, &p, out, lse, &scratch));
    ref_attn_rows(&d, xd, 0, T, od, ld, s);
    snprintf(what, sizeof what, "%s: out", ac->name);
    ct_check_close(what, out->data, od, T * W, 2e-6, 1e-5);
    snprintf(what, sizeof what, "%s: lse", ac->name);
    ct_check_close(what, lse->data, ld, Hq * T, 2e-6, 1e-6);

    /* backward with dO = r, accumulated onto `pre` */
    memcpy(dqkv->data, pre, (size_t)(T * C) * sizeof(float));
    CHECK_OK(ct_cpu_attention_bwd(qkv, runs, &p, out, lse, dout, dqkv, &scratch));
    CHECK(scratch.used == 0, "%s: the kernels left %zu bytes of scratch in use", ac->name, scratch.used);
    fd_ctx c = {&d, xd, od, s, rd};
    const float *g = dqkv->data;
    if (ac->n_fd == 0) {
        for (int64_t i = 0; i < T * C; i++) want[i] = pre[i] + fd_at(&c, i, 1e-4);
        snprintf(what, sizeof what, "%s: dqkv vs finite differences", ac->name);
        ct_check_close(what, g, want, T * C, 1e-5, 1e-4);
    } else {
        float got[1024];
        int n = ac->n_fd < 1024 ? ac->n_fd : 1024;
        for (int k = 0; k < n; k++) {
            int64_t i = (int64_t)(ct_test_uniform(rng) * (double)(T * C));
            want[k] = pre[i] + fd_at(&c, i, 1e-4);
            got[k] = g[i];
        }
        snprintf(what, sizeof what, "%s: dqkv vs finite differences (%d sampled)", ac->name, n);
        ct_check_close(what, got, want, n, 1e-5, 1e-4);
    }

    /* the same bits on a second run */
    CHECK_OK(ct_cpu_attention_fwd(qkv, runs, &p, out2, lse2, &scratch));
    CHECK(memcmp(out->data, out2->data, ct_nbytes(out)) == 0 &&
              memcmp(lse->data, lse2->data, ct_nbytes(lse)) == 0,
          "%s: forward not repeatable", ac->name);
    memcpy(dqkv2->data, pre, (size_t)(T * C) * sizeof(float));
    CHECK_OK(ct_cpu_attention_bwd(qkv, runs, &p, out, lse, dout, dqkv2, &scratch));
    CHECK(memcmp(dqkv->data, dqkv2->data, ct_nbytes(dqkv)) == 0, "%s: backward not repeatable", ac->name);

    ct_tensor *ts[] = {qkv, dqkv, dqkv2, out, out2, dout, lse, lse2, seg, runs};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ct_tensor_free(be, ts[i]);
    free(xd), free(od), free(ld), free(s), free(rd), free(want), free(pre);
    ct_arena_free(&scratch);
}

static void test_cases(void) {
    ct_test_rng rng = {1234};
    static const int packed[] = {5, 8, 7, 0}, rows[] = {5, 5, 5, 0}, across[] = {70, 50, 30, 0},
                     shortruns[] = {1, 2, 61, 3, 64, 1, 68, 0};
    attn_case cases[] = {
        {"GQA G=2 T=7 hd8", 7, 2, 2, 8, 0, NULL, 0},
        {"one KV head G=3 T=13 hd16", 13, 1, 3, 16, 0, NULL, 0},
        {"G=1 T=9 hd12 scale 0.3", 9, 3, 1, 12, 0.3f, NULL, 0},
        {"single token", 1, 2, 2, 8, 0, NULL, 0},
        {"packed samples 5+8+7", 20, 2, 2, 8, 0, packed, 0},
        {"batch of 3 rows of 5", 15, 1, 2, 16, 0, rows, 0},
        {"T=150 blocks, one sequence", 150, 2, 2, 16, 0, NULL, 150},
        {"T=150 samples across blocks", 150, 2, 2, 16, 0, across, 200},
        {"T=200 G=3 short and long samples", 200, 1, 3, 8, 0, shortruns, 200},
        {"T=130 hd128 G=2", 130, 1, 2, 128, 0, NULL, 60},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(&cases[i], &rng);
}

/* Through the op and the tape: the recorded backward gives exactly what the
 * kernels give, and matches the reference. */
static void test_tape(void) {
    const ct_backend *be = ct_cpu_backend();
    ct_test_rng rng = {99};
    ct_attn_params p = {2, 2, 16, 0.25f, CT_F32};
    const int64_t T = 90, C = 2 * 4 * 16, W = 4 * 16;
    int64_t sq[2] = {T, C};
    ct_tensor *qkv = ct_tensor_new(be, CT_F32, 2, sq, true);
    ct_tensor *seg = ct_tensor_new(be, CT_I32, 1, &T, false);
    int32_t *ids = seg->data;
    for (int64_t t = 0; t < T; t++) ids[t] = t < 40 ? 0 : t < 75 ? 1 : 2;
    ct_tensor *runs = runs_tensor(be, ids, T);
    float *r = malloc((size_t)(T * W) * sizeof *r);
    ct_test_fill(&rng, qkv->data, T * C, 1.0);
    ct_test_fill(&rng, r, T * W, 1.0);

    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 20));
    ct_tensor *out = ct_attention(&tape, qkv, runs, &p);
    CHECK_PTR(out);
    ct_tensor *loss = out ? ct_test_dot_loss(&tape, out, r) : NULL;
    CHECK_PTR(loss);
    if (loss) {
        CHECK(out->ndim == 2 && out->shape[0] == T && out->shape[1] == W, "out shape");
        CHECK_OK(ct_backward(&tape, loss, 1.0f));
        CHECK(tape.scratch.used == 0, "scratch left in use: %zu bytes", tape.scratch.used);
        ref_dims d = {T, 2, 2, 16, 0.25, ids};
        double *xd = malloc((size_t)(T * C) * sizeof *xd), *od = malloc((size_t)(T * W) * sizeof *od);
        double *s = malloc((size_t)T * sizeof *s), *rd = malloc((size_t)(T * W) * sizeof *rd);
        for (int64_t i = 0; i < T * C; i++) xd[i] = ((float *)qkv->data)[i];
        for (int64_t i = 0; i < T * W; i++) rd[i] = r[i];
        ref_attn_rows(&d, xd, 0, T, od, NULL, s);
        ct_check_close("tape: out", out->data, od, T * W, 2e-6, 1e-5);
        fd_ctx c = {&d, xd, od, s, rd};
        double want[200];
        float got[200];
        for (int k = 0; k < 200; k++) {
            int64_t i = (int64_t)(ct_test_uniform(&rng) * (double)(T * C));
            want[k] = fd_at(&c, i, 1e-4);
            got[k] = ((float *)qkv->grad->data)[i];
        }
        ct_check_close("tape: qkv grad vs finite differences (200 sampled)", got, want, 200, 1e-5, 1e-4);
        free(xd), free(od), free(s), free(rd);
    }
    ct_tape_free(&tape);
    ct_tensor_free(be, qkv);
    ct_tensor_free(be, seg);
    ct_tensor_free(be, runs);
    free(r);
}

/* rope then attention inside a checkpointed segment: the recompute puts the
 * activations in the tape's scratch arena, which the kernels also use for
 * their temporaries. Grads must equal the plain run's bit for bit (fp32 and
 * bf16 math). */
typedef struct {
    ct_tensor *pos, *runs;
    ct_rope_params rp;
    ct_attn_params ap;
} seg_ctx;

static int rope_attention(ct_tape *t, void *vc, ct_tensor *in, ct_tensor **out) {
    seg_ctx *c = vc;
    ct_tensor *r = ct_rope(t, in, c->pos, &c->rp);
    *out = r ? ct_attention(t, r, c->runs, &c->ap) : NULL;
    return *out ? CT_OK : CT_ERUNTIME;
}

static void test_checkpoint(ct_dtype compute) {
    const ct_backend *be = ct_cpu_backend();
    ct_test_rng rng = {5};
    const int64_t T = 70, C = 2 * 5 * 16, W = 2 * 3 * 16;
    int64_t sq[2] = {T, C};
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, sq, true);
    ct_tensor *pos = ct_tensor_new(be, CT_I32, 1, &T, false);
    ct_tensor *seg = ct_tensor_new(be, CT_I32, 1, &T, false);
    for (int64_t i = 0; i < T; i++) {
        ((int32_t *)seg->data)[i] = i < 33 ? 0 : 1;
        ((int32_t *)pos->data)[i] = (int32_t)(i < 33 ? i : i - 33);
    }
    ct_tensor *runs = runs_tensor(be, seg->data, T);
    float *r = malloc((size_t)(T * W) * sizeof *r), *g0 = malloc((size_t)(T * C) * sizeof *g0);
    ct_test_fill(&rng, x->data, T * C, 1.0);
    ct_test_fill(&rng, r, T * W, 1.0);
    seg_ctx c = {pos, runs, {.head_dim = 16, .group = 5, .rotate_per_group = 4, .theta = 1e6},
                 {2, 3, 16, 0.25f, compute}};
    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 20));
    for (int pass = 0; pass < 2; pass++) {
        ct_tape_reset(&tape);
        memset(x->grad->data, 0, ct_nbytes(x->grad));
        ct_tensor *y = NULL;
        int rc = pass == 0 ? rope_attention(&tape, &c, x, &y)
                           : ct_checkpoint(&tape, rope_attention, &c, x, &y);
        CHECK_OK(rc);
        ct_tensor *loss = rc ? NULL : ct_test_dot_loss(&tape, y, r);
        CHECK_PTR(loss);
        if (!loss) break;
        CHECK_OK(ct_backward(&tape, loss, 1.0f));
        if (pass == 0) {
            memcpy(g0, x->grad->data, ct_nbytes(x->grad));
            double nrm = 0.0;
            for (int64_t i = 0; i < T * C; i++) nrm += fabs(g0[i]);
            CHECK(nrm > 1.0, "checkpoint test: no gradient reached x (|g|_1 = %g)", nrm);
        } else {
            CHECK(memcmp(g0, x->grad->data, ct_nbytes(x->grad)) == 0,
                  "checkpointed rope+attention grads differ from the plain run (%s math)",
                  ct_dtype_name(compute));
        }
    }
    ct_tape_free(&tape);
    ct_tensor_free(be, x);
    ct_tensor_free(be, pos);
    ct_tensor_free(be, seg);
    ct_tensor_free(be, runs);
    free(r), free(g0);
}

static void expect_error(ct_tape *t, ct_tensor *qkv, ct_tensor *runs, ct_attn_params p,
                         const char *needle) {
    ct_error_clear();
    ct_tensor *y = ct_attention(t, qkv, runs, &p);
    CHECK(y == NULL && strstr(ct_last_error(), needle) != NULL,
          "expected an error mentioning '%s', got '%s'", needle, ct_last_error());
}

static void test_errors(void) {
    const ct_backend *be = ct_cpu_backend();
    int64_t sq[2] = {5, 32}, T = 5, seven = 7;
    ct_tensor *qkv = ct_tensor_new(be, CT_F32, 2, sq, false); /* 1 kv head × (2+2) × 8 */
    ct_tensor *runs7 = ct_tensor_new(be, CT_I32, 1, &seven, false); /* more boundaries than T + 1 */
    memset(qkv->data, 0, ct_nbytes(qkv));
    memset(runs7->data, 0, ct_nbytes(runs7));
    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 16));
    ct_attn_params ok = {1, 2, 8, 0.35f, CT_F32};
    expect_error(&tape, qkv, NULL, (ct_attn_params){2, 2, 8, 0.35f, CT_F32}, "expected 2 kv heads");
    expect_error(&tape, qkv, NULL, (ct_attn_params){1, 3, 8, 0.35f, CT_F32}, "columns");
    expect_error(&tape, qkv, NULL, (ct_attn_params){0, 2, 8, 0.35f, CT_F32}, "bad parameters");
    expect_error(&tape, qkv, runs7, ok, "run boundaries");
    expect_error(&tape, qkv, NULL, (ct_attn_params){1, 2, 8, 0.35f, CT_F16}, "compute dtype");
    /* the runs are made on the host: a sample id that comes back is refused there */
    int32_t bad[5] = {4, 4, 9, 9, 4}, r[6];
    int64_t n_runs = -1;
    CHECK(ct_segment_runs(bad, T, r, &n_runs) == CT_EINPUT &&
              strstr(ct_last_error(), "segment id 4 at token 0 reappears at token 4"),
          "reappearing id: %s", ct_last_error());
    int32_t good[5] = {4, 4, 9, 9, 2};
    CHECK_OK(ct_segment_runs(good, T, r, &n_runs));
    CHECK(n_runs == 3 && r[0] == 0 && r[1] == 2 && r[2] == 4 && r[3] == 5, "runs of 4 4 9 9 2: %lld",
          (long long)n_runs);
    ct_error_clear();
    ct_tensor *runs = ct_test_need(ct_segment_runs_tensor(&tape, good, T));
    CHECK_PTR(ct_attention(&tape, qkv, runs, &ok));
    ct_tape_free(&tape);
    ct_tensor_free(be, qkv);
    ct_tensor_free(be, runs7);
}

/* ---- bf16 math ---- */

#define BF16_U 0.00390625 /* 2^-8: bf16's unit roundoff (8 significant bits, nearest even) */

static double bf16_val(float x) { return (double)ct_bf16_to_f32(ct_f32_to_bf16(x)); }

/* The output and analytic gradient of attention in double on bf16-ROUNDED
 * operands (x: qkv rounded; dor: dO rounded), i.e. the bf16 kernels' math
 * without their remaining roundings, plus first-order bounds of those, in
 * units of 2^-8 (every rounding to bf16 moves a value by at most 2^-8 of it):
 * - forward: P is rounded before P·V (l sums the unrounded P), so
 *   |δout_ie| <= 2^-8 · Σ_j P_ij |v_je| = 2^-8 · mag_out;
 * - dV = Σ_i bf16(P_ij) dO_i: |δ| <= 2^-8 Σ_i P_ij |dO_ie|;
 * - D_i = Σ_e dO_ie · out_ie uses the unrounded dO and the kernel's out, so
 *   |δD_i| <= 2^-8 · ΔD_i, ΔD_i = Σ_e |dO_ie| (|out_ie| + mag_out_ie); dS_ij =
 *   P_ij (dP_ij - D_i) then moves by P_ij δD_i and is rounded (2^-8 |dS_ij|):
 *   |δdQ_ie| <= 2^-8 · scale Σ_j (|dS_ij| + P_ij ΔD_i) |k_je|, dK likewise
 *   with |q_ie|.
 * The rest (fp32 sums, exp, lse) is ~1e-6 relative; the checks allow 2e-5 of
 * the bound's scale for it. grad and mag_grad are [T, C] like qkv. */
static void ref_bf16(const ref_dims *d, const double *x, const double *dor, double *out,
                     double *lse, double *mag_out, double *grad, double *mag_grad, double *pr) {
    const int64_t T = d->T, C = ref_cols(d), Hq = (int64_t)d->Hkv * d->G, hd = d->hd, W = Hq * hd;
    memset(grad, 0, (size_t)(T * C) * sizeof *grad);
    memset(mag_grad, 0, (size_t)(T * C) * sizeof *mag_grad);
    for (int64_t h = 0; h < Hq; h++) {
        int64_t g = h / d->G;
        int64_t qc = (g * (d->G + 2) + h % d->G) * hd, kc = (g * (d->G + 2) + d->G) * hd, vc = kc + hd;
        for (int64_t i = 0; i < T; i++) {
            double mx = -INFINITY, sum = 0.0;
            for (int64_t j = 0; j <= i; j++) {
                pr[j] = -INFINITY;
                if (d->seg && d->seg[j] != d->seg[i]) continue;
                double dot = 0.0;
                for (int64_t e = 0; e < hd; e++) dot += x[i * C + qc + e] * x[j * C + kc + e];
                pr[j] = d->scale * dot;
                if (pr[j] > mx) mx = pr[j];
            }
            for (int64_t j = 0; j <= i; j++) sum += (pr[j] = exp(pr[j] - mx));
            for (int64_t j = 0; j <= i; j++) pr[j] /= sum;
            lse[h * T + i] = mx + log(sum);
            double *o = out + i * W + h * hd, *mo = mag_out + i * W + h * hd;
            const double *go = dor + i * W + h * hd;
            for (int64_t e = 0; e < hd; e++) o[e] = mo[e] = 0.0;
            for (int64_t j = 0; j <= i; j++)
                for (int64_t e = 0; e < hd; e++) {
                    o[e] += pr[j] * x[j * C + vc + e];
                    mo[e] += pr[j] * fabs(x[j * C + vc + e]);
                }
            double D = 0.0, dD = 0.0;
            for (int64_t e = 0; e < hd; e++) {
                D += go[e] * o[e];
                dD += fabs(go[e]) * (fabs(o[e]) + mo[e]);
            }
            for (int64_t j = 0; j <= i; j++) {
                if (pr[j] == 0.0) continue; /* masked (a visible key never underflows here) */
                double dp = 0.0;
                for (int64_t e = 0; e < hd; e++) dp += go[e] * x[j * C + vc + e];
                double ds = pr[j] * (dp - D), mds = fabs(ds) + pr[j] * dD;
                for (int64_t e = 0; e < hd; e++) {
                    grad[j * C + vc + e] += pr[j] * go[e];
                    mag_grad[j * C + vc + e] += pr[j] * fabs(go[e]);
                    grad[i * C + qc + e] += d->scale * ds * x[j * C + kc + e];
                    mag_grad[i * C + qc + e] += d->scale * mds * fabs(x[j * C + kc + e]);
                    grad[j * C + kc + e] += d->scale * ds * x[i * C + qc + e];
                    mag_grad[j * C + kc + e] += d->scale * mds * fabs(x[i * C + qc + e]);
                }
            }
        }
    }
}

/* |got - want| <= (2^-8 + 2e-5) · mag + 1e-6 everywhere (got minus base when
 * base != NULL); prints the worst |got - want| / (2^-8 · mag). */
static void check_bf16_bound(const char *what, const float *got, const float *base,
                             const double *want, const double *mag, int64_t n) {
    double worst = 0.0, worst_abs = 0.0;
    int64_t bad = 0, at = 0;
    for (int64_t i = 0; i < n; i++) {
        double gv = (double)got[i] - (base ? (double)base[i] : 0.0), err = fabs(gv - want[i]);
        double r = err / (BF16_U * mag[i] + 1e-30);
        if (err > (BF16_U + 2e-5) * mag[i] + 1e-6) bad++, at = i;
        if (r > worst && mag[i] > 0.0) worst = r;
        if (err > worst_abs) worst_abs = err;
    }
    printf("  %-58s max |err| %.2e, max |err| / (2^-8·bound) %.3f\n", what, worst_abs, worst);
    CHECK(bad == 0, "%s: %lld elements outside the bf16 bound (e.g. [%lld]: %g vs %g, bound scale %g)",
          what, (long long)bad, (long long)at, (double)got[at] - (base ? (double)base[at] : 0.0),
          want[at], mag[at]);
}

/* Fast path vs fallback: the same products summed in the same order, so the
 * same bits except for values below 2^-126 (VDPBF16PS treats them as zero);
 * allowed: 2e-5 of the bound's scale (fp32 summation order) + 1e-6. */
static void check_same_math(const char *what, const float *a, const float *b, const double *mag,
                            int64_t n) {
    int64_t differ = 0, bad = 0;
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        differ += memcmp(&a[i], &b[i], sizeof *a) != 0;
        bad += e > 2e-5 * (mag ? mag[i] : 1.0) + 1e-6;
        worst = e > worst ? e : worst;
    }
    printf("  %-58s %lld of %lld differ, max |diff| %.2e\n", what, (long long)differ, (long long)n,
           worst);
    CHECK(bad == 0, "%s: %lld elements differ beyond fp32 summation order", what, (long long)bad);
}

static void run_bf16_case(const attn_case *ac, ct_test_rng *rng) {
    const ct_backend *be = ct_cpu_backend();
    ct_arena scratch;
    ct_arena_init(&scratch, be->mem, 1 << 20);
    const float scale = ac->scale ? ac->scale : 1.0f / sqrtf((float)ac->hd);
    ct_attn_params p = {ac->Hkv, ac->G, ac->hd, scale, CT_BF16}, p32 = p;
    p32.compute = CT_F32;
    const int64_t T = ac->T, C = (int64_t)ac->Hkv * (ac->G + 2) * ac->hd,
                  Hq = (int64_t)ac->Hkv * ac->G, W = Hq * ac->hd;
    int64_t sq[2] = {T, C}, so[2] = {T, W}, sl[2] = {Hq, T};
    /* [0] bf16 (default path) [1] rerun [2] fallback [3] fp32 */
    ct_tensor *qkv = ct_tensor_new(be, CT_F32, 2, sq, false);
    ct_tensor *dout = ct_tensor_new(be, CT_F32, 2, so, false);
    ct_tensor *out[4], *lse[4], *dqkv[4];
    for (int k = 0; k < 4; k++) {
        out[k] = ct_tensor_new(be, CT_F32, 2, so, false);
        lse[k] = ct_tensor_new(be, CT_F32, 2, sl, false);
        dqkv[k] = ct_tensor_new(be, CT_F32, 2, sq, false);
    }
    ct_tensor *seg = NULL;
    int32_t *ids = NULL;
    if (ac->seg_len) {
        seg = ct_tensor_new(be, CT_I32, 1, &T, false);
        ids = seg->data;
        int64_t t = 0;
        for (int k = 0; ac->seg_len[k]; k++)
            for (int n = 0; n < ac->seg_len[k]; n++) ids[t++] = 3 * k + 1;
    }
    ct_tensor *runs = runs_tensor(be, ids, T);
    float *pre = malloc((size_t)(T * C) * sizeof *pre);
    double *x = malloc((size_t)(T * C) * sizeof *x), *dor = malloc((size_t)(T * W) * sizeof *dor);
    double *od = malloc((size_t)(T * W) * sizeof *od), *mo = malloc((size_t)(T * W) * sizeof *mo);
    double *ld = malloc((size_t)(Hq * T) * sizeof *ld), *pr = malloc((size_t)T * sizeof *pr);
    double *gd = malloc((size_t)(T * C) * sizeof *gd), *mg = malloc((size_t)(T * C) * sizeof *mg);
    ct_test_fill(rng, qkv->data, T * C, 1.0);
    ct_test_fill(rng, dout->data, T * W, 1.0);
    ct_test_fill(rng, pre, T * C, 1.0);
    for (int64_t i = 0; i < T * C; i++) x[i] = bf16_val(((float *)qkv->data)[i]);
    for (int64_t i = 0; i < T * W; i++) dor[i] = bf16_val(((float *)dout->data)[i]);
    ref_dims d = {T, ac->Hkv, ac->G, ac->hd, scale, ids};
    ref_bf16(&d, x, dor, od, ld, mo, gd, mg, pr);

    const bool fast = ct_cpu_bf16_dot_supported();
    for (int k = 0; k < 4; k++) {
        bool prev = ct_bf16_force_fallback(k == 2);
        memcpy(dqkv[k]->data, pre, (size_t)(T * C) * sizeof(float));
        const ct_attn_params *pk = k == 3 ? &p32 : &p;
        CHECK_OK(ct_cpu_attention_fwd(qkv, runs, pk, out[k], lse[k], &scratch));
        CHECK_OK(ct_cpu_attention_bwd(qkv, runs, pk, out[k], lse[k], dout, dqkv[k], &scratch));
        ct_bf16_force_fallback(prev);
        CHECK(scratch.used == 0, "%s: the kernels left %zu bytes of scratch in use", ac->name,
              scratch.used);
    }
    printf("%s (%s):\n", ac->name, fast ? "AVX512-BF16" : "fallback");
    char what[160];
    snprintf(what, sizeof what, "%s: bf16 out vs reference", ac->name);
    check_bf16_bound(what, out[0]->data, NULL, od, mo, T * W);
    snprintf(what, sizeof what, "%s: bf16 lse", ac->name);
    double lse_err = 0.0;
    for (int64_t i = 0; i < Hq * T; i++) {
        double e = fabs((double)((float *)lse[0]->data)[i] - ld[i]);
        lse_err = e > lse_err ? e : lse_err;
    }
    printf("  %-58s max |err| %.2e\n", what, lse_err);
    ct_check_close(what, lse[0]->data, ld, Hq * T, 2e-6, 1e-6);
    snprintf(what, sizeof what, "%s: bf16 dqkv vs analytic reference", ac->name);
    check_bf16_bound(what, dqkv[0]->data, pre, gd, mg, T * C);

    /* vs the fp32 kernels on the unrounded inputs: ‖g_bf16 − g_f32‖ / ‖g_f32‖.
     * Every factor of a gradient term (q, k, v, dO, P, dS) is rounded by at
     * most 2^-8 of itself, so the terms move by a few 2^-8; 4·2^-8 (1.6%)
     * leaves room for the worst element-wise cancellations. Also the rounding
     * must be visible: bf16 and fp32 must differ by more than 2^-12. */
    double num = 0.0, den = 0.0, onum = 0.0, oden = 0.0;
    const float *g0 = dqkv[0]->data, *g3 = dqkv[3]->data, *o0 = out[0]->data, *o3 = out[3]->data;
    for (int64_t i = 0; i < T * C; i++) {
        double a = (double)g0[i] - pre[i], b = (double)g3[i] - pre[i];
        num += (a - b) * (a - b), den += b * b;
    }
    for (int64_t i = 0; i < T * W; i++) {
        double a = (double)o0[i] - o3[i];
        onum += a * a, oden += (double)o3[i] * o3[i];
    }
    double rel = sqrt(num / den), orel = sqrt(onum / oden);
    printf("  %-58s out %.2e, dqkv %.2e (x 2^-8: %.2f)\n", "relative L2 distance bf16 vs fp32:", orel,
           rel, rel / BF16_U);
    CHECK(rel < 4 * BF16_U && orel < 4 * BF16_U, "%s: bf16 vs fp32: out %g, dqkv %g", ac->name, orel,
          rel);
    CHECK(rel > BF16_U / 16 && orel > BF16_U / 16,
          "%s: bf16 hardly differs from fp32 (out %g, dqkv %g): no rounding?", ac->name, orel, rel);

    /* the same bits on a second run */
    CHECK(memcmp(out[0]->data, out[1]->data, ct_nbytes(out[0])) == 0 &&
              memcmp(lse[0]->data, lse[1]->data, ct_nbytes(lse[0])) == 0,
          "%s: bf16 forward not repeatable", ac->name);
    CHECK(memcmp(dqkv[0]->data, dqkv[1]->data, ct_nbytes(dqkv[0])) == 0,
          "%s: bf16 backward not repeatable", ac->name);

    if (fast) {
        snprintf(what, sizeof what, "%s: fast vs fallback out", ac->name);
        check_same_math(what, out[0]->data, out[2]->data, mo, T * W);
        snprintf(what, sizeof what, "%s: fast vs fallback lse", ac->name);
        check_same_math(what, lse[0]->data, lse[2]->data, NULL, Hq * T);
        snprintf(what, sizeof what, "%s: fast vs fallback dqkv", ac->name);
        check_same_math(what, dqkv[0]->data, dqkv[2]->data, mg, T * C);
    } else {
        CHECK(memcmp(out[0]->data, out[2]->data, ct_nbytes(out[0])) == 0 &&
                  memcmp(dqkv[0]->data, dqkv[2]->data, ct_nbytes(dqkv[0])) == 0,
              "%s: forced fallback differs from the fallback", ac->name);
    }

    for (int k = 0; k < 4; k++) {
        ct_tensor_free(be, out[k]);
        ct_tensor_free(be, lse[k]);
        ct_tensor_free(be, dqkv[k]);
    }
    ct_tensor_free(be, qkv);
    ct_tensor_free(be, dout);
    ct_tensor_free(be, seg);
    ct_tensor_free(be, runs);
    free(pre), free(x), free(dor), free(od), free(mo), free(ld), free(pr), free(gd), free(mg);
    ct_arena_free(&scratch);
}

static void test_bf16(void) {
    if (!ct_cpu_bf16_dot_supported())
        printf("note: this CPU lacks AVX512-BF16: only the bf16 fallback is tested\n");
    ct_test_rng rng = {4321};
    static const int packed[] = {5, 8, 7, 0}, across[] = {70, 50, 30, 0},
                     shortruns[] = {1, 2, 61, 3, 64, 1, 68, 0};
    attn_case cases[] = {
        {"bf16 GQA G=2 T=7 hd8", 7, 2, 2, 8, 0, NULL, 0},
        {"bf16 one KV head G=3 T=13 hd7 (odd)", 13, 1, 3, 7, 0, NULL, 0},
        {"bf16 G=1 T=9 hd12 scale 0.3", 9, 3, 1, 12, 0.3f, NULL, 0},
        {"bf16 single token", 1, 2, 2, 8, 0, NULL, 0},
        {"bf16 packed samples 5+8+7", 20, 2, 2, 8, 0, packed, 0},
        {"bf16 T=150 samples across blocks hd40", 150, 2, 2, 40, 0, across, 0},
        {"bf16 T=200 G=3 short and long samples", 200, 1, 3, 24, 0, shortruns, 0},
        {"bf16 T=131 hd64 Hkv=2 G=3", 131, 2, 3, 64, 0, NULL, 0},
        {"bf16 T=130 hd128 G=2", 130, 1, 2, 128, 0, NULL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_bf16_case(&cases[i], &rng);
}

int main(void) {
    test_cases();
    test_bf16();
    test_tape();
    test_checkpoint(CT_F32);
    test_checkpoint(CT_BF16);
    test_errors();
    return ct_test_finish();
}
