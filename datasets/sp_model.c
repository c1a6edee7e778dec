/* tokenizer.model reader: a small bounds-checked protobuf wire-format decoder
 * (varints, length-delimited, fixed32/64) and the ModelProto fields that matter
 * for encoding and decoding. Every read checks the remaining length first, so a
 * truncated or bit-flipped file ends in a CT_EINPUT message, never a crash. */
#include "sp_model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/file_check.h"

#define SP_MAX_FILE ((size_t)1 << 30) /* piece offsets are uint32; real models are ~MBs */

/* ---- wire format ---- */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

typedef struct {
    const uint8_t *base; /* start of the whole file, for offsets in messages */
    const uint8_t *p, *end;
    const char *what;    /* file path for messages */
} pb_reader;

static int pb_fail(const pb_reader *r, const char *fmt, const char *detail) {
    char msg[256];
    snprintf(msg, sizeof msg, fmt, detail);
    return ct_errorf(CT_EINPUT, "%s: corrupt SentencePiece model at byte %zu: %s (re-download tokenizer.model)",
                     r->what, (size_t)(r->p - r->base), msg);
}

static int pb_varint(pb_reader *r, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return pb_fail(r, "%s", "varint runs past the end of the data");
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1) return pb_fail(r, "%s", "varint longer than 64 bits");
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return CT_OK;
        }
    }
    return pb_fail(r, "%s", "varint longer than 10 bytes");
}

static int pb_key(pb_reader *r, uint32_t *field, int *wt) {
    uint64_t k = 0;
    CT_TRY(pb_varint(r, &k));
    *wt = (int)(k & 7);
    if ((k >> 3) == 0 || (k >> 3) > 0x1fffffff) return pb_fail(r, "%s", "invalid field number 0");
    *field = (uint32_t)(k >> 3);
    return CT_OK;
}

/* A length-delimited payload: (*data, *len) point into the buffer. */
static int pb_len(pb_reader *r, const uint8_t **data, size_t *len) {
    uint64_t n = 0;
    CT_TRY(pb_varint(r, &n));
    if (n > (uint64_t)(r->end - r->p)) return pb_fail(r, "%s", "length-delimited field runs past the end");
    *data = r->p;
    *len = (size_t)n;
    r->p += n;
    return CT_OK;
}

static int pb_fixed32(pb_reader *r, uint32_t *v) {
    if (r->end - r->p < 4) return pb_fail(r, "%s", "fixed32 field runs past the end");
    *v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24;
    r->p += 4;
    return CT_OK;
}

/* Skips a field we do not use (proto2 keeps going past unknown fields). */
static int pb_skip(pb_reader *r, int wt) {
    uint64_t v = 0;
    const uint8_t *d = NULL;
    size_t n = 0;
    switch (wt) {
    case WT_VARINT: return pb_varint(r, &v);
    case WT_I64:
        if (r->end - r->p < 8) return pb_fail(r, "%s", "fixed64 field runs past the end");
        r->p += 8;
        return CT_OK;
    case WT_LEN: return pb_len(r, &d, &n);
    case WT_I32:
        if (r->end - r->p < 4) return pb_fail(r, "%s", "fixed32 field runs past the end");
        r->p += 4;
        return CT_OK;
    default: return pb_fail(r, "%s", "unsupported wire type (groups or invalid)");
    }
}

static int pb_expect(pb_reader *r, uint32_t field, int wt, int want) {
    if (wt == want) return CT_OK;
    char d[64];
    snprintf(d, sizeof d, "field %u has wire type %d, expected %d", field, wt, want);
    return pb_fail(r, "%s", d);
}

static pb_reader pb_sub(const pb_reader *r, const uint8_t *data, size_t len) {
    pb_reader s = {r->base, data, data + len, r->what};
    return s;
}

/* ---- model building ---- */

static int set_string(char **dst, const uint8_t *data, size_t len) {
    char *s = malloc(len + 1);
    if (!s) return ct_errorf(CT_ERUNTIME, "out of memory reading a SentencePiece model");
    memcpy(s, data, len);
    s[len] = '\0';
    free(*dst);
    *dst = s;
    return CT_OK;
}

