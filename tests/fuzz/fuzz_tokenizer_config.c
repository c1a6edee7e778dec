/* Fuzz target: tokenizer_config.json (added_tokens_decoder, bos/eos/pad,
 * add_bos_token, ...) beside the stories260k tokenizer.model, loaded by
 * ct_tok_load; an accepted tokenizer then encodes and decodes a text holding
 * its special strings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static char g_dir[1100];
static uint8_t *g_model;
static size_t g_model_len;

static void setup(void) {
    char p[1024];
    snprintf(p, sizeof p, "%s/stories260k-internlm2/tokenizer.model", fz_fixtures());
    FILE *f = fopen(p, "rb");
    if (!f) {
        perror(p);
        abort();
    }
    fseek(f, 0, SEEK_END);
    g_model_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g_model = malloc(g_model_len);
    if (!g_model || fread(g_model, 1, g_model_len, f) != g_model_len) abort();
    fclose(f);
    fz_write("tokenizer.model", g_model, g_model_len);
    snprintf(g_dir, sizeof g_dir, "%s", fz_dir());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_model) setup();
    fz_write("tokenizer_config.json", data, size);
    ct_tokenizer *t = NULL;
    if (ct_tok_load(g_dir, &t) != 0) return 0;
    static const char text[] = "<s>Hello <|im_start|>user\nworld</s><unk> [UNUSED_TOKEN_145]\xff";
    ct_ids ids = {0};
    if (ct_tok_encode(t, text, sizeof text - 1, ct_tok_add_bos_token(t), &ids) == 0) fz_check_encoded(t, &ids);
    ct_ids_free(&ids);
    int32_t special[4] = {ct_tok_bos_id(t), ct_tok_eos_id(t), ct_tok_pad_id(t), ct_tok_unk_id(t)};
    for (int i = 0; i < 4; i++)
        if (special[i] >= 0) fz_assert(special[i] < ct_tok_vocab_size(t), "special ids inside the vocabulary");
    ct_tok_free(t);
    return 0;
}
