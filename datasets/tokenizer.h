/* The InternLM2-family tokenizer: SentencePiece BPE (tokenizer.model) plus the
 * added/special tokens of tokenizer_config.json, giving the ids the Hugging Face
 * (slow, sentencepiece-based) tokenizer gives:
 *   [BOS if asked] + for each chunk of text between special strings: the
 *   SentencePiece encoding of the chunk, then the special token's id.
 *
 * Ownership: ct_tok_load returns a tokenizer owned by the caller (ct_tok_free).
 * It is immutable after loading, so any number of threads may encode/decode
 * with one tokenizer at the same time. Id vectors (ct_ids) and decoded strings
 * are owned by the caller. Strings returned by ct_tok_piece live as long as
 * the tokenizer. */
#ifndef CT_TOKENIZER_H
#define CT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ct_tokenizer ct_tokenizer;

/* A growable id vector; zero-initialise it, encode appends, ct_ids_free frees. */
typedef struct {
    int32_t *v; /* (n) ids, capacity cap */
    size_t n, cap;
} ct_ids;

int ct_ids_push(ct_ids *a, int32_t id);
int ct_ids_reserve(ct_ids *a, size_t extra); /* room for `extra` more ids */
void ct_ids_free(ct_ids *a);

/* Loads from a directory (DIR/tokenizer.model and, when present,
 * DIR/tokenizer_config.json; a Hugging Face model directory works as is) or
 * from a tokenizer.model file (then tokenizer_config.json beside it is read
 * too when present). Without a config: no added tokens, BOS added by default,
 * and the model's control/unknown pieces (<s>, </s>, <unk>) act as special
 * strings, as the HF tokenizer's defaults make them. */
int ct_tok_load(const char *path, ct_tokenizer **out);
void ct_tok_free(ct_tokenizer *t);

/* Encodes text (len bytes, any bytes incl. NUL and invalid UTF-8) and APPENDS
 * the ids to *out: BOS first when add_bos (and the tokenizer has one), then the
 * text with special strings matched whole (longest first) and the chunks
 * between them encoded by SentencePiece. Never adds EOS: callers that honour
 * add_eos_token (ct_tok_add_eos_token) append ct_tok_eos_id themselves. */
int ct_tok_encode(const ct_tokenizer *t, const char *text, size_t len, bool add_bos, ct_ids *out);

/* SentencePiece alone (no special strings, no BOS): what spm_encode and
 * sentencepiece's encode() give. Appends to *out. */
int ct_tok_encode_plain(const ct_tokenizer *t, const char *text, size_t len, ct_ids *out);

/* Decodes ids into a new NUL-terminated string (*text, *len bytes; caller
 * frees). Special tokens (added tokens, <s>, </s>, <unk>, ...) split the ids
 * into runs decoded by SentencePiece's rules (byte pieces reassembled, invalid
 * UTF-8 -> U+FFFD, U+2581 -> space, the dummy-prefix space dropped at the start
 * of each run when the model adds one); a special token itself becomes its
 * content string when show_special, else nothing. Ids out of range: CT_EINPUT. */
int ct_tok_decode(const ct_tokenizer *t, const int32_t *ids, size_t n, bool show_special, char **text,
                  size_t *len);

/* SentencePiece's own decode() of the ids (control pieces -> nothing, <unk> ->
 * the model's unk surface, added tokens -> their piece in the model). */
int ct_tok_decode_plain(const ct_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len);

/* The string of an id: an added token's content, else the model's piece (with
 * U+2581 for spaces); NULL when the id is out of range. *len may be NULL. */
const char *ct_tok_piece(const ct_tokenizer *t, int32_t id, size_t *len);

/* The id of a special/added token string or of a model piece; -1 when none. */
int32_t ct_tok_piece_to_id(const ct_tokenizer *t, const char *s, size_t len);

/* Number of ids (model pieces and added tokens beyond them). */
int32_t ct_tok_vocab_size(const ct_tokenizer *t);
int32_t ct_tok_bos_id(const ct_tokenizer *t); /* -1 when none */
int32_t ct_tok_eos_id(const ct_tokenizer *t); /* -1 when none */
int32_t ct_tok_unk_id(const ct_tokenizer *t);
int32_t ct_tok_pad_id(const ct_tokenizer *t); /* -1 when none */
bool ct_tok_add_bos_token(const ct_tokenizer *t); /* tokenizer_config add_bos_token (default true) */
bool ct_tok_add_eos_token(const ct_tokenizer *t); /* tokenizer_config add_eos_token (default false) */
/* Whether the id is a special token (added token or control/unknown piece). */
bool ct_tok_is_special(const ct_tokenizer *t, int32_t id);

#endif
