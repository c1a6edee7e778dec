/* Next-token sampling (trainer/model/sampling.c) against distributions computed here
 * by hand from the HF rules:
 *  (a) temperature, top-k, top-p, repetition penalty and a combination on a
 *      fixed 6-token logit vector: the exact distribution, and the frequencies
 *      of 100k draws within 5 standard deviations (removed ids never drawn);
 *  (b) greedy: temperature 0 and top-k 1 give the argmax (lowest id on ties);
 *  (c) top-p boundaries (probabilities 1/2, 1/4, 1/8, 1/8; ties) and top-k ties;
 *  (d) the k-th largest selection against a full sort on random vectors with ties;
 *  (e) seeds: the same seed repeats the draws, another seed does not;
 *  (f) bad parameters and inputs are CT_EINPUT. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "trainer/model/sampling.h"

enum { V6 = 6, NDRAW = 100000 };
static const float k_logits[V6] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};

/* softmax of x[keep] / t (others 0), in double, from the float values. */
static void softmax_subset(const float *x, const bool *keep, int n, double t, double *p) {
    double z = 0.0;
    for (int i = 0; i < n; i++) z += keep[i] ? exp((double)x[i] / t) : 0.0;
    for (int i = 0; i < n; i++) p[i] = keep[i] ? exp((double)x[i] / t) / z : 0.0;
}

static ct_sampling_params params(float t, int k, float p, float pen, uint64_t seed) {
    return (ct_sampling_params){.temperature = t, .top_k = k, .top_p = p, .repetition_penalty = pen,
                                .seed = seed};
}

/* The distribution and 100k draws of a sampler vs `want`. */
static void check_dist(const char *what, const ct_sampling_params *sp, const float *logits, int V,
                       const int32_t *ctx, size_t n_ctx, const double *want) {
    ct_sampler s;
    CHECK_OK(ct_sampler_init(&s, sp, V));
    float *l = malloc((size_t)V * sizeof *l);
    double *probs = malloc((size_t)V * sizeof *probs);
    long *count = calloc((size_t)V, sizeof *count);
    memcpy(l, logits, (size_t)V * sizeof *l);
    CHECK_OK(ct_sampler_distribution(&s, l, ctx, n_ctx, probs));
    for (int i = 0; i < V; i++)
        CHECK(fabs(probs[i] - want[i]) < 1e-6, "%s: p[%d] = %.9f, want %.9f", what, i, probs[i], want[i]);
    for (int d = 0; d < NDRAW; d++) {
        memcpy(l, logits, (size_t)V * sizeof *l);
        int32_t tok = -1;
        int rc = ct_sampler_next(&s, l, ctx, n_ctx, &tok);
        if (rc || tok < 0 || tok >= V) {
            CHECK(false, "%s: draw %d gave id %d: %s", what, d, tok, ct_last_error());
            break;
        }
        count[tok]++;
    }
    CHECK(s.draws == NDRAW, "%s: %llu random numbers for %d draws", what, (unsigned long long)s.draws, NDRAW);
    for (int i = 0; i < V; i++) {
        double f = (double)count[i] / NDRAW, sd = sqrt(want[i] * (1.0 - want[i]) / NDRAW);
        if (want[i] == 0.0)
            CHECK(count[i] == 0, "%s: removed id %d drawn %ld times", what, i, count[i]);
        else
            CHECK(fabs(f - want[i]) <= 5.0 * sd + 1e-4, "%s: id %d frequency %.5f, want %.5f (sd %.5f)", what, i,
                  f, want[i], sd);
    }
    free(l);
    free(probs);
    free(count);
    ct_sampler_free(&s);
}

