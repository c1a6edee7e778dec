/* The memory plan (mem_plan.h): the bytes each allocation site of a training
 * step will hold, computed from the shapes. Every piece the code allocates
 * is rounded up to 256 bytes (CT_ARENA_ALIGN, ct_model_place's PLACE_ALIGN);
 * the rounding is summed into the slack item so the others read as the
 * plain sizes. */
#include "mem_plan.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "autograd/arena.h"
#include "autograd/ct_error.h"
#include "trainer/input_stage.h"
#include "trainer/model/lora.h"

#define MIB ((uint64_t)1 << 20)

static const char *const k_names[CT_PLAN_N_ITEMS] = {
    "quantized weights", "16-bit weights", "LoRA weights",          "LoRA grads",       "optimizer state",
    "batch inputs",      "layer-input checkpoints", "step activations", "recompute working set",
    "kernel workspace",  "loss chunk",     "allocator slack",       "CUDA context",
};

const char *ct_plan_item_name(ct_plan_item i) { return i < CT_PLAN_N_ITEMS ? k_names[i] : "?"; }

static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Sums pieces into one item, keeping their 256-byte rounding apart. */
typedef struct {
    uint64_t bytes, slack;
} acc;

static void put(acc *a, uint64_t bytes) {
    uint64_t r = (bytes + CT_ARENA_ALIGN - 1) / CT_ARENA_ALIGN * CT_ARENA_ALIGN;
    a->bytes += bytes;
    a->slack += r - bytes;
}

/* The model's shapes and the run's choices, in bytes per element. */
typedef struct {
    const ct_hf_config *m;                 /* config.json (borrowed) */
    int64_t D, F, L, V, Hq, Hkv, hd, Q, A; /* Q: wqkv's rows; A: attention output width */
    int64_t T, r;                          /* tokens per step, LoRA rank */
    uint64_t act, w16;                     /* activation and stored-weight element bytes */
    unsigned targets;
    bool quant, dq, quant_head, tied, gpu, bf16, dropout;
    int64_t blocksize;
    int threads;
} dims;

/* One 4-bit weight of n elements: codes, absmax (u8 with double quant) and
 * the nested absmax; each array is a piece of its own. */
static void quant_weight(acc *a, const dims *d, int64_t n) {
    int64_t nb = (n + d->blocksize - 1) / d->blocksize;
    put(a, (uint64_t)(n + 1) / 2);
    if (d->dq) {
        put(a, (uint64_t)nb);
        put(a, (uint64_t)((nb + 255) / 256) * 4);
    } else {
        put(a, (uint64_t)nb * 4);
    }
}

/* The LoRA parameter count of a linear [out, in] when targeted. */
static int64_t lora_numel(const dims *d, unsigned bit, int64_t out, int64_t in) {
    return d->targets & bit ? d->r * (in + out) : 0;
}

/* AdamW's slices start on 16 floats (trainer/optim/adamw.c). */
static uint64_t moment_floats(const dims *d, unsigned bit, int64_t out, int64_t in) {
    if (!(d->targets & bit)) return 0;
    uint64_t a = (uint64_t)(d->r * in + 15) / 16 * 16, b = (uint64_t)(d->r * out + 15) / 16 * 16;
    return a + b;
}

void ct_plan_block_linears(const ct_hf_config *m, unsigned bit[5], int64_t out[5], int64_t in[5]) {
    const int64_t D = m->hidden_size, F = m->intermediate_size;
    const int64_t Q = ct_hf_config_wqkv_rows(m), A = ct_hf_config_attn_width(m);
    const unsigned bits[5] = {CT_LORA_WQKV, CT_LORA_WO, CT_LORA_W1, CT_LORA_W3, CT_LORA_W2};
    const int64_t o[5] = {Q, D, F, F, D}, i[5] = {D, A, D, D, F};
    for (int k = 0; k < 5; k++) bit[k] = bits[k], out[k] = o[k], in[k] = i[k];
}

static void block_linears(const dims *d, unsigned bit[5], int64_t out[5], int64_t in[5]) {
    ct_plan_block_linears(d->m, bit, out, in);
}

/* A layer's recorded activations: everything its ops save for backward
 * (the recomputation's set); with_tail adds w2's output and the residual
 * sum, which a recomputation never stores (the _tail ops). */
