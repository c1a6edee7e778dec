/* Templates and the turns -> ids/labels step (TEMPLATES.md), with the real
 * InternLM2 tokenizer. Expected ids are written out by hand from pieces:
 *   <s>=1, </s>=2, <|im_start|>=92543, <|im_end|>=92542 (tokenizer_config.json);
 *   single-line pieces from `spm_encode --model=tokenizer.model --output_format=id`:
 *     "user"=1008 "system"=9081 "assistant"=525 11353 "Hello"=9843
 *     "Hi there"=13195 1194 "You are a bot."=2770 657 395 11074 281
 *     "How are you?"=4500 657 629 345 "Fine, thanks."=311 613 328 9467 281
 *     "<|System|>:"=333 352 2472 352 27232 "<|User|>:"=333 352 1621 352 27232
 *     "<|Bot|>:"=333 352 23845 352 27232 "[INST] Hello [/INST]"=336 819 917 332
 *     22190 640 301 819 917 332 "<|eot_id|>"=333 352 261 485 978 352 330
 *   pieces with newlines (spm_encode reads line by line, so these come from
 *   `ctuner tokenize DIR --no-bos`, whose parity with sentencepiece
 *   test_tokenizer checks): "\n"=364, "\n\n" is one piece, ".\n"=756,
 *   "?\n"=5426, ">\n\n"=1485.
 * The label pattern is asserted exactly: every span is marked M (masked,
 * -100) or T (trained, label = id). */
#include <stdlib.h>
#include <string.h>

#include "datasets/encode.h"
#include "datasets/render.h"
#include "datasets/template.h"
#include "datasets/tokenizer.h"
#include "testutil.h"

#define M 0
#define T 1

typedef struct {
    const int32_t *v;
    size_t n;
    int trained;
} span;

#define SPAN(arr, tr) {arr, sizeof arr / sizeof arr[0], tr}

/* Builds the expected ids/labels from hand-written spans and compares. */
static void check_encoding(const char *what, const ct_ids *ids, const ct_ids *labels, const span *sp, size_t n_sp) {
    size_t n = 0;
    for (size_t k = 0; k < n_sp; k++) n += sp[k].n;
    CHECK(ids->n == n && labels->n == n, "%s: %zu ids / %zu labels, want %zu", what, ids->n, labels->n, n);
    if (ids->n != n || labels->n != n) {
        fprintf(stderr, "  got:");
        for (size_t i = 0; i < ids->n; i++) fprintf(stderr, " %d/%d", ids->v[i], labels->v[i]);
        fprintf(stderr, "\n");
        return;
    }
    size_t t = 0;
    int bad = 0;
    for (size_t k = 0; k < n_sp; k++)
        for (size_t i = 0; i < sp[k].n; i++, t++) {
            int32_t want_label = sp[k].trained ? sp[k].v[i] : -100;
            if (ids->v[t] != sp[k].v[i] || labels->v[t] != want_label) {
                if (bad++ < 5)
                    fprintf(stderr, "%s: token %zu (span %zu): got %d/%d, want %d/%d\n", what, t, k, ids->v[t],
                            labels->v[t], sp[k].v[i], want_label);
            }
        }
    CHECK(bad == 0, "%s: %d tokens differ", what, bad);
}

static void encode(const ct_tokenizer *tok, const char *tmpl, const char *system, int64_t max_length,
                   const ct_turn *turns, size_t n_turns, ct_ids *ids, ct_ids *labels, ct_encode_info *info) {
    ct_encode_opts o = {tok, ct_template_find(tmpl), system, max_length};
    ct_conv c = {.turns = (ct_turn *)turns, .n_turns = n_turns};
    CHECK_OK(ct_encode_conv(&o, &c, ids, labels, info));
}

