/* Parity harness: every entry of a backend's kernel table against the CPU
 * backend, kernel by kernel (the idea of ggml's test-backend-ops).
 *
 *   test_parity BACKEND    cpu, guarded or cuda (a name ct_backend_list gives)
 *   test_parity            every available backend, then cpu
 *
 * k_rows below is a table with one row per (entry, variant): a name, the op
 * whose capability is asked (ct_backend_supports with the row's weight and
 * compute dtypes), the entry it calls, a run function, the dtypes, a tolerance
 * and a few knobs (flags, G, rope scaling, dropout, T, D). Adding a variant is
 * one row. A row the backend lacks (NULL entry, or dtypes it refuses) is
 * printed as "skip <row>: <backend> lacks it" and counted as skipped.
 *
 * What a row does: builds seeded random inputs on the host; then for the CPU
 * backend (the reference, "REF") and the backend under test ("DUT") it
 * allocates every tensor with ct_tensor_new(be, ...) and fills it only through
 * be->upload; calls the entry; and reads results only through be->download.
 * The guarded backend's memory is PROT_NONE outside its entries, so any
 * direct access to a tensor's data from the harness, or from library code
 * between calls, crashes: kernels and the memory contract are checked at once.
 * - outputs a kernel WRITES are uploaded as NaN first: an element the kernel
 *   leaves unwritten fails the comparison;
 * - grads a kernel ACCUMULATES into (+=) start from the same random values on
 *   both sides, which checks the += semantics;
 * - inputs that are another kernel's outputs (rmsnorm's rstd, attention's out
 *   and lse, lora_linear's u) come from the CPU's forward and are uploaded to
 *   both sides, so each row tests one kernel;
 * - nf4 weights: the quant state's arrays (codes, absmax or the double-
 *   quantized absmax) live in backend memory; the ct_quant_state struct is on
 *   the host and points at them (what the CPU kernels read: quant.h);
 * - after each call the scratch arena (ct_arena_init(&a, be->mem, ...)) must
 *   be rewound (used == 0).
 * Comparison: |got - want| <= atol + rtol·|want| (the worst element is
 * reported, as ct_check_close_f does). The row's tolerance is what a kernel of
 * its own (a GPU's) needs: element-wise f32 tight, reductions and GEMMs looser,
 * bf16 compute looser still. When the DUT is "cpu" or "guarded" (the same CPU
 * kernels) every result must instead be bit-identical.
 *
 * Exit: 0 all run rows passed, 1 a failure, 77 (ctest's skip) when the backend
 * is not in this build or machine, or when it ran no row at all. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/backend.h"
#include "autograd/cpu/cpu_kernels.h" /* the CPU kernels' tile bounds (F_SMALL_TILES) */
#include "autograd/ct_inline.h"      /* bf16 rounding of the inputs */
#include "autograd/ops.h"             /* ct_segment_runs */
#include "autograd/quant.h"
#include "testutil.h"

/* ------------------------------------------------------------- the table */

struct pcase;
typedef void (*run_fn)(const struct pcase *c);

enum {
    F_PACKED = 1 << 0,      /* attention: packed samples (runs), else one sequence */
    F_INPLACE = 1 << 1,     /* rope_fwd: y = x; add_fwd: y = a; add_rmsnorm_fwd: sum = a */
    F_NO_DX = 1 << 2,       /* backward: the input's grad is NULL (dx, dgate) */
    F_NO_DW = 1 << 3,       /* backward: the other grads are NULL (dw, dup, dA and dB) */
    F_NO_LORA = 1 << 4,     /* lora_linear, linear_xent: no A, B */
    F_NO_SAVE = 1 << 5,     /* forward saves nothing: (add_)rmsnorm's rstd, lora_linear's u NULL */
    F_NULL_OUT = 1 << 6,    /* lora_linear: y NULL (only u); decode: first feed without out */
    F_NESTED = 1 << 7,      /* nf4 weight with double-quantized absmax */
    F_SMALL_TILES = 1 << 8, /* the CPU kernels' weight tiles and logits blocks made tiny (more
                             * of their code paths; another backend's kernels ignore it) */
    F_DECAY = 1 << 9,       /* adamw: weight decay on */
};

typedef struct pcase {
    const char *name;
    ct_op_id op;            /* capability asked before the row runs */
    size_t entry;           /* offsetof(ct_backend, <entry>): must be non-NULL too */
    const char *entry_name;
    run_fn run;
    ct_op_query q;          /* dtypes asked, and used by the run: q.weight is the frozen
                             * weight / table dtype, q.compute the GEMM math */
    double atol, rtol;      /* for a backend with kernels of its own */
    unsigned flags;         /* F_* */
    int G;                  /* attention, decode: query heads per KV head; rope: 0 = plain
                             * [T, H, hd], G > 0 = InternLM2 wqkv (group G+2, rotate G+1) */
    int scaling;            /* rope: CT_ROPE_* */
    float dropout;          /* lora_linear, linear_xent: LoRA input dropout */
    int T;                  /* tokens / rows; 0 = the run's default */
    int D;                  /* rmsnorm, swiglu, embedding_fwd: the last dim; attention, rope:
                             * head_dim (0 = 16); 0 = the run's default */
} pcase;

#define ENTRY(e) offsetof(ct_backend, e), #e
#define ANY CT_DTYPE_COUNT
#define Q(w, c) {w, c}
#define ANYQ Q(ANY, ANY)
/* Tolerances (atol, rtol) for a backend with its own kernels. */
#define EXACT 0.0, 0.0         /* copies and single IEEE operations: same bits */
#define TOL_EW 1e-6, 1e-5      /* element-wise f32 math (contraction, exp) */
#define TOL_RED 1e-5, 1e-4     /* f32 row reductions, softmax (summation order) */
#define TOL_OPT 1e-7, 1e-6     /* optimizer update */
#define TOL_SUM 0.0, 1e-9      /* sums of squares in double */
/* GEMM-based kernels: f32 math (summation order over K), or bf16 products with
 * fp32 sums (an intermediate such as u may round to the other bf16 neighbour). */
#define GEMM_TOL(cd) ((cd) == CT_BF16 ? 3e-2 : 1e-4)
#define TOL_GEMM(cd) GEMM_TOL(cd), GEMM_TOL(cd)

static void run_embedding_fwd(const pcase *c);
static void run_embedding_bwd(const pcase *c);
static void run_rmsnorm_fwd(const pcase *c);
static void run_rmsnorm_bwd(const pcase *c);
static void run_add_rmsnorm_fwd(const pcase *c);
static void run_rope_fwd(const pcase *c);
static void run_rope_bwd(const pcase *c);
static void run_attention_fwd(const pcase *c);
static void run_attention_bwd(const pcase *c);
static void run_attention_decode(const pcase *c);
static void run_swiglu_fwd(const pcase *c);
static void run_swiglu_bwd(const pcase *c);
static void run_axpy(const pcase *c);
static void run_add_fwd(const pcase *c);
static void run_lora_fwd(const pcase *c);
static void run_lora_bwd(const pcase *c);
static void run_linear_xent(const pcase *c);
static void run_adamw(const pcase *c);
static void run_sum_squares(const pcase *c);
static void run_scale(const pcase *c);

#define EMB_FWD(dt, nm) {"embedding_fwd table=" nm, CT_OP_EMBEDDING, ENTRY(embedding_fwd), \
                         run_embedding_fwd, Q(dt, ANY), EXACT, .flags = 0}
#define RMS(dir, dt, nm, tail, fl) {"rmsnorm_" #dir " w=" nm tail, CT_OP_RMSNORM, ENTRY(rmsnorm_##dir), \
                                    run_rmsnorm_##dir, Q(dt, ANY), TOL_RED, .flags = (fl)}
#define RMS_BIG(dir, dt, nm) {"rmsnorm_" #dir " w=" nm " 64x4100", CT_OP_RMSNORM, ENTRY(rmsnorm_##dir), \
                              run_rmsnorm_##dir, Q(dt, ANY), TOL_RED, .T = 64, .D = 4100}
#define ADD_RMS(dt, nm, tail, fl, t, d) {"add_rmsnorm_fwd w=" nm tail, CT_OP_RMSNORM, ENTRY(add_rmsnorm_fwd), \
                                        run_add_rmsnorm_fwd, Q(dt, ANY), TOL_RED, .flags = (fl), .T = (t), .D = (d)}
#define ROPE(dir, nm, g, sc, fl) {"rope_" #dir " " nm, CT_OP_ROPE, ENTRY(rope_##dir), run_rope_##dir, \
                                  ANYQ, TOL_EW, .flags = (fl), .G = (g), .scaling = (sc)}
#define ATTN(dir, nm, cd, g, fl, t) {"attention_" #dir " " nm, CT_OP_ATTENTION, ENTRY(attention_##dir), \
                                     run_attention_##dir, Q(ANY, cd), TOL_GEMM(cd), .flags = (fl), \
                                     .G = (g), .T = (t)}
#define ATTN_HD(dir, nm, cd, g, fl, hd) {"attention_" #dir " " nm, CT_OP_ATTENTION, ENTRY(attention_##dir), \
                                         run_attention_##dir, Q(ANY, cd), TOL_GEMM(cd), .flags = (fl), \
                                         .G = (g), .D = (hd)}
#define LORA(dir, nm, wdt, cd, p, fl) {"lora_linear_" #dir " " nm, CT_OP_LORA_LINEAR, \
                                       ENTRY(lora_linear_##dir), run_lora_##dir, Q(wdt, cd), \
                                       TOL_GEMM(cd), .flags = (fl), .dropout = (p)}
#define LORA_T(dir, nm, wdt, cd, t) {"lora_linear_" #dir " " nm, CT_OP_LORA_LINEAR, \
                                     ENTRY(lora_linear_##dir), run_lora_##dir, Q(wdt, cd), \
                                     TOL_GEMM(cd), .T = (t)}
