/* The tokenizer's public face: loading a directory or model file, the special
 * string split that the Hugging Face tokenizer does before SentencePiece, the
 * decode that renders special tokens, and the vocabulary accessors. */
#include "datasets/tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/ct_error.h"
#include "datasets/tokenizer_internal.h"

/* ---- id vectors ---- */

int ct_ids_reserve(ct_ids *a, size_t extra) {
    if (a->n + extra <= a->cap) return CT_OK;
    size_t nc = a->cap ? a->cap : 64;
    while (nc < a->n + extra) nc *= 2;
    int32_t *nv = realloc(a->v, nc * sizeof *nv);
    if (!nv) return ct_errorf(CT_ERUNTIME, "out of memory growing an id vector to %zu ids", nc);
    a->v = nv;
    a->cap = nc;
    return CT_OK;
}

int ct_ids_push(ct_ids *a, int32_t id) {
    if (a->n == a->cap) CT_TRY(ct_ids_reserve(a, 1));
    a->v[a->n++] = id;
    return CT_OK;
}

void ct_ids_free(ct_ids *a) {
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

/* ---- loading ---- */

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    s[a] = '/';
    memcpy(s + a + 1, name, b + 1);
    return s;
}

int ct_tok_load(const char *path, ct_tokenizer **out) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return ct_errorf(CT_EINPUT, "%s: no such file or directory (give a tokenizer or model directory, or a "
                         "tokenizer.model file)", path);
    char *model_path = NULL, *config_path = NULL;
    if (S_ISDIR(st.st_mode)) {
        model_path = join(path, "tokenizer.model");
        config_path = join(path, "tokenizer_config.json");
    } else {
        const char *slash = strrchr(path, '/');
        char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
        model_path = strdup(path);
        config_path = dir ? join(dir, "tokenizer_config.json") : NULL;
        free(dir);
    }
    ct_tokenizer *t = calloc(1, sizeof *t);
    int rc = CT_OK;
    if (!model_path || !config_path || !t) {
        rc = ct_errorf(CT_ERUNTIME, "out of memory loading a tokenizer");
        goto fail;
    }
    if (S_ISDIR(st.st_mode) && stat(model_path, &st) != 0) {
        rc = ct_errorf(CT_EINPUT, "%s: no tokenizer.model in this directory (ctuner reads SentencePiece tokenizers)",
                       path);
        goto fail;
    }
    t->path = model_path;
    model_path = NULL;
    if ((rc = ct_sp_model_load(t->path, &t->sp))) goto fail;
    if ((rc = tok_vocab_build(t))) goto fail;
    if ((rc = tok_config_load(t, config_path))) goto fail;
    free(config_path);
    *out = t;
    return CT_OK;
fail:
    free(model_path);
    free(config_path);
    ct_tok_free(t);
    return rc;
}

void ct_tok_free(ct_tokenizer *t) {
    if (!t) return;
    tok_vocab_free(t);
    ct_sp_model_free(&t->sp);
    for (int i = 0; i < t->n_specials; i++) free(t->specials[i].content);
    free(t->specials);
    free(t->special_of_id);
    free(t->path);
    free(t);
}

/* ---- encoding ---- */

static bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* Longest special string at text[i..len), or NULL. */
static const tok_special *match_special(const ct_tokenizer *t, const char *text, size_t i, size_t len) {
    for (int k = 0; k < t->n_specials; k++) { /* sorted longest first */
        const tok_special *sp = &t->specials[k];
        if (sp->len <= len - i && sp->content[0] == text[i] && memcmp(sp->content, text + i, sp->len) == 0)
            return sp;
    }
    return NULL;
}

int ct_tok_encode(const ct_tokenizer *t, const char *text, size_t len, bool add_bos, ct_ids *out) {
    if (add_bos && t->bos_id >= 0) CT_TRY(ct_ids_push(out, t->bos_id));
    size_t chunk = 0; /* start of the text not yet encoded */
    for (size_t i = 0; i < len;) {
        const tok_special *sp = t->special_first[(unsigned char)text[i]] ? match_special(t, text, i, len) : NULL;
        if (!sp) {
            i++;
            continue;
        }
        size_t end = i;
        if (sp->lstrip)
            while (end > chunk && is_ascii_space(text[end - 1])) end--;
        CT_TRY(tok_sp_encode(t, text + chunk, end - chunk, out));
        CT_TRY(ct_ids_push(out, sp->id));
        i += sp->len;
        if (sp->rstrip)
            while (i < len && is_ascii_space(text[i])) i++;
        chunk = i;
    }
    return tok_sp_encode(t, text + chunk, len - chunk, out);
}

