/* Tokenizer tests: exact parity with the reference SentencePiece (the
 * sentencepiece Python package, run at test time by tests/data/sp_reference.py)
 * for the two real tokenizers and for synthetic models that exercise every
 * normalizer/BPE/decoder branch; the HF special-token rule; round trips;
 * hand-checked ids; corrupt model and config files; long inputs (no quadratic
 * time); concurrent encoding from several threads. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "autograd/ct_clock.h"
#include "datasets/sp_model.h"
#include "datasets/tokenizer.h"
#include "testutil.h"

/* ---- small helpers ---- */

typedef struct {
    char *s;
    size_t n;
} text;

typedef struct {
    text *v;
    size_t n, cap;
} texts;

static void texts_add(texts *c, const char *s, size_t n) {
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 256;
        c->v = realloc(c->v, c->cap * sizeof *c->v);
    }
    char *d = malloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    c->v[c->n++] = (text){d, n};
}

static void texts_free(texts *c) {
    for (size_t i = 0; i < c->n; i++) free(c->v[i].s);
    free(c->v);
    memset(c, 0, sizeof *c);
}

static void print_escaped(FILE *f, const char *s, size_t n) {
    for (size_t i = 0; i < n && i < 200; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') fputc(c, f);
        else fprintf(f, "\\x%02x", c);
    }
}

static void print_ids(FILE *f, const char *what, const int32_t *v, size_t n) {
    fprintf(f, "  %s:", what);
    for (size_t i = 0; i < n && i < 64; i++) fprintf(f, " %d", v[i]);
    fprintf(f, "%s\n", n > 64 ? " ..." : "");
}

static bool ids_equal(const ct_ids *a, const ct_ids *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

static void parse_ids(const char *s, const char *end, ct_ids *out) {
    out->n = 0;
    while (s < end) {
        char *e;
        long v = strtol(s, &e, 10);
        if (e == s) break;
        ct_ids_push(out, (int32_t)v);
        s = e;
    }
}

static size_t unhex(const char *s, const char *end, char *out) {
    size_t n = 0;
    for (; s + 1 < end; s += 2) {
        char b[3] = {s[0], s[1], 0};
        out[n++] = (char)strtol(b, NULL, 16);
    }
    return n;
}

static bool write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    size_t got;
    while ((got = fread(b + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) b = realloc(b, cap *= 2);
    }
    fclose(f);
    *n = len;
    return b;
}

/* ---- the corpus (tests/data/tokenizer_corpus.txt) and generated strings ---- */

static bool load_corpus(texts *c) {
    size_t n;
    char *data = read_file(CT_SOURCE_DIR "/tests/data/tokenizer_corpus.txt", &n);
    if (!data) return false;
    char *buf = malloc(n + 1);
    for (size_t i = 0; i < n;) {
        size_t e = i;
        while (e < n && data[e] != '\n') e++;
        size_t m = 0;
        if (e > i && data[i] != '#') {
            for (size_t j = i; j < e; j++) {
                if (data[j] != '\\' || j + 1 >= e) {
                    buf[m++] = data[j];
                    continue;
                }
                char c = data[++j];
                if (c == 'n') buf[m++] = '\n';
                else if (c == 't') buf[m++] = '\t';
                else if (c == 'r') buf[m++] = '\r';
                else if (c == '0') buf[m++] = '\0';
                else if (c == '\\') buf[m++] = '\\';
                else if (c == 'x' && j + 2 < e) {
                    char h[3] = {data[j + 1], data[j + 2], 0};
                    buf[m++] = (char)strtol(h, NULL, 16);
                    j += 2;
                } else {
                    CHECK(false, "corpus: unknown escape \\%c", c);
                }
            }
            texts_add(c, buf, m);
        }
        i = e + 1;
    }
    free(buf);
    free(data);
    return true;
}

static void add_random(texts *c, uint64_t seed, int count, int max_units, const char *const *pool, int npool) {
    ct_test_rng r = {seed};
    char buf[4096];
    for (int k = 0; k < count; k++) {
        int units = (int)(ct_test_uniform(&r) * (max_units + 1));
        size_t n = 0;
        for (int u = 0; u < units; u++) {
            const char *p = pool[(int)(ct_test_uniform(&r) * npool)];
            size_t l = strlen(p) ? strlen(p) : 1; /* "" in a pool stands for one NUL byte */
            memcpy(buf + n, p, l);
            n += l;
        }
        texts_add(c, buf, n);
    }
}

static const char *const MIXED_POOL[] = {
    "a", "e", "the", " ", "  ", "\t", "\n", "\r\n", "Hello", "world", "ing", "0", "7", "42", "12345", ".", ",",
    "!", "?", "'", "\"", "(", ")", "<", ">", "|", "_", "-", "=", "你", "好", "的", "是", "模型", "。", "，",
    "…", "——", "😀", "👨‍👩‍👧", "🇨🇳", "𠮷", "é", "e\xcc\x81", "ß", "ф", "я", "ع", "ह", "ि", "日", "ア", "한",
    "Ｅ", "ａ", "▁", "\xef\xbf\xbd", "\xff", "\x80", "\xe4\xbd", "\xc3", "", "<s>", "</s>", "<unk>",
    "<|im_start|>", "<|im_end|>", "<|im", "[UNUSED_TOKEN_146]", "<0x41>", "    ", "def ", "()", "{", "}"};
#define N_MIXED ((int)(sizeof MIXED_POOL / sizeof MIXED_POOL[0]))

/* ---- the reference ---- */

static const char *g_python; /* interpreter with the sentencepiece module, or NULL */
static char g_tmp[64];       /* scratch directory */

static void find_python(void) {
    static const char *cands[] = {"python3", "/usr/bin/python3"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%s -c 'import sentencepiece' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0) {
            g_python = cands[i];
            return;
        }
    }
    fprintf(stderr, "no python3 with the sentencepiece module (apt install python3-sentencepiece): "
                    "parity checks skipped\n");
}

