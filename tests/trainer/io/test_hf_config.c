/* config.json parsing: every real config in the fixtures (key numbers as
 * published), parameter counts against the real checkpoints' sizes, defaults,
 * write-back, and broken configs refused with the file, the field and (for bad
 * JSON) the line and column. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/hf_config.h"

static bool g_missing_fixture;

typedef struct {
    const char *file;
    int64_t D, I, L, H, KV, V, maxpos, pad;
    double theta, eps;
    ct_rope_scaling_type rope;
    double factor;
    const char *dtype;
} want_cfg;

static void test_fixture_configs(void) {
    /* numbers as published in each config.json (see fixtures/README.md) */
    const want_cfg want[] = {
        {"model-configs/internlm2-chat-1_8b.config.json", 2048, 8192, 24, 16, 8, 92544, 32768, 2, 1e6, 1e-5,
         CT_ROPE_SCALING_DYNAMIC, 2.0, "bfloat16"},
        {"model-configs/internlm2-chat-7b.config.json", 4096, 14336, 32, 32, 8, 92544, 32768, 2, 1e6, 1e-5,
         CT_ROPE_SCALING_NONE, 1.0, "bfloat16"},
        {"model-configs/internlm2-chat-20b.config.json", 6144, 16384, 48, 48, 8, 92544, 32768, 2, 1e6, 1e-5,
         CT_ROPE_SCALING_NONE, 1.0, "float16"},
        {"model-configs/internlm2_5-7b-chat.config.json", 4096, 14336, 32, 32, 8, 92544, 32768, 2, 1e6, 1e-5,
         CT_ROPE_SCALING_DYNAMIC, 2.0, "bfloat16"},
        {"model-configs/internlm2_5-20b-chat.config.json", 6144, 16384, 48, 48, 8, 92544, 32768, 2, 5e7, 1e-5,
         CT_ROPE_SCALING_DYNAMIC, 2.5, "float16"},
        {"internlm2-chat-7b/config.json", 4096, 14336, 32, 32, 8, 92544, 32768, 2, 1e6, 1e-5, CT_ROPE_SCALING_NONE,
         1.0, "bfloat16"},
        {"stories260k-internlm2/config.json", 64, 172, 5, 8, 4, 512, 512, 0, 1e4, 1e-5, CT_ROPE_SCALING_NONE, 1.0,
         "float32"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const want_cfg *w = &want[i];
        char p[CT_PATH_MAX];
        if (!ct_fixture(w->file, p, sizeof p)) {
            g_missing_fixture = true;
            continue;
        }
        ct_hf_config c;
        CHECK_OK(ct_hf_config_load(p, &c));
        CHECK(c.hidden_size == w->D && c.intermediate_size == w->I && c.num_hidden_layers == w->L, "%s sizes", w->file);
        CHECK(c.num_attention_heads == w->H && c.num_key_value_heads == w->KV && c.vocab_size == w->V, "%s heads/vocab",
              w->file);
        CHECK(c.head_dim == w->D / w->H, "%s head_dim %lld", w->file, (long long)c.head_dim);
        CHECK(c.max_position_embeddings == w->maxpos, "%s max_position_embeddings", w->file);
        CHECK(c.rope_theta == w->theta && c.rms_norm_eps == w->eps, "%s theta %g eps %g", w->file, c.rope_theta,
              c.rms_norm_eps);
        CHECK(c.rope_scaling == w->rope && c.rope_scaling_factor == w->factor, "%s rope_scaling %d %g", w->file,
              c.rope_scaling, c.rope_scaling_factor);
        CHECK(strcmp(c.torch_dtype, w->dtype) == 0, "%s torch_dtype %s", w->file, c.torch_dtype);
        CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && c.pad_token_id == w->pad, "%s token ids", w->file);
        CHECK(!c.bias && !c.tie_word_embeddings && strcmp(c.hidden_act, "silu") == 0, "%s bias/tie/act", w->file);
        CHECK(strcmp(c.model_type, "internlm2") == 0 && strcmp(c.architecture, "InternLM2ForCausalLM") == 0,
              "%s identity", w->file);
        CHECK(c.initializer_range == 0.02, "%s initializer_range %g", w->file, c.initializer_range);
        CHECK(c.quantization_config == NULL && c.raw != NULL, "%s raw", w->file);
        ct_hf_config_free(&c);
    }
    /* The parameter count against the real 7B checkpoint: total_size of its
     * bf16 shards (model.safetensors.index.json) is 2 bytes per parameter. */
    char p[CT_PATH_MAX];
    if (ct_fixture("internlm2-chat-7b", p, sizeof p)) {
        ct_hf_config c;
        CHECK_OK(ct_hf_config_load(p, &c)); /* the directory form */
        CHECK(ct_hf_config_num_params(&c) == 15475417088ll / 2, "7B params %lld", (long long)ct_hf_config_num_params(&c));
        ct_hf_config_free(&c);
    } else {
        g_missing_fixture = true;
    }
}