int ct_tok_encode_plain(const ct_tokenizer *t, const char *text, size_t len, ct_ids *out) {
    return tok_sp_encode(t, text, len, out);
}

/* ---- decoding ---- */

int ct_tok_decode(const ct_tokenizer *t, const int32_t *ids, size_t n, bool show_special, char **text, size_t *len) {
    tok_buf b = {0};
    int rc = tok_buf_append(&b, "", 0);
    size_t run = 0; /* start of the current run of SentencePiece ids */
    for (size_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size) {
            rc = ct_errorf(CT_EINPUT, "cannot decode id %d at position %zu: the vocabulary has ids 0..%d", id, i,
                           t->vocab_size - 1);
            break;
        }
        int k = t->special_of_id[id];
        if (k < 0) {
            if (id >= t->sp.n_pieces)
                rc = ct_errorf(CT_EINPUT, "cannot decode id %d at position %zu: no token has this id", id, i);
            continue;
        }
        rc = tok_sp_decode(t, ids + run, i - run, &b);
        run = i + 1;
        const tok_special *sp = &t->specials[k];
        if (!rc && (show_special || !sp->special)) rc = tok_buf_append(&b, sp->content, sp->len);
    }
    /* The tail run (none when the ids end with a special, or there are no ids:
     * ids may then be NULL, and NULL + 0 is undefined). */
    if (!rc && run < n) rc = tok_sp_decode(t, ids + run, n - run, &b);
    if (rc) {
        free(b.s);
        return rc;
    }
    *text = b.s;
    if (len) *len = b.len;
    return CT_OK;
}

int ct_tok_decode_plain(const ct_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len) {
    tok_buf b = {0};
    int rc = tok_buf_append(&b, "", 0);
    if (!rc) rc = tok_sp_decode(t, ids, n, &b);
    if (rc) {
        free(b.s);
        return rc;
    }
    *text = b.s;
    if (len) *len = b.len;
    return CT_OK;
}

/* ---- vocabulary ---- */

const char *ct_tok_piece(const ct_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    int k = t->special_of_id[id];
    if (k >= 0) {
        if (len) *len = t->specials[k].len;
        return t->specials[k].content;
    }
    if (id >= t->sp.n_pieces) return NULL;
    if (len) *len = t->sp.pieces[id].len;
    return t->sp.blob + t->sp.pieces[id].off;
}

int32_t ct_tok_piece_to_id(const ct_tokenizer *t, const char *s, size_t len) {
    for (int k = 0; k < t->n_specials; k++)
        if (t->specials[k].len == len && memcmp(t->specials[k].content, s, len) == 0) return t->specials[k].id;
    int32_t id = tok_map_find(t, &t->reserved, s, len);
    return id >= 0 ? id : tok_map_find(t, &t->normal, s, len);
}

int32_t ct_tok_vocab_size(const ct_tokenizer *t) { return t->vocab_size; }
int32_t ct_tok_bos_id(const ct_tokenizer *t) { return t->bos_id; }
int32_t ct_tok_eos_id(const ct_tokenizer *t) { return t->eos_id; }
int32_t ct_tok_unk_id(const ct_tokenizer *t) { return t->unk_id; }
int32_t ct_tok_pad_id(const ct_tokenizer *t) { return t->pad_id; }
bool ct_tok_add_bos_token(const ct_tokenizer *t) { return t->add_bos; }
bool ct_tok_add_eos_token(const ct_tokenizer *t) { return t->add_eos; }

bool ct_tok_is_special(const ct_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->vocab_size) return false;
    if (t->special_of_id[id] >= 0) return t->specials[t->special_of_id[id]].special;
    int ty = id < t->sp.n_pieces ? t->sp.pieces[id].type : 0;
    return ty == CT_SP_CONTROL || ty == CT_SP_UNKNOWN;
}