/* Runs sp_reference.py on a request file; returns its output (caller frees). */
static char *reference(const char *model, const char *config, const char *requests, size_t *n) {
    char out[128], cmd[1024];
    snprintf(out, sizeof out, "%s/answers.txt", g_tmp);
    snprintf(cmd, sizeof cmd, "%s %s/tests/data/sp_reference.py '%s' '%s' < '%s' > '%s'", g_python, CT_SOURCE_DIR,
             model, config ? config : "-", requests, out);
    int rc = system(cmd);
    CHECK(rc == 0, "reference failed (%d): %s", rc, cmd);
    return rc == 0 ? read_file(out, n) : NULL;
}

/* Writes "E <hex>" for each text and "D <ids>" for each id list. */
static void write_requests(const char *path, const texts *c, const ct_ids *idlists, size_t n_idlists) {
    FILE *f = fopen(path, "w");
    for (size_t i = 0; i < c->n; i++) {
        fputs("E ", f);
        for (size_t j = 0; j < c->v[i].n; j++) fprintf(f, "%02x", (unsigned char)c->v[i].s[j]);
        fputc('\n', f);
    }
    for (size_t i = 0; i < n_idlists; i++) {
        fputc('D', f);
        for (size_t j = 0; j < idlists[i].n; j++) fprintf(f, "%c%d", j ? ',' : ' ', idlists[i].v[j]);
        fputc('\n', f);
    }
    fclose(f);
}

static void random_idlists(ct_ids *lists, size_t count, int32_t vocab, uint64_t seed) {
    ct_test_rng r = {seed};
    for (size_t i = 0; i < count; i++) {
        int len = (int)(ct_test_uniform(&r) * 16);
        for (int j = 0; j < len; j++) {
            double u = ct_test_uniform(&r);
            int32_t id = u < 0.4 ? 3 + (int32_t)(ct_test_uniform(&r) * 256) /* byte pieces */
                         : u < 0.5 ? (int32_t)(ct_test_uniform(&r) * 3)       /* unk, bos, eos */
                                   : (int32_t)(ct_test_uniform(&r) * vocab);
            ct_ids_push(&lists[i], id < vocab ? id : vocab - 1);
        }
    }
}

typedef struct {
    int fails; /* mismatches seen (the first few are printed) */
} parity_opts;

/* Compares our encode/decode with one reference answer line for text x. */
static void compare_text(const ct_tokenizer *t, const text *x, const char *line, const char *end, parity_opts *o) {
    const char *bar1 = memchr(line, '|', (size_t)(end - line));
    const char *bar2 = bar1 ? memchr(bar1 + 1, '|', (size_t)(end - bar1 - 1)) : NULL;
    CHECK(bar2 != NULL, "malformed reference line");
    if (!bar2) return;
    ct_ids want_plain = {0}, want_hf = {0}, got_plain = {0}, got_hf = {0};
    parse_ids(line, bar1, &want_plain);
    parse_ids(bar1 + 1, bar2, &want_hf);
    char *want_dec = malloc((size_t)(end - bar2) / 2 + 1);
    size_t want_dec_n = unhex(bar2 + 1, end, want_dec);
    CHECK_OK(ct_tok_encode_plain(t, x->s, x->n, &got_plain));
    CHECK_OK(ct_tok_encode(t, x->s, x->n, ct_tok_add_bos_token(t), &got_hf));
    char *dec = NULL;
    size_t dec_n = 0;
    CHECK_OK(ct_tok_decode_plain(t, got_plain.v, got_plain.n, &dec, &dec_n));
    bool ok_plain = ids_equal(&got_plain, &want_plain), ok_hf = ids_equal(&got_hf, &want_hf);
    bool ok_dec = dec && dec_n == want_dec_n && memcmp(dec, want_dec, dec_n) == 0;
    CHECK(ok_plain && ok_hf && ok_dec, "parity (plain %d, hf %d, decode %d)", ok_plain, ok_hf, ok_dec);
    if (!(ok_plain && ok_hf && ok_dec) && o->fails++ < 8) {
        fprintf(stderr, "  text: \"");
        print_escaped(stderr, x->s, x->n);
        fprintf(stderr, "\"\n");
        print_ids(stderr, "want plain", want_plain.v, want_plain.n);
        print_ids(stderr, "got  plain", got_plain.v, got_plain.n);
        print_ids(stderr, "want hf", want_hf.v, want_hf.n);
        print_ids(stderr, "got  hf", got_hf.v, got_hf.n);
        if (!ok_dec && dec) {
            fprintf(stderr, "  want decode \"");
            print_escaped(stderr, want_dec, want_dec_n);
            fprintf(stderr, "\"\n  got decode  \"");
            print_escaped(stderr, dec, dec_n);
            fprintf(stderr, "\"\n");
        }
    }
    free(dec);
    free(want_dec);
    ct_ids_free(&want_plain);
    ct_ids_free(&want_hf);
    ct_ids_free(&got_plain);
    ct_ids_free(&got_hf);
}

