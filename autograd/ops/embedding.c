/* embedding: rows of a table. Backward scatters into the table's grad when the
 * table is trainable (QLoRA keeps it frozen, so usually nothing is recorded).
 * ct_embedding_host: the gather of a frozen table in host memory, done on the
 * host and uploaded. */
#include <string.h>

#include "../ct_error.h"
#include "../ct_inline.h"
#include "../ops.h"

static int embedding_backward(ct_tape *t, const ct_tape_entry *e) {
    ct_tensor *table = e->in[0];
    if (!table->requires_grad) return CT_OK;
    ct_tensor *g = ct_grad(t, table);
    if (!g) return CT_ERUNTIME;
    return t->be->embedding_bwd(e->in[1], e->out->grad, g);
}

static const ct_op_def k_embedding = {"embedding", embedding_backward};

ct_tensor *ct_embedding(ct_tape *t, ct_tensor *table, ct_tensor *ids) {
    if (table->ndim != 2 || ids->dtype != CT_I32 ||
        !(table->dtype == CT_F32 || table->dtype == CT_BF16 || table->dtype == CT_F16)) {
        ct_errorf(CT_EINPUT, "embedding: needs a [V, D] f32/bf16/f16 table (got %s, rank %d) and i32 ids (got %s)",
                  ct_dtype_name(table->dtype), table->ndim, ct_dtype_name(ids->dtype));
        return NULL;
    }
    if (table->requires_grad && table->dtype != CT_F32) {
        ct_errorf(CT_EINPUT, "embedding: a trainable table must be f32");
        return NULL;
    }
    if (table->requires_grad && !t->be->embedding_bwd) {
        ct_errorf(CT_ERUNTIME, "backend '%s' has no embedding backward kernel: the table cannot be trained "
                  "there (`ctuner info` lists what each backend offers)", t->be->name);
        return NULL;
    }
    int64_t shape[2] = {ct_numel(ids), table->shape[1]};
    ct_tensor *y = ct_tape_new(t, t->be->act_dtype, 2, shape);
    if (!y || ct_backend_require(t->be, CT_OP_EMBEDDING, &(ct_op_query){table->dtype, CT_DTYPE_COUNT}) ||
        t->be->embedding_fwd(table, ids, y))
        return NULL;
    ct_tensor *in[2] = {table, ids};
    if (ct_tape_record(t, &k_embedding, y, in, 2, NULL)) return NULL;
    return y;
}

/* Element j of a [V, D] f32/bf16/f16 table's row as f32 (the kernels' load_w). */
static inline float table_f32(const void *row, ct_dtype dt, int64_t j) {
    if (dt == CT_F32) return ((const float *)row)[j];
    uint16_t h = ((const uint16_t *)row)[j];
    return dt == CT_BF16 ? ct_bf16_to_f32(h) : ct_f16_to_f32(h);
}

int ct_embedding_gather_host(const ct_tensor *table, const int32_t *ids, int64_t T, ct_dtype act, void *dst) {
    if (table->ndim != 2 || table->device != CT_CPU ||
        !(table->dtype == CT_F32 || table->dtype == CT_BF16 || table->dtype == CT_F16))
        return ct_errorf(CT_EINPUT, "embedding (host gather): needs a [V, D] f32/bf16/f16 table in host memory (got "
                         "%s, rank %d, on %s)", ct_dtype_name(table->dtype), table->ndim,
                         ct_device_name(table->device));
    if (table->requires_grad)
        return ct_errorf(CT_EINPUT, "embedding (host gather): the table is trainable; a host table must be frozen "
                         "(its grad would have to come back from the device)");
    if (act != CT_F32 && act != CT_BF16)
        return ct_errorf(CT_EINPUT, "embedding (host gather): rows of dtype %s asked (f32 or bf16 expected)",
                         ct_dtype_name(act));
    const int64_t V = table->shape[0], D = table->shape[1];
    for (int64_t i = 0; i < T; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return ct_errorf(CT_EINPUT, "embedding: token id %d at position %lld outside vocab of %lld", ids[i],
                             (long long)i, (long long)V);
    const size_t row_bytes = (size_t)ct_dtype_bytes(table->dtype, D);
#pragma omp parallel for schedule(static) if (T * D > 65536)
    for (int64_t i = 0; i < T; i++) {
        const void *row = (const char *)table->data + (size_t)ids[i] * row_bytes;
        if (act == CT_F32) {
            float *out = (float *)dst + (size_t)i * (size_t)D;
            for (int64_t j = 0; j < D; j++) out[j] = table_f32(row, table->dtype, j);
        } else {
            uint16_t *out = (uint16_t *)dst + (size_t)i * (size_t)D;
            for (int64_t j = 0; j < D; j++) out[j] = ct_f32_to_bf16(table_f32(row, table->dtype, j));
        }
    }
    return CT_OK;
}

ct_tensor *ct_embedding_host(ct_tape *t, const ct_tensor *table, const int32_t *ids, int64_t T) {
    int64_t shape[2] = {T, table->ndim == 2 ? table->shape[1] : 0};
    ct_tensor *y = ct_tape_new(t, t->be->act_dtype, 2, shape);
    void *stage = y ? ct_tape_meta(t, ct_nbytes(y)) : NULL; /* host [T, D] in act, until the next reset */
    if (!stage) return NULL;
    int rc = ct_embedding_gather_host(table, ids, T, t->be->act_dtype, stage);
    if (!rc) rc = t->be->upload(y->data, stage, ct_nbytes(y));
    if (rc) {
        ct_error_wrap(rc, "embedding (host gather): %lld rows", (long long)T);
        return NULL;
    }
    return y;
}
