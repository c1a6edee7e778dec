/* AdamW as torch.optim.AdamW (single-tensor path, amsgrad off): decoupled
 * weight decay, bias-corrected moments, fp32 element math. See adamw.h. The
 * per-step scalars are formed here, the element loop is the adamw_update of
 * the state backend: the parameters' backend, whose memory holds the moments,
 * or with offload the CPU backend over host copies (adamw.h, "Offload"). */
#include "adamw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

#define ALIGN_FLOATS 16 /* each tensor's moment slice starts on 64 bytes */

/* Offload: a run of parameters first..first+count-1 that are adjacent in
 * the backend's memory, and so are their grads: one transfer each way. */
typedef struct {
    size_t first, count;
    int64_t at;    /* start of the run in the host copies */
    int64_t numel; /* floats of the run */
} param_run;

struct ct_adamw {
    ct_adamw_config cfg;
    const ct_backend *be; /* where params and grads live; borrowed */
    const ct_backend *sb; /* where the moments live and the update runs: be, or the CPU when offloaded */
    int64_t step;
    size_t n;
    ct_tensor **params;   /* [n], not owned */
    int64_t *offset;      /* [n] start of param i's slice within each moment half */
    int64_t half;         /* floats per moment (sum of aligned sizes) */
    float *moments;       /* [2 * half] sb's memory: m of every param, then v of every param */
    ct_adamw_slot *slots; /* [n] host: the kernel's argument list, built once */
    /* offload only (sb != be): */
    param_run *runs;      /* [n_runs] host */
    size_t n_runs;
    int64_t host_n;       /* floats of each host copy (sum of the runs, each 16-float aligned) */
    float *host;          /* [2 * host_n] host: the parameters' master copy, then their grads */
    bool stale;           /* the master copy must be re-read from the device before the update */
};