#define XENT(nm, wdt, cd, p, fl) {"linear_xent_fwd " nm, CT_OP_LINEAR_XENT, ENTRY(linear_xent_fwd), \
                                  run_linear_xent, Q(wdt, cd), TOL_GEMM(cd), .flags = (fl), .dropout = (p)}

static const pcase k_rows[] = {
    /* embedding: a frozen table's rows are copied exactly, whatever its dtype */
    EMB_FWD(CT_F32, "f32"),
    EMB_FWD(CT_BF16, "bf16"),
    EMB_FWD(CT_F16, "f16"),
    /* D = 36: f32 vectors and a 4-element tail; bf16 rows not 16-byte aligned */
    {"embedding_fwd table=f32 D=36", CT_OP_EMBEDDING, ENTRY(embedding_fwd), run_embedding_fwd, Q(CT_F32, ANY), EXACT, .D = 36},
    {"embedding_fwd table=bf16 D=36", CT_OP_EMBEDDING, ENTRY(embedding_fwd), run_embedding_fwd, Q(CT_BF16, ANY), EXACT, .D = 36},
    {"embedding_bwd", CT_OP_EMBEDDING, ENTRY(embedding_bwd), run_embedding_bwd, Q(CT_F32, ANY), TOL_EW, .flags = 0},

    /* rmsnorm (D = 100: not a multiple of the vector width) */
    RMS(fwd, CT_F32, "f32", "", 0),
    RMS(fwd, CT_BF16, "bf16", "", 0),
    RMS(fwd, CT_F16, "f16", " no rstd", F_NO_SAVE),
    RMS(bwd, CT_F32, "f32", "", 0),
    RMS(bwd, CT_BF16, "bf16", " (dx)", 0),
    RMS(bwd, CT_F32, "f32", " dw only", F_NO_DX),
    RMS(bwd, CT_F32, "f32", " dx only", F_NO_DW),
    RMS_BIG(fwd, CT_BF16, "bf16"), /* wide rows, parallel paths */
    RMS_BIG(bwd, CT_F32, "f32"),
    /* D = 4096: the GPU's 16-byte vector paths alone in both activation
     * passes; 4099: the scalar path (rows not 16-byte aligned); f32 at
     * D = 100, 4100: vectors and a 4-element tail */
    {"rmsnorm_fwd w=bf16 8x4096", CT_OP_RMSNORM, ENTRY(rmsnorm_fwd), run_rmsnorm_fwd, Q(CT_BF16, ANY), TOL_RED, .T = 8, .D = 4096},
    {"rmsnorm_bwd w=f32 8x4096", CT_OP_RMSNORM, ENTRY(rmsnorm_bwd), run_rmsnorm_bwd, Q(CT_F32, ANY), TOL_RED, .T = 8, .D = 4096},
    {"rmsnorm_fwd w=f32 8x4099", CT_OP_RMSNORM, ENTRY(rmsnorm_fwd), run_rmsnorm_fwd, Q(CT_F32, ANY), TOL_RED, .T = 8, .D = 4099},
    {"rmsnorm_bwd w=bf16 8x4099", CT_OP_RMSNORM, ENTRY(rmsnorm_bwd), run_rmsnorm_bwd, Q(CT_BF16, ANY), TOL_RED, .T = 8, .D = 4099},
    /* the residual add fused into rmsnorm's forward (optional entry): the
     * same shapes' paths (19x100, vectors only, scalar only, wide rows) */
    ADD_RMS(CT_F32, "f32", "", 0, 0, 0),
    ADD_RMS(CT_BF16, "bf16", " no rstd", F_NO_SAVE, 0, 0),
    ADD_RMS(CT_F16, "f16", " sum = a", F_INPLACE, 0, 0),
    ADD_RMS(CT_BF16, "bf16", " 8x4096", 0, 8, 4096),
    ADD_RMS(CT_F32, "f32", " 8x4099", 0, 8, 4099),
    ADD_RMS(CT_BF16, "bf16", " 64x4100", 0, 64, 4100),

    /* rope: positions with a restart (packed samples) and one far position */
    ROPE(fwd, "plain", 0, CT_ROPE_NONE, 0),
    ROPE(fwd, "internlm2 G=2 linear", 2, CT_ROPE_LINEAR, 0),
    ROPE(fwd, "internlm2 G=1 dynamic", 1, CT_ROPE_DYNAMIC, 0),
    ROPE(fwd, "internlm2 G=2 dynamic in place", 2, CT_ROPE_DYNAMIC, F_INPLACE),
    ROPE(bwd, "plain", 0, CT_ROPE_NONE, 0),
    ROPE(bwd, "internlm2 G=2 linear", 2, CT_ROPE_LINEAR, 0),
    ROPE(bwd, "internlm2 G=1 dynamic", 1, CT_ROPE_DYNAMIC, 0),
    /* head_dim 20: half = 10 pairs, not a multiple of 8 (the GPU's scalar path) */
    {"rope_fwd plain hd=20", CT_OP_ROPE, ENTRY(rope_fwd), run_rope_fwd, ANYQ, TOL_EW, .D = 20},
    {"rope_bwd internlm2 G=2 hd=20", CT_OP_ROPE, ENTRY(rope_bwd), run_rope_bwd, ANYQ, TOL_EW, .G = 2, .D = 20},

    /* attention (T = 70: two 64-blocks; packed: samples of 20, 1 and 49 tokens) */
    ATTN(fwd, "G=1 f32", CT_F32, 1, 0, 0),
    ATTN(fwd, "G=3 packed f32", CT_F32, 3, F_PACKED, 0),
    ATTN(fwd, "G=2 T=1 f32", CT_F32, 2, 0, 1),
    ATTN(fwd, "G=1 bf16", CT_BF16, 1, 0, 0),
    ATTN(fwd, "G=3 packed bf16", CT_BF16, 3, F_PACKED, 0),
    ATTN(bwd, "G=1 f32", CT_F32, 1, 0, 0),
    ATTN(bwd, "G=3 packed f32", CT_F32, 3, F_PACKED, 0),
    ATTN(bwd, "G=2 T=1 f32", CT_F32, 2, 0, 1),
    ATTN(bwd, "G=1 bf16", CT_BF16, 1, 0, 0),
    ATTN(bwd, "G=3 packed bf16", CT_BF16, 3, F_PACKED, 0),
    /* head_dim 64 and 128: several 16-wide slices of the tensor-core kernels
     * (128: InternLM2-7B's, with its own tile sizes), and 40: a width they do
     * not take (the FMA path) */
    ATTN_HD(fwd, "G=2 packed hd=64 bf16", CT_BF16, 2, F_PACKED, 64),
    ATTN_HD(bwd, "G=2 packed hd=64 bf16", CT_BF16, 2, F_PACKED, 64),
    ATTN_HD(fwd, "G=2 hd=40 bf16", CT_BF16, 2, 0, 40),
    ATTN_HD(bwd, "G=2 hd=40 bf16", CT_BF16, 2, 0, 40),
    ATTN_HD(fwd, "G=1 packed hd=128 bf16", CT_BF16, 1, F_PACKED, 128), /* InternLM2-7B's head */
    ATTN_HD(bwd, "G=1 packed hd=128 bf16", CT_BF16, 1, F_PACKED, 128),
    ATTN_HD(fwd, "G=1 hd=64 f32", CT_F32, 1, 0, 64),

    /* cached attention: feeds of 7, 4 and 1 tokens into one cache (p0 = 0, 7, 11) */
    {"attention_decode G=1", CT_OP_ATTENTION_DECODE, ENTRY(attention_decode), run_attention_decode,
     ANYQ, TOL_RED, .G = 1},
    {"attention_decode G=3", CT_OP_ATTENTION_DECODE, ENTRY(attention_decode), run_attention_decode,
     ANYQ, TOL_RED, .G = 3},
    {"attention_decode G=2 prefill without out", CT_OP_ATTENTION_DECODE, ENTRY(attention_decode),
     run_attention_decode, ANYQ, TOL_RED, .flags = F_NULL_OUT, .G = 2},

    /* swiglu */
    {"swiglu_fwd", CT_OP_SWIGLU, ENTRY(swiglu_fwd), run_swiglu_fwd, ANYQ, TOL_EW, .flags = 0},
    {"swiglu_bwd", CT_OP_SWIGLU, ENTRY(swiglu_bwd), run_swiglu_bwd, ANYQ, TOL_EW, .flags = 0},
    {"swiglu_bwd dgate only", CT_OP_SWIGLU, ENTRY(swiglu_bwd), run_swiglu_bwd, ANYQ, TOL_EW, .flags = F_NO_DW},
    {"swiglu_bwd dup only", CT_OP_SWIGLU, ENTRY(swiglu_bwd), run_swiglu_bwd, ANYQ, TOL_EW, .flags = F_NO_DX},
    {"swiglu_fwd 300x400", CT_OP_SWIGLU, ENTRY(swiglu_fwd), run_swiglu_fwd, ANYQ, TOL_EW, .T = 300, .D = 400},
    {"swiglu_bwd 300x400", CT_OP_SWIGLU, ENTRY(swiglu_bwd), run_swiglu_bwd, ANYQ, TOL_EW, .T = 300, .D = 400},

    /* add: axpy (the residual's backward) and the optional one-pass add_fwd */
    {"axpy", CT_OP_ADD, ENTRY(axpy), run_axpy, ANYQ, TOL_EW, .flags = 0},
    {"add_fwd", CT_OP_ADD, ENTRY(add_fwd), run_add_fwd, ANYQ, EXACT, .flags = 0},
    {"add_fwd in place", CT_OP_ADD, ENTRY(add_fwd), run_add_fwd, ANYQ, EXACT, .flags = F_INPLACE},

    /* lora_linear: T = 37, in = 96, out = 80, r = 8 */
    LORA(fwd, "w=f32 f32", CT_F32, CT_F32, 0.0f, 0),
    LORA(fwd, "w=bf16 f32", CT_BF16, CT_F32, 0.0f, 0),
    LORA(fwd, "w=f16 f32", CT_F16, CT_F32, 0.0f, 0),
    LORA(fwd, "w=nf4 f32", CT_NF4, CT_F32, 0.0f, 0),
    LORA(fwd, "w=f32 bf16", CT_F32, CT_BF16, 0.0f, 0),
    LORA(fwd, "w=bf16 bf16", CT_BF16, CT_BF16, 0.0f, 0),
    LORA(fwd, "w=f16 bf16", CT_F16, CT_BF16, 0.0f, 0),
    LORA(fwd, "w=nf4 bf16", CT_NF4, CT_BF16, 0.0f, 0),
    LORA(fwd, "w=nf4-dq bf16", CT_NF4, CT_BF16, 0.0f, F_NESTED),
    LORA(fwd, "w=f32 f32 p=0.1", CT_F32, CT_F32, 0.1f, 0),
    LORA(fwd, "w=bf16 bf16 p=0.1", CT_BF16, CT_BF16, 0.1f, 0),
    LORA(fwd, "w=nf4 f32 p=0.1", CT_NF4, CT_F32, 0.1f, 0),
    LORA(fwd, "w=f32 f32 no lora", CT_F32, CT_F32, 0.0f, F_NO_LORA),
    LORA(fwd, "w=nf4 bf16 no lora", CT_NF4, CT_BF16, 0.0f, F_NO_LORA),
    LORA(fwd, "w=bf16 f32 no u saved", CT_BF16, CT_F32, 0.1f, F_NO_SAVE),
    LORA(fwd, "w=f16 bf16 u only (y NULL)", CT_F16, CT_BF16, 0.1f, F_NULL_OUT),
    LORA(fwd, "w=f16 f32 small tiles", CT_F16, CT_F32, 0.0f, F_SMALL_TILES),
    LORA_T(fwd, "w=f32 f32 T=3", CT_F32, CT_F32, 3),
    LORA_T(fwd, "w=nf4 f32 T=3", CT_NF4, CT_F32, 3),
    LORA(bwd, "w=f32 f32", CT_F32, CT_F32, 0.0f, 0),
    LORA(bwd, "w=bf16 f32", CT_BF16, CT_F32, 0.0f, 0),
    LORA(bwd, "w=f16 f32", CT_F16, CT_F32, 0.0f, 0),
    LORA(bwd, "w=nf4 f32", CT_NF4, CT_F32, 0.0f, 0),
    LORA(bwd, "w=f32 bf16", CT_F32, CT_BF16, 0.0f, 0),
    LORA(bwd, "w=bf16 bf16", CT_BF16, CT_BF16, 0.0f, 0),
    LORA(bwd, "w=f16 bf16", CT_F16, CT_BF16, 0.0f, 0),
    LORA(bwd, "w=nf4 bf16", CT_NF4, CT_BF16, 0.0f, 0),
    LORA(bwd, "w=nf4-dq f32", CT_NF4, CT_F32, 0.0f, F_NESTED),
    LORA(bwd, "w=f32 f32 p=0.1", CT_F32, CT_F32, 0.1f, 0),
    LORA(bwd, "w=bf16 bf16 p=0.1", CT_BF16, CT_BF16, 0.1f, 0),
    LORA(bwd, "w=nf4 bf16 p=0.1", CT_NF4, CT_BF16, 0.1f, 0),
    LORA(bwd, "w=bf16 f32 dx NULL", CT_BF16, CT_F32, 0.0f, F_NO_DX),
    LORA(bwd, "w=nf4 bf16 p=0.1 dx NULL", CT_NF4, CT_BF16, 0.1f, F_NO_DX),
    LORA(bwd, "w=f32 f32 no lora (dx)", CT_F32, CT_F32, 0.0f, F_NO_LORA),
    LORA(bwd, "w=nf4 bf16 no lora (dx)", CT_NF4, CT_BF16, 0.0f, F_NO_LORA),
    LORA(bwd, "w=f16 f32 dx only", CT_F16, CT_F32, 0.1f, F_NO_DW),
    LORA(bwd, "w=bf16 f32 small tiles", CT_BF16, CT_F32, 0.1f, F_SMALL_TILES),
    LORA_T(bwd, "w=f32 f32 T=3", CT_F32, CT_F32, 3),

    /* linear_xent: T = 29, D = 48, V = 300, every 5th label -100, LoRA head r = 4 */
    XENT("w=f32 f32 loss only", CT_F32, CT_F32, 0.0f, F_NO_DX | F_NO_DW | F_NO_LORA),
    XENT("w=f32 f32", CT_F32, CT_F32, 0.0f, F_NO_LORA),
    XENT("w=bf16 f32 lora", CT_BF16, CT_F32, 0.0f, 0),
    XENT("w=f16 bf16 lora", CT_F16, CT_BF16, 0.0f, 0),
    XENT("w=nf4 f32 lora p=0.1", CT_NF4, CT_F32, 0.1f, 0),
    XENT("w=nf4 bf16 lora", CT_NF4, CT_BF16, 0.0f, 0),
    XENT("w=bf16 bf16 lora p=0.1", CT_BF16, CT_BF16, 0.1f, 0),
    XENT("w=f32 f32 lora loss only", CT_F32, CT_F32, 0.0f, F_NO_DX | F_NO_DW),
    XENT("w=bf16 f32 lora dx only", CT_BF16, CT_F32, 0.0f, F_NO_DW),
    XENT("w=f32 f32 lora dA dB only", CT_F32, CT_F32, 0.1f, F_NO_DX),
    XENT("w=f32 f32 lora small tiles", CT_F32, CT_F32, 0.0f, F_SMALL_TILES),
    XENT("w=bf16 bf16 lora small tiles", CT_BF16, CT_BF16, 0.1f, F_SMALL_TILES),

    /* optimizer: 3 tensors of 1000, 37 and 40000 elements (the last one parallel) */
    {"adamw_update decay", CT_OP_ADAMW, ENTRY(adamw_update), run_adamw, ANYQ, TOL_OPT, .flags = F_DECAY},
    {"adamw_update no decay", CT_OP_ADAMW, ENTRY(adamw_update), run_adamw, ANYQ, TOL_OPT, .flags = 0},
    {"sum_squares", CT_OP_GRAD_NORM, ENTRY(sum_squares), run_sum_squares, ANYQ, TOL_SUM, .flags = 0},
    {"scale", CT_OP_GRAD_NORM, ENTRY(scale), run_scale, ANYQ, EXACT, .flags = 0},
};
#define N_ROWS ((int)(sizeof k_rows / sizeof k_rows[0]))

