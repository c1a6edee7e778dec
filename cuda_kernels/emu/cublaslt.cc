/* The host cuBLASLt of the emulated build: exactly the cublasLt* calls gemm.cu
 * makes, with cublasLt.h's prototypes, in namespace ct_emu (renamed by
 * emu/cuda_emu.h's macros; declared in emu/cublaslt.h), so the production
 * wrapper's layouts, transposes and heuristic query are what the tests run.
 *
 * What it emulates: column-major D = alpha·op(A)·op(B) + beta·C with
 * CUBLAS_COMPUTE_32F and CUDA_R_32F scale (host alpha/beta); A and B both
 * CUDA_R_32F or both CUDA_R_16BF; C and D both CUDA_R_32F, or both CUDA_R_16BF
 * with bf16 inputs (rounded to nearest even from the fp32 result); op N or T.
 * bf16 operands are widened to f32 (exact), products are summed in fp32 by
 * OpenBLAS's cblas_sgemm; beta == 0 never reads C. Attributes: the matmul
 * descriptor's TRANSA/TRANSB; the preference's MAX_WORKSPACE_BYTES and
 * MIN_ALIGNMENT_{A,B,C,D}_BYTES. The heuristic returns one algorithm, which
 * remembers the preference's alignments: cublasLtMatmul refuses
 * (CUBLAS_STATUS_INVALID_VALUE) operands less aligned than that (a GPU's
 * vectorised algorithm would fault or misread), and operands or a workspace
 * outside the emulator's device memory; the reason goes to stderr.
 *
 * What it refuses: any other attribute, compute type, scale type, data type,
 * operation or type combination (CUBLAS_STATUS_NOT_SUPPORTED, never ignored),
 * empty dimensions and sizes beyond cblas's int (NOT_SUPPORTED: the wrapper
 * never asks), mismatched shapes, leading dimensions below the rows, wrong
 * attribute sizes and NULL or destroyed objects (CUBLAS_STATUS_INVALID_VALUE). */
#include <cblas.h>

#include <climits>
#include <cstdio>
#include <new>
#include <vector>

#include "cuda_kernels/cuda_includes.h"

/* The handle's struct: cublasLt.h only declares it. */
struct cublasLtContext {
    uint32_t magic;
};

namespace ct_emu {
namespace {

const uint32_t kHandleMagic = 0x4c744831u, kDescMagic = 0x4c744432u, kLayoutMagic = 0x4c744c33u,
               kPrefMagic = 0x4c745034u, kAlgoMagic = 0x4c744135u;

/* The state of each semi-opaque descriptor, kept in its data[] storage. */
struct Desc {
    uint32_t magic;
    int32_t transa, transb;
};
struct Layout {
    uint32_t magic;
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct Pref {
    uint32_t magic;
    uint64_t max_workspace;
    uint32_t align[4]; /* A, B, C, D */
};
struct Algo {
    uint32_t magic;
    uint32_t align[4];
};
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "descriptor state");
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout state");
static_assert(sizeof(Pref) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "preference state");
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t), "algorithm state");

template <class S, class O> S *state(O *o) { return std::launder(reinterpret_cast<S *>(o->data)); }
template <class S, class O> const S *state(const O *o) {
    return std::launder(reinterpret_cast<const S *>(o->data));
}

template <class S, class O> cublasStatus_t create(O **out, const S &init) {
    if (!out) return CUBLAS_STATUS_INVALID_VALUE;
    O *o = new (std::nothrow) O;
    if (!o) return CUBLAS_STATUS_ALLOC_FAILED;
    new (o->data) S(init);
    *out = o;
    return CUBLAS_STATUS_SUCCESS;
}

template <class S, class O> cublasStatus_t destroy(O *o, uint32_t magic) {
    if (!o) return CUBLAS_STATUS_SUCCESS; /* as the library: destroying NULL is fine */
    if (state<S>(o)->magic != magic) return CUBLAS_STATUS_INVALID_VALUE;
    state<S>(o)->magic = 0;
    delete o;
    return CUBLAS_STATUS_SUCCESS;
}

template <class S, class O> const S *valid(const O *o, uint32_t magic) {
    return o && state<S>(o)->magic == magic ? state<S>(o) : nullptr;
}

size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

/* One matmul's checked shape: op(A) [m, k], op(B) [k, n], C and D [m, n]. */
struct Problem {
    bool ta, tb;
    uint64_t m, n, k;
    const Layout *a, *b, *c, *d;
};

