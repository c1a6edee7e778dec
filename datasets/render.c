/* Sample rendering for log-dataset: decode runs of tokens with the same
 * trained/untrained state, so masked spans line up with token boundaries. */
#include "datasets/render.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

int ct_show_parse(const char *name, ct_show *out) {
    static const char *const names[] = {"text", "masked", "ids", "labels"};
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out = (ct_show)i;
            return CT_OK;
        }
    return ct_errorf(CT_EINPUT, "unknown --show '%s'; use text, masked, ids or labels", name ? name : "(none)");
}

typedef struct {
    char *s;
    size_t n, cap;
} buf;

static int put(buf *b, const char *s, size_t k) {
    if (b->n + k + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + k + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) return ct_errorf(CT_ERUNTIME, "out of memory rendering a sample");
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, k);
    b->n += k;
    b->s[b->n] = '\0';
    return CT_OK;
}

static int put_numbers(buf *b, const int32_t *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char num[16];
        int k = snprintf(num, sizeof num, i ? " %d" : "%d", v[i]);
        CT_TRY(put(b, num, (size_t)k));
    }
    return CT_OK;
}

static int put_decoded(buf *b, const ct_tokenizer *tok, const int32_t *ids, size_t n) {
    char *text;
    size_t len;
    CT_TRY(ct_tok_decode(tok, ids, n, true, &text, &len));
    int rc = put(b, text, len);
    free(text);
    return rc;
}

int ct_render_sample(const ct_tokenizer *tok, const int32_t *ids, const int32_t *labels, size_t n, ct_show mode,
                     char **out, size_t *len) {
    *out = NULL;
    buf b = {0};
    int rc = put(&b, "", 0);
    if (!rc && (mode == CT_SHOW_MASKED || mode == CT_SHOW_LABELS) && !labels)
        rc = ct_errorf(CT_EINPUT, "rendering labels needs the labels");
    if (!rc) switch (mode) {
        case CT_SHOW_IDS: rc = put_numbers(&b, ids, n); break;
        case CT_SHOW_LABELS: rc = put_numbers(&b, labels, n); break;
        case CT_SHOW_TEXT: rc = put_decoded(&b, tok, ids, n); break;
        case CT_SHOW_MASKED:
            for (size_t a = 0; a < n && !rc;) {
                bool trained = labels[a] >= 0;
                size_t e = a;
                while (e < n && (labels[e] >= 0) == trained) e++;
                if (trained) rc = put(&b, "\xC2\xAB", 2); /* « */
                if (!rc) rc = put_decoded(&b, tok, ids + a, e - a);
                if (!rc && trained) rc = put(&b, "\xC2\xBB", 2); /* » */
                a = e;
            }
            break;
        }
    if (rc) {
        free(b.s);
        return rc;
    }
    *out = b.s;
    if (len) *len = b.n;
    return CT_OK;
}