/* ------------------------------------------------------ the two backends */

enum { REF = 0, DUT = 1 };
#define MAX_OWNED 64

/* One backend's half of a row: the tensors and extra blocks it allocated
 * (freed when the row ends) and its scratch arena (kept across rows). */
typedef struct {
    const ct_backend *be;
    ct_arena scratch;
    ct_tensor *tensors[MAX_OWNED];
    int n_tensors;
    void *blocks[MAX_OWNED]; /* be->mem blocks that are no tensor's data (quant arrays) */
    int n_blocks;
    ct_quant_state *states[8]; /* host structs pointing into this backend's memory */
    int n_states;
} side;

static side g_side[2];
static const pcase *g_row;  /* the row running (messages) */
static bool g_exact;        /* the DUT runs the CPU kernels: bit-identical results */
static double g_worst;      /* the row's largest |got - want| */
static ct_test_rng g_rng;

static const uint32_t POISON = 0x7fc0deadu; /* a quiet NaN no kernel computes */
static const uint16_t POISON_BF16 = 0x7fddu; /* the same for bf16 outputs */

/* The DUT's activation dtype in this pass (the REF's is always f32): CT_F32,
 * or CT_BF16 for a backend whose act_dtype is bf16 (and with
 * CT_PARITY_ACT=bf16 for any backend with kernels of its own). In a bf16 pass
 * every activation input is rounded to bf16 on the host first, so both sides
 * start from the same values; bf16 outputs are compared with the CPU's f32
 * result rounded to bf16 (bit for bit on EXACT rows), with one bf16 ulp
 * (2^-7 relative) added to the row's tolerance otherwise. */
static ct_dtype g_act = CT_F32;

/* Host memory of the row (inputs, downloads), freed when the row ends. */
static void **g_host;
static int g_n_host, g_cap_host;

static void *hmalloc(size_t bytes) {
    if (g_n_host == g_cap_host) {
        g_cap_host = g_cap_host ? 2 * g_cap_host : 64;
        g_host = ct_test_need(realloc(g_host, (size_t)g_cap_host * sizeof *g_host));
    }
    return g_host[g_n_host++] = ct_test_need(malloc(bytes ? bytes : 1));
}

static void need_ok(int rc, const char *what) {
    if (rc) {
        fprintf(stderr, "test setup failed (%s): %s\n", what, ct_last_error());
        exit(1);
    }
}

static void row_release(void) {
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        while (s->n_tensors) ct_tensor_free(s->be, s->tensors[--s->n_tensors]);
        while (s->n_blocks) s->be->mem.free(s->blocks[--s->n_blocks]);
        while (s->n_states) free(s->states[--s->n_states]);
        ct_arena_reset(&s->scratch);
    }
    while (g_n_host) free(g_host[--g_n_host]);
}

/* ----------------------------------------------------- host-side inputs */

/* n values N(0, scale²), host f32. */
static float *rnd(int64_t n, double scale) {
    float *p = hmalloc((size_t)n * sizeof(float));
    ct_test_fill(&g_rng, p, n, scale);
    return p;
}

/* f32 host values converted to dt (f32/bf16/f16) on the host. */
static void *as_dtype(ct_dtype dt, const float *src, int64_t n) {
    void *p = hmalloc(ct_dtype_bytes(dt, n));
    need_ok(ct_convert(p, dt, src, CT_F32, n), "convert");
    return p;
}

