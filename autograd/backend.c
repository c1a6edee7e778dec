/* What every backend shares above its table: op names, the capability query
 * and the error for a missing op, the description `ctuner info` prints, and
 * the list of backends this build has. */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ct_error.h"

static const char *const k_op_names[CT_OP_COUNT] = {
    [CT_OP_EMBEDDING] = "embedding",
    [CT_OP_RMSNORM] = "rmsnorm",
    [CT_OP_ROPE] = "rope",
    [CT_OP_ATTENTION] = "attention",
    [CT_OP_ATTENTION_DECODE] = "attention_decode",
    [CT_OP_SWIGLU] = "swiglu",
    [CT_OP_ADD] = "add",
    [CT_OP_LORA_LINEAR] = "lora_linear",
    [CT_OP_LINEAR_XENT] = "linear_cross_entropy",
    [CT_OP_ADAMW] = "adamw",
    [CT_OP_GRAD_NORM] = "grad_norm",
};

const char *ct_op_name(ct_op_id op) {
    return (unsigned)op < CT_OP_COUNT ? k_op_names[op] : "unknown op";
}

/* The entries op needs (the table in backend.h's ct_op_id comments). */
static bool has_entries(const ct_backend *be, ct_op_id op) {
    switch (op) {
    case CT_OP_EMBEDDING: return be->embedding_fwd;
    case CT_OP_RMSNORM: return be->rmsnorm_fwd && be->rmsnorm_bwd;
    case CT_OP_ROPE: return be->rope_fwd && be->rope_bwd;
    case CT_OP_ATTENTION: return be->attention_fwd && be->attention_bwd;
    case CT_OP_ATTENTION_DECODE: return be->attention_decode;
    case CT_OP_SWIGLU: return be->swiglu_fwd && be->swiglu_bwd;
    case CT_OP_ADD: return be->axpy;
    case CT_OP_LORA_LINEAR: return be->lora_linear_fwd && be->lora_linear_bwd;
    case CT_OP_LINEAR_XENT: return be->linear_xent_fwd;
    case CT_OP_ADAMW: return be->adamw_update;
    case CT_OP_GRAD_NORM: return be->sum_squares && be->scale;
    case CT_OP_COUNT: break;
    }
    return false;
}

int ct_compute_dtype_check(ct_dtype compute, const char *what) {
    if (compute == CT_F32 || compute == CT_BF16) return CT_OK;
    return ct_errorf(CT_EINPUT, "%s%scompute dtype %s: only float32 and bfloat16 are offered", what ? what : "",
                     what ? ": " : "", ct_dtype_name(compute));
}

static bool has_bit(uint32_t mask, ct_dtype dt) {
    return dt == CT_DTYPE_COUNT || ((unsigned)dt < 32 && (mask >> dt & 1u));
}

bool ct_backend_supports(const ct_backend *be, ct_op_id op, const ct_op_query *q) {
    if (!be || (unsigned)op >= CT_OP_COUNT || !has_entries(be, op)) return false;
    if (!q) return true;
    if (be->supports_op) return be->supports_op(op, q);
    return has_bit(be->weight_dtypes, q->weight) && has_bit(be->compute_dtypes, q->compute);
}

int ct_backend_require(const ct_backend *be, ct_op_id op, const ct_op_query *q) {
    if (ct_backend_supports(be, op, q)) return CT_OK;
    const char *name = be ? be->name : "(none)";
    if (!be || (unsigned)op >= CT_OP_COUNT || !has_entries(be, op))
        return ct_errorf(CT_ERUNTIME, "backend '%s' has no %s kernel (`ctuner info` lists what each "
                         "backend offers): run on another device", name, ct_op_name(op));
    char what[96] = "";
    int k = 0;
    if (q && q->weight != CT_DTYPE_COUNT)
        k += snprintf(what + k, sizeof what - (size_t)k, " with %s weights", ct_dtype_name(q->weight));
    if (q && q->compute != CT_DTYPE_COUNT && k >= 0 && (size_t)k < sizeof what)
        snprintf(what + k, sizeof what - (size_t)k, " %s %s compute", k ? "and" : "with",
                 ct_dtype_name(q->compute));
    return ct_errorf(CT_ERUNTIME, "backend '%s' cannot run %s%s (`ctuner info` lists what each "
                     "backend offers): choose another dtype or device", name, ct_op_name(op), what);
}

