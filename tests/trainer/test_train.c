/* The training loop (trainer/train.c) through its library entry ct_train, on
 * the real stories260k InternLM2 (QLoRA nf4) with a small conversation data
 * set written here:
 *  - accumulation: batch_size 2 x 1 iteration and batch_size 1 x 2 iterations
 *    give the same update from the same adapter (lora.init_from), up to the
 *    order of fp32 sums (the GEMMs reduce over 128 vs 2 x 64 tokens): the loss
 *    is normalised by the trained tokens of the whole window. AdamW runs with
 *    lr 1 and eps 1, so the update is g/(|g|+1) ~ g and the comparison sees
 *    the gradients themselves; the logged window losses agree too;
 *  - resume: 8 iterations straight vs stopped after 5 (inside an accumulation
 *    window: the partial gradient is saved), resumed, stopped after 7, resumed
 *    again: identical per-iteration losses (memcmp of doubles, dropout on,
 *    evaluation hooks at different points) and identical adapter bytes;
 *  - retention: save_total_limit 2 keeps the newest two iter_N.h5 and their
 *    adapter directories; a fresh run refuses a work_dir with checkpoints;
 *  - a non-finite loss (lr 1e30) stops with the iteration in the message,
 *    writes nothing more, and the last good checkpoint still loads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>
#include <jansson.h>

#include "testutil.h"
#include "trainer/model/adapter.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/model.h"
#include "trainer/train.h"

static char g_dir[64];
static char g_model[CT_PATH_MAX];
static char g_data[CT_PATH_MAX];

/* A base config; each test adds --set style overrides. */
static const char *k_yaml =
    "max_length: 64\n"
    "pack_to_max_length: true\n"
    "batch_size: 2\n"
    "accumulative_counts: 2\n"
    "max_iters: 8\n"
    "lr: 2.0e-3\n"
    "warmup_ratio: 0.25\n"
    "save_steps: 3\n"
    "save_total_limit: -1\n"
    "evaluation_freq: 3\n"
    "evaluation_max_new_tokens: 6\n"
    "evaluation_inputs: [Tell me a story.]\n"
    "quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}\n"
    "lora: {r: 4, lora_alpha: 8, lora_dropout: 0.1}\n"
    "gradient_checkpointing: true\n"
    "seed: 3\n"
    "logging_interval: 1\n";

typedef struct {
    double loss[64];
    int n;
} losses;

static void on_iter(void *ctx, int64_t iter, double loss) {
    losses *l = ctx;
    if (iter >= 0 && iter < 64) l->loss[iter] = loss, l->n = (int)iter + 1;
}

static void work_path(char *buf, const char *name) { snprintf(buf, CT_PATH_MAX, "%s/%s", g_dir, name); }

/* Trains into g_dir/<name> with the base config plus `sets`. */
static int train(const char *name, const char *const *sets, int n_sets, const char *resume, int64_t stop_after,
                 losses *l, ct_train_result *res) {
    char text[4 * CT_PATH_MAX], wd[CT_PATH_MAX];
    work_path(wd, name);
    snprintf(text, sizeof text, "pretrained_model_name_or_path: '%s'\ndata_path: '%s'\nwork_dir: '%s'\n%s", g_model,
             g_data, wd, k_yaml);
    ct_run_config cfg;
    int rc = ct_config_parse(text, strlen(text), "test.yaml", sets, n_sets, &cfg);
    CHECK(rc == CT_OK, "config: %s", ct_last_error());
    if (rc) return rc;
    ct_train_options opt = {.cfg = &cfg, .resume = resume, .quiet = true, .stop_after = stop_after,
                            .on_iter = l ? on_iter : NULL, .cb_ctx = l};
    rc = ct_train(&opt, res);
    ct_config_free(&cfg);
    return rc;
}

static char *slurp(const char *path, size_t *n) {
    char *d = NULL;
    if (ct_file_read_all(path, &d, n) != CT_OK) {
        fprintf(stderr, "%s\n", ct_last_error());
        *n = 0;
    }
    return d;
}

