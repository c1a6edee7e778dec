/* One record into conversation turns, per format (TEMPLATES.md "From a record
 * to turns", XTuner's map functions):
 *   alpaca: "<nooutput>" drops the sample; else one turn, input
 *     instruction + "\n" + input (XTuner joins even an empty input; the
 *     alpaca_drop_empty_input option gives just the instruction then), no
 *     system (ct_ds_config.system supplies one). "input" may be missing or
 *     null (= ""); instruction and output are required.
 *   openai: leading assistant messages skipped; a system message sets the
 *     system of the next turn; consecutive user messages are concatenated; each
 *     assistant message closes a turn ("loss": false leaves its output
 *     untrained; XTuner also accepts the strings "true"/"false"); trailing user
 *     messages without an answer are ignored; any other role is an error.
 *   conversation: the turns as given; system optional (null = none), input
 *     null = "", optional output_with_loss.
 *   pretokenized: input_ids, and labels aligned with them (label t is the
 *     target of token t itself, -100 = not trained). Without labels every
 *     token is trained (labels = input_ids, as Hugging Face's causal-LM
 *     collator does and as XTuner's pretraining map does).
 * Every record must be valid UTF-8 and one JSON object; wrong or missing
 * fields are CT_EINPUT naming file:line, the record number and the field. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "autograd/ct_error.h"
#include "datasets/dataset_reader.h"

typedef struct {
    const char *path;
    int64_t line;
    size_t recno; /* 1-based */
} where;

static int field_error(const where *w, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int field_error(const where *w, const char *field, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ct_errorf(CT_EINPUT, "%s:%lld: record %zu: field '%s': %s", w->path, (long long)w->line, w->recno,
                     field, msg);
}

static const char *type_name(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* A string field: required (missing/null is an error) or optional (*out NULL
 * when missing or null). */
static int get_str(const where *w, const json_t *obj, const char *key, const char *field, bool required,
                   const char **out) {
    *out = NULL;
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required) return field_error(w, field, "missing; this format needs it (a string)");
        return CT_OK;
    }
    if (!json_is_string(v)) return field_error(w, field, "expected a string, got %s", type_name(v));
    *out = json_string_value(v);
    return CT_OK;
}

void ct_conv_free(ct_conv *c) {
    for (size_t i = 0; i < c->n_turns; i++) {
        free(c->turns[i].system);
        free(c->turns[i].input);
        free(c->turns[i].output);
    }
    free(c->turns);
    ct_ids_free(&c->ids);
    ct_ids_free(&c->labels);
    memset(c, 0, sizeof *c);
}

/* Appends a turn, copying the strings (system NULL or "" -> none). */
static int add_turn(ct_conv *c, const char *system, const char *input, const char *output, bool loss) {
    if (c->n_turns == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 4;
        ct_turn *nt = realloc(c->turns, nc * sizeof *nt);
        if (!nt) return ct_errorf(CT_ERUNTIME, "out of memory");
        c->turns = nt;
        c->cap = nc;
    }
    ct_turn t = {system && system[0] ? strdup(system) : NULL, strdup(input ? input : ""),
                 strdup(output ? output : ""), loss};
    if ((system && system[0] && !t.system) || !t.input || !t.output) {
        free(t.system);
        free(t.input);
        free(t.output);
        return ct_errorf(CT_ERUNTIME, "out of memory");
    }
    c->turns[c->n_turns++] = t;
    return CT_OK;
}

static int parse_alpaca(const where *w, const json_t *j, const ct_ds_parse_opts *o, ct_conv *c, bool *dropped) {
    const char *ins, *in, *out;
    CT_TRY(get_str(w, j, "instruction", "instruction", true, &ins));
    CT_TRY(get_str(w, j, "input", "input", false, &in));
    CT_TRY(get_str(w, j, "output", "output", true, &out));
    if (strcmp(out, "<nooutput>") == 0) {
        *dropped = true;
        return CT_OK;
    }
    if (!in) in = "";
    if (o && o->alpaca_drop_empty_input && !in[0]) return add_turn(c, NULL, ins, out, true);
    size_t a = strlen(ins), b = strlen(in);
    char *text = malloc(a + b + 2); /* instruction "\n" input NUL */
    if (!text) return ct_errorf(CT_ERUNTIME, "out of memory");
    memcpy(text, ins, a);
    text[a] = '\n';
    memcpy(text + a + 1, in, b + 1);
    int rc = add_turn(c, NULL, text, out, true);
    free(text);
    return rc;
}

