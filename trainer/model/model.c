/* Loading an InternLM2 model directory into decoder weights (see model.h).
 *
 * Two passes over the list of tensors the config implies: the first checks
 * every tensor (presence, dtype, shape, bitsandbytes parts) and sizes the one
 * block that holds copies of misaligned tensors; the second builds the tensor
 * headers, quantizing the chosen linears as they stream in. Nothing is
 * allocated for a weight that stays in the mapping but its header. */
#include "model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/model_internal.h"
#include "trainer/io/safetensors.h"

struct ct_model {
    char path[CT_PATH_MAX];
    ct_hf_config cfg;
    ct_st_file *st;                   /* the mapping: frozen weights point into it */
    const ct_backend *be;
    ct_decoder_model dm;
    ct_decoder_layer_weights *layers; /* [n_layers] */
    ct_tensor *tensors;               /* [n_tensors] weight headers */
    size_t n_tensors;
    ct_quant_state *qs;               /* [n_qs] states of the 4-bit weights */
    size_t n_qs;
    unsigned char *copies;            /* one block: misaligned tensors and bnb arrays */
    void *device;                     /* after ct_model_place on a non-CPU backend: every frozen
                                         tensor and 4-bit array in one block of be's memory */
    bool embed_on_device;             /* ct_model_options.embedding_on_device */
    void *embed_copy;                 /* placed with the embedding table on the host, and the table
                                         was a misaligned copy: [V, D] its own host copy (else the
                                         table stays in the mapping, which is then kept open) */
    ct_model_memory mem;
    ct_lora *lora;
};

/* One tensor the config implies. */
typedef struct {
    char name[160];
    int ndim;
    int64_t shape[2];
    ct_tensor **slot;         /* where the header goes in the decoder weights */
    bool linear;              /* a [out, in] linear: may be 4-bit */
    bool quantize;            /* quantize on load */
    const ct_st_tensor *src;  /* plain (float) tensor, NULL when bnb */
    bool bnb;
    ct_bnb_weight bw;
    bool copy;                /* misaligned: copy into the block */
} want;

int ct_model_quant_from_name(const char *name, ct_model_quant *q) {
    if (!strcmp(name, "none")) *q = CT_MODEL_QUANT_NONE;
    else if (!strcmp(name, "nf4")) *q = CT_MODEL_QUANT_NF4;
    else if (!strcmp(name, "fp4")) *q = CT_MODEL_QUANT_FP4;
    else return ct_errorf(CT_EINPUT, "quantization '%s' is not one of none, nf4, fp4", name);
    return CT_OK;
}

static const char *file_of(const ct_st_file *f, const ct_st_tensor *t) {
    const char *p = t ? ct_st_shard_path(f, t->shard) : NULL;
    return p ? p : ct_st_shard_path(f, 0);
}

static bool misaligned(const void *p, size_t align) { return ((uintptr_t)p % align) != 0; }

static void add_want(want *w, size_t *k, const char *name, int ndim, int64_t rows, int64_t cols,
                     ct_tensor **slot, bool linear, bool quantize) {
    want *x = &w[(*k)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = ndim, x->shape[0] = rows, x->shape[1] = cols;
    x->slot = slot, x->linear = linear, x->quantize = quantize;
}

/* The tensor list in state_dict order, with slots in the decoder weights. */
static int build_wants(ct_model *m, bool quant, bool quant_output, want **out, size_t *n_out) {
    const ct_hf_config *c = &m->cfg;
    int64_t D = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    int64_t qkv = ct_hf_config_wqkv_rows(c), attn = ct_hf_config_attn_width(c);
    size_t L = (size_t)c->num_hidden_layers, n = 2 + 7 * L + (c->tie_word_embeddings ? 0 : 1);
    want *w = calloc(n, sizeof *w);
    if (!w) return ct_errorf(CT_ERUNTIME, "out of memory (model tensor list)");
    size_t k = 0;
    add_want(w, &k, "model.tok_embeddings.weight", 2, V, D, &m->dm.tok_embeddings, false, false);
    for (size_t l = 0; l < L; l++) {
        ct_decoder_layer_weights *lw = &m->layers[l];
        const struct {
            const char *suffix;
            int ndim;
            int64_t rows, cols;
            ct_tensor **slot;
        } parts[] = {
            {"attention.wqkv.weight", 2, qkv, D, &lw->wqkv.w},   {"attention.wo.weight", 2, D, attn, &lw->wo.w},
            {"feed_forward.w1.weight", 2, F, D, &lw->w1.w},      {"feed_forward.w3.weight", 2, F, D, &lw->w3.w},
            {"feed_forward.w2.weight", 2, D, F, &lw->w2.w},      {"attention_norm.weight", 1, D, 0, &lw->attention_norm},
            {"ffn_norm.weight", 1, D, 0, &lw->ffn_norm},
        };
        for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
            char name[160];
            snprintf(name, sizeof name, "model.layers.%zu.%s", l, parts[p].suffix);
            bool lin = parts[p].ndim == 2;
            add_want(w, &k, name, parts[p].ndim, parts[p].rows, parts[p].cols, parts[p].slot, lin, lin && quant);
        }
    }
    add_want(w, &k, "model.norm.weight", 1, D, 0, &m->dm.norm, false, false);
    if (!c->tie_word_embeddings) add_want(w, &k, "output.weight", 2, V, D, &m->dm.output.w, true, quant && quant_output);
    *out = w;
    *n_out = k;
    return CT_OK;
}

