/* Fuzz target: a model's config.json as ct_hf_config_parse reads it; an
 * accepted config must give a parameter count. */
#include <string.h>

#include "tests/fuzz/fuzz_common.h"
#include "trainer/io/hf_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ct_hf_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (ct_hf_config_parse((const char *)data, size, "config.json", &cfg) == 0) {
        fz_assert(ct_hf_config_num_params(&cfg) > 0, "an accepted config has parameters");
        ct_hf_config_free(&cfg);
    }
    return 0;
}
