/* Op benchmark through the tape, on the CPU (bench_ops.c benchmarks the
 * backend entries themselves, on any backend; this one was bench_ops before
 * it): forward + backward time and GFLOP/s of every op at a realistic
 * shape (InternLM2-1.8B-like: hidden 2048, 16 heads / 8 KV heads of 128, FFN
 * 8192, seq 512), next to plain OpenBLAS sgemm on the same GEMM shapes in the
 * same run. Attention also runs at a 125M shape (12 / 4 heads of 64) and a
 * 7B-like one (32 / 8 heads of 128), each with fp32 and bf16 math. Usage:
 * bench_ops_tape [T] [reps] [filter]: only ops whose name contains `filter` run
 * when it is given. Prints a markdown table. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "autograd/ops.h"
#include "autograd/tape.h"

static void fill(float *x, int64_t n, uint64_t seed, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = scale * (2.0f * ct_uniform(seed, (uint64_t)i) - 1.0f);
}

/* Activations that require grad: their arena grads are dropped every rep. */
static ct_tensor *g_inputs[8];
static int g_n_inputs;

/* FROZEN: a base weight; INPUT: an activation that requires grad (its grad is
 * created in the step arena by ct_grad, fresh every rep); LORA: a trainable
 * parameter with a long-lived grad. */
enum { FROZEN, INPUT, LORA };

static ct_tensor *param(const ct_backend *be, ct_dtype dt, int nd, int64_t a, int64_t b,
                        int kind, uint64_t seed, float scale) {
    int64_t shape[2] = {a, b};
    ct_tensor *t = ct_tensor_new(be, dt, nd, shape, kind == LORA);
    if (!t) {
        fprintf(stderr, "%s\n", ct_last_error());
        exit(1);
    }
    int64_t n = ct_numel(t);
    float *tmp = malloc((size_t)n * sizeof *tmp);
    fill(tmp, n, seed, scale);
    ct_convert(t->data, dt, tmp, CT_F32, n);
    free(tmp);
    if (kind == INPUT) {
        t->requires_grad = true;
        g_inputs[g_n_inputs++] = t;
    }
    return t;
}

/* One benchmarked op: builds the forward on the tape from `in` (requires grad)
 * and returns the output; the harness then runs backward with a ones-like seed. */
typedef struct bench_case bench_case;
struct bench_case {
    const char *name;
    double flops; /* forward + backward */
    ct_tensor *(*run)(bench_case *c, ct_tape *t, ct_tensor *in);
    ct_tensor *in;
    ct_tensor *aux[4];
    ct_linear lin;
    ct_rope_params rope;
    ct_attn_params attn;
    double sgemm_flops; /* the plain-GEMM equivalent, when there is one */
    int m, n, k;        /* its shape: C[m,n] = A[m,k]·B[k,n], run 3× (fwd, dX, dW) */
    /* Memory-bound ops: bytes read + written by the forward and by the backward
     * (grad zeroing included), and the distinct bytes each touches (fwd+bwd:
     * both); a memcpy moving as many bytes over as many is timed next to them. */
    double bytes_fwd, bytes_bwd, span_fwd, span_all;
};

static void die(void) {
    fprintf(stderr, "error: %s\n", ct_last_error());
    exit(1);
}

/* Reduces the op output to a scalar so backward has a 1-element loss:
 * loss = sum(y · r) with a fixed r, done by a tiny linear_cross_entropy would
 * distort timings, so instead the harness seeds y->grad directly. */
static double time_case(bench_case *c, ct_tape *t, int reps, double *fwd_s) {
    double best = 1e30, best_f = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        ct_tape_reset(t);
        /* The previous rep's arena grads are gone with the reset. */
        for (int i = 0; i < g_n_inputs; i++) g_inputs[i]->grad = NULL;
        double t0 = ct_now_s();
        ct_tensor *y = c->run(c, t, c->in);
        if (!y) die();
        double t1 = ct_now_s(), t1b = t1;
        if (ct_numel(y) == 1) {
            if (ct_backward(t, y, 1.0f)) die();
        } else {
            /* Seeding dy (a scalar counter-RNG fill, ~several ms for 4M floats)
             * is harness work: kept out of the timed backward. */
            ct_tensor *g = ct_grad(t, y);
            if (!g) die();
            fill(g->data, ct_numel(g), 99, 1e-3f);
            t1b = ct_now_s();
            /* Walk the tape from y: the seed is y->grad. */
            for (int i = t->n_entries - 1; i >= 0; i--) {
                ct_tape_entry e = t->entries[i];
                if (e.out->grad && e.op->backward(t, &e)) die();
            }
        }
        double t2 = ct_now_s();
        if (r > 0) { /* first run warms the arenas */
            if ((t1 - t0) + (t2 - t1b) < best) best = (t1 - t0) + (t2 - t1b);
            if (t1 - t0 < best_f) best_f = t1 - t0;
        }
    }
    *fwd_s = best_f;
    return best;
}