/* Encodes every text and decodes every id list with both implementations. */
static void parity(const char *what, const char *load_path, const char *model, const char *config, const texts *c,
                   size_t n_idlists) {
    ct_tokenizer *t = NULL;
    CHECK_OK(ct_tok_load(load_path, &t));
    if (!t) return;
    ct_ids *lists = calloc(n_idlists, sizeof *lists);
    random_idlists(lists, n_idlists, ct_tok_vocab_size(t), 0xD1CE + n_idlists);
    char req[128];
    snprintf(req, sizeof req, "%s/requests.txt", g_tmp);
    write_requests(req, c, lists, n_idlists);
    size_t n = 0;
    char *ans = reference(model, config, req, &n);
    parity_opts o = {0};
    size_t line = 0, decode_ok = 0;
    for (char *p = ans, *end = ans ? ans + n : NULL; p && p < end; line++) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) e = end;
        if (line < c->n) {
            compare_text(t, &c->v[line], p, e, &o);
        } else if (line < c->n + n_idlists) {
            const ct_ids *ids = &lists[line - c->n];
            char *want = malloc((size_t)(e - p) / 2 + 1), *got = NULL;
            size_t want_n = unhex(p, e, want), got_n = 0;
            CHECK_OK(ct_tok_decode_plain(t, ids->v, ids->n, &got, &got_n));
            bool ok = got && got_n == want_n && memcmp(got, want, got_n) == 0;
            decode_ok += ok;
            if (!ok && o.fails++ < 8) {
                print_ids(stderr, "decode mismatch for ids", ids->v, ids->n);
                fprintf(stderr, "  want \"");
                print_escaped(stderr, want, want_n);
                fprintf(stderr, "\"\n  got  \"");
                print_escaped(stderr, got ? got : "", got_n);
                fprintf(stderr, "\"\n");
            }
            free(want);
            free(got);
        }
        p = e + 1;
    }
    CHECK(line == c->n + n_idlists, "%s: %zu reference answers for %zu requests", what, line, c->n + n_idlists);
    CHECK(decode_ok == n_idlists, "%s: decode parity on %zu of %zu random id lists", what, decode_ok, n_idlists);
    printf("%s: %zu texts and %zu id lists compared with sentencepiece, %d mismatches\n", what, c->n, n_idlists,
           o.fails);
    for (size_t i = 0; i < n_idlists; i++) ct_ids_free(&lists[i]);
    free(lists);
    free(ans);
    ct_tok_free(t);
}

/* Every piece, score and type as the reference reads them. */
static void pieces_parity(const char *model) {
    ct_sp_model m;
    CHECK_OK(ct_sp_model_load(model, &m));
    char req[128];
    snprintf(req, sizeof req, "%s/requests.txt", g_tmp);
    write_file(req, "P\n", 2);
    size_t n = 0, bad = 0, count = 0;
    char *ans = reference(model, NULL, req, &n);
    for (char *p = ans; p && p < ans + n && strncmp(p, "END", 3) != 0; count++) {
        char *e = memchr(p, '\n', (size_t)(ans + n - p));
        long id = strtol(p, &p, 10);
        char type = p[1];
        double score = strtod(p + 3, &p);
        char piece[4096];
        size_t pl = unhex(p + 1, e, piece);
        static const char map[] = "?NKCNUB"; /* ct_sp_piece_type -> reference letter */
        const ct_sp_piece *q = id < m.n_pieces ? &m.pieces[id] : NULL;
        if (!q || map[q->type] != type || q->score != (float)score || q->len != pl ||
            memcmp(m.blob + q->off, piece, pl) != 0) {
            if (bad++ < 5) fprintf(stderr, "piece %ld differs from the reference\n", id);
        }
        p = e + 1;
    }
    CHECK(count == (size_t)m.n_pieces && bad == 0, "%s: %zu of %zu pieces differ (%d parsed)", model, bad, count,
          m.n_pieces);
    free(ans);
    ct_sp_model_free(&m);
}

/* ---- synthetic models: a protobuf writer ---- */

typedef struct {
    uint8_t *b;
    size_t n, cap;
} pbw;

static void pbw_raw(pbw *w, const void *d, size_t n) {
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 64;
        w->b = realloc(w->b, w->cap);
    }
    memcpy(w->b + w->n, d, n);
    w->n += n;
}

static void pbw_varint(pbw *w, uint64_t v) {
    do {
        uint8_t c = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) c |= 0x80;
        pbw_raw(w, &c, 1);
    } while (v);
}

static void pbw_uint(pbw *w, int field, uint64_t v) {
    pbw_varint(w, (uint64_t)field << 3);
    pbw_varint(w, v);
}

static void pbw_bytes(pbw *w, int field, const void *d, size_t n) {
    pbw_varint(w, (uint64_t)field << 3 | 2);
    pbw_varint(w, n);
    pbw_raw(w, d, n);
}

static void pbw_piece(pbw *w, const char *s, float score, int type) {
    pbw p = {0};
    pbw_bytes(&p, 1, s, strlen(s));
    uint32_t u;
    memcpy(&u, &score, 4);
    uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    pbw_varint(&p, 2 << 3 | 5);
    pbw_raw(&p, le, 4);
    if (type != CT_SP_NORMAL) pbw_uint(&p, 3, (uint64_t)type);
    pbw_bytes(w, 1, p.b, p.n);
    free(p.b);
}

typedef struct {
    bool byte_fallback, add_dummy_prefix, remove_extra, escape, suffix;
    int model_type;
    const char *charsmap; /* non-NULL: an (unsupported) precompiled charsmap */
} synth_opts;

/* A small BPE model: characters, merges with tied scores, UNUSED pieces
 * (re-split after merging), user-defined symbols, pieces with spaces. */
