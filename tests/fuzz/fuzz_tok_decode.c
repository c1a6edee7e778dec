/* Fuzz target: ct_tok_decode / ct_tok_decode_plain / ct_tok_piece of
 * arbitrary ids (negative, past the vocabulary, specials), the input read as
 * little-endian int32s after a selector byte (bit 0: the 7B tokenizer, bit 1:
 * show special tokens). Out-of-range ids must be an error, never a read. */
#include <stdlib.h>
#include <string.h>

#include "datasets/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const ct_tokenizer *t = fz_fixture_tokenizer(data[0] & 1);
    size_t n = (size - 1) / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) abort();
    if (n) memcpy(ids, data + 1, n * 4);
    int32_t V = ct_tok_vocab_size(t);
    bool in_range = true;
    for (size_t i = 0; i < n; i++) in_range = in_range && ids[i] >= 0 && ids[i] < V;
    char *text = NULL;
    size_t len = 0;
    int rc = ct_tok_decode(t, ids, n, data[0] & 2, &text, &len);
    if (in_range) fz_assert(rc == 0, "ids inside the vocabulary decode");
    if (rc == 0) fz_assert(text && strlen(text) <= len, "decoded text NUL-terminated within len");
    free(text);
    text = NULL;
    rc = ct_tok_decode_plain(t, ids, n, &text, &len);
    if (in_range) fz_assert(rc == 0, "ids inside the vocabulary decode plainly");
    free(text);
    for (size_t i = 0; i < n && i < 16; i++) {
        size_t pl = 0;
        const char *p = ct_tok_piece(t, ids[i], &pl);
        fz_assert((p != NULL) == (ids[i] >= 0 && ids[i] < V), "a piece exactly for ids in range");
    }
    free(ids);
    return 0;
}
