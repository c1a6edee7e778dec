/* attention: checks the packed qkv layout and the runs tensor's shape, runs
 * the blockwise kernel, and saves {lse, out, params} so the backward can
 * recompute the probabilities block by block (no T×T matrix is ever kept).
 * The runs themselves are made and validated on the host, once per batch
 * (ct_segment_runs): the op never reads device memory. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "../ct_error.h"
#include "../ops.h"

typedef struct {
    ct_tensor *lse;   /* [Hq, T] f32 log-sum-exp of each query row's scores */
    ct_tensor *out;   /* [T, Hq*hd] the op's output (its grad is dO) */
    ct_tensor *runs;  /* i32 [n_runs + 1] run boundaries, or NULL */
    ct_attn_params p; /* copy: the caller's struct may not outlive the step */
} attention_saved;

static int attention_backward(ct_tape *t, const ct_tape_entry *e) {
    const attention_saved *s = e->saved;
    ct_tensor *qkv = e->in[0];
    if (!qkv->requires_grad) return CT_OK;
    ct_tensor *dqkv = ct_grad(t, qkv);
    if (!dqkv) return CT_ERUNTIME;
    return t->be->attention_bwd(qkv, s->runs, &s->p, s->out, s->lse, e->out->grad, dqkv,
                                &t->scratch);
}

static const ct_op_def k_attention = {"attention", attention_backward};

/* In-place heapsort (no allocation; n is at most T). */
static void sift_down(int32_t *v, int64_t i, int64_t n) {
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && v[c + 1] > v[c]) c++;
        if (v[i] >= v[c]) return;
        int32_t tmp = v[i];
        v[i] = v[c];
        v[c] = tmp;
        i = c;
    }
}

static void heapsort_i32(int32_t *v, int64_t n) {
    for (int64_t i = n / 2 - 1; i >= 0; i--) sift_down(v, i, n);
    for (int64_t end = n - 1; end > 0; end--) {
        int32_t tmp = v[0];
        v[0] = v[end];
        v[end] = tmp;
        sift_down(v, 0, end);
    }
}

/* ids [T]: the caller's scratch (the id of each run, sorted to find one
 * that comes back). */
int ct_segment_runs_tmp(const int32_t *seg, int64_t T, int32_t *runs, int32_t *ids, int64_t *n_runs) {
    *n_runs = 0;
    if (T < 1 || T > INT32_MAX)
        return ct_errorf(CT_EINPUT, "segment runs: %lld tokens (need 1..%d)", (long long)T, INT32_MAX);
    int64_t n = 0;
    for (int64_t i = 0; i < T; i++)
        if (i == 0 || seg[i] != seg[i - 1]) runs[n] = (int32_t)i, ids[n++] = seg[i];
    runs[n] = (int32_t)T;
    heapsort_i32(ids, n);
    for (int64_t i = 1; i < n; i++)
        if (ids[i] == ids[i - 1]) { /* name the first token of the id and where it comes back */
            int64_t first = 0, again;
            while (seg[first] != ids[i]) first++;
            again = first;
            while (seg[again] == ids[i]) again++;
            while (seg[again] != ids[i]) again++;
            return ct_errorf(CT_EINPUT, "attention: segment id %d at token %lld reappears at token %lld after "
                             "other ids; packed samples must be contiguous runs (give each sample its own id)",
                             ids[i], (long long)first, (long long)again);
        }
    *n_runs = n;
    return CT_OK;
}

int ct_segment_runs(const int32_t *seg, int64_t T, int32_t *runs, int64_t *n_runs) {
    int32_t *ids = malloc((size_t)(T > 0 ? T : 1) * sizeof *ids); /* [T] */
    if (!ids) return ct_errorf(CT_ERUNTIME, "segment runs: out of memory for %lld ids", (long long)T);
    int rc = ct_segment_runs_tmp(seg, T, runs, ids, n_runs);
    free(ids);
    return rc;
}

