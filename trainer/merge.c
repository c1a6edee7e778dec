/* ctuner merge: LoRA into the base weights, a Hugging Face directory out (see
 * merge.h).
 *
 * The base is opened twice: once as a ct_model (which checks every tensor
 * against config.json and gives the decoder whose linears the adapter's A/B are
 * checked and loaded against; its weights stay untouched in the mapping), once
 * as a plain safetensors mapping that the output streams from. Output tensors
 * are declared up front (shapes are known without computing anything) and
 * produced in the writer's fill callback, one at a time, shard by shard.
 *
 * A 4-bit weight becomes six output tensors (bitsandbytes' state_dict keys).
 * The writer orders a shard's tensors by dtype then name (the safetensors
 * layout), so all f32 parts of a shard (quant_map, nested_absmax,
 * nested_quant_map) come before its u8 parts (codes, absmax, quant_state): a
 * weight is quantized when its first part is asked for; its small arrays
 * (absmax codes, nested absmax: 1/32 of the codes) stay in memory and its
 * codes go to an unlinked scratch file until the writer asks for them, so
 * memory does not grow with the shard size. */
#include "merge.h"

#include <cblas.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "trainer/adapter.h"
#include "trainer/fsutil.h"
#include "trainer/hf_config.h"
#include "trainer/model.h"
#include "trainer/safetensors.h"

#define CHUNK ((int64_t)1 << 22) /* elements converted / bytes copied per append */

/* The output tensors of one source tensor: PLAIN, or the six 4-bit parts. */
typedef enum { P_PLAIN, P_CODES, P_ABSMAX, P_QMAP, P_NABSMAX, P_NQMAP, P_QSTATE } part_kind;
enum { N_QPARTS = 6 };
static const char *const k_suffix[] = {"", "", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                        ".quant_state.bitsandbytes__"}; /* + "nf4" / "fp4" */

typedef struct {
    const ct_st_tensor *src;    /* base tensor */
    const ct_lora_param *a, *b; /* its LoRA pair (A [r, in], B [out, r]), or NULL */
    bool quantize;              /* written as 4-bit */
    bool ready;                 /* quantized: the fields below are set */
    int parts_left;             /* 4-bit parts still to write */
    int64_t nblocks, nn;        /* absmax blocks (64 elements), nested blocks (256 absmax) */
    float offset;               /* mean absmax (bnb nested_offset) */
    float *nested_absmax;       /* [nn] f32, then qabsmax [nblocks] u8 in the same block (owned) */
    uint8_t *qabsmax;
    int64_t spill_off;          /* where its codes [(n+1)/2] are in the scratch file */
} src_entry;

typedef struct {
    char *name;     /* output tensor name (owned) */
    part_kind kind;
    size_t src;     /* index into srcs */
} out_entry;

typedef struct {
    const ct_merge_options *o;
    ct_st_file *st;         /* the base, streamed */
    float scale;
    ct_dtype out_dt;
    ct_st_dtype out_st;
    src_entry *srcs;        /* [n_srcs] in state_dict order */
    size_t n_srcs;
    out_entry *outs;        /* [n_outs] in declaration order */
    size_t n_outs;
    out_entry **by_name;    /* [n_outs] sorted by name, for the fill callback */
    float *f32;             /* [f32_cap] one whole tensor in fp32 */
    size_t f32_cap;
    float *stage;           /* [CHUNK] a chunk as fp32 */
    uint16_t *half;         /* [CHUNK] a chunk as bf16/f16 */
    int spill_fd;           /* unlinked scratch file of 4-bit codes, -1 when none */
    int64_t spill_end;      /* bytes in use (reset when no codes are pending) */
    int pending_codes;      /* quantized weights whose codes are not written yet */
    float code[16];         /* the 4-bit code values (bnb quant_map) */
    float map8[256];        /* the 8-bit map of double quantization (bnb nested_quant_map) */
    uint64_t done, total;
    ct_merge_report *rep;
} merge_ctx;

/* ------------------------------------------------------------ order and names */

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Position in InternLM2ForCausalLM's state_dict (which decides the sharding,
 * as in transformers): embeddings, layer by layer in module order, norm, head,
 * then anything else by name. `linear` tells a block linear (4-bit candidate). */
