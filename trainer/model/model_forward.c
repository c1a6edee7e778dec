/* No-grad forwards of a loaded model (see model.h): per-sample NLL of packed
 * samples (eval) and logits of one sequence (a reference for generation).
 *
 * Memory: without recording nothing of a layer is needed after it has run,
 * so each layer's activations are released (arena rewind) once its output is
 * copied into one of two [T, D] ping-pong buffers. The working set is one
 * layer's activations, not the whole model's. */
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ops.h"
#include "trainer/model/model.h"

#define IGNORE_INDEX (-100)

/* A row range [r0, r1) of a 2-D [rows, cols] tensor (any dtype) as a tensor header. */
static int row_view(const ct_tensor *t, int64_t r0, int64_t r1, ct_tensor *view) {
    int64_t shape[2] = {r1 - r0, t->shape[1]};
    CT_TRY(ct_tensor_init(view, t->dtype, t->device, 2, shape,
                          (char *)t->data + ct_dtype_bytes(t->dtype, r0 * t->shape[1])));
    return CT_OK;
}

static ct_tensor *i32_upload(ct_tape *tape, const int32_t *host, int64_t T) {
    ct_tensor *t = ct_tape_new(tape, CT_I32, 1, &T);
    if (t && tape->be->upload(t->data, host, (size_t)T * sizeof(int32_t))) return NULL;
    return t;
}

/* Embedding, the layers one at a time (activations released after each),
 * final norm: *hidden [T, D]. Recording must be off. */
static int hidden_no_grad(ct_tape *tape, const ct_decoder_model *dm, ct_tensor *ids, const ct_decoder_input *in,
                          ct_tensor **hidden) {
    const ct_backend *be = tape->be;
    int64_t T = ct_numel(ids), D = dm->dims.hidden, shape[2] = {T, D};
    ct_tensor *buf[2]; /* [T, D] each: the residual stream, ping-pong */
    if (!(buf[0] = ct_tape_new(tape, be->act_dtype, 2, shape)) ||
        !(buf[1] = ct_tape_new(tape, be->act_dtype, 2, shape)))
        return ct_error_wrap(CT_ERUNTIME, "eval forward: hidden state buffers");
    ct_tensor *h = ct_decoder_embed(tape, dm, ids, in->host_ids);
    if (!h) return ct_error_wrap(ct_last_status(), "tok_embeddings");
    CT_TRY(be->copy(buf[0]->data, h->data, ct_nbytes(h)));
    int cur = 0;
    for (int l = 0; l < dm->n_layers; l++) {
        ct_arena_mark md = ct_arena_get_mark(tape->data), mm = ct_arena_get_mark(&tape->meta);
        ct_tensor *out = NULL;
        int rc = ct_decoder_layer(tape, &dm->dims, &dm->layers[l], in, buf[cur], &out);
        if (rc) return ct_error_wrap(rc, "layer %d", l);
        CT_TRY(be->copy(buf[1 - cur]->data, out->data, ct_nbytes(out)));
        ct_arena_rewind(tape->data, md);
        ct_arena_rewind(&tape->meta, mm);
        cur = 1 - cur;
    }
    *hidden = ct_rmsnorm(tape, buf[cur], dm->norm, dm->dims.eps);
    if (!*hidden) return ct_error_wrap(ct_last_status(), "final norm");
    return CT_OK;
}

static int check_ids(const int32_t *ids, int64_t T, int64_t V) {
    for (int64_t t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V)
            return ct_errorf(CT_EINPUT, "token id %d at position %lld is outside the vocabulary [0, %lld)", ids[t],
                             (long long)t, (long long)V);
    return CT_OK;
}

/* Segments: contiguous runs with ids 0..n_samples-1 in order; positions restart
 * at each. pos [T] out. */
static int make_positions(const int32_t *seg, int64_t T, int n_samples, int32_t *pos) {
    int32_t cur = 0, p = 0;
    for (int64_t t = 0; t < T; t++) {
        int32_t s = seg ? seg[t] : 0;
        if (t == 0 ? s != 0 : (s != cur && s != cur + 1))
            return ct_errorf(CT_EINPUT, "segment id %d at token %lld: samples must be numbered 0, 1, ... in "
                             "contiguous runs", s, (long long)t);
        if (s != cur) cur = s, p = 0;
        pos[t] = p++;
    }
    if (T > 0 && cur != n_samples - 1)
        return ct_errorf(CT_EINPUT, "segment ids end at %d, expected %d samples", cur, n_samples);
    return CT_OK;
}

