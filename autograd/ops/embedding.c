/* embedding: rows of a table. Backward scatters into the table's grad when the
 * table is trainable (QLoRA keeps it frozen, so usually nothing is recorded). */
#include "../ct_error.h"
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
