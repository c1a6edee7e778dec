/* Piece lookup for the tokenizer: two hash maps split the way SentencePiece's
 * ModelInterface splits them (merge candidates vs. reserved pieces), the byte
 * piece ids, and the trie of user-defined symbols. Built once at load. */
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/tokenizer_internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tokenizer_vocab.c assumes a little-endian machine (masked 8-byte loads)"
#endif

static inline uint64_t mix(uint64_t h, uint64_t w) {
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    return h ^ (h >> 32);
}

/* Hash of a string given its first (zero-padded) word: 8-byte words folded
 * with multiply-xorshift; pieces are short, so a few multiplies per lookup. */
static inline uint64_t hash_rest(uint64_t head, const char *s, size_t n) {
    uint64_t h = mix(0x9E3779B97F4A7C15ull ^ (uint64_t)n, head);
    for (size_t i = 8; i < n; i += 8) {
        uint64_t w = 0;
        memcpy(&w, s + i, n - i < 8 ? n - i : 8);
        h = mix(h, w);
    }
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

static inline uint32_t make_meta(uint64_t h, size_t n) {
    return ((uint32_t)(h >> 32) & 0xFFFFFF00u) | (uint32_t)(n < 255 ? n : 255);
}

static inline int32_t find(const ct_tokenizer *t, const tok_map *m, uint64_t head, const char *s, size_t len) {
    if (!m->slots) return -1;
    uint64_t h = hash_rest(head, s, len);
    uint32_t meta = make_meta(h, len);
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        const tok_slot *sl = &m->slots[i];
        if (sl->id < 0) return -1;
        if (sl->meta == meta && sl->head == head) {
            if (len <= 8) return sl->id;
            const ct_sp_piece *p = &t->sp.pieces[sl->id];
            if (p->len == len && memcmp(t->sp.blob + p->off + 8, s + 8, len - 8) == 0) return sl->id;
        }
    }
}

int32_t tok_map_find(const ct_tokenizer *t, const tok_map *m, const char *s, size_t len) {
    uint64_t head = 0;
    memcpy(&head, s, len < 8 ? len : 8);
    return find(t, m, head, s, len);
}

int32_t tok_map_find_padded(const ct_tokenizer *t, const tok_map *m, const char *s, size_t len) {
    uint64_t head;
    memcpy(&head, s, 8);
    if (len < 8) head &= ((uint64_t)1 << (8 * len)) - 1;
    return find(t, m, head, s, len);
}

static int map_init(tok_map *m, size_t n) {
    size_t cap = 16;
    while (cap < n + n / 2 + 16) cap *= 2; /* load factor <= 2/3 */
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return ct_errorf(CT_ERUNTIME, "out of memory building the tokenizer vocabulary");
    for (size_t i = 0; i < cap; i++) m->slots[i].id = -1;
    m->mask = cap - 1;
    return CT_OK;
}

/* Inserts id; returns the id already holding the same string, or -1. */
static int32_t map_insert(const ct_tokenizer *t, tok_map *m, int32_t id) {
    const ct_sp_piece *p = &t->sp.pieces[id];
    const char *s = t->sp.blob + p->off;
    int32_t old = tok_map_find(t, m, s, p->len);
    if (old >= 0) return old;
    uint64_t head = 0;
    memcpy(&head, s, p->len < 8 ? p->len : 8);
    uint64_t h = hash_rest(head, s, p->len);
    size_t i = (size_t)h & m->mask;
    while (m->slots[i].id >= 0) i = (i + 1) & m->mask;
    m->slots[i].head = head;
    m->slots[i].meta = make_meta(h, p->len);
    m->slots[i].id = id;
    return -1;
}

int32_t tok_sp_piece_to_id(const ct_tokenizer *t, const char *s, size_t len) {
    int32_t id = tok_map_find(t, &t->reserved, s, len);
    if (id >= 0) return id;
    id = tok_map_find(t, &t->normal, s, len);
    return id >= 0 ? id : t->unk_piece;
}

