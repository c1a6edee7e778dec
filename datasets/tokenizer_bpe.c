/* SentencePiece BPE encoding, step for step as sentencepiece's normalizer.cc,
 * bpe_model.cc and SentencePieceProcessor::Encode (v0.1.9x):
 *
 *  1. normalize: identity character mapping (ctuner rejects precompiled
 *     charsmaps at load), invalid UTF-8 bytes -> U+FFFD one byte at a time,
 *     optional removal of leading/trailing/repeated spaces, the dummy prefix
 *     (or suffix) space, ' ' -> U+2581. User-defined symbols pass unchanged.
 *  2. split into symbols: user-defined symbols (longest match) are frozen
 *     symbols, everything else one UTF-8 character each.
 *  3. merge: repeatedly merge the adjacent pair whose concatenation is a piece
 *     with the highest score, the leftmost pair on ties. Pairs wait in a binary
 *     heap; symbols form a linked list, so a text of n symbols costs O(n log n).
 *     Merged UNUSED pieces are split again into the pair they came from.
 *     Two exact shortcuts SentencePiece does not take: a pair is looked up only
 *     when its junction characters occur adjacent in some piece (a small set),
 *     and the text is merged segment by segment between junctions that no
 *     piece spans, so the heap stays small even for megabytes of text.
 *  4. ids: pieces -> ids; an unknown piece becomes its UTF-8 bytes as <0xXX>
 *     pieces with byte_fallback, else one <unk> per run of unknown pieces.
 *
 * There is no pre-splitting at encode time: trainer options such as
 * split_digits, split_by_whitespace and split_by_unicode_script only shaped
 * the vocabulary during training (SentencePiece's BPE encoder ignores them
 * too), so "12345" becomes whatever pieces the vocabulary has ("123", "45"). */
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/tokenizer_internal.h"

#define SPACE_SYM "\xE2\x96\x81" /* U+2581, SentencePiece's whitespace meta symbol */
#define FROZEN 0x80000000u       /* bpe_sym.len flag: user-defined, never merged */

/* ---- 1. normalization ---- */

/* SentencePiece's Normalizer::NormalizePrefix for an identity normalizer:
 * returns the normalized bytes of the next unit (*out_len of them) and sets
 * *consumed to the input bytes it covers. */
static inline const char *norm_prefix(const ct_tokenizer *t, const char *in, size_t n, size_t *consumed,
                                      size_t *out_len) {
    if (t->trie_root[(unsigned char)in[0]] >= 0) {
        size_t m = tok_trie_match(t, in, n);
        if (m) {
            *consumed = *out_len = m;
            return in;
        }
    }
    size_t mb;
    if (tok_utf8_valid_char((const unsigned char *)in, n, &mb)) {
        *consumed = *out_len = mb;
        return in;
    }
    *consumed = 1;
    *out_len = 3;
    return "\xEF\xBF\xBD"; /* U+FFFD for one malformed byte */
}

static inline size_t put_space(const ct_sp_model *m, char *out, size_t o) {
    if (m->escape_whitespaces) {
        memcpy(out + o, SPACE_SYM, 3);
        return o + 3;
    }
    out[o] = ' ';
    return o + 1;
}

/* Normalizes in (n bytes) into out, which has room for 3n + 3 bytes (every
 * input byte grows to at most 3 bytes, plus one dummy space). Returns the
 * normalized length. */