static const char *shape_text(const int64_t *shape, int ndim, char *buf, size_t cap) {
    if (ndim == 1) snprintf(buf, cap, "[%lld]", (long long)shape[0]);
    else snprintf(buf, cap, "[%lld, %lld]", (long long)shape[0], (long long)shape[1]);
    return buf;
}

/* Pass 1 for one tensor: present, float dtype, the config's shape. */
static int probe_one(ct_model *m, want *w, bool allow_bnb, bool *used, size_t *copy_bytes) {
    const ct_st_file *f = m->st;
    char want_s[64], got_s[96];
    if (allow_bnb && w->linear && ct_bnb_present(f, w->name)) {
        CT_TRY(ct_bnb_probe(f, w->name, w->shape[0], w->shape[1], used, &w->bw));
        w->bnb = true;
        w->quantize = false; /* already 4-bit */
        *copy_bytes += (ct_bnb_copy_bytes(&w->bw) + 15) / 16 * 16;
        return CT_OK;
    }
    const ct_st_tensor *t = ct_st_find(f, w->name);
    if (!t)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s' is missing (model %s): the weights do not match config.json",
                         ct_st_shard_path(f, 0), w->name, m->path);
    used[ct_st_index_of(f, t)] = true;
    if (t->dtype != CT_ST_F32 && t->dtype != CT_ST_BF16 && t->dtype != CT_ST_F16)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s' has dtype %s; expected F32, BF16 or F16%s", file_of(f, t),
                         w->name, ct_st_dtype_name(t->dtype),
                         t->dtype == CT_ST_U8 ? " (a 4-bit weight needs its quant_state tensors and a "
                                                "quantization_config in config.json)" : "");
    bool same = t->ndim == w->ndim;
    for (int d = 0; same && d < w->ndim; d++) same = t->shape[d] == w->shape[d];
    if (!same) {
        size_t off = (size_t)snprintf(got_s, sizeof got_s, "[");
        for (int d = 0; d < t->ndim && off < sizeof got_s; d++)
            off += (size_t)snprintf(got_s + off, sizeof got_s - off, d ? ", %lld" : "%lld", (long long)t->shape[d]);
        if (off < sizeof got_s) snprintf(got_s + off, sizeof got_s - off, "]");
        return ct_errorf(CT_EINPUT, "%s: tensor '%s' has shape %s, config.json implies %s: the weights do not "
                         "match the config", file_of(f, t), w->name, got_s,
                         shape_text(w->shape, w->ndim, want_s, sizeof want_s));
    }
    w->src = t;
    w->copy = misaligned(t->data, ct_st_dtype_size(t->dtype)) && !w->quantize;
    if (w->copy) *copy_bytes += (t->nbytes + 15) / 16 * 16;
    return CT_OK;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Which checkpoints are bitsandbytes 4-bit; other quantization methods are refused. */
static int prequant_kind(const ct_model *m, bool *bnb) {
    *bnb = false;
    const json_t *q = m->cfg.quantization_config;
    if (!q) return CT_OK;
    const char *method = json_string_value(json_object_get(q, "quant_method"));
    if (!method || strcmp(method, "bitsandbytes") != 0)
        return ct_errorf(CT_EINPUT, "%s/config.json: quantization_config.quant_method '%s' is not supported "
                         "(only bitsandbytes 4-bit checkpoints load; dequantize others first)", m->path,
                         method ? method : "(missing)");
    if (json_is_true(json_object_get(q, "load_in_8bit")))
        return ct_errorf(CT_EINPUT, "%s/config.json: 8-bit bitsandbytes checkpoints are not supported (4-bit "
                         "nf4/fp4 only)", m->path);
    *bnb = true;
    return CT_OK;
}

