/* Dataset files into records: the container (JSON array or JSON Lines) is
 * found from the first character, and the file is cut into one byte range per
 * record, each with the line it starts on. Records are parsed later, one by
 * one and in parallel (formats.c), so a bad record's error names its own line
 * and a huge file never becomes one huge JSON tree. */
#include "datasets/dataset_reader.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/ct_error.h"
#include "datasets/file_check.h"

static const char *const format_names[] = {"auto", "alpaca", "openai", "conversation", "pretokenized"};

const char *ct_ds_format_name(ct_ds_format f) {
    return (unsigned)f < sizeof format_names / sizeof format_names[0] ? format_names[f] : "?";
}

int ct_ds_format_parse(const char *name, ct_ds_format *out) {
    for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++)
        if (name && strcmp(name, format_names[i]) == 0) {
            *out = (ct_ds_format)i;
            return CT_OK;
        }
    return ct_errorf(CT_EINPUT, "unknown dataset format '%s'; use one of: alpaca, openai, conversation, "
                     "pretokenized (or auto: detected from the first record)", name ? name : "(none)");
}

void ct_ds_file_free(ct_ds_file *f) {
    free(f->path);
    free(f->buf);
    free(f->recs);
    memset(f, 0, sizeof *f);
}

static int push_rec(ct_ds_file *f, size_t *cap, size_t off, size_t len, int64_t line) {
    if (f->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        ct_ds_rec *nr = realloc(f->recs, nc * sizeof *nr);
        if (!nr) return ct_errorf(CT_ERUNTIME, "%s: out of memory indexing %zu records", f->path, f->n);
        f->recs = nr;
        *cap = nc;
    }
    f->recs[f->n++] = (ct_ds_rec){off, len, line};
    return CT_OK;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* 1-based column of byte `off` (bytes since the line start). */
static size_t column_of(const char *buf, size_t off) {
    size_t c = 1;
    while (off > 0 && buf[off - 1] != '\n') off--, c++;
    return c;
}

/* JSON Lines: every line with something other than whitespace is a record. */
static int split_lines(ct_ds_file *f, size_t p) {
    size_t cap = 0;
    int64_t line = 1;
    for (size_t q = 0; q < p; q++) line += f->buf[q] == '\n';
    while (p < f->size) {
        const char *nl = memchr(f->buf + p, '\n', f->size - p);
        size_t end = nl ? (size_t)(nl - f->buf) : f->size;
        size_t a = p, b = end;
        while (a < b && is_ws(f->buf[a])) a++;
        while (b > a && is_ws(f->buf[b - 1])) b--;
        if (b > a) CT_TRY(push_rec(f, &cap, a, b - a, line));
        p = end + 1;
        line++;
    }
    return CT_OK;
}

/* A JSON array: records are the top-level elements, found by bracket depth
 * outside strings (their contents are checked when each is parsed). */
static int split_array(ct_ds_file *f, size_t p) {
    const char *s = f->buf;
    size_t cap = 0, n = f->size;
    int64_t line = 1;
    for (size_t q = 0; q < p; q++) line += s[q] == '\n';
    p++; /* past '[' */
    for (;;) {
        while (p < n && is_ws(s[p])) line += s[p++] == '\n';
        if (p < n && s[p] == ']' && f->n == 0) {
            p++;
            break; /* "[]": no records; the caller reports it */
        }
        size_t start = p;
        int64_t start_line = line;
        int64_t depth = 0;
        bool in_str = false;
        for (; p < n; p++) {
            char c = s[p];
            if (c == '\n') line++;
            if (in_str) {
                if (c == '\\' && p + 1 < n) {
                    p++;
                    if (s[p] == '\n') line++;
                } else if (c == '"') {
                    in_str = false;
                }
                continue;
            }
            if (c == '"') in_str = true;
            else if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') {
                if (depth == 0) break;
                depth--;
            } else if (c == ',' && depth == 0) break;
        }
        if (p >= n)
            return ct_errorf(CT_EINPUT, "%s:%lld: the JSON array is not closed: record %zu (from line %lld) or "
                             "the final ']' is cut off; check that the file is complete",
                             f->path, (long long)line, f->n + 1, (long long)start_line);
        size_t end = p;
        while (end > start && is_ws(s[end - 1])) end--;
        if (end == start)
            return ct_errorf(CT_EINPUT, "%s:%lld:%zu: empty record %zu in the JSON array (an extra or trailing "
                             "comma?)", f->path, (long long)line, column_of(s, p), f->n + 1);
        if (s[p] == '}')
            return ct_errorf(CT_EINPUT, "%s:%lld:%zu: unbalanced '}' in record %zu of the JSON array",
                             f->path, (long long)line, column_of(s, p), f->n + 1);
        CT_TRY(push_rec(f, &cap, start, end - start, start_line));
        if (s[p++] == ']') break;
    }
    while (p < n && is_ws(s[p])) line += s[p++] == '\n';
    if (p < n)
        return ct_errorf(CT_EINPUT, "%s:%lld:%zu: text after the closing ']' of the JSON array; a JSON file "
                         "holds one array of records", f->path, (long long)line, column_of(s, p));
    return CT_OK;
}

int ct_ds_file_read(const char *path, ct_ds_file *f) {
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return ct_errorf(CT_ERUNTIME, "out of memory");
    FILE *fp = NULL;
    int rc = ct_fopen_regular(path, "the dataset file (a .json or .jsonl file)", &fp, &f->size);
    if (rc) goto fail;
    f->buf = malloc(f->size + 1); /* the file's bytes + NUL */
    if (!f->buf) {
        fclose(fp);
        rc = ct_errorf(CT_ERUNTIME, "%s: out of memory reading %zu bytes", path, f->size);
        goto fail;
    }
    size_t got = fread(f->buf, 1, f->size, fp);
    int read_err = ferror(fp);
    fclose(fp);
    if (got != f->size || read_err) {
        rc = ct_errorf(CT_ERUNTIME, "%s: read %zu of %zu bytes: %s", path, got, f->size,
                       read_err ? "I/O error" : "the file changed while being read");
        goto fail;
    }
    f->buf[f->size] = '\0';

    size_t p = 0;
    if (f->size >= 3 && memcmp(f->buf, "\xEF\xBB\xBF", 3) == 0) p = 3; /* UTF-8 byte order mark */
    while (p < f->size && is_ws(f->buf[p])) p++;
    if (p == f->size) {
        rc = ct_errorf(CT_EINPUT, "%s: the dataset file is empty; it must hold a JSON array of records or "
                       "JSON Lines (one record per line)", path);
        goto fail;
    }
    if (f->buf[p] == '[') {
        rc = split_array(f, p);
    } else if (f->buf[p] == '{') {
        f->json_lines = true;
        rc = split_lines(f, p);
    } else {
        int64_t line = 1;
        for (size_t q = 0; q < p; q++) line += f->buf[q] == '\n';
        rc = ct_errorf(CT_EINPUT, "%s:%lld:%zu: expected a JSON array ('[') or JSON Lines records ('{'), found "
                       "'%c'", path, (long long)line, column_of(f->buf, p), f->buf[p]);
    }
    if (rc) goto fail;
    if (f->n == 0) {
        rc = ct_errorf(CT_EINPUT, "%s: the JSON array has no records", path);
        goto fail;
    }
    return CT_OK;
fail:
    ct_ds_file_free(f);
    return rc;
}