static size_t normalize(const ct_tokenizer *t, const char *in, size_t n, char *out) {
    const ct_sp_model *m = &t->sp;
    size_t o = 0, c, l;
    if (n == 0) return 0;
    if (m->remove_extra_whitespaces) { /* drop leading spaces */
        while (n) {
            const char *p = norm_prefix(t, in, n, &c, &l);
            if (!(l == 1 && p[0] == ' ')) break;
            in += c;
            n -= c;
        }
        if (n == 0) return 0;
    }
    if (!m->treat_whitespace_as_suffix && m->add_dummy_prefix) o = put_space(m, out, o);
    bool is_prev_space = m->remove_extra_whitespaces;
    while (n) {
        const char *p = norm_prefix(t, in, n, &c, &l);
        size_t k = 0;
        while (is_prev_space && k < l && p[k] == ' ') k++; /* collapse repeated spaces */
        if (k < l) {
            for (size_t j = k; j < l; j++) {
                if (p[j] == ' ') o = put_space(m, out, o);
                else out[o++] = p[j];
            }
            is_prev_space = p[l - 1] == ' ';
        }
        in += c;
        n -= c;
        if (!m->remove_extra_whitespaces) is_prev_space = false;
    }
    if (m->remove_extra_whitespaces) { /* drop trailing spaces (also literal U+2581s) */
        const char *sp = m->escape_whitespaces ? SPACE_SYM : " ";
        size_t sl = m->escape_whitespaces ? 3 : 1;
        while (o >= sl && memcmp(out + o - sl, sp, sl) == 0) o -= sl;
    }
    if (m->treat_whitespace_as_suffix && m->add_dummy_prefix) o = put_space(m, out, o);
    return o;
}

/* ---- 2./3. BPE ---- */

typedef struct {
    uint32_t start;      /* byte offset in the normalized text */
    uint32_t len;        /* bytes, | FROZEN for user-defined symbols; 0 once merged away */
    int32_t prev, next;  /* linked list of live symbols, -1 at the ends */
    int32_t id;          /* piece id after a merge, -1 for an original character */
    uint32_t first, last; /* bytes of the first and last character (tok_char_pack) */
} bpe_sym;

typedef struct {
    uint64_t key;  /* order: score (as an ordered integer) high, then ~left: max pops first */
    uint32_t size; /* merged length: stale when the two symbols changed since */
    int32_t id;    /* merged piece */
} bpe_pair;

/* Pop order of SentencePiece's SymbolPairComparator: higher score, then the
 * leftmost pair, folded into one integer. The float is mapped to an integer of
 * the same order (-0.0 taken as +0.0 since they compare equal). Live pairs
 * never share a left symbol, so the order is total and any heap gives
 * SentencePiece's merge sequence. */
static inline uint64_t pair_key(float score, uint32_t left) {
    uint32_t u;
    if (score == 0.0f) score = 0.0f;
    memcpy(&u, &score, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (uint64_t)u << 32 | (uint32_t)~left;
}

static inline uint32_t pair_left(const bpe_pair *p) { return ~(uint32_t)p->key; }

typedef struct {
    bpe_pair *v; /* binary max-heap on key (n), capacity cap */
    size_t n, cap;
} bpe_heap;

static int heap_push(bpe_heap *h, bpe_pair p) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        bpe_pair *nv = realloc(h->v, nc * sizeof *nv);
        if (!nv) return ct_errorf(CT_ERUNTIME, "out of memory encoding text");
        h->v = nv;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (p.key <= h->v[parent].key) break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = p;
    return CT_OK;
}

static bpe_pair heap_pop(bpe_heap *h) {
    bpe_pair top = h->v[0], last = h->v[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h->v[c + 1].key > h->v[c].key) c++;
        if (h->v[c].key <= last.key) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (n) h->v[i] = last;
    return top;
}

/* rev_merge of bpe_model.cc: for each UNUSED piece, where the last candidate
 * pair producing it split (left length). Only built for models with UNUSED
 * pieces; keyed by piece id (an UNUSED piece's string determines its id). */
typedef struct {
    int32_t *key;  /* (cap) piece ids, -1 empty */
    uint32_t *val; /* (cap) left lengths */
    size_t cap, n;
} rev_map;

static int rev_put(rev_map *r, int32_t id, uint32_t left_len) {
    if (2 * (r->n + 1) > r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 64;
        int32_t *nk = malloc(nc * sizeof *nk);
        uint32_t *nv = malloc(nc * sizeof *nv);
        if (!nk || !nv) {
            free(nk);
            free(nv);
            return ct_errorf(CT_ERUNTIME, "out of memory encoding text");
        }
        for (size_t i = 0; i < nc; i++) nk[i] = -1;
        for (size_t i = 0; i < r->cap; i++) {
            if (r->key[i] < 0) continue;
            size_t j = (size_t)r->key[i] * 2654435761u & (nc - 1);
            while (nk[j] >= 0) j = (j + 1) & (nc - 1);
            nk[j] = r->key[i];
            nv[j] = r->val[i];
        }
        free(r->key);
        free(r->val);
        r->key = nk;
        r->val = nv;
        r->cap = nc;
    }
    size_t j = (size_t)id * 2654435761u & (r->cap - 1);
    while (r->key[j] >= 0 && r->key[j] != id) j = (j + 1) & (r->cap - 1);
    if (r->key[j] < 0) r->n++;
    r->key[j] = id;
    r->val[j] = left_len;
    return CT_OK;
}