static char g_dir[256];

/* Parses `text` from a file (so messages carry a real path); returns the status. */
static int parse_file(const char *text, ct_hf_config *c) {
    char path[CT_PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", g_dir);
    if (ct_file_write_atomic(path, text, strlen(text))) return -1;
    return ct_hf_config_load(path, c);
}

#define BASE "\"model_type\": \"internlm2\", \"vocab_size\": 100, \"num_hidden_layers\": 2, \"intermediate_size\": 40"

static void expect_bad(const char *text, const char *sub1, const char *sub2) {
    ct_hf_config c;
    int rc = parse_file(text, &c);
    CHECK(rc == CT_EINPUT, "rc %d for %s", rc, text);
    CHECK(strstr(ct_last_error(), sub1) != NULL, "'%s' not in: %s", sub1, ct_last_error());
    if (sub2) CHECK(strstr(ct_last_error(), sub2) != NULL, "'%s' not in: %s", sub2, ct_last_error());
    CHECK(strstr(ct_last_error(), "config.json") != NULL, "file not named: %s", ct_last_error());
    CHECK(c.raw == NULL, "nothing kept on error");
    if (rc == CT_OK) ct_hf_config_free(&c);
}

static void test_broken(void) {
    expect_bad("{" BASE ", \"num_attention_heads\": 4}", "missing field \"hidden_size\"", NULL);
    expect_bad("{" BASE ", \"hidden_size\": \"64\", \"num_attention_heads\": 4}", "\"hidden_size\"", "must be an integer");
    expect_bad("{" BASE ", \"hidden_size\": 64.0, \"num_attention_heads\": 4}", "\"hidden_size\"", "a real number");
    expect_bad("{" BASE ", \"hidden_size\": -64, \"num_attention_heads\": 4}", "\"hidden_size\"", "must be in 1..");
    expect_bad("{\n  \"hidden_size\": 64,\n  \"num_attention_heads\": 4\n  \"x\": 1\n}", "config.json:4:", "invalid JSON");
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 5}", "num_attention_heads (5)",
               "hidden_size (64)");
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 8, \"num_key_value_heads\": 3}",
               "num_key_value_heads (3)", NULL);
    expect_bad("{" BASE ", \"hidden_size\": 24, \"num_attention_heads\": 8}", "head_dim", "even");
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"hidden_act\": \"gelu\"}", "hidden_act",
               "gelu");
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_scaling\": {\"type\": \"yarn\", "
               "\"factor\": 2}}", "rope_scaling", "yarn");
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_scaling\": {\"type\": \"linear\"}}",
               "factor", NULL);
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_scaling\": 2}", "rope_scaling", NULL);
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 10, \"num_hidden_layers\": 1, \"intermediate_size\": 4, "
               "\"hidden_size\": 8, \"num_attention_heads\": 2}", "model_type 'llama'", NULL);
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"bias\": \"no\"}", "\"bias\"",
               "true or false");
    expect_bad("{" BASE ", \"hidden_size\": 64, \"hidden_size\": 32, \"num_attention_heads\": 4}", "duplicate", NULL);
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"torch_dtype\": \"int8\"}", "torch_dtype",
               NULL);
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rms_norm_eps\": 0}", "rms_norm_eps", NULL);
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"eos_token_id\": -3}", "eos_token_id", NULL);
    expect_bad("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"quantization_config\": []}",
               "quantization_config", NULL);
    expect_bad("[1, 2]", "JSON object", NULL);
    expect_bad("{\"model_type\": \"internlm2\", \"vocab_size\": 10, \"num_hidden_layers\": 3000000000, "
               "\"intermediate_size\": 4, \"hidden_size\": 8, \"num_attention_heads\": 2}", "\"num_hidden_layers\"",
               "must be in 1..");
    /* a missing file is CT_EINPUT naming it */
    ct_hf_config c;
    CHECK(ct_hf_config_load("/nonexistent/ct/config.json", &c) == CT_EINPUT &&
              strstr(ct_last_error(), "/nonexistent/ct/config.json"),
          "%s", ct_last_error());
}

