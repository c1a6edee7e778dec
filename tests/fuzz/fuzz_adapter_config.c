/* Fuzz target: a PEFT adapter_config.json (r, lora_alpha, target_modules as a
 * list or a regular expression, the refused options) as
 * ct_adapter_read_config reads it for a 24-layer model. */
#include <stdio.h>

#include "tests/fuzz/fuzz_common.h"
#include "trainer/model/adapter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write("adapter_config.json", data, size);
    ct_adapter_config cfg;
    if (ct_adapter_read_config(fz_dir(), 24, &cfg) == 0) {
        fz_assert(cfg.lora.r >= 1, "an accepted adapter has r >= 1");
        fz_assert(cfg.lora.targets != 0, "an accepted adapter has targets");
        fz_assert(cfg.lora.dropout >= 0 && cfg.lora.dropout < 1, "dropout in [0, 1)");
    }
    return 0;
}