static int nll_run(const ct_model *m, ct_tape *tape, const int32_t *ids, const int32_t *labels, const int32_t *seg,
                   int64_t T, int n_samples, double *nll, int64_t *count, int32_t *pos) {
    const ct_decoder_model *dm = ct_model_decoder(m);
    int64_t V = ct_model_config(m)->vocab_size;
    CT_TRY(check_ids(ids, T, V));
    for (int64_t t = 0; t < T; t++)
        if (labels[t] != IGNORE_INDEX && (labels[t] < 0 || labels[t] >= V))
            return ct_errorf(CT_EINPUT, "label %d at position %lld is neither -100 nor in [0, %lld)", labels[t],
                             (long long)t, (long long)V);
    CT_TRY(make_positions(seg, T, n_samples, pos));
    ct_tensor *ids_t, *lab_t, *hidden;
    if (!(ids_t = i32_upload(tape, ids, T)) || !(lab_t = i32_upload(tape, labels, T)))
        return ct_error_wrap(CT_ERUNTIME, "eval inputs");
    ct_decoder_input in;
    CT_TRY(ct_decoder_input_make(&in, tape, pos, seg, T));
    in.host_ids = ids;
    CT_TRY(hidden_no_grad(tape, dm, ids_t, &in, &hidden));
    /* The head + loss per sample over its rows of hidden, so each sample's NLL
     * sum comes out in double (no dropout: recording is off). */
    uint64_t seed;
    ct_linear head = ct_linear_for_step(tape, &dm->output, &seed);
    head.id = seed;
    CT_TRY(ct_backend_require(tape->be, CT_OP_LINEAR_XENT, &(ct_op_query){head.w->dtype, head.compute}));
    for (int64_t t0 = 0, s = 0; t0 < T; s++) {
        int64_t t1 = t0 + 1;
        while (t1 < T && (!seg || seg[t1] == seg[t0])) t1++;
        ct_tensor x, lab;
        CT_TRY(row_view(hidden, t0, t1, &x));
        int64_t n = t1 - t0;
        CT_TRY(ct_tensor_init(&lab, CT_I32, lab_t->device, 1, &n, (int32_t *)lab_t->data + t0));
        CT_TRY(ct_linear_check("eval head", &x, &head, tape->be->act_dtype));
        nll[s] = 0.0, count[s] = 0;
        int rc = tape->be->linear_xent_fwd(&x, &head, &lab, 1.0f, &nll[s], &count[s], NULL, NULL, NULL,
                                           &tape->scratch);
        if (rc) return ct_error_wrap(rc, "sample %lld", (long long)s);
        t0 = t1;
    }
    return CT_OK;
}

int ct_model_nll(const ct_model *m, ct_tape *tape, const int32_t *ids, const int32_t *labels, const int32_t *seg,
                 int64_t T, int n_samples, double *nll, int64_t *count) {
    if (T < 1 || n_samples < 1 || (!seg && n_samples != 1) || n_samples > T)
        return ct_errorf(CT_EINPUT, "eval: %lld tokens in %d samples (need T >= 1, 1 <= samples <= T, and "
                         "segment ids for more than one sample)", (long long)T, n_samples);
    if (T > INT32_MAX) return ct_errorf(CT_EINPUT, "eval: %lld tokens in one batch is too many", (long long)T);
    int32_t *pos = malloc((size_t)T * sizeof *pos); /* [T] positions, restarting per sample */
    if (!pos) return ct_errorf(CT_ERUNTIME, "out of memory");
    ct_tape_reset(tape);
    bool prev = ct_tape_set_recording(tape, false);
    int rc = nll_run(m, tape, ids, labels, seg, T, n_samples, nll, count, pos);
    ct_tape_set_recording(tape, prev);
    free(pos);
    return rc;
}

static int logits_run(const ct_model *m, ct_tape *tape, const int32_t *ids, int64_t T, int64_t rows_from,
                      float *logits, int32_t *pos) {
    const ct_decoder_model *dm = ct_model_decoder(m);
    CT_TRY(check_ids(ids, T, ct_model_config(m)->vocab_size));
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
    ct_tensor *ids_t, *hidden, x;
    if (!(ids_t = i32_upload(tape, ids, T))) return ct_error_wrap(CT_ERUNTIME, "logits inputs");
    ct_decoder_input in;
    CT_TRY(ct_decoder_input_make(&in, tape, pos, NULL, T));
    in.host_ids = ids;
    CT_TRY(hidden_no_grad(tape, dm, ids_t, &in, &hidden));
    CT_TRY(row_view(hidden, rows_from, T, &x));
    ct_tensor *y = ct_lora_linear(tape, &x, &dm->output); /* [T - rows_from, V] */
    if (!y) return ct_error_wrap(ct_last_status(), "output head");
    return ct_backend_download_f32(tape->be, logits, y);
}

int ct_model_logits(const ct_model *m, ct_tape *tape, const int32_t *ids, int64_t T, int64_t rows_from,
                    float *logits) {
    if (T < 1 || T > INT32_MAX || rows_from < 0 || rows_from >= T)
        return ct_errorf(CT_EINPUT, "logits: %lld tokens, rows from %lld (need 0 <= rows_from < T)", (long long)T,
                         (long long)rows_from);
    int32_t *pos = malloc((size_t)T * sizeof *pos); /* [T] 0..T-1 */
    if (!pos) return ct_errorf(CT_ERUNTIME, "out of memory");
    ct_tape_reset(tape);
    bool prev = ct_tape_set_recording(tape, false);
    int rc = logits_run(m, tape, ids, T, rows_from, logits, pos);
    ct_tape_set_recording(tape, prev);
    free(pos);
    return rc;
}
