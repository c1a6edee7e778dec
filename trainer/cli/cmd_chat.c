/* ctuner chat: talk to a model (optionally with a LoRA adapter), like
 * `xtuner chat`.
 *
 * Interactive by default: reads a message (lines until an empty line, "double
 * enter"), EXIT quits, RESET forgets the history, and the answer streams to
 * stdout as tokens arrive. --prompt P answers P once and exits, printing only
 * the answer and a newline on stdout (scriptable).
 *
 * Prompts follow TEMPLATES.md "Generation": BOS at the start of the
 * conversation only; each turn's input text is SYSTEM (first turn, with
 * --system) + INSTRUCTION; an earlier answer is followed by the template's
 * SUFFIX and SEP. The conversation stays in the KV cache, so a turn feeds only
 * its new tokens (the answer's ids are kept as generated). --template none is
 * raw completion for base models: BOS + the text as is (an empty prompt
 * continues from BOS alone); later turns append their text as is. Default
 * template: internlm2_chat when the tokenizer has <|im_start|>, else none.
 *
 * Generation stops at EOS, the template's stop words and each --stop-word
 * (repeat the flag for several; a word that is one special token is matched on
 * its id, any other on the decoded text, which is cut before it), or after
 * --max-new-tokens. Sampling defaults are XTuner chat's: temperature 0.1,
 * top-k 40, top-p 0.75, repetition penalty 1, seed 0; --temperature 0 is
 * greedy. The context holds --max-context positions (default: the model's
 * max_position_embeddings, at most 4096). --show-prompt prints, per turn, the
 * tokens fed (decoded with special tokens shown) on stderr. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/template.h"
#include "datasets/tokenizer.h"
#include "trainer/model/adapter.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/io/fsutil.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"

#define DEFAULT_MAX_CONTEXT 4096
#define MAX_STOP_IDS 64

typedef struct {
    const char *model, *adapter, *tmpl, *system, *prompt, *quant, *device;
    int64_t max_new_tokens, top_k, seed, max_context;
    double temperature, top_p, repetition_penalty;
    bool show_prompt;        /* each turn's fed ids, decoded, on stderr */
    const char **stop_words; /* (n_stop_words) every --stop-word, in order */
    size_t n_stop_words;
} chat_opts;

typedef struct {
    ct_model *model;
    ct_tokenizer *tok;
    const ct_template *tmpl;   /* NULL: raw completion */
    ct_generator *gen;
    ct_sampler sampler;
    int32_t stop_ids[MAX_STOP_IDS];
    size_t n_stop_ids;
    const char **stop_texts;   /* (n_stop_texts) borrowed strings */
    size_t n_stop_texts;
    ct_ids pending;            /* ids owed to the history before the next input */
    ct_ids prompt, answer;     /* work vectors of a turn */
    bool first_turn;
    bool quiet;                /* --prompt: nothing but the answer on stdout */
} chat;

/* ---------------- options ---------------- */

static int check_opts(const chat_opts *o) {
    if (o->max_new_tokens < 1)
        return ct_errorf(CT_EINPUT, "--max-new-tokens %lld must be >= 1", (long long)o->max_new_tokens);
    if (o->top_k < 0 || o->top_k > INT32_MAX)
        return ct_errorf(CT_EINPUT, "--top-k %lld must be >= 0 (0 = off)", (long long)o->top_k);
    if (o->seed < 0) return ct_errorf(CT_EINPUT, "--seed %lld must be >= 0", (long long)o->seed);
    if (o->max_context < 0 || o->max_context > INT32_MAX)
        return ct_errorf(CT_EINPUT, "--max-context %lld must be in 1..%d", (long long)o->max_context, INT32_MAX);
    if (o->tmpl && strcmp(o->tmpl, "none") != 0) {
        const ct_template *t;
        CT_TRY(ct_template_get(o->tmpl, "--template", &t));
    }
    if (o->system && o->tmpl && strcmp(o->tmpl, "none") == 0)
        return ct_errorf(CT_EINPUT, "--system needs a chat template (--template none has no system slot)");
    for (size_t i = 0; i < o->n_stop_words; i++)
        if (!o->stop_words[i][0]) return ct_errorf(CT_EINPUT, "--stop-word: empty string");
    ct_model_quant q;
    CT_TRY(ct_model_quant_from_name(o->quant, &q));
    ct_sampler s; /* the sampler's own parameter checks, before the model loads */
    ct_sampling_params sp = {(float)o->temperature, (int)o->top_k, (float)o->top_p, (float)o->repetition_penalty,
                             (uint64_t)o->seed};
    CT_TRY(ct_sampler_init(&s, &sp, 1));
    ct_sampler_free(&s);
    if (!ct_path_is_dir(o->model))
        return ct_errorf(CT_EINPUT, "%s: not a model directory (config.json, safetensors, tokenizer.model)", o->model);
    return CT_OK;
}

