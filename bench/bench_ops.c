/* Kernel benchmark: every entry of a backend's table (autograd/backend.h),
 * called directly, at InternLM2-7B shapes (hidden 4096, 32 query / 8 KV heads
 * of 128, FFN 14336, vocab 92544, T = 2048 tokens, LoRA r = 64 on wqkv, wo,
 * w1, w2, w3 of 32 layers) or tiny ones, each next to its ceiling measured in
 * the same run:
 * - memory-bound entries (embedding, rmsnorm and add_rmsnorm, rope, swiglu,
 *   add, decode, the optimizer): the bytes the entry must move at the device's copy bandwidth
 *   (be->copy of a 256 MiB buffer, read + write counted);
 * - GEMM-based entries (lora_linear, linear_xent): a plain GEMM of the same
 *   shape (M = T, N = out, K = in: cuBLASLt through cuda_kernels/bench_gemm.cu
 *   on cuda / cuda-emu, bf16 inputs for bf16 compute, f32 without TF32 for f32
 *   compute; cblas_sgemm on the CPU), FLOPs counted 2·M·N·K per GEMM;
 * - attention (causal: 2·T²·Hq·hd FLOPs forward, 2.5x that backward): the bf16
 *   tensor-core rate, a bf16 GEMM of 8192³ (T×T×hidden for the small shape).
 * Inputs are random, allocated with the backend's memory functions and filled
 * by upload (nf4 weights quantized on the host, double-quantized as the 7B
 * QLoRA configs do; their arrays uploaded as tests/autograd/test_parity.c
 * does). Each entry: one warm-up call, then N calls timed with be->sync()
 * around (fewer when N would take more than --budget seconds).
 *
 *   bench_ops [--backend cpu|cuda|cuda-emu|guarded] [--shape 7b|small] [--iters N]
 *             [--budget SECONDS] [--ops a,b,...]
 *
 * --ops keeps the entries whose name starts with one of the items
 * ("lora_linear", "attention_fwd", ...). Prints a markdown table: one row per
 * (entry, variant), "skip" where the backend lacks the entry or the dtypes;
 * the goal column holds the targets (lora_linear over nf4 with bf16
 * compute >= 80 % of the bf16 GEMM, element-wise and norm entries >= 70 % of
 * the copy bandwidth, attention forward + backward >= 40 % of the bf16 rate).
 * Exit: 0, 1 when an entry failed, 2 for bad arguments or a missing backend. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/arena.h"
#include "autograd/backend.h"
#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "autograd/quant.h"
#include "autograd/tape.h" /* ct_tensor_new, ct_tensor_free */

/* ------------------------------------------------------------- settings */

typedef struct {
    const char *name;
    int64_t D, Hq, Hkv, hd, F, V, T, r, layers;
    int64_t attn_ceil; /* the bf16 GEMM n×n×n whose rate is attention's ceiling (0: T×T×D) */
} shape_t;

static const shape_t k_shapes[] = {
    {"7b", 4096, 32, 8, 128, 14336, 92544, 2048, 64, 32, 8192},
    {"small", 64, 4, 2, 16, 128, 300, 64, 8, 2, 0},
};

static const ct_backend *g_be;
static const char *g_be_name;
static shape_t S;
static int64_t G, C, W;   /* query heads per KV head; qkv width Hkv·(G+2)·hd; attention out Hq·hd */
static ct_dtype A;        /* the backend's activation dtype */
static int g_iters = 10;
static double g_budget = 2.0; /* seconds of timed calls per entry, at most */
static const char *g_ops;     /* --ops, or NULL for all */
static ct_arena g_scratch;
static double g_copy_gbs;     /* measured copy bandwidth, GB/s */
static int g_ran, g_skipped, g_errors;
static int (*g_gemm)(int64_t, int64_t, int64_t, int, int, double *); /* NULL: cblas_sgemm */

#define ANY CT_DTYPE_COUNT

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "bench_ops: %s: %s\n", what, ct_last_error());
    exit(1);
}

