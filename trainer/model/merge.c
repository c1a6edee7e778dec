/* ctuner merge / quantize: LoRA (if any) into the base weights, a Hugging
 * Face directory out (see merge.h).
 *
 * The base is opened twice: once as a ct_model (which checks every tensor
 * against config.json and gives the decoder whose linears the adapter's A/B are
 * checked and loaded against; its weights stay untouched in the mapping), once
 * as a plain safetensors mapping that the output streams from. Output tensors
 * are declared up front (shapes are known without computing anything) and
 * produced in the writer's fill callback, one at a time, shard by shard; a
 * 4-bit weight's parts are declared and produced by trainer/io/bnb_write.h, which
 * asks for the merged weight through load_weight. */
#include "merge.h"

#include <cblas.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "autograd/ct_error.h"
#include "trainer/model/adapter.h"
#include "trainer/io/bnb_write.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/hf_config.h"
#include "trainer/model/model.h"
#include "trainer/io/safetensors.h"

#define CHUNK ((int64_t)1 << 22) /* elements converted / bytes copied per append */

typedef struct {
    const ct_st_tensor *src;    /* base tensor */
    const ct_lora_param *a, *b; /* its LoRA pair (A [r, in], B [out, r]), or NULL */
    bool quantize;              /* written as 4-bit */
} src_entry;