static bool rev_get(const rev_map *r, int32_t id, uint32_t *left_len) {
    if (!r->cap) return false;
    size_t j = (size_t)id * 2654435761u & (r->cap - 1);
    for (; r->key[j] >= 0; j = (j + 1) & (r->cap - 1))
        if (r->key[j] == id) {
            *left_len = r->val[j];
            return true;
        }
    return false;
}

typedef struct {
    const ct_tokenizer *t;
    const char *text; /* normalized text */
    bpe_sym *sym;     /* (n_sym) */
    bpe_heap heap;
    rev_map rev;
    ct_ids *out;
    bool prev_is_unk; /* for merging runs of <unk> without byte fallback */
} bpe_state;

/* MaybeAddNewSymbolPair: queue (left, right) when their concatenation is a piece. */
static int maybe_add_pair(bpe_state *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return CT_OK;
    const bpe_sym *a = &s->sym[left], *b = &s->sym[right];
    if ((a->len | b->len) & FROZEN) return CT_OK;
    uint32_t size = a->len + b->len;
    if (size > s->t->max_normal_len || !tok_bigram_has(s->t, a->last, b->first)) return CT_OK;
    int32_t id = tok_map_find_padded(s->t, &s->t->normal, s->text + a->start, size);
    if (id < 0) return CT_OK;
    if (s->t->has_unused && s->t->sp.pieces[id].type == CT_SP_UNUSED) CT_TRY(rev_put(&s->rev, id, a->len));
    bpe_pair pr = {pair_key(s->t->scores[id], (uint32_t)left), size, id};
    return heap_push(&s->heap, pr);
}

/* ---- 4. pieces -> ids (PopulateSentencePieceText) ---- */

static int emit(bpe_state *s, const char *w, size_t len, int32_t id) {
    const ct_tokenizer *t = s->t;
    int type = t->sp.pieces[id].type;
    bool is_unk = type == CT_SP_UNKNOWN;
    if (type == CT_SP_CONTROL) {
        CT_TRY(ct_ids_push(s->out, id));
    } else if (is_unk && t->sp.byte_fallback) {
        CT_TRY(ct_ids_reserve(s->out, len));
        for (size_t i = 0; i < len; i++) s->out->v[s->out->n++] = t->byte_id[(unsigned char)w[i]];
    } else if (!(is_unk && s->prev_is_unk)) {
        CT_TRY(ct_ids_push(s->out, id));
    }
    s->prev_is_unk = is_unk;
    return CT_OK;
}

/* resegment(): an UNUSED piece is replaced by the two pieces it was merged from. */
static int resegment(bpe_state *s, const char *w, size_t len) {
    int32_t id = tok_sp_piece_to_id(s->t, w, len);
    uint32_t left;
    if (s->t->sp.pieces[id].type != CT_SP_UNUSED || !rev_get(&s->rev, id, &left)) return emit(s, w, len, id);
    CT_TRY(resegment(s, w, left));
    return resegment(s, w + left, len - left);
}

/* Pops and applies merges until the heap is empty. */
static int merge_all(bpe_state *s) {
    while (s->heap.n) {
        bpe_pair top = heap_pop(&s->heap);
        uint32_t li = pair_left(&top);
        bpe_sym *l = &s->sym[li];
        if (l->len == 0 || l->next < 0) continue;
        bpe_sym *r = &s->sym[l->next];
        if (l->len + r->len != top.size) continue; /* stale: a symbol changed since it was queued */
        int32_t rn = r->next;
        l->len = top.size;
        l->id = top.id;
        l->last = r->last;
        l->next = rn;
        if (rn >= 0) s->sym[rn].prev = (int32_t)li;
        r->len = 0;
        CT_TRY(maybe_add_pair(s, l->prev, (int32_t)li));
        CT_TRY(maybe_add_pair(s, (int32_t)li, rn));
    }
    return CT_OK;
}

