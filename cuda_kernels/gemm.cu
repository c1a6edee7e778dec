/* ct_cuda_gemm (contract in gemm.h): row-major GEMMs on cuBLASLt.
 *
 * cuBLASLt is column-major. A row-major C [M, N] (ldc) is, read column-major,
 * Cᵀ [N, M] with the same ld, and Cᵀ = op(B)ᵀ · op(A)ᵀ: cuBLASLt's first
 * operand is our B and its second our A, each with the transpose flag it has
 * here. Our B row-major [K, N] (ldb) is column-major [N, K] = op(B)ᵀ already
 * (OP_N); stored [N, K] (trans_b) it reads as [K, N] and takes OP_T. Likewise
 * A: [M, K] reads as [K, M] (OP_N), stored [K, M] (trans_a) as [M, K] (OP_T).
 *
 * One handle and one 32 MiB workspace for the process (created on first use).
 * The matmul descriptor, the layouts, the preference and the heuristic query
 * are made per call (microseconds each, the heuristic the most: to cache per
 * shape and alignment once a profile shows them). The heuristic is told each pointer's actual alignment (its default
 * is 256 bytes), so column slices such as G[:, n0:] (lora_linear's tiles) get
 * an algorithm that can read them. Every cuBLASLt call goes through
 * CT_CUBLAS_TRY (cublas_check.h). */
#include "cuda_common.cuh"
#include "cublas_check.h"
#include "gemm.h"

static const size_t kWorkspaceBytes = (size_t)32 << 20;

static cublasLtHandle_t g_lt = nullptr; /* with g_workspace: set together, never freed */
static void *g_workspace = nullptr;

static int lt_init(void) {
    if (g_lt) return CT_OK;
    if (!g_workspace && !(g_workspace = ct_cuda_mem_alloc(kWorkspaceBytes)))
        return ct_errorf(CT_ERUNTIME, "cuBLASLt workspace: out of device memory for %zu MiB", kWorkspaceBytes >> 20);
    CT_CUBLAS_TRY(cublasLtCreate, &g_lt);
    return CT_OK;
}

/* The largest power of two (at most 256) dividing the address. */
static uint32_t ptr_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 1;
    while (al < 256 && (a & (2 * (uintptr_t)al - 1)) == 0) al *= 2;
    return al;
}

/* The per-call descriptors; released by descs_destroy whatever happened. */
struct lt_descs {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr; /* cuBLASLt's A, B, C (= D) */
    cublasLtMatmulPreference_t pref = nullptr;
};

static int destroy_layout(cublasLtMatrixLayout_t l) {
    if (l) CT_CUBLAS_TRY(cublasLtMatrixLayoutDestroy, l);
    return CT_OK;
}

static int destroy_pref(cublasLtMatmulPreference_t p) {
    if (p) CT_CUBLAS_TRY(cublasLtMatmulPreferenceDestroy, p);
    return CT_OK;
}

static int destroy_op(cublasLtMatmulDesc_t o) {
    if (o) CT_CUBLAS_TRY(cublasLtMatmulDescDestroy, o);
    return CT_OK;
}

/* Destroys every descriptor made; returns the first failure. */
static int descs_destroy(lt_descs *d) {
    int rcs[5] = {destroy_pref(d->pref), destroy_layout(d->a), destroy_layout(d->b),
                  destroy_layout(d->c), destroy_op(d->op)};
    for (int rc : rcs)
        if (rc) return rc;
    return CT_OK;
}

/* The column-major problem: D [m, n] = alpha·op(P)·op(Q) + beta·C, P and Q
 * the stored operands (cuBLASLt's A and B). */
struct lt_problem {
    bool tp, tq;
    uint64_t m, n, k;
    const void *p, *q;
    int64_t ldp, ldq;
    cudaDataType_t ab_type;
    void *c;
    int64_t ldc;
    cudaDataType_t c_type;
    float alpha, beta;
};

