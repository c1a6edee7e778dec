/* See stack_fixture.h. */
#include "stack_fixture.h"

#include <string.h>

#include <jansson.h>

#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/adapter.h"
#include "trainer/config/config.h"
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

void ct_stack_forward(const char *model_dir, const ct_backend *be, const ct_model_options *base, ct_dtype compute,
                      double *nll, int64_t *count, float *logits, int64_t T, int64_t V) {
    ct_model_options o = *base;
    o.backend = be;
    ct_model *m = NULL;
    CHECK_OK(ct_model_load(model_dir, &o, &m));
    if (!m) return;
    CHECK_OK(ct_model_set_compute(m, compute));
    ct_model_memory mem;
    ct_model_get_memory(m, &mem);
    CHECK(be->device == CT_CPU ? mem.device_bytes == 0 : mem.device_bytes > 0, "%s: %llu device bytes", be->name,
          (unsigned long long)mem.device_bytes);
    CHECK(ct_model_decoder(m)->layers[0].wqkv.w->device == be->device, "%s: wqkv not placed", be->name);
    int32_t ids[40], labels[40], seg[40];
    for (int64_t t = 0; t < T && t < 40; t++) {
        ids[t] = (int32_t)((t * 37 + 11) % V);
        seg[t] = t < 17 ? 0 : t < 30 ? 1 : 2; /* three packed samples */
        labels[t] = t % 5 == 0 ? -100 : (int32_t)((t * 13 + 5) % V);
    }
    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 20));
    CHECK_OK(ct_model_nll(m, &tape, ids, labels, seg, T, 3, nll, count));
    CHECK_OK(ct_model_logits(m, &tape, ids, T, T - 4, logits));
    ct_tape_free(&tape);
    ct_model_free(m);
}

static void on_iter(void *ctx, int64_t iter, double loss) {
    ct_stack_losses *l = ctx;
    if (iter >= 0 && iter < 16) l->loss[iter] = loss, l->n = (int)iter + 1;
}

int ct_stack_train(const char *model_dir, const char *data, const char *yaml, const char *work_dir,
                   const ct_backend *be, const char *resume, int64_t stop_after, ct_stack_losses *l,
                   ct_train_result *res) {
    return ct_stack_train_log(model_dir, data, yaml, work_dir, be, resume, stop_after, l, res, NULL);
}

int ct_stack_train_log(const char *model_dir, const char *data, const char *yaml, const char *work_dir,
                       const ct_backend *be, const char *resume, int64_t stop_after, ct_stack_losses *l,
                       ct_train_result *res, FILE *out) {
    size_t cap = strlen(model_dir) + strlen(data) + strlen(work_dir) + strlen(yaml) + 128;
    char *text = ct_test_need(malloc(cap));
    snprintf(text, cap, "pretrained_model_name_or_path: '%s'\ndata_path: '%s'\nwork_dir: '%s'\n%s", model_dir,
             data, work_dir, yaml);
    ct_run_config cfg;
    int rc = ct_config_parse(text, strlen(text), "test.yaml", NULL, 0, &cfg);
    free(text);
    CHECK(rc == CT_OK, "config: %s", ct_last_error());
    if (rc) return rc;
    ct_train_options opt = {.cfg = &cfg, .resume = resume, .quiet = !out, .out = out, .stop_after = stop_after,
                            .on_iter = on_iter, .cb_ctx = l, .backend = be, .eval_data = data};
    rc = ct_train(&opt, res);
    ct_config_free(&cfg);
    return rc;
}