static void *need(void *p, size_t bytes) {
    if (!p) {
        fprintf(stderr, "bench_ops: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* ------------------------------------------- tensors on the backend */

/* Everything a group of rows allocated on the backend (freed by release()),
 * and the live / peak bytes of it. */
#define MAX_OWNED 64
static ct_tensor *g_tensors[MAX_OWNED];
static int g_n_tensors;
static void *g_blocks[MAX_OWNED];
static size_t g_block_bytes[MAX_OWNED];
static int g_n_blocks;
static ct_quant_state *g_states[8];
static int g_n_states;
static size_t g_live, g_peak;

static void count(ptrdiff_t bytes) {
    g_live += (size_t)bytes;
    if (g_live > g_peak) g_peak = g_live;
}

static ct_tensor *own(ct_tensor *t) {
    if (!t) die("allocating a tensor");
    if (g_n_tensors == MAX_OWNED) {
        fprintf(stderr, "bench_ops: more than %d tensors in one group\n", MAX_OWNED);
        exit(1);
    }
    count((ptrdiff_t)ct_nbytes(t));
    return g_tensors[g_n_tensors++] = t;
}

static void *block(size_t bytes) {
    void *p = g_be->mem.alloc(bytes);
    if (!p || g_n_blocks == MAX_OWNED) {
        fprintf(stderr, "bench_ops: backend allocation of %zu bytes failed\n", bytes);
        exit(1);
    }
    g_block_bytes[g_n_blocks] = bytes;
    g_blocks[g_n_blocks++] = p;
    count((ptrdiff_t)bytes);
    return p;
}

static void release(void) {
    while (g_n_tensors) {
        ct_tensor *t = g_tensors[--g_n_tensors];
        count(-(ptrdiff_t)ct_nbytes(t));
        ct_tensor_free(g_be, t);
    }
    while (g_n_blocks) {
        g_n_blocks--;
        count(-(ptrdiff_t)g_block_bytes[g_n_blocks]);
        g_be->mem.free(g_blocks[g_n_blocks]);
    }
    while (g_n_states) free(g_states[--g_n_states]);
}

static void upload(void *dst, const void *host, size_t bytes) {
    if (g_be->upload(dst, host, bytes)) die("upload");
}

/* n random values scale·[-1, 1) on the host in dtype dt (f32, bf16, f16). */
static void *host_rand(ct_dtype dt, int64_t n, uint64_t seed, float scale) {
    size_t bytes = ct_dtype_bytes(dt, n);
    void *h = need(malloc(bytes ? bytes : 1), bytes);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = scale * (2.0f * ct_uniform(seed, (uint64_t)i) - 1.0f);
        if (dt == CT_BF16) ((uint16_t *)h)[i] = ct_f32_to_bf16(v);
        else if (dt == CT_F16) ((uint16_t *)h)[i] = ct_f32_to_f16(v);
        else ((float *)h)[i] = v;
    }
    return h;
}

#define SH1(a) 1, (const int64_t[]){(a)}
#define SH2(a, b) 2, (const int64_t[]){(a), (b)}
#define SH3(a, b, c) 3, (const int64_t[]){(a), (b), (c)}

static ct_tensor *t_new(ct_dtype dt, int nd, const int64_t *shape) {
    return own(ct_tensor_new(g_be, dt, nd, shape, false));
}

/* A float tensor of random values scale·[-1, 1). */
static ct_tensor *t_rand(ct_dtype dt, int nd, const int64_t *shape, uint64_t seed, float scale) {
    ct_tensor *t = t_new(dt, nd, shape);
    void *h = host_rand(dt, ct_numel(t), seed, scale);
    upload(t->data, h, ct_nbytes(t));
    free(h);
    return t;
}

static ct_tensor *t_zero(ct_dtype dt, int nd, const int64_t *shape) {
    ct_tensor *t = t_new(dt, nd, shape);
    if (g_be->zero(t->data, ct_nbytes(t))) die("zero");
    return t;
}

static ct_tensor *t_i32(int64_t n, const int32_t *host) {
    ct_tensor *t = t_new(CT_I32, SH1(n));
    upload(t->data, host, ct_nbytes(t));
    return t;
}

/* A frozen nf4 weight [rows, cols] (blocksize 64, double-quantized absmax):
 * quantized on the host, its arrays uploaded; the tensor's quant is a host
 * struct pointing at them (what the kernels read, quant.h). */
static ct_tensor *t_nf4(int64_t rows, int64_t cols, uint64_t seed, float scale) {
    float *wf = host_rand(CT_F32, rows * cols, seed, scale);
    ct_quant_state hq;
    ct_quant_params qp = {CT_QUANT_NF4, 64, true, NULL};
    if (ct_quant_quantize(&hq, wf, CT_F32, 2, (const int64_t[]){rows, cols}, &qp, "bench.w"))
        die("quantize");
    free(wf);
    if (g_n_states == 8) {
        fprintf(stderr, "bench_ops: too many nf4 weights in one group\n");
        exit(1);
    }
    ct_quant_state *st = need(malloc(sizeof *st), sizeof *st);
    g_states[g_n_states++] = st;
    *st = hq;
    st->owned = NULL;
    size_t cb = (size_t)(hq.n + 1) / 2, nn = (size_t)((hq.nblocks + hq.nested_blocksize - 1) / hq.nested_blocksize);
    st->codes = g_be->mem.alloc(cb);
    if (!st->codes) die("allocating nf4 codes");
    upload(st->codes, hq.codes, cb);
    st->qabsmax = block((size_t)hq.nblocks);
    upload(st->qabsmax, hq.qabsmax, (size_t)hq.nblocks);
    st->nested_absmax = block(nn * sizeof(float));
    upload(st->nested_absmax, hq.nested_absmax, nn * sizeof(float));
    ct_quant_free(&hq);
    ct_tensor *t = need(calloc(1, sizeof *t), sizeof *t);
    if (ct_tensor_init(t, CT_NF4, g_be->device, 2, (const int64_t[]){rows, cols}, st->codes)) die("nf4 tensor");
    t->quant = st;
    t->name = "bench.w";
    return own(t); /* its data (the codes) is freed with it */
}

/* A frozen weight [rows, cols] of dtype dt (nf4 quantized). */
static ct_tensor *t_weight(ct_dtype dt, int64_t rows, int64_t cols, uint64_t seed) {
    return dt == CT_NF4 ? t_nf4(rows, cols, seed, 0.02f) : t_rand(dt, SH2(rows, cols), seed, 0.02f);
}

/* ---------------------------------------------------------- ceilings */

static double sgemm_ms(int64_t m, int64_t n, int64_t k) {
    float *a = host_rand(CT_F32, m * k, 1, 1.0f), *b = host_rand(CT_F32, n * k, 2, 1.0f);
    float *c = need(malloc((size_t)(m * n) * sizeof *c), (size_t)(m * n) * sizeof *c);
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)k, b, (int)k,
                0.0f, c, (int)n);
    double first = now() - t0;
    int iters = g_iters;
    if (first * iters > g_budget) iters = first > g_budget ? 1 : (int)(g_budget / first);
    t0 = now();
    for (int i = 0; i < iters; i++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)k, b,
                    (int)k, 0.0f, c, (int)n);
    double ms = 1e3 * (now() - t0) / iters;
    free(a);
    free(b);
    free(c);
    return ms;
}

/* GFLOP/s of the plain GEMM C[m,n] = A[m,k]·B[n,k]ᵀ (bf16 or f32 inputs),
 * measured once per shape; 0 when it could not be measured. */
static double gemm_ceiling(int64_t m, int64_t n, int64_t k, bool bf16) {
    static struct {
        int64_t m, n, k;
        bool bf16;
        double gflops;
    } cache[64];
    static int n_cache;
    if (!g_gemm) bf16 = false; /* the CPU's ceiling is sgemm whatever the compute dtype */
    for (int i = 0; i < n_cache; i++)
        if (cache[i].m == m && cache[i].n == n && cache[i].k == k && cache[i].bf16 == bf16) return cache[i].gflops;
    double ms = 0.0;
    if (!g_gemm) {
        ms = sgemm_ms(m, n, k);
    } else if (g_gemm(m, n, k, bf16, g_iters, &ms)) {
        printf("# ceiling gemm %lldx%lldx%lld %s failed: %s\n", (long long)m, (long long)n, (long long)k,
               bf16 ? "bf16" : "f32", ct_last_error());
        ms = 0.0;
    }
    double gflops = ms > 0.0 ? 2.0 * (double)m * (double)n * (double)k / (ms * 1e-3) * 1e-9 : 0.0;
    if (n_cache < 64) {
        cache[n_cache].m = m, cache[n_cache].n = n, cache[n_cache].k = k;
        cache[n_cache].bf16 = bf16, cache[n_cache].gflops = gflops;
        n_cache++;
    }
    return gflops;
}