static double time_sgemm(int m, int n, int k, int reps) {
    float *a = malloc((size_t)m * k * 4), *b = malloc((size_t)k * n * 4), *cc = malloc((size_t)m * n * 4);
    fill(a, (int64_t)m * k, 1, 1.0f);
    fill(b, (int64_t)k * n, 2, 1.0f);
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = ct_now_s();
        /* C[m,n] = A[m,k]·B[k,n], as forward, dX and dW each are one such GEMM */
        for (int i = 0; i < 3; i++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, cc, n);
        double dt = ct_now_s() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    free(a);
    free(b);
    free(cc);
    return best;
}

/* The memory-bandwidth reference of a memory-bound op: plain memcpy moving
 * `bytes` (bytes/2 read, bytes/2 written) in passes over src/dst of span/2
 * bytes each, so the working set (cache or DRAM) is the op's; split over the
 * OpenMP threads like the kernels are; best of reps after a warm-up. */
static double time_memcpy(char *dst, const char *src, size_t cap, double bytes, double span, int reps) {
    size_t half = (size_t)(bytes / 2), pass = (size_t)(span / 2);
    if (pass > half) pass = half;
    if (pass > cap) pass = cap;
    if (pass == 0) return 0.0;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = ct_now_s();
#pragma omp parallel
        {
            size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
            for (size_t done = 0; done < half; done += pass) {
                size_t len = half - done < pass ? half - done : pass;
                size_t a = len * id / nt, b = len * (id + 1) / nt;
                memcpy(dst + a, src + a, b - a);
            }
        }
        double dt = ct_now_s() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    return best;
}

static ct_tensor *run_rmsnorm(bench_case *c, ct_tape *t, ct_tensor *in) { return ct_rmsnorm(t, in, c->aux[0], 1e-5f); }
static ct_tensor *run_swiglu(bench_case *c, ct_tape *t, ct_tensor *in) { return ct_swiglu(t, in, c->aux[0]); }
static ct_tensor *run_add(bench_case *c, ct_tape *t, ct_tensor *in) { return ct_add(t, in, c->aux[0]); }
static ct_tensor *run_rope(bench_case *c, ct_tape *t, ct_tensor *in) { return ct_rope(t, in, c->aux[0], &c->rope); }
static ct_tensor *run_attn(bench_case *c, ct_tape *t, ct_tensor *in) { return ct_attention(t, in, NULL, &c->attn); }
static ct_tensor *run_lora(bench_case *c, ct_tape *t, ct_tensor *in) { return ct_lora_linear(t, in, &c->lin); }
static ct_tensor *run_xent(bench_case *c, ct_tape *t, ct_tensor *in) {
    return ct_linear_cross_entropy(t, in, &c->lin, c->aux[0], 0.0f, NULL);
}
static ct_tensor *run_embed(bench_case *c, ct_tape *t, ct_tensor *in) {
    (void)in;
    return ct_embedding(t, c->aux[1], c->aux[0]);
}