static void layer_acts(acc *a, const dims *d, bool with_tail) {
    uint64_t T = (uint64_t)d->T, e = d->act;
    unsigned bit[5];
    int64_t out[5], in[5];
    block_linears(d, bit, out, in);
    put(a, T * (uint64_t)d->D * e); /* x = attention_norm(h) */
    put(a, T * 4);                  /* its rstd */
    put(a, T * (uint64_t)d->Q * e); /* qkv */
    put(a, T * (uint64_t)d->Q * e); /* rotated qkv */
    put(a, T * (uint64_t)d->A * e); /* attention output */
    put(a, (uint64_t)d->Hq * T * 4); /* its log-sum-exp */
    put(a, T * (uint64_t)d->D * e); /* wo's output */
    put(a, T * (uint64_t)d->D * e); /* h1 = h + o */
    put(a, T * (uint64_t)d->D * e); /* x2 = ffn_norm(h1) */
    put(a, T * 4);                  /* its rstd */
    put(a, T * (uint64_t)d->F * e); /* gate */
    put(a, T * (uint64_t)d->F * e); /* up */
    put(a, T * (uint64_t)d->F * e); /* silu(gate)·up */
    if (with_tail) {
        put(a, T * (uint64_t)d->D * e); /* w2's output */
        put(a, T * (uint64_t)d->D * e); /* h1 + down */
    }
    for (int k = 0; k < 5; k++)
        if (d->targets & bit[k]) put(a, T * (uint64_t)d->r * e); /* u = drop(x)·Aᵀ */
}

/* The grads a layer's backward creates, its input's excluded (that one is
 * the previous layer's output grad): every activation of layer_acts but the
 * statistics, plus w2's output (its grad exists even when the value is not
 * stored). */
static void layer_grads(acc *a, const dims *d) {
    uint64_t T = (uint64_t)d->T, e = d->act;
    put(a, T * (uint64_t)d->D * e); /* dx */
    put(a, T * (uint64_t)d->Q * e); /* dqkv */
    put(a, T * (uint64_t)d->Q * e); /* d rotated qkv */
    put(a, T * (uint64_t)d->A * e); /* d attention output */
    put(a, T * (uint64_t)d->D * e); /* do */
    put(a, T * (uint64_t)d->D * e); /* dh1 */
    put(a, T * (uint64_t)d->D * e); /* dx2 */
    put(a, T * (uint64_t)d->F * e); /* dgate */
    put(a, T * (uint64_t)d->F * e); /* dup */
    put(a, T * (uint64_t)d->F * e); /* d(silu(gate)·up) */
    put(a, T * (uint64_t)d->D * e); /* d down */
}

/* The largest temporary of one lora_linear call [out, in] (forward or
 * backward), by the chunk bounds of the kernels (cuda_kernels/lora_linear.cu
 * and weight_tile.cu: 32 MiB tiles; autograd/cpu/lora_linear.c: 4 MiB f32
 * weight tiles, 8 MiB dropout chunks, bf16 copies of the inputs). */
static uint64_t linear_temp(const dims *d, unsigned bit, int64_t out, int64_t in) {
    uint64_t T = (uint64_t)d->T, r = d->targets & bit ? (uint64_t)d->r : 0;
    uint64_t wide = (uint64_t)(in > out ? in : out);
    if (d->gpu) {
        uint64_t tile = min64(32 * MIB, (uint64_t)out * (uint64_t)in * 2); /* converted W tile */
        uint64_t accb = min64(32 * MIB, T * wide * 4);                      /* f32 accumulator tile */
        uint64_t lora = r ? T * r * (4 + 4 + 2) + r * (uint64_t)(in + out) * 2 : 0; /* u, g f32 + bf16; A, B bf16 */
        uint64_t drop = r && d->dropout ? min64(32 * MIB, T * (uint64_t)in * 4) : 0;
        return tile + accb + lora + drop;
    }
    uint64_t tile = d->bf16 ? min64(8 * MIB, (uint64_t)out * (uint64_t)in * 2)
                            : min64(4 * MIB, (uint64_t)out * (uint64_t)in * 4);
    uint64_t copies = d->bf16 ? T * wide * 2 : 0;                     /* bf16 rows of x or dY */
    uint64_t lora = r ? T * r * 4 : 0;                                 /* g = s·dY·B */
    uint64_t drop = r && d->dropout ? min64(8 * MIB, T * (uint64_t)in * 4) : 0;
    uint64_t packs = d->bf16 ? (uint64_t)d->threads * 256 * (uint64_t)wide * 4 : 0; /* per-thread panels */
    return tile + copies + lora + drop + packs;
}