static void test_distributions(void) {
    double want[V6];
    bool all[V6] = {1, 1, 1, 1, 1, 1};
    ct_sampling_params sp;

    sp = params(1.0f, 0, 1.0f, 1.0f, 7);
    softmax_subset(k_logits, all, V6, 1.0, want);
    check_dist("temperature 1", &sp, k_logits, V6, NULL, 0, want);

    sp = params(0.5f, 0, 1.0f, 1.0f, 8);
    softmax_subset(k_logits, all, V6, 0.5, want);
    check_dist("temperature 0.5", &sp, k_logits, V6, NULL, 0, want);

    sp = params(2.0f, 0, 1.0f, 1.0f, 9);
    softmax_subset(k_logits, all, V6, 2.0, want);
    check_dist("temperature 2", &sp, k_logits, V6, NULL, 0, want);

    /* top-k 3: ids 0, 1, 2 renormalised */
    bool top3[V6] = {1, 1, 1, 0, 0, 0};
    sp = params(1.0f, 3, 1.0f, 1.0f, 10);
    softmax_subset(k_logits, top3, V6, 1.0, want);
    check_dist("top-k 3", &sp, k_logits, V6, NULL, 0, want);

    /* top-p 0.8: probabilities 0.561, 0.206, 0.125, ... cumulate to 0.767 after
     * two and 0.892 after three: the nucleus is ids 0..2 */
    sp = params(1.0f, 0, 0.8f, 1.0f, 11);
    softmax_subset(k_logits, top3, V6, 1.0, want);
    check_dist("top-p 0.8", &sp, k_logits, V6, NULL, 0, want);
    /* top-p 0.7: 0.561 < 0.7 <= 0.767: ids 0 and 1 */
    bool top2[V6] = {1, 1, 0, 0, 0, 0};
    sp = params(1.0f, 0, 0.7f, 1.0f, 12);
    softmax_subset(k_logits, top2, V6, 1.0, want);
    check_dist("top-p 0.7", &sp, k_logits, V6, NULL, 0, want);

    /* repetition penalty 2 on context {0, 3, 5, 5}: 2 -> 1 (positive: divided),
     * 0 -> 0, -3 -> -6 (not positive: multiplied), id 5 once despite repeats */
    const int32_t ctx[4] = {0, 3, 5, 5};
    const float pen[V6] = {1.0f, 1.0f, 0.5f, 0.0f, -1.0f, -6.0f};
    sp = params(1.0f, 0, 1.0f, 2.0f, 13);
    softmax_subset(pen, all, V6, 1.0, want);
    check_dist("repetition penalty 2", &sp, k_logits, V6, ctx, 4, want);
    /* penalty < 1 favours the context: 2 -> 4, -3 -> -1.5 */
    const float pen_half[V6] = {4.0f, 1.0f, 0.5f, 0.0f, -1.0f, -1.5f};
    sp = params(1.0f, 0, 1.0f, 0.5f, 14);
    softmax_subset(pen_half, all, V6, 1.0, want);
    check_dist("repetition penalty 0.5", &sp, k_logits, V6, ctx, 4, want);

    /* combination, HF order: penalty 1.5 on {1}, temperature 0.7, top-k 4,
     * top-p 0.9 over the renormalised top 4 */
    const int32_t ctx1[1] = {1};
    float comb[V6];
    memcpy(comb, k_logits, sizeof comb);
    comb[1] = 1.0f / 1.5f;
    /* order after the penalty: 2.0 (0), 0.667 (1), 0.5 (2), 0 (3); top 4 = ids 0..3 */
    bool top4[V6] = {1, 1, 1, 1, 0, 0};
    double p4[V6];
    softmax_subset(comb, top4, V6, 0.7, p4);
    /* cumulative over ids 0, 1, 2, 3 (already in descending order) */
    bool nuc[V6] = {0};
    double cum = 0.0;
    for (int i = 0; i < 4; i++) {
        nuc[i] = true;
        cum += p4[i];
        if (cum >= 0.9) break;
    }
    CHECK(nuc[0] && nuc[1] && !nuc[3], "combination: unexpected hand-computed nucleus");
    softmax_subset(comb, nuc, V6, 0.7, want);
    sp = params(0.7f, 4, 0.9f, 1.5f, 15);
    check_dist("penalty + temperature + top-k + top-p", &sp, k_logits, V6, ctx1, 1, want);

    /* -inf logits are never candidates */
    float masked[V6];
    memcpy(masked, k_logits, sizeof masked);
    masked[0] = -INFINITY;
    bool not0[V6] = {0, 1, 1, 1, 1, 1};
    softmax_subset(k_logits, not0, V6, 1.0, want);
    sp = params(1.0f, 0, 1.0f, 1.0f, 16);
    check_dist("masked id", &sp, masked, V6, NULL, 0, want);
}