/* GB/s of be->copy over a 256 MiB buffer, bytes read + written. */
static double copy_bandwidth(void) {
    const size_t bytes = (size_t)256 << 20;
    void *src = block(bytes), *dst = block(bytes);
    if (g_be->zero(src, bytes) || g_be->copy(dst, src, bytes) || g_be->sync()) die("copy");
    double t0 = now();
    if (g_be->copy(dst, src, bytes) || g_be->sync()) die("copy");
    double first = now() - t0;
    int iters = g_iters;
    if (first * iters > g_budget) iters = first > g_budget ? 1 : (int)(g_budget / first);
    t0 = now();
    for (int i = 0; i < iters; i++)
        if (g_be->copy(dst, src, bytes)) die("copy");
    if (g_be->sync()) die("sync");
    double s = (now() - t0) / iters;
    release();
    return 2.0 * (double)bytes / s * 1e-9;
}

/* ------------------------------------------------------------- rows */

enum { MEM, GEMM };

/* One row: an entry, the variant it runs, and what its time is measured against. */
typedef struct {
    const char *entry;  /* the table entry's name */
    size_t off;         /* offsetof(ct_backend, entry): NULL there = skip */
    ct_op_id op;
    ct_op_query q;      /* asked of ct_backend_supports */
    char variant[96];
    int kind;           /* MEM: work in bytes; GEMM: work in FLOPs */
    double work;
    int64_t m, n, k;    /* GEMM: the plain GEMM whose rate is the ceiling */
    bool bf16;          /* its inputs */
    double goal;        /* % of the ceiling aimed at, 0: none */
} spec;

#define ENTRY(e) #e, offsetof(ct_backend, e)

static bool selected(const char *entry) {
    if (!g_ops) return true;
    for (const char *p = g_ops; *p;) {
        size_t len = strcspn(p, ",");
        if (len && strncmp(entry, p, len) == 0) return true;
        p += len + (p[len] == ',');
    }
    return false;
}

static bool has_entry(size_t off) {
    void (*fn)(void);
    memcpy(&fn, (const char *)g_be + off, sizeof fn);
    return fn != NULL;
}

/* "1.23 GB", "45.6 GFLOP" */
static const char *amount(char *buf, size_t cap, double v, const char *unit) {
    const char *pre = "";
    if (v >= 1e12) v *= 1e-12, pre = "T";
    else if (v >= 1e9) v *= 1e-9, pre = "G";
    else if (v >= 1e6) v *= 1e-6, pre = "M";
    else if (v >= 1e3) v *= 1e-3, pre = "k";
    snprintf(buf, cap, "%.3g %s%s", v, pre, unit);
    return buf;
}

static void print_note(const spec *s, const char *note) {
    printf("| %-17s | %-42s | %9s | %10s | %15s | %-24s | %6s | %s |\n", s->entry, s->variant, "skip", "-", "-",
           "-", "-", note);
    fflush(stdout);
}

/* True when the row should run: selected, and the backend has the entry and
 * the dtypes (else a skip row is printed when selected). Allocation for the
 * row happens after this answer. */
static bool row_begin(const spec *s) {
    if (!selected(s->entry)) return false;
    if (!has_entry(s->off)) {
        print_note(s, "skip: no entry in this backend");
        g_skipped++;
        return false;
    }
    if (!ct_backend_supports(g_be, s->op, &s->q)) {
        char why[96];
        snprintf(why, sizeof why, "skip: dtypes not offered (weight %s, compute %s)",
                 s->q.weight == ANY ? "any" : ct_dtype_name(s->q.weight),
                 s->q.compute == ANY ? "any" : ct_dtype_name(s->q.compute));
        print_note(s, why);
        g_skipped++;
        return false;
    }
    return true;
}

/* One call of the entry and its completion; CT_OK or the error. */
static int call_synced(int (*call)(void)) {
    int rc = call();
    if (rc == CT_OK) rc = g_be->sync();
    if (rc == CT_OK && g_scratch.used != 0)
        rc = ct_errorf(CT_ERUNTIME, "the entry left %zu bytes of its scratch arena in use", g_scratch.used);
    ct_arena_reset(&g_scratch);
    return rc;
}

/* Prints the row of s from its time per call; returns the % of the ceiling (0: none). */
static double print_row(const spec *s, double ms) {
    char work[32], rate[32], ceil[48], goal[32] = "-", pct[16] = "-";
    double r = s->work / (ms * 1e-3), ceiling = 0.0;
    if (s->kind == MEM) {
        amount(work, sizeof work, s->work, "B");
        snprintf(rate, sizeof rate, "%.4g GB/s", r * 1e-9);
        ceiling = g_copy_gbs;
        snprintf(ceil, sizeof ceil, "copy %.4g GB/s", ceiling);
        r *= 1e-9;
    } else {
        amount(work, sizeof work, s->work, "FLOP");
        snprintf(rate, sizeof rate, "%.4g GFLOP/s", r * 1e-9);
        r *= 1e-9;
        ceiling = gemm_ceiling(s->m, s->n, s->k, s->bf16);
        snprintf(ceil, sizeof ceil, "%s %.4g GFLOP/s", !g_gemm ? "sgemm" : s->bf16 ? "gemm bf16" : "gemm f32",
                 ceiling);
    }
    double p = ceiling > 0.0 ? 100.0 * r / ceiling : 0.0;
    if (ceiling > 0.0) snprintf(pct, sizeof pct, "%.1f", p);
    if (s->goal > 0.0) snprintf(goal, sizeof goal, ">=%.0f %s", s->goal, ceiling <= 0.0 ? "?" : p >= s->goal ? "ok" : "NO");
    printf("| %-17s | %-42s | %9.3f | %10s | %15s | %-24s | %6s | %s |\n", s->entry, s->variant, ms, work, rate, ceil,
           pct, goal);
    fflush(stdout);
    return p;
}

/* Warm-up, then the timed calls; prints the row. Returns ms per call, or -1
 * when the entry failed (an error row is printed). */
