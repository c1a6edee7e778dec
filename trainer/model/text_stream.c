/* Streaming detokenization with stop strings (see text_stream.h). */
#include "trainer/model/text_stream.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

enum { ANCHOR_MAX = 4 }; /* prompt ids kept in front of the answer's window */

static const char k_replacement[] = "\xEF\xBF\xBD"; /* U+FFFD: an incomplete character */

int ct_text_stream_init(ct_text_stream *ts, const ct_tokenizer *tok, const int32_t *anchor,
                        size_t n_anchor, const char *const *stops, size_t n_stops) {
    memset(ts, 0, sizeof *ts);
    ts->tok = tok;
    ts->stops = stops;
    ts->n_stops = n_stops;
    size_t k = n_anchor < ANCHOR_MAX ? n_anchor : ANCHOR_MAX;
    ts->cap = 256;
    ts->text = malloc(ts->cap);
    if (!ts->text || ct_ids_reserve(&ts->ids, k + 64)) {
        ct_text_stream_free(ts);
        return ct_errorf(CT_ERUNTIME, "text stream: out of memory");
    }
    ts->text[0] = '\0';
    for (size_t i = 0; i < k; i++) CT_TRY(ct_ids_push(&ts->ids, anchor[n_anchor - k + i]));
    ts->prefix = 0;
    ts->read = k;
    return CT_OK;
}

void ct_text_stream_free(ct_text_stream *ts) {
    ct_ids_free(&ts->ids);
    free(ts->text);
    memset(ts, 0, sizeof *ts);
}

static int text_append(ct_text_stream *ts, const char *s, size_t n) {
    if (ts->len + n + 1 > ts->cap) {
        size_t cap = ts->cap;
        while (cap < ts->len + n + 1) cap *= 2; /* doubling: amortised, not per token */
        char *p = realloc(ts->text, cap);
        if (!p) return ct_errorf(CT_ERUNTIME, "text stream: out of memory for %zu bytes", cap);
        ts->text = p;
        ts->cap = cap;
    }
    memcpy(ts->text + ts->len, s, n);
    ts->len += n;
    ts->text[ts->len] = '\0';
    return CT_OK;
}

/* Earliest stop string in text[from..]: cuts the text there and sets stopped. */
static void find_stop(ct_text_stream *ts, size_t from) {
    size_t cut = ts->len;
    for (size_t i = 0; i < ts->n_stops; i++) {
        const char *s = ts->stops[i];
        size_t n = strlen(s);
        if (n == 0 || n > ts->len) continue;
        size_t start = from + 1 > n ? from + 1 - n : 0; /* a match may begin before `from` */
        const char *hit = memmem(ts->text + start, ts->len - start, s, n);
        if (hit && (size_t)(hit - ts->text) < cut) cut = (size_t)(hit - ts->text);
    }
    if (cut < ts->len) {
        ts->len = cut;
        ts->text[cut] = '\0';
        ts->stopped = true;
    }
}

/* Bytes at the end of the text that could begin a stop string (held back). */
static size_t held_back(const ct_text_stream *ts) {
    size_t hold = 0;
    for (size_t i = 0; i < ts->n_stops; i++) {
        const char *s = ts->stops[i];
        size_t n = strlen(s);
        size_t k = n > 0 ? n - 1 : 0; /* proper prefixes only: a whole one is a match */
        if (k > ts->len) k = ts->len;
        for (; k > hold; k--)
            if (memcmp(ts->text + ts->len - k, s, k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}

static int release(ct_text_stream *ts, size_t upto, ct_text_emit_fn emit, void *ctx) {
    if (upto <= ts->released) return CT_OK;
    int rc = emit ? emit(ctx, ts->text + ts->released, upto - ts->released) : CT_OK;
    ts->released = upto;
    return rc;
}

/* decode(ids[prefix:end]) minus decode(ids[prefix:read]) appended to the text
 * when it is longer and (unless `final`) does not end in an incomplete
 * character; then the window moves on. */
static int advance(ct_text_stream *ts, bool final) {
    char *before = NULL, *after = NULL;
    size_t nb = 0, na = 0;
    const int32_t *w = ts->ids.v + ts->prefix;
    int rc = ct_tok_decode(ts->tok, w, ts->read - ts->prefix, false, &before, &nb);
    if (!rc) rc = ct_tok_decode(ts->tok, w, ts->ids.n - ts->prefix, false, &after, &na);
    if (!rc && na > nb) {
        bool incomplete = na >= 3 && memcmp(after + na - 3, k_replacement, 3) == 0;
        if (final || !incomplete) {
            size_t old = ts->len;
            rc = text_append(ts, after + nb, na - nb);
            ts->prefix = ts->read;
            ts->read = ts->ids.n;
            if (!rc) find_stop(ts, old);
        }
    }
    free(before);
    free(after);
    return rc;
}

int ct_text_stream_push(ct_text_stream *ts, int32_t id, ct_text_emit_fn emit, void *ctx, bool *stopped) {
    if (stopped) *stopped = ts->stopped;
    if (ts->stopped) return CT_OK;
    CT_TRY(ct_ids_push(&ts->ids, id));
    CT_TRY(advance(ts, false));
    if (stopped) *stopped = ts->stopped;
    return release(ts, ts->stopped ? ts->len : ts->len - held_back(ts), emit, ctx);
}

int ct_text_stream_finish(ct_text_stream *ts, ct_text_emit_fn emit, void *ctx) {
    if (!ts->stopped && ts->read < ts->ids.n) CT_TRY(advance(ts, true));
    return release(ts, ts->len, emit, ctx);
}
