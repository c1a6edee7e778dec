/* A SentencePiece model (tokenizer.model, the ModelProto protobuf) read into
 * plain C: the pieces with their scores and types, and the trainer/normalizer
 * settings that change how text is encoded or decoded.
 *
 * Ownership: ct_sp_model_parse/ct_sp_model_load fill a caller-provided struct
 * whose arrays and strings are owned by it; release them with ct_sp_model_free.
 * A corrupt, truncated or unsupported file is a CT_EINPUT error naming the file
 * and what is wrong; nothing is left allocated on error. */
#ifndef CT_SP_MODEL_H
#define CT_SP_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ModelProto.SentencePiece.Type (values as in sentencepiece_model.proto). */
typedef enum {
    CT_SP_NORMAL = 1,
    CT_SP_UNKNOWN = 2,
    CT_SP_CONTROL = 3,
    CT_SP_USER_DEFINED = 4,
    CT_SP_UNUSED = 5,
    CT_SP_BYTE = 6,
} ct_sp_piece_type;

/* TrainerSpec.ModelType. Only BPE is encoded by ctuner. */
typedef enum { CT_SP_UNIGRAM = 1, CT_SP_BPE = 2, CT_SP_WORD = 3, CT_SP_CHAR = 4 } ct_sp_model_type;

typedef struct {
    uint32_t off;  /* start of the piece's bytes in ct_sp_model.blob */
    uint32_t len;  /* its length in bytes (> 0; the blob also NUL-terminates it) */
    float score;   /* merge priority: larger merges first */
    uint8_t type;  /* ct_sp_piece_type */
} ct_sp_piece;

typedef struct {
    char *blob;            /* all piece strings, each followed by a NUL; (blob_len) */
    size_t blob_len;
    ct_sp_piece *pieces;   /* (n_pieces), index = token id */
    int32_t n_pieces;

    /* trainer_spec: proto2 defaults apply to fields absent from the file */
    int model_type;                 /* ct_sp_model_type; default UNIGRAM */
    int32_t trainer_vocab_size;     /* informational */
    bool byte_fallback;             /* unknown characters -> <0xXX> byte pieces */
    bool split_digits;              /* training-time only (see tokenizer_bpe.c) */
    bool split_by_whitespace;       /* training-time only */
    bool split_by_unicode_script;   /* training-time only */
    bool split_by_number;           /* training-time only */
    bool allow_whitespace_only_pieces; /* training-time only */
    bool treat_whitespace_as_suffix;   /* dummy space goes at the end */
    int32_t unk_id, bos_id, eos_id, pad_id; /* -1 = none */
    char *unk_surface;              /* decode text of <unk>; default " \u2047 " */

    /* normalizer_spec */
    char *normalizer_name;          /* "identity", "nmt_nfkc", ... ("" when absent) */
    size_t charsmap_len;            /* precompiled_charsmap size; must be 0 (unsupported) */
    bool add_dummy_prefix;          /* default true */
    bool remove_extra_whitespaces;  /* default true */
    bool escape_whitespaces;        /* ' ' -> U+2581; default true */
} ct_sp_model;

/* Parses a serialized ModelProto (buf, len) and validates it the way
 * SentencePiece does when loading (non-empty pieces, one <unk>, 256 byte
 * pieces when byte_fallback) plus what ctuner supports (BPE, no charsmap);
 * duplicate pieces are caught when the tokenizer builds its maps. `what`
 * names the source in messages (a path). */
int ct_sp_model_parse(const uint8_t *buf, size_t len, const char *what, ct_sp_model *m);

/* Reads and parses a tokenizer.model file. */
int ct_sp_model_load(const char *path, ct_sp_model *m);

void ct_sp_model_free(ct_sp_model *m);

/* Byte value of a "<0xXX>" piece string (uppercase hex, as SentencePiece
 * writes them), or -1 when `s` is not one. */
int ct_sp_piece_to_byte(const char *s, size_t len);

#endif