/* Attention's temporaries: the backward's D = rowsum(dO·O) [Hq, T] and the
 * run bounds; on the CPU also the per-thread K/V blocks. */
static uint64_t attention_temp(const dims *d) {
    uint64_t T = (uint64_t)d->T;
    uint64_t t = (uint64_t)d->Hq * T * 4 + 2 * T * 8;
    if (!d->gpu) t += 2 * T * (uint64_t)d->hd * 4 * 2 + (uint64_t)d->threads * 64 * (uint64_t)d->hd * 4 * 8;
    return t;
}

/* The chunked cross-entropy's temporaries over n = T rows (all trained at
 * most): per-row statistics, the [Tc, Vt] logits block within 32 MiB, a
 * converted head tile, the rows in bf16/f32 (cuda_kernels/linear_xent.cu,
 * autograd/cpu/linear_xent.c). */
static uint64_t loss_temp(const dims *d) {
    uint64_t n = (uint64_t)d->T, D = (uint64_t)d->D, V = (uint64_t)d->V;
    uint64_t rows = n * (8 + 4 + 4 + 8 + 4 + 8);
    uint64_t logits = min64(32 * MIB, n * V * 4);
    bool head16 = !(d->quant && d->quant_head) && d->w16 == 2;
    uint64_t tile = d->gpu ? (head16 && d->bf16 ? 0 : min64(32 * MIB, V * D * 2))
                           : (d->bf16 && !head16 ? min64(8 * MIB, V * D * 2) : 0);
    uint64_t x = d->gpu ? n * D * (2 + 4 + 4) : (d->bf16 ? n * D * 2 : 0);
    return rows + logits + tile + x;
}

static int make_dims(const ct_plan_input *in, int64_t max_length, dims *d) {
    const ct_hf_config *m = in->model;
    const ct_run_config *c = in->run;
    memset(d, 0, sizeof *d);
    d->m = m;
    d->D = m->hidden_size, d->F = m->intermediate_size, d->L = m->num_hidden_layers, d->V = m->vocab_size;
    d->Hq = m->num_attention_heads, d->Hkv = m->num_key_value_heads, d->hd = m->head_dim;
    d->Q = (d->Hq + 2 * d->Hkv) * d->hd;
    d->A = d->Hq * d->hd;
    d->T = c->batch_size * (max_length > 0 ? max_length : c->max_length);
    d->r = c->lora.r;
    d->targets = c->lora.target_modules;
    d->act = in->gpu ? 2 : 4;
    d->w16 = strcmp(m->torch_dtype, "bfloat16") == 0 || strcmp(m->torch_dtype, "float16") == 0 ? 2 : 4;
    d->quant = c->quantization.load_in_4bit;
    d->dq = c->quantization.double_quant;
    d->quant_head = c->quantization.quantize_output;
    d->blocksize = c->quantization.blocksize > 0 ? c->quantization.blocksize : 64;
    d->tied = m->tie_word_embeddings;
    d->gpu = in->gpu;
    d->bf16 = c->compute_dtype == CT_BF16;
    d->dropout = c->lora.lora_dropout > 0;
    d->threads = in->cpu_threads > 0 ? in->cpu_threads : omp_get_max_threads();
    if (d->D < 1 || d->L < 1 || d->V < 1 || d->hd < 1 || d->T < 1 || d->r < 1)
        return ct_errorf(CT_EINPUT, "plan: the model (hidden %lld, layers %lld, vocab %lld) and the run (%lld "
                         "tokens per step, LoRA r %lld) must all be positive", (long long)d->D, (long long)d->L,
                         (long long)d->V, (long long)d->T, (long long)d->r);
    return CT_OK;
}