static void order_key(const char *name, int64_t key[3], bool *linear) {
    static const char *const layer_parts[] = {"attention.wqkv.weight", "attention.wo.weight", "feed_forward.w1.weight",
                                              "feed_forward.w3.weight", "feed_forward.w2.weight",
                                              "attention_norm.weight", "ffn_norm.weight"};
    long long layer = 0;
    int used = 0;
    *linear = false;
    key[1] = key[2] = 0;
    if (!strcmp(name, "model.tok_embeddings.weight")) key[0] = 0;
    else if (sscanf(name, "model.layers.%lld.%n", &layer, &used) == 1 && used > 0) {
        key[0] = 1, key[1] = layer, key[2] = 100;
        for (int p = 0; p < 7; p++)
            if (!strcmp(name + used, layer_parts[p])) key[2] = p, *linear = p < 5;
    } else if (!strcmp(name, "model.norm.weight")) key[0] = 2;
    else if (!strcmp(name, "output.weight")) key[0] = 3;
    else key[0] = 4;
}

static int cmp_src(const void *x, const void *y) {
    const src_entry *a = x, *b = y;
    int64_t ka[3], kb[3];
    bool l;
    order_key(a->src->name, ka, &l);
    order_key(b->src->name, kb, &l);
    for (int i = 0; i < 3; i++)
        if (ka[i] != kb[i]) return ka[i] < kb[i] ? -1 : 1;
    return strcmp(a->src->name, b->src->name);
}

static int cmp_out_name(const void *x, const void *y) {
    return strcmp((*(out_entry *const *)x)->name, (*(out_entry *const *)y)->name);
}

/* bitsandbytes' quant_state JSON (QuantState.as_dict(packed=True), json.dumps
 * spacing and key order). nested_offset is printed "%.8e": nine significant
 * digits give the fp32 offset back exactly, and the text has the same length
 * for every offset >= 0, so the tensor's size is known before quantizing. */
static int state_json(char *buf, size_t cap, ct_quant_type qt, ct_dtype dt, const int64_t *shape, float offset) {
    const char *dn = dt == CT_BF16 ? "bfloat16" : dt == CT_F16 ? "float16" : "float32";
    return snprintf(buf, cap,
                    "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [%lld, %lld], "
                    "\"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %.8e}",
                    ct_quant_type_name(qt), CT_QUANT_DEFAULT_BLOCKSIZE, dn, (long long)shape[0],
                    (long long)shape[1], CT_QUANT_NESTED_BLOCKSIZE, (double)offset);
}

/* ------------------------------------------------------------ plan */

/* One source tensor: its LoRA pair (by PEFT key) and whether it goes 4-bit. */
static int plan_source(merge_ctx *c, const ct_lora *lora, const ct_st_tensor *t, src_entry *s) {
    memset(s, 0, sizeof *s);
    s->src = t;
    int64_t key[3];
    bool linear = false;
    order_key(t->name, key, &linear);
    s->quantize = c->o->quantize && linear && t->ndim == 2;
    if (!ends_with(t->name, ".weight")) return CT_OK;
    char an[320], bn[320];
    int len = (int)(strlen(t->name) - strlen(".weight"));
    snprintf(an, sizeof an, "base_model.model.%.*s.lora_A.weight", len, t->name);
    snprintf(bn, sizeof bn, "base_model.model.%.*s.lora_B.weight", len, t->name);
    s->a = ct_lora_find(lora, an);
    s->b = ct_lora_find(lora, bn);
    if (!s->a != !s->b) return ct_errorf(CT_ERUNTIME, "%s: LoRA slots hold only one of A and B", t->name);
    return CT_OK;
}

static int add_out(merge_ctx *c, const char *name, const char *suffix, part_kind kind, size_t src) {
    out_entry *e = &c->outs[c->n_outs];
    size_t n = strlen(name) + strlen(suffix) + 4;
    if (!(e->name = malloc(n))) return ct_errorf(CT_ERUNTIME, "out of memory");
    snprintf(e->name, n, "%s%s%s", name, suffix, kind == P_QSTATE ? ct_quant_type_name(c->o->quant_type) : "");
    e->kind = kind;
    e->src = src;
    c->n_outs++;
    return CT_OK;
}