ct_tensor *ct_segment_runs_tensor(ct_tape *t, const int32_t *seg, int64_t T) {
    /* The tensor first, sized for the most runs (its header lives in the meta
     * arena too), then host temporaries from the meta arena, released after:
     * no malloc per batch. */
    int64_t cap = T > 0 ? T + 1 : 1, n = 0; /* ct_segment_runs_tmp refuses T < 1 */
    ct_tensor *r = ct_tape_new(t, CT_I32, 1, &cap);
    if (!r) return NULL;
    ct_arena_mark mark = ct_arena_get_mark(&t->meta);
    int32_t *runs = ct_tape_meta(t, (size_t)cap * sizeof *runs); /* [T + 1] at most */
    int32_t *ids = ct_tape_meta(t, (size_t)cap * sizeof *ids);   /* [T] used (cap: a valid size for any T) */
    int rc = runs && ids ? ct_segment_runs_tmp(seg, T, runs, ids, &n)
                         : ct_errorf(CT_ERUNTIME, "segment runs: out of memory");
    if (!rc) rc = t->be->upload(r->data, runs, (size_t)(n + 1) * sizeof *runs);
    ct_arena_rewind(&t->meta, mark);
    if (rc) return NULL;
    r->shape[0] = n + 1; /* the boundaries written; the rest of the buffer is unused */
    return r;
}

ct_tensor *ct_attention(ct_tape *t, ct_tensor *qkv, ct_tensor *runs, const ct_attn_params *p) {
    char sq[64], ss[64];
    if (qkv->dtype != t->be->act_dtype || qkv->ndim != 2) {
        ct_errorf(CT_EINPUT, "attention: qkv must be [T, kv_heads*(group+2)*head_dim] in the backend's activation dtype, got %s %s",
                  ct_dtype_name(qkv->dtype), ct_shape_str(qkv, sq, sizeof sq));
        return NULL;
    }
    if (p->n_kv_heads < 1 || p->group < 1 || p->head_dim < 1 || !isfinite(p->scale)) {
        ct_errorf(CT_EINPUT, "attention: bad parameters (kv heads %d, group %d, head_dim %d, scale %g)",
                  p->n_kv_heads, p->group, p->head_dim, (double)p->scale);
        return NULL;
    }
    int64_t T = qkv->shape[0], hd = p->head_dim, Hq = (int64_t)p->n_kv_heads * p->group;
    int64_t want = (int64_t)p->n_kv_heads * (p->group + 2) * hd;
    if (qkv->shape[1] != want) {
        ct_errorf(CT_EINPUT, "attention: qkv %s has %lld columns, expected %d kv heads × (%d query + k + v) × head_dim %d = %lld",
                  ct_shape_str(qkv, sq, sizeof sq), (long long)qkv->shape[1], p->n_kv_heads,
                  p->group, p->head_dim, (long long)want);
        return NULL;
    }
    if (runs && (runs->dtype != CT_I32 || runs->ndim != 1 || runs->shape[0] < 2 || runs->shape[0] > T + 1)) {
        ct_errorf(CT_EINPUT, "attention: runs %s %s must be i32 [n_runs + 1] run boundaries (from "
                  "ct_segment_runs) for %lld tokens", ct_dtype_name(runs->dtype),
                  ct_shape_str(runs, ss, sizeof ss), (long long)T);
        return NULL;
    }

    ct_tensor *in[2] = {qkv, runs};
    int n_in = runs ? 2 : 1;
    int64_t oshape[2] = {T, Hq * hd}, lshape[2] = {Hq, T};
    ct_tensor *out = ct_tape_new(t, t->be->act_dtype, 2, oshape);
    ct_tensor *lse = ct_tape_new(t, CT_F32, 2, lshape);
    if (!out || !lse) return NULL;
    if (ct_compute_dtype_check(p->compute, "attention") ||
        ct_backend_require(t->be, CT_OP_ATTENTION, &(ct_op_query){CT_DTYPE_COUNT, p->compute}) ||
        t->be->attention_fwd(qkv, runs, p, out, lse, &t->scratch))
        return NULL;
    attention_saved *s = NULL;
    if (ct_tape_wants_grad(t, in, n_in)) {
        if (!(s = ct_tape_meta(t, sizeof *s))) return NULL;
        s->lse = lse;
        s->out = out;
        s->runs = runs;
        s->p = *p;
    }
    if (ct_tape_record(t, &k_attention, out, in, n_in, s)) return NULL;
    return out;
}