static const int32_t BOS[] = {1}, EOS[] = {2}, NL[] = {364};
/* <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n */
static const int32_t IM_IN_HELLO[] = {92543, 1008, 364, 9843, 92542, 364, 92543, 525, 11353, 364};
/* <|im_start|>system\nYou are a bot.<|im_end|>\n */
static const int32_t IM_SYS_BOT[] = {92543, 9081, 364, 2770, 657, 395, 11074, 281, 92542, 364};
/* Hi there<|im_end|> */
static const int32_t IM_OUT_HI[] = {13195, 1194, 92542};
/* <|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n */
static const int32_t IM_IN_HOW[] = {92543, 1008, 364, 4500, 657, 629, 345, 92542, 364, 92543, 525, 11353, 364};
/* Fine, thanks.<|im_end|> */
static const int32_t IM_OUT_FINE[] = {311, 613, 328, 9467, 281, 92542};

static const ct_turn TURN_HELLO = {NULL, (char *)"Hello", (char *)"Hi there", true};
static const ct_turn TURN_HOW = {NULL, (char *)"How are you?", (char *)"Fine, thanks.", true};

static void test_template_table(void) {
    const char *const *names = ct_template_names();
    const char *want[] = {"internlm2_chat", "qwen_chat", "llama3_chat", "default", "llama2_chat"};
    size_t n = 0;
    while (names[n]) n++;
    CHECK(n == 5, "%zu template names", n);
    for (size_t i = 0; i < 5 && i < n; i++)
        CHECK(strcmp(names[i], want[i]) == 0 && ct_template_find(want[i]), "template %s", want[i]);

    const ct_template *t = ct_template_find("internlm2_chat");
    CHECK(t && strcmp(t->system, "<|im_start|>system\n{system}<|im_end|>\n") == 0, "internlm2 SYSTEM");
    CHECK(t && strcmp(t->instruction, "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n") == 0,
          "internlm2 INSTRUCTION");
    CHECK(t && strcmp(t->suffix, "<|im_end|>") == 0 && t->suffix_as_eos && strcmp(t->sep, "\n") == 0,
          "internlm2 suffix/sep");
    CHECK(t && t->stop_words[0] && strcmp(t->stop_words[0], "<|im_end|>") == 0 && !t->stop_words[1],
          "internlm2 stop words");
    const ct_template *q = ct_template_find("qwen_chat");
    CHECK(q && q->stop_words[1] && strcmp(q->stop_words[1], "<|endoftext|>") == 0 && !q->stop_words[2],
          "qwen stop words");
    const ct_template *d = ct_template_find("default");
    CHECK(d && !d->suffix[0] && !d->suffix_as_eos && !d->stop_words[0], "default has no suffix/stop words");
    const ct_template *l3 = ct_template_find("llama3_chat");
    CHECK(l3 && !l3->sep[0] && l3->suffix_as_eos && strcmp(l3->stop_words[0], "<|eot_id|>") == 0, "llama3");
    CHECK(ct_template_find("nope") == NULL, "unknown template");

    const ct_template *got;
    CHECK(ct_template_get("chatml", "cfg.yaml: prompt_template", &got) == CT_EINPUT, "unknown template error");
    CHECK(strstr(ct_last_error(), "cfg.yaml: prompt_template") && strstr(ct_last_error(), "'chatml'") &&
              strstr(ct_last_error(), "internlm2_chat, qwen_chat"),
          "message: %s", ct_last_error());

    CHECK(ct_system_text("alpaca") &&
              strcmp(ct_system_text("alpaca"), "Below is an instruction that describes a task. Write a response "
                                               "that appropriately completes the request.\n") == 0,
          "alpaca system text");
    CHECK(ct_system_text("medical") && ct_system_text("nope") == NULL, "system names");

    char *s;
    size_t len;
    CHECK_OK(ct_template_render_input(t, "Be brief.", "2+2={input}?", &s, &len));
    const char *want_in = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2={input}?<|im_end|>\n"
                          "<|im_start|>assistant\n";
    CHECK(strcmp(s, want_in) == 0 && len == strlen(want_in), "render with system: %s", s);
    free(s);
    CHECK_OK(ct_template_render_input(t, "", "x", &s, NULL));
    CHECK(strcmp(s, "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n") == 0, "empty system: %s", s);
    free(s);
    CHECK_OK(ct_template_render_output(d, "ok", &s, NULL));
    CHECK(strcmp(s, "ok") == 0, "default output: %s", s);
    free(s);
    CHECK_OK(ct_template_render_output(t, "ok", &s, NULL));
    CHECK(strcmp(s, "ok<|im_end|>") == 0, "internlm2 output: %s", s);
    free(s);
}