/* Declares every output tensor (data streamed later) in state_dict order. */
static int declare_outputs(merge_ctx *c, ct_st_writer *w) {
    c->outs = calloc(c->n_srcs * N_QPARTS + 1, sizeof *c->outs);
    c->by_name = calloc(c->n_srcs * N_QPARTS + 1, sizeof *c->by_name);
    if (!c->outs || !c->by_name) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; i < c->n_srcs; i++) {
        const ct_st_tensor *t = c->srcs[i].src;
        if (!c->srcs[i].quantize) {
            CT_TRY(add_out(c, t->name, "", P_PLAIN, i));
            CT_TRY(ct_st_writer_add(w, t->name, c->out_st, t->ndim, t->shape, NULL));
            continue;
        }
        int64_t n = t->numel, nblocks = (n + CT_QUANT_DEFAULT_BLOCKSIZE - 1) / CT_QUANT_DEFAULT_BLOCKSIZE;
        int64_t nn = (nblocks + CT_QUANT_NESTED_BLOCKSIZE - 1) / CT_QUANT_NESTED_BLOCKSIZE;
        int64_t json_len = state_json(NULL, 0, c->o->quant_type, c->out_dt, t->shape, 0.0f);
        const struct {
            ct_st_dtype dt;
            int ndim;
            int64_t shape[2];
        } parts[N_QPARTS] = {
            {CT_ST_U8, 2, {(n + 1) / 2, 1}}, /* X.weight: packed codes */
            {CT_ST_U8, 1, {nblocks, 0}},     /* .absmax: 8-bit codes of absmax - offset */
            {CT_ST_F32, 1, {16, 0}},         /* .quant_map: the 16 code values */
            {CT_ST_F32, 1, {nn, 0}},         /* .nested_absmax */
            {CT_ST_F32, 1, {256, 0}},        /* .nested_quant_map: the 8-bit dynamic map */
            {CT_ST_U8, 1, {json_len, 0}},    /* .quant_state.bitsandbytes__nf4 */
        };
        for (int p = 0; p < N_QPARTS; p++) {
            CT_TRY(add_out(c, t->name, k_suffix[P_CODES + p], (part_kind)(P_CODES + p), i));
            CT_TRY(ct_st_writer_add(w, c->outs[c->n_outs - 1].name, parts[p].dt, parts[p].ndim, parts[p].shape, NULL));
        }
        c->srcs[i].parts_left = N_QPARTS;
    }
    for (size_t i = 0; i < c->n_outs; i++) c->by_name[i] = &c->outs[i];
    qsort(c->by_name, c->n_outs, sizeof *c->by_name, cmp_out_name);
    c->total = ct_st_writer_total_bytes(w);
    return ct_st_writer_metadata(w, "format", "pt"); /* transformers refuses files without it */
}

/* ------------------------------------------------------------ producing tensors */

static int grow_f32(merge_ctx *c, int64_t n) {
    if ((size_t)n <= c->f32_cap) return CT_OK;
    free(c->f32);
    c->f32 = malloc((size_t)n * sizeof(float));
    c->f32_cap = c->f32 ? (size_t)n : 0;
    return c->f32 ? CT_OK : ct_errorf(CT_ERUNTIME, "out of memory (%lld floats for one tensor)", (long long)n);
}

/* Elements [i0, i0 + n) of a base tensor, as a view the reader's helpers take. */
static ct_st_tensor sub_view(const ct_st_tensor *t, int64_t i0, int64_t n) {
    ct_st_tensor v = *t;
    size_t es = ct_st_dtype_size(t->dtype);
    v.data = (const unsigned char *)t->data + (size_t)i0 * es;
    v.numel = n, v.nbytes = (size_t)n * es, v.ndim = 1, v.shape[0] = n;
    return v;
}