/* "loss" of an assistant message: true/false, or XTuner's strings. */
static int get_loss(const where *w, const json_t *msg, const char *field, bool *loss) {
    *loss = true;
    const json_t *v = json_object_get(msg, "loss");
    if (!v) return CT_OK;
    if (json_is_boolean(v)) {
        *loss = json_is_true(v);
        return CT_OK;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcasecmp(s, "true") == 0) return CT_OK;
        if (strcasecmp(s, "false") == 0) {
            *loss = false;
            return CT_OK;
        }
        return field_error(w, field, "expected true or false, got the string \"%s\"", s);
    }
    return field_error(w, field, "expected true or false, got %s", type_name(v));
}

/* Growable text for consecutive user messages. */
typedef struct {
    char *s;
    size_t n, cap;
} text;

static int text_add(text *t, const char *s) {
    size_t k = strlen(s);
    if (t->n + k + 1 > t->cap) {
        size_t nc = t->cap ? t->cap : 256;
        while (nc < t->n + k + 1) nc *= 2;
        char *ns = realloc(t->s, nc);
        if (!ns) return ct_errorf(CT_ERUNTIME, "out of memory");
        t->s = ns;
        t->cap = nc;
    }
    memcpy(t->s + t->n, s, k + 1);
    t->n += k;
    return CT_OK;
}

static int parse_openai(const where *w, const json_t *j, ct_conv *c, bool *dropped) {
    const json_t *msgs = json_object_get(j, "messages");
    if (!msgs) return field_error(w, "messages", "missing; this format needs an array of {role, content}");
    if (!json_is_array(msgs)) return field_error(w, "messages", "expected an array, got %s", type_name(msgs));
    size_t n = json_array_size(msgs), i = 0;
    char field[64];
    /* Validate every message first, so a bad one is reported even where
     * XTuner's rules would skip it. */
    for (size_t k = 0; k < n; k++) {
        const json_t *m = json_array_get(msgs, k);
        snprintf(field, sizeof field, "messages[%zu]", k);
        if (!json_is_object(m)) return field_error(w, field, "expected an object, got %s", type_name(m));
        const char *role, *content;
        snprintf(field, sizeof field, "messages[%zu].role", k);
        CT_TRY(get_str(w, m, "role", field, true, &role));
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
            return field_error(w, field, "unknown role '%s'; roles are system, user and assistant", role);
        snprintf(field, sizeof field, "messages[%zu].content", k);
        CT_TRY(get_str(w, m, "content", field, true, &content));
        if (strcmp(role, "assistant") == 0) {
            bool loss;
            snprintf(field, sizeof field, "messages[%zu].loss", k);
            CT_TRY(get_loss(w, m, field, &loss));
        }
    }
    while (i < n && strcmp(json_string_value(json_object_get(json_array_get(msgs, i), "role")), "assistant") == 0)
        i++; /* leading assistant messages are skipped */
    const char *system = NULL;
    text input = {0};
    int rc = text_add(&input, "");
    for (; i < n && rc == CT_OK; i++) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *content = json_string_value(json_object_get(m, "content"));
        if (strcmp(role, "system") == 0) {
            system = content;
        } else if (strcmp(role, "user") == 0) {
            rc = text_add(&input, content);
        } else {
            bool loss;
            snprintf(field, sizeof field, "messages[%zu].loss", i);
            rc = get_loss(w, m, field, &loss);
            if (!rc) rc = add_turn(c, system, input.s, content, loss);
            system = NULL;
            input.n = 0;
            input.s[0] = '\0';
        }
    }
    free(input.s);
    if (!rc && c->n_turns == 0) *dropped = true;
    return rc;
}