static double row_run(const spec *s, int (*call)(void)) {
    double t0 = now();
    int rc = call_synced(call);
    double first = now() - t0;
    int iters = g_iters;
    if (rc == CT_OK && first * iters > g_budget) iters = first > g_budget ? 1 : (int)(g_budget / first);
    if (rc == CT_OK) {
        t0 = now();
        for (int i = 0; i < iters && rc == CT_OK; i++) {
            rc = call();
            ct_arena_reset(&g_scratch);
        }
        if (rc == CT_OK) rc = g_be->sync();
    }
    if (rc != CT_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "ERROR: %s", ct_last_error());
        printf("| %-17s | %-42s | %9s | %10s | %15s | %-24s | %6s | %s |\n", s->entry, s->variant, "error", "-", "-",
               "-", "-", msg);
        fflush(stdout);
        g_errors++;
        ct_error_clear();
        return -1.0;
    }
    double ms = 1e3 * (now() - t0) / iters;
    print_row(s, ms);
    g_ran++;
    return ms;
}

/* ------------------------------------------------------------ groups */

static const uint64_t SEED = 0x5eedu;

/* embedding: table bf16 [V, D] (fwd), f32 [V, D] (bwd: dtable += scatter dy), ids [T]. */
static struct {
    ct_tensor *table, *ids, *y, *dy, *dtable;
} E;
static int call_embedding_fwd(void) { return g_be->embedding_fwd(E.table, E.ids, E.y); }
static int call_embedding_bwd(void) { return g_be->embedding_bwd(E.ids, E.dy, E.dtable); }

static void group_embedding(void) {
    const int64_t T = S.T, D = S.D, V = S.V, a = (int64_t)ct_dtype_bytes(A, 1);
    int32_t *ids = need(malloc((size_t)T * sizeof *ids), (size_t)T * sizeof *ids);
    for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)(ct_mix64(SEED + (uint64_t)t) % (uint64_t)V);
    memset(&E, 0, sizeof E);
    spec f = {ENTRY(embedding_fwd), CT_OP_EMBEDDING, {CT_BF16, ANY}, "table bf16", MEM,
              (double)T * D * (2 + a) + 4.0 * T, .goal = 0};
    if (row_begin(&f)) {
        E.ids = t_i32(T, ids);
        E.table = t_rand(CT_BF16, SH2(V, D), SEED + 1, 0.02f);
        E.y = t_new(A, SH2(T, D));
        row_run(&f, call_embedding_fwd);
    }
    /* bwd: dy read, the T rows of dtable read and written */
    spec b = {ENTRY(embedding_bwd), CT_OP_EMBEDDING, {CT_F32, ANY}, "dtable f32 += scatter(dy)", MEM,
              (double)T * D * (a + 8) + 4.0 * T, .goal = 0};
    if (row_begin(&b)) {
        if (!E.ids) E.ids = t_i32(T, ids);
        E.dy = t_rand(A, SH2(T, D), SEED + 2, 1.0f);
        E.dtable = t_zero(CT_F32, SH2(V, D));
        row_run(&b, call_embedding_bwd);
    }
    free(ids);
    release();
}

/* rmsnorm: x, y, dy, dx [T, D]; w bf16 [D] frozen (dw NULL); rstd f32 [T].
 * add_rmsnorm_fwd: a, b, sum [T, D] too (sum = a + b, y = rmsnorm(sum)·w):
 * the work is a and b read, sum and y written, against add_fwd's three
 * passes plus rmsnorm_fwd's two. */
static struct {
    ct_tensor *x, *w, *y, *rstd, *dy, *dx, *a, *b, *sum;
} R;
static int call_rmsnorm_fwd(void) { return g_be->rmsnorm_fwd(R.x, R.w, 1e-5f, R.y, R.rstd); }
static int call_rmsnorm_bwd(void) { return g_be->rmsnorm_bwd(R.x, R.w, R.rstd, R.dy, R.dx, NULL); }
static int call_add_rmsnorm_fwd(void) { return g_be->add_rmsnorm_fwd(R.a, R.b, R.w, 1e-5f, R.sum, R.y, R.rstd); }

static void group_rmsnorm(void) {
    const int64_t T = S.T, D = S.D, a = (int64_t)ct_dtype_bytes(A, 1);
    char v[64];
    snprintf(v, sizeof v, "[%lld, %lld] w bf16", (long long)T, (long long)D);
    spec f = {ENTRY(rmsnorm_fwd), CT_OP_RMSNORM, {CT_BF16, ANY}, "", MEM, 2.0 * T * D * a + 4.0 * T + 2.0 * D,
              .goal = 70};
    spec b = {ENTRY(rmsnorm_bwd), CT_OP_RMSNORM, {CT_BF16, ANY}, "", MEM, 4.0 * T * D * a + 4.0 * T + 2.0 * D,
              .goal = 70};
    spec fa = {ENTRY(add_rmsnorm_fwd), CT_OP_RMSNORM, {CT_BF16, ANY}, "", MEM,
               4.0 * T * D * a + 4.0 * T + 2.0 * D, .goal = 70};
    snprintf(f.variant, sizeof f.variant, "%s", v);
    snprintf(b.variant, sizeof b.variant, "%s, dx += (dw NULL)", v);
    snprintf(fa.variant, sizeof fa.variant, "sum = a + b; norm %s", v);
    bool run_f = row_begin(&f), run_b = row_begin(&b), run_fa = row_begin(&fa);
    if (!run_f && !run_b && !run_fa) return;
    R.x = t_rand(A, SH2(T, D), SEED + 3, 1.0f);
    R.w = t_rand(CT_BF16, SH1(D), SEED + 4, 1.0f);
    R.y = t_new(A, SH2(T, D));
    R.rstd = t_new(CT_F32, SH1(T));
    if (run_f) row_run(&f, call_rmsnorm_fwd);
    if (run_b) {
        if (!run_f && (g_be->rmsnorm_fwd == NULL || call_synced(call_rmsnorm_fwd))) die("rmsnorm_fwd for rstd");
        R.dy = t_rand(A, SH2(T, D), SEED + 5, 1.0f);
        R.dx = t_zero(A, SH2(T, D));
        row_run(&b, call_rmsnorm_bwd);
    }
    if (run_fa) {
        R.a = t_rand(A, SH2(T, D), SEED + 42, 1.0f);
        R.b = t_rand(A, SH2(T, D), SEED + 43, 1.0f);
        R.sum = t_new(A, SH2(T, D));
        row_run(&fa, call_add_rmsnorm_fwd);
    }
    release();
}

/* rope on the packed wqkv output x [T, C] (groups of G+2 heads, G+1 rotated),
 * positions 0..T-1, theta 1e6 (InternLM2); y, dy, dx [T, C]. */