static void test_greedy(void) {
    ct_test_rng rng = {42};
    enum { V = 1000 };
    static float x[V], y[V];
    ct_sampler g0, k1;
    CHECK_OK(ct_sampler_init(&g0, &(ct_sampling_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f,
                                                        .repetition_penalty = 1.0f, .seed = 1}, V));
    CHECK_OK(ct_sampler_init(&k1, &(ct_sampling_params){.temperature = 1.0f, .top_k = 1, .top_p = 1.0f,
                                                        .repetition_penalty = 1.0f, .seed = 1}, V));
    for (int trial = 0; trial < 200; trial++) {
        ct_test_fill(&rng, x, V, 3.0);
        int best = 0;
        for (int i = 1; i < V; i++) best = x[i] > x[best] ? i : best;
        int32_t a = -1, b = -1;
        memcpy(y, x, sizeof y);
        CHECK_OK(ct_sampler_next(&g0, y, NULL, 0, &a));
        memcpy(y, x, sizeof y);
        CHECK_OK(ct_sampler_next(&k1, y, NULL, 0, &b));
        CHECK(a == best && b == best, "trial %d: greedy %d, top-k 1 %d, argmax %d", trial, a, b, best);
    }
    CHECK(g0.draws == 0, "greedy used %llu random numbers", (unsigned long long)g0.draws);
    /* ties: the lowest id */
    for (int i = 0; i < V; i++) x[i] = (i == 17 || i == 500) ? 5.0f : 0.0f;
    int32_t a = -1;
    CHECK_OK(ct_sampler_next(&g0, x, NULL, 0, &a));
    CHECK(a == 17, "greedy tie picked %d, want 17", a);
    /* greedy applies the repetition penalty first */
    ct_sampler gp;
    CHECK_OK(ct_sampler_init(&gp, &(ct_sampling_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f,
                                                        .repetition_penalty = 3.0f, .seed = 1}, V6));
    float l[V6];
    memcpy(l, k_logits, sizeof l);
    const int32_t ctx[1] = {0}; /* 2 / 3 = 0.667 < 1.0 of id 1 */
    CHECK_OK(ct_sampler_next(&gp, l, ctx, 1, &a));
    CHECK(a == 1, "greedy with penalty picked %d, want 1", a);
    ct_sampler_free(&gp);
    ct_sampler_free(&g0);
    ct_sampler_free(&k1);
}

/* Which ids the distribution keeps, as a bit mask. */
static unsigned kept(const ct_sampling_params *sp, const float *logits, int V) {
    ct_sampler s;
    float l[16];
    double p[16];
    unsigned mask = 0;
    memcpy(l, logits, (size_t)V * sizeof *l);
    if (ct_sampler_init(&s, sp, V) || ct_sampler_distribution(&s, l, NULL, 0, p)) {
        CHECK(false, "%s", ct_last_error());
        return 0;
    }
    for (int i = 0; i < V; i++) mask |= p[i] > 0.0 ? 1u << i : 0u;
    ct_sampler_free(&s);
    return mask;
}

static void test_boundaries(void) {
    const float q[4] = {logf(0.5f), logf(0.25f), logf(0.125f), logf(0.125f)};
    struct {
        float p;
        unsigned want;
    } cases[] = {
        {1e-3f, 0x1}, {0.5f, 0x1},  {0.5001f, 0x3}, {0.75f, 0x3},
        {0.76f, 0x7}, {0.875f, 0x7}, {0.9f, 0xf},   {1.0f, 0xf},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ct_sampling_params sp = params(1.0f, 0, cases[i].p, 1.0f, 0);
        unsigned m = kept(&sp, q, 4);
        CHECK(m == cases[i].want, "top-p %g on 1/2,1/4,1/8,1/8 kept mask 0x%x, want 0x%x", (double)cases[i].p, m,
              cases[i].want);
    }
    /* equal probabilities: the smallest set reaching p, lowest ids first */
    const float eq[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    ct_sampling_params sp = params(1.0f, 0, 0.5f, 1.0f, 0);
    CHECK(kept(&sp, eq, 4) == 0x3, "top-p 0.5 on 4 equal ids kept 0x%x", kept(&sp, eq, 4));
    sp.top_p = 0.6f;
    CHECK(kept(&sp, eq, 4) == 0x7, "top-p 0.6 on 4 equal ids kept 0x%x", kept(&sp, eq, 4));
    /* top-k keeps every id tied with the k-th value */
    const float tk[5] = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f};
    sp = params(1.0f, 2, 1.0f, 1.0f, 0);
    CHECK(kept(&sp, tk, 5) == 0x16, "top-k 2 with a 3-way tie kept 0x%x, want 0x16", kept(&sp, tk, 5));
    sp.top_k = 4;
    CHECK(kept(&sp, tk, 5) == 0x1e, "top-k 4 kept 0x%x, want 0x1e", kept(&sp, tk, 5));
    sp.top_k = 9; /* more than the vocabulary: off */
    CHECK(kept(&sp, tk, 5) == 0x1f, "top-k 9 kept 0x%x, want 0x1f", kept(&sp, tk, 5));
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void test_topk_selection(void) {
    ct_test_rng rng = {99};
    enum { V = 300 };
    static float x[V], sorted[V], y[V];
    static double p[V];
    for (int trial = 0; trial < 300; trial++) {
        int levels = 1 + (int)(ct_test_uniform(&rng) * 20); /* many ties */
        for (int i = 0; i < V; i++) x[i] = (float)(int)(ct_test_uniform(&rng) * levels);
        int k = 1 + (int)(ct_test_uniform(&rng) * (V - 1));
        memcpy(sorted, x, sizeof sorted);
        qsort(sorted, V, sizeof *sorted, cmp_desc);
        float kth = sorted[k - 1];
        ct_sampler s;
        CHECK_OK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = 1.0f, .top_k = k, .top_p = 1.0f,
                                                           .repetition_penalty = 1.0f}, V));
        memcpy(y, x, sizeof y);
        CHECK_OK(ct_sampler_distribution(&s, y, NULL, 0, p));
        int bad = -1;
        for (int i = 0; i < V && bad < 0; i++)
            if ((p[i] > 0.0) != (x[i] >= kth)) bad = i;
        CHECK(bad < 0, "trial %d (k %d, %d levels): id %d value %g kept=%d, k-th value %g", trial, k, levels, bad,
              bad >= 0 ? (double)x[bad] : 0.0, bad >= 0 ? p[bad] > 0.0 : 0, (double)kth);
        ct_sampler_free(&s);
        if (bad >= 0) break;
    }
}

