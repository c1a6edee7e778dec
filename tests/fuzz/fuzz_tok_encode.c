/* Fuzz target: ct_tok_encode of arbitrary bytes (invalid UTF-8, NULs, special
 * strings) with the stories260k tokenizer (byte 0 even) or InternLM2-chat-7b's
 * (odd; added tokens, 92k pieces); every id must lie in the vocabulary and
 * decode again. */
#include <stdio.h>
#include <stdlib.h>

#include "datasets/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static ct_tokenizer *g_tok[2];

static ct_tokenizer *load(int which) {
    if (!g_tok[which]) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", fz_fixtures(), which ? "internlm2-chat-7b" : "stories260k-internlm2");
        if (ct_tok_load(p, &g_tok[which]) != 0) {
            fprintf(stderr, "fuzz_tok_encode: cannot load the tokenizer %s\n", p);
            abort();
        }
    }
    return g_tok[which];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const ct_tokenizer *t = load(data[0] & 1);
    ct_ids ids = {0};
    if (ct_tok_encode(t, (const char *)data + 1, size - 1, data[0] & 2, &ids) == 0) {
        int32_t V = ct_tok_vocab_size(t);
        for (size_t i = 0; i < ids.n; i++) fz_assert(ids.v[i] >= 0 && ids.v[i] < V, "ids inside the vocabulary");
        char *text = NULL;
        size_t len = 0;
        fz_assert(ct_tok_decode(t, ids.v, ids.n, true, &text, &len) == 0, "encoded ids decode");
        free(text);
    }
    ct_ids_free(&ids);
    ids = (ct_ids){0};
    (void)ct_tok_encode_plain(t, (const char *)data + 1, size - 1, &ids);
    ct_ids_free(&ids);
    return 0;
}