static int bpe(bpe_state *s, size_t norm_len) {
    const ct_tokenizer *t = s->t;
    const char *text = s->text;
    /* split into characters / user-defined symbols */
    int32_t n_sym = 0;
    for (size_t i = 0; i < norm_len;) {
        size_t ml = t->n_trie ? tok_trie_match(t, text + i, norm_len - i) : 0;
        uint32_t frozen = ml ? FROZEN : 0;
        if (!ml) { /* OneCharLen: by the lead byte (the text is valid UTF-8 here) */
            ml = tok_one_char_len((unsigned char)text[i]);
            if (ml > norm_len - i) ml = norm_len - i;
        }
        bpe_sym *y = &s->sym[n_sym];
        y->start = (uint32_t)i;
        y->len = (uint32_t)ml | frozen;
        y->prev = n_sym - 1;
        y->next = i + ml < norm_len ? n_sym + 1 : -1;
        y->id = -1;
        y->first = y->last = frozen ? 0 : tok_char_pack(text + i, ml);
        n_sym++;
        i += ml;
    }
    if (n_sym == 0) return CT_OK;
    /* Queue the adjacent pairs. Where two symbols can never merge (a
     * user-defined symbol, or a character pair that no piece contains), no
     * merge will ever cross: the text to the left is finished on its own, which
     * keeps the heap small. Merges on either side do not interact, so the
     * result is the same as one pass over the whole text. UNUSED pieces are the
     * exception (their re-split depends on the order of all candidates): one
     * pass then. */
    for (int32_t i = 1; i < n_sym; i++) {
        const bpe_sym *a = &s->sym[i - 1], *b = &s->sym[i];
        bool never = ((a->len | b->len) & FROZEN) || !tok_bigram_has(t, a->last, b->first);
        if (never && !t->has_unused) CT_TRY(merge_all(s));
        else if (!never) CT_TRY(maybe_add_pair(s, i - 1, i));
    }
    CT_TRY(merge_all(s));

    for (int32_t i = 0; i >= 0; i = s->sym[i].next) { /* the symbols left: pieces -> ids */
        const bpe_sym *y = &s->sym[i];
        const char *w = text + y->start;
        size_t len = y->len & ~FROZEN;
        /* a merged symbol's id is known unless some reserved piece has the same string */
        int32_t id = y->id >= 0 && !t->cross_dups ? y->id : tok_sp_piece_to_id(t, w, len);
        if (t->has_unused && t->sp.pieces[id].type == CT_SP_UNUSED) CT_TRY(resegment(s, w, len));
        else CT_TRY(emit(s, w, len, id));
    }
    return CT_OK;
}

int tok_sp_encode(const ct_tokenizer *t, const char *text, size_t len, ct_ids *out) {
    if (len == 0) return CT_OK;
    if (len > (size_t)INT32_MAX / 4)
        return ct_errorf(CT_EINPUT, "text of %zu bytes is too long to encode at once (split it below 512 MiB)", len);
    size_t cap = 3 * len + 3 + 8; /* + 8 zero bytes: lookups load whole 8-byte words */
    char *norm = malloc(cap);
    bpe_state s = {.t = t, .out = out};
    if (!norm) return ct_errorf(CT_ERUNTIME, "out of memory encoding %zu bytes", len);
    size_t norm_len = normalize(t, text, len, norm);
    memset(norm + norm_len, 0, 8);
    int rc = CT_OK;
    if (norm_len) {
        s.text = norm;
        s.sym = malloc(norm_len * sizeof *s.sym); /* at most one symbol per byte */
        if (!s.sym) rc = ct_errorf(CT_ERUNTIME, "out of memory encoding %zu bytes", len);
        else rc = bpe(&s, norm_len);
    }
    free(s.sym);
    free(s.heap.v);
    free(s.rev.key);
    free(s.rev.val);
    free(norm);
    return rc;
}