#define PLACE_ALIGN 256 /* every piece of the device block starts on 256 bytes */

static size_t place_size(size_t bytes) { return (bytes + PLACE_ALIGN - 1) / PLACE_ALIGN * PLACE_ALIGN; }

/* Bytes of a 4-bit state's arrays into sz: codes, absmax (or qabsmax), nested
 * absmax (0 without double quantization); returns their total with each
 * rounded up to PLACE_ALIGN, as ct_model_place lays them out. */
static size_t quant_arrays(const ct_quant_state *st, size_t sz[3]) {
    sz[0] = (size_t)(st->n + 1) / 2;
    sz[1] = st->nested ? (size_t)st->nblocks : (size_t)st->nblocks * sizeof(float);
    sz[2] = st->nested ? (size_t)((st->nblocks + st->nested_blocksize - 1) / st->nested_blocksize) * sizeof(float) : 0;
    return place_size(sz[0]) + place_size(sz[1]) + place_size(sz[2]);
}

/* Pass 2 for one tensor: the header, quantized or in place (or copied). */
static int build_one(ct_model *m, want *w, ct_tensor *hdr, const ct_model_options *o, unsigned char **cursor,
                     void **tmp, size_t *tmp_cap) {
    if (w->bnb) {
        ct_quant_state *st = &m->qs[m->n_qs++];
        CT_TRY(ct_bnb_state(&w->bw, w->shape[0], w->shape[1], w->name, st, cursor));
        CT_TRY(ct_quant_tensor(hdr, st, w->bw.codes->name));
        m->mem.quant_bytes += w->bw.codes->nbytes + w->bw.absmax->nbytes +
                              (w->bw.nested_absmax ? w->bw.nested_absmax->nbytes : 0);
        m->mem.n_quantized++;
        *w->slot = hdr;
        return CT_OK;
    }
    const ct_st_tensor *t = w->src;
    if (w->quantize) {
        const void *src = t->data;
        if (misaligned(src, ct_st_dtype_size(t->dtype))) { /* quantize from an aligned copy */
            if (*tmp_cap < t->nbytes) {
                void *p = realloc(*tmp, t->nbytes);
                if (!p) return ct_errorf(CT_ERUNTIME, "out of memory (%zu bytes to quantize '%s')", t->nbytes, t->name);
                *tmp = p, *tmp_cap = t->nbytes;
            }
            memcpy(*tmp, src, t->nbytes);
            src = *tmp;
        }
        ct_quant_state *st = &m->qs[m->n_qs++];
        ct_quant_params qp = {.type = o->quant == CT_MODEL_QUANT_FP4 ? CT_QUANT_FP4 : CT_QUANT_NF4,
                              .blocksize = o->blocksize, .double_quant = o->double_quant};
        int rc = ct_quant_quantize(st, src, (ct_dtype)ct_st_dtype_to_ct(t->dtype), 2, w->shape, &qp, t->name);
        if (rc) return ct_error_wrap(rc, "%s", file_of(m->st, t));
        CT_TRY(ct_quant_tensor(hdr, st, t->name));
        size_t sz[3];
        quant_arrays(st, sz);
        m->mem.quant_bytes += sz[0] + sz[1] + sz[2];
        m->mem.n_quantized++;
        ct_st_release(m->st, t); /* the source pages are not needed any more */
        *w->slot = hdr;
        return CT_OK;
    }
    CT_TRY(ct_st_as_tensor(t, hdr));
    if (w->copy) {
        memcpy(*cursor, t->data, t->nbytes);
        hdr->data = *cursor;
        *cursor += (t->nbytes + 15) / 16 * 16;
        m->mem.copied_bytes += t->nbytes;
        ct_st_release(m->st, t);
    } else {
        m->mem.mapped_bytes += t->nbytes;
    }
    *w->slot = hdr;
    return CT_OK;
}

