/* XTuner's prompt templates and system texts (TEMPLATES.md), and the
 * placeholder substitution that Python's str.format does for them. The tables
 * are the single source of these strings: training (encode.c), generation
 * (ctuner chat) and the docs' examples all read them from here. */
#include "datasets/template.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"

static const char *const stop_none[] = {NULL};
static const char *const stop_im_end[] = {"<|im_end|>", NULL};
static const char *const stop_qwen[] = {"<|im_end|>", "<|endoftext|>", NULL};
static const char *const stop_eot[] = {"<|eot_id|>", NULL};

#define IM_SYSTEM "<|im_start|>system\n{system}<|im_end|>\n"
#define IM_INSTRUCTION "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"

static const ct_template templates[] = {
    {"internlm2_chat", IM_SYSTEM, IM_INSTRUCTION, "<|im_end|>", true, "\n", stop_im_end},
    {"qwen_chat", IM_SYSTEM, IM_INSTRUCTION, "<|im_end|>", true, "\n", stop_qwen},
    {"llama3_chat", "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
     "<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|eot_id|>", true, "", stop_eot},
    {"default", "<|System|>:{system}\n", "<|User|>:{input}\n<|Bot|>:", "", false, "\n", stop_none},
    {"llama2_chat",
     "[INST] <<SYS>>\n You are a helpful, respectful and honest assistant. Always answer as helpfully as "
     "possible, while being safe. Your answers should not include any harmful, unethical, racist, sexist, "
     "toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and "
     "positive in nature.\n{system}\n<</SYS>>\n [/INST] ",
     "[INST] {input} [/INST]", "", false, "\n", stop_none},
};
#define N_TEMPLATES (sizeof templates / sizeof templates[0])

static const char *const template_names[N_TEMPLATES + 1] = {
    "internlm2_chat", "qwen_chat", "llama3_chat", "default", "llama2_chat", NULL,
};

/* XTuner's SYSTEM_TEMPLATE (moss_sft is left out: it needs a {bot_name}). */
static const struct {
    const char *name, *text;
} systems[] = {
    {"alpaca", "Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request.\n"},
    {"arxiv_gentile", "If you are an expert in writing papers, please generate a good paper title for this "
                      "paper based on other authors' descriptions of their abstracts.\n"},
    {"colorist", "You are a professional color designer. Please provide the corresponding colors based on the "
                 "description of Human.\n"},
    {"coder", "You are a professional programer. Please provide the corresponding code based on the "
              "description of Human.\n"},
    {"lawyer", "你现在是一名专业的中国律师，请根据用户的问题给出准确、有理有据的回复。\n"},
    {"medical", "如果你是一名医生，请根据患者的描述回答医学问题。\n"},
    {"sql", "If you are an expert in SQL, please generate a good SQL Query for Question based on the CREATE "
            "TABLE statement.\n"},
};
#define N_SYSTEMS (sizeof systems / sizeof systems[0])

static const char *const system_names[N_SYSTEMS + 1] = {
    "alpaca", "arxiv_gentile", "colorist", "coder", "lawyer", "medical", "sql", NULL,
};

const ct_template *ct_template_find(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < N_TEMPLATES; i++)
        if (strcmp(templates[i].name, name) == 0) return &templates[i];
    return NULL;
}

int ct_template_get(const char *name, const char *what, const ct_template **out) {
    *out = ct_template_find(name);
    if (*out) return CT_OK;
    char known[256] = "";
    for (size_t i = 0; i < N_TEMPLATES; i++) {
        strncat(known, i ? ", " : "", sizeof known - strlen(known) - 1);
        strncat(known, templates[i].name, sizeof known - strlen(known) - 1);
    }
    return ct_errorf(CT_EINPUT, "%s: unknown prompt template '%s'; use one of: %s", what ? what : "template",
                     name ? name : "(none)", known);
}

const char *const *ct_template_names(void) { return template_names; }

const char *ct_system_text(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < N_SYSTEMS; i++)
        if (strcmp(systems[i].name, name) == 0) return systems[i].text;
    return NULL;
}

const char *const *ct_system_names(void) { return system_names; }

/* ---- rendering ---- */

/* Length of `pattern` with every `key` replaced by `value` (vlen bytes). */
static size_t subst_len(const char *pattern, const char *key, size_t vlen) {
    size_t n = 0, klen = strlen(key);
    for (const char *p = pattern; *p;) {
        if (strncmp(p, key, klen) == 0) {
            n += vlen;
            p += klen;
        } else {
            n++;
            p++;
        }
    }
    return n;
}

/* Writes `pattern` with `key` replaced by `value` at dst; returns bytes written.
 * The value is inserted verbatim: braces inside it are not placeholders (as
 * with str.format, which formats only the template). */
static size_t subst(char *dst, const char *pattern, const char *key, const char *value, size_t vlen) {
    size_t n = 0, klen = strlen(key);
    for (const char *p = pattern; *p;) {
        if (strncmp(p, key, klen) == 0) {
            memcpy(dst + n, value, vlen);
            n += vlen;
            p += klen;
        } else {
            dst[n++] = *p++;
        }
    }
    return n;
}

int ct_template_render_input(const ct_template *t, const char *system, const char *input, char **out,
                             size_t *len) {
    *out = NULL;
    if (!input) input = "";
    bool with_system = system && system[0] && t->system && t->system[0];
    size_t slen = with_system ? strlen(system) : 0, ilen = strlen(input);
    size_t n = (with_system ? subst_len(t->system, "{system}", slen) : 0) +
               subst_len(t->instruction, "{input}", ilen);
    char *s = malloc(n + 1);
    if (!s) return ct_errorf(CT_ERUNTIME, "out of memory rendering a %s prompt (%zu bytes)", t->name, n);
    size_t k = 0;
    if (with_system) k += subst(s, t->system, "{system}", system, slen);
    k += subst(s + k, t->instruction, "{input}", input, ilen);
    s[k] = '\0';
    *out = s;
    if (len) *len = k;
    return CT_OK;
}

int ct_template_render_output(const ct_template *t, const char *output, char **out, size_t *len) {
    *out = NULL;
    if (!output) output = "";
    size_t olen = strlen(output), xlen = t->suffix ? strlen(t->suffix) : 0;
    char *s = malloc(olen + xlen + 1);
    if (!s) return ct_errorf(CT_ERUNTIME, "out of memory rendering a %s answer (%zu bytes)", t->name, olen + xlen);
    memcpy(s, output, olen);
    if (xlen) memcpy(s + olen, t->suffix, xlen);
    s[olen + xlen] = '\0';
    *out = s;
    if (len) *len = olen + xlen;
    return CT_OK;
}
