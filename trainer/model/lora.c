/* LoRA slots: config, the parameter/grad blocks carved by a size table, PEFT
 * initialisation, attach/detach (see lora.h). */
#include "lora.h"

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"

#define NAME_CAP 96 /* "base_model.model.model.layers.<int>.feed_forward.w1.lora_A.weight" fits */

struct ct_lora {
    ct_lora_config cfg;
    float scale;
    ct_decoder_model *dm;      /* attached to (not owned) */
    const ct_backend *be;
    bool trainable;
    size_t n;                  /* parameters: 2 per targeted linear */
    ct_lora_param *params;     /* [n] in PEFT key order */
    ct_tensor *hdr;            /* [2n]: value headers [0, n), grad headers [n, 2n) */
    char *names;               /* [n][NAME_CAP] */
    int64_t *offset;           /* [n + 1] the size table, in floats into the blocks */
    ct_linear **lins;          /* [n / 2] the linears this LoRA set */
    float *values;             /* [offset[n]] one block on the backend */
    float *grads;              /* [offset[n]] one block, or NULL when not trainable */
};

static const struct {
    const char *name;
    unsigned bit;
    const char *module; /* PEFT module path inside a layer (or the model) */
} k_targets[] = {
    {"wqkv", CT_LORA_WQKV, "attention.wqkv"},   {"wo", CT_LORA_WO, "attention.wo"},
    {"w1", CT_LORA_W1, "feed_forward.w1"},       {"w3", CT_LORA_W3, "feed_forward.w3"},
    {"w2", CT_LORA_W2, "feed_forward.w2"},       {"output", CT_LORA_OUTPUT, "output"},
};
enum { N_TARGETS = 6 };

unsigned ct_lora_target_from_name(const char *name) {
    for (int i = 0; i < N_TARGETS; i++)
        if (!strcmp(name, k_targets[i].name)) return k_targets[i].bit;
    return 0;
}

const char *ct_lora_target_name(unsigned bit) {
    for (int i = 0; i < N_TARGETS; i++)
        if (k_targets[i].bit == bit) return k_targets[i].name;
    return "?";
}

int ct_lora_parse_targets(const char *list, unsigned *targets) {
    *targets = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char name[32];
        while (len && *p == ' ') p++, len--;
        while (len && p[len - 1] == ' ') len--;
        if (len == 0 || len >= sizeof name)
            return ct_errorf(CT_EINPUT, "LoRA target list '%s': empty or overlong name", list);
        memcpy(name, p, len);
        name[len] = '\0';
        unsigned bit = !strcmp(name, "all") ? CT_LORA_ALL_BLOCK : ct_lora_target_from_name(name);
        if (!bit)
            return ct_errorf(CT_EINPUT, "LoRA target '%s' is not an InternLM2 linear (wqkv, wo, w1, w2, w3, output, "
                             "or all)", name);
        *targets |= bit;
        p = e ? e + 1 : p + len;
    }
    if (!*targets) return ct_errorf(CT_EINPUT, "LoRA target list '%s' is empty", list);
    return CT_OK;
}

float ct_lora_scale(const ct_lora_config *c) {
    return (float)(c->use_rslora ? c->alpha / sqrt((double)c->r) : c->alpha / (double)c->r);
}

int ct_lora_config_check(const ct_lora_config *c, const char *where) {
    if (c->r < 1) return ct_errorf(CT_EINPUT, "%s: LoRA r = %d must be >= 1", where, c->r);
    if (!isfinite(c->alpha)) return ct_errorf(CT_EINPUT, "%s: lora_alpha must be a finite number", where);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return ct_errorf(CT_EINPUT, "%s: lora_dropout %g must be in [0, 1)", where, (double)c->dropout);
    if (!c->targets || (c->targets & ~(CT_LORA_ALL_BLOCK | CT_LORA_OUTPUT)))
        return ct_errorf(CT_EINPUT, "%s: LoRA target_modules must be a non-empty subset of wqkv, wo, w1, w2, w3, "
                         "output", where);
    return CT_OK;
}

uint64_t ct_lora_linear_id(int layer, int slot) {
    return (uint64_t)layer * CT_LORA_SLOTS_PER_LAYER + (uint64_t)slot;
}

/* The linear of a target in layer l (l == n_layers: the head). */
static ct_linear *linear_of(ct_decoder_model *dm, int l, unsigned bit) {
    if (bit == CT_LORA_OUTPUT) return &dm->output;
    ct_decoder_layer_weights *w = &dm->layers[l];
    switch (bit) {
    case CT_LORA_WQKV: return &w->wqkv;
    case CT_LORA_WO: return &w->wo;
    case CT_LORA_W1: return &w->w1;
    case CT_LORA_W3: return &w->w3;
    default: return &w->w2;
    }
}

