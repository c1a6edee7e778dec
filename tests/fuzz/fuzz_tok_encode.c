/* Fuzz target: ct_tok_encode of arbitrary bytes (invalid UTF-8, NULs, special
 * strings) with the stories260k tokenizer (byte 0 even) or InternLM2-chat-7b's
 * (odd; added tokens, 92k pieces); every id must lie in the vocabulary and
 * decode again. */

#include "datasets/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const ct_tokenizer *t = fz_fixture_tokenizer(data[0] & 1);
    ct_ids ids = {0};
    if (ct_tok_encode(t, (const char *)data + 1, size - 1, data[0] & 2, &ids) == 0) fz_check_encoded(t, &ids);
    ct_ids_free(&ids);
    ids = (ct_ids){0};
    (void)ct_tok_encode_plain(t, (const char *)data + 1, size - 1, &ids);
    ct_ids_free(&ids);
    return 0;
}
