/* Streaming detokenization with stop strings: token ids arrive one at a time,
 * final text leaves in pieces.
 *
 * Text is decoded the way vLLM's incremental detokenizer does it: the new
 * text of a token is decode(ids[prefix:]) minus decode(ids[prefix:read]) over
 * a short window, so SentencePiece's rules (U+2581 -> space, the dummy-prefix
 * space, byte pieces) act exactly as in a full decode. While the window ends
 * in an incomplete UTF-8 character (decoded as U+FFFD) nothing is released:
 * a character split over byte tokens comes out whole. The window starts on
 * `anchor` ids (the end of the prompt), so the answer's first piece keeps
 * its leading space as in a decode of the whole sequence.
 *
 * Stop strings are matched on the decoded answer text; text that could still
 * become the start of a stop string is held back, and a matched stop string
 * (with anything after it) is never released.
 *
 * Ownership: the stream owns its buffers (ct_text_stream_free); the tokenizer
 * and the stop strings are borrowed and must outlive it. Each push calls the
 * tokenizer's decode on a window of a few tokens (small temporary strings). */
#ifndef CT_TEXT_STREAM_H
#define CT_TEXT_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "datasets/tokenizer.h"

/* Receives released text; non-zero aborts with that status. */
typedef int (*ct_text_emit_fn)(void *ctx, const char *text, size_t len);

typedef struct {
    const ct_tokenizer *tok;
    const char *const *stops; /* borrowed stop strings (empty ones are ignored) */
    size_t n_stops;
    ct_ids ids;            /* anchor ids, then the answer's ids */
    size_t prefix, read;   /* window: ids[prefix:read] is decoded and released */
    char *text;            /* (cap) decoded answer text, NUL-terminated */
    size_t len, cap;
    size_t released;       /* bytes of text handed to emit */
    bool stopped;          /* a stop string was found; text ends before it */
} ct_text_stream;

/* anchor [n_anchor]: the ids just before the answer (up to the last 4 are used). */
int ct_text_stream_init(ct_text_stream *ts, const ct_tokenizer *tok, const int32_t *anchor,
                        size_t n_anchor, const char *const *stops, size_t n_stops);
void ct_text_stream_free(ct_text_stream *ts);

/* Adds one id; releases the text that became final. *stopped (may be NULL) is
 * set when the text now contains a stop string. */
int ct_text_stream_push(ct_text_stream *ts, int32_t id, ct_text_emit_fn emit, void *ctx, bool *stopped);

/* End of the answer: decodes what is still pending (an incomplete character
 * becomes U+FFFD) and releases all text before any stop string. */
int ct_text_stream_finish(ct_text_stream *ts, ct_text_emit_fn emit, void *ctx);

#endif