/* ---------------- setup ---------------- */

/* A stop word as an id (one special token) or as text. */
static int add_stop_word(chat *c, const char *word) {
    ct_ids ids = {0};
    int rc = ct_tok_encode(c->tok, word, strlen(word), false, &ids);
    if (!rc && ids.n == 1 && ct_tok_is_special(c->tok, ids.v[0])) {
        if (c->n_stop_ids < MAX_STOP_IDS) c->stop_ids[c->n_stop_ids++] = ids.v[0];
    } else if (!rc) {
        c->stop_texts[c->n_stop_texts++] = word;
    }
    ct_ids_free(&ids);
    return rc;
}

static int chat_open(chat *c, const chat_opts *o) {
    memset(c, 0, sizeof *c);
    c->first_turn = true;
    c->quiet = o->prompt != NULL;
    ct_model_options mo = {0};
    CT_TRY(ct_backend_by_name(o->device ? o->device : "auto", "--device", &mo.backend));
    CT_TRY(ct_model_quant_from_name(o->quant, &mo.quant));
    mo.double_quant = true;
    CT_TRY(ct_tok_load(o->model, &c->tok));
    CT_TRY(ct_model_load(o->model, &mo, &c->model));
    if (o->adapter) CT_TRY(ct_adapter_load(o->adapter, c->model, false, NULL));

    const char *name = o->tmpl;
    if (!name) name = ct_tok_piece_to_id(c->tok, "<|im_start|>", 12) >= 0 ? "internlm2_chat" : "none";
    if (strcmp(name, "none") != 0) CT_TRY(ct_template_get(name, "--template", &c->tmpl));

    const ct_hf_config *cfg = ct_model_config(c->model);
    int64_t ctx = o->max_context;
    if (ctx == 0) ctx = cfg->max_position_embeddings < DEFAULT_MAX_CONTEXT ? cfg->max_position_embeddings
                                                                          : DEFAULT_MAX_CONTEXT;
    CT_TRY(ct_gen_new(ct_model_decoder(c->model), ct_model_backend(c->model), ctx, &c->gen));
    ct_sampling_params sp = {(float)o->temperature, (int)o->top_k, (float)o->top_p, (float)o->repetition_penalty,
                             (uint64_t)o->seed};
    CT_TRY(ct_sampler_init(&c->sampler, &sp, ct_gen_vocab(c->gen)));

    int32_t eos = ct_tok_eos_id(c->tok);
    if (eos >= 0) c->stop_ids[c->n_stop_ids++] = eos;
    if (cfg->eos_token_id >= 0 && cfg->eos_token_id != eos) c->stop_ids[c->n_stop_ids++] = (int32_t)cfg->eos_token_id;
    size_t n_words = o->n_stop_words;
    for (const char *const *w = c->tmpl ? c->tmpl->stop_words : NULL; w && *w; w++) n_words++;
    c->stop_texts = calloc(n_words + 1, sizeof *c->stop_texts);
    if (!c->stop_texts) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (const char *const *w = c->tmpl ? c->tmpl->stop_words : NULL; w && *w; w++) CT_TRY(add_stop_word(c, *w));
    for (size_t i = 0; i < o->n_stop_words; i++) CT_TRY(add_stop_word(c, o->stop_words[i]));
    if (!c->quiet)
        fprintf(stderr, "ctuner chat: %s%s%s, template %s, context %lld tokens\n", o->model,
                o->adapter ? " + adapter " : "", o->adapter ? o->adapter : "", c->tmpl ? c->tmpl->name : "none",
                (long long)ctx);
    return CT_OK;
}