static void test_internlm2(const ct_tokenizer *tok) {
    ct_ids ids = {0}, labels = {0};
    ct_encode_info info;

    /* One turn, no system: the TEMPLATES.md example. */
    encode(tok, "internlm2_chat", NULL, 2048, &TURN_HELLO, 1, &ids, &labels, &info);
    span a[] = {SPAN(BOS, M), SPAN(IM_IN_HELLO, M), SPAN(IM_OUT_HI, T), SPAN(NL, M)};
    check_encoding("internlm2 one turn", &ids, &labels, a, 4);
    CHECK(!info.truncated && info.n_trained == 3, "info: truncated %d trained %lld", info.truncated,
          (long long)info.n_trained);

    /* qwen_chat renders the same strings (TEMPLATES.md). */
    encode(tok, "qwen_chat", NULL, 2048, &TURN_HELLO, 1, &ids, &labels, &info);
    check_encoding("qwen one turn", &ids, &labels, a, 4);

    /* System prompt from the turn, and from the default system. */
    ct_turn with_sys = TURN_HELLO;
    with_sys.system = (char *)"You are a bot.";
    encode(tok, "internlm2_chat", NULL, 2048, &with_sys, 1, &ids, &labels, &info);
    span b[] = {SPAN(BOS, M), SPAN(IM_SYS_BOT, M), SPAN(IM_IN_HELLO, M), SPAN(IM_OUT_HI, T), SPAN(NL, M)};
    check_encoding("internlm2 system", &ids, &labels, b, 5);
    encode(tok, "internlm2_chat", "You are a bot.", 2048, &TURN_HELLO, 1, &ids, &labels, &info);
    check_encoding("internlm2 default system", &ids, &labels, b, 5);

    /* Two turns: one BOS (the suffix is the EOS), SEP after each turn. The
     * default system goes to the first turn only. */
    ct_turn two[] = {TURN_HELLO, TURN_HOW};
    encode(tok, "internlm2_chat", "You are a bot.", 2048, two, 2, &ids, &labels, &info);
    span c[] = {SPAN(BOS, M),     SPAN(IM_SYS_BOT, M),  SPAN(IM_IN_HELLO, M), SPAN(IM_OUT_HI, T),
                SPAN(NL, M),      SPAN(IM_IN_HOW, M),   SPAN(IM_OUT_FINE, T), SPAN(NL, M)};
    check_encoding("internlm2 two turns", &ids, &labels, c, 8);
    CHECK(info.n_trained == 3 + 6, "trained %lld", (long long)info.n_trained);

    /* An untrained output (openai loss:false): its suffix is masked too. */
    two[0].output_loss = false;
    encode(tok, "internlm2_chat", "You are a bot.", 2048, two, 2, &ids, &labels, &info);
    c[3].trained = M;
    check_encoding("internlm2 loss false", &ids, &labels, c, 8);
    CHECK(info.n_trained == 6, "trained %lld", (long long)info.n_trained);
    two[0].output_loss = true;
    c[3].trained = T;

    /* Cut at max_length: 1 + 10 + 10 + 2 tokens keep "Hi there" of turn 1. */
    encode(tok, "internlm2_chat", "You are a bot.", 23, two, 2, &ids, &labels, &info);
    static const int32_t HI[] = {13195, 1194};
    span d[] = {SPAN(BOS, M), SPAN(IM_SYS_BOT, M), SPAN(IM_IN_HELLO, M), SPAN(HI, T)};
    check_encoding("internlm2 truncated", &ids, &labels, d, 4);
    CHECK(info.truncated && info.n_trained == 2, "truncated %d trained %lld", info.truncated,
          (long long)info.n_trained);
    /* Cut before any output: nothing trained (the sample would be dropped). */
    encode(tok, "internlm2_chat", NULL, 11, &TURN_HELLO, 1, &ids, &labels, &info);
    CHECK(ids.n == 11 && info.truncated && info.n_trained == 0, "cut to input only: %zu %lld", ids.n,
          (long long)info.n_trained);
    /* Exactly max_length long: not truncated. */
    encode(tok, "internlm2_chat", NULL, 15, &TURN_HELLO, 1, &ids, &labels, &info);
    CHECK(ids.n == 15 && !info.truncated, "exact fit: %zu %d", ids.n, info.truncated);
    /* A cut that falls on a turn boundary still counts as a cut. */
    encode(tok, "internlm2_chat", NULL, 15, two, 2, &ids, &labels, &info);
    CHECK(ids.n == 15 && info.truncated, "cut at a turn boundary: %zu %d", ids.n, info.truncated);

    ct_ids_free(&ids);
    ct_ids_free(&labels);
}