/* ------------------------------------------------ tensors on one backend */

#define SH1(a) 1, (const int64_t[]){(a)}
#define SH2(a, b) 2, (const int64_t[]){(a), (b)}
#define SH3(a, b, c) 3, (const int64_t[]){(a), (b), (c)}

static ct_tensor *own(side *s, ct_tensor *t) {
    if (s->n_tensors == MAX_OWNED) need_ok(CT_ERUNTIME, "too many tensors in one row");
    return s->tensors[s->n_tensors++] = t;
}

static void upload(side *s, void *dst, const void *host, size_t bytes) {
    need_ok(s->be->upload(dst, host, bytes), "upload");
}

/* An input of dtype dt holding the host bytes `host`. */
static ct_tensor *t_in(side *s, ct_dtype dt, int ndim, const int64_t *shape, const void *host) {
    ct_tensor *t = own(s, ct_test_need(ct_tensor_new(s->be, dt, ndim, shape, false)));
    upload(s, t->data, host, ct_nbytes(t));
    return t;
}

/* An f32 output the kernel must write: NaN everywhere first. */
static ct_tensor *t_out(side *s, int ndim, const int64_t *shape) {
    ct_tensor *t = own(s, ct_test_need(ct_tensor_new(s->be, CT_F32, ndim, shape, false)));
    int64_t n = ct_numel(t);
    uint32_t *nan = hmalloc((size_t)n * sizeof *nan);
    for (int64_t i = 0; i < n; i++) nan[i] = POISON;
    upload(s, t->data, nan, ct_nbytes(t));
    return t;
}

/* The activation dtype of side s in this pass. */
static ct_dtype act_of(const side *s) { return s == &g_side[DUT] ? g_act : CT_F32; }

/* host [n] rounded to bf16 in place in a bf16 pass (both sides then get the
 * same values; rounding twice changes nothing). */
static void act_round(const float *host, int64_t n) {
    if (g_act != CT_BF16) return;
    float *h = (float *)host;
    for (int64_t i = 0; i < n; i++) h[i] = ct_bf16_to_f32(ct_f32_to_bf16(h[i]));
}

/* An activation input (or an accumulated activation grad's start values). */
static ct_tensor *t_act(side *s, int ndim, const int64_t *shape, const float *host) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    act_round(host, n);
    ct_dtype dt = act_of(s);
    return t_in(s, dt, ndim, shape, dt == CT_F32 ? (const void *)host : as_dtype(dt, host, n));
}

/* An activation output the kernel must write: poisoned first. */
static ct_tensor *t_out_act(side *s, int ndim, const int64_t *shape) {
    if (act_of(s) == CT_F32) return t_out(s, ndim, shape);
    ct_tensor *t = own(s, ct_test_need(ct_tensor_new(s->be, CT_BF16, ndim, shape, false)));
    int64_t n = ct_numel(t);
    uint16_t *nan = hmalloc((size_t)n * sizeof *nan);
    for (int64_t i = 0; i < n; i++) nan[i] = POISON_BF16;
    upload(s, t->data, nan, ct_nbytes(t));
    return t;
}

/* A block of this backend's memory holding `bytes` host bytes (not a tensor:
 * freed with the row unless `keep`, when its owner frees it). */
static void *dev_copy(side *s, const void *host, size_t bytes, bool keep) {
    void *p = s->be->mem.alloc(bytes);
    if (!p || s->n_blocks == MAX_OWNED) need_ok(CT_ERUNTIME, "backend alloc");
    if (!keep) s->blocks[s->n_blocks++] = p;
    upload(s, p, host, bytes);
    return p;
}

/* The host quant state h, its arrays copied into s's memory: a CT_NF4 tensor
 * whose data is the codes (freed with the tensor) and whose quant is a host
 * struct pointing at the copies. */
static ct_tensor *t_nf4(side *s, const ct_quant_state *h) {
    if (s->n_states == 8) need_ok(CT_ERUNTIME, "too many quantized weights in one row");
    ct_quant_state *st = ct_test_need(malloc(sizeof *st));
    s->states[s->n_states++] = st;
    *st = *h;
    st->owned = NULL; /* borrowed arrays */
    st->codes = dev_copy(s, h->codes, (size_t)(h->n + 1) / 2, true);
    if (h->nested) {
        int64_t nn = (h->nblocks + h->nested_blocksize - 1) / h->nested_blocksize;
        st->qabsmax = dev_copy(s, h->qabsmax, (size_t)h->nblocks, false);
        st->nested_absmax = dev_copy(s, h->nested_absmax, (size_t)nn * sizeof(float), false);
    } else {
        st->absmax = dev_copy(s, h->absmax, (size_t)h->nblocks * sizeof(float), false);
    }
    ct_tensor *t = ct_test_need(calloc(1, sizeof *t));
    need_ok(ct_tensor_init(t, CT_NF4, s->be->device, h->ndim, h->shape, st->codes), "nf4 tensor");
    t->quant = st;
    t->name = "parity.w";
    return own(s, t);
}

/* A frozen weight [rows, cols] of dtype dt on both sides from host values wf:
 * f32/bf16/f16 converted on the host, nf4 quantized once (blocksize 64; with
 * double-quantized absmax when `nested`). */
static void frozen_weight(ct_dtype dt, bool nested, int64_t rows, int64_t cols, const float *wf,
                          ct_tensor *w[2]) {
    if (dt != CT_NF4) {
        const void *h = as_dtype(dt, wf, rows * cols);
        for (int k = 0; k < 2; k++) w[k] = t_in(&g_side[k], dt, SH2(rows, cols), h);
        return;
    }
    ct_quant_state hq;
    ct_quant_params qp = {CT_QUANT_NF4, 64, nested, NULL};
    need_ok(ct_quant_quantize(&hq, wf, CT_F32, 2, (const int64_t[]){rows, cols}, &qp, "parity.w"),
            "quantize");
    for (int k = 0; k < 2; k++) w[k] = t_nf4(&g_side[k], &hq);
    ct_quant_free(&hq);
}

/* ------------------------------------------------------- calls, results */

/* After a kernel call: it succeeded, the device is idle, its scratch is rewound. */
static void called(side *s, const char *entry, int rc) {
    CHECK(rc == CT_OK, "%s: %s on %s returned %d: %s", g_row->name, entry, s->be->name, rc, ct_last_error());
    if (rc == CT_OK && s->be->sync) {
        int sr = s->be->sync();
        CHECK(sr == CT_OK, "%s: sync after %s on %s: %s", g_row->name, entry, s->be->name, ct_last_error());
    }
    CHECK(s->scratch.used == 0, "%s: %s on %s left %zu bytes of its scratch arena in use", g_row->name,
          entry, s->be->name, s->scratch.used);
    ct_arena_reset(&s->scratch);
}
#define CALL(s, entry, args) called((s), #entry, (s)->be->entry args)

/* t's bytes, downloaded into host memory of the row. */
static void *download(int k, const ct_tensor *t) {
    void *h = hmalloc(ct_nbytes(t));
    int rc = g_side[k].be->download(h, t->data, ct_nbytes(t));
    CHECK(rc == CT_OK, "%s: download from %s: %s", g_row->name, g_side[k].be->name, ct_last_error());
    if (rc) memset(h, 0xff, ct_nbytes(t));
    return h;
}

/* t's values as f32 host memory (bf16 widened). */
static float *download_f(int k, const ct_tensor *t) {
    void *h = download(k, t);
    if (t->dtype == CT_F32) return h;
    int64_t n = ct_numel(t);
    float *f = hmalloc((size_t)n * sizeof *f);
    need_ok(ct_convert(f, CT_F32, h, t->dtype, n), "widen");
    return f;
}

/* got (DUT) against want (REF): bits when exact, else the tolerance. */
static void compare_f(const char *what, const float *got, const float *want, int64_t n, double atol,
                      double rtol) {
    char label[256];
    snprintf(label, sizeof label, "%s: %s on %s", g_row->name, what, g_side[DUT].be->name);
    int64_t bad_ref = -1, diff = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(want[i]) && bad_ref < 0) bad_ref = i;
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= g_worst)) g_worst = isnan(d) ? INFINITY : d;
        if (memcmp(&got[i], &want[i], sizeof(float)) && !diff++) first = i;
    }
    CHECK(bad_ref < 0, "%s: the CPU's result holds %g at [%lld] (left unwritten?)", label,
          bad_ref < 0 ? 0.0 : (double)want[bad_ref], (long long)bad_ref);
    if (g_exact || (atol == 0.0 && rtol == 0.0)) {
        uint32_t gb = 0, wb = 0;
        if (diff) memcpy(&gb, &got[first], 4), memcpy(&wb, &want[first], 4);
        CHECK(diff == 0, "%s: %lld of %lld elements differ from the CPU's bits; first [%lld]: got %.9g "
              "(0x%08x) want %.9g (0x%08x)", label, (long long)diff, (long long)n, (long long)first,
              diff ? (double)got[first] : 0.0, gb, diff ? (double)want[first] : 0.0, wb);
        return;
    }
    ct_check_close_f(label, got, want, n, atol, rtol);
}

static void compare_d(const char *what, const double *got, const double *want, int64_t n) {
    char label[256];
    snprintf(label, sizeof label, "%s: %s on %s", g_row->name, what, g_side[DUT].be->name);
    bool exact = g_exact || (g_row->atol == 0.0 && g_row->rtol == 0.0);
    int64_t worst = -1;
    double worst_x = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]), lim = exact ? 0.0 : g_row->atol + g_row->rtol * fabs(want[i]);
        if (!(d <= g_worst)) g_worst = isnan(d) ? INFINITY : d;
        bool bad = !isfinite(want[i]) || (exact ? memcmp(&got[i], &want[i], sizeof(double)) != 0 : !(d <= lim));
        double x = isnan(d) || lim == 0.0 ? INFINITY : d / lim;
        if (bad && (worst < 0 || x > worst_x)) worst = i, worst_x = x;
    }
    CHECK(worst < 0, "%s: worst [%lld]: got %.17g want %.17g (atol %g rtol %g%s)", label, (long long)worst,
          worst < 0 ? 0.0 : got[worst], worst < 0 ? 0.0 : want[worst], g_row->atol, g_row->rtol,
          exact ? ", exact" : "");
}

