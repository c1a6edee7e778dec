/* The run configuration: the shipped configs parse with XTuner's numbers,
 * anchors and merge keys, --set overrides, the printed config round trip, the
 * schedule against mmengine's recursive form, and a table of broken configs
 * (the .yaml files of tests/data/configs, each naming its expected message on
 * line 1). */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "datasets/template.h"
#include "testutil.h"
#include "trainer/config/config.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/lora.h"

static char g_tmp[64];

static const char *k_base = "pretrained_model_name_or_path: m\ndata_path: d.json\n";

/* Parses `text` (written to a temp file named `name`) with the given overrides. */
static int parse_file(const char *name, const char *text, const char *const *sets, int n_sets, ct_run_config *c) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    if (ct_file_write_atomic(path, text, strlen(text))) return -1;
    return ct_config_load(path, sets, n_sets, c);
}

static int parse_text(const char *text, const char *const *sets, int n_sets, ct_run_config *c) {
    return ct_config_parse(text, strlen(text), "test.yaml", sets, n_sets, c);
}

/* Expects CT_EINPUT with `needle` in the message. */
static void expect_error(const char *what, const char *text, const char *const *sets, int n_sets, const char *needle) {
    ct_run_config c;
    int rc = parse_text(text, sets, n_sets, &c);
    CHECK(rc == CT_EINPUT, "%s: rc %d, want CT_EINPUT", what, rc);
    CHECK(strstr(ct_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what, ct_last_error(), needle);
    if (!rc) ct_config_free(&c);
}

/* write -> parse -> equal, and the second print is identical to the first. */
static void check_round_trip(const char *what, const ct_run_config *c) {
    char *t1 = NULL, *t2 = NULL;
    size_t n1 = 0, n2 = 0;
    FILE *f = open_memstream(&t1, &n1);
    CHECK_OK(ct_config_write_yaml(c, f));
    fclose(f);
    ct_run_config back;
    int rc = ct_config_parse(t1, n1, "printed.yaml", NULL, 0, &back);
    CHECK(rc == 0, "%s: the printed config does not parse: %s\n%s", what, ct_last_error(), t1);
    if (!rc) {
        CHECK(ct_config_equal(c, &back), "%s: the printed config parses to a different struct:\n%s", what, t1);
        f = open_memstream(&t2, &n2);
        CHECK_OK(ct_config_write_yaml(&back, f));
        fclose(f);
        CHECK(n1 == n2 && memcmp(t1, t2, n1) == 0, "%s: printing is not stable", what);
        ct_config_free(&back);
    }
    free(t1);
    free(t2);
}

static void test_shipped_configs(void) {
    char dir[CT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/configs", CT_SOURCE_DIR);
    char **names = NULL;
    size_t n = 0;
    CHECK_OK(ct_config_builtin_names(dir, &names, &n));
    const char *want[] = {"internlm2_chat_1_8b_qlora_alpaca_e3", "internlm2_chat_7b_qlora_alpaca_e3",
                          "internlm2_chat_20b_qlora_alpaca_e3", "internlm2_5_chat_7b_qlora_alpaca_e3",
                          "internlm2_chat_7b_qlora_oasst1_e3", "internlm2_chat_7b_qlora_self_cognition",
                          "internlm2_chat_7b_lora_alpaca_e3", "tiny_demo"};
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        bool found = false;
        for (size_t i = 0; i < n; i++) found |= strcmp(names[i], want[w]) == 0;
        CHECK(found, "configs/%s.yaml is missing", want[w]);
    }
    for (size_t i = 0; i < n; i++) {
        char path[CT_PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s.yaml", dir, names[i]);
        ct_run_config c;
        int rc = ct_config_load(path, NULL, 0, &c);
        CHECK(rc == 0, "%s: %s", names[i], ct_last_error());
        if (rc) continue;
        char wd[300];
        snprintf(wd, sizeof wd, "./work_dirs/%s", names[i]);
        CHECK(strcmp(c.work_dir, wd) == 0, "%s: work_dir %s", names[i], c.work_dir);
        CHECK(ct_template_find(c.prompt_template) != NULL, "%s: template", names[i]);
        if (strstr(names[i], "internlm2")) { /* XTuner's numbers */
            CHECK(c.lora.r == 64 && c.lora.lora_alpha == 16 && c.lora.lora_dropout == 0.1, "%s: lora", names[i]);
            CHECK(c.lora.target_modules == CT_LORA_ALL_BLOCK, "%s: targets %x", names[i], c.lora.target_modules);
            CHECK(c.max_length == 2048 && c.pack_to_max_length && c.batch_size == 1 && c.max_epochs == 3,
                  "%s: data/loop", names[i]);
            CHECK(c.lr == 2e-4 && c.betas[0] == 0.9 && c.betas[1] == 0.999 && c.weight_decay == 0 &&
                      c.max_norm == 1 && c.warmup_ratio == 0.03, "%s: optimizer", names[i]);
            CHECK(c.save_steps == 500 && c.save_total_limit == 2, "%s: save", names[i]);
            bool q = !strstr(names[i], "_lora_");
            CHECK(c.quantization.load_in_4bit == q, "%s: load_in_4bit", names[i]);
            if (q)
                CHECK(c.quantization.quant_type == CT_QUANT_NF4 && c.quantization.double_quant &&
                          c.quantization.blocksize == 64, "%s: quantization", names[i]);
            int64_t acc = strstr(names[i], "internlm2_5") ? 1 : 16;
            CHECK(c.accumulative_counts == acc, "%s: accumulative_counts %lld", names[i],
                  (long long)c.accumulative_counts);
        }
        check_round_trip(names[i], &c);
        ct_config_free(&c);
    }
    ct_config_names_free(names, n);

    /* the reference config in detail */
    char path[CT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/internlm2_chat_7b_qlora_alpaca_e3.yaml", dir);
    ct_run_config c;
    if (ct_config_load(path, NULL, 0, &c) == 0) {
        CHECK(strcmp(c.pretrained_model_name_or_path, "internlm/internlm2-chat-7b") == 0, "model");
        CHECK(c.data_format == CT_DS_ALPACA && strcmp(c.prompt_template, "internlm2_chat") == 0, "data");
        CHECK(c.system_template && strcmp(c.system_template, "alpaca") == 0 &&
                  strcmp(c.system, ct_system_text("alpaca")) == 0, "SYSTEM");
        CHECK(c.n_evaluation_inputs == 2 && strcmp(c.evaluation_inputs[0], "请给我介绍五个上海的景点") == 0 &&
                  strcmp(c.evaluation_inputs[1], "Please tell me five scenic spots in Shanghai") == 0,
              "evaluation_inputs");
        CHECK(c.evaluation_freq == 500 && c.n_phases == -1 && c.seed == 0 && !c.deterministic, "eval/sched/seed");
        CHECK(c.quantization.compute_dtype == CT_BF16, "compute dtype");
        ct_config_free(&c);
    }
    snprintf(path, sizeof path, "%s/internlm2_chat_7b_lora_alpaca_e3.yaml", dir);
    if (ct_config_load(path, NULL, 0, &c) == 0) { /* explicit schedule written with anchors */
        CHECK(c.n_phases == 2 && c.phases[0].type == CT_SCHED_LINEAR && c.phases[0].start_factor == 1e-5 &&
                  c.phases[0].end == 0.09 && c.phases[1].type == CT_SCHED_COSINE && c.phases[1].begin == 0.09 &&
                  c.phases[1].end == 3 && c.phases[1].by_epoch, "explicit param_scheduler");
        ct_config_free(&c);
    }
    snprintf(path, sizeof path, "%s/tiny_demo.yaml", dir);
    if (ct_config_load(path, NULL, 0, &c) == 0) {
        CHECK(c.max_iters == 300 && c.device == CT_DEVICE_CPU && c.data_format == CT_DS_CONVERSATION &&
                  strcmp(c.pretrained_model_name_or_path, "work_dirs/tiny_demo/base") == 0 &&
                  strcmp(c.data_path, "examples/tiny/self_cognition.json") == 0, "tiny_demo");
        ct_config_free(&c);
    }
}

static void test_defaults(void) {
    ct_run_config c;
    CHECK_OK(parse_file("my_run.yml", k_base, NULL, 0, &c));
    CHECK(strcmp(c.work_dir, "./work_dirs/my_run") == 0, "work_dir from the file name: %s", c.work_dir);
    CHECK(strcmp(c.prompt_template, "internlm2_chat") == 0 && strcmp(c.system, "") == 0 && !c.system_template,
          "template/system defaults");
    CHECK(!c.quantization.load_in_4bit && c.lora.r == 64 && c.accumulative_counts == 16 && c.n_phases == -1,
          "no quantization section = no quantization; XTuner's numbers otherwise");
    CHECK(c.max_iters == 0 && c.save_total_limit == 2 && c.logging_interval == 10 && c.gradient_checkpointing,
          "runtime defaults");
    CHECK(c.optimizer_offload == CT_OFFLOAD_NONE && c.embedding_offload == CT_OFFLOAD_CPU,
          "offload defaults: optimizer %d, embedding %d", (int)c.optimizer_offload, (int)c.embedding_offload);
    ct_config_free(&c);
    /* a quantization section turns 4-bit on with QLoRA's defaults; null turns it off */
    char text[512];
    snprintf(text, sizeof text, "%squantization: {blocksize: 128}\n", k_base);
    CHECK_OK(parse_text(text, NULL, 0, &c));
    CHECK(c.quantization.load_in_4bit && c.quantization.quant_type == CT_QUANT_NF4 && c.quantization.double_quant &&
              c.quantization.blocksize == 128 && c.quantization.compute_dtype == CT_BF16, "section defaults");
    ct_config_free(&c);
    snprintf(text, sizeof text, "%squantization: null\n_ignored: {anything: [1, 2]}\n", k_base);
    CHECK_OK(parse_text(text, NULL, 0, &c));
    CHECK(!c.quantization.load_in_4bit, "quantization: null");
    ct_config_free(&c);
    /* YAML 1.2 numbers: 2e-4 is a float (PyYAML would read a string), hex/octal ints */
    snprintf(text, sizeof text, "%slr: 2e-4\nmax_length: 0x800\nbatch_size: 0o10\nlora: {target_modules: all-linear}\n"
             "randomness: {seed: 7, deterministic: true}\n", k_base);
    CHECK_OK(parse_text(text, NULL, 0, &c));
    CHECK(c.lr == 2e-4 && c.max_length == 2048 && c.batch_size == 8, "number forms");
    CHECK(c.lora.target_modules == CT_LORA_ALL_BLOCK && c.seed == 7 && c.deterministic, "all-linear, randomness");
    ct_config_free(&c);
    /* the config's names are the dataset reader's */
    for (int f = CT_DS_AUTO; f <= CT_DS_PRETOKENIZED; f++) {
        char t[256];
        snprintf(t, sizeof t, "%sdata_format: %s\n", k_base, ct_ds_format_name((ct_ds_format)f));
        CHECK_OK(parse_text(t, NULL, 0, &c));
        CHECK((int)c.data_format == f, "data_format %s", ct_ds_format_name((ct_ds_format)f));
        ct_config_free(&c);
    }
    /* a missing file names itself */
    char missing[128];
    snprintf(missing, sizeof missing, "%s/none.yaml", g_tmp);
    CHECK(ct_config_load(missing, NULL, 0, &c) == CT_EINPUT && strstr(ct_last_error(), missing), "missing file: %s",
          ct_last_error());
}

static void test_anchors(void) {
    ct_run_config c;
    const char *text = "pretrained_model_name_or_path: &model internlm/internlm2-chat-7b\n"
                       "data_path: d.json\n"
                       "max_epochs: &epochs 3\n"
                       "lr: &lr 3.0e-4\n"
                       "_vars:\n"
                       "  qlora: &qlora {load_in_4bit: true, bnb_4bit_quant_type: fp4, blocksize: 128}\n"
                       "quantization:\n"
                       "  <<: *qlora\n"
                       "  blocksize: 256\n" /* explicit keys win over merged ones */
                       "param_scheduler:\n"
                       "  - {type: LinearLR, start_factor: 0.1, begin: 0, end: &w 0.5}\n"
                       "  - {type: CosineAnnealingLR, eta_min: 1.0e-6, begin: *w, end: *epochs}\n"
                       "evaluation_inputs: [*model]\n";
    CHECK_OK(parse_text(text, NULL, 0, &c));
    CHECK(c.quantization.load_in_4bit && c.quantization.quant_type == CT_QUANT_FP4 && c.quantization.blocksize == 256,
          "merge key: type %d blocksize %lld", c.quantization.quant_type, (long long)c.quantization.blocksize);
    CHECK(c.n_phases == 2 && c.phases[1].begin == 0.5 && c.phases[1].end == 3 && c.phases[1].eta_min == 1e-6,
          "aliases in the schedule");
    CHECK(c.n_evaluation_inputs == 1 && strcmp(c.evaluation_inputs[0], "internlm/internlm2-chat-7b") == 0,
          "string alias");
    ct_config_free(&c);
    /* merging a list of maps: the earlier one wins */
    char t2[512];
    snprintf(t2, sizeof t2, "%s_a: &a {r: 8, lora_alpha: 32}\n_b: &b {r: 4, lora_dropout: 0.0}\nlora: {<<: [*a, *b]}\n",
             k_base);
    CHECK_OK(parse_text(t2, NULL, 0, &c));
    CHECK(c.lora.r == 8 && c.lora.lora_alpha == 32 && c.lora.lora_dropout == 0.0, "merge of a list");
    ct_config_free(&c);
    /* an anchored merge source stays usable afterwards */
    snprintf(t2, sizeof t2, "%slora: {<<: &x {r: 4}, lora_alpha: 8}\n_y: *x\n", k_base);
    CHECK_OK(parse_text(t2, NULL, 0, &c));
    CHECK(c.lora.r == 4 && c.lora.lora_alpha == 8, "anchor on a merge source");
    ct_config_free(&c);
    /* a bad value behind an alias is reported where the alias is used */
    snprintf(t2, sizeof t2, "%s_v: &neg -1\nlr: *neg\n", k_base);
    expect_error("aliased bad value", t2, NULL, 0, "test.yaml:4:5: lr: '-1' is out of range");
    /* an alias bomb stops at the node limit instead of eating memory */
    char bomb[2048];
    int k = snprintf(bomb, sizeof bomb, "%sa0: &a0 [x, x, x, x, x, x, x, x, x, x]\n", k_base);
    for (int i = 1; i < 9; i++)
        k += snprintf(bomb + k, sizeof bomb - (size_t)k, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, "
                      "*a%d, *a%d]\n", i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    expect_error("alias bomb", bomb, NULL, 0, "expands to more than");
    expect_error("recursive alias", "a: &a [1, *a]\n", NULL, 0,
                 "test.yaml:1:11: alias *a refers to a node that contains it");
}

static void test_overrides(void) {
    ct_run_config c;
    const char *sets[] = {"lora.r=8",
                          "lr=1.0e-3",
                          "betas=[0.9,0.95]",
                          "SYSTEM='hi: there'",
                          "quantization.load_in_4bit=true",
                          "lora.target_modules=[wqkv, wo]",
                          "max_iters=100",
                          "evaluation_inputs=[a, 'b, c']",
                          "evaluation_inputs.1=B",
                          "evaluation_inputs.2=C",
                          "param_scheduler=[{type: ConstantLR, factor: 1.0}]",
                          "param_scheduler.0.end=50",
                          "lora.r=16", /* later wins */
                          "work_dir=/tmp/x y"};
    CHECK_OK(parse_text(k_base, sets, (int)(sizeof sets / sizeof sets[0]), &c));
    CHECK(c.lora.r == 16 && c.lr == 1e-3 && c.betas[1] == 0.95, "numbers");
    CHECK(strcmp(c.system, "hi: there") == 0 && !c.system_template, "SYSTEM %s", c.system);
    CHECK(c.quantization.load_in_4bit && c.quantization.quant_type == CT_QUANT_NF4, "nested key created");
    CHECK(c.lora.target_modules == (CT_LORA_WQKV | CT_LORA_WO), "list");
    CHECK(c.max_iters == 100 && strcmp(c.work_dir, "/tmp/x y") == 0, "max_iters, plain string with a space");
    CHECK(c.n_evaluation_inputs == 3 && strcmp(c.evaluation_inputs[0], "a") == 0 &&
              strcmp(c.evaluation_inputs[1], "B") == 0 && strcmp(c.evaluation_inputs[2], "C") == 0,
          "list items replaced and appended");
    CHECK(c.n_phases == 1 && c.phases[0].type == CT_SCHED_CONSTANT && c.phases[0].factor == 1.0 &&
              c.phases[0].end == 50, "schedule via --set");
    ct_config_free(&c);

    /* replacing what the file has: a string SYSTEM by a template, a null section by a key */
    char text[512];
    snprintf(text, sizeof text, "%sSYSTEM: old\nquantization: null\nmax_iters: 5\n", k_base);
    const char *s2[] = {"SYSTEM.template=coder", "quantization.bnb_4bit_quant_type=fp4", "max_iters=null",
                        "SYSTEM.template=sql"};
    CHECK_OK(parse_text(text, s2, 4, &c));
    CHECK(c.system_template && strcmp(c.system_template, "sql") == 0 && strcmp(c.system, ct_system_text("sql")) == 0,
          "SYSTEM.template");
    CHECK(c.quantization.load_in_4bit && c.quantization.quant_type == CT_QUANT_FP4 && c.max_iters == 0,
          "section from null, max_iters back to null");
    ct_config_free(&c);
    const char *s3[] = {"SYSTEM="};
    CHECK_OK(parse_text(text, s3, 1, &c));
    CHECK(strcmp(c.system, "") == 0, "empty value = null = no system");
    ct_config_free(&c);

    /* errors name the --set argument and the key */
    const char *e1[] = {"lora.rank=8"};
    expect_error("unknown path", k_base, e1, 1, "--set lora.rank=8: unknown key 'lora.rank' (expected one of: r, ");
    const char *e1b[] = {"lora.lora_dropuot=0.1"};
    expect_error("typo in a path", k_base, e1b, 1, "unknown key 'lora.lora_dropuot'; did you mean 'lora_dropout'?");
    const char *e2[] = {"learning_rate=1"};
    expect_error("unknown top key", k_base, e2, 1, "--set learning_rate=1: unknown key 'learning_rate'");
    const char *e3[] = {"lora.r"};
    expect_error("no =", k_base, e3, 1, "--set lora.r: expected KEY.PATH=VALUE");
    const char *e4[] = {"lr=abc"};
    expect_error("bad value", k_base, e4, 1, "--set lr=abc: lr: 'abc' is a string (expected a number > 0)");
    const char *e5[] = {"lr.x=1"};
    expect_error("path into a number", k_base, e5, 1, "--set lr.x=1: 'lr' is one value, it has no part 'x'");
    const char *e6[] = {"betas.x=1"};
    expect_error("list by name", k_base, e6, 1, "'betas' is a list: index it with a number");
    const char *e7[] = {"betas=[0.9, 0.95"};
    expect_error("YAML syntax in the value", k_base, e7, 1, "--set betas=[0.9, 0.95: YAML syntax error");
    const char *e8[] = {"param_scheduler.0.eta_min=0"};
    expect_error("index into an absent list", k_base, e8, 1, "'param_scheduler' is not given in the config");
    const char *e9[] = {"evaluation_inputs=[a]", "evaluation_inputs.3=x"};
    expect_error("index past the end", k_base, e9, 2, "index 3 is past the end of the list (it has 1 entries)");
    const char *e10[] = {"lora.r=0"};
    expect_error("range via --set", k_base, e10, 1, "--set lora.r=0: lora.r: '0' is out of range");
    const char *e11[] = {"lora..r=1"};
    expect_error("empty segment", k_base, e11, 1, "empty part in the key path");
}

/* A config with every setting away from its default, and strings that need escapes. */
static void test_round_trip(void) {
    const char *sets[] = {
        "use_varlen_attn=true", "data_format=conversation", "prompt_template=llama3_chat", "max_length=4096",
        "pack_to_max_length=false", "shuffle_before_pack=false", "skip_bad_records=true", "batch_size=3",
        "accumulative_counts=5", "dataloader_num_workers=2", "max_epochs=7", "max_iters=1234", "lr=0.1",
        "betas=[0.5, 0.123456789012345678]", "eps=1.0e-6", "weight_decay=0.01", "max_norm=0", "warmup_ratio=0.1",
        "param_scheduler=[{type: LinearLR, start_factor: 0.25, end_factor: 0.75, by_epoch: false, begin: 0, end: 10},"
        " {type: ConstantLR, factor: 0.5, by_epoch: false, begin: 10, end: 20},"
        " {type: CosineAnnealingLR, eta_min: 1.0e-7, T_max: 2.5, begin: 1.5}]",
        "save_steps=0", "save_total_limit=-1", "evaluation_freq=7", "evaluation_max_new_tokens=99",
        "SYSTEM=\"quote \\\" backslash \\\\ tab \\t nl \\n cr \\r bell \\a nel \\N ls \\L bom \\uFEFF 中文 😀\"",
        "evaluation_inputs=['', '  lead', 'trail  ', '#not a comment', 'null', '123', 'true', '- dash', ': colon']",
        "quantization={load_in_4bit: true, bnb_4bit_quant_type: fp4, bnb_4bit_use_double_quant: false,"
        " bnb_4bit_compute_dtype: float16, blocksize: 4096, quantize_output: true}",
        "lora={r: 3, lora_alpha: 0.5, lora_dropout: 0.25, target_modules: [output, w3], use_rslora: true,"
        " init_from: 'some dir/adapter'}",
        "gradient_checkpointing=false", "seed=123456789", "deterministic=true", "work_dir=\"w: d\"", "device=cuda",
        "optimizer_offload=cpu", "embedding_offload=none", "logging_interval=3"};
    ct_run_config c;
    CHECK_OK(parse_text(k_base, sets, (int)(sizeof sets / sizeof sets[0]), &c));
    CHECK(strstr(c.system, "\"") && strstr(c.system, "\xe2\x80\xa8") && strstr(c.system, "\x07"), "escapes read");
    CHECK(c.n_phases == 3 && c.phases[2].end < 0 && c.phases[2].T_max == 2.5, "phases read");
    check_round_trip("every setting changed", &c);
    ct_run_config d;
    ct_config_init(&d);
    CHECK(!ct_config_equal(&c, &d), "equality sees a difference");
    ct_config_free(&c);
    /* SYSTEM by template and the defaults */
    const char *s2[] = {"SYSTEM={template: medical}", "param_scheduler=[]"};
    CHECK_OK(parse_text(k_base, s2, 2, &c));
    check_round_trip("template SYSTEM, empty schedule", &c);
    ct_config_free(&c);
}

/* mmengine's recursive (chainable) schedulers, stepped once per iteration. */
static void mmengine_lrs(const ct_scheduler *s, double base, int64_t iters, double *out) {
    double lr = base;
    for (int64_t it = 0; it < iters; it++) {
        for (int k = 0; k < s->n; k++) {
            const ct_sched_span *p = &s->phase[k];
            if (it < p->begin || it >= p->end) continue;
            int64_t t = it - p->begin, total = p->end - p->begin - 1;
            if (p->kind == CT_SCHED_LINEAR)
                lr = t == 0 ? lr * p->start_factor
                            : lr * (1. + (p->end_factor - p->start_factor) /
                                             ((double)total * p->start_factor +
                                              (double)(t - 1) * (p->end_factor - p->start_factor)));
            else if (p->kind == CT_SCHED_COSINE)
                lr = t == 0 ? lr
                            : (1 + cos(M_PI * (double)t / p->t_max)) / (1 + cos(M_PI * (double)(t - 1) / p->t_max)) *
                                      (lr - p->eta_min) + p->eta_min;
            else
                lr = t == 0 ? lr * p->factor : t == total ? lr / p->factor : lr;
        }
        out[it] = lr;
    }
}

static void test_schedule(void) {
    ct_run_config c;
    CHECK_OK(parse_text(k_base, NULL, 0, &c));
    /* XTuner's 7B run on 1000 packed rows: 3000 iterations, 188 optimizer steps */
    CHECK(ct_config_iters_per_epoch(&c, 1000) == 1000 && ct_config_total_iters(&c, 1000) == 3000, "iterations");
    CHECK(ct_config_total_steps(&c, 1000) == 188, "steps %lld", (long long)ct_config_total_steps(&c, 1000));
    CHECK(ct_config_step_last_iter(&c, 0, 3000) == 15 && ct_config_step_last_iter(&c, 187, 3000) == 2999,
          "last iteration of a step (the last window is short)");
    ct_scheduler s;
    const ct_sched_span *sp = s.phase;
    CHECK_OK(ct_config_scheduler(&c, 1000, 3000, &s));
    CHECK(s.n == 2 && sp[0].begin == 0 && sp[0].end == 90 && sp[1].begin == 90 && sp[1].end == 3000 &&
              sp[1].t_max == 2910, "0.03 * 3 epochs of 1000 = 90 warm-up iterations");
    ct_config_free(&c);

    /* warmup_ratio 0.03 over 1000 iterations: 30 warm-up iterations, cosine to the end */
    const char *one[] = {"max_epochs=1"};
    CHECK_OK(parse_text(k_base, one, 1, &c));
    CHECK_OK(ct_config_scheduler(&c, 1000, 1000, &s));
    CHECK(s.n == 2 && sp[0].end == 30 && sp[1].begin == 30 && sp[1].end == 1000, "30 warm-up iterations");
    double base = c.lr;
    CHECK(fabs(ct_sched_lr_at(&s, 0) - base * 1e-5) < 1e-20, "first iteration: start_factor");
    CHECK(ct_sched_lr_at(&s, 29) == base, "end of warm-up: the full LR");
    CHECK(ct_sched_lr_at(&s, 30) == base, "cosine starts at the LR");
    CHECK(fabs(ct_sched_lr_at(&s, 515) - base * 0.5) < 1e-15, "cosine half-way");
    double last = base * (1 + cos(M_PI * 969.0 / 970.0)) / 2;
    CHECK(fabs(ct_sched_lr_at(&s, 999) - last) < 1e-18, "cosine end");
    CHECK(ct_sched_lr_at(&s, 5000) == ct_sched_lr_at(&s, 999), "after the end: unchanged");
    /* an epoch that does not divide evenly: int(0.03 * 333) = 9 */
    CHECK_OK(ct_config_scheduler(&c, 333, 333, &s));
    CHECK(s.n == 2 && sp[0].end == 9, "int() truncation: %lld", (long long)sp[0].end);
    /* a warm-up shorter than one iteration is skipped */
    CHECK_OK(ct_config_scheduler(&c, 20, 20, &s));
    CHECK(s.n == 1 && sp[0].kind == CT_SCHED_COSINE && sp[0].begin == 0, "no warm-up on 20 iterations");
    ct_config_free(&c);

    /* max_iters: the default schedule counts iterations */
    const char *mi[] = {"max_iters=300"};
    CHECK_OK(parse_text(k_base, mi, 1, &c));
    CHECK(ct_config_total_iters(&c, 10) == 300 && ct_config_total_steps(&c, 10) == 19, "max_iters overrides epochs");
    CHECK_OK(ct_config_scheduler(&c, 10, 300, &s));
    CHECK(s.n == 2 && sp[0].end == 9 && sp[1].end == 300, "warm-up 0.03 * 300");
    ct_config_free(&c);

    /* the closed form equals mmengine's recursion at every iteration; mixed units */
    const char *mix[] = {"param_scheduler=[{type: LinearLR, start_factor: 0.2, end_factor: 0.9, end: 0.25},"
                         " {type: ConstantLR, factor: 0.5, by_epoch: false, begin: 10, end: 15},"
                         " {type: CosineAnnealingLR, eta_min: 1.0e-6, begin: 0.5, end: 2.5}]",
                         "batch_size=3"};
    CHECK_OK(parse_text(k_base, mix, 2, &c));
    int64_t ipe = ct_config_iters_per_epoch(&c, 100), total = ct_config_total_iters(&c, 100);
    CHECK(ipe == 34 && total == 102, "ipe %lld total %lld", (long long)ipe, (long long)total);
    CHECK_OK(ct_config_scheduler(&c, ipe, total, &s));
    CHECK(s.n == 3 && sp[0].end == 8 && sp[1].begin == 10 && sp[1].end == 15 && sp[2].begin == 17 && sp[2].end == 85,
          "conversion: int(0.25 * 34) = 8, int(0.5 * 34) = 17, int(2.5 * 34) = 85");
    double want[200];
    mmengine_lrs(&s, c.lr, total, want);
    double worst = 0;
    for (int64_t it = 0; it < total; it++) {
        double got = ct_sched_lr_at(&s, it), e = fabs(got - want[it]) / want[it];
        if (e > worst) worst = e;
    }
    CHECK(worst < 1e-12, "closed form vs mmengine recursion: worst relative error %g", worst);
    CHECK(ct_sched_lr_at(&s, 12) == ct_sched_lr_at(&s, 8) * 0.5 &&
              ct_sched_lr_at(&s, 14) == ct_sched_lr_at(&s, 8), "ConstantLR restores at its end");
    ct_config_free(&c);
    const char *ov[] = {"param_scheduler=[{type: LinearLR, end: 0.5}, {type: ConstantLR, factor: 1.0, by_epoch: false,"
                        " begin: 10, end: 20}]"}; /* 0.5 epochs of 100 = 50 iterations > 10 */
    CHECK_OK(parse_text(k_base, ov, 1, &c));
    CHECK(ct_config_scheduler(&c, 100, 300, &s) == CT_EINPUT && strstr(ct_last_error(), "overlap"),
          "overlap after conversion: %s", ct_last_error());
    CHECK(ct_config_scheduler(&c, 0, 0, &s) == CT_EINPUT, "no iterations per epoch");
    ct_config_free(&c);
}

/* tests/data/configs/NAME.yaml: line 1 is "# expect: <message part>". */
static void test_broken_configs(void) {
    char dir[CT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/tests/data/configs", CT_SOURCE_DIR);
    DIR *d = opendir(dir);
    CHECK(d != NULL, "%s missing", dir);
    if (!d) return;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, ".yaml")) continue;
        char path[CT_PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *text = NULL;
        size_t len = 0;
        if (ct_file_read_all(path, &text, &len)) continue;
        char want[512] = "";
        if (strncmp(text, "# expect: ", 10) == 0) sscanf(text + 10, "%511[^\n]", want);
        CHECK(want[0], "%s: no '# expect:' line", e->d_name);
        ct_run_config c;
        int rc = ct_config_load(path, NULL, 0, &c);
        CHECK(rc == CT_EINPUT, "%s: rc %d (want CT_EINPUT)", e->d_name, rc);
        if (!rc) ct_config_free(&c);
        const char *msg = ct_last_error();
        CHECK(want[0] && strstr(msg, want), "%s:\n  got:  %s\n  want: %s", e->d_name, msg, want);
        CHECK(strncmp(msg, path, strlen(path)) == 0, "%s: the message does not start with the file: %s", e->d_name,
              msg);
        free(text);
        n++;
    }
    closedir(d);
    CHECK(n >= 40, "only %d broken configs", n);
}

static void doc_has_key(const char *path, void *ctx) {
    char needle[320];
    snprintf(needle, sizeof needle, "`%s`", path);
    CHECK(strstr((const char *)ctx, needle) != NULL, "docs/CONFIG.md does not document %s", needle);
}

static void test_docs(void) {
    char path[CT_PATH_MAX];
    snprintf(path, sizeof path, "%s/docs/CONFIG.md", CT_SOURCE_DIR);
    char *doc = NULL;
    size_t len = 0;
    CHECK_OK(ct_file_read_all(path, &doc, &len));
    if (doc) ct_config_each_key(doc_has_key, doc);
    free(doc);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/ct_test_config.XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    test_shipped_configs();
    test_defaults();
    test_anchors();
    test_overrides();
    test_round_trip();
    test_schedule();
    test_broken_configs();
    test_docs();
    ct_remove_tree(g_tmp);
    return ct_test_finish();
}