/* A [r, in] ~ U(-1/sqrt(in), 1/sqrt(in)) from (seed, linear id); B = 0. */
static int init_pair(ct_lora *l, size_t i) {
    const ct_lora_param *pa = &l->params[i], *pb = &l->params[i + 1];
    ct_linear *lin = l->lins[i / 2];
    int64_t na = ct_numel(pa->t), nb = ct_numel(pb->t), in = pa->t->shape[1];
    bool host = l->be->device == CT_CPU;
    float *a = host ? pa->t->data : malloc((size_t)na * sizeof(float)); /* [r, in] */
    if (!a) return ct_errorf(CT_ERUNTIME, "out of memory initialising %s", pa->name);
    uint64_t key = ct_mix64(l->cfg.seed ^ ct_mix64(lin->id));
    float bound = (float)(1.0 / sqrt((double)in)); /* kaiming_uniform(a=√5): gain·sqrt(3/in) = 1/sqrt(in) */
#pragma omp parallel for schedule(static) if (na > 65536)
    for (int64_t k = 0; k < na; k++) a[k] = bound * (2.0f * ct_uniform(key, (uint64_t)k) - 1.0f);
    int rc = host ? CT_OK : l->be->upload(pa->t->data, a, (size_t)na * sizeof(float));
    if (!host) free(a);
    if (rc == CT_OK) rc = l->be->zero(pb->t->data, (size_t)nb * sizeof(float));
    return rc;
}

int ct_lora_reset(ct_lora *l) {
    for (size_t i = 0; i < l->n; i += 2) CT_TRY(init_pair(l, i));
    return ct_lora_zero_grads(l);
}

/* Fills the size table and the parameter records (names, shapes); no blocks yet. */
static int plan_params(ct_lora *l) {
    ct_decoder_model *dm = l->dm;
    size_t cap = (size_t)dm->n_layers * 5 + 1;
    l->params = calloc(2 * cap, sizeof *l->params);
    l->hdr = calloc(4 * cap, sizeof *l->hdr);
    l->names = calloc(2 * cap, NAME_CAP);
    l->offset = calloc(2 * cap + 1, sizeof *l->offset);
    l->lins = calloc(cap, sizeof *l->lins);
    if (!l->params || !l->hdr || !l->names || !l->offset || !l->lins) return ct_errorf(CT_ERUNTIME, "out of memory");
    int64_t r = l->cfg.r;
    /* Up front, before anything is allocated: a rank above a targeted
     * linear's smaller side adds no capacity and only costs memory (a huge r
     * would try to allocate r x (in + out) floats per linear). */
    int64_t r_max = INT64_MAX;
    const char *narrow = NULL;
    for (int layer = 0; layer <= dm->n_layers; layer++)
        for (int k = 0; k < N_TARGETS; k++) {
            unsigned bit = k_targets[k].bit;
            if (!(l->cfg.targets & bit) || (bit == CT_LORA_OUTPUT) != (layer == dm->n_layers)) continue;
            ct_linear *lin = linear_of(dm, layer, bit);
            if (!lin->w || lin->w->ndim != 2) continue; /* reported below */
            int64_t side = lin->w->shape[0] < lin->w->shape[1] ? lin->w->shape[0] : lin->w->shape[1];
            if (side < r_max) r_max = side, narrow = k_targets[k].name;
        }
    if (narrow && r > r_max)
        return ct_errorf(CT_EINPUT, "lora.r %lld is larger than the targeted layers allow: %s is %lld wide on its "
                         "smaller side, and a LoRA pair's rank cannot exceed min(in, out); use lora.r <= %lld",
                         (long long)r, narrow, (long long)r_max, (long long)r_max);
    for (int layer = 0; layer <= dm->n_layers; layer++) {
        for (int k = 0; k < N_TARGETS; k++) {
            unsigned bit = k_targets[k].bit;
            bool head = bit == CT_LORA_OUTPUT;
            if (!(l->cfg.targets & bit) || head != (layer == dm->n_layers)) continue;
            ct_linear *lin = linear_of(dm, layer, bit);
            if (!lin->w || lin->w->ndim != 2)
                return ct_errorf(CT_EINPUT, "LoRA: layer %d has no %s weight", layer, k_targets[k].name);
            if (lin->a || lin->b)
                return ct_errorf(CT_EINPUT, "LoRA: %s already has a LoRA pair attached", lin->w->name ? lin->w->name : k_targets[k].name);
            int64_t out = lin->w->shape[0], in = lin->w->shape[1];
            for (int ab = 0; ab < 2; ab++) {
                size_t i = l->n++;
                char *name = l->names + i * NAME_CAP;
                if (head) snprintf(name, NAME_CAP, "base_model.model.output.lora_%c.weight", ab ? 'B' : 'A');
                else snprintf(name, NAME_CAP, "base_model.model.model.layers.%d.%s.lora_%c.weight", layer,
                              k_targets[k].module, ab ? 'B' : 'A');
                int64_t shape[2] = {ab ? out : r, ab ? r : in}; /* A [r, in], B [out, r] */
                CT_TRY(ct_tensor_init(&l->hdr[i], CT_F32, l->be->device, 2, shape, NULL));
                l->hdr[i].name = name;
                l->params[i] = (ct_lora_param){name, &l->hdr[i], head ? -1 : layer, bit, ab == 1};
                l->offset[i + 1] = l->offset[i] + shape[0] * shape[1];
            }
            l->lins[l->n / 2 - 1] = lin;
        }
    }
    return CT_OK;
}