static struct {
    ct_tensor *x, *pos, *y, *dy, *dx;
    ct_rope_params p;
} P;
static int call_rope_fwd(void) { return g_be->rope_fwd(P.x, P.pos, &P.p, P.y); }
static int call_rope_bwd(void) { return g_be->rope_bwd(P.dy, P.pos, &P.p, P.dx); }

static void group_rope(void) {
    const int64_t T = S.T, a = (int64_t)ct_dtype_bytes(A, 1);
    spec f = {ENTRY(rope_fwd), CT_OP_ROPE, {ANY, ANY}, "", MEM, 2.0 * T * C * a + 4.0 * T, .goal = 70};
    spec b = {ENTRY(rope_bwd), CT_OP_ROPE, {ANY, ANY}, "", MEM, 3.0 * T * C * a + 4.0 * T, .goal = 70};
    snprintf(f.variant, sizeof f.variant, "qkv [%lld, %lld] -> y", (long long)T, (long long)C);
    snprintf(b.variant, sizeof b.variant, "qkv [%lld, %lld], dx +=", (long long)T, (long long)C);
    bool run_f = row_begin(&f), run_b = row_begin(&b);
    if (!run_f && !run_b) return;
    int32_t *pos = need(malloc((size_t)T * sizeof *pos), (size_t)T * sizeof *pos);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
    P.pos = t_i32(T, pos);
    free(pos);
    P.p = (ct_rope_params){.head_dim = (int)S.hd, .group = (int)G + 2, .rotate_per_group = (int)G + 1,
                           .theta = 1e6, .scaling = CT_ROPE_NONE, .factor = 1.0, .max_pos = 32768,
                           .seq_len = T};
    if (run_f) {
        P.x = t_rand(A, SH2(T, C), SEED + 6, 1.0f);
        P.y = t_new(A, SH2(T, C));
        row_run(&f, call_rope_fwd);
    }
    if (run_b) {
        P.dy = t_rand(A, SH2(T, C), SEED + 7, 1.0f);
        P.dx = t_zero(A, SH2(T, C));
        row_run(&b, call_rope_bwd);
    }
    release();
}

/* attention: qkv [T, C] (one sequence), out [T, W], lse f32 [Hq, T]; dout [T, W], dqkv [T, C]. */
static struct {
    ct_tensor *qkv, *out, *lse, *dout, *dqkv;
    ct_attn_params p;
} AT;
static int call_attention_fwd(void) {
    return g_be->attention_fwd(AT.qkv, NULL, &AT.p, AT.out, AT.lse, &g_scratch);
}
static int call_attention_bwd(void) {
    return g_be->attention_bwd(AT.qkv, NULL, &AT.p, AT.out, AT.lse, AT.dout, AT.dqkv, &g_scratch);
}

static void group_attention(ct_dtype cd) {
    const int64_t T = S.T, n = S.attn_ceil;
    const double fwd = 2.0 * (double)T * T * S.Hq * S.hd; /* 2 GEMMs of 2·T²·Hq·hd, half masked */
    spec f = {ENTRY(attention_fwd), CT_OP_ATTENTION, {ANY, cd}, "", GEMM, fwd, n ? n : T, n ? n : T,
              n ? n : S.D, true, 0};
    spec b = f;
    b.entry = "attention_bwd", b.off = offsetof(ct_backend, attention_bwd), b.work = 2.5 * fwd;
    char v[64];
    snprintf(v, sizeof v, "causal T=%lld %lld/%lld x %lld, %s", (long long)T, (long long)S.Hq, (long long)S.Hkv,
             (long long)S.hd, ct_dtype_name(cd));
    snprintf(f.variant, sizeof f.variant, "%s", v);
    snprintf(b.variant, sizeof b.variant, "%s, dqkv +=", v);
    bool run_f = row_begin(&f), run_b = row_begin(&b);
    if (!run_f && !run_b) return;
    AT.p = (ct_attn_params){.n_kv_heads = (int)S.Hkv, .group = (int)G, .head_dim = (int)S.hd,
                            .scale = 1.0f / sqrtf((float)S.hd), .compute = cd};
    AT.qkv = t_rand(A, SH2(T, C), SEED + 8, 1.0f);
    AT.out = t_new(A, SH2(T, W));
    AT.lse = t_new(CT_F32, SH2(S.Hq, T));
    double ms_f = -1.0, ms_b = -1.0;
    if (run_f) ms_f = row_run(&f, call_attention_fwd);
    if (run_b) {
        if (!run_f && (g_be->attention_fwd == NULL || call_synced(call_attention_fwd))) die("attention_fwd for lse");
        AT.dout = t_rand(A, SH2(T, W), SEED + 9, 1.0f);
        AT.dqkv = t_zero(A, SH2(T, C));
        ms_b = row_run(&b, call_attention_bwd);
    }
    if (ms_f > 0.0 && ms_b > 0.0) { /* the goal is on forward + backward */
        spec fb = f;
        fb.entry = "attention fwd+bwd", fb.work = f.work + b.work, fb.goal = 40;
        print_row(&fb, ms_f + ms_b);
    }
    release();
}

/* attention_decode: one token at position T-1 against KV caches [T, Hkv, hd]
 * in the activation dtype. */
static struct {
    ct_tensor *qkv, *kc, *vc, *out;
    ct_attn_params p;
} DC;
static int call_attention_decode(void) {
    return g_be->attention_decode(DC.qkv, S.T - 1, &DC.p, DC.kc, DC.vc, DC.out, &g_scratch);
}

static void group_decode(void) {
    const int64_t T = S.T, a = (int64_t)ct_dtype_bytes(A, 1);
    spec s = {ENTRY(attention_decode), CT_OP_ATTENTION_DECODE, {ANY, ANY}, "", MEM,
              2.0 * T * S.Hkv * S.hd * a + (double)(C + W) * a, .goal = 0};
    snprintf(s.variant, sizeof s.variant, "1 token at %lld, caches %s [%lld, %lld, %lld]", (long long)(T - 1),
             ct_dtype_name(A), (long long)T, (long long)S.Hkv, (long long)S.hd);
    if (!row_begin(&s)) return;
    DC.p = (ct_attn_params){.n_kv_heads = (int)S.Hkv, .group = (int)G, .head_dim = (int)S.hd,
                            .scale = 1.0f / sqrtf((float)S.hd)};
    DC.qkv = t_rand(A, SH2(1, C), SEED + 10, 1.0f);
    DC.kc = t_rand(A, SH3(T, S.Hkv, S.hd), SEED + 11, 1.0f);
    DC.vc = t_rand(A, SH3(T, S.Hkv, S.hd), SEED + 12, 1.0f);
    DC.out = t_new(A, SH2(1, W));
    row_run(&s, call_attention_decode);
    release();
}