/* One output, both sides: t[REF] against t[DUT] with tolerance (atol, rtol)
 * (a bf16 DUT output: against the CPU's rounded to bf16, see g_act). */
static void cmp_tol(const char *what, ct_tensor *const t[2], double atol, double rtol) {
    float *want = download(REF, t[REF]), *got = download_f(DUT, t[DUT]);
    int64_t n = ct_numel(t[REF]);
    if (t[DUT]->dtype != CT_BF16) {
        compare_f(what, got, want, n, atol, rtol);
        return;
    }
    act_round(want, n);
    bool exact = atol == 0.0 && rtol == 0.0;
    compare_f(what, got, want, n, atol, exact ? 0.0 : rtol + 1.0 / 128.0);
}

/* cmp_tol with the row's tolerance. */
static void cmp(const char *what, ct_tensor *const t[2]) { cmp_tol(what, t, g_row->atol, g_row->rtol); }

/* ----------------------------------------------------------- embedding */

enum { EMB_V = 50, EMB_D = 40, EMB_T = 33 };

/* Token ids [T]: random with repeats, both ends of the vocab. */
static int32_t *emb_ids(void) {
    int32_t *ids = hmalloc(EMB_T * sizeof *ids);
    for (int t = 0; t < EMB_T; t++) ids[t] = (int32_t)(ct_test_uniform(&g_rng) * EMB_V);
    ids[0] = 0, ids[5] = EMB_V - 1, ids[6] = ids[3], ids[20] = ids[3];
    return ids;
}

static void run_embedding_fwd(const pcase *c) {
    const int64_t D = c->D ? c->D : EMB_D;
    const int32_t *ids = emb_ids();
    const void *table = as_dtype(c->q.weight, rnd(EMB_V * D, 1.0), EMB_V * D); /* [V, D] */
    ct_tensor *y[2];                                                           /* [T, D] */
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tt = t_in(s, c->q.weight, SH2(EMB_V, D), table);
        ct_tensor *ti = t_in(s, CT_I32, SH1(EMB_T), ids);
        y[k] = t_out_act(s, SH2(EMB_T, D));
        CALL(s, embedding_fwd, (tt, ti, y[k]));
    }
    cmp("y", y);
}

static void run_embedding_bwd(const pcase *c) {
    (void)c;
    const int32_t *ids = emb_ids();
    const float *dy = rnd(EMB_T * EMB_D, 1.0), *dt0 = rnd(EMB_V * EMB_D, 1.0); /* [T, D], [V, D] */
    ct_tensor *dt[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *ti = t_in(s, CT_I32, SH1(EMB_T), ids), *tdy = t_act(s, SH2(EMB_T, EMB_D), dy);
        dt[k] = t_in(s, CT_F32, SH2(EMB_V, EMB_D), dt0);
        CALL(s, embedding_bwd, (ti, tdy, dt[k]));
    }
    cmp("dtable (+=)", dt);
}

/* ------------------------------------------------------------- rmsnorm */

/* x, y, dy, dx [R, D] (default 19 × 100: not a multiple of the vector width),
 * w, dw [D], rstd [R]. */
static const float RMS_EPS = 1e-5f;

typedef struct {
    int64_t R, D;
    const float *x; /* row 0 tiny: eps matters there */
    const void *w;  /* in the row's weight dtype */
} rms_setup;

static rms_setup rms_make(const pcase *c) {
    rms_setup r = {.R = c->T ? c->T : 19, .D = c->D ? c->D : 100};
    float *x = rnd(r.R * r.D, 1.0);
    for (int64_t i = 0; i < r.D; i++) x[i] *= 1e-3f;
    r.x = x;
    r.w = as_dtype(c->q.weight, rnd(r.D, 1.0), r.D);
    return r;
}

static void run_rmsnorm_fwd(const pcase *c) {
    rms_setup r = rms_make(c);
    bool save = !(c->flags & F_NO_SAVE);
    ct_tensor *y[2], *rstd[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tx = t_act(s, SH2(r.R, r.D), r.x), *tw = t_in(s, c->q.weight, SH1(r.D), r.w);
        y[k] = t_out_act(s, SH2(r.R, r.D));
        if (save) rstd[k] = t_out(s, SH1(r.R));
        CALL(s, rmsnorm_fwd, (tx, tw, RMS_EPS, y[k], rstd[k]));
    }
    cmp("y", y);
    if (save) cmp("rstd", rstd);
}

static void run_rmsnorm_bwd(const pcase *c) {
    rms_setup r = rms_make(c);
    const float *dy = rnd(r.R * r.D, 1.0), *dx0 = rnd(r.R * r.D, 1.0), *dw0 = rnd(r.D, 1.0);
    bool want_dx = !(c->flags & F_NO_DX), want_dw = c->q.weight == CT_F32 && !(c->flags & F_NO_DW);
    /* rstd from the CPU's forward */
    side *ref = &g_side[REF];
    ct_tensor *rx = t_act(ref, SH2(r.R, r.D), r.x), *rw = t_in(ref, c->q.weight, SH1(r.D), r.w);
    ct_tensor *ry = t_out(ref, SH2(r.R, r.D)), *rr = t_out(ref, SH1(r.R));
    CALL(ref, rmsnorm_fwd, (rx, rw, RMS_EPS, ry, rr));
    const float *rstd = download(REF, rr);
    ct_tensor *dx[2] = {NULL, NULL}, *dw[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tx = t_act(s, SH2(r.R, r.D), r.x), *tw = t_in(s, c->q.weight, SH1(r.D), r.w);
        ct_tensor *tr = t_in(s, CT_F32, SH1(r.R), rstd), *tdy = t_act(s, SH2(r.R, r.D), dy);
        if (want_dx) dx[k] = t_act(s, SH2(r.R, r.D), dx0);
        if (want_dw) dw[k] = t_in(s, CT_F32, SH1(r.D), dw0);
        CALL(s, rmsnorm_bwd, (tx, tw, tr, tdy, dx[k], dw[k]));
    }
    if (want_dx) cmp("dx (+=)", dx);
    if (want_dw) cmp("dw (+=)", dw);
}

/* add_rmsnorm_fwd: a, b, sum, y [R, D] (rms_make's shapes; row 0 of both
 * tiny), w [D], rstd [R]. Each side's fused call must give the bits of its
 * own add_fwd then rmsnorm_fwd (the entry's contract; fresh inputs, so in
 * place too). Across sides: sum exactly (one rounding of a + b); y and rstd
 * with rmsnorm's tolerance against the CPU's rmsnorm of the sum as the DUT
 * stores it (in a bf16 pass the CPU's f32 sum rounded to bf16: the DUT
 * normalises the rounded sum, by contract). */
static void run_add_rmsnorm_fwd(const pcase *c) {
    rms_setup r = rms_make(c);
    float *b = rnd(r.R * r.D, 1.0);
    for (int64_t i = 0; i < r.D; i++) b[i] *= 1e-3f;
    bool save = !(c->flags & F_NO_SAVE), inplace = c->flags & F_INPLACE;
    ct_tensor *sum[2], *y[2], *rstd[2] = {NULL, NULL}, *tw[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *ta = t_act(s, SH2(r.R, r.D), r.x), *tb = t_act(s, SH2(r.R, r.D), b);
        tw[k] = t_in(s, c->q.weight, SH1(r.D), r.w);
        sum[k] = inplace ? ta : t_out_act(s, SH2(r.R, r.D));
        y[k] = t_out_act(s, SH2(r.R, r.D));
        if (save) rstd[k] = t_out(s, SH1(r.R));
        CALL(s, add_rmsnorm_fwd, (ta, tb, tw[k], RMS_EPS, sum[k], y[k], rstd[k]));
        if (!s->be->add_fwd || !s->be->rmsnorm_fwd) continue; /* no unfused pair to compare with */
        ct_tensor *ua = t_act(s, SH2(r.R, r.D), r.x), *ub = t_act(s, SH2(r.R, r.D), b);
        ct_tensor *us = t_out_act(s, SH2(r.R, r.D)), *uy = t_out_act(s, SH2(r.R, r.D));
        ct_tensor *ur = t_out(s, SH1(r.R));
        CALL(s, add_fwd, (ua, ub, us));
        CALL(s, rmsnorm_fwd, (us, tw[k], RMS_EPS, uy, ur));
        ct_tensor *pairs[3][2] = {{sum[k], us}, {y[k], uy}, {rstd[k], ur}};
        for (int p = 0; p < 3; p++) {
            if (!pairs[p][0]) continue;
            size_t bytes = ct_nbytes(pairs[p][0]);
            CHECK(memcmp(download(k, pairs[p][0]), download(k, pairs[p][1]), bytes) == 0,
                  "%s: %s on %s differs from add_fwd then rmsnorm_fwd (must be bit for bit)", c->name,
                  p == 0 ? "sum" : p == 1 ? "y" : "rstd", s->be->name);
        }
    }
    cmp_tol("sum", sum, EXACT);
    if (g_act == CT_BF16) { /* the reference norm reads the sum rounded as the DUT stored it */
        side *ref = &g_side[REF];
        float *xs = download(REF, sum[REF]);
        act_round(xs, r.R * r.D);
        ct_tensor *tx = t_in(ref, CT_F32, SH2(r.R, r.D), xs);
        y[REF] = t_out(ref, SH2(r.R, r.D));
        if (save) rstd[REF] = t_out(ref, SH1(r.R));
        CALL(ref, rmsnorm_fwd, (tx, tw[REF], RMS_EPS, y[REF], rstd[REF]));
    }
    cmp("y", y);
    if (save) cmp("rstd", rstd);
}

