/* Dataset files: a JSON array of records or JSON Lines (one record per line),
 * split into records without parsing them all at once, and each record turned
 * into conversation turns in one of four formats (formats.c):
 *   alpaca        {instruction, input, output}
 *   openai        {messages: [{role, content, loss?}, ...]}
 *   conversation  {conversation: [{system?, input, output}, ...]}  (XTuner's)
 *   pretokenized  {input_ids: [...], labels?: [...]}  labels aligned with the ids
 *                 (-100 = untrained); without labels every token is trained
 *                 (labels = input_ids, as Hugging Face's causal-LM collator does)
 * Errors name the file, the line (of the record's start for a JSON array) and
 * the record number (1-based), and the field.
 *
 * Ownership: ct_ds_file owns the file's bytes and the record table
 * (ct_ds_file_free); a ct_conv owns all its strings and id vectors
 * (ct_conv_free). */
#ifndef CT_DATASET_READER_H
#define CT_DATASET_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "datasets/tokenizer.h"

typedef enum {
    CT_DS_AUTO = 0, /* detect from the first record */
    CT_DS_ALPACA,
    CT_DS_OPENAI,
    CT_DS_CONVERSATION,
    CT_DS_PRETOKENIZED,
} ct_ds_format;

/* "alpaca", ... ("auto" for CT_DS_AUTO). */
const char *ct_ds_format_name(ct_ds_format f);
/* Name -> format; an unknown name is CT_EINPUT listing the names. */
int ct_ds_format_parse(const char *name, ct_ds_format *out);

/* One record of a file: bytes [off, off+len) of the file, starting at `line`. */
typedef struct {
    size_t off, len;
    int64_t line; /* 1-based */
} ct_ds_rec;

typedef struct {
    char *path;      /* copy of the path, for messages */
    char *buf;       /* (size + 1) the file's bytes, NUL-terminated */
    size_t size;
    bool json_lines; /* false: one JSON array */
    ct_ds_rec *recs; /* (n) records in file order */
    size_t n;
} ct_ds_file;

/* Reads and splits a file. Container errors (empty file, not a JSON array or
 * JSON Lines, an unterminated array, text between records) are CT_EINPUT with
 * line and column; a record's own content is checked by ct_ds_record_parse. */
int ct_ds_file_read(const char *path, ct_ds_file *f);
void ct_ds_file_free(ct_ds_file *f);

/* ---- records -> turns (formats.c) ---- */

typedef struct {
    char *system; /* NULL when the turn has none */
    char *input;  /* never NULL */
    char *output; /* never NULL */
    bool output_loss; /* false: the output (and its EOS) is not trained */
} ct_turn;

typedef struct {
    ct_turn *turns; /* (n_turns) */
    size_t n_turns, cap;
    bool pretokenized; /* then ids/labels hold the record and turns is empty */
    ct_ids ids, labels; /* pretokenized: labels.n == ids.n, labels aligned with ids */
} ct_conv;

void ct_conv_free(ct_conv *c);

typedef struct {
    bool alpaca_drop_empty_input; /* false (XTuner): "instruction\ninput" even for input "" */
    int32_t vocab_size;           /* pretokenized ids must lie in [0, vocab_size) */
} ct_ds_parse_opts;

/* The format of record i (by its keys: messages -> openai, conversation ->
 * conversation, input_ids -> pretokenized, instruction -> alpaca). */
int ct_ds_detect_format(const ct_ds_file *f, size_t i, ct_ds_format *out);

/* Parses record i in format fmt into *out (zeroed first; freed on error).
 * *dropped = true when the record has nothing to train by the format's rules
 * (alpaca "<nooutput>", a conversation without turns); *out is then empty.
 * Thread-safe: any number of records may be parsed concurrently. */
int ct_ds_record_parse(const ct_ds_file *f, size_t i, ct_ds_format fmt, const ct_ds_parse_opts *o,
                       ct_conv *out, bool *dropped);

#endif