static int run_matmul(lt_descs *d, const lt_problem *pr) {
    CT_CUBLAS_TRY(cublasLtMatmulDescCreate, &d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    int32_t opp = pr->tp ? CUBLAS_OP_T : CUBLAS_OP_N, opq = pr->tq ? CUBLAS_OP_T : CUBLAS_OP_N;
    CT_CUBLAS_TRY(cublasLtMatmulDescSetAttribute, d->op, CUBLASLT_MATMUL_DESC_TRANSA, &opp, sizeof opp);
    CT_CUBLAS_TRY(cublasLtMatmulDescSetAttribute, d->op, CUBLASLT_MATMUL_DESC_TRANSB, &opq, sizeof opq);
    /* stored shapes (rows x cols, column-major): P is [m, k] or, transposed, [k, m] */
    CT_CUBLAS_TRY(cublasLtMatrixLayoutCreate, &d->a, pr->ab_type, pr->tp ? pr->k : pr->m,
                  pr->tp ? pr->m : pr->k, pr->ldp);
    CT_CUBLAS_TRY(cublasLtMatrixLayoutCreate, &d->b, pr->ab_type, pr->tq ? pr->n : pr->k,
                  pr->tq ? pr->k : pr->n, pr->ldq);
    CT_CUBLAS_TRY(cublasLtMatrixLayoutCreate, &d->c, pr->c_type, pr->m, pr->n, pr->ldc);

    CT_CUBLAS_TRY(cublasLtMatmulPreferenceCreate, &d->pref);
    uint64_t ws = kWorkspaceBytes;
    uint32_t al_a = ptr_alignment(pr->p), al_b = ptr_alignment(pr->q), al_c = ptr_alignment(pr->c);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                  &ws, sizeof ws);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                  &al_a, sizeof al_a);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                  &al_b, sizeof al_b);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                  &al_c, sizeof al_c);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                  &al_c, sizeof al_c);

    cublasLtMatmulHeuristicResult_t heur;
    memset(&heur, 0, sizeof heur);
    int found = 0;
    CT_CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic, g_lt, d->op, d->a, d->b, d->c, d->c, d->pref, 1, &heur,
                  &found);
    if (found < 1)
        return ct_errorf(CT_ERUNTIME,
                         "cublasLtMatmulAlgoGetHeuristic: no algorithm for m=%llu n=%llu k=%llu "
                         "(column-major, op %c%c, types %d/%d)",
                         (unsigned long long)pr->m, (unsigned long long)pr->n,
                         (unsigned long long)pr->k, pr->tp ? 'T' : 'N', pr->tq ? 'T' : 'N',
                         (int)pr->ab_type, (int)pr->c_type);
    CT_CUBLAS_TRY(cublasLtMatmul, g_lt, d->op, &pr->alpha, pr->p, d->a, pr->q, d->b, &pr->beta, pr->c,
                  d->c, pr->c, d->c, &heur.algo, g_workspace, kWorkspaceBytes, ct_cuda_stream());
    return CT_OK;
}

/* C [M, N] (ldc) = beta·C: the K = 0 product (cuBLASLt wants k >= 1). */
static __global__ void scale_rows_kernel(void *c, int64_t ldc, int64_t M, int64_t N, float beta,
                                         int bf16) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= M * N) return;
    int64_t at = (i / N) * ldc + i % N;
    if (bf16) {
        uint16_t *cb = (uint16_t *)c;
        cb[at] = beta == 0.0f ? (uint16_t)0 : ct_f32_to_bf16(beta * ct_bf16_to_f32(cb[at]));
    } else {
        float *cf = (float *)c;
        cf[at] = beta == 0.0f ? 0.0f : beta * cf[at];
    }
}

int ct_cuda_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void *A, int64_t lda, const void *B, int64_t ldb, cudaDataType_t ab_type,
                 float beta, void *C, int64_t ldc, cudaDataType_t c_type) {
    if (M < 0 || N < 0 || K < 0)
        return ct_errorf(CT_EINPUT, "ct_cuda_gemm: negative size M=%lld N=%lld K=%lld", (long long)M,
                         (long long)N, (long long)K);
    if (ab_type != CUDA_R_32F && ab_type != CUDA_R_16BF)
        return ct_errorf(CT_EINPUT, "ct_cuda_gemm: operand type %d: only f32 and bf16", (int)ab_type);
    if (c_type != CUDA_R_32F && !(c_type == CUDA_R_16BF && ab_type == CUDA_R_16BF))
        return ct_errorf(CT_EINPUT, "ct_cuda_gemm: output type %d with operand type %d", (int)c_type,
                         (int)ab_type);
    int64_t a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < (N > 1 ? N : 1))
        return ct_errorf(CT_EINPUT,
                         "ct_cuda_gemm: row strides lda=%lld ldb=%lld ldc=%lld narrower than the rows "
                         "(%lld, %lld, %lld)",
                         (long long)lda, (long long)ldb, (long long)ldc, (long long)a_cols,
                         (long long)b_cols, (long long)N);
    if (M == 0 || N == 0) return CT_OK;
    if (K == 0) {
        CT_LAUNCH(scale_rows_kernel, blocks_for(M * N), kThreads, 0, C, ldc, M, N, beta,
                  (int)(c_type == CUDA_R_16BF));
        return CT_OK;
    }
    CT_TRY(lt_init());
    lt_problem pr;
    pr.tp = trans_b, pr.tq = trans_a;
    pr.m = (uint64_t)N, pr.n = (uint64_t)M, pr.k = (uint64_t)K;
    pr.p = B, pr.ldp = ldb, pr.q = A, pr.ldq = lda;
    pr.ab_type = ab_type;
    pr.c = C, pr.ldc = ldc, pr.c_type = c_type;
    pr.alpha = alpha, pr.beta = beta;
    lt_descs d;
    int rc = run_matmul(&d, &pr);
    int rd = descs_destroy(&d);
    return rc ? rc : rd;
}
