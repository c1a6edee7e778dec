/* Internals shared by the tokenizer_*.c files (not a public header): the
 * loaded tokenizer, its piece lookup tables, and the SentencePiece core
 * (normalize + BPE encode, decode) that tokenizer.c wraps with special tokens. */
#ifndef CT_TOKENIZER_INTERNAL_H
#define CT_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "datasets/sp_model.h"
#include "datasets/tokenizer.h"

/* Open-addressing hash map: piece string -> id. A slot holds the first 8
 * bytes of its piece (zero padded) and a tag of hash and length, so pieces of
 * up to 8 bytes (most of them) are matched without touching the string blob. */
typedef struct {
    uint64_t head; /* first min(len, 8) bytes, little-endian, zero padded */
    uint32_t meta; /* hash tag (high 24 bits) | min(len, 255) */
    int32_t id;    /* -1 = empty */
} tok_slot;

typedef struct {
    tok_slot *slots; /* (mask + 1) */
    size_t mask;
} tok_map;

/* Trie of the USER_DEFINED pieces (SentencePiece's PrefixMatcher): the
 * longest user-defined symbol at a position is one unbreakable symbol. */
typedef struct {
    int32_t child, sibling; /* node indices, -1 = none */
    uint8_t byte;
    bool terminal;
} tok_trie_node;

/* A string matched whole before SentencePiece runs (tokenizer_config.json). */
typedef struct {
    char *content; /* owned, NUL-terminated */
    size_t len;
    int32_t id;
    bool special;        /* HF "special" flag (skip_special_tokens) */
    bool lstrip, rstrip; /* HF: eat ASCII whitespace on that side */
} tok_special;

struct ct_tokenizer {
    ct_sp_model sp;
    char *path; /* for messages */

    tok_map normal;   /* NORMAL, USER_DEFINED, UNUSED pieces: merge candidates */
    tok_map reserved; /* UNKNOWN, CONTROL, BYTE pieces: looked up first, never merged */
    uint32_t max_normal_len; /* longest normal piece, bytes: longer pairs are never looked up */
    float *scores;           /* (n_pieces) piece scores, compact for the merge loop */
    bool cross_dups;  /* some string is both a reserved and a normal piece */
    /* Every pair of adjacent characters inside a normal piece, as (first char's
     * bytes << 32 | second char's bytes) + 1, 0 = empty slot. A pair of symbols
     * whose junction is not in this set can never merge: no lookup is needed,
     * and the text splits there into independent segments (small heaps). */
    uint64_t *bigrams; /* (bigram_mask + 1) */
    size_t bigram_mask;
    bool bigram_max;   /* the one key that +1 would wrap to 0 is present */
    bool has_unused;  /* UNUSED pieces exist: merged ones are re-split (resegment) */
    int32_t unk_piece;    /* the UNKNOWN piece's id */
    int32_t byte_id[256]; /* id of <0xXX>, -1 without byte_fallback */

    tok_trie_node *trie; /* (n_trie) user-defined symbols; root children via trie_root */
    int32_t n_trie;
    int32_t trie_root[256]; /* first node for a leading byte, -1 = none */

    tok_special *specials; /* (n_specials), longest content first */
    int n_specials;
    bool special_first[256]; /* some special string starts with this byte */
    int32_t *special_of_id;  /* (vocab_size) index into specials for decode, -1 = not special */

    int32_t vocab_size;
    int32_t bos_id, eos_id, unk_id, pad_id;
    bool add_bos, add_eos;
};

/* Growable byte buffer for decoding. */
typedef struct {
    char *s;
    size_t len, cap;
} tok_buf;

int tok_buf_append(tok_buf *b, const void *data, size_t n);

/* ---- tokenizer_vocab.c ---- */
int tok_vocab_build(ct_tokenizer *t);  /* maps, trie, byte ids; checks duplicates */
void tok_vocab_free(ct_tokenizer *t);
int32_t tok_map_find(const ct_tokenizer *t, const tok_map *m, const char *s, size_t len);
/* The same for a string followed by at least 8 readable bytes (no copying). */
int32_t tok_map_find_padded(const ct_tokenizer *t, const tok_map *m, const char *s, size_t len);
/* SentencePiece's PieceToId: reserved first, then normal, else the unk piece. */
int32_t tok_sp_piece_to_id(const ct_tokenizer *t, const char *s, size_t len);
/* Whether characters a then b (packed bytes, see tok_char_pack) occur
 * adjacent inside some normal piece. */
bool tok_bigram_has(const ct_tokenizer *t, uint32_t a, uint32_t b);
/* The bytes of a character of n <= 4 bytes as an integer (little-endian). */
static inline uint32_t tok_char_pack(const char *s, size_t n) {
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint32_t)(unsigned char)s[i] << (8 * i);
    return v;
}
/* SentencePiece's OneCharLen: UTF-8 length from the lead byte alone. */
static inline size_t tok_one_char_len(unsigned char c) {
    static const unsigned char len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[c >> 4];
}
/* Longest user-defined symbol at s (len bytes available); 0 when none. */
size_t tok_trie_match(const ct_tokenizer *t, const char *s, size_t len);

/* ---- tokenizer_bpe.c ---- */
/* SentencePiece encode of one chunk (normalize, BPE, byte fallback); appends. */
int tok_sp_encode(const ct_tokenizer *t, const char *text, size_t len, ct_ids *out);

/* ---- tokenizer_decode.c ---- */
/* SentencePiece decode of ids, appended to *b. */
int tok_sp_decode(const ct_tokenizer *t, const int32_t *ids, size_t n, tok_buf *b);

/* ---- tokenizer_config.c ---- */
/* Reads tokenizer_config.json (path may not exist: then model-file defaults). */
int tok_config_load(ct_tokenizer *t, const char *config_path);

/* UTF-8 decoding as SentencePiece's string_util::DecodeUTF8: the code point's
 * length in *mblen; invalid (truncated, overlong, surrogate, > U+10FFFF) gives
 * *mblen = 1 and returns false. A literal U+FFFD is valid. */
static inline bool tok_utf8_valid_char(const unsigned char *s, size_t n, size_t *mblen) {
    unsigned c = s[0];
    *mblen = 1;
    if (c < 0x80) return true;
    if (n >= 2 && (c & 0xE0) == 0xC0) {
        unsigned cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        if ((s[1] & 0xC0) == 0x80 && cp >= 0x80) {
            *mblen = 2;
            return true;
        }
    } else if (n >= 3 && (c & 0xF0) == 0xE0) {
        unsigned cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        if ((s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && cp >= 0x800 && (cp < 0xD800 || cp >= 0xE000)) {
            *mblen = 3;
            return true;
        }
    } else if (n >= 4 && (c & 0xF8) == 0xF0) {
        unsigned cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
        if ((s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 && cp >= 0x10000 &&
            cp <= 0x10FFFF) {
            *mblen = 4;
            return true;
        }
    }
    return false;
}

#endif