/* Appends n fp32 values in the output dtype (converted in chunks). */
static int emit_f32(merge_ctx *c, ct_st_writer *w, const float *x, int64_t n) {
    if (c->out_dt == CT_F32) return ct_st_writer_append(w, x, (size_t)n * sizeof(float));
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        int64_t m = n - i0 < CHUNK ? n - i0 : CHUNK;
        CT_TRY(ct_convert(c->half, c->out_dt, x + i0, CT_F32, m));
        CT_TRY(ct_st_writer_append(w, c->half, (size_t)m * 2));
    }
    return CT_OK;
}

/* An untouched tensor: its bytes as they are when the dtype stays, else each
 * chunk read as fp32 (exact) and rounded once to the output dtype. Pages of the
 * mapping are released as the copy moves on, so RSS stays at a chunk. */
static int emit_untouched(merge_ctx *c, ct_st_writer *w, const ct_st_tensor *t) {
    bool same = t->dtype == c->out_st;
    for (int64_t i0 = 0; i0 < t->numel; i0 += CHUNK) {
        int64_t m = t->numel - i0 < CHUNK ? t->numel - i0 : CHUNK;
        ct_st_tensor v = sub_view(t, i0, m);
        if (same) CT_TRY(ct_st_writer_append(w, v.data, v.nbytes));
        else {
            CT_TRY(ct_st_read_f32(&v, c->stage));
            CT_TRY(emit_f32(c, w, c->stage, m));
        }
        ct_st_release(c->st, &v);
    }
    if (same) c->rep->n_copied++;
    else c->rep->n_converted++;
    return CT_OK;
}