static void draws(uint64_t seed, int32_t *out, int n) {
    ct_sampler s;
    CHECK_OK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f,
                                                       .repetition_penalty = 1.0f, .seed = seed}, V6));
    for (int i = 0; i < n; i++) {
        float l[V6];
        memcpy(l, k_logits, sizeof l);
        CHECK_OK(ct_sampler_next(&s, l, NULL, 0, &out[i]));
    }
    ct_sampler_free(&s);
}

static void test_seeds(void) {
    enum { N = 1000 };
    static int32_t a[N], b[N], c[N];
    draws(1234, a, N);
    draws(1234, b, N);
    draws(1235, c, N);
    CHECK(memcmp(a, b, sizeof a) == 0, "seed 1234 did not repeat its draws");
    int diff = 0;
    for (int i = 0; i < N; i++) diff += a[i] != c[i];
    CHECK(diff > 100, "seeds 1234 and 1235 differ in only %d of %d draws", diff, N);
}

static void test_bad_input(void) {
    ct_sampler s;
    CHECK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = -1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f}, 4) == CT_EINPUT,
          "negative temperature accepted");
    CHECK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = NAN, .top_p = 1.0f, .repetition_penalty = 1.0f}, 4) == CT_EINPUT,
          "NaN temperature accepted");
    CHECK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = 1.0f, .top_p = 0.0f, .repetition_penalty = 1.0f}, 4) == CT_EINPUT,
          "top_p 0 accepted");
    CHECK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = 1.0f, .top_p = 1.5f, .repetition_penalty = 1.0f}, 4) == CT_EINPUT,
          "top_p 1.5 accepted");
    CHECK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 0.0f}, 4) == CT_EINPUT,
          "penalty 0 accepted");
    CHECK_OK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.2f}, V6));
    float l[V6];
    int32_t tok;
    memcpy(l, k_logits, sizeof l);
    const int32_t ctx[2] = {1, V6};
    CHECK(ct_sampler_next(&s, l, ctx, 2, &tok) == CT_EINPUT, "context id %d outside the vocabulary accepted", V6);
    memcpy(l, k_logits, sizeof l);
    l[2] = NAN;
    CHECK(ct_sampler_next(&s, l, NULL, 0, &tok) != CT_OK, "NaN logit accepted");
    for (int i = 0; i < V6; i++) l[i] = -INFINITY;
    CHECK(ct_sampler_next(&s, l, NULL, 0, &tok) != CT_OK, "all -inf logits accepted");
    memcpy(l, k_logits, sizeof l);
    l[4] = INFINITY;
    CHECK(ct_sampler_next(&s, l, NULL, 0, &tok) != CT_OK, "+inf logit accepted");
    ct_sampler_free(&s);
    /* a temperature so small that logit / T overflows: the argmax */
    CHECK_OK(ct_sampler_init(&s, &(ct_sampling_params){.temperature = 1e-38f, .top_p = 0.5f, .repetition_penalty = 1.0f}, V6));
    memcpy(l, k_logits, sizeof l);
    tok = -1;
    CHECK_OK(ct_sampler_next(&s, l, NULL, 0, &tok));
    CHECK(tok == 0, "temperature 1e-38 drew %d, want the argmax 0", tok);
    ct_sampling_params d = ct_sampling_defaults();
    CHECK(d.temperature == 0.1f && d.top_k == 40 && d.top_p == 0.75f && d.repetition_penalty == 1.0f,
          "defaults are not XTuner chat's");
    ct_sampler_free(&s);
}

int main(void) {
    test_distributions();
    test_greedy();
    test_boundaries();
    test_topk_selection();
    test_seeds();
    test_bad_input();
    return ct_test_finish();
}
