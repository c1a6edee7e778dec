/* Double-precision reference InternLM2 (see ref_internlm2.h). Written for
 * obviousness, not speed: every quantity is computed the textbook way. */
#include "ref_internlm2.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof *p);
    if (!p) abort(); /* test code: nothing sensible to do without memory */
    return p;
}

void ref_linear_forward(const ref_linear *l, int T, const double *x, double *y) {
    for (int t = 0; t < T; t++) {
        const double *xt = x + (size_t)t * (size_t)l->in;
        double u[64]; /* x·Aᵀ for this token, [r]; tests use r <= 64 */
        for (int k = 0; l->a && k < l->r; k++) {
            double s = 0;
            for (int i = 0; i < l->in; i++) s += xt[i] * l->a[(size_t)k * (size_t)l->in + (size_t)i];
            u[k] = s;
        }
        for (int o = 0; o < l->out; o++) {
            double s = 0;
            for (int i = 0; i < l->in; i++) s += xt[i] * l->w[(size_t)o * (size_t)l->in + (size_t)i];
            if (l->a) {
                double lora = 0;
                for (int k = 0; k < l->r; k++) lora += u[k] * l->b[(size_t)o * (size_t)l->r + (size_t)k];
                s += l->scale * lora;
            }
            y[(size_t)t * (size_t)l->out + (size_t)o] = s;
        }
    }
}

/* y = x / sqrt(mean(x²) + eps) * w, per row of D. */
static void ref_rmsnorm(int T, int D, const double *x, const double *w, double eps, double *y) {
    for (int t = 0; t < T; t++) {
        const double *xt = x + (size_t)t * (size_t)D;
        double ss = 0;
        for (int i = 0; i < D; i++) ss += xt[i] * xt[i];
        double r = 1.0 / sqrt(ss / D + eps);
        for (int i = 0; i < D; i++) y[(size_t)t * (size_t)D + (size_t)i] = xt[i] * r * w[i];
    }
}

/* Rotates one head vector v [d] at position p: pairs (j, j + d/2) by angle
 * p · base^(-2j/d), HF's rotate_half convention. */
static void ref_rope_vec(const ref_config *c, int64_t seq_len, int32_t p, double *v) {
    int d = c->head_dim;
    double base = c->theta, pos = p;
    if (c->scaling == REF_ROPE_LINEAR) pos = p / c->factor;
    if (c->scaling == REF_ROPE_DYNAMIC && seq_len > c->max_pos)
        base = c->theta * pow(c->factor * (double)seq_len / (double)c->max_pos - (c->factor - 1.0),
                              (double)d / (double)(d - 2));
    for (int j = 0; j < d / 2; j++) {
        double ang = pos * pow(base, -2.0 * j / d);
        double x1 = v[j], x2 = v[j + d / 2];
        v[j] = x1 * cos(ang) - x2 * sin(ang);
        v[j + d / 2] = x2 * cos(ang) + x1 * sin(ang);
    }
}

/* Attention on rotated q, k and v, full score matrix per head:
 *   out[i, h] = sum_j softmax_j(q_i·k_j / sqrt(d), j allowed) v_j
 * allowed: j <= i and same segment. q [T, Hq, d], k/v [T, Hkv, d]. */
static void ref_attention(const ref_config *c, int T, const int32_t *seg, const double *q,
                          const double *k, const double *v, double *out) {
    int d = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, G = Hq / Hkv;
    double *p = dalloc((size_t)T); /* one row of probabilities [T] */
    for (int h = 0; h < Hq; h++) {
        int g = h / G; /* the KV head of query head h */
        for (int i = 0; i < T; i++) {
            const double *qi = q + ((size_t)i * (size_t)Hq + (size_t)h) * (size_t)d;
            double mx = -INFINITY;
            for (int j = 0; j < T; j++) {
                bool ok = j <= i && (!seg || seg[j] == seg[i]);
                if (!ok) {
                    p[j] = -INFINITY;
                    continue;
                }
                const double *kj = k + ((size_t)j * (size_t)Hkv + (size_t)g) * (size_t)d;
                double s = 0;
                for (int e = 0; e < d; e++) s += qi[e] * kj[e];
                p[j] = s / sqrt((double)d);
                if (p[j] > mx) mx = p[j];
            }
            double z = 0;
            for (int j = 0; j < T; j++) {
                p[j] = p[j] == -INFINITY ? 0.0 : exp(p[j] - mx);
                z += p[j];
            }
            double *oi = out + (size_t)i * (size_t)(Hq * d) + (size_t)h * (size_t)d;
            for (int e = 0; e < d; e++) {
                double s = 0;
                for (int j = 0; j < T; j++)
                    s += p[j] * v[((size_t)j * (size_t)Hkv + (size_t)g) * (size_t)d + (size_t)e];
                oi[e] = s / z;
            }
        }
    }
    free(p);
}