ct_adamw_config ct_adamw_defaults(void) {
    return (ct_adamw_config){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
}

int ct_adamw_config_check(const ct_adamw_config *c, const char *where) {
    if (!(c->beta1 >= 0.0 && c->beta1 < 1.0))
        return ct_errorf(CT_EINPUT, "%s: AdamW beta1 = %g must be in [0, 1)", where, c->beta1);
    if (!(c->beta2 >= 0.0 && c->beta2 < 1.0))
        return ct_errorf(CT_EINPUT, "%s: AdamW beta2 = %g must be in [0, 1)", where, c->beta2);
    if (!(c->eps >= 0.0 && isfinite(c->eps)))
        return ct_errorf(CT_EINPUT, "%s: AdamW eps = %g must be finite and >= 0", where, c->eps);
    if (!(c->weight_decay >= 0.0 && isfinite(c->weight_decay)))
        return ct_errorf(CT_EINPUT, "%s: AdamW weight_decay = %g must be finite and >= 0", where,
                         c->weight_decay);
    return CT_OK;
}

static const char *pname(const ct_tensor *t, size_t i, char *buf, size_t cap) {
    if (t->name) return t->name;
    snprintf(buf, cap, "%zu", i);
    return buf;
}

/* Offload: groups the parameters into runs adjacent in the backend's memory
 * (values and grads both), lays the runs out in the host copies and
 * allocates them; the first step reads the parameters (stale). */
static int make_runs(ct_adamw *o) {
    o->runs = calloc(o->n ? o->n : 1, sizeof *o->runs);
    if (!o->runs) return ct_errorf(CT_ERUNTIME, "AdamW: out of memory");
    int64_t at = 0;
    for (size_t i = 0; i < o->n; i++) {
        const ct_tensor *p = o->params[i];
        int64_t numel = ct_numel(p);
        param_run *r = o->n_runs ? &o->runs[o->n_runs - 1] : NULL;
        if (r) {
            const ct_tensor *q = o->params[i - 1];
            int64_t qn = ct_numel(q);
            if ((const float *)p->data == (const float *)q->data + qn &&
                (const float *)p->grad->data == (const float *)q->grad->data + qn) {
                r->count++;
                r->numel += numel;
                at += numel;
                continue;
            }
            at = (at + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
        }
        o->runs[o->n_runs++] = (param_run){.first = i, .count = 1, .at = at, .numel = numel};
        at += numel;
    }
    o->host_n = (at + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    size_t bytes = (size_t)(2 * o->host_n) * sizeof(float);
    o->host = ct_host_alloc(bytes ? bytes : 64);
    if (!o->host)
        return ct_errorf(CT_ERUNTIME, "AdamW: out of memory for %.1f MiB of host copies of the parameters "
                         "and grads (optimizer_offload)", (double)bytes / (1 << 20));
    o->stale = true;
    return CT_OK;
}

int ct_adamw_new(const ct_adamw_config *cfg, const ct_backend *be, ct_tensor *const *params,
                 size_t n, ct_adamw **out) {
    *out = NULL;
    CT_TRY(ct_adamw_config_check(cfg, "optimizer"));
    /* Off a host-memory backend, offload moves the state to the CPU backend. */
    const ct_backend *sb = cfg->offload && be->device != CT_CPU ? ct_cpu_backend() : be;
    CT_TRY(ct_backend_require(sb, CT_OP_ADAMW, NULL));
    for (size_t i = 0; i < n; i++) {
        const ct_tensor *p = params[i];
        char nb[32];
        if (!p) return ct_errorf(CT_EINPUT, "AdamW: parameter %zu is NULL", i);
        const char *nm = pname(p, i, nb, sizeof nb);
        if (p->dtype != CT_F32 || p->device != be->device)
            return ct_errorf(CT_EINPUT, "AdamW: parameter '%s' is %s on %s; the optimizer on "
                             "backend '%s' updates f32 tensors on its device", nm,
                             ct_dtype_name(p->dtype), ct_device_name(p->device), be->name);
        const ct_tensor *g = p->grad;
        if (!g || g->dtype != CT_F32 || g->device != be->device || !ct_same_shape(p, g))
            return ct_errorf(CT_EINPUT, "AdamW: parameter '%s' needs a long-lived f32 grad of its "
                             "shape on the same device", nm);
    }
    ct_adamw *o = calloc(1, sizeof *o);
    if (!o) return ct_errorf(CT_ERUNTIME, "AdamW: out of memory");
    o->cfg = *cfg;
    o->be = be;
    o->sb = sb;
    o->n = n;
    o->params = calloc(n ? n : 1, sizeof *o->params);
    o->offset = calloc(n ? n : 1, sizeof *o->offset);
    o->slots = calloc(n ? n : 1, sizeof *o->slots);
    if (!o->params || !o->offset || !o->slots) {
        ct_adamw_free(o);
        return ct_errorf(CT_ERUNTIME, "AdamW: out of memory");
    }
    /* Size table: each param's slice rounded up to ALIGN_FLOATS. */
    int64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        o->params[i] = params[i];
        o->offset[i] = at;
        int64_t numel = ct_numel(params[i]);
        at += (numel + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    }
    o->half = at;
    size_t bytes = (size_t)(2 * at) * sizeof(float);
    o->moments = sb->mem.alloc(bytes ? bytes : 64); /* CT_ARENA_ALIGN (>= 64 bytes) aligned */
    if (!o->moments || sb->zero(o->moments, bytes)) {
        ct_adamw_free(o);
        return ct_errorf(CT_ERUNTIME, "AdamW: out of memory for %.1f MiB of moments on %s",
                         (double)bytes / (1 << 20), sb->name);
    }
    if (sb != be) {
        int rc = make_runs(o);
        if (rc) {
            ct_adamw_free(o);
            return rc;
        }
    }
    for (size_t i = 0; i < n; i++)
        o->slots[i] = (ct_adamw_slot){.p = (float *)params[i]->data,
                                      .g = (const float *)params[i]->grad->data,
                                      .m = ct_adamw_exp_avg(o, i),
                                      .v = ct_adamw_exp_avg_sq(o, i),
                                      .n = ct_numel(params[i])};
    for (size_t r = 0; r < o->n_runs; r++) /* offload: the kernel works on the host copies */
        for (size_t i = o->runs[r].first, k = 0; k < o->runs[r].count; i++, k++) {
            int64_t in_run = (int64_t)((float *)params[i]->data - (float *)params[o->runs[r].first]->data);
            o->slots[i].p = o->host + o->runs[r].at + in_run;
            o->slots[i].g = o->host + o->host_n + o->runs[r].at + in_run;
        }
    *out = o;
    return CT_OK;
}

void ct_adamw_free(ct_adamw *o) {
    if (!o) return;
    if (o->moments) o->sb->mem.free(o->moments);
    free(o->host);
    free(o->runs);
    free(o->slots);
    free(o->offset);
    free(o->params);
    free(o);
}

int64_t ct_adamw_get_step(const ct_adamw *o) { return o->step; }
void ct_adamw_set_step(ct_adamw *o, int64_t step) { o->step = step; }
void ct_adamw_params_changed(ct_adamw *o) { o->stale = o->sb != o->be; }
const ct_backend *ct_adamw_state_backend(const ct_adamw *o) { return o->sb; }
size_t ct_adamw_count(const ct_adamw *o) { return o->n; }
ct_tensor *ct_adamw_param(const ct_adamw *o, size_t i) { return o->params[i]; }
float *ct_adamw_exp_avg(const ct_adamw *o, size_t i) { return o->moments + o->offset[i]; }
float *ct_adamw_exp_avg_sq(const ct_adamw *o, size_t i) {
    return o->moments + o->half + o->offset[i];
}

size_t ct_adamw_plan(const ct_adamw *o, char *buf, size_t cap) {
    size_t bytes = (size_t)(2 * o->half) * sizeof(float);
    double mib = (double)bytes / (1 << 20);
    if (buf && cap && o->sb != o->be)
        snprintf(buf, cap, "AdamW moments: %lld floats x 2, %.1f MiB in host memory (optimizer_offload), + %.1f "
                 "MiB host copy of the parameters and grads; the update runs on the host\n", (long long)o->half, mib,
                 (double)(2 * o->host_n) * sizeof(float) / (1 << 20));
    else if (buf && cap)
        snprintf(buf, cap, "AdamW moments: %lld floats x 2, %.1f MiB on %s\n", (long long)o->half, mib,
                 o->be->device == CT_CPU ? "the host" : o->be->name);
    return bytes;
}

typedef enum { GRADS_DOWN, PARAMS_DOWN, PARAMS_UP } transfer_kind;

/* Offload: one transfer per run between the backend and the host copies. */
static int transfer(ct_adamw *o, transfer_kind what) {
    for (size_t r = 0; r < o->n_runs; r++) {
        const param_run *run = &o->runs[r];
        ct_tensor *p = o->params[run->first];
        size_t bytes = (size_t)run->numel * sizeof(float);
        float *hp = o->host + run->at, *hg = o->host + o->host_n + run->at;
        int rc = what == GRADS_DOWN    ? o->be->download(hg, p->grad->data, bytes)
                 : what == PARAMS_DOWN ? o->be->download(hp, p->data, bytes)
                                       : o->be->upload(p->data, hp, bytes);
        if (rc)
            return ct_error_wrap(rc, "AdamW (optimizer_offload): %s %.1f MiB of %s", what == PARAMS_UP ? "uploading" :
                                 "downloading", (double)bytes / (1 << 20), what == GRADS_DOWN ? "grads" : "parameters");
    }
    return CT_OK;
}

int ct_adamw_step(ct_adamw *o, double lr) {
    if (!(lr >= 0.0 && isfinite(lr)))
        return ct_errorf(CT_EINPUT, "AdamW: learning rate %g must be finite and >= 0", lr);
    o->step++;
    const ct_adamw_config *c = &o->cfg;
    double t = (double)o->step;
    /* Scalars in double as torch computes them from Python floats, then used
     * as fp32 in the element loop (torch's CPU kernels cast them to float). */
    ct_adamw_scalars k = {
        .decay = (float)(1.0 - lr * c->weight_decay),
        .w1 = (float)(1.0 - c->beta1), /* lerp weight */
        .b2 = (float)c->beta2,
        .w2 = (float)(1.0 - c->beta2),
        .neg_step = (float)(-(lr / (1.0 - pow(c->beta1, t)))),
        .bc2_sqrt = (float)sqrt(1.0 - pow(c->beta2, t)),
        .eps = (float)c->eps,
        .use_decay = c->weight_decay != 0.0,
    };
    if (o->sb == o->be) return o->be->adamw_update(&k, o->slots, o->n);
    /* Offload: grads down, the update over the host copies, parameters up. */
    if (o->stale) CT_TRY(transfer(o, PARAMS_DOWN));
    o->stale = false;
    CT_TRY(transfer(o, GRADS_DOWN));
    CT_TRY(o->sb->adamw_update(&k, o->slots, o->n));
    return transfer(o, PARAMS_UP);
}

int ct_adamw_zero_grad(ct_adamw *o) {
    for (size_t i = 0; i < o->n; i++)
        CT_TRY(o->be->zero(o->params[i]->grad->data, ct_nbytes(o->params[i]->grad)));
    return CT_OK;
}

/* "<prefix>/<what>/<param name>" into buf. */
static int moment_name(char *buf, size_t cap, const char *prefix, const char *what,
                       const ct_tensor *t, size_t i) {
    char nb[32];
    int k = snprintf(buf, cap, "%s/%s/%s", prefix, what, pname(t, i, nb, sizeof nb));
    if (k < 0 || (size_t)k >= cap)
        return ct_errorf(CT_EINPUT, "AdamW: checkpoint name for parameter %zu is too long", i);
    return CT_OK;
}

int ct_adamw_save(const ct_adamw *o, ct_ckpt_writer *w, const char *prefix) {
    char name[1100];
    snprintf(name, sizeof name, "%s/step", prefix);
    CT_TRY(ct_ckpt_put_i64(w, name, 1, &o->step));
    /* Off the CPU the moments come to the host in one download; on the CPU
     * they are written from where they are (no copy of the optimizer state). */
    size_t bytes = (size_t)(2 * o->half) * sizeof(float);
    bool on_host = o->sb->device == CT_CPU;
    float *host = on_host ? o->moments : malloc(bytes ? bytes : 1); /* [2 * half] */
    if (!host) return ct_errorf(CT_ERUNTIME, "AdamW: out of memory saving moments");
    int rc = on_host ? CT_OK : o->sb->download(host, o->moments, bytes);
    for (size_t i = 0; !rc && i < o->n; i++) {
        const ct_tensor *p = o->params[i];
        rc = moment_name(name, sizeof name, prefix, "exp_avg", p, i);
        if (!rc) rc = ct_ckpt_put_f32(w, name, p->ndim, p->shape, host + o->offset[i]);
        if (!rc) rc = moment_name(name, sizeof name, prefix, "exp_avg_sq", p, i);
        if (!rc) rc = ct_ckpt_put_f32(w, name, p->ndim, p->shape, host + o->half + o->offset[i]);
    }
    if (!on_host) free(host);
    return rc;
}

int ct_adamw_load(ct_adamw *o, ct_ckpt_reader *r, const char *prefix) {
    /* Into a host block first (the padding between slices zeroed, as the
     * moments were made) so a failure leaves the optimizer as it was. */
    size_t bytes = (size_t)(2 * o->half) * sizeof(float);
    float *tmp = calloc(1, bytes ? bytes : 1);
    if (!tmp) return ct_errorf(CT_ERUNTIME, "AdamW: out of memory loading moments");
    char name[1100];
    int64_t step = 0;
    snprintf(name, sizeof name, "%s/step", prefix);
    int rc = ct_ckpt_get_i64(r, name, 1, &step);
    if (!rc && step < 0)
        rc = ct_errorf(CT_EINPUT, "checkpoint %s: '%s' = %lld is negative", ct_ckpt_path(r), name,
                       (long long)step);
    for (size_t i = 0; !rc && i < o->n; i++) {
        const ct_tensor *p = o->params[i];
        rc = moment_name(name, sizeof name, prefix, "exp_avg", p, i);
        if (!rc) rc = ct_ckpt_get_f32(r, name, p->ndim, p->shape, tmp + o->offset[i]);
        if (!rc) rc = moment_name(name, sizeof name, prefix, "exp_avg_sq", p, i);
        if (!rc) rc = ct_ckpt_get_f32(r, name, p->ndim, p->shape, tmp + o->half + o->offset[i]);
    }
    if (!rc) rc = o->sb->upload(o->moments, tmp, bytes);
    if (!rc) o->step = step;
    if (!rc) ct_adamw_params_changed(o); /* the caller restores the parameters too */
    free(tmp);
    return rc;
}