/* The adapter's values as one flat array (PEFT order), via a fresh model. */
static float *adapter_values(const char *dir, int64_t *n) {
    ct_model *m = NULL;
    ct_lora *l = NULL;
    *n = 0;
    if (ct_model_load(g_model, NULL, &m) || ct_adapter_load(dir, m, false, &l)) {
        CHECK(false, "loading %s: %s", dir, ct_last_error());
        ct_model_free(m);
        return NULL;
    }
    *n = ct_lora_numel(l);
    float *v = malloc((size_t)*n * sizeof *v);
    if (v) memcpy(v, ct_lora_values(l), (size_t)*n * sizeof *v);
    ct_model_free(m);
    return v;
}

/* The "loss" of the metrics.jsonl entry of iteration `iter`. */
static double logged_loss(const char *name, int64_t iter) {
    char path[CT_PATH_MAX], rel[256];
    snprintf(rel, sizeof rel, "%s/metrics.jsonl", name);
    work_path(path, rel);
    size_t n;
    char *text = slurp(path, &n);
    double v = NAN;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        if (j && json_integer_value(json_object_get(j, "iter")) == iter && json_object_get(j, "loss"))
            v = json_number_value(json_object_get(j, "loss"));
        json_decref(j);
    }
    free(text);
    return v;
}

static void test_accumulation(void) {
    ct_train_result res;
    /* a starting adapter with B != 0, so that A gets gradients too */
    const char *warm[] = {"max_iters=2", "accumulative_counts=1", "lr=2.0e-2", "evaluation_inputs=[]",
                          "lora.lora_dropout=0"};
    CHECK_OK(train("acc0", warm, 5, NULL, 0, NULL, &res));
    char init[CT_PATH_MAX + 32];
    snprintf(init, sizeof init, "lora.init_from=%s/acc0/adapter", g_dir);
    const char *a[] = {"batch_size=2", "accumulative_counts=1", "max_iters=1", "lr=1", "eps=1", "max_norm=0",
                       "param_scheduler=[]", "lora.lora_dropout=0", "evaluation_inputs=[]", init};
    const char *b[] = {"batch_size=1", "accumulative_counts=2", "max_iters=2", "lr=1", "eps=1", "max_norm=0",
                       "param_scheduler=[]", "lora.lora_dropout=0", "evaluation_inputs=[]", init, "logging_interval=2"};
    CHECK_OK(train("accA", a, 10, NULL, 0, NULL, &res));
    CHECK(res.steps_done == 1, "A: %lld steps", (long long)res.steps_done);
    CHECK_OK(train("accB", b, 11, NULL, 0, NULL, &res));
    CHECK(res.steps_done == 1, "B: %lld steps", (long long)res.steps_done);

    char d0[CT_PATH_MAX], da[CT_PATH_MAX], db[CT_PATH_MAX];
    work_path(d0, "acc0/adapter");
    work_path(da, "accA/adapter");
    work_path(db, "accB/adapter");
    int64_t n0, na, nb;
    float *v0 = adapter_values(d0, &n0), *va = adapter_values(da, &na), *vb = adapter_values(db, &nb);
    CHECK(v0 && va && vb && n0 == na && na == nb && n0 > 0, "adapter sizes %lld %lld %lld", (long long)n0,
          (long long)na, (long long)nb);
    if (v0 && va && vb && n0 == na && na == nb) {
        double big = 0, worst = 0;
        int64_t moved = 0;
        for (int64_t i = 0; i < n0; i++) {
            double ua = (double)va[i] - v0[i], ub = (double)vb[i] - v0[i];
            big = fmax(big, fabs(ua));
            worst = fmax(worst, fabs(ua - ub));
            moved += ua != 0;
        }
        CHECK(big > 1e-6 && moved > n0 / 2, "the step moved %lld of %lld values, at most %g", (long long)moved,
              (long long)n0, big);
        CHECK(worst <= 2e-5 * big, "batch 2 x 1 vs batch 1 x 2: updates differ by %g (largest update %g)", worst, big);
        printf("accumulation: largest update %.3g, largest difference %.3g (%.2g relative)\n", big, worst,
               worst / big);
    }
    free(v0), free(va), free(vb);
    double la = logged_loss("accA", 1), lb = logged_loss("accB", 2);
    CHECK(isfinite(la) && fabs(la - lb) <= 1e-6 * la, "window loss A %.9g vs B %.9g", la, lb);
}