static void write_synth(const char *path, const synth_opts *o, uint64_t seed) {
    static const char *normal[] = {"a", "b", "c", "x", "u", "<", ">", "\xE2\x96\x81", " ", "\xC3\xA9", "\xE4\xBD\xA0",
                                   "\n", "ab", "bc", "ca", "aa", "abc", "aab", "\xE2\x96\x81" "a", "\xE2\x96\x81" "ab",
                                   "\xE2\x96\x81\xE2\x96\x81", "a\xE2\x96\x81", " a", "cc", "ccc", "\xE2\x96\x81" "c",
                                   "bca", "xa", "ax", "<u", "u>"};
    static const char *unused[] = {"ba", "abca", "\xE2\x96\x81" "b", "cab"};
    static const char *user[] = {"<u>", "<uu>", "x\xE2\x96\x81x", "<uuu"};
    ct_test_rng r = {seed};
    pbw w = {0};
    pbw_piece(&w, "<unk>", 0, CT_SP_UNKNOWN);
    pbw_piece(&w, "<s>", 0, CT_SP_CONTROL);
    pbw_piece(&w, "</s>", 0, CT_SP_CONTROL);
    if (o->byte_fallback)
        for (int b = 0; b < 256; b++) {
            char s[8];
            snprintf(s, sizeof s, "<0x%02X>", b);
            pbw_piece(&w, s, 0, CT_SP_BYTE);
        }
    for (size_t i = 0; i < sizeof user / sizeof *user; i++) pbw_piece(&w, user[i], 0, CT_SP_USER_DEFINED);
    for (size_t i = 0; i < sizeof normal / sizeof *normal; i++) /* few distinct scores: many ties */
        pbw_piece(&w, normal[i], -(float)(int)(ct_test_uniform(&r) * 4), CT_SP_NORMAL);
    for (size_t i = 0; i < sizeof unused / sizeof *unused; i++)
        pbw_piece(&w, unused[i], -(float)(int)(ct_test_uniform(&r) * 4), CT_SP_UNUSED);
    pbw ts = {0}, ns = {0};
    pbw_uint(&ts, 3, (uint64_t)(o->model_type ? o->model_type : CT_SP_BPE));
    pbw_uint(&ts, 4, 64);
    pbw_uint(&ts, 24, o->suffix);
    pbw_uint(&ts, 35, o->byte_fallback);
    pbw_bytes(&ns, 1, "identity", 8);
    if (o->charsmap) pbw_bytes(&ns, 2, o->charsmap, strlen(o->charsmap));
    pbw_uint(&ns, 3, o->add_dummy_prefix);
    pbw_uint(&ns, 4, o->remove_extra);
    pbw_uint(&ns, 5, o->escape);
    pbw_bytes(&w, 2, ts.b, ts.n);
    pbw_bytes(&w, 3, ns.b, ns.n);
    CHECK(write_file(path, w.b, w.n), "cannot write %s", path);
    free(w.b);
    free(ts.b);
    free(ns.b);
}

static void test_synthetic(void) {
    static const char *const pool[] = {"a", "b", "c", "x", "u", " ", "  ", "\xC3\xA9", "\xE4\xBD\xA0", "\n", "<u>",
                                       "<uu>", "<", ">", "\xE2\x96\x81", "\xff", "\xe4\xbd", "<s>", "</s>", "ab",
                                       "abc", "x x", "<uuu", "\t", "z"};
    static const synth_opts variants[] = {
        {.byte_fallback = 1, .add_dummy_prefix = 1, .remove_extra = 1, .escape = 1},
        {.byte_fallback = 0, .add_dummy_prefix = 0, .remove_extra = 0, .escape = 1},
        {.byte_fallback = 1, .add_dummy_prefix = 1, .remove_extra = 0, .escape = 1, .suffix = 1},
        {.byte_fallback = 0, .add_dummy_prefix = 1, .remove_extra = 1, .escape = 0},
        {.byte_fallback = 1, .add_dummy_prefix = 1, .remove_extra = 0, .escape = 1},
        {.byte_fallback = 0, .add_dummy_prefix = 0, .remove_extra = 1, .escape = 0, .suffix = 1},
    };
    texts c = {0};
    add_random(&c, 77, 300, 12, pool, (int)(sizeof pool / sizeof *pool));
    texts_add(&c, "", 0);
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        char path[128], what[64];
        snprintf(path, sizeof path, "%s/synth%zu.model", g_tmp, v);
        snprintf(what, sizeof what, "synthetic model %zu", v);
        write_synth(path, &variants[v], 1000 + v);
        parity(what, path, path, NULL, &c, 150);
    }
    texts_free(&c);
}

/* ---- corrupt and unsupported inputs ---- */

static void expect_input_error(int rc, const char *needle, const char *what) {
    CHECK(rc == CT_EINPUT, "%s: expected CT_EINPUT, got %d", what, rc);
    CHECK(strstr(ct_last_error(), needle) != NULL, "%s: message '%s' does not name '%s'", what, ct_last_error(),
          needle);
}