static void chat_close(chat *c) {
    ct_gen_free(c->gen);
    ct_sampler_free(&c->sampler);
    ct_model_free(c->model);
    ct_tok_free(c->tok);
    free(c->stop_texts);
    ct_ids_free(&c->pending);
    ct_ids_free(&c->prompt);
    ct_ids_free(&c->answer);
}

static void chat_reset(chat *c) {
    ct_gen_truncate(c->gen, 0);
    c->pending.n = 0;
    c->first_turn = true;
}

/* ---------------- one turn ---------------- */

static int emit_stdout(void *ctx, const char *text, size_t len) {
    (void)ctx;
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0)
        return ct_errorf(CT_ERUNTIME, "writing the answer failed: %s", strerror(errno));
    return CT_OK;
}

static int append_encoded(chat *c, const char *text, size_t len) {
    return len ? ct_tok_encode(c->tok, text, len, false, &c->prompt) : CT_OK;
}

/* The ids this turn feeds: what the history still owes, BOS on the first
 * turn, then the input text. */
static int build_prompt(chat *c, const char *system, const char *input) {
    c->prompt.n = 0;
    for (size_t i = 0; i < c->pending.n; i++) CT_TRY(ct_ids_push(&c->prompt, c->pending.v[i]));
    int32_t bos = ct_tok_bos_id(c->tok);
    if (c->first_turn && bos >= 0) CT_TRY(ct_ids_push(&c->prompt, bos));
    if (!c->tmpl) return append_encoded(c, input, strlen(input));
    char *text = NULL;
    size_t len = 0;
    CT_TRY(ct_template_render_input(c->tmpl, c->first_turn ? system : NULL, input, &text, &len));
    int rc = append_encoded(c, text, len);
    free(text);
    return rc;
}

/* After an answer: the ids the history owes before the next input (the last
 * sampled id when it was not a stop id: it was never fed), then SUFFIX + SEP. */
static int settle_history(chat *c, const ct_gen_result *res) {
    c->pending.n = 0;
    if (res->reason != CT_GEN_STOP_ID && c->answer.n) CT_TRY(ct_ids_push(&c->pending, c->answer.v[c->answer.n - 1]));
    if (!c->tmpl) return CT_OK;
    c->prompt.n = 0;
    CT_TRY(append_encoded(c, c->tmpl->suffix, strlen(c->tmpl->suffix)));
    CT_TRY(append_encoded(c, c->tmpl->sep, strlen(c->tmpl->sep)));
    for (size_t i = 0; i < c->prompt.n; i++) CT_TRY(ct_ids_push(&c->pending, c->prompt.v[i]));
    return CT_OK;
}

/* --show-prompt: the ids a turn feeds, decoded with special tokens shown, as
 * one line with C escapes. */
static int show_prompt(const chat *c) {
    char *text = NULL;
    size_t len = 0;
    CT_TRY(ct_tok_decode(c->tok, c->prompt.v, c->prompt.n, true, &text, &len));
    fputs("prompt: ", stderr);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == '\\') fputs("\\\\", stderr);
        else if (ch == '\n') fputs("\\n", stderr);
        else if (ch < 0x20 || ch == 0x7f) fprintf(stderr, "\\x%02x", ch);
        else fputc(ch, stderr);
    }
    fputc('\n', stderr);
    free(text);
    return CT_OK;
}