int ct_mem_plan_make(const ct_plan_input *in, int64_t max_length, ct_mem_plan *p) {
    memset(p, 0, sizeof *p);
    dims d;
    CT_TRY(make_dims(in, max_length, &d));
    p->tokens = d.T;
    uint64_t T = (uint64_t)d.T, D = (uint64_t)d.D, V = (uint64_t)d.V;
    unsigned bit[5];
    int64_t out[5], inn[5];
    block_linears(&d, bit, out, inn);
    bool embed_host = in->embedding_on_host && in->gpu && !d.tied;
    bool optim_host = in->optimizer_on_host && in->gpu; /* on the CPU the backend's memory is the host's */
    acc it[CT_PLAN_N_ITEMS];
    memset(it, 0, sizeof it);

    /* frozen weights: the five linears per layer, two norms per layer, the
     * final norm, the embedding, the head (unless tied) */
    for (int64_t l = 0; l < d.L; l++) {
        for (int k = 0; k < 5; k++) {
            if (d.quant) quant_weight(&it[CT_PLAN_QUANT], &d, out[k] * inn[k]);
            else put(&it[CT_PLAN_W16], (uint64_t)(out[k] * inn[k]) * d.w16);
        }
        put(&it[CT_PLAN_W16], D * d.w16);
        put(&it[CT_PLAN_W16], D * d.w16);
    }
    put(&it[CT_PLAN_W16], D * d.w16);
    if (embed_host) p->host_bytes += V * D * d.w16;
    else put(&it[CT_PLAN_W16], V * D * d.w16);
    if (!d.tied) {
        if (d.quant && d.quant_head) quant_weight(&it[CT_PLAN_QUANT], &d, d.V * d.D);
        else put(&it[CT_PLAN_W16], V * D * d.w16);
    }

    /* LoRA: values and grads one block each, moments one block (2 x the
     * slices rounded to 16 floats) */
    int64_t lora = 0;
    uint64_t moments = 0;
    for (int k = 0; k < 5; k++) {
        lora += d.L * lora_numel(&d, bit[k], out[k], inn[k]);
        moments += (uint64_t)d.L * moment_floats(&d, bit[k], out[k], inn[k]);
    }
    lora += lora_numel(&d, CT_LORA_OUTPUT, d.V, d.D);
    moments += moment_floats(&d, CT_LORA_OUTPUT, d.V, d.D);
    put(&it[CT_PLAN_LORA], (uint64_t)lora * 4);
    put(&it[CT_PLAN_GRADS], (uint64_t)lora * 4);
    /* offloaded: m, v, a master copy of the values and a grad buffer, f32
     * (trainer/optim/adamw.h, "Offload") */
    if (optim_host) p->host_bytes += 2 * moments * 4 + 2 * (uint64_t)lora * 4;
    else put(&it[CT_PLAN_OPTIM], 2 * moments * 4);

    /* two staged slots of one block each (trainer/input_stage.h): ids,
     * labels, positions, segment runs, then the embedding rows gathered on
     * the host */
    for (int i = 0; i < 2; i++)
        put(&it[CT_PLAN_INPUTS], ct_input_stage_slot_bytes(d.T, embed_host ? T * D * d.act : 0));
    /* main arena: the embedding output (unless staged with the inputs) and
     * the kept layer outputs (every activation without checkpointing); the
     * final norm, the loss's d(nll)/dx, the loss grads and the residual
     * grads (with checkpointing two [T, D] buffers alternate, tape.c) */
    acc *ck = &it[CT_PLAN_CKPT], *st = &it[CT_PLAN_STEP];
    if (!embed_host) put(ck, T * D * d.act); /* the embedding's output */
    bool ckpt = in->run->gradient_checkpointing;
    for (int64_t l = 0; l < d.L; l++) {
        if (ckpt) {
            put(ck, T * D * d.act);
        } else {
            layer_acts(ck, &d, true);
            layer_grads(st, &d);
            if (l > 0) put(st, T * D * d.act); /* its input's grad (the last layer's output grad comes below) */
        }
    }
    put(st, T * D * d.act); /* final norm's output */
    put(st, T * 4);         /* its rstd */
    put(st, T * D * d.act); /* d(nll)/dx of the loss */
    put(st, 4);             /* the loss */
    put(st, 4);             /* its grad */
    put(st, T * D * d.act); /* grad of the final norm's output */
    put(st, T * D * d.act); /* grad of the last layer's output */
    if (ckpt && d.L > 1) put(st, T * D * d.act); /* the second residual grad */
    if (d.targets & CT_LORA_OUTPUT) {
        put(st, (uint64_t)d.r * D * 4);
        put(st, V * (uint64_t)d.r * 4);
    }

    /* scratch arena: one layer's recomputation and grads (checkpointing),
     * plus the largest temporary while they are held */
    if (ckpt) {
        layer_acts(&it[CT_PLAN_RECOMPUTE], &d, false);
        layer_grads(&it[CT_PLAN_RECOMPUTE], &d);
    }
    uint64_t ws = attention_temp(&d);
    for (int k = 0; k < 5; k++) ws = max64(ws, linear_temp(&d, bit[k], out[k], inn[k]));
    put(&it[CT_PLAN_WORKSPACE], ws);
    put(&it[CT_PLAN_LOSS], loss_temp(&d));

    /* The loss runs before the backward, a layer's recomputation during it:
     * the scratch arena holds the larger of the two, so the loss item is
     * what it needs beyond the layer's set. */
    uint64_t layer = it[CT_PLAN_RECOMPUTE].bytes + it[CT_PLAN_RECOMPUTE].slack + it[CT_PLAN_WORKSPACE].bytes +
                     it[CT_PLAN_WORKSPACE].slack, loss = it[CT_PLAN_LOSS].bytes + it[CT_PLAN_LOSS].slack;
    snprintf(p->detail[CT_PLAN_LOSS], 96, "%.1f MiB, in the scratch arena the backward reuses: the excess counts",
             (double)loss / (double)MIB);
    it[CT_PLAN_LOSS].bytes = loss > layer ? loss - layer : 0;
    it[CT_PLAN_LOSS].slack = 0;
    p->scratch_arena = max64(layer, loss);
    if (d.gpu) { /* outside the arenas: cuBLASLt's workspace (gemm.cu), the grad-norm sums (optim.cu) */
        put(&it[CT_PLAN_WORKSPACE], 32 * MIB);
        put(&it[CT_PLAN_WORKSPACE], 4096 * 8);
        put(&it[CT_PLAN_CONTEXT], 512 * MIB);
    }
    uint64_t slack = 0;
    for (int i = 0; i < CT_PLAN_N_ITEMS; i++) {
        p->bytes[i] = it[i].bytes;
        slack += it[i].slack;
    }
    p->bytes[CT_PLAN_SLACK] = slack;
    p->main_arena = it[CT_PLAN_CKPT].bytes + it[CT_PLAN_CKPT].slack + it[CT_PLAN_STEP].bytes + it[CT_PLAN_STEP].slack;
    for (int i = 0; i < CT_PLAN_N_ITEMS; i++) p->total += p->bytes[i];
    p->allocator_total = p->total - p->bytes[CT_PLAN_CONTEXT];

    snprintf(p->detail[CT_PLAN_QUANT], 96, "%s, blocksize %lld%s", d.quant ? "nf4/fp4" : "none",
             (long long)d.blocksize, d.dq ? ", double quant" : "");
    snprintf(p->detail[CT_PLAN_W16], 96, "%s%s%s", d.w16 == 2 ? "16-bit" : "fp32",
             embed_host ? ", embedding on the host" : "", d.quant && d.quant_head ? ", head 4-bit" : "");
    snprintf(p->detail[CT_PLAN_LORA], 96, "%lld params, r %lld, f32", (long long)lora, (long long)d.r);
    snprintf(p->detail[CT_PLAN_OPTIM], 96, "AdamW m, v f32%s", optim_host ? ": on the host" : "");
    snprintf(p->detail[CT_PLAN_INPUTS], 96, "2 slots: ids, labels, positions, runs%s", embed_host ? ", embedding rows" : "");
    snprintf(p->detail[CT_PLAN_CKPT], 96, "%s, %lld x %lld x %s", ckpt ? "layer inputs" : "all activations",
             (long long)d.T, (long long)d.D, d.act == 2 ? "bf16" : "f32");
    snprintf(p->detail[CT_PLAN_RECOMPUTE], 96, "%s", ckpt ? "one layer's activations + grads" : "none (no checkpointing)");
    snprintf(p->detail[CT_PLAN_CONTEXT], 96, "%s", d.gpu ? "outside the allocator; typical" : "none on the CPU");
    return CT_OK;
}

int64_t ct_mem_plan_max_length(const ct_plan_input *in, uint64_t budget) {
    int64_t hi = in->model->max_position_embeddings, best = 0;
    for (int64_t lo = 64; lo <= hi;) { /* multiples of 64: binary search on the multiple */
        int64_t mid = (lo / 64 + hi / 64) / 2 * 64;
        if (mid < lo) mid = lo;
        ct_mem_plan p;
        if (ct_mem_plan_make(in, mid, &p) == CT_OK && p.total <= budget) {
            best = mid;
            lo = mid + 64;
        } else {
            hi = mid - 64;
        }
    }
    return best;
}