/* swiglu: gate, up, y, dy, dgate, dup [T, F]. */
static struct {
    ct_tensor *g, *u, *y, *dy, *dg, *du;
} SW;
static int call_swiglu_fwd(void) { return g_be->swiglu_fwd(SW.g, SW.u, SW.y); }
static int call_swiglu_bwd(void) { return g_be->swiglu_bwd(SW.g, SW.u, SW.dy, SW.dg, SW.du); }

static void group_swiglu(void) {
    const int64_t T = S.T, F = S.F, a = (int64_t)ct_dtype_bytes(A, 1);
    spec f = {ENTRY(swiglu_fwd), CT_OP_SWIGLU, {ANY, ANY}, "", MEM, 3.0 * T * F * a, .goal = 70};
    spec b = {ENTRY(swiglu_bwd), CT_OP_SWIGLU, {ANY, ANY}, "", MEM, 7.0 * T * F * a, .goal = 70};
    snprintf(f.variant, sizeof f.variant, "[%lld, %lld]", (long long)T, (long long)F);
    snprintf(b.variant, sizeof b.variant, "[%lld, %lld], dgate dup +=", (long long)T, (long long)F);
    bool run_f = row_begin(&f), run_b = row_begin(&b);
    if (!run_f && !run_b) return;
    SW.g = t_rand(A, SH2(T, F), SEED + 13, 4.0f);
    SW.u = t_rand(A, SH2(T, F), SEED + 14, 1.0f);
    if (run_f) {
        SW.y = t_new(A, SH2(T, F));
        row_run(&f, call_swiglu_fwd);
    }
    if (run_b) {
        SW.dy = t_rand(A, SH2(T, F), SEED + 15, 1.0f);
        SW.dg = t_zero(A, SH2(T, F));
        SW.du = t_zero(A, SH2(T, F));
        row_run(&b, call_swiglu_bwd);
    }
    release();
}

/* the residual add: y = a + b and y += alpha·x over [T, D]. */
static struct {
    ct_tensor *a, *b, *y;
} AD;
static int call_add_fwd(void) { return g_be->add_fwd(AD.a, AD.b, AD.y); }
static int call_axpy(void) { return g_be->axpy(1.0f, AD.a, AD.y); }

static void group_add(void) {
    const int64_t T = S.T, D = S.D, a = (int64_t)ct_dtype_bytes(A, 1);
    spec f = {ENTRY(add_fwd), CT_OP_ADD, {ANY, ANY}, "", MEM, 3.0 * T * D * a, .goal = 70};
    spec x = {ENTRY(axpy), CT_OP_ADD, {ANY, ANY}, "", MEM, 3.0 * T * D * a, .goal = 70};
    snprintf(f.variant, sizeof f.variant, "y = a + b [%lld, %lld]", (long long)T, (long long)D);
    snprintf(x.variant, sizeof x.variant, "y += x [%lld, %lld]", (long long)T, (long long)D);
    bool run_f = row_begin(&f), run_x = row_begin(&x);
    if (!run_f && !run_x) return;
    AD.a = t_rand(A, SH2(T, D), SEED + 16, 1.0f);
    AD.b = t_rand(A, SH2(T, D), SEED + 17, 1.0f);
    AD.y = t_zero(A, SH2(T, D));
    if (run_f) row_run(&f, call_add_fwd);
    if (run_x) row_run(&x, call_axpy);
    release();
}

/* lora_linear: x [T, in], W [out, in] frozen, A [r, in], B [out, r] (f32),
 * y [T, out], u [T, r]; dy [T, out], dx [T, in], dA, dB. Dropout 0.1, scale
 * alpha/r = 16/64 (the 7B QLoRA configs). */
static struct {
    ct_tensor *x, *y, *u, *dy, *dx, *da, *db;
    ct_linear lin;
} L;
static int call_lora_fwd(void) { return g_be->lora_linear_fwd(L.x, &L.lin, SEED, L.y, L.u, &g_scratch); }
static int call_lora_bwd(void) {
    return g_be->lora_linear_bwd(L.x, &L.lin, SEED, L.u, L.dy, L.dx, L.da, L.db, &g_scratch);
}

static void group_lora(const char *name, int64_t in, int64_t out, ct_dtype wdt) {
    static const ct_dtype computes[2] = {CT_BF16, CT_F32};
    const int64_t T = S.T, r = S.r;
    const double base = 2.0 * T * in * out, lora = 2.0 * T * r * (in + out);
    spec rows[2][2];
    bool run[2][2], any = false;
    for (int c = 0; c < 2; c++) {
        ct_dtype cd = computes[c];
        bool goal = wdt == CT_NF4 && cd == CT_BF16;
        rows[c][0] = (spec){ENTRY(lora_linear_fwd), CT_OP_LORA_LINEAR, {wdt, cd}, "", GEMM, base + lora, T, out,
                            in, cd == CT_BF16, goal ? 80 : 0};
        rows[c][1] = (spec){ENTRY(lora_linear_bwd), CT_OP_LORA_LINEAR, {wdt, cd}, "", GEMM, base + 2 * lora, T,
                            in, out, cd == CT_BF16, goal ? 80 : 0};
        char v[64];
        snprintf(v, sizeof v, "%.8s %lld->%lld w=%s %s", name, (long long)in, (long long)out,
                 wdt == CT_NF4 ? "nf4-dq" : ct_dtype_name(wdt), ct_dtype_name(cd));
        snprintf(rows[c][0].variant, sizeof rows[c][0].variant, "%s", v);
        snprintf(rows[c][1].variant, sizeof rows[c][1].variant, "%s, dx dA dB", v);
        for (int d = 0; d < 2; d++) any |= (run[c][d] = row_begin(&rows[c][d]));
    }
    if (!any) return;
    L.lin = (ct_linear){.w = t_weight(wdt, out, in, SEED + 20), .scale = 0.25f, .dropout = 0.1f, .id = 1};
    L.lin.a = t_rand(CT_F32, SH2(r, in), SEED + 21, 0.02f);
    L.lin.b = t_rand(CT_F32, SH2(out, r), SEED + 22, 0.02f);
    L.x = t_rand(A, SH2(T, in), SEED + 23, 1.0f);
    L.y = t_new(A, SH2(T, out));
    L.u = t_new(A, SH2(T, r));
    for (int c = 0; c < 2; c++) {
        L.lin.compute = computes[c];
        if (run[c][0]) row_run(&rows[c][0], call_lora_fwd);
        if (!run[c][1]) continue;
        if (!run[c][0] && call_synced(call_lora_fwd)) die("lora_linear_fwd for u");
        if (!L.dy) {
            L.dy = t_rand(A, SH2(T, out), SEED + 24, 1.0f);
            L.dx = t_zero(A, SH2(T, in));
            L.da = t_zero(CT_F32, SH2(r, in));
            L.db = t_zero(CT_F32, SH2(out, r));
        }
        row_run(&rows[c][1], call_lora_bwd);
    }
    memset(&L, 0, sizeof L);
    release();
}

