/* Fuzz target: tokenizer.model (the SentencePiece protobuf) as
 * ct_sp_model_parse reads it. */
#include <string.h>

#include "datasets/sp_model.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ct_sp_model m;
    memset(&m, 0, sizeof m);
    if (ct_sp_model_parse(data, size, "tokenizer.model", &m) == 0) ct_sp_model_free(&m);
    return 0;
}
