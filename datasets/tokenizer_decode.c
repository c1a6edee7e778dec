/* SentencePiece decoding (SentencePieceProcessor::Decode): pieces back to text.
 * Runs of byte pieces are reassembled and read one UTF-8 character at a time,
 * a malformed byte becoming U+FFFD; control pieces are invisible; <unk> shows
 * the model's unk_surface; U+2581 becomes a space; at the start the dummy
 * prefix space is dropped from the first piece when the model adds one (all
 * leading spaces when it also removes extra whitespace). */
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "datasets/tokenizer_internal.h"

int tok_buf_append(tok_buf *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->len + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) return ct_errorf(CT_ERUNTIME, "out of memory decoding ids");
        b->s = ns;
        b->cap = nc;
    }
    if (n) memcpy(b->s + b->len, data, n);
    b->len += n;
    b->s[b->len] = '\0';
    return CT_OK;
}

/* ProcessBytePieces: the bytes of ids[begin, end) (all BYTE pieces). */
static int flush_bytes(const ct_tokenizer *t, const int32_t *ids, size_t begin, size_t end, tok_buf *b) {
    unsigned char bytes[8]; /* pending bytes; a character never spans more than 4 */
    size_t nb = 0;
    for (size_t i = begin; i <= end; i++) {
        if (i < end) {
            const ct_sp_piece *p = &t->sp.pieces[ids[i]];
            bytes[nb++] = (unsigned char)ct_sp_piece_to_byte(t->sp.blob + p->off, p->len);
        }
        /* emit every complete character, keeping up to 3 trailing bytes that may start one */
        size_t off = 0;
        while (off < nb && (i == end || nb - off >= 4)) {
            size_t mb;
            if (tok_utf8_valid_char(bytes + off, nb - off, &mb)) CT_TRY(tok_buf_append(b, bytes + off, mb));
            else CT_TRY(tok_buf_append(b, "\xEF\xBF\xBD", 3));
            off += mb;
        }
        memmove(bytes, bytes + off, nb - off);
        nb -= off;
    }
    return CT_OK;
}

/* Appends piece with U+2581 -> ' '. */
static int append_unescaped(tok_buf *b, const char *s, size_t n) {
    size_t start = 0;
    for (size_t i = 0; i + 3 <= n;) {
        if (memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
            CT_TRY(tok_buf_append(b, s + start, i - start));
            CT_TRY(tok_buf_append(b, " ", 1));
            i += 3;
            start = i;
        } else {
            i++;
        }
    }
    return tok_buf_append(b, s + start, n - start);
}

int tok_sp_decode(const ct_tokenizer *t, const int32_t *ids, size_t n, tok_buf *b) {
    const ct_sp_model *m = &t->sp;
    size_t base = b->len; /* "text is empty" means nothing decoded by this call yet */
    bool is_bos_ws = true, bos_ws_seen = false;
    size_t byte_start = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= m->n_pieces)
            return ct_errorf(CT_EINPUT, "cannot decode id %d at position %zu: the vocabulary has ids 0..%d", id, i,
                             m->n_pieces - 1);
        const ct_sp_piece *p = &m->pieces[id];
        if (p->type == CT_SP_BYTE) continue;
        CT_TRY(flush_bytes(t, ids, byte_start, i, b));
        byte_start = i + 1;
        if (bos_ws_seen || b->len > base) is_bos_ws = false;
        bos_ws_seen = false;
        if (p->type == CT_SP_CONTROL) continue; /* <s>, </s>: invisible */
        if (p->type == CT_SP_UNKNOWN) {
            CT_TRY(tok_buf_append(b, m->unk_surface, strlen(m->unk_surface)));
            continue;
        }
        const char *s = m->blob + p->off;
        size_t len = p->len;
        if (is_bos_ws && (m->add_dummy_prefix || m->remove_extra_whitespaces) && len >= 3 &&
            memcmp(s, "\xE2\x96\x81", 3) == 0) {
            s += 3;
            len -= 3;
            bos_ws_seen = !m->remove_extra_whitespaces; /* with it, every leading space goes */
        }
        CT_TRY(append_unescaped(b, s, len));
    }
    return flush_bytes(t, ids, byte_start, n, b);
}