static int parse_conversation(const where *w, const json_t *j, ct_conv *c, bool *dropped) {
    const json_t *conv = json_object_get(j, "conversation");
    if (!conv)
        return field_error(w, "conversation", "missing; this format needs an array of {system, input, output}");
    if (!json_is_array(conv)) return field_error(w, "conversation", "expected an array, got %s", type_name(conv));
    char field[64];
    for (size_t k = 0; k < json_array_size(conv); k++) {
        const json_t *t = json_array_get(conv, k);
        snprintf(field, sizeof field, "conversation[%zu]", k);
        if (!json_is_object(t)) return field_error(w, field, "expected an object, got %s", type_name(t));
        const char *system, *input, *output;
        snprintf(field, sizeof field, "conversation[%zu].system", k);
        CT_TRY(get_str(w, t, "system", field, false, &system));
        snprintf(field, sizeof field, "conversation[%zu].input", k);
        if (!json_object_get(t, "input")) return field_error(w, field, "missing; each turn needs an input");
        CT_TRY(get_str(w, t, "input", field, false, &input));
        snprintf(field, sizeof field, "conversation[%zu].output", k);
        CT_TRY(get_str(w, t, "output", field, true, &output));
        const json_t *l = json_object_get(t, "output_with_loss");
        snprintf(field, sizeof field, "conversation[%zu].output_with_loss", k);
        if (l && !json_is_boolean(l)) return field_error(w, field, "expected true or false, got %s", type_name(l));
        CT_TRY(add_turn(c, system, input, output, !l || json_is_true(l)));
    }
    if (c->n_turns == 0) *dropped = true;
    return CT_OK;
}

/* An array of token ids; labels also allow -100. */
static int get_ids(const where *w, const json_t *arr, const char *key, bool labels, int32_t vocab, ct_ids *out) {
    if (!json_is_array(arr)) return field_error(w, key, "expected an array of integers, got %s", type_name(arr));
    size_t n = json_array_size(arr);
    CT_TRY(ct_ids_reserve(out, n));
    for (size_t k = 0; k < n; k++) {
        const json_t *v = json_array_get(arr, k);
        char field[64];
        snprintf(field, sizeof field, "%s[%zu]", key, k);
        if (!json_is_integer(v)) return field_error(w, field, "expected an integer, got %s", type_name(v));
        json_int_t x = json_integer_value(v);
        if (!(labels && x == -100) && (x < 0 || (vocab > 0 && x >= vocab)))
            return field_error(w, field, "%lld is not a token id of this tokenizer (0..%d)%s", (long long)x,
                               vocab - 1, labels ? " nor -100" : "");
        out->v[out->n++] = (int32_t)x;
    }
    return CT_OK;
}

static int parse_pretokenized(const where *w, const json_t *j, const ct_ds_parse_opts *o, ct_conv *c) {
    int32_t vocab = o ? o->vocab_size : 0;
    const json_t *ids = json_object_get(j, "input_ids"), *labels = json_object_get(j, "labels");
    if (!ids) return field_error(w, "input_ids", "missing; this format needs input_ids (and optional labels)");
    c->pretokenized = true;
    CT_TRY(get_ids(w, ids, "input_ids", false, vocab, &c->ids));
    if (c->ids.n == 0) return field_error(w, "input_ids", "empty; a sample needs at least one token");
    if (labels && !json_is_null(labels)) {
        CT_TRY(get_ids(w, labels, "labels", true, vocab, &c->labels));
        if (c->labels.n != c->ids.n)
            return field_error(w, "labels", "has %zu entries but input_ids has %zu; they must align", c->labels.n,
                               c->ids.n);
    } else {
        CT_TRY(ct_ids_reserve(&c->labels, c->ids.n));
        memcpy(c->labels.v, c->ids.v, c->ids.n * sizeof *c->ids.v);
        c->labels.n = c->ids.n;
    }
    return CT_OK;
}

/* Offset of the first byte that is not valid UTF-8 (RFC 3629: no overlongs,
 * no surrogates, nothing above U+10FFFF), or n when all is valid. */
static size_t utf8_bad(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else return i;
        if (i + k >= n) return i; /* cut off at the end */
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t m = 2; m <= k; m++)
            if (s[i + m] < 0x80 || s[i + m] > 0xBF) return i;
        i += k + 1;
    }
    return n;
}