/* ---------------------------------------------------------------- rope */

/* x [T, H*hd] viewed as [T, H, hd] (hd: the row's D, default 16): 4 plain
 * heads, or 2 InternLM2 groups of G query heads, k and v (group G+2, the
 * first G+1 rotated). Positions: two packed samples (0..14, 0..) and a far
 * last one (29999). */
typedef struct {
    int64_t T, C;
    ct_rope_params p;
    int32_t *pos; /* [T] */
} rope_setup;

static rope_setup rope_make(const pcase *c) {
    rope_setup r = {.T = c->T ? c->T : 23};
    r.p = (ct_rope_params){.head_dim = c->D ? c->D : 16, .group = 1, .rotate_per_group = 1,
                           .theta = 10000.0, .scaling = c->scaling, .factor = 2.0, .max_pos = 16, .seq_len = r.T + 20};
    int64_t H = 4;
    if (c->G > 0) r.p.group = c->G + 2, r.p.rotate_per_group = c->G + 1, H = 2 * (c->G + 2);
    r.C = H * r.p.head_dim;
    r.pos = hmalloc((size_t)r.T * sizeof *r.pos);
    for (int64_t t = 0; t < r.T; t++) r.pos[t] = (int32_t)(t < 15 ? t : t - 15);
    r.pos[r.T - 1] = 29999;
    return r;
}

static void run_rope_fwd(const pcase *c) {
    rope_setup r = rope_make(c);
    const float *x = rnd(r.T * r.C, 1.0); /* [T, C] */
    ct_tensor *y[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tx = t_act(s, SH2(r.T, r.C), x), *tp = t_in(s, CT_I32, SH1(r.T), r.pos);
        y[k] = c->flags & F_INPLACE ? tx : t_out_act(s, SH2(r.T, r.C));
        CALL(s, rope_fwd, (tx, tp, &r.p, y[k]));
    }
    cmp(c->flags & F_INPLACE ? "y (= x)" : "y", y);
}

static void run_rope_bwd(const pcase *c) {
    rope_setup r = rope_make(c);
    const float *dy = rnd(r.T * r.C, 1.0), *dx0 = rnd(r.T * r.C, 1.0); /* [T, C] */
    ct_tensor *dx[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tdy = t_act(s, SH2(r.T, r.C), dy), *tp = t_in(s, CT_I32, SH1(r.T), r.pos);
        dx[k] = t_act(s, SH2(r.T, r.C), dx0);
        CALL(s, rope_bwd, (tdy, tp, &r.p, dx[k]));
    }
    cmp("dx (+=)", dx);
}

/* ----------------------------------------------------------- attention */

/* qkv [T, Hkv*(G+2)*hd] (Hkv = 2, hd = 16), out [T, Hq*hd], lse [Hq, T];
 * packed: runs i32 [n_runs + 1] from ct_segment_runs. */
typedef struct {
    int64_t T, C, Hq, W;
    ct_attn_params p;
    float *qkv;
    int32_t *runs; /* NULL: one sequence */
    int64_t n_runs;
} attn_setup;

static attn_setup attn_make(const pcase *c) {
    attn_setup a = {.T = c->T ? c->T : 70};
    const int hd = c->D ? c->D : 16;
    a.p = (ct_attn_params){.n_kv_heads = 2, .group = c->G, .head_dim = hd,
                           .scale = (float)(1.0 / sqrt((double)hd)), .compute = c->q.compute};
    a.C = 2 * (c->G + 2) * hd, a.Hq = 2 * c->G, a.W = a.Hq * hd;
    a.qkv = rnd(a.T * a.C, 1.0);
    if (c->flags & F_PACKED) {
        static const int lens[] = {20, 1, 49};
        int32_t *seg = hmalloc((size_t)a.T * sizeof *seg);
        int64_t t = 0;
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < lens[s] && t < a.T; i++) seg[t++] = 1000 - 7 * s; /* sample ids */
        while (t < a.T) seg[t++] = 0;
        a.runs = hmalloc((size_t)(a.T + 1) * sizeof *a.runs);
        need_ok(ct_segment_runs(seg, a.T, a.runs, &a.n_runs), "segment runs");
    }
    return a;
}

static ct_tensor *attn_runs(side *s, const attn_setup *a) {
    return a->runs ? t_in(s, CT_I32, SH1(a->n_runs + 1), a->runs) : NULL;
}

static void run_attention_fwd(const pcase *c) {
    attn_setup a = attn_make(c);
    ct_tensor *out[2], *lse[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tq = t_act(s, SH2(a.T, a.C), a.qkv), *tr = attn_runs(s, &a);
        out[k] = t_out_act(s, SH2(a.T, a.W));
        lse[k] = t_out(s, SH2(a.Hq, a.T));
        CALL(s, attention_fwd, (tq, tr, &a.p, out[k], lse[k], &s->scratch));
    }
    cmp("out", out);
    cmp("lse", lse);
}

static void run_attention_bwd(const pcase *c) {
    attn_setup a = attn_make(c);
    const float *dout = rnd(a.T * a.W, 1.0), *dqkv0 = rnd(a.T * a.C, 1.0);
    /* out and lse from the CPU's forward */
    side *r = &g_side[REF];
    ct_tensor *rq = t_act(r, SH2(a.T, a.C), a.qkv), *rr = attn_runs(r, &a);
    ct_tensor *ro = t_out(r, SH2(a.T, a.W)), *rl = t_out(r, SH2(a.Hq, a.T));
    CALL(r, attention_fwd, (rq, rr, &a.p, ro, rl, &r->scratch));
    const float *out = download(REF, ro), *lse = download(REF, rl);
    ct_tensor *dqkv[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tq = t_act(s, SH2(a.T, a.C), a.qkv), *tr = attn_runs(s, &a);
        ct_tensor *to = t_act(s, SH2(a.T, a.W), out), *tl = t_in(s, CT_F32, SH2(a.Hq, a.T), lse);
        ct_tensor *td = t_act(s, SH2(a.T, a.W), dout);
        dqkv[k] = t_act(s, SH2(a.T, a.C), dqkv0);
        CALL(s, attention_bwd, (tq, tr, &a.p, to, tl, td, dqkv[k], &s->scratch));
    }
    cmp("dqkv (+=)", dqkv);
}

/* KV caches [16, Hkv, hd] (NaN first) fed 7, 4 and 1 tokens at p0 = 0, 7, 11:
 * each feed's out [T, Hq*hd] compared, then the cache rows written (copies:
 * the same bits on any backend), and the rows past them must be untouched. */
static void run_attention_decode(const pcase *c) {
    enum { L = 16, HKV = 2, HD = 16 };
    const int64_t G = c->G, C = HKV * (G + 2) * HD, W = HKV * G * HD, feed[3] = {7, 4, 1};
    ct_attn_params p = {.n_kv_heads = HKV, .group = c->G, .head_dim = HD, .scale = 0.25f};
    ct_tensor *kc[2], *vc[2];
    for (int k = 0; k < 2; k++) {
        kc[k] = t_out_act(&g_side[k], SH3(L, HKV, HD));
        vc[k] = t_out_act(&g_side[k], SH3(L, HKV, HD));
    }
    int64_t p0 = 0;
    for (int f = 0; f < 3; f++) {
        const float *qkv = rnd(feed[f] * C, 1.0); /* [T, C] */
        bool with_out = !(f == 0 && (c->flags & F_NULL_OUT));
        ct_tensor *out[2] = {NULL, NULL};
        for (int k = 0; k < 2; k++) {
            side *s = &g_side[k];
            ct_tensor *tq = t_act(s, SH2(feed[f], C), qkv);
            if (with_out) out[k] = t_out_act(s, SH2(feed[f], W));
            CALL(s, attention_decode, (tq, p0, &p, kc[k], vc[k], out[k], &s->scratch));
        }
        char what[64];
        snprintf(what, sizeof what, "out of feed %d (p0 = %lld)", f, (long long)p0);
        if (with_out) cmp(what, out);
        p0 += feed[f];
    }
    const int64_t n = L * HKV * HD, used = p0 * HKV * HD;
    for (int which = 0; which < 2; which++) {
        ct_tensor *const *t = which ? vc : kc;
        const float *want = download(REF, t[REF]), *got = download_f(DUT, t[DUT]);
        compare_f(which ? "v_cache rows written" : "k_cache rows written", got, want, used, 0.0, 0.0);
        int64_t touched = 0;
        const uint16_t *raw = t[DUT]->dtype == CT_BF16 ? download(DUT, t[DUT]) : NULL;
        for (int64_t i = used; i < n; i++)
            touched += raw ? raw[i] != POISON_BF16 : memcmp(&got[i], &POISON, sizeof POISON) != 0;
        CHECK(touched == 0, "%s: %s wrote %lld elements of %s past row %lld", g_row->name,
              g_side[DUT].be->name, (long long)touched, which ? "v_cache" : "k_cache", (long long)p0);
    }
}

/* -------------------------------------------------------------- swiglu */

/* gate, up, y, dy, dgate, dup [R, F] (default 13 × 77); gate N(0, 16). */
static void run_swiglu_fwd(const pcase *c) {
    const int64_t R = c->T ? c->T : 13, F = c->D ? c->D : 77;
    const float *g = rnd(R * F, 4.0), *u = rnd(R * F, 1.0);
    ct_tensor *y[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tg = t_act(s, SH2(R, F), g), *tu = t_act(s, SH2(R, F), u);
        y[k] = t_out_act(s, SH2(R, F));
        CALL(s, swiglu_fwd, (tg, tu, y[k]));
    }
    cmp("y", y);
}