static void test_other_templates(const ct_tokenizer *tok) {
    ct_ids ids = {0}, labels = {0};
    ct_encode_info info;
    ct_turn two[] = {TURN_HELLO, TURN_HOW};
    two[0].system = (char *)"You are a bot.";

    /* default: no suffix, so EOS (trained) ends each answer and BOS opens the
     * next turn; SEP "\n" masked after each. */
    encode(tok, "default", NULL, 2048, two, 2, &ids, &labels, &info);
    /* <|System|>:You are a bot.\n<|User|>:Hello\n<|Bot|>: */
    static const int32_t D_IN1[] = {333, 352, 2472, 352, 27232, 2770, 657, 395, 11074, 756,
                                    333, 352, 1621, 352, 27232, 9843, 364, 333, 352, 23845, 352, 27232};
    static const int32_t D_OUT1[] = {13195, 1194};
    /* <|User|>:How are you?\n<|Bot|>: */
    static const int32_t D_IN2[] = {333, 352, 1621, 352, 27232, 4500, 657, 629, 5426, 333, 352, 23845, 352, 27232};
    static const int32_t D_OUT2[] = {311, 613, 328, 9467, 281};
    span a[] = {SPAN(BOS, M), SPAN(D_IN1, M), SPAN(D_OUT1, T), SPAN(EOS, T), SPAN(NL, M),
                SPAN(BOS, M), SPAN(D_IN2, M), SPAN(D_OUT2, T), SPAN(EOS, T), SPAN(NL, M)};
    check_encoding("default two turns", &ids, &labels, a, 10);

    /* llama2_chat without a system: [INST] Hello [/INST] / Hi there </s> \n */
    encode(tok, "llama2_chat", NULL, 2048, &TURN_HELLO, 1, &ids, &labels, &info);
    static const int32_t L2_IN[] = {336, 819, 917, 332, 22190, 640, 301, 819, 917, 332};
    span b[] = {SPAN(BOS, M), SPAN(L2_IN, M), SPAN(D_OUT1, T), SPAN(EOS, T), SPAN(NL, M)};
    check_encoding("llama2 one turn", &ids, &labels, b, 5);

    /* llama3_chat (its header tokens are plain text for this tokenizer):
     * suffix <|eot_id|> trained and acting as EOS, no SEP. */
    encode(tok, "llama3_chat", NULL, 2048, &TURN_HELLO, 1, &ids, &labels, &info);
    /* <|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n */
    static const int32_t L3_IN[] = {333, 352, 2622, 8895, 978, 352, 330, 1008, 333, 352, 538, 8895, 978, 352,
                                    1485, 9843, 333, 352, 261, 485, 978, 352, 1936, 352, 2622, 8895, 978, 352,
                                    330, 525, 11353, 333, 352, 538, 8895, 978, 352, 1485};
    static const int32_t L3_OUT[] = {13195, 1194, 333, 352, 261, 485, 978, 352, 330};
    span c[] = {SPAN(BOS, M), SPAN(L3_IN, M), SPAN(L3_OUT, T)};
    check_encoding("llama3 one turn", &ids, &labels, c, 3);

    ct_ids_free(&ids);
    ct_ids_free(&labels);
}