static void set_dims(ct_model *m) {
    const ct_hf_config *c = &m->cfg;
    m->dm.dims = (ct_decoder_dims){
        .hidden = (int)c->hidden_size, .n_heads = (int)c->num_attention_heads,
        .n_kv_heads = (int)c->num_key_value_heads, .head_dim = (int)c->head_dim,
        .intermediate = (int)c->intermediate_size, .eps = (float)c->rms_norm_eps,
        .rope = {.theta = c->rope_theta,
                 .scaling = c->rope_scaling == CT_ROPE_SCALING_LINEAR    ? CT_ROPE_LINEAR
                            : c->rope_scaling == CT_ROPE_SCALING_DYNAMIC ? CT_ROPE_DYNAMIC
                                                                         : CT_ROPE_NONE,
                 .factor = c->rope_scaling_factor,
                 .max_pos = c->max_position_embeddings}};
    m->dm.n_layers = (int)c->num_hidden_layers;
    m->dm.layers = m->layers;
    for (int l = 0; l < m->dm.n_layers; l++) {
        ct_decoder_layer_weights *lw = &m->layers[l];
        lw->wqkv.id = ct_lora_linear_id(l, CT_LORA_SLOT_WQKV);
        lw->wo.id = ct_lora_linear_id(l, CT_LORA_SLOT_WO);
        lw->w1.id = ct_lora_linear_id(l, CT_LORA_SLOT_W1);
        lw->w3.id = ct_lora_linear_id(l, CT_LORA_SLOT_W3);
        lw->w2.id = ct_lora_linear_id(l, CT_LORA_SLOT_W2);
    }
    m->dm.output.id = ct_lora_linear_id(m->dm.n_layers, CT_LORA_SLOT_OUTPUT);
}

int ct_model_set_compute(ct_model *m, ct_dtype compute) {
    CT_TRY(ct_compute_dtype_check(compute, NULL));
    for (int l = 0; l < m->dm.n_layers; l++) {
        ct_decoder_layer_weights *lw = &m->layers[l];
        lw->wqkv.compute = lw->wo.compute = lw->w1.compute = lw->w3.compute = lw->w2.compute = compute;
    }
    m->dm.output.compute = compute;
    m->dm.dims.attn_compute = compute;
    return CT_OK;
}

/* Everything after the config: tensors checked, then built. */
static int load_weights(ct_model *m, const ct_model_options *o) {
    bool bnb = false;
    CT_TRY(prequant_kind(m, &bnb));
    CT_TRY(ct_st_open(m->path, &m->st));
    want *w = NULL;
    size_t n = 0, copy_bytes = 0, nq = 0;
    bool *used = calloc(ct_st_count(m->st) + 1, sizeof *used); /* [file tensors] */
    int rc = used ? build_wants(m, o->quant != CT_MODEL_QUANT_NONE, o->quant_output, &w, &n)
                  : ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; rc == CT_OK && i < n; i++) {
        rc = probe_one(m, &w[i], bnb, used, &copy_bytes);
        nq += w[i].bnb || w[i].quantize;
    }
    for (size_t i = 0; rc == CT_OK && i < ct_st_count(m->st); i++) {
        const ct_st_tensor *t = ct_st_at(m->st, i);
        if (used[i] || ends_with(t->name, ".rotary_emb.inv_freq")) continue;
        rc = ct_errorf(CT_EINPUT, "%s: unexpected tensor '%s' (%s): not part of an InternLM2 model with this "
                       "config.json%s", file_of(m->st, t), t->name, ct_st_dtype_name(t->dtype),
                       strstr(t->name, "quant_state") || strstr(t->name, "absmax")
                           ? "; a bitsandbytes checkpoint needs quantization_config in config.json" : "");
    }
    m->n_tensors = n;
    if (rc == CT_OK) {
        m->tensors = calloc(n, sizeof *m->tensors);
        m->qs = calloc(nq + 1, sizeof *m->qs);
        m->copies = copy_bytes ? malloc(copy_bytes) : NULL;
        if (!m->tensors || !m->qs || (copy_bytes && !m->copies))
            rc = ct_errorf(CT_ERUNTIME, "out of memory (%zu bytes of weight copies)", copy_bytes);
    }
    unsigned char *cursor = m->copies;
    void *tmp = NULL;
    size_t tmp_cap = 0;
    for (size_t i = 0; rc == CT_OK && i < n; i++) rc = build_one(m, &w[i], &m->tensors[i], o, &cursor, &tmp, &tmp_cap);
    if (rc == CT_OK && m->cfg.tie_word_embeddings) m->dm.output.w = m->dm.tok_embeddings;
    m->mem.prequantized = bnb && nq > 0;
    free(tmp);
    free(used);
    free(w);
    return rc;
}