static int add_piece(ct_sp_model *m, size_t *cap, size_t *blob_cap, const uint8_t *s, size_t len, float score,
                     int type) {
    if ((size_t)m->n_pieces == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        ct_sp_piece *np = realloc(m->pieces, nc * sizeof *np);
        if (!np) return ct_errorf(CT_ERUNTIME, "out of memory reading a SentencePiece model");
        m->pieces = np;
        *cap = nc;
    }
    if (m->blob_len + len + 1 > *blob_cap) {
        size_t nc = *blob_cap ? *blob_cap * 2 : 16384;
        while (nc < m->blob_len + len + 1) nc *= 2;
        char *nb = realloc(m->blob, nc);
        if (!nb) return ct_errorf(CT_ERUNTIME, "out of memory reading a SentencePiece model");
        m->blob = nb;
        *blob_cap = nc;
    }
    ct_sp_piece *p = &m->pieces[m->n_pieces++];
    p->off = (uint32_t)m->blob_len;
    p->len = (uint32_t)len;
    p->score = score;
    p->type = (uint8_t)type;
    if (len) memcpy(m->blob + m->blob_len, s, len);
    m->blob[m->blob_len + len] = '\0';
    m->blob_len += len + 1;
    return CT_OK;
}

/* ModelProto.SentencePiece { 1: piece, 2: score (float), 3: type (enum) } */
static int parse_piece(pb_reader *r, ct_sp_model *m, size_t *cap, size_t *blob_cap) {
    const uint8_t *s = (const uint8_t *)"";
    size_t len = 0;
    float score = 0.0f;
    uint64_t type = CT_SP_NORMAL;
    while (r->p < r->end) {
        uint32_t f = 0;
        int wt = 0;
        CT_TRY(pb_key(r, &f, &wt));
        if (f == 1) {
            CT_TRY(pb_expect(r, f, wt, WT_LEN));
            CT_TRY(pb_len(r, &s, &len));
        } else if (f == 2) {
            uint32_t u = 0;
            CT_TRY(pb_expect(r, f, wt, WT_I32));
            CT_TRY(pb_fixed32(r, &u));
            memcpy(&score, &u, 4);
        } else if (f == 3) {
            CT_TRY(pb_expect(r, f, wt, WT_VARINT));
            CT_TRY(pb_varint(r, &type));
            if (type < CT_SP_NORMAL || type > CT_SP_BYTE) return pb_fail(r, "%s", "piece type out of range 1..6");
        } else {
            CT_TRY(pb_skip(r, wt));
        }
    }
    if (m->n_pieces == INT32_MAX) return pb_fail(r, "%s", "too many pieces");
    return add_piece(m, cap, blob_cap, s, len, score, (int)type);
}

static int parse_bool(pb_reader *r, uint32_t f, int wt, bool *dst) {
    uint64_t v = 0;
    CT_TRY(pb_expect(r, f, wt, WT_VARINT));
    CT_TRY(pb_varint(r, &v));
    *dst = v != 0;
    return CT_OK;
}

static int parse_int32(pb_reader *r, uint32_t f, int wt, int32_t *dst) {
    uint64_t v = 0;
    CT_TRY(pb_expect(r, f, wt, WT_VARINT));
    CT_TRY(pb_varint(r, &v));
    *dst = (int32_t)(uint32_t)v; /* proto int32: negative values are sign-extended varints */
    return CT_OK;
}

