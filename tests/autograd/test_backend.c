/* The backend interface's capability query (autograd/backend.c):
 *  - the CPU and guarded backends offer every op, every compute and weight
 *    dtype they list;
 *  - a backend without an entry (a copy of the CPU table with entries taken
 *    out, as the CUDA table has them today) answers "no" for that op, and
 *    using the op through the tape is CT_ERUNTIME naming the op and the
 *    backend: a message, never a NULL call;
 *  - a dtype outside a backend's masks is refused by name, a supports_op hook
 *    overrides the masks;
 *  - ct_backend_describe prints what `ctuner info` shows; ct_backend_list
 *    names cpu, cuda, cuda-emu and (test builds) guarded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "testutil.h"

static void test_full_backends(void) {
    const ct_backend *bes[2] = {ct_cpu_backend(), ct_guarded_backend()};
    for (int b = 0; b < 2; b++) {
        const ct_backend *be = bes[b];
        CHECK_PTR(be);
        if (!be) continue;
        for (int op = 0; op < CT_OP_COUNT; op++)
            CHECK(ct_backend_supports(be, (ct_op_id)op, NULL), "%s lacks %s", be->name, ct_op_name((ct_op_id)op));
        ct_op_query q = {CT_NF4, CT_BF16};
        CHECK(ct_backend_supports(be, CT_OP_LORA_LINEAR, &q), "%s: nf4 + bf16 lora_linear", be->name);
        q = (ct_op_query){CT_F16, CT_F16};
        CHECK(!ct_backend_supports(be, CT_OP_LORA_LINEAR, &q), "%s offers f16 compute", be->name);
        CHECK(be->act_dtype == CT_F32, "%s activations %s", be->name, ct_dtype_name(be->act_dtype));
    }
    CHECK(strcmp(ct_op_name(CT_OP_LINEAR_XENT), "linear_cross_entropy") == 0, "op name");
    CHECK(strcmp(ct_op_name(CT_OP_COUNT), "unknown op") == 0, "out-of-range op name");
}

static ct_backend g_partial; /* the CPU table without swiglu_bwd, adamw and the bf16 compute */

static bool only_f32_weights(ct_op_id op, const ct_op_query *q) {
    return op != CT_OP_LORA_LINEAR || q->weight == CT_DTYPE_COUNT || q->weight == CT_F32;
}

static void test_missing_entry(void) {
    g_partial = *ct_cpu_backend();
    g_partial.name = "partial";
    g_partial.swiglu_bwd = NULL;
    g_partial.adamw_update = NULL;
    g_partial.compute_dtypes = 1u << CT_F32;
    const ct_backend *be = &g_partial;
    CHECK(!ct_backend_supports(be, CT_OP_SWIGLU, NULL), "swiglu without its backward is supported");
    CHECK(ct_backend_supports(be, CT_OP_RMSNORM, NULL), "rmsnorm lost");
    CHECK(ct_backend_require(be, CT_OP_ADAMW, NULL) == CT_ERUNTIME &&
              strstr(ct_last_error(), "'partial' has no adamw kernel"),
          "require adamw: %s", ct_last_error());

    /* through the tape: the op is refused before any kernel runs */
    int64_t shape[2] = {3, 4};
    ct_tensor *g = ct_tensor_new(be, CT_F32, 2, shape, false), *u = ct_tensor_new(be, CT_F32, 2, shape, false);
    memset(g->data, 0, ct_nbytes(g));
    memset(u->data, 0, ct_nbytes(u));
    ct_tape tape;
    CHECK_OK(ct_tape_init(&tape, be, 1 << 16));
    ct_error_clear();
    CHECK(ct_swiglu(&tape, g, u) == NULL && ct_last_status() == CT_ERUNTIME &&
              strstr(ct_last_error(), "backend 'partial' has no swiglu kernel"),
          "swiglu on a backend without swiglu_bwd: %s", ct_last_error());

    /* a compute dtype outside the mask, named in the message */
    int64_t ws[2] = {5, 4};
    ct_tensor *w = ct_tensor_new(be, CT_F32, 2, ws, false);
    memset(w->data, 0, ct_nbytes(w));
    ct_linear lin = {.w = w, .compute = CT_BF16};
    ct_error_clear();
    CHECK(ct_lora_linear(&tape, g, &lin) == NULL && ct_last_status() == CT_ERUNTIME &&
              strstr(ct_last_error(), "cannot run lora_linear with f32 weights and bf16 compute"),
          "bf16 compute on an f32-only backend: %s", ct_last_error());
    lin.compute = CT_F32;
    ct_error_clear();
    CHECK_PTR(ct_lora_linear(&tape, g, &lin));

    /* the hook decides over the masks */
    g_partial.supports_op = only_f32_weights;
    ct_op_query q = {CT_BF16, CT_F32};
    CHECK(!ct_backend_supports(be, CT_OP_LORA_LINEAR, &q), "the hook was not asked");
    q.weight = CT_F32;
    CHECK(ct_backend_supports(be, CT_OP_LORA_LINEAR, &q), "the hook refused f32");

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ct_backend_describe(be, f);
    fclose(f);
    CHECK(text && strstr(text, "missing: swiglu adamw") && strstr(text, "compute dtypes: f32\n") &&
              strstr(text, "weight dtypes: f32 bf16 f16 nf4"),
          "describe: %s", text ? text : "(none)");
    free(text);
    ct_tape_free(&tape);
    ct_tensor_free(be, g), ct_tensor_free(be, u), ct_tensor_free(be, w);
}

