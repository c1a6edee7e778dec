/* Chat prompt templates and system texts, exactly as XTuner v0.2.0 defines them
 * (docs: TEMPLATES.md). A template turns one conversation turn into the text
 * the model reads (SYSTEM + INSTRUCTION) and the text it learns (output +
 * SUFFIX); SEP follows every turn; generation stops at the stop words.
 *
 * Ownership: templates and system texts are static tables owned by the library
 * (never freed). Rendered strings are malloc'ed, NUL-terminated and owned by
 * the caller (free()). */
#ifndef CT_TEMPLATE_H
#define CT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *name;        /* "internlm2_chat" */
    const char *system;      /* contains "{system}"; used only for a non-empty system */
    const char *instruction; /* contains "{input}" */
    const char *suffix;      /* "" when the template has none */
    bool suffix_as_eos;      /* true: the suffix ends a turn, no EOS is appended */
    const char *sep;         /* between turns (after every turn); "" when none */
    const char *const *stop_words; /* NULL-terminated; empty list when none */
} ct_template;

/* The template called `name`, or NULL when there is none. */
const ct_template *ct_template_find(const char *name);

/* Like ct_template_find, but an unknown name is a CT_EINPUT error that lists
 * the known names (`what` names the setting for the message, e.g.
 * "config.yaml: prompt_template"). */
int ct_template_get(const char *name, const char *what, const ct_template **out);

/* The template names, NULL-terminated, in table order. */
const char *const *ct_template_names(void);

/* A turn's input text: SYSTEM with {system} replaced (only when system is
 * non-NULL and non-empty) followed by INSTRUCTION with {input} replaced.
 * input may be NULL (= ""). *out is malloc'ed; *len (may be NULL) its length. */
int ct_template_render_input(const ct_template *t, const char *system, const char *input, char **out,
                             size_t *len);

/* A turn's output text: output followed by the template's SUFFIX. */
int ct_template_render_output(const ct_template *t, const char *output, char **out, size_t *len);

/* XTuner's SYSTEM_TEMPLATE texts by name ("alpaca", "coder", "sql", ...):
 * the text, or NULL when there is none by that name. */
const char *ct_system_text(const char *name);

/* The system text names, NULL-terminated. */
const char *const *ct_system_names(void);

#endif