/* Points the headers into the blocks and the linears at the pairs. */
static void carve_and_attach(ct_lora *l) {
    for (size_t i = 0; i < l->n; i++) {
        ct_tensor *v = &l->hdr[i], *g = &l->hdr[l->n + i];
        v->data = l->values + l->offset[i];
        if (l->grads) {
            *g = *v;
            g->name = NULL;
            g->data = l->grads + l->offset[i];
            v->grad = g;
            v->requires_grad = true;
        }
    }
    for (size_t k = 0; k < l->n / 2; k++) {
        ct_linear *lin = l->lins[k];
        lin->a = l->params[2 * k].t;
        lin->b = l->params[2 * k + 1].t;
        lin->scale = l->scale;
        lin->dropout = l->cfg.dropout;
    }
}

int ct_lora_new(const ct_lora_config *cfg, ct_decoder_model *dm, const ct_backend *be, bool trainable,
                ct_lora **out) {
    *out = NULL;
    CT_TRY(ct_lora_config_check(cfg, "LoRA config"));
    ct_lora *l = calloc(1, sizeof *l);
    if (!l) return ct_errorf(CT_ERUNTIME, "out of memory");
    l->cfg = *cfg;
    l->scale = ct_lora_scale(cfg);
    l->dm = dm;
    l->be = be;
    l->trainable = trainable;
    int rc = plan_params(l);
    size_t bytes = l->offset ? (size_t)l->offset[l->n] * sizeof(float) : 0;
    if (rc == CT_OK) {
        l->values = be->mem.alloc(bytes ? bytes : sizeof(float));
        if (trainable) l->grads = be->mem.alloc(bytes ? bytes : sizeof(float));
        if (!l->values || (trainable && !l->grads))
            rc = ct_errorf(CT_ERUNTIME, "out of memory allocating %zu bytes of LoRA %s", bytes,
                           l->values ? "grads" : "parameters");
    }
    if (rc == CT_OK) {
        carve_and_attach(l);
        rc = ct_lora_reset(l);
    }
    if (rc) {
        ct_lora_free(l);
        return rc;
    }
    *out = l;
    return CT_OK;
}

void ct_lora_free(ct_lora *l) {
    if (!l) return;
    for (size_t k = 0; l->lins && k < l->n / 2; k++) {
        ct_linear *lin = l->lins[k];
        if (lin && lin->a == l->params[2 * k].t) lin->a = lin->b = NULL, lin->scale = 0.0f, lin->dropout = 0.0f;
    }
    if (l->values) l->be->mem.free(l->values);
    if (l->grads) l->be->mem.free(l->grads);
    free(l->params);
    free(l->hdr);
    free(l->names);
    free(l->offset);
    free(l->lins);
    free(l);
}

const ct_lora_config *ct_lora_get_config(const ct_lora *l) { return &l->cfg; }
const ct_decoder_model *ct_lora_decoder(const ct_lora *l) { return l->dm; }
const ct_backend *ct_lora_backend(const ct_lora *l) { return l->be; }
size_t ct_lora_count(const ct_lora *l) { return l->n; }
const ct_lora_param *ct_lora_at(const ct_lora *l, size_t i) { return i < l->n ? &l->params[i] : NULL; }
int64_t ct_lora_numel(const ct_lora *l) { return l->offset[l->n]; }
float *ct_lora_values(const ct_lora *l) { return l->values; }
float *ct_lora_grads(const ct_lora *l) { return l->grads; }

const ct_lora_param *ct_lora_find(const ct_lora *l, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->params[i].name, name)) return &l->params[i];
    return NULL;
}

int ct_lora_zero_grads(ct_lora *l) {
    if (!l->grads || l->offset[l->n] == 0) return CT_OK;
    return l->be->zero(l->grads, (size_t)l->offset[l->n] * sizeof(float));
}

size_t ct_lora_plan(const ct_lora *l, char *buf, size_t cap) {
    int64_t n = l->offset[l->n];
    size_t bytes = (size_t)n * sizeof(float), total = bytes * (l->grads ? 2 : 1);
    double mib = (double)bytes / 1048576.0;
    char targets[64] = "";
    for (int i = 0; i < N_TARGETS; i++)
        if (l->cfg.targets & k_targets[i].bit) {
            size_t off = strlen(targets);
            snprintf(targets + off, sizeof targets - off, "%s%s", off ? "," : "", k_targets[i].name);
        }
    if (cap)
        snprintf(buf, cap,
                 "LoRA r %d alpha %g (scale %g%s) on %s: %zu linears\n"
                 "LoRA params: %lld floats, %.1f MiB\n"
                 "LoRA grads: %s%.1f MiB\n",
                 l->cfg.r, l->cfg.alpha, (double)l->scale, l->cfg.use_rslora ? ", rsLoRA" : "", targets, l->n / 2,
                 (long long)n, mib, l->grads ? "" : "none (not trainable) ", l->grads ? mib : 0.0);
    return total;
}