/* "f32 bf16" for a dtype mask into buf. */
static const char *mask_names(uint32_t mask, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = '\0';
    for (int dt = 0; dt < CT_DTYPE_COUNT && k < cap; dt++)
        if (mask >> dt & 1u) {
            int n = snprintf(buf + k, cap - k, "%s%s", k ? " " : "", ct_dtype_name((ct_dtype)dt));
            if (n < 0) break;
            k += (size_t)n;
        }
    return buf;
}

void ct_backend_describe(const ct_backend *be, FILE *f) {
    char b1[64], b2[64];
    fprintf(f, "  activations: %s (statistics f32)\n", ct_dtype_name(be->act_dtype));
    fprintf(f, "  compute dtypes: %s\n", mask_names(be->compute_dtypes, b1, sizeof b1));
    fprintf(f, "  weight dtypes: %s\n", mask_names(be->weight_dtypes, b2, sizeof b2));
    fprintf(f, "  ops:");
    for (int op = 0; op < CT_OP_COUNT; op++)
        if (ct_backend_supports(be, (ct_op_id)op, NULL)) fprintf(f, " %s", ct_op_name((ct_op_id)op));
    fprintf(f, "\n");
    int missing = 0;
    for (int op = 0; op < CT_OP_COUNT; op++)
        if (!ct_backend_supports(be, (ct_op_id)op, NULL))
            fprintf(f, "%s %s", missing++ ? "" : "  missing:", ct_op_name((ct_op_id)op));
    if (missing) fprintf(f, "\n");
}

int ct_backend_list(const char **names, const ct_backend **bes, const char **why, int cap) {
    static char reasons[4][256];
    static const char *const n[] = {"cpu", "cuda", "cuda-emu",
#ifdef CT_TEST_BACKENDS
                                    "guarded" /* test builds only */
#endif
    };
    const ct_backend *(*const get[])(void) = {ct_cpu_backend, ct_cuda_backend, ct_cuda_emu_backend,
#ifdef CT_TEST_BACKENDS
                                              ct_guarded_backend
#endif
    };
    int k = 0;
    for (size_t i = 0; i < sizeof n / sizeof n[0] && k < cap; i++) {
        const ct_backend *be = get[i]();
        snprintf(reasons[i], sizeof reasons[i], "%s", be ? "" : ct_last_error());
        ct_error_clear();
        names[k] = n[i];
        bes[k] = be;
        why[k] = reasons[i];
        k++;
    }
    return k;
}

int ct_backend_download_f32(const ct_backend *be, float *dst, const ct_tensor *t) {
    if (t->dtype == CT_F32) return be->download(dst, t->data, ct_nbytes(t));
    void *raw = malloc(ct_nbytes(t) ? ct_nbytes(t) : 1); /* [numel] in t's dtype */
    if (!raw) return ct_errorf(CT_ERUNTIME, "out of memory for a %s download", ct_dtype_name(t->dtype));
    int rc = be->download(raw, t->data, ct_nbytes(t));
    if (!rc) rc = ct_convert(dst, CT_F32, raw, t->dtype, ct_numel(t));
    free(raw);
    return rc;
}

int ct_backend_by_name(const char *name, const char *what, const ct_backend **out) {
    *out = NULL;
    if (!strcmp(name, "auto") || !strcmp(name, "cpu")) {
        *out = ct_cpu_backend();
        return CT_OK;
    }
    const ct_backend *be = NULL;
    if (!strcmp(name, "cuda")) be = ct_cuda_backend();
    else if (!strcmp(name, "cuda-emu")) be = ct_cuda_emu_backend();
    else
        return ct_errorf(CT_EINPUT, "%s %s: unknown; use auto, cpu, cuda or cuda-emu", what, name);
    if (!be) return ct_error_wrap(CT_EINPUT, "%s %s is not available here (use cpu or auto)", what, name);
    *out = be;
    return CT_OK;
}