/* TrainerSpec: only fields that change encoding/decoding, plus a few for info. */
static int parse_trainer(pb_reader *r, ct_sp_model *m) {
    while (r->p < r->end) {
        uint32_t f = 0;
        int wt = 0;
        CT_TRY(pb_key(r, &f, &wt));
        int32_t v = 0;
        switch (f) {
        case 3: CT_TRY(parse_int32(r, f, wt, &v)); m->model_type = v; break;
        case 4: CT_TRY(parse_int32(r, f, wt, &m->trainer_vocab_size)); break;
        case 21: CT_TRY(parse_bool(r, f, wt, &m->split_by_unicode_script)); break;
        case 22: CT_TRY(parse_bool(r, f, wt, &m->split_by_whitespace)); break;
        case 23: CT_TRY(parse_bool(r, f, wt, &m->split_by_number)); break;
        case 24: CT_TRY(parse_bool(r, f, wt, &m->treat_whitespace_as_suffix)); break;
        case 25: CT_TRY(parse_bool(r, f, wt, &m->split_digits)); break;
        case 26: CT_TRY(parse_bool(r, f, wt, &m->allow_whitespace_only_pieces)); break;
        case 35: CT_TRY(parse_bool(r, f, wt, &m->byte_fallback)); break;
        case 40: CT_TRY(parse_int32(r, f, wt, &m->unk_id)); break;
        case 41: CT_TRY(parse_int32(r, f, wt, &m->bos_id)); break;
        case 42: CT_TRY(parse_int32(r, f, wt, &m->eos_id)); break;
        case 43: CT_TRY(parse_int32(r, f, wt, &m->pad_id)); break;
        case 44: {
            const uint8_t *d = NULL;
            size_t n = 0;
            CT_TRY(pb_expect(r, f, wt, WT_LEN));
            CT_TRY(pb_len(r, &d, &n));
            CT_TRY(set_string(&m->unk_surface, d, n));
            break;
        }
        default: CT_TRY(pb_skip(r, wt));
        }
    }
    return CT_OK;
}

/* NormalizerSpec (also used for denormalizer_spec, where only the charsmap matters). */
static int parse_normalizer(pb_reader *r, ct_sp_model *m, bool is_denormalizer) {
    while (r->p < r->end) {
        uint32_t f = 0;
        int wt = 0;
        CT_TRY(pb_key(r, &f, &wt));
        const uint8_t *d = NULL;
        size_t n = 0;
        if (f == 1 || f == 2) {
            CT_TRY(pb_expect(r, f, wt, WT_LEN));
            CT_TRY(pb_len(r, &d, &n));
            if (f == 2 && n && is_denormalizer)
                return ct_errorf(CT_EINPUT, "%s: the model has a denormalizer rule set, which ctuner does not implement",
                                 r->what);
            if (f == 2) m->charsmap_len = n;
            if (f == 1 && !is_denormalizer) CT_TRY(set_string(&m->normalizer_name, d, n));
        } else if (f == 3 && !is_denormalizer) {
            CT_TRY(parse_bool(r, f, wt, &m->add_dummy_prefix));
        } else if (f == 4 && !is_denormalizer) {
            CT_TRY(parse_bool(r, f, wt, &m->remove_extra_whitespaces));
        } else if (f == 5 && !is_denormalizer) {
            CT_TRY(parse_bool(r, f, wt, &m->escape_whitespaces));
        } else {
            CT_TRY(pb_skip(r, wt));
        }
    }
    return CT_OK;
}

int ct_sp_piece_to_byte(const char *s, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    const char *hi = memchr(hex, s[3], 16), *lo = memchr(hex, s[4], 16);
    if (!hi || !lo) return -1;
    return (int)((hi - hex) * 16 + (lo - hex));
}

/* The checks SentencePiece's ModelInterface::InitializePieces makes, plus what
 * ctuner does not implement (non-BPE models, precompiled normalization rules). */
static int validate(const ct_sp_model *m, const char *what) {
    if (m->n_pieces == 0) return ct_errorf(CT_EINPUT, "%s: the SentencePiece model has no pieces (is this a tokenizer.model?)", what);
    if (m->model_type != CT_SP_BPE) {
        static const char *names[] = {"?", "UNIGRAM", "BPE", "WORD", "CHAR"};
        const char *nm = m->model_type >= 1 && m->model_type <= 4 ? names[m->model_type] : "unknown";
        return ct_errorf(CT_EINPUT, "%s: SentencePiece model type %s (%d) is not supported: ctuner encodes BPE models only",
                         what, nm, m->model_type);
    }
    if (m->charsmap_len)
        return ct_errorf(CT_EINPUT,
                         "%s: normalizer '%s' uses a precompiled character map (%zu bytes), which ctuner does not "
                         "implement (only identity normalization, as InternLM2 uses)",
                         what, m->normalizer_name ? m->normalizer_name : "", m->charsmap_len);
    int32_t unk = -1;
    bool seen[256] = {false};
    for (int32_t i = 0; i < m->n_pieces; i++) {
        const ct_sp_piece *p = &m->pieces[i];
        if (p->len == 0) return ct_errorf(CT_EINPUT, "%s: piece %d is empty (corrupt model?)", what, i);
        if (p->type == CT_SP_UNKNOWN) {
            if (unk >= 0) return ct_errorf(CT_EINPUT, "%s: pieces %d and %d are both <unk>", what, unk, i);
            unk = i;
        }
        if (p->type == CT_SP_BYTE) {
            if (!m->byte_fallback)
                return ct_errorf(CT_EINPUT, "%s: byte piece %d found although byte_fallback is false", what, i);
            int b = ct_sp_piece_to_byte(m->blob + p->off, p->len);
            if (b < 0) return ct_errorf(CT_EINPUT, "%s: byte piece %d '%s' is not of the form <0xXX>", what, i, m->blob + p->off);
            seen[b] = true;
        }
    }
    if (unk < 0) return ct_errorf(CT_EINPUT, "%s: the model defines no <unk> piece", what);
    if (m->byte_fallback)
        for (int b = 0; b < 256; b++)
            if (!seen[b])
                return ct_errorf(CT_EINPUT, "%s: byte_fallback is set but the byte piece <0x%02X> is missing", what, b);
    return CT_OK;
}