/* linear_xent: x [T, D], head W bf16 [V, D] (no LoRA), labels [T] (every 10th
 * -100); loss only, or dx [T, D] += its gradient too. */
static struct {
    ct_tensor *x, *labels, *dx;
    ct_linear head;
    float grad_scale;
    bool grads;
} X;
static int call_linear_xent(void) {
    double nll = 0.0;
    int64_t n = 0;
    return g_be->linear_xent_fwd(X.x, &X.head, X.labels, X.grad_scale, &nll, &n, X.grads ? X.dx : NULL, NULL,
                                 NULL, &g_scratch);
}

static void group_xent(void) {
    static const ct_dtype computes[2] = {CT_BF16, CT_F32};
    const int64_t T = S.T, D = S.D, V = S.V;
    spec rows[2][2];
    bool run[2][2], any = false;
    for (int c = 0; c < 2; c++)
        for (int g = 0; g < 2; g++) {
            rows[c][g] = (spec){ENTRY(linear_xent_fwd), CT_OP_LINEAR_XENT, {CT_BF16, computes[c]}, "", GEMM,
                                (g ? 4.0 : 2.0) * T * V * D, T, V, D, computes[c] == CT_BF16, 0};
            snprintf(rows[c][g].variant, sizeof rows[c][g].variant, "V=%lld w=bf16 %s, %s", (long long)V,
                     ct_dtype_name(computes[c]), g ? "loss + dx" : "loss only");
            any |= (run[c][g] = row_begin(&rows[c][g]));
        }
    if (!any) return;
    int32_t *lab = need(malloc((size_t)T * sizeof *lab), (size_t)T * sizeof *lab);
    for (int64_t t = 0; t < T; t++) lab[t] = t % 10 == 9 ? -100 : (int32_t)(ct_mix64(SEED + 99 + (uint64_t)t) % (uint64_t)V);
    X.labels = t_i32(T, lab);
    free(lab);
    X.x = t_rand(A, SH2(T, D), SEED + 30, 1.0f);
    X.dx = t_zero(A, SH2(T, D));
    X.head = (ct_linear){.w = t_weight(CT_BF16, V, D, SEED + 31)};
    X.grad_scale = 1.0f / (float)T;
    for (int c = 0; c < 2; c++)
        for (int g = 0; g < 2; g++) {
            if (!run[c][g]) continue;
            X.head.compute = computes[c];
            X.grads = g;
            row_run(&rows[c][g], call_linear_xent);
        }
    release();
}

/* The optimizer over the LoRA parameters of every layer (A and B of wqkv,
 * wo, w1, w3, w2): one slot per tensor, slices of four f32 buffers p, g, m, v. */
#define MAX_SLOTS 1024
static struct {
    ct_adamw_slot slots[MAX_SLOTS];
    const float *xs[MAX_SLOTS];
    float *gs[MAX_SLOTS];
    int64_t ns[MAX_SLOTS];
    double sums[MAX_SLOTS];
    size_t n;
    ct_adamw_scalars sc;
} O;
static int call_adamw(void) { return g_be->adamw_update(&O.sc, O.slots, O.n); }
static int call_sum_squares(void) { return g_be->sum_squares(O.xs, O.ns, O.n, O.sums); }
static int call_scale(void) { return g_be->scale(0.999f, O.gs, O.ns, O.n); }

static int64_t lora_param_count(void) {
    const int64_t mods[5][2] = {{S.D, C}, {W, S.D}, {S.D, S.F}, {S.D, S.F}, {S.F, S.D}}; /* in, out */
    int64_t n = 0;
    for (int m = 0; m < 5; m++) n += S.r * (mods[m][0] + mods[m][1]);
    return n * S.layers;
}

static void group_optimizer(void) {
    const int64_t N = lora_param_count();
    char v[64];
    snprintf(v, sizeof v, "%lld layers x 10 tensors, %.4gM params", (long long)S.layers, (double)N * 1e-6);
    spec ad = {ENTRY(adamw_update), CT_OP_ADAMW, {ANY, ANY}, "", MEM, 28.0 * N, .goal = 70};
    spec ss = {ENTRY(sum_squares), CT_OP_GRAD_NORM, {ANY, ANY}, "", MEM, 4.0 * N, .goal = 0};
    spec sc = {ENTRY(scale), CT_OP_GRAD_NORM, {ANY, ANY}, "", MEM, 8.0 * N, .goal = 70};
    snprintf(ad.variant, sizeof ad.variant, "%s", v);
    snprintf(ss.variant, sizeof ss.variant, "%s", v);
    snprintf(sc.variant, sizeof sc.variant, "%s", v);
    bool run_a = row_begin(&ad), run_s = row_begin(&ss), run_c = row_begin(&sc);
    if (!run_a && !run_s && !run_c) return;
    ct_tensor *p = t_rand(CT_F32, SH1(N), SEED + 40, 0.02f), *g = t_rand(CT_F32, SH1(N), SEED + 41, 1e-3f);
    ct_tensor *m = t_zero(CT_F32, SH1(N)), *vv = t_zero(CT_F32, SH1(N));
    const int64_t mods[5][2] = {{S.D, C}, {W, S.D}, {S.D, S.F}, {S.D, S.F}, {S.F, S.D}};
    int64_t off = 0;
    O.n = 0;
    for (int64_t l = 0; l < S.layers; l++)
        for (int md = 0; md < 5; md++)
            for (int ab = 0; ab < 2; ab++) {
                int64_t n = S.r * mods[md][ab]; /* A [r, in], B [out, r] */
                if (O.n == MAX_SLOTS) break;
                O.slots[O.n] = (ct_adamw_slot){(float *)p->data + off, (const float *)g->data + off,
                                               (float *)m->data + off, (float *)vv->data + off, n};
                O.xs[O.n] = (const float *)g->data + off;
                O.gs[O.n] = (float *)g->data + off;
                O.ns[O.n] = n;
                O.n++;
                off += n;
            }
    const double lr = 2e-4, b1 = 0.9, b2 = 0.999, wd = 0.01;
    const int step = 3;
    O.sc = (ct_adamw_scalars){.decay = (float)(1.0 - lr * wd), .w1 = (float)(1.0 - b1), .b2 = (float)b2,
                              .w2 = (float)(1.0 - b2), .neg_step = (float)(-lr / (1.0 - pow(b1, step))),
                              .bc2_sqrt = (float)sqrt(1.0 - pow(b2, step)), .eps = 1e-8f, .use_decay = 1};
    if (run_a) row_run(&ad, call_adamw);
    if (run_s) row_run(&ss, call_sum_squares);
    if (run_c) row_run(&sc, call_scale);
    release();
}

