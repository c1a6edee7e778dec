/* ctuner tokenize: the ids (or pieces) of a text, as the Hugging Face tokenizer
 * of the directory gives them: BOS when tokenizer_config says add_bos_token
 * (unless --no-bos), special strings matched whole, EOS when add_eos_token.
 * --file encodes the whole file as one text (newlines and NUL bytes included),
 * not line by line. Pieces are printed with C escapes for control bytes and
 * backslashes so the output stays one line per text. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/file_check.h"
#include "datasets/tokenizer.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"

static int read_all(const char *path, char **data, size_t *len) {
    FILE *f;
    CT_TRY(ct_fopen_regular(path, "the input file", &f, NULL));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return ct_errorf(CT_ERUNTIME, "%s: out of memory reading the file", path);
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) free(buf);
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return ct_errorf(CT_EINPUT, "%s: read error", path);
    }
    *data = buf;
    *len = n;
    return CT_OK;
}

static void print_piece(FILE *out, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') fputs("\\\\", out);
        else if (c == '\n') fputs("\\n", out);
        else if (c == '\t') fputs("\\t", out);
        else if (c == '\r') fputs("\\r", out);
        else if (c < 0x20 || c == 0x7f) fprintf(out, "\\x%02x", c);
        else fputc(c, out);
    }
}

int ct_cmd_tokenize(int argc, char **argv) {
    const char *text = NULL, *file = NULL;
    bool pieces = false, no_bos = false;
    const ct_argspec specs[] = {
        {"--text", CT_ARG_STR, &text, "S", "the text to encode"},
        {"--file", CT_ARG_STR, &file, "F", "encode the whole content of file F (any bytes)"},
        {"--pieces", CT_ARG_FLAG, &pieces, NULL, "print the pieces instead of the ids"},
        {"--no-bos", CT_ARG_FLAG, &no_bos, NULL, "add no BOS/EOS (SentencePiece of the text and specials only)"},
    };
    ct_args a = {.usage = "ctuner tokenize TOKENIZER_OR_MODEL_DIR (--text S | --file F) [--pieces] [--no-bos]",
                 .summary = "Print the token ids (space-separated, one line) of a text as the Hugging Face tokenizer\n"
                            "of the directory gives them. DIR may also be a tokenizer.model file.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0]),
                 .min_positional = 1,
                 .max_positional = 1};
    CT_TRY(ct_args_parse(&a, argc, argv));
    if ((text != NULL) == (file != NULL))
        return ct_errorf(CT_EINPUT, "give exactly one of --text S or --file F (usage: %s)", a.usage);

    ct_tokenizer *tok = NULL;
    CT_TRY(ct_tok_load(a.positional[0], &tok));
    char *data = NULL;
    size_t len = 0;
    int rc = CT_OK;
    if (file) rc = read_all(file, &data, &len);
    ct_ids ids = {0};
    if (!rc) {
        bool bos = !no_bos && ct_tok_add_bos_token(tok);
        rc = file ? ct_tok_encode(tok, data, len, bos, &ids) : ct_tok_encode(tok, text, strlen(text), bos, &ids);
    }
    if (!rc && !no_bos && ct_tok_add_eos_token(tok) && ct_tok_eos_id(tok) >= 0)
        rc = ct_ids_push(&ids, ct_tok_eos_id(tok));
    if (!rc) {
        for (size_t i = 0; i < ids.n; i++) {
            if (i) fputc(' ', stdout);
            if (pieces) {
                size_t pl = 0;
                const char *p = ct_tok_piece(tok, ids.v[i], &pl);
                print_piece(stdout, p ? p : "", p ? pl : 0);
            } else {
                printf("%d", ids.v[i]);
            }
        }
        fputc('\n', stdout);
        if (fflush(stdout) != 0) rc = ct_errorf(CT_ERUNTIME, "writing the output failed: %s", strerror(errno));
    }
    ct_ids_free(&ids);
    free(data);
    ct_tok_free(tok);
    return rc;
}
