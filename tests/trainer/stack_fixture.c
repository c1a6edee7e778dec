/* See stack_fixture.h. */
#include "stack_fixture.h"

#include <jansson.h>

#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/adapter.h"
#include "trainer/model/model.h"

void ct_stack_write_data(const char *path) {
    const char *inputs[] = {"Tell me a story.", "What did Lily do?", "Who is Tom?", "Where is the cat?"};
    const char *outputs[] = {"Once upon a time, there was a little girl named Lily.", "Lily went to the park to play.",
                             "Tom is a big boy who likes to run.", "The cat sat on the mat."};
    json_t *arr = json_array();
    for (int rep = 0; rep < 4; rep++)
        for (int i = 0; i < 4; i++)
            json_array_append_new(arr, json_pack("{s:[{s:s, s:s}]}", "conversation", "input", inputs[i], "output",
                                                 outputs[(i + rep) % 4]));
    CHECK_OK(ct_json_write_atomic(path, arr, 0));
    json_decref(arr);
}

void ct_stack_logits_with_adapter(const char *model_dir, const ct_backend *be, const char *adapter_dir,
                                  float *out, int64_t T) {
    ct_model_options o = {.quant = CT_MODEL_QUANT_NF4, .double_quant = true, .backend = be};
    ct_model *m = NULL;
    ct_lora *l = NULL;
    CHECK_OK(ct_model_load(model_dir, &o, &m));
    if (m) CHECK_OK(ct_adapter_load(adapter_dir, m, false, &l));
    int32_t ids[12];
    for (int64_t t = 0; t < T && t < 12; t++) ids[t] = (int32_t)(3 + 29 * t % 500);
    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 20));
    if (l) CHECK_OK(ct_model_logits(m, &tape, ids, T, 0, out));
    ct_tape_free(&tape);
    ct_model_free(m);
}