static int chat_turn(chat *c, const chat_opts *o, const char *input) {
    CT_TRY(build_prompt(c, o->system, input));
    if (c->prompt.n == 0) return CT_OK; /* nothing new to say */
    if (o->show_prompt) CT_TRY(show_prompt(c));
    int64_t before = ct_gen_len(c->gen), room = ct_gen_max_len(c->gen) - before;
    if ((int64_t)c->prompt.n > room)
        return ct_errorf(CT_EINPUT, "the conversation does not fit the context: %zu new tokens, %lld of %lld "
                         "positions free (RESET to start over, or raise --max-context)",
                         c->prompt.n, (long long)room, (long long)ct_gen_max_len(c->gen));
    ct_gen_limits lim = {.max_new_tokens = o->max_new_tokens, .stop_ids = c->stop_ids, .n_stop_ids = c->n_stop_ids,
                         .stop_texts = c->stop_texts, .n_stop_texts = c->n_stop_texts,
                         .vocab_limit = ct_tok_vocab_size(c->tok) < ct_gen_vocab(c->gen) ? ct_tok_vocab_size(c->tok) : 0};
    ct_gen_result res;
    c->answer.n = 0;
    int rc = ct_gen_generate(c->gen, &c->sampler, c->tok, c->prompt.v, (int64_t)c->prompt.n, &lim, emit_stdout,
                             NULL, &c->answer, &res);
    if (rc) {
        ct_gen_truncate(c->gen, before); /* the history stays as it was */
        return rc;
    }
    CT_TRY(emit_stdout(NULL, "\n", 1));
    if (res.reason == CT_GEN_CONTEXT_FULL)
        fprintf(stderr, "(the context of %lld tokens is full: RESET to continue)\n", (long long)ct_gen_max_len(c->gen));
    c->first_turn = false;
    return settle_history(c, &res);
}

/* ---------------- interactive loop ---------------- */

/* Lines until an empty one (or EOF), joined with '\n', into *buf. *eof when
 * stdin ended. */
static int read_message(char **buf, size_t *cap, bool *eof) {
    size_t len = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    *eof = false;
    if (!*buf && !(*buf = malloc(*cap = 4096))) return ct_errorf(CT_ERUNTIME, "out of memory");
    (*buf)[0] = '\0';
    for (;;) {
        n = getline(&line, &lcap, stdin);
        if (n < 0) {
            *eof = true;
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) break;
        if (len + (size_t)n + 2 > *cap) {
            size_t nc = *cap;
            while (len + (size_t)n + 2 > nc) nc *= 2;
            char *nb = realloc(*buf, nc);
            if (!nb) {
                free(line);
                return ct_errorf(CT_ERUNTIME, "out of memory reading the input");
            }
            *buf = nb;
            *cap = nc;
        }
        if (len) (*buf)[len++] = '\n';
        memcpy(*buf + len, line, (size_t)n + 1);
        len += (size_t)n;
    }
    free(line);
    return CT_OK;
}

/* The message without surrounding whitespace equals word. */
static bool is_command(const char *msg, const char *word) {
    while (*msg == ' ' || *msg == '\t' || *msg == '\n') msg++;
    size_t n = strlen(word);
    if (strncmp(msg, word, n) != 0) return false;
    for (msg += n; *msg; msg++)
        if (*msg != ' ' && *msg != '\t' && *msg != '\n') return false;
    return true;
}

static int interactive(chat *c, const chat_opts *o) {
    char *msg = NULL;
    size_t cap = 0;
    int rc = CT_OK;
    for (;;) {
        printf("\ndouble enter to end input (EXIT: exit chat, RESET: reset history) >>> ");
        fflush(stdout);
        bool eof;
        if ((rc = read_message(&msg, &cap, &eof))) break;
        if (is_command(msg, "EXIT")) break;
        if (is_command(msg, "RESET")) {
            chat_reset(c);
            printf("Log: History responses have been removed!\n");
        } else if (msg[0] || !eof) {
            rc = chat_turn(c, o, msg);
            if (rc == CT_EINPUT) { /* a turn that does not fit: say so, keep chatting */
                fprintf(stderr, "error: %s\n", ct_last_error());
                rc = CT_OK;
            }
            if (rc) break;
        }
        if (eof) {
            printf("\n");
            break;
        }
    }
    free(msg);
    return rc;
}