static void test_corrupt_model(const char *stories_model) {
    size_t n = 0;
    char *orig = read_file(stories_model, &n);
    CHECK(orig && n > 1000, "cannot read %s", stories_model);
    if (!orig) return;
    /* every truncation, in memory: an error naming the source, or (at a message
     * boundary) a valid shorter model; never a crash */
    size_t ok = 0, bad_msg = 0;
    for (size_t len = 0; len < n; len++) {
        ct_sp_model m;
        int rc = ct_sp_model_parse((const uint8_t *)orig, len, "trunc.model", &m);
        if (rc == CT_OK) ok++, ct_sp_model_free(&m);
        else bad_msg += rc != CT_EINPUT || !strstr(ct_last_error(), "trunc.model");
    }
    CHECK(bad_msg == 0 && ok <= 2, "truncations: %zu accepted, %zu errors without CT_EINPUT/path", ok, bad_msg);
    /* truncated copies on disk, loaded as directories */
    char dir[128], path[160];
    snprintf(dir, sizeof dir, "%s/corrupt", g_tmp);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    for (size_t len = 0; len < n; len += n / 23 + 1) {
        write_file(path, orig, len);
        ct_tokenizer *t = NULL;
        int rc = ct_tok_load(dir, &t);
        expect_input_error(rc, path, "truncated tokenizer.model");
        CHECK(t == NULL, "no tokenizer on error");
    }
    /* bit flips: either rejected with CT_EINPUT or a model that encodes safely */
    ct_test_rng r = {4242};
    char *buf = malloc(n);
    size_t rejected = 0, flips = 600;
    for (size_t k = 0; k < flips; k++) {
        memcpy(buf, orig, n);
        size_t at = (size_t)(ct_test_uniform(&r) * (double)n);
        buf[at] ^= (char)(1u << (int)(ct_test_uniform(&r) * 8));
        write_file(path, buf, n);
        ct_tokenizer *t = NULL;
        int rc = ct_tok_load(dir, &t);
        if (rc) {
            rejected++;
            CHECK(rc == CT_EINPUT && strstr(ct_last_error(), dir), "bit flip at %zu: rc %d '%s'", at, rc,
                  ct_last_error());
            continue;
        }
        static const char *probe[] = {"Once upon a time", "  x\xff\xe4\xbd\xa0 <s>", "aaaaaaaaaaaaaaaaaaaa"};
        for (int q = 0; q < 3; q++) {
            ct_ids ids = {0};
            CHECK_OK(ct_tok_encode(t, probe[q], strlen(probe[q]), true, &ids));
            bool in_range = true;
            for (size_t i = 0; i < ids.n; i++) in_range &= ids.v[i] >= 0 && ids.v[i] < ct_tok_vocab_size(t);
            CHECK(in_range, "bit flip at %zu: ids out of range", at);
            char *s = NULL;
            CHECK_OK(ct_tok_decode(t, ids.v, ids.n, true, &s, NULL));
            free(s);
            ct_ids_free(&ids);
        }
        ct_tok_free(t);
    }
    printf("corrupt models: %zu truncations (%zu valid at a boundary), %zu/%zu bit flips rejected\n", n, ok,
           rejected, flips);
    /* garbage and empty files, a missing path, a directory without a model */
    write_file(path, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11);
    ct_tokenizer *t = NULL;
    expect_input_error(ct_tok_load(dir, &t), path, "garbage model");
    write_file(path, "", 0);
    expect_input_error(ct_tok_load(dir, &t), path, "empty model");
    expect_input_error(ct_tok_load("/nonexistent/ctuner/tok", &t), "/nonexistent/ctuner/tok", "missing path");
    unlink(path);
    expect_input_error(ct_tok_load(dir, &t), "no tokenizer.model", "directory without a model");
    /* unsupported models */
    synth_opts uni = {.model_type = CT_SP_UNIGRAM, .escape = 1};
    write_synth(path, &uni, 1);
    expect_input_error(ct_tok_load(dir, &t), "not supported", "unigram model");
    synth_opts nfkc = {.escape = 1, .charsmap = "xyz"};
    write_synth(path, &nfkc, 1);
    expect_input_error(ct_tok_load(dir, &t), "precompiled", "charsmap normalizer");
    free(buf);
    free(orig);
}