static void test_defaults_and_extras(void) {
    ct_hf_config c;
    /* InternLM2Config defaults for everything optional */
    CHECK_OK(parse_file("{\"architectures\": [\"InternLM2ForCausalLM\"], \"vocab_size\": 100, \"hidden_size\": 64, "
                        "\"intermediate_size\": 40, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}", &c));
    CHECK(c.num_key_value_heads == 4 && c.max_position_embeddings == 2048 && c.rms_norm_eps == 1e-6 &&
              c.rope_theta == 10000.0 && c.bias && !c.tie_word_embeddings && c.bos_token_id == 1 &&
              c.eos_token_id == 2 && c.pad_token_id == 0 && c.initializer_range == 0.02 && c.torch_dtype[0] == 0,
          "defaults");
    /* with bias: wqkv.bias [(4+2*4)*16] + wo.bias [64] per layer */
    int64_t D = 64, per = 192 * 64 + 64 * 64 + 3 * 40 * 64 + 2 * 64 + 192 + 64;
    CHECK(ct_hf_config_num_params(&c) == 2 * 100 * D + 2 * per + D, "params with bias %lld",
          (long long)ct_hf_config_num_params(&c));
    ct_hf_config_free(&c);
    /* rope_type spelling, null kv heads, eos list, null pad, tied embeddings, quantization_config kept */
    CHECK_OK(parse_file("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": null, "
                        "\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 4}, \"eos_token_id\": [2, 92542], "
                        "\"pad_token_id\": null, \"tie_word_embeddings\": true, \"bias\": false, \"quantization_config\": "
                        "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}}", &c));
    CHECK(c.num_key_value_heads == 4 && c.rope_scaling == CT_ROPE_SCALING_LINEAR && c.rope_scaling_factor == 4.0,
          "rope_type linear");
    CHECK(c.eos_token_id == 2 && c.pad_token_id == -1 && c.tie_word_embeddings, "ids/tie");
    CHECK(c.quantization_config && strcmp(json_string_value(json_object_get(c.quantization_config, "quant_method")),
                                          "bitsandbytes") == 0, "quantization_config");
    int64_t per2 = 192 * 64 + 64 * 64 + 3 * 40 * 64 + 2 * 64;
    CHECK(ct_hf_config_num_params(&c) == 100 * D + 2 * per2 + D, "tied params");
    /* write-back keeps every field and sets torch_dtype */
    char out[CT_PATH_MAX];
    snprintf(out, sizeof out, "%s/written.json", g_dir);
    CHECK_OK(ct_hf_config_write(&c, out, "bfloat16"));
    ct_hf_config c2;
    CHECK_OK(ct_hf_config_load(out, &c2));
    CHECK(strcmp(c2.torch_dtype, "bfloat16") == 0 && c2.hidden_size == 64 && c2.rope_scaling_factor == 4.0 &&
              c2.quantization_config && c2.pad_token_id == -1 && c2.tie_word_embeddings,
          "write-back");
    ct_hf_config_free(&c2);
    ct_hf_config_free(&c);
    unlink(out);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_test_cfg_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_fixture_configs();
    test_broken();
    test_defaults_and_extras();
    ct_remove_tree(g_dir);
    int rc = ct_test_finish();
    return rc == 0 && g_missing_fixture ? CT_TEST_SKIP : rc;
}