static void run_swiglu_bwd(const pcase *c) {
    const int64_t R = c->T ? c->T : 13, F = c->D ? c->D : 77;
    const float *g = rnd(R * F, 4.0), *u = rnd(R * F, 1.0), *dy = rnd(R * F, 1.0);
    const float *dg0 = rnd(R * F, 1.0), *du0 = rnd(R * F, 1.0);
    bool want_dg = !(c->flags & F_NO_DX), want_du = !(c->flags & F_NO_DW);
    ct_tensor *dg[2] = {NULL, NULL}, *du[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tg = t_act(s, SH2(R, F), g), *tu = t_act(s, SH2(R, F), u);
        ct_tensor *tdy = t_act(s, SH2(R, F), dy);
        if (want_dg) dg[k] = t_act(s, SH2(R, F), dg0);
        if (want_du) du[k] = t_act(s, SH2(R, F), du0);
        CALL(s, swiglu_bwd, (tg, tu, tdy, dg[k], du[k]));
    }
    if (want_dg) cmp("dgate (+=)", dg);
    if (want_du) cmp("dup (+=)", du);
}

/* ----------------------------------------------------------------- add */

enum { ADD_N = 40003 }; /* past the CPU's parallel threshold, odd tail */

static void run_axpy(const pcase *c) {
    (void)c;
    const float *x = rnd(ADD_N, 1.0), *y0 = rnd(ADD_N, 1.0);
    ct_tensor *y[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *tx = t_act(s, SH1(ADD_N), x);
        y[k] = t_act(s, SH1(ADD_N), y0);
        CALL(s, axpy, (-0.7f, tx, y[k]));
    }
    cmp("y (+= alpha x)", y);
}

static void run_add_fwd(const pcase *c) {
    const float *a = rnd(ADD_N, 1.0), *b = rnd(ADD_N, 1.0);
    ct_tensor *y[2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_tensor *ta = t_act(s, SH1(ADD_N), a), *tb = t_act(s, SH1(ADD_N), b);
        y[k] = c->flags & F_INPLACE ? ta : t_out_act(s, SH1(ADD_N));
        CALL(s, add_fwd, (ta, tb, y[k]));
    }
    cmp(c->flags & F_INPLACE ? "y (= a)" : "y", y);
}

/* --------------------------------------------------------- lora_linear */

/* x [T, in], W [out, in] frozen, A [r, in], B [out, r]; scale 0.75, mask seed fixed. */
enum { LL_IN = 96, LL_OUT = 80, LL_R = 8 };
static const uint64_t LL_SEED = 0x5eedu;

typedef struct {
    int64_t T;
    bool lora;
    const float *x, *a, *b;
    ct_tensor *w[2];
} lora_setup;

static lora_setup lora_make(const pcase *c) {
    lora_setup L = {.T = c->T ? c->T : 37, .lora = !(c->flags & F_NO_LORA)};
    L.x = rnd(L.T * LL_IN, 1.0);
    L.a = rnd(LL_R * LL_IN, 0.5);
    L.b = rnd(LL_OUT * LL_R, 0.5);
    frozen_weight(c->q.weight, c->flags & F_NESTED, LL_OUT, LL_IN, rnd(LL_OUT * LL_IN, 0.5), L.w);
    return L;
}

/* The layer on side k: W, and A, B uploaded (none without LoRA). */
static ct_linear lora_on(int k, const pcase *c, const lora_setup *L) {
    side *s = &g_side[k];
    ct_linear lin = {.w = L->w[k], .scale = 0.75f, .dropout = c->dropout, .id = 42, .compute = c->q.compute};
    if (L->lora) {
        lin.a = t_in(s, CT_F32, SH2(LL_R, LL_IN), L->a);
        lin.b = t_in(s, CT_F32, SH2(LL_OUT, LL_R), L->b);
    }
    return lin;
}

static void run_lora_fwd(const pcase *c) {
    lora_setup L = lora_make(c);
    bool want_y = !(c->flags & F_NULL_OUT), want_u = L.lora && !(c->flags & F_NO_SAVE);
    ct_tensor *y[2] = {NULL, NULL}, *u[2] = {NULL, NULL}; /* [T, out], [T, r] */
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_linear lin = lora_on(k, c, &L);
        ct_tensor *tx = t_act(s, SH2(L.T, LL_IN), L.x);
        if (want_y) y[k] = t_out_act(s, SH2(L.T, LL_OUT));
        if (want_u) u[k] = t_out_act(s, SH2(L.T, LL_R));
        CALL(s, lora_linear_fwd, (tx, &lin, LL_SEED, y[k], u[k], &s->scratch));
    }
    if (want_y) cmp("y", y);
    if (want_u) cmp("u", u);
}

static void run_lora_bwd(const pcase *c) {
    lora_setup L = lora_make(c);
    const float *dy = rnd(L.T * LL_OUT, 1.0), *dx0 = rnd(L.T * LL_IN, 1.0);
    const float *da0 = rnd(LL_R * LL_IN, 1.0), *db0 = rnd(LL_OUT * LL_R, 1.0);
    bool want_dx = !(c->flags & F_NO_DX), want_ab = L.lora && !(c->flags & F_NO_DW);
    const float *u = NULL; /* [T, r] from the CPU's forward */
    if (L.lora) {
        side *r = &g_side[REF];
        ct_linear lin = lora_on(REF, c, &L);
        ct_tensor *tx = t_act(r, SH2(L.T, LL_IN), L.x), *ty = t_out(r, SH2(L.T, LL_OUT));
        ct_tensor *tu = t_out(r, SH2(L.T, LL_R));
        CALL(r, lora_linear_fwd, (tx, &lin, LL_SEED, ty, tu, &r->scratch));
        u = download(REF, tu);
    }
    ct_tensor *dx[2] = {NULL, NULL}, *da[2] = {NULL, NULL}, *db[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_linear lin = lora_on(k, c, &L);
        ct_tensor *tx = t_act(s, SH2(L.T, LL_IN), L.x), *tdy = t_act(s, SH2(L.T, LL_OUT), dy);
        ct_tensor *tu = u ? t_act(s, SH2(L.T, LL_R), u) : NULL;
        if (want_dx) dx[k] = t_act(s, SH2(L.T, LL_IN), dx0);
        if (want_ab) da[k] = t_in(s, CT_F32, SH2(LL_R, LL_IN), da0), db[k] = t_in(s, CT_F32, SH2(LL_OUT, LL_R), db0);
        CALL(s, lora_linear_bwd, (tx, &lin, LL_SEED, tu, tdy, dx[k], da[k], db[k], &s->scratch));
    }
    if (want_dx) cmp("dx (+=)", dx);
    if (want_ab) {
        cmp("dA (+=)", da);
        cmp("dB (+=)", db);
    }
}

/* ---------------------------------------------------------- linear_xent */

/* x [T, D], head W [V, D] (+ A [r, D], B [V, r], scale 0.5), labels i32 [T]:
 * every 5th -100, 0 and V-1 present; grad_scale = 1 / trained tokens. */
static void run_linear_xent(const pcase *c) {
    enum { T = 29, D = 48, V = 300, R = 4 };
    bool lora = !(c->flags & F_NO_LORA), want_dx = !(c->flags & F_NO_DX);
    bool want_ab = lora && !(c->flags & F_NO_DW);
    int32_t *lab = hmalloc(T * sizeof *lab);
    int64_t n_host = 0;
    for (int t = 0; t < T; t++) lab[t] = t % 5 == 3 ? -100 : (int32_t)(ct_test_uniform(&g_rng) * V);
    lab[1] = 0, lab[2] = V - 1;
    for (int t = 0; t < T; t++) n_host += lab[t] != -100;
    const float *x = rnd(T * D, 1.0), *a = rnd(R * D, 0.5), *b = rnd(V * R, 0.5);
    const float *dx0 = rnd(T * D, 0.1), *da0 = rnd(R * D, 0.1), *db0 = rnd(V * R, 0.1);
    ct_tensor *w[2];
    frozen_weight(c->q.weight, c->flags & F_NESTED, V, D, rnd(V * D, 0.5), w);
    ct_tensor *dx[2] = {NULL, NULL}, *da[2] = {NULL, NULL}, *db[2] = {NULL, NULL};
    double nll[2] = {NAN, NAN};
    int64_t nt[2] = {-1, -1};
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_linear head = {.w = w[k], .scale = 0.5f, .dropout = c->dropout, .id = 77, .compute = c->q.compute};
        if (lora) head.a = t_in(s, CT_F32, SH2(R, D), a), head.b = t_in(s, CT_F32, SH2(V, R), b);
        ct_tensor *tx = t_act(s, SH2(T, D), x), *tl = t_in(s, CT_I32, SH1(T), lab);
        if (want_dx) dx[k] = t_act(s, SH2(T, D), dx0);
        if (want_ab) da[k] = t_in(s, CT_F32, SH2(R, D), da0), db[k] = t_in(s, CT_F32, SH2(V, R), db0);
        CALL(s, linear_xent_fwd, (tx, &head, tl, 1.0f / (float)n_host, &nll[k], &nt[k], dx[k], da[k], db[k],
                                  &s->scratch));
    }
    compare_d("nll_sum", &nll[DUT], &nll[REF], 1);
    CHECK(nt[REF] == n_host && nt[DUT] == n_host, "%s: n_trained %lld on cpu, %lld on %s, want %lld",
          g_row->name, (long long)nt[REF], (long long)nt[DUT], g_side[DUT].be->name, (long long)n_host);
    if (want_dx) cmp("dx (+=)", dx);
    if (want_ab) {
        cmp("dA (+=)", da);
        cmp("dB (+=)", db);
    }
}

/* ----------------------------------------------------------- optimizer */

enum { OPT_N = 3 };
static const int64_t OPT_NS[OPT_N] = {1000, 37, 40000};

