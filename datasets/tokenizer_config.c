/* tokenizer_config.json: the added/special tokens and BOS/EOS policy of a
 * Hugging Face tokenizer. Read: add_bos_token, add_eos_token,
 * added_tokens_decoder (id -> content, special, lstrip, rstrip),
 * bos/eos/unk/pad_token and additional_special_tokens (strings or
 * {"content": ...} objects). Every such string becomes a special string matched
 * whole before SentencePiece runs, as the HF tokenizer's added-token trie does.
 * special_tokens_map.json and added_tokens.json are not read (tokenizer_config
 * carries the same information in InternLM2-family directories). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/ct_error.h"
#include "datasets/file_check.h"
#include "datasets/tokenizer_internal.h"

typedef struct {
    tok_special *v;
    int n, cap;
} special_list;

static int add_special(special_list *l, const char *what, const char *content, int32_t id,
                       bool special, bool lstrip, bool rstrip) {
    size_t len = strlen(content);
    if (len == 0) return ct_errorf(CT_EINPUT, "%s: token id %d has empty content", what, id);
    for (int i = 0; i < l->n; i++) {
        if (l->v[i].len == len && memcmp(l->v[i].content, content, len) == 0) {
            if (l->v[i].id != id)
                return ct_errorf(CT_EINPUT, "%s: '%s' is given two ids, %d and %d", what, content, l->v[i].id, id);
            l->v[i].special |= special;
            return CT_OK;
        }
    }
    if (l->n == l->cap) {
        int nc = l->cap ? l->cap * 2 : 16;
        tok_special *nv = realloc(l->v, (size_t)nc * sizeof *nv);
        if (!nv) return ct_errorf(CT_ERUNTIME, "out of memory reading %s", what);
        l->v = nv;
        l->cap = nc;
    }
    char *c = strdup(content);
    if (!c) return ct_errorf(CT_ERUNTIME, "out of memory reading %s", what);
    l->v[l->n++] = (tok_special){c, len, id, special, lstrip, rstrip};
    return CT_OK;
}

/* Id of a special string: an added token already listed, else a model piece
 * (exact match), else -1. */
static int32_t resolve(const ct_tokenizer *t, const special_list *l, const char *s) {
    size_t len = strlen(s);
    for (int i = 0; i < l->n; i++)
        if (l->v[i].len == len && memcmp(l->v[i].content, s, len) == 0) return l->v[i].id;
    int32_t id = tok_map_find(t, &t->reserved, s, len);
    return id >= 0 ? id : tok_map_find(t, &t->normal, s, len);
}

/* A token given as "str", {"content": "str", ...} or null (*s = NULL). */
static int token_string(const json_t *v, const char *what, const char *key, const char **s) {
    *s = NULL;
    if (!v || json_is_null(v)) return CT_OK;
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v))
        return ct_errorf(CT_EINPUT, "%s: \"%s\" must be a string or an object with a \"content\" string", what, key);
    *s = json_string_value(v);
    return CT_OK;
}

static int get_bool(const json_t *root, const char *what, const char *key, bool *dst) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return CT_OK;
    if (!json_is_boolean(v)) return ct_errorf(CT_EINPUT, "%s: \"%s\" must be true or false", what, key);
    *dst = json_is_true(v);
    return CT_OK;
}

static int read_added(special_list *l, const char *what, const json_t *dec) {
    if (!dec || json_is_null(dec)) return CT_OK;
    if (!json_is_object(dec))
        return ct_errorf(CT_EINPUT, "%s: \"added_tokens_decoder\" must be an object of id -> token", what);
    const char *key;
    json_t *tok;
    json_object_foreach((json_t *)dec, key, tok) {
        char *end = NULL;
        long long id = strtoll(key, &end, 10);
        if (!*key || *end || id < 0 || id >= INT32_MAX)
            return ct_errorf(CT_EINPUT, "%s: added_tokens_decoder key '%s' is not a token id", what, key);
        const char *content;
        CT_TRY(token_string(tok, what, "added_tokens_decoder", &content));
        if (!content || !json_is_object(tok))
            return ct_errorf(CT_EINPUT, "%s: added_tokens_decoder[\"%s\"] needs a \"content\" string", what, key);
        bool special = false, lstrip = false, rstrip = false;
        CT_TRY(get_bool(tok, what, "special", &special));
        CT_TRY(get_bool(tok, what, "lstrip", &lstrip));
        CT_TRY(get_bool(tok, what, "rstrip", &rstrip));
        /* an id inside the model keeps the model's piece for plain SentencePiece use
         * (InternLM2 names 92538..92543 [UNUSED_TOKEN_*] there, <|im_start|> etc. here) */
        CT_TRY(add_special(l, what, content, (int32_t)id, special, lstrip, rstrip));
    }
    return CT_OK;
}