int ct_model_load(const char *dir, const ct_model_options *opt, ct_model **out) {
    *out = NULL;
    ct_model_options o = {0};
    if (opt) o = *opt;
    if (strlen(dir) >= CT_PATH_MAX) return ct_errorf(CT_EINPUT, "model path too long: %.80s...", dir);
    ct_model *m = calloc(1, sizeof *m);
    if (!m) return ct_errorf(CT_ERUNTIME, "out of memory");
    snprintf(m->path, sizeof m->path, "%s", dir);
    m->be = ct_cpu_backend();
    m->embed_on_device = o.embedding_on_device;
    int rc = ct_path_is_dir(dir) ? ct_hf_config_load(dir, &m->cfg)
                                 : ct_errorf(CT_EINPUT, "%s: not a directory (give a Hugging Face model directory)", dir);
    if (rc == CT_OK && m->cfg.bias)
        rc = ct_errorf(CT_EINPUT, "%s/config.json: \"bias\": true is not supported (InternLM2 releases have no "
                       "biases; set it to false if the checkpoint has no .bias tensors)", dir);
    if (rc == CT_OK && m->cfg.num_hidden_layers > INT32_MAX / CT_LORA_SLOTS_PER_LAYER)
        rc = ct_errorf(CT_EINPUT, "%s/config.json: %lld layers is too many", dir, (long long)m->cfg.num_hidden_layers);
    if (rc == CT_OK) {
        m->layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof *m->layers);
        if (!m->layers) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    }
    if (rc == CT_OK) {
        set_dims(m);
        rc = load_weights(m, &o);
    }
    if (rc == CT_OK) {
        for (int l = 0; rc == CT_OK && l < m->dm.n_layers; l++) {
            rc = ct_decoder_layer_check(&m->dm.dims, &m->layers[l]);
            if (rc) rc = ct_error_wrap(rc, "%s: layer %d", dir, l);
        }
    }
    if (rc == CT_OK && o.backend) rc = ct_model_place(m, o.backend);
    if (rc) {
        ct_model_free(m);
        return rc;
    }
    m->mem.n_params = ct_hf_config_num_params(&m->cfg);
    *out = m;
    return CT_OK;
}

void ct_model_free(ct_model *m) {
    if (!m) return;
    ct_lora_free(m->lora);
    if (m->device) m->be->mem.free(m->device);
    free(m->embed_copy);
    for (size_t i = 0; i < m->n_qs; i++) ct_quant_free(&m->qs[i]);
    free(m->qs);
    free(m->tensors);
    free(m->copies);
    free(m->layers);
    ct_st_close(m->st);
    ct_hf_config_free(&m->cfg);
    free(m);
}

const ct_hf_config *ct_model_config(const ct_model *m) { return &m->cfg; }
const ct_decoder_model *ct_model_decoder(const ct_model *m) { return &m->dm; }
const ct_backend *ct_model_backend(const ct_model *m) { return m->be; }
const char *ct_model_path(const ct_model *m) { return m->path; }
ct_lora *ct_model_lora(const ct_model *m) { return m->lora; }

int ct_model_add_lora(ct_model *m, const ct_lora_config *cfg, bool trainable, ct_lora **out) {
    if (m->lora) return ct_errorf(CT_EINPUT, "%s: the model already has LoRA slots", m->path);
    CT_TRY(ct_lora_new(cfg, &m->dm, m->be, trainable, &m->lora));
    if (out) *out = m->lora;
    return CT_OK;
}

void ct_model_drop_lora(ct_model *m) {
    ct_lora_free(m->lora);
    m->lora = NULL;
}

void ct_model_get_memory(const ct_model *m, ct_model_memory *out) { *out = m->mem; }

/* ---- placing the model on a backend ---- */

/* Uploads n bytes from host src into the block at *at (advancing it);
 * returns the device address through *dst. */
static int place_bytes(const ct_backend *be, unsigned char **at, const void *src, size_t n, void **dst) {
    *dst = *at;
    *at += place_size(n);
    return n ? be->upload(*dst, src, n) : CT_OK;
}