/* AdamW step 3 over three tensors: p, g, m, v [n_i] (v >= 0). */
static void run_adamw(const pcase *c) {
    const double lr = 1e-3, b1 = 0.9, b2 = 0.999, wd = c->flags & F_DECAY ? 0.01 : 0.0;
    const int step = 3;
    ct_adamw_scalars sc = {.decay = (float)(1.0 - lr * wd), .w1 = (float)(1.0 - b1), .b2 = (float)b2,
                           .w2 = (float)(1.0 - b2), .neg_step = (float)(-lr / (1.0 - pow(b1, step))),
                           .bc2_sqrt = (float)sqrt(1.0 - pow(b2, step)), .eps = 1e-8f,
                           .use_decay = wd != 0.0};
    const float *p[OPT_N], *g[OPT_N], *m[OPT_N];
    float *v[OPT_N];
    for (int i = 0; i < OPT_N; i++) {
        p[i] = rnd(OPT_NS[i], 1.0), g[i] = rnd(OPT_NS[i], 0.1), m[i] = rnd(OPT_NS[i], 0.01);
        v[i] = rnd(OPT_NS[i], 0.01);
        for (int64_t j = 0; j < OPT_NS[i]; j++) v[i][j] *= v[i][j];
    }
    ct_tensor *tp[OPT_N][2], *tm[OPT_N][2], *tv[OPT_N][2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        ct_adamw_slot slots[OPT_N];
        for (int i = 0; i < OPT_N; i++) {
            tp[i][k] = t_in(s, CT_F32, SH1(OPT_NS[i]), p[i]);
            tm[i][k] = t_in(s, CT_F32, SH1(OPT_NS[i]), m[i]);
            tv[i][k] = t_in(s, CT_F32, SH1(OPT_NS[i]), v[i]);
            ct_tensor *tg = t_in(s, CT_F32, SH1(OPT_NS[i]), g[i]);
            slots[i] = (ct_adamw_slot){tp[i][k]->data, tg->data, tm[i][k]->data, tv[i][k]->data, OPT_NS[i]};
        }
        CALL(s, adamw_update, (&sc, slots, OPT_N));
    }
    for (int i = 0; i < OPT_N; i++) {
        char what[32];
        snprintf(what, sizeof what, "p[%d]", i);
        cmp(what, tp[i]);
        snprintf(what, sizeof what, "m[%d]", i);
        cmp(what, tm[i]);
        snprintf(what, sizeof what, "v[%d]", i);
        cmp(what, tv[i]);
    }
}

/* Σ x² of 3 tensors (5, 20000: three 8192-pieces on the CPU, and 1 element). */
static void run_sum_squares(const pcase *c) {
    (void)c;
    static const int64_t ns[OPT_N] = {5, 20000, 1};
    const float *x[OPT_N];
    for (int i = 0; i < OPT_N; i++) x[i] = rnd(ns[i], 1.0);
    double sums[2][OPT_N];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        const float *xs[OPT_N];
        for (int i = 0; i < OPT_N; i++) {
            xs[i] = t_in(s, CT_F32, SH1(ns[i]), x[i])->data;
            sums[k][i] = NAN;
        }
        CALL(s, sum_squares, (xs, ns, OPT_N, sums[k]));
    }
    compare_d("sums", sums[DUT], sums[REF], OPT_N);
}

static void run_scale(const pcase *c) {
    (void)c;
    const float *x[OPT_N];
    for (int i = 0; i < OPT_N; i++) x[i] = rnd(OPT_NS[i], 1.0);
    ct_tensor *t[OPT_N][2];
    for (int k = 0; k < 2; k++) {
        side *s = &g_side[k];
        float *xs[OPT_N];
        for (int i = 0; i < OPT_N; i++) xs[i] = (t[i][k] = t_in(s, CT_F32, SH1(OPT_NS[i]), x[i]))->data;
        CALL(s, scale, (0.37f, xs, OPT_NS, OPT_N));
    }
    for (int i = 0; i < OPT_N; i++) {
        char what[32];
        snprintf(what, sizeof what, "x[%d] (*= c)", i);
        cmp(what, t[i]);
    }
}

/* --------------------------------------------------------------- driver */

typedef struct {
    int run, passed, skipped;
} tally;

/* The function pointer at byte offset `off` of the table (ENTRY) is set. */
static bool has_entry(const ct_backend *be, size_t off) {
    void (*fn)(void);
    memcpy(&fn, (const char *)be + off, sizeof fn);
    return fn != NULL;
}

/* Every row on `dut` against the CPU in one activation dtype (g_act); adds
 * to *total. */
static void run_pass(const char *name, const ct_backend *dut, tally *total) {
    const ct_backend *cpu = ct_cpu_backend();
    g_side[REF] = (side){.be = cpu};
    g_side[DUT] = (side){.be = dut};
    for (int k = 0; k < 2; k++) ct_arena_init(&g_side[k].scratch, g_side[k].be->mem, (size_t)1 << 20);
    g_exact = dut->device == CT_CPU || dut->device == CT_GUARDED; /* the CPU kernels */
    printf("== parity: %s against cpu (%s), activations %s\n", name,
           g_exact ? "the same kernels: bit-identical" : "per-row tolerances", ct_dtype_name(g_act));
    tally per_op[CT_OP_COUNT] = {{0, 0, 0}}, all = {0, 0, 0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N_ROWS; i++) {
        const pcase *c = &k_rows[i];
        tally *op = &per_op[c->op];
        if (!has_entry(dut, c->entry) || !ct_backend_supports(dut, c->op, &c->q)) {
            printf("skip %s: %s lacks it\n", c->name, name);
            op->skipped++, all.skipped++;
            continue;
        }
        if (!has_entry(cpu, c->entry) || !ct_backend_supports(cpu, c->op, &c->q)) {
            CHECK(false, "%s: the CPU backend itself lacks %s", c->name, c->entry_name);
            op->run++, all.run++;
            continue;
        }
        g_row = c;
        g_worst = 0.0;
        g_rng = (ct_test_rng){0x9e3779b97f4a7c15ull ^ (uint64_t)(i + 1) * 0x100000001b3ull};
        printf("  %-46s", c->name);
        fflush(stdout); /* a crash (the guard) shows the row */
        size_t wt = 0, xt = 0, xc = 0;
        if (c->flags & F_SMALL_TILES) {
            wt = ct_cpu_set_weight_tile_bytes(4096);
            xt = ct_cpu_set_xent_tile_bytes(4096);
            xc = ct_cpu_set_xent_chunk_bytes(1024);
        }
        int failures = ct_test_failures;
        c->run(c);
        if (c->flags & F_SMALL_TILES) {
            ct_cpu_set_weight_tile_bytes(wt);
            ct_cpu_set_xent_tile_bytes(xt);
            ct_cpu_set_xent_chunk_bytes(xc);
        }
        row_release();
        bool ok = ct_test_failures == failures;
        printf(" %s  max |err| %.3g\n", ok ? "ok  " : "FAIL", g_worst);
        op->run++, all.run++;
        op->passed += ok, all.passed += ok;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int k = 0; k < 2; k++) ct_arena_free(&g_side[k].scratch);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("-- %s against cpu, activations %s: %d rows, %d run, %d passed, %d skipped, %.2f s\n", name,
           ct_dtype_name(g_act), N_ROWS, all.run, all.passed, all.skipped, secs);
    printf("   %-22s %4s %7s %8s\n", "op", "run", "passed", "skipped");
    for (int op = 0; op < CT_OP_COUNT; op++)
        printf("   %-22s %4d %7d %8d\n", ct_op_name((ct_op_id)op), per_op[op].run, per_op[op].passed,
               per_op[op].skipped);
    total->run += all.run, total->passed += all.passed, total->skipped += all.skipped;
}

/* Every row on `dut`: with f32 activations, then with bf16 ones when the
 * backend keeps its activations in bf16 (its kernels take both) or when
 * CT_PARITY_ACT=bf16 asks (a backend with kernels of its own). */
static void run_backend(const char *name, const ct_backend *dut, tally *total) {
    const char *env = getenv("CT_PARITY_ACT");
    bool own_kernels = dut->device != CT_CPU && dut->device != CT_GUARDED;
    g_act = CT_F32;
    run_pass(name, dut, total);
    if (own_kernels && (dut->act_dtype == CT_BF16 || (env && !strcmp(env, "bf16")))) {
        g_act = CT_BF16;
        run_pass(name, dut, total);
        g_act = CT_F32;
    }
}

int main(int argc, char **argv) {
    enum { CAP = 8 };
    const char *names[CAP], *why[CAP];
    const ct_backend *bes[CAP];
    int n = ct_backend_list(names, bes, why, CAP);
    if (argc > 2) {
        fprintf(stderr, "usage: %s [BACKEND]   (no argument: every available backend)\n", argv[0]);
        return 2;
    }
    tally total = {0, 0, 0};
    if (argc == 2) {
        int i = 0;
        while (i < n && strcmp(names[i], argv[1]) != 0) i++;
        if (i == n) {
            printf("parity: this build has no backend '%s' (it has:", argv[1]);
            for (int j = 0; j < n; j++) printf(" %s", names[j]);
            printf("): skipped\n");
            return CT_TEST_SKIP;
        }
        if (!bes[i]) {
            printf("parity: backend %s is not available here: %s: skipped\n", names[i], why[i]);
            return CT_TEST_SKIP;
        }
        run_backend(names[i], bes[i], &total);
    } else {
        /* every available backend but the CPU, then the CPU against itself */
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < n; i++) {
                bool is_cpu = bes[i] && bes[i]->device == CT_CPU;
                if (!bes[i] && pass == 0) printf("parity: %s not available: %s\n", names[i], why[i]);
                if (bes[i] && is_cpu == (pass == 1)) run_backend(names[i], bes[i], &total);
            }
    }
    free(g_host);
    if (total.run == 0) {
        printf("parity: no row ran (%d skipped)\n", total.skipped);
        return CT_TEST_SKIP;
    }
    return ct_test_finish();
}
