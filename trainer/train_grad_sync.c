/* The gradient all-reduce of an optimizer step, overlapped with the backward.
 *
 * The LoRA grad block is in parameter order, layer by layer and the head
 * last (trainer/model/lora.h), and the backward walks the layers from the
 * head down: once the backward of the window's last micro-batch has passed
 * layer l (the decoder's tape mark l, decoder.h), the grads of layers l..
 * and the head are final and their sum over the ranks can start while the
 * backward of the layers below still runs. The block is cut into buckets of
 * whole layers from the top, each at least cap_mib, started in that order
 * (the same on every rank: collectives match by order); whatever has not
 * started when the backward ends (all of it for a rank with nothing to
 * train in that micro-batch, or with CTUNER_DIST_OVERLAP=0) starts then.
 * The sums are the same element-wise sums as one whole-block all-reduce, so
 * the result does not depend on the bucketing (with 2 ranks, bit for bit).
 *
 * On the cuda backend with NCCL the sums run on their own stream after an
 * event on the compute stream (trainer/dist/dist_nccl.c); staged through the
 * host (CPU ranks, or no NCCL) a bucket is downloaded and its MPI sum
 * started, and the hooks at the following marks let MPI advance it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "trainer/train_internal.h"

static int env_number(const char *name, double dflt, double lo, double *out) {
    const char *v = getenv(name);
    *out = dflt;
    if (!v || !v[0]) return CT_OK;
    char *end;
    double x = strtod(v, &end);
    if (*end || !isfinite(x) || x < lo)
        return ct_errorf(CT_EINPUT, "%s=%s: expected a number >= %g", name, v, lo);
    *out = x;
    return CT_OK;
}

/* The span [lo, hi) of each tag's grads (tag = layer, n_layers = the head);
 * false when the block is not in layer order (then one bucket, started at
 * the end). */
static bool tag_spans(const ct_lora *l, float *grads, int n_tags, size_t *lo, size_t *hi) {
    for (int g = 0; g < n_tags; g++) lo[g] = hi[g] = 0;
    size_t prev_end = 0;
    int prev_tag = -1;
    for (size_t i = 0; i < ct_lora_count(l); i++) {
        const ct_lora_param *p = ct_lora_at(l, i);
        int tag = p->layer >= 0 ? p->layer : n_tags - 1;
        size_t off = (size_t)((float *)p->t->grad->data - grads), n = (size_t)ct_numel(p->t);
        if (tag < prev_tag || off != prev_end || tag >= n_tags) return false;
        if (hi[tag] == lo[tag]) lo[tag] = off;
        hi[tag] = off + n;
        prev_end = off + n;
        prev_tag = tag;
    }
    return true;
}

int ct_grad_sync_open(ct_trainer *t) {
    ct_grad_sync *s = &t->gsync;
    memset(s, 0, sizeof *s);
    s->on = t->world > 1 || t->dist->nccl;
    if (!s->on) return CT_OK;
    CT_TRY(env_number("CTUNER_DIST_BUCKET_MB", 16, 1e-6, &s->cap_mib));
    const char *ov = getenv("CTUNER_DIST_OVERLAP");
    s->overlap = !ov || !ov[0] || strcmp(ov, "1") == 0;
    if (!s->overlap && strcmp(ov, "0") != 0)
        return ct_errorf(CT_EINPUT, "CTUNER_DIST_OVERLAP=%s: expected 1 (start each bucket as the backward passes "
                         "its layers, the default) or 0 (sum after the backward)", ov);

    int n_tags = ct_lora_decoder(t->lora)->n_layers + 1;
    size_t total = (size_t)ct_lora_numel(t->lora);
    size_t *lo = calloc((size_t)n_tags, sizeof *lo), *hi = calloc((size_t)n_tags, sizeof *hi);
    s->b = calloc((size_t)n_tags, sizeof *s->b);
    if (!lo || !hi || !s->b) {
        free(lo);
        free(hi);
        return ct_errorf(CT_ERUNTIME, "out of memory");
    }
    if (!tag_spans(t->lora, ct_lora_grads(t->lora), n_tags, lo, hi)) {
        s->overlap = false; /* (not the decoder's layout: one bucket after the backward) */
        s->b[s->n++] = (ct_grad_bucket){0, total, 0};
    } else {
        /* from the top: whole tags until the bucket reaches the cap */
        size_t cap = (size_t)(s->cap_mib * 1048576.0 / sizeof(float));
        size_t end = total; /* the buckets so far cover [end, total) */
        int low = -1;       /* the lowest tag gathered since */
        for (int g = n_tags - 1; g >= 0; g--) {
            if (hi[g] == lo[g]) continue; /* no LoRA here */
            low = g;
            if (end - lo[g] >= cap) {
                s->b[s->n++] = (ct_grad_bucket){lo[g], end - lo[g], g};
                end = lo[g];
                low = -1;
            }
        }
        if (end > 0) s->b[s->n++] = (ct_grad_bucket){0, end, low >= 0 ? low : 0};
    }
    free(lo);
    free(hi);
    return CT_OK;
}