static void test_bad_configs(const char *stories_model) {
    char dir[128], model[160], cfg[160];
    snprintf(dir, sizeof dir, "%s/cfg", g_tmp);
    mkdir(dir, 0700);
    snprintf(model, sizeof model, "%s/tokenizer.model", dir);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    size_t n;
    char *m = read_file(stories_model, &n);
    write_file(model, m, n);
    free(m);
    static const char *bad[] = {
        "{", "[1, 2]", "{\"add_bos_token\": \"yes\"}", "{\"added_tokens_decoder\": {\"abc\": {\"content\": \"x\"}}}",
        "{\"added_tokens_decoder\": {\"5\": {\"content\": \"\"}}}", "{\"added_tokens_decoder\": [1]}",
        "{\"bos_token\": \"<nope>\"}", "{\"eos_token\": 7}", "{\"additional_special_tokens\": [\"<zz>\"]}",
        "{\"added_tokens_decoder\": {\"600\": {\"content\": \"<a>\"}, \"601\": {\"content\": \"<a>\"}}}",
        "{\"add_bos_token\": true, \"add_bos_token\": false}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_file(cfg, bad[i], strlen(bad[i]));
        ct_tokenizer *t = NULL;
        expect_input_error(ct_tok_load(dir, &t), "tokenizer_config.json", bad[i]);
    }
    /* an added token beyond the model's vocabulary, plus add_eos_token */
    const char *good = "{\"add_bos_token\": false, \"add_eos_token\": true, \"eos_token\": {\"content\": \"</s>\"},"
                       " \"added_tokens_decoder\": {\"600\": {\"content\": \"<new>\", \"special\": true},"
                       " \"601\": {\"content\": \"<plain>\", \"special\": false}}}";
    write_file(cfg, good, strlen(good));
    ct_tokenizer *t = NULL;
    CHECK_OK(ct_tok_load(dir, &t));
    if (!t) return;
    CHECK(ct_tok_vocab_size(t) == 602, "vocab %d", ct_tok_vocab_size(t));
    CHECK(!ct_tok_add_bos_token(t) && ct_tok_add_eos_token(t) && ct_tok_eos_id(t) == 2, "flags");
    ct_ids ids = {0}, a = {0}, b = {0};
    const char *s = "Once<new>upon<plain>";
    CHECK_OK(ct_tok_encode(t, s, strlen(s), false, &ids));
    CHECK_OK(ct_tok_encode_plain(t, "Once", 4, &a));
    CHECK_OK(ct_tok_encode_plain(t, "upon", 4, &b));
    bool layout = ids.n == a.n + b.n + 2 && ids.v[a.n] == 600 && ids.v[ids.n - 1] == 601 &&
                  memcmp(ids.v, a.v, a.n * 4) == 0 && memcmp(ids.v + a.n + 1, b.v, b.n * 4) == 0;
    CHECK(layout, "added tokens: chunks encoded separately around them");
    char *d1 = NULL, *d2 = NULL;
    CHECK_OK(ct_tok_decode(t, ids.v, ids.n, true, &d1, NULL));
    CHECK_OK(ct_tok_decode(t, ids.v, ids.n, false, &d2, NULL));
    CHECK(d1 && strcmp(d1, s) == 0, "decode with specials: '%s'", d1 ? d1 : "");
    CHECK(d2 && strcmp(d2, "Onceupon<plain>") == 0, "decode without specials: '%s'", d2 ? d2 : "");
    size_t pl = 0;
    const char *p = ct_tok_piece(t, 600, &pl);
    CHECK(p && pl == 5 && memcmp(p, "<new>", 5) == 0 && ct_tok_piece_to_id(t, "<new>", 5) == 600, "piece 600");
    int32_t bad_id = 602;
    char *d3 = NULL;
    expect_input_error(ct_tok_decode(t, &bad_id, 1, true, &d3, NULL), "602", "decode out of range");
    free(d1);
    free(d2);
    ct_ids_free(&ids);
    ct_ids_free(&a);
    ct_ids_free(&b);
    ct_tok_free(t);
}

/* ---- hand-checked ids (obtained once from the reference, see each comment) ---- */

static void expect_ids(const ct_tokenizer *t, const char *s, size_t n, bool hf, const int32_t *want, size_t nw) {
    ct_ids got = {0};
    CHECK_OK(hf ? ct_tok_encode(t, s, n, true, &got) : ct_tok_encode_plain(t, s, n, &got));
    bool ok = got.n == nw && memcmp(got.v, want, nw * sizeof *want) == 0;
    CHECK(ok, "ids of \"%.*s\"", (int)n, s);
    if (!ok) print_ids(stderr, "got", got.v, got.n);
    ct_ids_free(&got);
}

#define EXPECT(t, s, hf, ...)                                                          \
    do {                                                                               \
        static const int32_t want_[] = {__VA_ARGS__};                                  \
        expect_ids(t, s, sizeof(s) - 1, hf, want_, sizeof want_ / sizeof want_[0]);    \
    } while (0)

static void test_hand_checked(const ct_tokenizer *lm, const ct_tokenizer *st) {
    CHECK(ct_tok_vocab_size(lm) == 92544 && ct_tok_bos_id(lm) == 1 && ct_tok_eos_id(lm) == 2 &&
              ct_tok_unk_id(lm) == 0 && ct_tok_add_bos_token(lm) && !ct_tok_add_eos_token(lm),
          "InternLM2 vocabulary facts");
    CHECK(ct_tok_piece_to_id(lm, "<|im_start|>", 12) == 92543 && ct_tok_piece_to_id(lm, "<|im_end|>", 10) == 92542,
          "chat token ids");
    size_t pl = 0;
    const char *p = ct_tok_piece(lm, 92543, &pl);
    CHECK(p && pl == 12 && memcmp(p, "<|im_start|>", 12) == 0, "piece 92543 is <|im_start|> (tokenizer_config)");
    p = ct_tok_piece(lm, 9843, &pl);
    CHECK(p && pl == 5 && memcmp(p, "Hello", 5) == 0, "piece 9843");
    CHECK(ct_tok_piece(lm, 92544, NULL) == NULL && ct_tok_piece(lm, -1, NULL) == NULL, "piece out of range");
    CHECK(ct_tok_is_special(lm, 92542) && ct_tok_is_special(lm, 1) && !ct_tok_is_special(lm, 9843), "is_special");
    /* From sentencepiece 0.1.97 + the HF rule (tests/data/sp_reference.py), written in once: */
    EXPECT(lm, "<|im_start|>user\nHello<|im_end|>\n", true, 1, 92543, 1008, 364, 9843, 92542, 364);
    /* sp.encode of the same string without the special-token split: */
    EXPECT(lm, "<|im_start|>user\nHello<|im_end|>\n", false, 333, 352, 449, 5064, 352, 330, 1008, 364, 9843, 333,
           352, 449, 6368, 352, 527);
    EXPECT(lm, "12345", false, 4575, 1889);                          /* '123' '45': no digit pre-split */
    EXPECT(lm, "a\xff" "b", false, 264, 65746, 260);                 /* invalid byte -> U+FFFD piece */
    EXPECT(lm, "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xef\xbc\x81", false, 77230, 60353, 68339,
           60477);                                                   /* 你好，世界！ */
    EXPECT(lm, "  Hello world", false, 387, 9843, 2028);             /* no dummy prefix in InternLM2 */
    EXPECT(lm, "\xf0\x9f\x98\x80", false, 243, 162, 155, 131);       /* 😀 -> byte fallback */
    EXPECT(lm, "\tdef f():\n", false, 7596, 413, 4089);
    EXPECT(lm, "", true, 1);
    CHECK(ct_tok_vocab_size(st) == 512 && ct_tok_bos_id(st) == 1, "stories260k vocabulary facts");
    EXPECT(st, "Once upon a time", true, 1, 403, 407, 261, 378);     /* dummy prefix: '▁Once' ... */
    EXPECT(st, "  Lily  saw \xe4\xbd\xa0 ", false, 317, 394, 410, 231, 192, 163); /* extra spaces removed */
    ct_ids none = {0};
    CHECK_OK(ct_tok_encode(lm, "", 0, false, &none));
    CHECK(none.n == 0, "empty text without BOS gives no ids");
    char *d = NULL;
    size_t dn = 7;
    CHECK_OK(ct_tok_decode(lm, NULL, 0, true, &d, &dn));
    CHECK(d && dn == 0 && d[0] == '\0', "decoding nothing gives an empty string");
    free(d);
    /* decode details: byte runs, invalid bytes -> U+FFFD, controls invisible, <unk> surface */
    static const int32_t ids[] = {1, 3 + 0xE4, 3 + 0xBD, 3 + 0xA0, 3 + 0xE4, 3 + 0x41, 0, 2, 9843};
    CHECK_OK(ct_tok_decode_plain(lm, ids, 9, &d, &dn));
    const char *want = "\xe4\xbd\xa0\xef\xbf\xbd" "A \xe2\x81\x87 Hello";
    CHECK(d && dn == strlen(want) && memcmp(d, want, dn) == 0, "plain decode");
    free(d);
    CHECK_OK(ct_tok_decode(lm, ids, 9, true, &d, &dn));
    want = "<s>\xe4\xbd\xa0\xef\xbf\xbd" "A<unk></s>Hello";
    CHECK(d && dn == strlen(want) && memcmp(d, want, dn) == 0, "decode with specials: '%s'", d ? d : "");
    free(d);
    ct_ids_free(&none);
}

