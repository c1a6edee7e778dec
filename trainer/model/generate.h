/* Text generation with a KV cache: the incremental forward (generate.c) and
 * the decode loop (generate.c; streamed text via text_stream.h).
 *
 * A generator holds, per layer, the rotated keys and the values of every
 * position fed so far (K and V caches [max_len, Hkv, hd] f32, one allocation
 * made at creation) and the ids of those positions. ct_gen_feed runs new
 * tokens through the model with the tape's recording off: the same ops and
 * kernels as training (rmsnorm, lora_linear - so LoRA adapters apply unmerged
 * and nf4/fp4 weights work -, rope at the absolute positions, swiglu), with the
 * attention of the new queries against the cache. Feeding an empty cache
 * (prefill) uses the blockwise causal training kernel; later feeds use the
 * backend's attention_decode. In the last layer every position still fills
 * the cache, but only the last one goes on (attention, wo, feed-forward), then
 * through the final norm and the output head. Activations live in the generator's tape, rewound
 * per layer and per feed: after the first feeds of a size, nothing is
 * allocated per token.
 *
 * Dynamic-NTK rope: like Hugging Face's cached generation, a feed rotates its
 * tokens with the base for the length the sequence has after it; cached keys
 * keep the rotation they got, so beyond max_position_embeddings cached and
 * cache-free results differ (as in transformers).
 *
 * Ownership: the model and backend are borrowed and must outlive the
 * generator; everything else belongs to the generator (ct_gen_free). Returned
 * pointers (logits, tokens) stay valid until the next call that changes the
 * generator. Not thread-safe: one generator per thread. */
#ifndef CT_GENERATE_H
#define CT_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "datasets/tokenizer.h"
#include "trainer/model/decoder.h"
#include "trainer/model/sampling.h"
#include "trainer/model/text_stream.h"

typedef struct ct_generator ct_generator;

/* A generator for m on be with room for max_len positions (>= 1). CT_EINPUT
 * when the model's weights do not fit its dims or the backend has no cached
 * attention; CT_ERUNTIME when out of memory. */
int ct_gen_new(const ct_decoder_model *m, const ct_backend *be, int64_t max_len, ct_generator **out);
void ct_gen_free(ct_generator *g); /* NULL is fine */

int64_t ct_gen_len(const ct_generator *g);      /* positions in the cache */
int64_t ct_gen_max_len(const ct_generator *g);  /* capacity */
int32_t ct_gen_vocab(const ct_generator *g);    /* rows of the output head */
const int32_t *ct_gen_tokens(const ct_generator *g); /* (len) ids in the cache */

/* Forgets the positions >= len (0 = empty cache); len > ct_gen_len is CT_EINPUT. */
int ct_gen_truncate(ct_generator *g, int64_t len);

/* Runs ids [n] (n >= 1) at positions len .. len+n-1, appends their keys and
 * values to the cache and sets *logits (may be NULL) to the logits [vocab] of
 * the last of them (host memory owned by the generator; the caller may modify
 * them, e.g. by sampling). CT_EINPUT when an id is outside the vocabulary or
 * the tokens do not fit the cache (nothing changes then). */
int ct_gen_feed(ct_generator *g, const int32_t *ids, int64_t n, float **logits);

/* ---- the decode loop ---- */

/* Receives streamed answer text (UTF-8, never a split character); non-zero
 * stops generation with that status. */
typedef ct_text_emit_fn ct_gen_emit_fn;

typedef struct {
    int64_t max_new_tokens;        /* >= 1 */
    const int32_t *stop_ids;       /* ids that end the answer (EOS, <|im_end|>) */
    size_t n_stop_ids;
    const char *const *stop_texts; /* strings that end it, matched on the decoded text */
    size_t n_stop_texts;
    int32_t vocab_limit;           /* ids >= this are never sampled (a tokenizer smaller
                                      than the head); 0 = no limit */
} ct_gen_limits;

typedef enum {
    CT_GEN_STOP_ID = 0,     /* sampled one of stop_ids (not part of the answer) */
    CT_GEN_STOP_TEXT,       /* the text reached a stop string (cut off before it) */
    CT_GEN_MAX_TOKENS,      /* max_new_tokens sampled */
    CT_GEN_CONTEXT_FULL,    /* the cache is full */
} ct_gen_stop_reason;

typedef struct {
    ct_gen_stop_reason reason;
    int64_t n_prompt;      /* tokens fed as the prompt */
    int64_t n_generated;   /* tokens sampled, the stopping one included */
    double prefill_s;      /* seconds in the prompt's feed */
    double decode_s;       /* seconds in the per-token feeds and sampling */
} ct_gen_result;

/* Feeds prompt [n_prompt] (>= 1) after what the cache holds, then samples
 * token after token until a limit is hit, feeding each sampled token except
 * the last. The sampler's context (repetition penalty) is every id in the
 * cache: the whole conversation and the answer so far, as HF's input_ids. answer (may be NULL) gets the sampled ids
 * appended (the stopping id included); the text goes to emit (may be NULL)
 * as it becomes final, decoded with `tok` (special tokens hidden) and cut
 * before a stop string (tok NULL: no text, stop_texts unused). So after the
 * call the cache holds the prompt and every sampled id but the last. */
int ct_gen_generate(ct_generator *g, ct_sampler *s, const ct_tokenizer *tok, const int32_t *prompt,
                    int64_t n_prompt, const ct_gen_limits *lim, ct_gen_emit_fn emit, void *ctx,
                    ct_ids *answer, ct_gen_result *res);

#endif