cublasStatus_t check_problem(const Desc *op, const Layout *a, const Layout *b, const Layout *c,
                             const Layout *d, Problem *pr) {
    if (!op || !a || !b || !c || !d) return CUBLAS_STATUS_INVALID_VALUE;
    if (a->type != b->type || c->type != d->type) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (c->type == CUDA_R_16BF && a->type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    pr->ta = op->transa == CUBLAS_OP_T, pr->tb = op->transb == CUBLAS_OP_T;
    pr->m = pr->ta ? a->cols : a->rows;
    pr->k = pr->ta ? a->rows : a->cols;
    pr->n = pr->tb ? b->rows : b->cols;
    uint64_t kb = pr->tb ? b->cols : b->rows;
    if (kb != pr->k || c->rows != pr->m || c->cols != pr->n || d->rows != pr->m || d->cols != pr->n)
        return CUBLAS_STATUS_INVALID_VALUE;
    for (const Layout *l : {a, b, c, d})
        if (l->ld < 1 || (uint64_t)l->ld < l->rows) return CUBLAS_STATUS_INVALID_VALUE;
    if (pr->m == 0 || pr->n == 0 || pr->k == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    for (const Layout *l : {a, b, c, d})
        if (l->rows > INT_MAX || l->cols > INT_MAX || l->ld > INT_MAX) return CUBLAS_STATUS_NOT_SUPPORTED;
    pr->a = a, pr->b = b, pr->c = c, pr->d = d;
    return CUBLAS_STATUS_SUCCESS;
}

/* check_problem on the caller's objects (NULL or destroyed ones: INVALID_VALUE). */
cublasStatus_t check_args(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                          cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, Problem *pr) {
    return check_problem(valid<Desc>(op, kDescMagic), valid<Layout>(a, kLayoutMagic),
                         valid<Layout>(b, kLayoutMagic), valid<Layout>(c, kLayoutMagic),
                         valid<Layout>(d, kLayoutMagic), pr);
}

/* Bytes a column-major layout spans from its first element. */
size_t span_bytes(const Layout *l) {
    return ((size_t)(l->cols - 1) * (size_t)l->ld + (size_t)l->rows) * type_bytes(l->type);
}

/* The operand is device memory covering its layout and as aligned as the
 * algorithm was chosen for; else a line on stderr and false. */
bool operand_ok(const char *what, const void *p, const Layout *l, uint32_t align) {
    if (!is_device(p, span_bytes(l))) {
        fprintf(stderr,
                "cuda-emu cublasLtMatmul: %s %p (%llux%llu, ld %lld) is not inside one device allocation\n", what,
                p, (unsigned long long)l->rows, (unsigned long long)l->cols, (long long)l->ld);
        return false;
    }
    if (align > 1 && (uintptr_t)p % align != 0) {
        fprintf(stderr, "cuda-emu cublasLtMatmul: %s %p is not %u-byte aligned, as the algorithm from "
                        "cublasLtMatmulAlgoGetHeuristic assumes (its preference's MIN_ALIGNMENT)\n",
                what, p, align);
        return false;
    }
    return true;
}

/* A stored rows x cols (ld) as dense f32 [rows, cols] column-major. */
std::vector<float> widen(const void *p, const Layout *l) {
    std::vector<float> out((size_t)l->rows * (size_t)l->cols);
    for (uint64_t j = 0; j < l->cols; j++)
        for (uint64_t i = 0; i < l->rows; i++) {
            size_t at = (size_t)j * (size_t)l->ld + (size_t)i;
            out[(size_t)j * l->rows + i] = l->type == CUDA_R_16BF ? ct_bf16_to_f32(((const uint16_t *)p)[at])
                                                                   : ((const float *)p)[at];
        }
    return out;
}

} // namespace

const char *cublasLtGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtContext *h = new (std::nothrow) cublasLtContext;
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    h->magic = kHandleMagic;
    *lightHandle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
    if (computeType != CUBLAS_COMPUTE_32F || scaleType != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    return create(matmulDesc, Desc{kDescMagic, CUBLAS_OP_N, CUBLAS_OP_N});
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    return destroy<Desc>(matmulDesc, kDescMagic);
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                              cublasLtMatmulDescAttributes_t attr, const void *buf,
                                              size_t sizeInBytes) {
    if (!valid<Desc>(matmulDesc, kDescMagic) || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr != CUBLASLT_MATMUL_DESC_TRANSA && attr != CUBLASLT_MATMUL_DESC_TRANSB)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (sizeInBytes != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    int32_t v;
    memcpy(&v, buf, sizeof v);
    if (v != CUBLAS_OP_N && v != CUBLAS_OP_T) return CUBLAS_STATUS_NOT_SUPPORTED;
    Desc *d = state<Desc>(matmulDesc);
    (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->transa : d->transb) = v;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (type != CUDA_R_32F && type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    return create(matLayout, Layout{kLayoutMagic, type, rows, cols, ld});
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    return destroy<Layout>(matLayout, kLayoutMagic);
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    return create(pref, Pref{kPrefMagic, 0, {256, 256, 256, 256}});
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    return destroy<Pref>(pref, kPrefMagic);
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes) {
    if (!valid<Pref>(pref, kPrefMagic) || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    Pref *p = state<Pref>(pref);
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
        if (sizeInBytes != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p->max_workspace, buf, sizeof(uint64_t));
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
        if (sizeInBytes != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, sizeof(uint32_t));
        return CUBLAS_STATUS_SUCCESS;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount) {
    if (!lightHandle || lightHandle->magic != kHandleMagic) return CUBLAS_STATUS_NOT_INITIALIZED;
    const Pref *pref = valid<Pref>(preference, kPrefMagic);
    if (!pref || requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount)
        return CUBLAS_STATUS_INVALID_VALUE;
    Problem pr;
    cublasStatus_t st = check_args(operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &pr);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    cublasLtMatmulHeuristicResult_t *r = &heuristicResultsArray[0];
    memset(r, 0, sizeof *r);
    Algo algo = {kAlgoMagic, {pref->align[0], pref->align[1], pref->align[2], pref->align[3]}};
    memcpy(r->algo.data, &algo, sizeof algo);
    r->workspaceSize = 0;
    r->state = CUBLAS_STATUS_SUCCESS;
    r->wavesCount = 1.0f;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                              cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                              cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream) {
    (void)stream; /* kernels run synchronously in the emulator */
    if (!lightHandle || lightHandle->magic != kHandleMagic) return CUBLAS_STATUS_NOT_INITIALIZED;
    Problem pr;
    cublasStatus_t st = check_args(computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &pr);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (!alpha || !beta || !A || !B || !D) return CUBLAS_STATUS_INVALID_VALUE;
    float fa, fb;
    memcpy(&fa, alpha, sizeof fa);
    memcpy(&fb, beta, sizeof fb);
    uint32_t align[4] = {1, 1, 1, 1}; /* without an algorithm the library picks one for the pointers */
    if (algo) {
        Algo al;
        memcpy(&al, algo->data, sizeof al);
        if (al.magic != kAlgoMagic) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(align, al.align, sizeof align);
    }
    if (workspaceSizeInBytes > 0 && !is_device(workspace, workspaceSizeInBytes)) {
        fprintf(stderr,
                "cuda-emu cublasLtMatmul: workspace %p (%zu bytes) is not inside one device allocation\n", workspace,
                workspaceSizeInBytes);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (!operand_ok("A", A, pr.a, align[0]) || !operand_ok("B", B, pr.b, align[1]) ||
        (fb != 0.0f && !operand_ok("C", C, pr.c, align[2])) || !operand_ok("D", D, pr.d, align[3]))
        return CUBLAS_STATUS_INVALID_VALUE;

    int m = (int)pr.m, n = (int)pr.n, k = (int)pr.k;
    std::vector<float> abuf, bbuf;
    const float *af = (const float *)A, *bf = (const float *)B;
    int lda = (int)pr.a->ld, ldb = (int)pr.b->ld;
    if (pr.a->type == CUDA_R_16BF) {
        abuf = widen(A, pr.a), bbuf = widen(B, pr.b);
        af = abuf.data(), bf = bbuf.data();
        lda = (int)pr.a->rows, ldb = (int)pr.b->rows;
    }
    CBLAS_TRANSPOSE ta = pr.ta ? CblasTrans : CblasNoTrans, tb = pr.tb ? CblasTrans : CblasNoTrans;
    if (pr.d->type == CUDA_R_32F) {
        float *df = (float *)D;
        size_t ldd = (size_t)pr.d->ld, ldc = (size_t)pr.c->ld;
        const float *cf = (const float *)C;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) { /* D starts as C (or 0: C unread) */
                float *dp = &df[(size_t)j * ldd + (size_t)i];
                const float *cp = fb != 0.0f ? &cf[(size_t)j * ldc + (size_t)i] : nullptr;
                if (!cp) *dp = 0.0f;
                else if (cp != dp) *dp = *cp;
            }
        cblas_sgemm(CblasColMajor, ta, tb, m, n, k, fa, af, lda, bf, ldb, fb, df, (int)ldd);
        return CUBLAS_STATUS_SUCCESS;
    }
    /* bf16 D: the fp32 result alpha·sum + beta·C, rounded once */
    std::vector<float> tmp = fb != 0.0f ? widen(C, pr.c) : std::vector<float>((size_t)m * (size_t)n, 0.0f);
    cblas_sgemm(CblasColMajor, ta, tb, m, n, k, fa, af, lda, bf, ldb, fb, tmp.data(), m);
    uint16_t *dh = (uint16_t *)D;
    size_t ldd = (size_t)pr.d->ld;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
            dh[(size_t)j * ldd + (size_t)i] = ct_f32_to_bf16(tmp[(size_t)j * (size_t)m + (size_t)i]);
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace ct_emu
