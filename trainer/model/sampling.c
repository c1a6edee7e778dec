/* Next-token sampling (see sampling.h for the rules and their order).
 *
 * Candidates are (logit, id) pairs in s->cand. Top-k finds the k-th largest
 * logit by quickselect (O(V)) and keeps every id at or above it; only top-p
 * needs the survivors sorted, so plain temperature sampling never sorts and
 * top-k sorts k entries. Probabilities are computed in double. */
#include "trainer/model/sampling.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"

/* Rounding slack of the nucleus boundary: cumulative >= p - TOP_P_SLACK. */
#define TOP_P_SLACK 1e-6

typedef ct_sampler_cand cand;

ct_sampling_params ct_sampling_defaults(void) {
    return (ct_sampling_params){.temperature = 0.1f, .top_k = 40, .top_p = 0.75f,
                                .repetition_penalty = 1.0f, .seed = 0};
}

int ct_sampler_init(ct_sampler *s, const ct_sampling_params *p, int32_t vocab) {
    memset(s, 0, sizeof *s);
    if (isnan(p->temperature) || p->temperature < 0.0f || !isfinite(p->temperature))
        return ct_errorf(CT_EINPUT, "sampling: temperature %g must be a finite number >= 0 (0 = greedy)",
                         (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return ct_errorf(CT_EINPUT, "sampling: top_p %g must be in (0, 1] (1 = off)", (double)p->top_p);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return ct_errorf(CT_EINPUT, "sampling: repetition penalty %g must be a positive number (1 = off)",
                         (double)p->repetition_penalty);
    if (vocab < 1) return ct_errorf(CT_EINPUT, "sampling: vocabulary size %d", vocab);
    s->p = *p;
    s->vocab = vocab;
    size_t n = (size_t)vocab;
    s->cand = malloc(n * sizeof *s->cand);
    s->prob = malloc(n * sizeof *s->prob);
    s->seen = calloc(n, 1);
    if (!s->cand || !s->prob || !s->seen) {
        ct_sampler_free(s);
        return ct_errorf(CT_ERUNTIME, "sampling: out of memory for a vocabulary of %d", vocab);
    }
    return CT_OK;
}

void ct_sampler_free(ct_sampler *s) {
    free(s->cand);
    free(s->prob);
    free(s->seen);
    memset(s, 0, sizeof *s);
}

/* Better first: larger logit, then smaller id. */
static int cand_cmp(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    if (a->v != b->v) return a->v > b->v ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Value of the element that would sit at index k (0 = largest) if c[0..n) were
 * sorted descending by value; reorders c. Quickselect, median-of-three pivot. */
static float kth_largest(cand *c, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        float a = c[lo].v, b = c[mid].v, d = c[hi].v;
        float pivot = (a > b) == (b > d) ? b : ((a > b) == (a > d) ? (b > d ? b : d) : a);
        size_t i = lo, j = hi;
        while (i <= j) { /* descending partition around pivot */
            while (c[i].v > pivot) i++;
            while (c[j].v < pivot) j--;
            if (i <= j) {
                cand t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                if (j == 0) break;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return c[k].v;
    }
    return c[k].v;
}

/* Steps 1-2: checks ids, applies the penalty; *greedy gets the argmax. */
static int penalise(ct_sampler *s, float *logits, const int32_t *ctx, size_t n_ctx, int32_t *greedy) {
    const int32_t V = s->vocab;
    for (size_t i = 0; i < n_ctx; i++)
        if (ctx[i] < 0 || ctx[i] >= V)
            return ct_errorf(CT_EINPUT, "sampling: context id %d at position %zu outside the vocabulary of %d",
                             ctx[i], i, V);
    const float pen = s->p.repetition_penalty;
    if (pen != 1.0f) {
        for (size_t i = 0; i < n_ctx; i++) {
            int32_t id = ctx[i];
            if (s->seen[id]) continue;
            s->seen[id] = 1;
            logits[id] = logits[id] > 0.0f ? logits[id] / pen : logits[id] * pen;
        }
        for (size_t i = 0; i < n_ctx; i++) s->seen[ctx[i]] = 0;
    }
    int32_t best = -1;
    for (int32_t i = 0; i < V; i++) {
        if (isnan(logits[i]) || logits[i] == INFINITY)
            return ct_errorf(CT_ERUNTIME, "sampling: logit of token %d is %g", i, (double)logits[i]);
        if (best < 0 || logits[i] > logits[best]) best = i;
    }
    if (logits[best] == -INFINITY)
        return ct_errorf(CT_ERUNTIME, "sampling: every logit is -inf: no token can be chosen");
    *greedy = best;
    return CT_OK;
}

/* Temperature 0, or one so small that the best logit / T overflows (the
 * distribution is then the argmax's anyway). */
static bool is_greedy(const ct_sampler *s, float best_logit) {
    return s->p.temperature <= 0.0f || isinf(best_logit / s->p.temperature);
}

/* Steps 3-6: candidates c[0..*n) with probabilities s->prob (summing to 1). */
static int nucleus(ct_sampler *s, float *logits, size_t *n_out) {
    const int32_t V = s->vocab;
    cand *c = s->cand;
    size_t n = 0;
    for (int32_t i = 0; i < V; i++) {
        logits[i] /= s->p.temperature; /* HF divides by the temperature */
        if (logits[i] > -INFINITY) c[n++] = (cand){logits[i], i};
    }
    if (s->p.top_k > 0 && (size_t)s->p.top_k < n) {
        float kth = kth_largest(c, n, (size_t)s->p.top_k - 1);
        size_t m = 0;
        for (int32_t i = 0; i < V; i++) /* back to id order: every id >= the k-th value */
            if (logits[i] >= kth) c[m++] = (cand){logits[i], i};
        n = m;
    }
    const bool nucleus_on = s->p.top_p < 1.0f;
    if (nucleus_on) qsort(c, n, sizeof *c, cand_cmp);
    double mx = -INFINITY, sum = 0.0;
    for (size_t i = 0; i < n; i++) mx = c[i].v > mx ? c[i].v : mx;
    for (size_t i = 0; i < n; i++) sum += (s->prob[i] = exp((double)c[i].v - mx));
    if (nucleus_on) {
        double cum = 0.0, target = (double)s->p.top_p - TOP_P_SLACK;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            cum += s->prob[i] / sum;
            if (cum >= target) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0.0;
        for (size_t i = 0; i < n; i++) sum += s->prob[i];
    }
    for (size_t i = 0; i < n; i++) s->prob[i] /= sum;
    *n_out = n;
    return CT_OK;
}

int ct_sampler_distribution(ct_sampler *s, float *logits, const int32_t *context, size_t n_context,
                            double *probs) {
    int32_t best;
    CT_TRY(penalise(s, logits, context, n_context, &best));
    memset(probs, 0, (size_t)s->vocab * sizeof *probs);
    if (is_greedy(s, logits[best])) {
        probs[best] = 1.0;
        return CT_OK;
    }
    size_t n;
    CT_TRY(nucleus(s, logits, &n));
    const cand *c = s->cand;
    for (size_t i = 0; i < n; i++) probs[c[i].id] = s->prob[i];
    return CT_OK;
}

int ct_sampler_next(ct_sampler *s, float *logits, const int32_t *context, size_t n_context,
                    int32_t *token) {
    int32_t best;
    CT_TRY(penalise(s, logits, context, n_context, &best));
    if (is_greedy(s, logits[best])) {
        *token = best;
        return CT_OK;
    }
    size_t n;
    CT_TRY(nucleus(s, logits, &n));
    const cand *c = s->cand;
    uint64_t z = ct_mix64(s->p.seed ^ ct_mix64(s->draws++));
    double u = (double)(z >> 11) * (1.0 / 9007199254740992.0); /* [0, 1), 53 bits */
    double cum = 0.0;
    *token = c[n - 1].id; /* rounding: u beyond the last cumulative sum */
    for (size_t i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum) {
            *token = c[i].id;
            break;
        }
    }
    return CT_OK;
}