int main(int argc, char **argv) {
    int T = argc > 1 ? atoi(argv[1]) : 512;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    const char *filter = argc > 3 ? argv[3] : NULL;
    const int D = 2048, Hq = 16, Hkv = 8, hd = 128, F = 8192, V = 92544, V32 = 32000, r = 64;
    const int G = Hq / Hkv, QKV = Hkv * (G + 2) * hd;
    const ct_backend *be = ct_cpu_backend();
    ct_tape tape;
    ct_tape_init(&tape, be, (size_t)256 << 20);

    ct_tensor *x = param(be, CT_F32, 2, T, D, INPUT, 1, 1.0f);
    ct_tensor *xf = param(be, CT_F32, 2, T, F, INPUT, 2, 1.0f);
    ct_tensor *xf2 = param(be, CT_F32, 2, T, F, INPUT, 3, 1.0f);
    ct_tensor *qkv = param(be, CT_F32, 2, T, QKV, INPUT, 4, 1.0f);
    ct_tensor *qkv_s = param(be, CT_F32, 2, T, 4 * (3 + 2) * 64, INPUT, 19, 1.0f);   /* 125M: 12/4 x 64 */
    ct_tensor *qkv_l = param(be, CT_F32, 2, T, 8 * (4 + 2) * 128, INPUT, 20, 1.0f); /* 7B: 32/8 x 128 */
    ct_tensor *x2 = param(be, CT_F32, 2, T, D, INPUT, 17, 1.0f);
    ct_tensor *normw = param(be, CT_BF16, 1, D, 1, FROZEN, 5, 1.0f);
    ct_tensor *normw32 = param(be, CT_F32, 1, D, 1, LORA, 18, 1.0f); /* trainable: dw */
    int64_t tshape[1] = {T};
    ct_tensor *pos = ct_tensor_new(be, CT_I32, 1, tshape, false);
    ct_tensor *labels = ct_tensor_new(be, CT_I32, 1, tshape, false);
    ct_tensor *ids = ct_tensor_new(be, CT_I32, 1, tshape, false);
    for (int i = 0; i < T; i++) {
        ((int32_t *)pos->data)[i] = i;
        ((int32_t *)labels->data)[i] = (int32_t)(ct_mix64((uint64_t)i) % (uint64_t)V);
        ((int32_t *)ids->data)[i] = (int32_t)(ct_mix64((uint64_t)i + 7) % (uint64_t)V);
    }
    ct_tensor *w_qkv = param(be, CT_BF16, 2, QKV, D, FROZEN, 6, 0.02f);
    ct_tensor *w_up = param(be, CT_BF16, 2, F, D, FROZEN, 7, 0.02f);
    ct_tensor *w_out = param(be, CT_BF16, 2, V, D, FROZEN, 8, 0.02f);
    ct_tensor *w_out32 = param(be, CT_F32, 2, V32, D, FROZEN, 14, 0.02f); /* a 32000-token f32 head */
    ct_tensor *a_out = param(be, CT_F32, 2, r, D, LORA, 15, 0.02f);
    ct_tensor *b_out = param(be, CT_F32, 2, V, r, LORA, 16, 0.02f);
    ct_tensor *labels32 = ct_tensor_new(be, CT_I32, 1, tshape, false);
    for (int i = 0; i < T; i++) ((int32_t *)labels32->data)[i] = ((int32_t *)labels->data)[i] % V32;
    ct_tensor *emb = param(be, CT_BF16, 2, V, D, FROZEN, 9, 0.02f);
    ct_tensor *a_qkv = param(be, CT_F32, 2, r, D, LORA, 10, 0.02f);
    ct_tensor *b_qkv = param(be, CT_F32, 2, QKV, r, LORA, 11, 0.02f);
    ct_tensor *a_up = param(be, CT_F32, 2, r, D, LORA, 12, 0.02f);
    ct_tensor *b_up = param(be, CT_F32, 2, F, r, LORA, 13, 0.02f);

    double lora_extra = 0;
    bench_case cases[32];
    int n = 0;
    memset(cases, 0, sizeof cases);
    /* Byte counts below: f32 elements read + written; a grad that ct_grad creates
     * is zeroed first (one more write). */
    const double TD = (double)T * D, TF = (double)T * F;
    cases[n] = (bench_case){.name = "embedding (bf16 table)", .flops = 0, .run = run_embed, .in = x,
                            .aux = {ids, emb}, .bytes_fwd = 6 * TD,
                            .span_fwd = 6 * TD, .span_all = 6 * TD};
    n++;
    /* bwd: zero dx, read x, dy, dx, write dx */
    cases[n] = (bench_case){.name = "rmsnorm (bf16 w, frozen)", .flops = 8.0 * T * D, .run = run_rmsnorm,
                            .in = x, .aux = {normw}, .bytes_fwd = 8 * TD, .bytes_bwd = 20 * TD,
                            .span_fwd = 8 * TD, .span_all = 16 * TD};
    n++;
    cases[n] = (bench_case){.name = "rmsnorm (f32 w, trainable: dw too)", .flops = 10.0 * T * D,
                            .run = run_rmsnorm, .in = x, .aux = {normw32}, .bytes_fwd = 8 * TD,
                            .bytes_bwd = 20 * TD, .span_fwd = 8 * TD, .span_all = 16 * TD};
    n++;
    cases[n] = (bench_case){.name = "rope (q,k of packed qkv)", .flops = 12.0 * T * (Hq + Hkv) * hd,
                            .run = run_rope, .in = qkv, .aux = {pos}};
    cases[n].rope = (ct_rope_params){.head_dim = hd, .group = G + 2, .rotate_per_group = G + 1,
                                     .theta = 1e6, .max_pos = 32768, .seq_len = T};
    n++;
    /* causal attention: QKᵀ and PV forward (2 GEMMs), 5 in backward incl. recompute; half masked */
    cases[n] = (bench_case){.name = "attention (causal, GQA)", .flops = 7.0 * 2.0 * Hq * (double)T * T * hd / 2.0,
                            .run = run_attn, .in = qkv};
    cases[n].attn = (ct_attn_params){.n_kv_heads = Hkv, .group = G, .head_dim = hd, .scale = 1.0f / sqrtf((float)hd)};
    n++;
    /* the same in bf16 math (bf16 operands, fp32 sums), then a 125M and a 7B-like shape */
    static const struct {
        const char *name;
        int hkv, g, hd, big;
    } attn_shapes[] = {
        {"attention (causal, GQA) bf16", 8, 2, 128, -1},
        {"attention 125M (12/4 x 64)", 4, 3, 64, 0},
        {"attention 125M (12/4 x 64) bf16", 4, 3, 64, 0},
        {"attention 7B (32/8 x 128)", 8, 4, 128, 1},
        {"attention 7B (32/8 x 128) bf16", 8, 4, 128, 1},
    };
    for (size_t i = 0; i < sizeof attn_shapes / sizeof *attn_shapes; i++) {
        int hq = attn_shapes[i].hkv * attn_shapes[i].g, ahd = attn_shapes[i].hd;
        int big = attn_shapes[i].big;
        cases[n] = (bench_case){.name = attn_shapes[i].name, .run = run_attn,
                                .flops = 7.0 * 2.0 * hq * (double)T * T * ahd / 2.0,
                                .in = big < 0 ? qkv : big ? qkv_l : qkv_s};
        cases[n].attn = (ct_attn_params){.n_kv_heads = attn_shapes[i].hkv, .group = attn_shapes[i].g,
                                         .head_dim = ahd, .scale = 1.0f / sqrtf((float)ahd),
                                         .compute = strstr(attn_shapes[i].name, "bf16") ? CT_BF16
                                                                                       : CT_F32};
        n++;
    }
    /* bwd: zero dg, du; read g, u, dy, dg, du; write dg, du */
    cases[n] = (bench_case){.name = "swiglu", .flops = 20.0 * T * F, .run = run_swiglu, .in = xf, .aux = {xf2},
                            .bytes_fwd = 12 * TF, .bytes_bwd = 36 * TF, .span_fwd = 12 * TF,
                            .span_all = 24 * TF};
    n++;
    /* fwd: read a, b, write y; bwd: zero da, db, then da += dy, db += dy */
    cases[n] = (bench_case){.name = "add", .flops = 3.0 * T * D, .run = run_add, .in = x, .aux = {x2},
                            .bytes_fwd = 12 * TD, .bytes_bwd = 32 * TD, .span_fwd = 12 * TD,
                            .span_all = 24 * TD};
    n++;
    lora_extra = 2.0 * T * r * (D + QKV);
    cases[n] = (bench_case){.name = "lora_linear wqkv (bf16 W, r=64)", .run = run_lora, .in = x,
                            .flops = 2 * (2.0 * T * D * QKV) + 3 * lora_extra, .m = T, .n = QKV, .k = D};
    cases[n].lin = (ct_linear){.w = w_qkv, .a = a_qkv, .b = b_qkv, .scale = 0.25f, .dropout = 0.1f, .id = 1};
    n++;
    lora_extra = 2.0 * T * r * (D + F);
    cases[n] = (bench_case){.name = "lora_linear w1 (bf16 W, r=64)", .run = run_lora, .in = x,
                            .flops = 2 * (2.0 * T * D * F) + 3 * lora_extra, .m = T, .n = F, .k = D};
    cases[n].lin = (ct_linear){.w = w_up, .a = a_up, .b = b_up, .scale = 0.25f, .dropout = 0.1f, .id = 2};
    n++;
    cases[n] = (bench_case){.name = "linear_cross_entropy (V=92544)", .run = run_xent, .in = x,
                            .flops = 2 * (2.0 * T * D * V), .m = T, .n = V, .k = D, .aux = {labels}};
    cases[n].lin = (ct_linear){.w = w_out};
    n++;
    cases[n] = (bench_case){.name = "linear_cross_entropy (f32 head, V=32000)", .run = run_xent, .in = x,
                            .flops = 2 * (2.0 * T * D * V32), .m = T, .n = V32, .k = D, .aux = {labels32}};
    cases[n].lin = (ct_linear){.w = w_out32};
    n++;
    /* head LoRA: the logits GEMM is run twice (dB needs the final softmax) */
    lora_extra = 2.0 * T * r * (D + V);
    cases[n] = (bench_case){.name = "linear_cross_entropy (V=92544, head LoRA r=64)", .run = run_xent,
                            .in = x, .flops = 2 * (2.0 * T * D * V) + 3 * lora_extra, .m = T, .n = V,
                            .k = D, .aux = {labels}};
    cases[n].lin = (ct_linear){.w = w_out, .a = a_out, .b = b_out, .scale = 0.25f, .dropout = 0.1f, .id = 3};
    n++;
    /* compute_dtype: bfloat16 — the same ops with bf16 products (fp32 sums) */
    const char *bf16_names[] = {"lora_linear wqkv (bf16 W, r=64), bf16 compute", "lora_linear w1 (bf16 W, r=64), bf16 compute",
                                "linear_cross_entropy (V=92544), bf16 compute"};
    int first = n - 5; /* the lora_linear wqkv, w1 and V=92544 loss cases above */
    for (int i = 0; i < 3; i++) {
        int src = first + i;
        cases[n] = cases[src];
        cases[n].name = bf16_names[i];
        cases[n].lin.compute = CT_BF16;
        n++;
    }

    printf("# ctuner op benchmark: T=%d, hidden %d, heads %d/%d x %d, ffn %d, vocab %d; %d OpenMP threads\n\n",
           T, D, Hq, Hkv, hd, F, V, omp_get_max_threads());
    printf("| op | fwd ms | fwd+bwd ms | GFLOP/s | sgemm same GEMMs (f32, fwd+dX+dW) GFLOP/s |\n|---|---|---|---|---|\n");
    size_t cpy_cap = (size_t)(24 * TF / 2) + 4096; /* the largest span: swiglu fwd+bwd */
    char *cpy_src = malloc(cpy_cap), *cpy_dst = malloc(cpy_cap);
    if (!cpy_src || !cpy_dst) return 1;
    memset(cpy_src, 1, cpy_cap);
    memset(cpy_dst, 0, cpy_cap);
    for (int i = 0; i < n; i++) {
        bench_case *c = &cases[i];
        if (filter && !strstr(c->name, filter)) continue;
        double fwd = 0;
        double dt = time_case(c, &tape, reps, &fwd);
        printf("| %s | %.2f | %.2f | %s", c->name, 1e3 * fwd, 1e3 * dt, "");
        if (c->flops > 0) printf("%.1f", c->flops / dt * 1e-9);
        else printf("-");
        if (c->m) {
            double sg = time_sgemm(c->m, c->n, c->k, reps);
            printf(" | %.1f |\n", 3 * 2.0 * c->m * (double)c->n * c->k / sg * 1e-9);
        } else {
            printf(" | - |\n");
        }
        if (c->bytes_fwd > 0) {
            double all = c->bytes_fwd + c->bytes_bwd;
            double cf = time_memcpy(cpy_dst, cpy_src, cpy_cap, c->bytes_fwd, c->span_fwd, reps);
            double cb = time_memcpy(cpy_dst, cpy_src, cpy_cap, all, c->span_all, reps);
            printf("| ↳ memcpy of the same bytes (%.0f / %.0f MiB over %.0f / %.0f MiB) | %.2f | %.2f | - | - |\n",
                   c->bytes_fwd / (1 << 20), all / (1 << 20), c->span_fwd / (1 << 20),
                   c->span_all / (1 << 20), 1e3 * cf, 1e3 * cb);
        }
        fflush(stdout);
    }
    printf("\npeak arena use: %.1f MiB (activations + scratch)\n",
           (double)(tape.main.peak + tape.scratch.peak) / (1 << 20));
    free(cpy_src);
    free(cpy_dst);
    ct_tape_free(&tape);
    return 0;
}