/* A pretokenized conversation is copied and cut, never templated. */
static void test_pretokenized(const ct_tokenizer *tok) {
    ct_conv c = {0};
    c.pretokenized = true;
    int32_t v[] = {1, 5, 6, 7, 8}, l[] = {-100, -100, 6, 7, 8};
    c.ids = (ct_ids){v, 5, 5};
    c.labels = (ct_ids){l, 5, 5};
    ct_encode_opts o = {tok, NULL, NULL, 4};
    ct_ids ids = {0}, labels = {0};
    ct_encode_info info;
    CHECK_OK(ct_encode_conv(&o, &c, &ids, &labels, &info));
    CHECK(ids.n == 4 && memcmp(ids.v, v, 16) == 0 && memcmp(labels.v, l, 16) == 0, "pretokenized copy");
    CHECK(info.truncated && info.n_trained == 2, "pretokenized info");
    ct_ids_free(&ids);
    ct_ids_free(&labels);
}

static void test_render(const ct_tokenizer *tok) {
    ct_ids ids = {0}, labels = {0};
    ct_encode_info info;
    encode(tok, "internlm2_chat", NULL, 2048, &TURN_HELLO, 1, &ids, &labels, &info);
    char *s;
    CHECK_OK(ct_render_sample(tok, ids.v, labels.v, ids.n, CT_SHOW_MASKED, &s, NULL));
    const char *want = "<s><|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
                       "\xC2\xABHi there<|im_end|>\xC2\xBB\n";
    CHECK(strcmp(s, want) == 0, "masked: [%s]", s);
    free(s);
    CHECK_OK(ct_render_sample(tok, ids.v, labels.v, ids.n, CT_SHOW_TEXT, &s, NULL));
    CHECK(strcmp(s, "<s><|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n") == 0,
          "text: [%s]", s);
    free(s);
    CHECK_OK(ct_render_sample(tok, ids.v, labels.v, 4, CT_SHOW_IDS, &s, NULL));
    CHECK(strcmp(s, "1 92543 1008 364") == 0, "ids: [%s]", s);
    free(s);
    CHECK_OK(ct_render_sample(tok, ids.v + 10, labels.v + 10, 5, CT_SHOW_LABELS, &s, NULL));
    CHECK(strcmp(s, "-100 13195 1194 92542 -100") == 0, "labels: [%s]", s);
    free(s);
    ct_show m;
    CHECK(ct_show_parse("masked", &m) == 0 && m == CT_SHOW_MASKED, "show parse");
    CHECK(ct_show_parse("colour", &m) == CT_EINPUT, "bad show");
    ct_ids_free(&ids);
    ct_ids_free(&labels);
}

int main(void) {
    test_template_table();
    char path[4096];
    if (!ct_fixture("internlm2-chat-7b/tokenizer.model", path, sizeof path)) return CT_TEST_SKIP;
    ct_tokenizer *tok;
    CHECK_OK(ct_tok_load(path, &tok));
    if (!tok) return ct_test_finish();
    test_internlm2(tok);
    test_other_templates(tok);
    test_pretokenized(tok);
    test_render(tok);
    ct_tok_free(tok);
    return ct_test_finish();
}
