/* What the model sees, as text, for `ctuner log-dataset`: a sample's ids and
 * ALIGNED labels (label t = id t when trained, -100 when not) shown as
 *   text    the decoded text, special tokens written out;
 *   masked  the same, with every trained span wrapped in « and » (U+00AB,
 *           U+00BB: visible in any log or pipe, unlike colour codes);
 *   ids     the ids, space-separated;
 *   labels  the labels, space-separated (-100 = not trained).
 *
 * Ownership: the rendered string is malloc'ed and owned by the caller. */
#ifndef CT_RENDER_H
#define CT_RENDER_H

#include <stddef.h>
#include <stdint.h>

#include "datasets/tokenizer.h"

typedef enum { CT_SHOW_TEXT, CT_SHOW_MASKED, CT_SHOW_IDS, CT_SHOW_LABELS } ct_show;

/* "text", "masked", "ids", "labels" -> mode; anything else is CT_EINPUT. */
int ct_show_parse(const char *name, ct_show *out);

/* Renders n tokens; labels may be NULL for text/ids. *out is NUL-terminated,
 * *len (may be NULL) its length. */
int ct_render_sample(const ct_tokenizer *tok, const int32_t *ids, const int32_t *labels, size_t n, ct_show mode,
                     char **out, size_t *len);

#endif