static void test_resume(void) {
    losses straight = {0}, parts = {0};
    ct_train_result r1, r2, r3, rs;
    CHECK_OK(train("straight", NULL, 0, NULL, 0, &straight, &rs));
    CHECK(rs.iters_done == 8 && rs.steps_done == 4 && !rs.stopped, "straight run: %lld iterations, %lld steps",
          (long long)rs.iters_done, (long long)rs.steps_done);
    bool finite = straight.n == 8;
    for (int i = 0; i < 8; i++) finite = finite && isfinite(straight.loss[i]) && straight.loss[i] > 0;
    CHECK(finite, "%d losses, the first %g", straight.n, straight.loss[0]);

    CHECK_OK(train("parts", NULL, 0, NULL, 5, &parts, &r1)); /* stops inside the window 4..5 */
    CHECK(r1.stopped && r1.iters_done == 5 && r1.steps_done == 2, "first part: %lld iterations, %lld steps",
          (long long)r1.iters_done, (long long)r1.steps_done);
    char path[CT_PATH_MAX];
    work_path(path, "parts/iter_5.h5");
    CHECK(ct_path_exists(path), "%s missing", path);
    CHECK_OK(train("parts", NULL, 0, "auto", 7, &parts, &r2));
    CHECK(r2.stopped && r2.iters_done == 7, "second part: %lld iterations", (long long)r2.iters_done);
    CHECK_OK(train("parts", NULL, 0, "auto", 0, &parts, &r3));
    CHECK(!r3.stopped && r3.iters_done == 8 && r3.steps_done == 4, "last part: %lld iterations, %lld steps",
          (long long)r3.iters_done, (long long)r3.steps_done);
    CHECK(parts.n == 8 && memcmp(parts.loss, straight.loss, sizeof straight.loss) == 0,
          "per-iteration losses differ after resuming");
    for (int i = 0; i < 8; i++)
        if (parts.loss[i] != straight.loss[i])
            fprintf(stderr, "  iteration %d: %.17g vs %.17g\n", i, parts.loss[i], straight.loss[i]);
    char a[CT_PATH_MAX], b[CT_PATH_MAX];
    work_path(a, "straight/adapter/adapter_model.safetensors");
    work_path(b, "parts/adapter/adapter_model.safetensors");
    CHECK(ct_test_same_file(a, b), "final adapters differ: %s vs %s", a, b);
    work_path(a, "straight/iter_8.h5");
    CHECK(ct_path_exists(a), "final checkpoint missing");
}

static void test_retention(void) {
    const char *s[] = {"save_steps=2", "save_total_limit=2", "accumulative_counts=1", "evaluation_inputs=[]"};
    ct_train_result res;
    CHECK_OK(train("keep", s, 4, NULL, 0, NULL, &res));
    int64_t *iters = NULL;
    size_t n = 0;
    char wd[CT_PATH_MAX], p[CT_PATH_MAX];
    work_path(wd, "keep");
    CHECK_OK(ct_ckpt_list(wd, &iters, &n));
    CHECK(n == 2 && iters[0] == 6 && iters[1] == 8, "kept %zu checkpoints", n);
    free(iters);
    const char *gone[] = {"keep/iter_2.h5", "keep/iter_4.h5", "keep/iter_2_adapter", "keep/iter_4_adapter"};
    for (int i = 0; i < 4; i++) {
        work_path(p, gone[i]);
        CHECK(!ct_path_exists(p), "%s should be deleted", p);
    }
    const char *kept[] = {"keep/iter_6_adapter/adapter_model.safetensors", "keep/iter_8_adapter/adapter_config.json",
                          "keep/adapter/adapter_model.safetensors", "keep/metrics.jsonl", "keep/loss_curve.svg"};
    for (int i = 0; i < 5; i++) {
        work_path(p, kept[i]);
        CHECK(ct_path_exists(p), "%s missing", p);
    }
    /* a fresh run does not mix its checkpoints into this run's */
    CHECK(train("keep", s, 4, NULL, 0, NULL, &res) == CT_EINPUT && strstr(ct_last_error(), "--resume auto"),
          "fresh run over checkpoints: %s", ct_last_error());
}