typedef struct {
    const ct_merge_options *o;
    ct_st_file *st;         /* the base, streamed */
    float scale;
    ct_dtype out_dt;
    ct_st_dtype out_st;
    ct_quant_params qp;     /* the 4-bit format (o->quantize) */
    src_entry *srcs;        /* [n_srcs] in state_dict order */
    size_t n_srcs;
    src_entry **by_name;    /* [n_plain] unquantized outputs sorted by name, for the fill callback */
    size_t n_plain;
    ct_bnb_writer *bnb;     /* the 4-bit parts, NULL without quantize */
    float *f32;             /* [f32_cap] one whole tensor in fp32 */
    size_t f32_cap;
    float *stage;           /* [CHUNK] a chunk as fp32 */
    uint16_t *half;         /* [CHUNK] a chunk as bf16/f16 */
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

static int cmp_by_name(const void *x, const void *y) {
    return strcmp((*(src_entry *const *)x)->src->name, (*(src_entry *const *)y)->src->name);
}

/* ------------------------------------------------------------ plan */

/* One source tensor: its LoRA pair (by PEFT key) and whether it goes 4-bit. */
static int plan_source(merge_ctx *c, const ct_lora *lora, const ct_st_tensor *t, src_entry *s) {
    memset(s, 0, sizeof *s);
    s->src = t;
    int64_t key[3];
    bool linear = false;
    order_key(t->name, key, &linear);
    if (key[0] == 3) linear = c->o->quantize_output; /* the head */
    s->quantize = c->o->quantize && linear && t->ndim == 2;
    if (!lora || !ends_with(t->name, ".weight")) return CT_OK;
    char an[320], bn[320];
    int len = (int)(strlen(t->name) - strlen(".weight"));
    snprintf(an, sizeof an, "base_model.model.%.*s.lora_A.weight", len, t->name);
    snprintf(bn, sizeof bn, "base_model.model.%.*s.lora_B.weight", len, t->name);
    s->a = ct_lora_find(lora, an);
    s->b = ct_lora_find(lora, bn);
    if (!s->a != !s->b) return ct_errorf(CT_ERUNTIME, "%s: LoRA slots hold only one of A and B", t->name);
    return CT_OK;
}

/* Declares every output tensor (data streamed later) in state_dict order. */
static int declare_outputs(merge_ctx *c, ct_st_writer *w) {
    if (!(c->by_name = calloc(c->n_srcs + 1, sizeof *c->by_name))) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; i < c->n_srcs; i++) {
        src_entry *s = &c->srcs[i];
        const ct_st_tensor *t = s->src;
        if (s->quantize) CT_TRY(ct_bnb_writer_add(c->bnb, w, t->name, t->shape, s));
        else {
            c->by_name[c->n_plain++] = s;
            CT_TRY(ct_st_writer_add(w, t->name, c->out_st, t->ndim, t->shape, NULL));
        }
    }
    qsort(c->by_name, c->n_plain, sizeof *c->by_name, cmp_by_name);
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

/* ct_bnb_load_fn: a 4-bit weight's values (merged when it has a LoRA pair). */
static int load_weight(void *ctx, void *src, float **values) {
    merge_ctx *c = ctx;
    CT_TRY(load_merged(c, src));
    *values = c->f32;
    return CT_OK;
}

/* The writer's fill callback: produces the output tensor `t` names. */
static int fill(void *vctx, ct_st_writer *w, const ct_st_tensor *t) {
    merge_ctx *c = vctx;
    if (c->o->progress) CT_TRY(c->o->progress(c->o->progress_ctx, t->name, c->done, c->total));
    bool done = false;
    int rc = ct_bnb_writer_fill(c->bnb, w, t, &done);
    if (rc == CT_OK && !done) {
        src_entry key = {.src = t}, *kp = &key;
        src_entry **hit = bsearch(&kp, c->by_name, c->n_plain, sizeof *c->by_name, cmp_by_name);
        if (!hit) return ct_errorf(CT_ERUNTIME, "writer asked for an unknown tensor '%s'", t->name);
        if (!(*hit)->a) rc = emit_untouched(c, w, (*hit)->src);
        else {
            rc = load_merged(c, *hit);
            if (rc == CT_OK) rc = emit_f32(c, w, c->f32, t->numel);
        }
    }
    if (rc) return ct_error_wrap(rc, "%s", t->name);
    c->done += t->nbytes;
    return CT_OK;
}

/* ------------------------------------------------------------ checks */

/* A bitsandbytes (or other quantized) base cannot give W exactly. */
static int refuse_quantized_base(const ct_hf_config *cfg, const ct_st_file *st, const ct_merge_options *o) {
    const char *what = NULL;
    if (cfg->quantization_config) what = "its config.json has a quantization_config";
    for (size_t i = 0; !what && i < ct_st_count(st); i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        if (strstr(t->name, ".quant_state.") || ends_with(t->name, ".absmax") || ends_with(t->name, ".SCB"))
            what = "its weights hold quantization states";
    }
    if (!what) return CT_OK;
    if (!o->adapter_dir)
        return ct_errorf(CT_EINPUT, "%s is already a quantized model (%s): quantizing it again would compound the "
                         "rounding. Pass the original full-precision model (e.g. the bf16 Hugging Face directory)",
                         o->base_dir, what);
    return ct_errorf(CT_EINPUT, "--base %s is a quantized model (%s): a 4-bit base cannot be merged exactly. Pass "
                     "the original full-precision model the adapter was trained on (e.g. the bf16 Hugging Face "
                     "directory), and add --quantize nf4 to get a 4-bit result", o->base_dir, what);
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

static int write_config(const merge_ctx *c, const ct_hf_config *cfg, const char *dir) {
    json_t *j = json_deep_copy(cfg->raw);
    json_t *q = c->o->quantize ? ct_bnb_quantization_config(&c->qp, c->o->quantize_output) : NULL;
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

/* Everything written into the temp directory `dir`. */
static int write_all(merge_ctx *c, const ct_hf_config *cfg, const char *dir) {
    ct_st_writer *w = NULL;
    int rc = ct_st_writer_new(&w);
    c->stage = malloc((size_t)CHUNK * sizeof(float));
    c->half = malloc((size_t)CHUNK * sizeof(uint16_t));
    if (rc == CT_OK && (!c->stage || !c->half)) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    if (rc == CT_OK && c->o->quantize) rc = ct_bnb_writer_new(&c->qp, c->out_dt, dir, load_weight, c, &c->bnb);
    if (rc == CT_OK) rc = declare_outputs(c, w);
    uint64_t shard = c->o->max_shard_bytes ? c->o->max_shard_bytes : CT_MERGE_DEFAULT_SHARD;
    if (rc == CT_OK) rc = ct_st_writer_save_sharded(w, dir, "model", shard, fill, c);
    if (rc == CT_OK) rc = write_config(c, cfg, dir);
    if (rc == CT_OK) rc = copy_files(c->o->base_dir, dir, &c->rep->n_files);
    c->rep->bytes = c->done;
    c->rep->n_shards = count_shards(dir);
    c->rep->n_quantized = ct_bnb_writer_count(c->bnb);
    ct_bnb_writer_free(c->bnb);
    c->bnb = NULL;
    ct_st_writer_free(w);
    return rc;
}

/* Base + adapter loaded and checked, the source list built. */
static int prepare(merge_ctx *c, ct_hf_config *cfg, ct_model **m) {
    const ct_merge_options *o = c->o;
    CT_TRY(ct_hf_config_load(o->base_dir, cfg));
    CT_TRY(ct_st_open(o->base_dir, &c->st));
    CT_TRY(refuse_quantized_base(cfg, c->st, o));
    CT_TRY(pick_dtype(o, cfg, c->st, &c->out_dt));
    c->out_st = (ct_st_dtype)ct_st_dtype_from_ct(c->out_dt);
    CT_TRY(ct_model_load(o->base_dir, NULL, m));
    ct_lora *lora = NULL;
    if (o->adapter_dir) {
        int rc = ct_adapter_load(o->adapter_dir, *m, false, &lora);
        if (rc) return ct_error_wrap(rc, "adapter %s does not fit the base model %s", o->adapter_dir, o->base_dir);
        const ct_lora_config *lc = ct_lora_get_config(lora);
        c->scale = ct_lora_scale(lc);
        c->rep->r = lc->r;
        c->rep->scale = c->scale;
    }
    c->n_srcs = ct_st_count(c->st);
    if (!(c->srcs = calloc(c->n_srcs + 1, sizeof *c->srcs))) return ct_errorf(CT_ERUNTIME, "out of memory");
    size_t pairs = 0;
    for (size_t i = 0; i < c->n_srcs; i++) {
        CT_TRY(plan_source(c, lora, ct_st_at(c->st, i), &c->srcs[i]));
        pairs += c->srcs[i].a != NULL;
        c->rep->src_bytes += c->srcs[i].src->nbytes;
    }
    if (lora && pairs * 2 != ct_lora_count(lora)) /* only the tied head has slots but no tensor of its own */
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
    merge_ctx c = {.o = o, .rep = report ? report : &rep_local};
    memset(c.rep, 0, sizeof *c.rep);
    if (!o->base_dir || !o->out_dir) return ct_errorf(CT_EINPUT, "merge needs a base model and an output directory");
    c.qp = (ct_quant_params){.type = o->quant_type,
                             .blocksize = o->blocksize ? o->blocksize : CT_QUANT_DEFAULT_BLOCKSIZE,
                             .double_quant = !o->no_double_quant};
    if (o->quantize && c.qp.type != CT_QUANT_NF4 && c.qp.type != CT_QUANT_FP4)
        return ct_errorf(CT_EINPUT, "unknown 4-bit type %d (nf4 or fp4)", (int)o->quant_type);
    int bs = c.qp.blocksize;
    if (o->quantize && (bs < 32 || bs > 4096 || (bs & (bs - 1))))
        return ct_errorf(CT_EINPUT, "4-bit blocksize %d is not a power of two in 32..4096 (bitsandbytes uses 64)", bs);
    CT_TRY(check_out_dir(o->out_dir));
    ct_hf_config cfg;
    memset(&cfg, 0, sizeof cfg);
    ct_model *m = NULL;
    int rc = prepare(&c, &cfg, &m);
    char tmp[CT_PATH_MAX];
    /* The temp directories of interrupted merges into the same --out (a 7B
     * merge leaves gigabytes): only the names ct_tmpdir_beside made for it. */
    if (rc == CT_OK) rc = ct_reclaim_temps_of(o->out_dir, NULL);
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
    ct_bnb_writer_free(c.bnb);
    free(c.by_name), free(c.srcs), free(c.f32), free(c.stage), free(c.half);
    ct_model_free(m);
    ct_st_close(c.st);
    ct_hf_config_free(&cfg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    c.rep->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return rc;
}