/* ------------------------------------------------------------- main */

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--backend cpu|cuda|cuda-emu|guarded] [--shape 7b|small] [--iters N] [--budget SECONDS]\n"
            "          [--ops entry-prefix,...]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv) {
    const char *backend = "cpu", *shape = "7b";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) usage(argv[0]);
        if (!strcmp(a, "--backend")) backend = val;
        else if (!strcmp(a, "--shape")) shape = val;
        else if (!strcmp(a, "--iters")) g_iters = atoi(val);
        else if (!strcmp(a, "--budget")) g_budget = atof(val);
        else if (!strcmp(a, "--ops")) g_ops = val;
        else usage(argv[0]);
        i++;
    }
    if (g_iters < 1 || !(g_budget > 0.0)) usage(argv[0]);
    size_t si = 0;
    while (si < sizeof k_shapes / sizeof *k_shapes && strcmp(k_shapes[si].name, shape)) si++;
    if (si == sizeof k_shapes / sizeof *k_shapes) usage(argv[0]);
    S = k_shapes[si];
    G = S.Hq / S.Hkv, C = S.Hkv * (G + 2) * S.hd, W = S.Hq * S.hd;

    enum { CAP = 8 };
    const char *names[CAP], *why[CAP];
    const ct_backend *bes[CAP];
    int n = ct_backend_list(names, bes, why, CAP), bi = 0;
    while (bi < n && strcmp(names[bi], backend)) bi++;
    if (bi == n) {
        fprintf(stderr, "bench_ops: this build has no backend '%s'\n", backend);
        return 2;
    }
    if (!bes[bi]) {
        fprintf(stderr, "bench_ops: backend %s is not available: %s\n", backend, why[bi]);
        return 2;
    }
    g_be = bes[bi], g_be_name = names[bi], A = g_be->act_dtype;

    const char *device = NULL;
    char cpu_desc[64];
    if (g_be->device == CT_CUDA) g_gemm = ct_cuda_bench_gemm, device = ct_cuda_device_name();
    else if (g_be->device == CT_CUDA_EMU) g_gemm = ct_cuda_emu_bench_gemm, device = ct_cuda_emu_device_name();
    if (!device) {
        snprintf(cpu_desc, sizeof cpu_desc, "host CPU, %d OpenMP threads", omp_get_max_threads());
        device = g_gemm ? "(unknown device)" : cpu_desc;
    }
    printf("# bench_ops: backend %s on %s\n", g_be_name, device);
    printf("# shape %s: T=%lld, hidden %lld, heads %lld/%lld x %lld, ffn %lld, vocab %lld, LoRA r=%lld on %lld "
           "layers (%.4gM parameters); activations %s; %d timed calls (at most %.1f s) after a warm-up\n",
           S.name, (long long)S.T, (long long)S.D, (long long)S.Hq, (long long)S.Hkv, (long long)S.hd,
           (long long)S.F, (long long)S.V, (long long)S.r, (long long)S.layers, lora_param_count() * 1e-6,
           ct_dtype_name(A), g_iters, g_budget);
    ct_arena_init(&g_scratch, g_be->mem, (size_t)64 << 20);
    g_copy_gbs = copy_bandwidth();
    printf("# copy bandwidth (be->copy of 256 MiB, bytes read + written): %.1f GB/s\n", g_copy_gbs);
    printf("# work: bytes an entry must move, or FLOPs (2·M·N·K per GEMM; causal attention 2·T²·Hq·hd "
           "forward, 2.5x that backward); %% ceil: rate over the ceiling's rate (copy bandwidth, a plain GEMM "
           "of the entry's shape, or for attention a bf16 GEMM of %lld³)\n\n",
           (long long)(S.attn_ceil ? S.attn_ceil : S.T));
    printf("| %-17s | %-42s | %9s | %10s | %15s | %-24s | %6s | %s |\n", "entry", "variant", "ms/call", "work",
           "rate", "ceiling", "% ceil", "goal");
    printf("|---|---|---|---|---|---|---|---|\n");
    fflush(stdout);

    group_embedding();
    group_rmsnorm();
    group_rope();
    group_attention(CT_F32);
    group_attention(CT_BF16);
    group_decode();
    group_swiglu();
    group_add();
    const struct {
        const char *name;
        int64_t in, out;
    } lins[3] = {{"wqkv", S.D, C}, {"w1", S.D, S.F}, {"w2", S.F, S.D}};
    for (int i = 0; i < 3; i++) {
        group_lora(lins[i].name, lins[i].in, lins[i].out, CT_NF4);
        group_lora(lins[i].name, lins[i].in, lins[i].out, CT_BF16);
    }
    group_xent();
    group_optimizer();

    printf("\n# %d rows ran, %d skipped, %d failed; peak device memory held by bench_ops: %.1f MiB of tensors "
           "+ %.1f MiB scratch arena\n",
           g_ran, g_skipped, g_errors, (double)g_peak / (1 << 20), (double)ct_arena_reserved(&g_scratch) / (1 << 20));
    ct_arena_free(&g_scratch);
    return g_errors ? 1 : 0;
}