size_t tok_trie_match(const ct_tokenizer *t, const char *s, size_t len) {
    if (!len) return 0;
    int32_t node = t->trie_root[(unsigned char)s[0]];
    size_t best = 0;
    for (size_t i = 0; node >= 0;) {
        const tok_trie_node *nd = &t->trie[node];
        if (nd->terminal) best = i + 1;
        if (++i == len) break;
        unsigned char c = (unsigned char)s[i];
        node = nd->child;
        while (node >= 0 && t->trie[node].byte != c) node = t->trie[node].sibling;
    }
    return best;
}

static int trie_add(ct_tokenizer *t, const char *s, size_t len, int32_t *cap) {
    int32_t parent = -1; /* node of s[0..i), -1 before the first byte (trie_root) */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int32_t head = parent < 0 ? t->trie_root[c] : t->trie[parent].child;
        int32_t node = head;
        if (parent >= 0)
            while (node >= 0 && t->trie[node].byte != c) node = t->trie[node].sibling;
        if (node < 0) {
            if (t->n_trie == *cap) {
                int32_t nc = *cap ? *cap * 2 : 256;
                tok_trie_node *nt = realloc(t->trie, (size_t)nc * sizeof *nt);
                if (!nt) return ct_errorf(CT_ERUNTIME, "out of memory building the tokenizer");
                t->trie = nt;
                *cap = nc;
            }
            node = t->n_trie++;
            tok_trie_node *nd = &t->trie[node];
            nd->byte = c;
            nd->terminal = false;
            nd->child = -1;
            nd->sibling = parent < 0 ? -1 : head;
            if (parent < 0) t->trie_root[c] = node;
            else t->trie[parent].child = node;
        }
        if (i + 1 == len) t->trie[node].terminal = true;
        parent = node;
    }
    return CT_OK;
}

static inline uint64_t bigram_hash(uint64_t k) {
    k ^= k >> 31;
    k *= 0xBF58476D1CE4E5B9ull;
    return k ^ (k >> 29);
}

bool tok_bigram_has(const ct_tokenizer *t, uint32_t a, uint32_t b) {
    uint64_t k = ((uint64_t)a << 32 | b) + 1;
    if (k == 0) return t->bigram_max;
    for (size_t i = bigram_hash(k) & t->bigram_mask;; i = (i + 1) & t->bigram_mask) {
        if (t->bigrams[i] == k) return true;
        if (t->bigrams[i] == 0) return false;
    }
}

/* Inserts key k (!= 0), doubling the table at half load. */
static int bigram_insert(ct_tokenizer *t, uint64_t k, size_t *count) {
    if (2 * (*count + 1) > t->bigram_mask + 1) {
        size_t cap = 2 * (t->bigram_mask + 1);
        uint64_t *nb = calloc(cap, sizeof *nb);
        if (!nb) return ct_errorf(CT_ERUNTIME, "out of memory building the tokenizer vocabulary");
        for (size_t i = 0; i <= t->bigram_mask; i++) {
            if (!t->bigrams[i]) continue;
            size_t j = bigram_hash(t->bigrams[i]) & (cap - 1);
            while (nb[j]) j = (j + 1) & (cap - 1);
            nb[j] = t->bigrams[i];
        }
        free(t->bigrams);
        t->bigrams = nb;
        t->bigram_mask = cap - 1;
    }
    size_t j = bigram_hash(k) & t->bigram_mask;
    while (t->bigrams[j] != 0 && t->bigrams[j] != k) j = (j + 1) & t->bigram_mask;
    if (!t->bigrams[j]) ++*count;
    t->bigrams[j] = k;
    return CT_OK;
}

/* The adjacent character pairs of every normal piece, characters split the way
 * the encoder splits text (OneCharLen), so a junction's pair is found exactly
 * when some piece could span it. */
