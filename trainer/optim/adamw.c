/* AdamW as torch.optim.AdamW (single-tensor path, amsgrad off): decoupled
 * weight decay, bias-corrected moments, fp32 element math. See adamw.h. The
 * per-step scalars are formed here, the element loop is the backend's
 * adamw_update; the moments live in the backend's memory. */
#include "adamw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

#define ALIGN_FLOATS 16 /* each tensor's moment slice starts on 64 bytes */

struct ct_adamw {
    ct_adamw_config cfg;
    const ct_backend *be; /* where params, grads and moments live; borrowed */
    int64_t step;
    size_t n;
    ct_tensor **params;   /* [n], not owned */
    int64_t *offset;      /* [n] start of param i's slice within each moment half */
    int64_t half;         /* floats per moment (sum of aligned sizes) */
    float *moments;       /* [2 * half] backend memory: m of every param, then v of every param */
    ct_adamw_slot *slots; /* [n] host: the kernel's argument list, built once */
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

int ct_adamw_new(const ct_adamw_config *cfg, const ct_backend *be, ct_tensor *const *params,
                 size_t n, ct_adamw **out) {
    *out = NULL;
    CT_TRY(ct_adamw_config_check(cfg, "optimizer"));
    CT_TRY(ct_backend_require(be, CT_OP_ADAMW, NULL));
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
    o->moments = be->mem.alloc(bytes ? bytes : 64); /* CT_ARENA_ALIGN (>= 64 bytes) aligned */
    if (!o->moments || be->zero(o->moments, bytes)) {
        ct_adamw_free(o);
        return ct_errorf(CT_ERUNTIME, "AdamW: out of memory for %.1f MiB of moments on %s",
                         (double)bytes / (1 << 20), be->name);
    }
    for (size_t i = 0; i < n; i++)
        o->slots[i] = (ct_adamw_slot){.p = (float *)params[i]->data,
                                      .g = (const float *)params[i]->grad->data,
                                      .m = ct_adamw_exp_avg(o, i),
                                      .v = ct_adamw_exp_avg_sq(o, i),
                                      .n = ct_numel(params[i])};
    *out = o;
    return CT_OK;
}

void ct_adamw_free(ct_adamw *o) {
    if (!o) return;
    if (o->moments) o->be->mem.free(o->moments);
    free(o->slots);
    free(o->offset);
    free(o->params);
    free(o);
}

int64_t ct_adamw_get_step(const ct_adamw *o) { return o->step; }
void ct_adamw_set_step(ct_adamw *o, int64_t step) { o->step = step; }
size_t ct_adamw_count(const ct_adamw *o) { return o->n; }
ct_tensor *ct_adamw_param(const ct_adamw *o, size_t i) { return o->params[i]; }
float *ct_adamw_exp_avg(const ct_adamw *o, size_t i) { return o->moments + o->offset[i]; }
float *ct_adamw_exp_avg_sq(const ct_adamw *o, size_t i) {
    return o->moments + o->half + o->offset[i];
}

size_t ct_adamw_plan(const ct_adamw *o, char *buf, size_t cap) {
    size_t bytes = (size_t)(2 * o->half) * sizeof(float);
    if (buf && cap)
        snprintf(buf, cap, "AdamW moments: %lld floats x 2, %.1f MiB\n", (long long)o->half,
                 (double)bytes / (1 << 20));
    return bytes;
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
    return o->be->adamw_update(&k, o->slots, o->n);
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
    bool on_host = o->be->device == CT_CPU;
    float *host = on_host ? o->moments : malloc(bytes ? bytes : 1); /* [2 * half] */
    if (!host) return ct_errorf(CT_ERUNTIME, "AdamW: out of memory saving moments");
    int rc = on_host ? CT_OK : o->be->download(host, o->moments, bytes);
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
    if (!rc) rc = o->be->upload(o->moments, tmp, bytes);
    if (!rc) o->step = step;
    free(tmp);
    return rc;
}
