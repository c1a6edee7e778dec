/* Next-token sampling from a logit vector, as Hugging Face's generate() does
 * with do_sample, in its order:
 *   1. repetition penalty (every id present in the context, once per id):
 *      logit > 0 -> logit / penalty, else logit * penalty;
 *   2. greedy (temperature <= 0, or so small that max logit / T overflows):
 *      argmax, lowest id on ties; stop here;
 *   3. temperature: logit / T;
 *   4. top-k: keep the k largest logits (every id tied with the k-th is kept);
 *   5. top-p (nucleus) over the softmax of what is left, sorted descending
 *      (ties by id): keep the smallest prefix whose cumulative probability
 *      reaches p (>= p - 1e-6, slack for rounding), at least one token;
 *   6. softmax over the kept ids, then one draw.
 * Draw i of a sampler uses u_i = 53 random bits of ct_mix64(seed ^ ct_mix64(i))
 * (autograd/ct_inline.h): the same seed and the same logits give the same
 * tokens on any machine and thread count.
 *
 * Ownership: a ct_sampler owns its work buffers (vocab-sized, allocated once by
 * ct_sampler_init, freed by ct_sampler_free); nothing is allocated per token. */
#ifndef CT_SAMPLING_H
#define CT_SAMPLING_H

#include <stdint.h>
#include <stddef.h>

typedef struct {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* (0, 1]; 1: off */
    float repetition_penalty; /* > 0; 1: off */
    uint64_t seed;
} ct_sampling_params;

/* XTuner chat's defaults: temperature 0.1, top_k 40, top_p 0.75, penalty 1, seed 0. */
ct_sampling_params ct_sampling_defaults(void);

/* A candidate token: its processed logit and id. */
typedef struct {
    float v;
    int32_t id;
} ct_sampler_cand;

typedef struct {
    ct_sampling_params p;
    int32_t vocab;
    uint64_t draws;        /* random numbers used so far (the RNG counter) */
    ct_sampler_cand *cand; /* (vocab) candidates; sorted best first when top-p is on */
    double *prob;          /* (vocab) probability of cand[i] */
    unsigned char *seen;   /* (vocab) ids penalised in this call (all 0 between calls) */
} ct_sampler;

/* CT_EINPUT for a bad parameter (NaN or negative temperature, top_p outside
 * (0, 1], penalty <= 0, vocab < 1), CT_ERUNTIME when out of memory. */
int ct_sampler_init(ct_sampler *s, const ct_sampling_params *p, int32_t vocab);
void ct_sampler_free(ct_sampler *s);

/* The distribution step 6 draws from, into probs [vocab] (0 for removed ids;
 * greedy: 1 on the argmax). logits [vocab] are modified in place (steps 1 and
 * 3). context [n_context] (may be NULL when 0) are the ids the penalty looks
 * at; an id outside the vocabulary is CT_EINPUT. Uses no random numbers. */
int ct_sampler_distribution(ct_sampler *s, float *logits, const int32_t *context, size_t n_context,
                            double *probs);

/* Picks the next token into *token (same rules; one random number when not
 * greedy). logits are modified in place. */
int ct_sampler_next(ct_sampler *s, float *logits, const int32_t *context, size_t n_context,
                    int32_t *token);

#endif