/* File line and 1-based byte column of byte `at` of record r. */
static void locate(const ct_ds_file *f, const ct_ds_rec *r, size_t at, int64_t *line, size_t *col) {
    *line = r->line;
    size_t start = r->off; /* the record's line starts at the last newline before it */
    while (start > 0 && f->buf[start - 1] != '\n') start--;
    for (size_t q = r->off; q < r->off + at && q < f->size; q++)
        if (f->buf[q] == '\n') ++*line, start = q + 1;
    *col = r->off + at - start + 1;
}

/* Parses the record's JSON; errors give the file's line and column. */
static json_t *load_record(const ct_ds_file *f, size_t i, const where *w) {
    const ct_ds_rec *r = &f->recs[i];
    const char *s = f->buf + r->off;
    int64_t line;
    size_t col;
    size_t bad = utf8_bad((const unsigned char *)s, r->len);
    if (bad < r->len) {
        locate(f, r, bad, &line, &col);
        ct_errorf(CT_EINPUT, "%s:%lld:%zu: record %zu: invalid UTF-8 (byte 0x%02x); the dataset must be UTF-8 text",
                  w->path, (long long)line, col, w->recno, (unsigned char)s[bad]);
        return NULL;
    }
    json_error_t err;
    json_t *j = json_loadb(s, r->len, JSON_DECODE_ANY, &err); /* any value: a non-object gets its own message */
    if (!j) {
        locate(f, r, err.position > 0 ? (size_t)err.position - 1 : 0, &line, &col);
        ct_errorf(CT_EINPUT, "%s:%lld:%zu: record %zu: invalid JSON: %s%s", w->path, (long long)line, col, w->recno,
                  err.text, f->json_lines ? " (JSON Lines hold one whole record per line)" : "");
        return NULL;
    }
    if (!json_is_object(j)) {
        ct_errorf(CT_EINPUT, "%s:%lld: record %zu: expected a JSON object, got %s", w->path, (long long)r->line,
                  w->recno, type_name(j));
        json_decref(j);
        return NULL;
    }
    return j;
}

int ct_ds_detect_format(const ct_ds_file *f, size_t i, ct_ds_format *out) {
    where w = {f->path, f->recs[i].line, i + 1};
    json_t *j = load_record(f, i, &w);
    if (!j) return ct_last_status();
    int rc = CT_OK;
    if (json_object_get(j, "messages")) *out = CT_DS_OPENAI;
    else if (json_object_get(j, "conversation")) *out = CT_DS_CONVERSATION;
    else if (json_object_get(j, "input_ids")) *out = CT_DS_PRETOKENIZED;
    else if (json_object_get(j, "instruction")) *out = CT_DS_ALPACA;
    else
        rc = ct_errorf(CT_EINPUT, "%s:%lld: record %zu: cannot tell the dataset format: expected a key "
                       "'instruction' (alpaca), 'messages' (openai), 'conversation' or 'input_ids' "
                       "(pretokenized); or set the format explicitly", f->path, (long long)w.line, w.recno);
    json_decref(j);
    return rc;
}

int ct_ds_record_parse(const ct_ds_file *f, size_t i, ct_ds_format fmt, const ct_ds_parse_opts *o,
                       ct_conv *out, bool *dropped) {
    memset(out, 0, sizeof *out);
    *dropped = false;
    where w = {f->path, f->recs[i].line, i + 1};
    json_t *j = load_record(f, i, &w);
    if (!j) return ct_last_status();
    int rc;
    switch (fmt) {
    case CT_DS_ALPACA: rc = parse_alpaca(&w, j, o, out, dropped); break;
    case CT_DS_OPENAI: rc = parse_openai(&w, j, out, dropped); break;
    case CT_DS_CONVERSATION: rc = parse_conversation(&w, j, out, dropped); break;
    case CT_DS_PRETOKENIZED: rc = parse_pretokenized(&w, j, o, out); break;
    default: rc = ct_errorf(CT_EINPUT, "%s: no dataset format given (detect it first)", f->path);
    }
    json_decref(j);
    if (rc || *dropped) ct_conv_free(out);
    return rc;
}