static void set_defaults(ct_sp_model *m) {
    memset(m, 0, sizeof *m);
    m->model_type = CT_SP_UNIGRAM;
    m->trainer_vocab_size = 8000;
    m->split_by_whitespace = m->split_by_unicode_script = m->split_by_number = true;
    m->unk_id = 0;
    m->bos_id = 1;
    m->eos_id = 2;
    m->pad_id = -1;
    m->add_dummy_prefix = m->remove_extra_whitespaces = m->escape_whitespaces = true;
}

int ct_sp_model_parse(const uint8_t *buf, size_t len, const char *what, ct_sp_model *m) {
    set_defaults(m);
    int rc = CT_OK;
    if (len > SP_MAX_FILE) {
        rc = ct_errorf(CT_EINPUT, "%s: %zu bytes is too large for a SentencePiece model", what, len);
        goto fail;
    }
    size_t cap = 0, blob_cap = 0;
    pb_reader r = {buf, buf, buf + len, what};
    while (r.p < r.end) {
        uint32_t f = 0;
        int wt = 0;
        const uint8_t *d = NULL;
        size_t n = 0;
        if ((rc = pb_key(&r, &f, &wt))) goto fail;
        if (f >= 1 && f <= 5 && f != 4) {
            if ((rc = pb_expect(&r, f, wt, WT_LEN)) || (rc = pb_len(&r, &d, &n))) goto fail;
            pb_reader sub = pb_sub(&r, d, n);
            if (f == 1) rc = parse_piece(&sub, m, &cap, &blob_cap);
            else if (f == 2) rc = parse_trainer(&sub, m);
            else rc = parse_normalizer(&sub, m, f == 5);
        } else {
            rc = pb_skip(&r, wt);
        }
        if (rc) goto fail;
    }
    if (!m->unk_surface && (rc = set_string(&m->unk_surface, (const uint8_t *)" \xE2\x81\x87 ", 5))) goto fail;
    if (!m->normalizer_name && (rc = set_string(&m->normalizer_name, (const uint8_t *)"", 0))) goto fail;
    if ((rc = validate(m, what))) goto fail;
    return CT_OK;
fail:
    ct_sp_model_free(m);
    return rc;
}

int ct_sp_model_load(const char *path, ct_sp_model *m) {
    memset(m, 0, sizeof *m);
    FILE *f;
    CT_TRY(ct_fopen_regular(path, "the SentencePiece model (tokenizer.model)", &f, NULL));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : (size_t)1 << 20;
            if (cap > SP_MAX_FILE * 2) break; /* parse reports the size */
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return ct_errorf(CT_ERUNTIME, "%s: out of memory reading the model", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return ct_errorf(CT_EINPUT, "%s: read error", path);
    }
    int rc = ct_sp_model_parse(buf, len, path, m);
    free(buf);
    return rc;
}

void ct_sp_model_free(ct_sp_model *m) {
    free(m->blob);
    free(m->pieces);
    free(m->unk_surface);
    free(m->normalizer_name);
    memset(m, 0, sizeof *m);
}