static void test_nonfinite(void) {
    const char *s[] = {"lr=1.0e30", "param_scheduler=[]", "accumulative_counts=1", "save_steps=1",
                       "evaluation_inputs=[]"};
    ct_train_result res;
    int rc = train("nan", s, 5, NULL, 0, NULL, &res);
    const char *msg = ct_last_error();
    CHECK(rc == CT_ERUNTIME, "rc %d: %s", rc, msg);
    CHECK(strstr(msg, "iteration 2") && strstr(msg, "iter_1.h5") && (strstr(msg, "NaN") || strstr(msg, "not finite") ||
                                                                     strstr(msg, "infinite")),
          "message: %s", msg);
    char p[CT_PATH_MAX];
    work_path(p, "nan/iter_2.h5");
    CHECK(!ct_path_exists(p), "nothing is saved after the bad iteration");
    work_path(p, "nan/adapter");
    CHECK(!ct_path_exists(p), "no final adapter");
    work_path(p, "nan/iter_1.h5");
    ct_ckpt_reader *r = NULL;
    CHECK_OK(ct_ckpt_open(p, &r));
    ct_ckpt_close(r);
    /* it resumes (and meets the same NaN at the same iteration) */
    rc = train("nan", s, 5, p, 0, NULL, &res);
    CHECK(rc == CT_ERUNTIME && strstr(ct_last_error(), "iteration 2"), "resumed: %s", ct_last_error());
}

/* A checkpoint whose LoRA values are NaN but whose checksums are valid (as a
 * run that diverged inside its save interval could leave; written here through
 * HDF5, which recomputes the Fletcher32 sums) is refused at load, naming it. */
static void test_nan_checkpoint(void) {
    const char *s[] = {"accumulative_counts=1", "save_steps=1", "evaluation_inputs=[]"};
    ct_train_result res;
    CHECK_OK(train("nanck", s, 3, NULL, 2, NULL, &res));
    char p[CT_PATH_MAX];
    work_path(p, "nanck/iter_2.h5");
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = f >= 0 ? H5Dopen2(f, "lora/base_model.model.model.layers.0.attention.wqkv.lora_A.weight", H5P_DEFAULT)
                     : -1;
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : 0;
    CHECK(n > 0, "the checkpoint holds layer 0's wqkv lora_A");
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (n > 0 && v) {
        CHECK(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0, "read it");
        v[n / 2] = NAN;
        CHECK(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0, "write a NaN into it");
    }
    free(v);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    CHECK_OK(ct_ckpt_verify(p)); /* the checksums hold: only the values are bad */
    int rc = train("nanck", s, 3, p, 0, NULL, &res);
    const char *msg = ct_last_error();
    CHECK(rc == CT_EINPUT && strstr(msg, p) && strstr(msg, "non-finite") && strstr(msg, "wqkv.lora_A"),
          "rc %d: %s", rc, msg);
}

static void write_data(void) {
    const char *inputs[] = {"Tell me a story.", "What did Lily do?", "Who is Tom?", "Where is the cat?",
                            "What is the sun like?", "Say something nice.", "What did the dog find?",
                            "Why was Ben sad?"};
    const char *outputs[] = {"Once upon a time, there was a little girl named Lily.", "Lily went to the park to play.",
                             "Tom is a big boy who likes to run.", "The cat sat on the mat.",
                             "The sun was warm and bright.", "You are a good friend.", "The dog found a red ball.",
                             "Ben was sad because his toy broke."};
    json_t *arr = json_array();
    for (int rep = 0; rep < 3; rep++)
        for (int i = 0; i < 8; i++)
            json_array_append_new(arr, json_pack("{s:[{s:s, s:s}]}", "conversation", "input", inputs[i], "output",
                                                 outputs[(i + rep) % 8]));
    CHECK_OK(ct_json_write_atomic(g_data, arr, 0));
    json_decref(arr);
}

int main(void) {
    if (!ct_fixture("stories260k-internlm2/model.safetensors", g_model, sizeof g_model)) return CT_TEST_SKIP;
    ct_fixture("stories260k-internlm2", g_model, sizeof g_model);
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_test_train.XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    work_path(g_data, "data.json");
    write_data();
    test_accumulation();
    test_resume();
    test_retention();
    test_nonfinite();
    test_nan_checkpoint();
    if (ct_test_failures == 0) ct_remove_tree(g_dir);
    else fprintf(stderr, "work files kept in %s\n", g_dir);
    return ct_test_finish();
}