int ct_cmd_chat(int argc, char **argv) {
    chat_opts o = {.quant = "none", .max_new_tokens = 2048, .top_k = 40, .temperature = 0.1, .top_p = 0.75,
                   .repetition_penalty = 1.0};
    const char *stop_word = NULL; /* every occurrence is collected separately */
    const ct_argspec specs[] = {
        {"--adapter", CT_ARG_STR, &o.adapter, "DIR", "a PEFT LoRA adapter directory to apply (unmerged)"},
        {"--template", CT_ARG_STR, &o.tmpl, "NAME",
         "chat template (internlm2_chat, qwen_chat, llama3_chat, default, llama2_chat) or none for raw "
         "completion; default internlm2_chat when the tokenizer has <|im_start|>, else none"},
        {"--system", CT_ARG_STR, &o.system, "S", "system text of the first turn"},
        {"--prompt", CT_ARG_STR, &o.prompt, "P", "answer P once, print only the answer, exit"},
        {"--max-new-tokens", CT_ARG_INT, &o.max_new_tokens, "N", "at most N tokens per answer (2048)"},
        {"--temperature", CT_ARG_DOUBLE, &o.temperature, "T", "sampling temperature, 0 = greedy (0.1)"},
        {"--top-k", CT_ARG_INT, &o.top_k, "K", "keep the K most likely tokens, 0 = off (40)"},
        {"--top-p", CT_ARG_DOUBLE, &o.top_p, "P", "nucleus sampling, 1 = off (0.75)"},
        {"--repetition-penalty", CT_ARG_DOUBLE, &o.repetition_penalty, "R", "HF repetition penalty, 1 = off (1.0)"},
        {"--seed", CT_ARG_INT, &o.seed, "N", "seed of the sampling RNG (0)"},
        {"--stop-word", CT_ARG_STR, &stop_word, "S", "also stop at S (repeat the flag for more)"},
        {"--quant", CT_ARG_STR, &o.quant, "nf4|fp4|none", "quantize the block linears on load (none)"},
        {"--device", CT_ARG_STR, &o.device, "D", "auto (the CPU for now), cpu, cuda, cuda-emu (checking only)"},
        {"--max-context", CT_ARG_INT, &o.max_context, "N",
         "KV cache positions (default: max_position_embeddings, at most 4096)"},
        {"--show-prompt", CT_ARG_FLAG, &o.show_prompt, NULL,
         "print each turn's new prompt tokens (decoded, special tokens shown) on stderr"},
    };
    ct_args a = {.usage = "ctuner chat MODEL_DIR [--adapter D] [--template NAME] [--system S] [--prompt P] "
                          "[sampling flags] [--stop-word S ...] [--quant nf4|fp4|none] [--device D]",
                 .summary = "Chat with a model: interactive (lines until an empty line; EXIT quits, RESET forgets "
                            "the history), or one answer with --prompt. Output streams as it is generated.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0]),
                 .min_positional = 1,
                 .max_positional = 1};
    int rc = ct_args_parse(&a, argc, argv);
    if (rc) return rc;
    o.model = a.positional[0];
    int n_stop_words = 0;
    rc = ct_args_collect(&a, argc, argv, "--stop-word", &o.stop_words, &n_stop_words);
    o.n_stop_words = (size_t)n_stop_words;
    if (rc || (rc = check_opts(&o))) {
        free(o.stop_words);
        return rc;
    }
    chat c;
    rc = chat_open(&c, &o);
    if (!rc) rc = o.prompt ? chat_turn(&c, &o, o.prompt) : interactive(&c, &o);
    chat_close(&c);
    free(o.stop_words);
    return rc;
}