int ct_model_place(ct_model *m, const ct_backend *be) {
    if (!be) return ct_errorf(CT_EINPUT, "%s: no backend to place the model on", m->path);
    if (be == m->be) return CT_OK;
    if (m->be->device != CT_CPU || m->device)
        return ct_errorf(CT_EINPUT, "%s: the model is already on backend %s", m->path, m->be->name);
    if (m->lora)
        return ct_errorf(CT_EINPUT, "%s: place the model before adding LoRA (the pairs are made on the "
                         "model's backend)", m->path);
    /* The embedding table stays in host memory unless asked otherwise or tied
     * to the head (a GEMM operand on the device). A misaligned table lives in
     * the copies block, which goes: it gets a block of its own first, so a
     * failure here leaves the model as it was. */
    ct_tensor *emb = m->dm.tok_embeddings;
    const bool emb_host = !m->embed_on_device && emb && m->dm.output.w != emb;
    const ct_st_tensor *emb_src = emb_host ? ct_st_find(m->st, "model.tok_embeddings.weight") : NULL;
    if (emb_host && (!emb_src || emb_src->data != emb->data)) {
        m->embed_copy = ct_host_alloc(ct_nbytes(emb));
        if (!m->embed_copy)
            return ct_errorf(CT_ERUNTIME, "%s: out of memory for a %.1f MiB host copy of the embedding table",
                             m->path, (double)ct_nbytes(emb) / (1 << 20));
        memcpy(m->embed_copy, emb->data, ct_nbytes(emb));
        emb->data = m->embed_copy;
        emb_src = NULL;
    }
    /* Sizes first: one allocation for everything. A tied head is the embedding
     * tensor itself, placed once. */
    size_t total = 0, sz[3];
    for (size_t i = 0; i < m->n_tensors; i++) {
        const ct_tensor *t = &m->tensors[i];
        if (emb_host && t == emb) continue;
        total += t->quant ? quant_arrays(t->quant, sz) : place_size(ct_nbytes(t));
    }
    unsigned char *block = be->mem.alloc(total ? total : PLACE_ALIGN), *at = block;
    if (!block)
        return ct_errorf(CT_ERUNTIME, "%s: out of memory on backend %s for %.1f MiB of frozen weights", m->path,
                         be->name, (double)total / (1 << 20));
    int rc = CT_OK;
    for (size_t i = 0; rc == CT_OK && i < m->n_tensors; i++) {
        ct_tensor *t = &m->tensors[i];
        if (emb_host && t == emb) continue; /* stays a host tensor (device CT_CPU) */
        if (t->quant) {
            /* The state stays a host struct (its tables code[16] and map8[256]
             * travel with it); its arrays move to the device. */
            ct_quant_state *st = (ct_quant_state *)t->quant;
            void *codes, *absmax, *nested = NULL;
            quant_arrays(st, sz);
            rc = place_bytes(be, &at, st->codes, sz[0], &codes);
            if (!rc) rc = place_bytes(be, &at, st->nested ? (const void *)st->qabsmax : (const void *)st->absmax, sz[1],
                                      &absmax);
            if (!rc && st->nested) rc = place_bytes(be, &at, st->nested_absmax, sz[2], &nested);
            if (rc) break;
            free(st->owned); /* the host arrays (NULL when borrowed from the mapping) */
            st->owned = NULL;
            st->codes = codes;
            if (st->nested) st->qabsmax = absmax, st->nested_absmax = nested;
            else st->absmax = absmax;
            t->data = codes;
        } else {
            void *dst;
            rc = place_bytes(be, &at, t->data, ct_nbytes(t), &dst);
            t->data = dst;
        }
        t->device = be->device;
    }
    if (rc) {
        /* Headers now point into a block that is about to go: the model is
         * unusable; the caller frees it (ct_model_load does). */
        be->mem.free(block);
        return ct_error_wrap(rc, "%s: placing the weights on backend %s", m->path, be->name);
    }
    m->device = block;
    m->be = be;
    m->mem.device_bytes = total;
    m->mem.host_bytes = emb_host ? ct_nbytes(emb) : 0;
    m->mem.embedding_on_host = emb_host;
    /* Nothing on the host refers to the copies any more, nor to the file but
     * for an embedding table used from the mapping: the mapping then stays,
     * with the pages of every other tensor released (the table's own pages
     * come in as the gathers touch its rows). */
    if (emb_src) {
        for (size_t i = 0; i < ct_st_count(m->st); i++)
            if (ct_st_at(m->st, i) != emb_src) ct_st_release(m->st, ct_st_at(m->st, i));
    } else {
        ct_st_close(m->st);
        m->st = NULL;
    }
    free(m->copies);
    m->copies = NULL;
    return CT_OK;
}