static int build_bigrams(ct_tokenizer *t) {
    const ct_sp_model *m = &t->sp;
    size_t count = 0;
    t->bigrams = calloc(1024, sizeof *t->bigrams);
    if (!t->bigrams) return ct_errorf(CT_ERUNTIME, "out of memory building the tokenizer vocabulary");
    t->bigram_mask = 1023;
    for (int32_t i = 0; i < m->n_pieces; i++) {
        const ct_sp_piece *p = &m->pieces[i];
        if (!(p->type == CT_SP_NORMAL || p->type == CT_SP_USER_DEFINED || p->type == CT_SP_UNUSED)) continue;
        const char *s = m->blob + p->off;
        size_t n = p->len, prev_at = 0, prev_len = 0;
        for (size_t at = 0; at < n;) {
            size_t cl = tok_one_char_len((unsigned char)s[at]);
            if (cl > n - at) cl = n - at;
            if (at > 0) {
                uint64_t k = ((uint64_t)tok_char_pack(s + prev_at, prev_len) << 32 | tok_char_pack(s + at, cl)) + 1;
                if (k == 0) t->bigram_max = true;
                else CT_TRY(bigram_insert(t, k, &count));
            }
            prev_at = at;
            prev_len = cl;
            at += cl;
        }
    }
    return CT_OK;
}

int tok_vocab_build(ct_tokenizer *t) {
    const ct_sp_model *m = &t->sp;
    int32_t n_normal = 0;
    for (int32_t i = 0; i < m->n_pieces; i++) {
        int ty = m->pieces[i].type;
        n_normal += ty == CT_SP_NORMAL || ty == CT_SP_USER_DEFINED || ty == CT_SP_UNUSED;
    }
    t->scores = malloc((size_t)m->n_pieces * sizeof *t->scores);
    if (!t->scores) return ct_errorf(CT_ERUNTIME, "out of memory building the tokenizer vocabulary");
    for (int32_t i = 0; i < m->n_pieces; i++) t->scores[i] = m->pieces[i].score;
    CT_TRY(map_init(&t->normal, (size_t)n_normal));
    CT_TRY(map_init(&t->reserved, (size_t)(m->n_pieces - n_normal)));
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int b = 0; b < 256; b++) t->trie_root[b] = -1;
    t->unk_piece = -1;
    int32_t trie_cap = 0;
    for (int32_t i = 0; i < m->n_pieces; i++) {
        const ct_sp_piece *p = &m->pieces[i];
        const char *s = m->blob + p->off;
        bool normal = p->type == CT_SP_NORMAL || p->type == CT_SP_USER_DEFINED || p->type == CT_SP_UNUSED;
        int32_t dup = map_insert(t, normal ? &t->normal : &t->reserved, i);
        if (dup >= 0)
            return ct_errorf(CT_EINPUT, "%s: pieces %d and %d are both '%s' (corrupt tokenizer.model?)", t->path, dup,
                             i, s);
        if (normal && p->len > t->max_normal_len) t->max_normal_len = p->len;
        if (p->type == CT_SP_UNUSED) t->has_unused = true;
        if (p->type == CT_SP_UNKNOWN) t->unk_piece = i;
        if (p->type == CT_SP_BYTE) t->byte_id[ct_sp_piece_to_byte(s, p->len)] = i;
        if (p->type == CT_SP_USER_DEFINED) CT_TRY(trie_add(t, s, p->len, &trie_cap));
    }
    CT_TRY(build_bigrams(t));
    for (int32_t i = 0; i < m->n_pieces && !t->cross_dups; i++) {
        const ct_sp_piece *p = &m->pieces[i];
        bool normal = p->type == CT_SP_NORMAL || p->type == CT_SP_USER_DEFINED || p->type == CT_SP_UNUSED;
        if (!normal && tok_map_find(t, &t->normal, m->blob + p->off, p->len) >= 0) t->cross_dups = true;
    }
    return CT_OK;
}

void tok_vocab_free(ct_tokenizer *t) {
    free(t->normal.slots);
    free(t->reserved.slots);
    free(t->trie);
    free(t->scores);
    free(t->bigrams);
    t->bigrams = NULL;
    t->normal.slots = t->reserved.slots = NULL;
    t->trie = NULL;
    t->scores = NULL;
}