/* decode(encode(x)) == x for valid UTF-8 (identity normalizer), except texts
 * with U+2581 (decodes to a space) or the literal names of InternLM2's
 * user-defined pieces "[UNUSED_TOKEN_141..146]": those encode to the ids that
 * tokenizer_config.json calls <|plugin|>..<|im_start|>, as in SentencePiece. */
static bool valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!k || i + k > n) return false;
        uint32_t cp = k == 1 ? c : c & (0x7F >> k);
        for (size_t j = 1; j < k; j++) {
            if (((unsigned char)s[i + j] & 0xC0) != 0x80) return false;
            cp = cp << 6 | ((unsigned char)s[i + j] & 0x3F);
        }
        static const uint32_t minv[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < minv[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return false;
        i += k;
    }
    return true;
}

static void test_roundtrip(const ct_tokenizer *lm, const texts *c) {
    size_t tried = 0, ok = 0;
    for (size_t i = 0; i < c->n; i++) {
        const text *x = &c->v[i];
        if (!valid_utf8(x->s, x->n) || memmem(x->s, x->n, "\xE2\x96\x81", 3) || memmem(x->s, x->n, "[UNUSED_TOKEN_", 14))
            continue;
        ct_ids ids = {0};
        char *d = NULL;
        size_t dn = 0;
        CHECK_OK(ct_tok_encode(lm, x->s, x->n, true, &ids));
        CHECK_OK(ct_tok_decode(lm, ids.v + 1, ids.n - 1, true, &d, &dn)); /* without the BOS */
        tried++;
        bool same = d && dn == x->n && memcmp(d, x->s, dn) == 0;
        ok += same;
        if (!same && tried - ok <= 5) {
            fprintf(stderr, "round trip differs for \"");
            print_escaped(stderr, x->s, x->n);
            fprintf(stderr, "\"\n");
        }
        free(d);
        ct_ids_free(&ids);
    }
    CHECK(tried > 200 && ok == tried, "round trip: %zu of %zu texts", ok, tried);
    printf("round trip decode(encode(x)) == x on %zu of %zu texts\n", ok, tried);
}

/* ---- long inputs: O(n log n), not quadratic; parity on long single texts ---- */

static double encode_seconds(const ct_tokenizer *t, const char *s, size_t n, ct_ids *ids) {
    ids->n = 0;
    double t0 = ct_now_s();
    CHECK_OK(ct_tok_encode_plain(t, s, n, ids));
    return ct_now_s() - t0;
}