/* c->f32 = the source as fp32, plus scale · B · A when it has a LoRA pair. */
static int load_merged(merge_ctx *c, const src_entry *s) {
    const ct_st_tensor *t = s->src;
    CT_TRY(grow_f32(c, t->numel));
    float *W = c->f32; /* [out, in] */
    CT_TRY(ct_st_read_f32(t, W));
    ct_st_release(c->st, t);
    if (!s->a) return CT_OK;
    int out = (int)t->shape[0], in = (int)t->shape[1], r = (int)s->a->t->shape[0];
    const float *A = s->a->t->data, *B = s->b->t->data; /* [r, in], [out, r] */
    /* W[out, in] += scale · B[out, r] · A[r, in]   (out×r)·(r×in), fp32 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, c->scale, B, r, A, in, 1.0f, W, in);
    int64_t n = t->numel, first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad)
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(W[i]) && i < first_bad) first_bad = i;
    if (first_bad < n)
        return ct_errorf(CT_EINPUT, "%s: merged weight element %lld is not finite (W + %g·B·A overflows): the "
                         "adapter %s holds extreme values", t->name, (long long)first_bad, (double)c->scale,
                         c->o->adapter_dir);
    c->rep->n_merged++;
    return CT_OK;
}

/* pwrite/pread of all n bytes at off. */
static int spill_io(merge_ctx *c, bool write, void *buf, size_t n, int64_t off) {
    for (size_t k = 0; k < n;) {
        ssize_t m = write ? pwrite(c->spill_fd, (char *)buf + k, n - k, (off_t)(off + (int64_t)k))
                          : pread(c->spill_fd, (char *)buf + k, n - k, (off_t)(off + (int64_t)k));
        if (m <= 0) return ct_errorf(CT_ERUNTIME, "scratch file of the 4-bit codes: %s failed (disk full?)",
                                     write ? "write" : "read");
        k += (size_t)m;
    }
    return CT_OK;
}

/* Quantizes a block linear (merged, rounded to the output dtype): codes to the
 * scratch file, absmax arrays and offset into s. */
static int quantize_source(merge_ctx *c, src_entry *s) {
    CT_TRY(load_merged(c, s));
    float *W = c->f32;
    int64_t n = s->src->numel;
    /* The values the unquantized output would hold: quantizing them equals
     * quantize-on-load of that output (bf16/f16 -> f32 is exact). */
    if (c->out_dt != CT_F32) {
        bool bf = c->out_dt == CT_BF16;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            W[i] = bf ? ct_bf16_to_f32(ct_f32_to_bf16(W[i])) : ct_f16_to_f32(ct_f32_to_f16(W[i]));
    }
    ct_quant_params qp = {.type = c->o->quant_type, .blocksize = CT_QUANT_DEFAULT_BLOCKSIZE, .double_quant = true};
    ct_quant_state q;
    CT_TRY(ct_quant_quantize(&q, W, CT_F32, 2, s->src->shape, &qp, s->src->name));
    memcpy(c->code, q.code, sizeof c->code); /* the same for every weight */
    memcpy(c->map8, q.map8, sizeof c->map8);
    s->nblocks = q.nblocks;
    s->nn = (q.nblocks + q.nested_blocksize - 1) / q.nested_blocksize;
    s->offset = q.offset;
    s->spill_off = c->spill_end;
    int rc = spill_io(c, true, q.codes, (size_t)(q.n + 1) / 2, s->spill_off);
    s->nested_absmax = rc ? NULL : malloc((size_t)s->nn * sizeof(float) + (size_t)s->nblocks);
    if (rc == CT_OK && !s->nested_absmax) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    if (rc == CT_OK) {
        s->qabsmax = (uint8_t *)(s->nested_absmax + s->nn);
        memcpy(s->nested_absmax, q.nested_absmax, (size_t)s->nn * sizeof(float));
        memcpy(s->qabsmax, q.qabsmax, (size_t)s->nblocks);
        c->spill_end += (q.n + 1) / 2;
        c->pending_codes++;
        s->ready = true;
        c->rep->n_quantized++;
    }
    ct_quant_free(&q);
    return rc;
}

/* Appends a weight's codes from the scratch file, in chunks. */
static int emit_codes(merge_ctx *c, ct_st_writer *w, const src_entry *s) {
    int64_t n = (s->src->numel + 1) / 2;
    for (int64_t k = 0; k < n; k += CHUNK) {
        size_t m = (size_t)(n - k < CHUNK ? n - k : CHUNK);
        CT_TRY(spill_io(c, false, c->stage, m, s->spill_off + k));
        CT_TRY(ct_st_writer_append(w, c->stage, m));
    }
    if (--c->pending_codes == 0) c->spill_end = 0; /* nothing pending: reuse the file from the start */
    return CT_OK;
}

static int write_part(merge_ctx *c, ct_st_writer *w, src_entry *s, part_kind kind) {
    if (!s->ready) CT_TRY(quantize_source(c, s));
    char json[512];
    int len = 0;
    switch (kind) {
    case P_CODES: CT_TRY(emit_codes(c, w, s)); break;
    case P_ABSMAX: CT_TRY(ct_st_writer_append(w, s->qabsmax, (size_t)s->nblocks)); break;
    case P_QMAP: CT_TRY(ct_st_writer_append(w, c->code, sizeof c->code)); break;
    case P_NABSMAX: CT_TRY(ct_st_writer_append(w, s->nested_absmax, (size_t)s->nn * sizeof(float))); break;
    case P_NQMAP: CT_TRY(ct_st_writer_append(w, c->map8, sizeof c->map8)); break;
    case P_QSTATE:
        len = state_json(json, sizeof json, c->o->quant_type, c->out_dt, s->src->shape, s->offset);
        if (len != state_json(NULL, 0, c->o->quant_type, c->out_dt, s->src->shape, 0.0f))
            return ct_errorf(CT_ERUNTIME, "%s: quant_state text changed length (offset %g)", s->src->name,
                             (double)s->offset);
        CT_TRY(ct_st_writer_append(w, json, (size_t)len));
        break;
    default: return ct_errorf(CT_ERUNTIME, "bad part kind %d", (int)kind);
    }
    if (--s->parts_left == 0) { /* all six written: drop the small arrays */
        free(s->nested_absmax);
        s->nested_absmax = NULL, s->qabsmax = NULL;
        s->ready = false;
    }
    return CT_OK;
}

/* The writer's fill callback: produces the output tensor `t` names. */
static int fill(void *vctx, ct_st_writer *w, const ct_st_tensor *t) {
    merge_ctx *c = vctx;
    out_entry key = {.name = (char *)t->name}, *kp = &key;
    out_entry **hit = bsearch(&kp, c->by_name, c->n_outs, sizeof *c->by_name, cmp_out_name);
    if (!hit) return ct_errorf(CT_ERUNTIME, "writer asked for an unknown tensor '%s'", t->name);
    if (c->o->progress) CT_TRY(c->o->progress(c->o->progress_ctx, t->name, c->done, c->total));
    src_entry *s = &c->srcs[(*hit)->src];
    int rc;
    if ((*hit)->kind != P_PLAIN) rc = write_part(c, w, s, (*hit)->kind);
    else if (!s->a) rc = emit_untouched(c, w, s->src);
    else {
        rc = load_merged(c, s);
        if (rc == CT_OK) rc = emit_f32(c, w, c->f32, s->src->numel);
    }
    if (rc) return ct_error_wrap(rc, "%s", t->name);
    c->done += t->nbytes;
    return CT_OK;
}

/* ------------------------------------------------------------ checks */

/* A bitsandbytes (or other quantized) base cannot give W exactly. */
static int refuse_quantized_base(const ct_hf_config *cfg, const ct_st_file *st, const char *base) {
    const char *what = NULL;
    if (cfg->quantization_config) what = "its config.json has a quantization_config";
    for (size_t i = 0; !what && i < ct_st_count(st); i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        if (strstr(t->name, ".quant_state.") || ends_with(t->name, ".absmax") || ends_with(t->name, ".SCB"))
            what = "its weights hold quantization states";
    }
    if (!what) return CT_OK;
    return ct_errorf(CT_EINPUT, "--base %s is a quantized model (%s): a 4-bit base cannot be merged exactly. Pass "
                     "the original full-precision model the adapter was trained on (e.g. the bf16 Hugging Face "
                     "directory), and add --quantize nf4 to get a 4-bit result", base, what);
}

/* The output dtype: --dtype, else config.json torch_dtype, else the stored one. */
static int pick_dtype(const ct_merge_options *o, const ct_hf_config *cfg, const ct_st_file *st, ct_dtype *dt) {
    int d = o->dtype;
    if (d < 0 && cfg->torch_dtype[0]) d = ct_dtype_from_name(cfg->torch_dtype);
    if (d < 0 || (d != CT_F32 && d != CT_BF16 && d != CT_F16)) {
        const ct_st_tensor *e = ct_st_find(st, "model.tok_embeddings.weight");
        d = e ? ct_st_dtype_to_ct(e->dtype) : CT_F32;
    }
    if (d != CT_F32 && d != CT_BF16 && d != CT_F16)
        return ct_errorf(CT_EINPUT, "output dtype %s is not one of bf16, fp16, fp32", ct_dtype_name((ct_dtype)d));
    *dt = (ct_dtype)d;
    return CT_OK;
}

static int check_out_dir(const char *out) {
    if (!ct_path_exists(out)) return CT_OK;
    if (!ct_path_is_dir(out)) return ct_errorf(CT_EINPUT, "--out %s exists and is not a directory", out);
    bool empty = false;
    CT_TRY(ct_dir_is_empty(out, &empty));
    if (!empty) return ct_errorf(CT_EINPUT, "--out %s exists and is not empty: choose a new directory or remove it", out);
    return CT_OK;
}

/* ------------------------------------------------------------ other files */

/* transformers' BitsAndBytesConfig.to_dict() for this checkpoint (sorted keys). */
static json_t *quantization_config(ct_quant_type qt) {
    return json_pack("{sbsbsssssssbsbsbs[s]sfsbsbss}", "_load_in_4bit", 1, "_load_in_8bit", 0,
                     "bnb_4bit_compute_dtype", "bfloat16", "bnb_4bit_quant_storage", "uint8",
                     "bnb_4bit_quant_type", ct_quant_type_name(qt), "bnb_4bit_use_double_quant", 1,
                     "llm_int8_enable_fp32_cpu_offload", 0, "llm_int8_has_fp16_weight", 0, "llm_int8_skip_modules",
                     "output", "llm_int8_threshold", 6.0, "load_in_4bit", 1, "load_in_8bit", 0, "quant_method",
                     "bitsandbytes");
}

static int write_config(const merge_ctx *c, const ct_hf_config *cfg, const char *dir) {
    json_t *j = json_deep_copy(cfg->raw), *q = c->o->quantize ? quantization_config(c->o->quant_type) : NULL;
    const char *td = c->out_dt == CT_BF16 ? "bfloat16" : c->out_dt == CT_F16 ? "float16" : "float32";
    bool ok = j && (!c->o->quantize || q) && json_object_set_new(j, "torch_dtype", json_string(td)) == 0;
    if (ok && q) ok = json_object_set_new(j, "quantization_config", q) == 0, q = NULL;
    json_decref(q);
    char path[CT_PATH_MAX];
    int rc = ok ? ct_path_join(path, sizeof path, dir, "config.json") : ct_errorf(CT_ERUNTIME, "out of memory");
    if (rc == CT_OK) rc = ct_json_write_atomic(path, j, 0);
    json_decref(j);
    return rc;
}

/* Files save_pretrained would carry along: tokenizer, generation config,
 * custom code. Weights in any format, config.json (rewritten) and the rest
 * (README, licences, hidden files) are not copied. */
static bool wanted_file(const char *name) {
    static const char *const weights[] = {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                                          ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"};
    static const char *const keep[] = {".json", ".model", ".py", ".txt", ".tiktoken", ".jinja"};
    if (name[0] == '.' || !strcmp(name, "config.json")) return false;
    for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++)
        if (ends_with(name, weights[i])) return false;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (ends_with(name, keep[i])) return true;
    return false;
}

static int copy_files(const char *base, const char *dir, int *n) {
    DIR *d = opendir(base);
    if (!d) return ct_errorf(CT_EINPUT, "%s: cannot list the directory", base);
    int rc = CT_OK;
    struct dirent *e;
    while (rc == CT_OK && (e = readdir(d))) {
        char src[CT_PATH_MAX], dst[CT_PATH_MAX];
        struct stat sb;
        if (!wanted_file(e->d_name)) continue;
        rc = ct_path_join(src, sizeof src, base, e->d_name);
        if (rc || stat(src, &sb) != 0 || !S_ISREG(sb.st_mode)) continue; /* follows HF cache symlinks */
        rc = ct_path_join(dst, sizeof dst, dir, e->d_name);
        if (rc == CT_OK) rc = ct_file_copy(src, dst);
        *n += rc == CT_OK;
    }
    closedir(d);
    return rc;
}

static int count_shards(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += !strncmp(e->d_name, "model", 5) && ends_with(e->d_name, ".safetensors");
    if (d) closedir(d);
    return n;
}

/* ------------------------------------------------------------ driver */

/* The scratch file for 4-bit codes: created in the temp directory and
 * unlinked at once, so it vanishes with the process whatever happens. */
static int open_spill(merge_ctx *c, const char *dir) {
    char path[CT_PATH_MAX];
    CT_TRY(ct_path_join(path, sizeof path, dir, ".codes.scratch"));
    c->spill_fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (c->spill_fd < 0) return ct_errorf(CT_ERUNTIME, "%s: cannot create a scratch file", path);
    unlink(path);
    return CT_OK;
}

/* Everything written into the temp directory `dir`. */
static int write_all(merge_ctx *c, const ct_hf_config *cfg, const char *dir) {
    ct_st_writer *w = NULL;
    int rc = ct_st_writer_new(&w);
    c->stage = malloc((size_t)CHUNK * sizeof(float));
    c->half = malloc((size_t)CHUNK * sizeof(uint16_t));
    if (rc == CT_OK && (!c->stage || !c->half)) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    if (rc == CT_OK && c->o->quantize) rc = open_spill(c, dir);
    if (rc == CT_OK) rc = declare_outputs(c, w);
    uint64_t shard = c->o->max_shard_bytes ? c->o->max_shard_bytes : CT_MERGE_DEFAULT_SHARD;
    if (rc == CT_OK) rc = ct_st_writer_save_sharded(w, dir, "model", shard, fill, c);
    if (rc == CT_OK) rc = write_config(c, cfg, dir);
    if (rc == CT_OK) rc = copy_files(c->o->base_dir, dir, &c->rep->n_files);
    c->rep->bytes = c->done;
    c->rep->n_shards = count_shards(dir);
    ct_st_writer_free(w);
    return rc;
}

/* Base + adapter loaded and checked, the source list built. */
static int prepare(merge_ctx *c, ct_hf_config *cfg, ct_model **m) {
    const ct_merge_options *o = c->o;
    CT_TRY(ct_hf_config_load(o->base_dir, cfg));
    CT_TRY(ct_st_open(o->base_dir, &c->st));
    CT_TRY(refuse_quantized_base(cfg, c->st, o->base_dir));
    CT_TRY(pick_dtype(o, cfg, c->st, &c->out_dt));
    c->out_st = (ct_st_dtype)ct_st_dtype_from_ct(c->out_dt);
    CT_TRY(ct_model_load(o->base_dir, NULL, m));
    ct_lora *lora = NULL;
    int rc = ct_adapter_load(o->adapter_dir, *m, false, &lora);
    if (rc) return ct_error_wrap(rc, "adapter %s does not fit the base model %s", o->adapter_dir, o->base_dir);
    const ct_lora_config *lc = ct_lora_get_config(lora);
    c->scale = ct_lora_scale(lc);
    c->rep->r = lc->r;
    c->rep->scale = c->scale;
    c->n_srcs = ct_st_count(c->st);
    if (!(c->srcs = calloc(c->n_srcs + 1, sizeof *c->srcs))) return ct_errorf(CT_ERUNTIME, "out of memory");
    size_t pairs = 0;
    for (size_t i = 0; i < c->n_srcs; i++) {
        CT_TRY(plan_source(c, lora, ct_st_at(c->st, i), &c->srcs[i]));
        pairs += c->srcs[i].a != NULL;
    }
    if (pairs * 2 != ct_lora_count(lora)) /* only the tied head has slots but no tensor of its own */
        return ct_errorf(CT_EINPUT, "%s targets the output head, which %s ties to the embeddings "
                         "(tie_word_embeddings): merging it would change the embeddings too; retrain without "
                         "'output' in target_modules", o->adapter_dir, o->base_dir);
    qsort(c->srcs, c->n_srcs, sizeof *c->srcs, cmp_src);
    return CT_OK;
}

int ct_merge(const ct_merge_options *o, ct_merge_report *report) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ct_merge_report rep_local;
    merge_ctx c = {.o = o, .rep = report ? report : &rep_local, .spill_fd = -1};
    memset(c.rep, 0, sizeof *c.rep);
    if (!o->base_dir || !o->adapter_dir || !o->out_dir)
        return ct_errorf(CT_EINPUT, "merge needs a base model, an adapter and an output directory");
    if (o->quantize && o->quant_type != CT_QUANT_NF4 && o->quant_type != CT_QUANT_FP4)
        return ct_errorf(CT_EINPUT, "unknown 4-bit type %d (nf4 or fp4)", (int)o->quant_type);
    CT_TRY(check_out_dir(o->out_dir));
    ct_hf_config cfg;
    memset(&cfg, 0, sizeof cfg);
    ct_model *m = NULL;
    int rc = prepare(&c, &cfg, &m);
    char tmp[CT_PATH_MAX];
    if (rc == CT_OK) rc = ct_tmpdir_beside(o->out_dir, tmp, sizeof tmp);
    if (rc == CT_OK) {
        rc = write_all(&c, &cfg, tmp);
        if (rc == CT_OK) rc = ct_dir_commit(tmp, o->out_dir);
        if (rc) { /* nothing half-written is left behind; keep the first error's message */
            char why[2048];
            snprintf(why, sizeof why, "%s", ct_last_error());
            if (ct_remove_tree(tmp)) ct_errorf(rc, "%s (and the temporary directory %s could not be removed)", why, tmp);
            else ct_errorf(rc, "%s", why);
        }
    }
    c.rep->dtype = c.out_dt;
    for (size_t i = 0; i < c.n_srcs; i++) free(c.srcs[i].nested_absmax);
    if (c.spill_fd >= 0) close(c.spill_fd);
    for (size_t i = 0; i < c.n_outs; i++) free(c.outs[i].name);
    free(c.outs), free(c.by_name), free(c.srcs), free(c.f32), free(c.stage), free(c.half);
    ct_model_free(m);
    ct_st_close(c.st);
    ct_hf_config_free(&cfg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    c.rep->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return rc;
}