static void test_list(void) {
    const char *names[8], *why[8];
    const ct_backend *bes[8];
    int n = ct_backend_list(names, bes, why, 8);
    CHECK(n == 4 && !strcmp(names[0], "cpu") && !strcmp(names[1], "cuda") &&
              !strcmp(names[2], "cuda-emu") && !strcmp(names[3], "guarded"),
          "%d backends listed", n);
    CHECK(n >= 1 && bes[0] == ct_cpu_backend() && why[0][0] == '\0', "cpu listed unavailable");
    for (int i = 1; i < n; i++)
        CHECK((bes[i] != NULL) == (why[i][0] == '\0'), "%s: a backend or a reason, not both", names[i]);
#ifdef CT_HAVE_CUDA_EMU
    CHECK(n >= 3 && bes[2] && bes[2]->device == CT_CUDA_EMU && !strcmp(bes[2]->name, "cuda-emu"),
          "cuda-emu: available in a build with nvcc");
#endif
    CHECK(!strcmp(ct_device_name(CT_GUARDED), "guarded"), "device name");
    CHECK(!strcmp(ct_device_name(CT_CUDA_EMU), "cuda-emu"), "device name");
    ct_error_clear();
}

/* The CUDA kernels take f32 or bf16 activations, all of one call in one
 * dtype: a mix, or another dtype, is CT_EINPUT naming the op and tensors
 * (checked on the emulated backend when the build has it). */
static void test_activation_dtypes(void) {
    const ct_backend *be = ct_cuda_emu_backend();
    if (!be) {
        ct_error_clear();
        return;
    }
    const int64_t n = 16;
    ct_tensor *x = ct_tensor_new(be, CT_F32, 1, &n, true), *y = ct_tensor_new(be, CT_BF16, 1, &n, true);
    ct_tensor *h = ct_tensor_new(be, CT_F16, 1, &n, true);
    CHECK(x && y && h, "tensors on cuda-emu: %s", ct_last_error());
    if (x && y && h) {
        CHECK(be->axpy(1.0f, x, y) == CT_EINPUT && strstr(ct_last_error(), "axpy: y is bf16 but x is f32"),
              "mixed activation dtypes: %s", ct_last_error());
        CHECK(be->swiglu_fwd(h, h, h) == CT_EINPUT && strstr(ct_last_error(), "swiglu") &&
                  strstr(ct_last_error(), "float32 or bfloat16"),
              "f16 activations: %s", ct_last_error());
        CHECK(be->axpy(1.0f, x, x) == CT_OK, "f32 activations: %s", ct_last_error());
    }
    ct_tensor_free(be, x), ct_tensor_free(be, y), ct_tensor_free(be, h);
    ct_error_clear();
}

int main(void) {
    if (!ct_guarded_backend()) {
        printf("skipped: %s\n", ct_last_error());
        return CT_TEST_SKIP;
    }
    test_full_backends();
    test_missing_entry();
    test_list();
    test_activation_dtypes();
    return ct_test_finish();
}