/* bos/eos/unk/pad: returns the id (or keeps *id when the key is absent). */
static int read_role(ct_tokenizer *t, special_list *l, const char *what, const json_t *root, const char *key,
                     int32_t *id) {
    const json_t *v = json_object_get(root, key);
    if (!v) return CT_OK;
    const char *s;
    CT_TRY(token_string(v, what, key, &s));
    if (!s) {
        *id = -1;
        return CT_OK;
    }
    int32_t r = resolve(t, l, s);
    if (r < 0)
        return ct_errorf(CT_EINPUT, "%s: %s '%s' is neither in added_tokens_decoder nor a piece of tokenizer.model",
                         what, key, s);
    *id = r;
    return add_special(l, what, s, r, true, false, false);
}

static int cmp_special(const void *a, const void *b) {
    const tok_special *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1; /* longest first */
    return x->id < y->id ? -1 : x->id > y->id;
}

static int model_default_id(const ct_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->sp.n_pieces && t->sp.pieces[id].type == CT_SP_CONTROL ? id : -1;
}

static int finish(ct_tokenizer *t, special_list *l) {
    if (l->n > 1) qsort(l->v, (size_t)l->n, sizeof *l->v, cmp_special); /* l->v is NULL when empty */
    t->specials = l->v;
    t->n_specials = l->n;
    l->v = NULL;
    l->n = 0;
    int32_t vs = t->sp.n_pieces;
    for (int i = 0; i < t->n_specials; i++) {
        if (t->specials[i].id >= vs) vs = t->specials[i].id + 1;
        t->special_first[(unsigned char)t->specials[i].content[0]] = true;
    }
    t->vocab_size = vs;
    t->special_of_id = malloc((size_t)vs * sizeof *t->special_of_id);
    if (!t->special_of_id) return ct_errorf(CT_ERUNTIME, "out of memory loading the tokenizer");
    for (int32_t i = 0; i < vs; i++) t->special_of_id[i] = -1;
    for (int i = 0; i < t->n_specials; i++)
        if (t->special_of_id[t->specials[i].id] < 0) t->special_of_id[t->specials[i].id] = i;
    return CT_OK;
}

int tok_config_load(ct_tokenizer *t, const char *path) {
    special_list l = {0};
    t->add_bos = true;
    t->add_eos = false;
    t->bos_id = model_default_id(t, t->sp.bos_id);
    t->eos_id = model_default_id(t, t->sp.eos_id);
    t->pad_id = model_default_id(t, t->sp.pad_id);
    t->unk_id = t->unk_piece;
    struct stat st;
    int rc = CT_OK;
    json_t *root = NULL;
    if (!path || stat(path, &st) != 0) {
        /* no config: the HF tokenizer's defaults make <unk>, <s>, </s> special */
        for (int32_t i = 0; i < t->sp.n_pieces && !rc; i++) {
            const ct_sp_piece *p = &t->sp.pieces[i];
            if (p->type == CT_SP_CONTROL || p->type == CT_SP_UNKNOWN)
                rc = add_special(&l, t->path, t->sp.blob + p->off, i, true, false, false);
        }
        goto done;
    }
    json_error_t err;
    FILE *fp = NULL; /* a FIFO here used to block the load forever */
    if ((rc = ct_fopen_regular(path, "tokenizer_config.json", &fp, NULL))) goto done;
    root = json_loadf(fp, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &err);
    fclose(fp);
    if (!root) {
        rc = ct_errorf(CT_EINPUT, "%s:%d:%d: %s (fix or remove the file)", path, err.line, err.column, err.text);
        goto done;
    }
    if (!json_is_object(root)) {
        rc = ct_errorf(CT_EINPUT, "%s: expected a JSON object", path);
        goto done;
    }
    if ((rc = get_bool(root, path, "add_bos_token", &t->add_bos)) ||
        (rc = get_bool(root, path, "add_eos_token", &t->add_eos)) ||
        (rc = read_added(&l, path, json_object_get(root, "added_tokens_decoder"))) ||
        (rc = read_role(t, &l, path, root, "unk_token", &t->unk_id)) ||
        (rc = read_role(t, &l, path, root, "bos_token", &t->bos_id)) ||
        (rc = read_role(t, &l, path, root, "eos_token", &t->eos_id)) ||
        (rc = read_role(t, &l, path, root, "pad_token", &t->pad_id)))
        goto done;
    const json_t *extra = json_object_get(root, "additional_special_tokens");
    if (extra && !json_is_null(extra)) {
        if (!json_is_array(extra)) {
            rc = ct_errorf(CT_EINPUT, "%s: \"additional_special_tokens\" must be a list", path);
            goto done;
        }
        size_t i;
        json_t *v;
        json_array_foreach(extra, i, v) {
            const char *s;
            if ((rc = token_string(v, path, "additional_special_tokens", &s))) goto done;
            if (!s) continue;
            int32_t id = resolve(t, &l, s);
            if (id < 0) {
                rc = ct_errorf(CT_EINPUT, "%s: additional special token '%s' has no id (not in added_tokens_decoder "
                               "nor tokenizer.model)", path, s);
                goto done;
            }
            if ((rc = add_special(&l, path, s, id, true, false, false))) goto done;
        }
    }
done:
    json_decref(root);
    if (!rc) rc = finish(t, &l);
    for (int i = 0; i < l.n; i++) free(l.v[i].content);
    free(l.v);
    return rc;
}