static void test_long(const ct_tokenizer *lm, const texts *corpus) {
    size_t big = (size_t)2 << 20, small = big / 16;
    char *s = malloc(big);
    memset(s, 'a', big);
    ct_ids ids = {0};
    double ts = encode_seconds(lm, s, small, &ids);
    size_t n_small = ids.n;
    double tb = encode_seconds(lm, s, big, &ids);
    /* 16x the input: ~16-20x the time for n log n, 256x for quadratic */
    CHECK(tb < 64 * ts + 0.05, "2 MiB of 'a' took %.3f s, 128 KiB %.3f s: worse than n log n", tb, ts);
    CHECK(ids.n >= 16 * n_small - 16 && ids.n <= 16 * n_small + 16, "ids scale with the input (%zu vs %zu)", ids.n,
          n_small);
    char *d = NULL;
    size_t dn = 0;
    CHECK_OK(ct_tok_decode_plain(lm, ids.v, ids.n, &d, &dn));
    CHECK(d && dn == big && memcmp(d, s, big) == 0, "2 MiB round trip");
    printf("long input: 128 KiB of 'a' %.3f s, 2 MiB %.3f s (%zu ids)\n", ts, tb, ids.n);
    free(d);
    /* mixed text without spaces, against the reference */
    if (g_python) {
        texts c = {0};
        ct_test_rng r = {99};
        char *m = malloc(300000);
        size_t n = 0;
        while (n < 290000) {
            const char *p = MIXED_POOL[(int)(ct_test_uniform(&r) * N_MIXED)];
            if (strchr(p, ' ') || !*p) continue;
            memcpy(m + n, p, strlen(p));
            n += strlen(p);
        }
        texts_add(&c, m, n);
        /* and the whole corpus as one text (spaces, newlines, specials, invalid bytes) */
        n = 0;
        for (size_t i = 0; i < corpus->n && n + corpus->v[i].n + 1 < 300000; i++) {
            memcpy(m + n, corpus->v[i].s, corpus->v[i].n);
            n += corpus->v[i].n;
            m[n++] = '\n';
        }
        texts_add(&c, m, n);
        parity("long texts", CT_FIXTURES "/internlm2-chat-7b", CT_FIXTURES "/internlm2-chat-7b/tokenizer.model",
               CT_FIXTURES "/internlm2-chat-7b/tokenizer_config.json", &c, 0);
        texts_free(&c);
        free(m);
    }
    ct_ids_free(&ids);
    free(s);
}

/* ---- concurrent encoding with one tokenizer ---- */

typedef struct {
    const ct_tokenizer *t;
    const texts *c;
    const ct_ids *want; /* serial results */
    int mismatches;
} thread_job;

static void *encode_all(void *arg) {
    thread_job *j = arg;
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < j->c->n; i++) {
            ct_ids got = {0};
            if (ct_tok_encode(j->t, j->c->v[i].s, j->c->v[i].n, true, &got) || !ids_equal(&got, &j->want[i]))
                j->mismatches++;
            ct_ids_free(&got);
        }
    return NULL;
}

static void test_threads(const ct_tokenizer *lm, const texts *c) {
    ct_ids *want = calloc(c->n, sizeof *want);
    for (size_t i = 0; i < c->n; i++) CHECK_OK(ct_tok_encode(lm, c->v[i].s, c->v[i].n, true, &want[i]));
    enum { NT = 4 };
    pthread_t th[NT];
    thread_job jobs[NT];
    for (int k = 0; k < NT; k++) {
        jobs[k] = (thread_job){lm, c, want, 0};
        CHECK(pthread_create(&th[k], NULL, encode_all, &jobs[k]) == 0, "pthread_create");
    }
    int bad = 0;
    for (int k = 0; k < NT; k++) {
        pthread_join(th[k], NULL);
        bad += jobs[k].mismatches;
    }
    CHECK(bad == 0, "%d concurrent encodings differ from the serial ones", bad);
    for (size_t i = 0; i < c->n; i++) ct_ids_free(&want[i]);
    free(want);
}

int main(void) {
    char lm_dir[512], st_dir[512], buf[512];
    if (!ct_fixture("internlm2-chat-7b/tokenizer.model", buf, sizeof buf) ||
        !ct_fixture("stories260k-internlm2/tokenizer.model", buf, sizeof buf))
        return CT_TEST_SKIP;
    snprintf(lm_dir, sizeof lm_dir, "%s/internlm2-chat-7b", CT_FIXTURES);
    snprintf(st_dir, sizeof st_dir, "%s/stories260k-internlm2", CT_FIXTURES);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/ct_tokenizer_XXXXXX");
    CHECK(mkdtemp(g_tmp) != NULL, "mkdtemp: %s", strerror(errno));
    find_python();

    texts corpus = {0};
    CHECK(load_corpus(&corpus), "cannot read tests/data/tokenizer_corpus.txt");
    size_t n_file = corpus.n;
    add_random(&corpus, 12345, 400, 24, MIXED_POOL, N_MIXED);
    printf("corpus: %zu texts from the file, %zu generated\n", n_file, corpus.n - n_file);

    ct_tokenizer *lm = NULL, *st = NULL;
    CHECK_OK(ct_tok_load(lm_dir, &lm));
    CHECK_OK(ct_tok_load(st_dir, &st));
    if (lm && st) {
        test_hand_checked(lm, st);
        test_roundtrip(lm, &corpus);
        test_threads(lm, &corpus);
        test_long(lm, &corpus);
    }
    char model[600], cfg[600];
    snprintf(model, sizeof model, "%s/tokenizer.model", st_dir);
    test_corrupt_model(model);
    test_bad_configs(model);
    if (g_python) {
        snprintf(model, sizeof model, "%s/tokenizer.model", lm_dir);
        snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", lm_dir);
        pieces_parity(model);
        parity("internlm2-chat-7b", lm_dir, model, cfg, &corpus, 300);
        snprintf(model, sizeof model, "%s/tokenizer.model", st_dir);
        snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", st_dir);
        pieces_parity(model);
        parity("stories260k", st_dir, model, cfg, &corpus, 300);
        test_synthetic();
    }
    ct_tok_free(lm);
    ct_tok_free(st);
    texts_free(&corpus);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    int rc = ct_test_finish();
    if (rc == 0 && !g_python) return CT_TEST_SKIP;
    return rc;
}