void ref_layer_forward(const ref_config *c, const ref_layer *L, int T, const int32_t *pos,
                       const int32_t *seg, const double *h, double *out) {
    int D = c->hidden, d = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, G = Hq / Hkv;
    int F = c->intermediate, QKV = Hkv * (G + 2) * d;
    int64_t seq_len = 0;
    for (int t = 0; t < T; t++)
        if (pos[t] + 1 > seq_len) seq_len = pos[t] + 1;

    double *x = dalloc((size_t)T * D);       /* [T, D] normed input */
    double *qkv = dalloc((size_t)T * QKV);   /* [T, QKV] wqkv output */
    double *q = dalloc((size_t)T * Hq * d);  /* [T, Hq, d] */
    double *k = dalloc((size_t)T * Hkv * d); /* [T, Hkv, d] */
    double *v = dalloc((size_t)T * Hkv * d); /* [T, Hkv, d] */
    double *att = dalloc((size_t)T * Hq * d);/* [T, Hq*d] */
    double *o = dalloc((size_t)T * D);       /* [T, D] */
    double *h1 = dalloc((size_t)T * D);      /* [T, D] after the attention residual */
    double *g1 = dalloc((size_t)T * F), *u3 = dalloc((size_t)T * F); /* [T, F] */

    ref_rmsnorm(T, D, h, L->attention_norm, c->eps, x);
    ref_linear_forward(&L->wqkv, T, x, qkv);
    /* Unpack InternLM2's grouped layout: per KV head g, G queries, k_g, v_g. */
    for (int t = 0; t < T; t++)
        for (int g = 0; g < Hkv; g++) {
            const double *base = qkv + (size_t)t * QKV + (size_t)g * (G + 2) * d;
            for (int j = 0; j < G; j++)
                memcpy(q + ((size_t)t * Hq + (size_t)(g * G + j)) * d, base + (size_t)j * d,
                       (size_t)d * sizeof(double));
            memcpy(k + ((size_t)t * Hkv + g) * d, base + (size_t)G * d, (size_t)d * sizeof(double));
            memcpy(v + ((size_t)t * Hkv + g) * d, base + (size_t)(G + 1) * d, (size_t)d * sizeof(double));
        }
    for (int t = 0; t < T; t++) {
        for (int hh = 0; hh < Hq; hh++) ref_rope_vec(c, seq_len, pos[t], q + ((size_t)t * Hq + hh) * d);
        for (int g = 0; g < Hkv; g++) ref_rope_vec(c, seq_len, pos[t], k + ((size_t)t * Hkv + g) * d);
    }
    ref_attention(c, T, seg, q, k, v, att);
    ref_linear_forward(&L->wo, T, att, o);
    for (size_t i = 0; i < (size_t)T * D; i++) h1[i] = h[i] + o[i];

    ref_rmsnorm(T, D, h1, L->ffn_norm, c->eps, x);
    ref_linear_forward(&L->w1, T, x, g1);
    ref_linear_forward(&L->w3, T, x, u3);
    for (size_t i = 0; i < (size_t)T * F; i++) g1[i] = g1[i] / (1.0 + exp(-g1[i])) * u3[i];
    ref_linear_forward(&L->w2, T, g1, o);
    for (size_t i = 0; i < (size_t)T * D; i++) out[i] = h1[i] + o[i];

    free(x), free(qkv), free(q), free(k), free(v), free(att), free(o), free(h1), free(g1), free(u3);
}

double ref_model_loss(const ref_model *m, int T, const int32_t *ids, const int32_t *pos,
                      const int32_t *seg, const int32_t *labels, double *logits) {
    int D = m->c.hidden, V = m->c.vocab;
    double *h = dalloc((size_t)T * D), *h2 = dalloc((size_t)T * D); /* [T, D] */
    double *lg = dalloc((size_t)T * V);                              /* [T, V] */
    for (int t = 0; t < T; t++)
        memcpy(h + (size_t)t * D, m->tok_embeddings + (size_t)ids[t] * D, (size_t)D * sizeof(double));
    for (int l = 0; l < m->n_layers; l++) {
        ref_layer_forward(&m->c, &m->layers[l], T, pos, seg, h, h2);
        double *tmp = h;
        h = h2;
        h2 = tmp;
    }
    ref_rmsnorm(T, D, h, m->norm, m->c.eps, h2);
    ref_linear_forward(&m->output, T, h2, lg);

    double nll = 0;
    int n = 0;
    for (int t = 0; t < T; t++) {
        if (labels[t] == -100) continue;
        const double *r = lg + (size_t)t * V;
        double mx = r[0];
        for (int j = 1; j < V; j++) mx = r[j] > mx ? r[j] : mx;
        double z = 0;
        for (int j = 0; j < V; j++) z += exp(r[j] - mx);
        nll += mx + log(z) - r[labels[t]];
        n++;
    }
    if (logits) memcpy(logits, lg, (size_t)T * V * sizeof(double));
    free(h), free(h2), free(lg);
    return n ? nll / n : 0.0;
}

/* ---- probe loss ---- */

typedef struct {
    const float *r; /* [numel(y)] host, not owned */
} dot_saved;

static int dot_backward(ct_tape *t, const ct_tape_entry *e) {
    const dot_saved *s = e->saved;
    ct_tensor *y = e->in[0];
    if (!y->requires_grad) return CT_OK;
    float dl;
    CT_TRY(t->be->download(&dl, e->out->grad->data, sizeof dl));
    ct_tensor *g = ct_grad(t, y);
    if (!g) return CT_ERUNTIME;
    float *gd = g->data; /* CPU backend */
    for (int64_t i = 0; i < ct_numel(y); i++) gd[i] += dl * s->r[i];
    return CT_OK;
}

static const ct_op_def k_dot = {"test_dot", dot_backward};

ct_tensor *ct_test_dot_loss(ct_tape *t, ct_tensor *y, const float *r) {
    if (y->dtype != CT_F32 || t->be->device != CT_CPU) {
        ct_errorf(CT_EINPUT, "test_dot: needs an f32 tensor on the CPU");
        return NULL;
    }
    int64_t one = 1;
    ct_tensor *out = ct_tape_new(t, CT_F32, 1, &one);
    dot_saved *s = ct_tape_meta(t, sizeof *s);
    if (!out || !s) return NULL;
    double acc = 0;
    const float *yd = y->data;
    for (int64_t i = 0; i < ct_numel(y); i++) acc += (double)r[i] * yd[i];
    *(float *)out->data = (float)acc;
    s->r = r;
    ct_tensor *in[1] = {y};
    if (ct_tape_record(t, &k_dot, out, in, 1, s)) return NULL;
    return out;
}