static const char k_what[] = "the gradient all-reduce";

static int start_next(ct_trainer *t) {
    ct_grad_sync *s = &t->gsync;
    const ct_grad_bucket *b = &s->b[s->next++];
    return ct_dist_backend_start(t->dist, ct_model_backend(t->model), ct_lora_grads(t->lora), t->dist_host, b->off,
                                 b->n, k_what);
}

/* The tape's backward passed mark `tag`: start every bucket now final. */
static int on_mark(void *ctx, int tag) {
    ct_trainer *t = ctx;
    ct_grad_sync *s = &t->gsync;
    while (s->next < s->n && s->b[s->next].ready_tag >= tag) {
        CT_TRY(start_next(t));
        s->early++;
    }
    return ct_dist_backend_progress(t->dist, ct_model_backend(t->model), k_what);
}

int ct_grad_sync_arm(ct_trainer *t) {
    ct_grad_sync *s = &t->gsync;
    if (!s->on) return CT_OK;
    CT_TRY(ct_dist_backend_open(t->dist, ct_model_backend(t->model)));
    if (!s->noted) {
        s->noted = true;
        ct_train_log_note(t, "gradient all-reduce %s, %d bucket%s of whole layers (at least %g MiB each), %s\n",
                          t->dist->dev_note, s->n, s->n == 1 ? "" : "s", s->cap_mib,
                          s->overlap ? "each started as the backward passes its layers" : "after the backward");
    }
    s->next = 0;
    if (s->overlap) {
        t->tape.on_mark = on_mark;
        t->tape.mark_ctx = t;
    }
    return CT_OK;
}

int ct_grad_sync_finish(ct_trainer *t) {
    ct_grad_sync *s = &t->gsync;
    t->tape.on_mark = NULL;
    t->tape.mark_ctx = NULL;
    if (!s->on) return CT_OK;
    double t0 = ct_now_s();
    while (s->next < s->n) CT_TRY(start_next(t));
    CT_TRY(ct_dist_backend_finish(t->dist, ct_model_backend(t->model), ct_lora_grads(t->lora), t->dist_host, 0,
                                  (size_t)ct_lora_numel(t->lora), k_what));
    s->wait_s += ct_now_s() - t0;
    s->steps++;
    return CT_OK;
}

void ct_grad_sync_summary(const ct_trainer *t, char *buf, size_t cap) {
    const ct_grad_sync *s = &t->gsync;
    buf[0] = '\0';
    if (!s->on || s->steps == 0) return;
    snprintf(buf, cap, "gradient all-reduce: %d bucket%s per optimizer step, %.2f of them started during the "
             "backward; %.3f ms per step from the end of the backward to the end of the sums (rank %d)\n", s->n,
             s->n == 1 ? "" : "s", (double)s->early / (double)s->steps, 1e3 * s->wait_s / (double)s->steps, t->rank);
}

void ct_grad_sync_close(ct_trainer *t) {
    t->tape.on_mark = NULL;
    free(t->gsync.b);
    t->gsync.b = NULL;
}
