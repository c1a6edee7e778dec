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

/* What decides a matmul's descriptors and algorithm: the shapes, strides,
 * types and the operands' alignments (alpha, beta and the pointers
 * themselves do not). */
struct lt_key {
    bool tp, tq;
    uint64_t m, n, k;
    int64_t ldp, ldq, ldc;
    cudaDataType_t ab_type, c_type;
    uint32_t al_p, al_q, al_c;
};

static bool same_key(const lt_key &x, const lt_key &y) {
    return x.tp == y.tp && x.tq == y.tq && x.m == y.m && x.n == y.n && x.k == y.k && x.ldp == y.ldp &&
           x.ldq == y.ldq && x.ldc == y.ldc && x.ab_type == y.ab_type && x.c_type == y.c_type &&
           x.al_p == y.al_p && x.al_q == y.al_q && x.al_c == y.al_c;
}

/* Descriptors and the heuristic's algorithm of the shapes seen so far: a
 * training step repeats the same few dozen GEMMs, and the heuristic query is
 * the costly part of a call on the host. Kept for the process (never freed,
 * like the handle); when full, further shapes run uncached. */
struct lt_plan {
    lt_key key;
    lt_descs d;
    cublasLtMatmulAlgo_t algo;
};
static const int kMaxPlans = 256;
static lt_plan g_plans[kMaxPlans];
static int g_n_plans = 0;

/* Makes d's descriptors (not the preference: the caller's) for key and
 * queries the algorithm into *algo. */
static int make_plan(lt_descs *d, const lt_key &key, cublasLtMatmulAlgo_t *algo) {
    CT_CUBLAS_TRY(cublasLtMatmulDescCreate, &d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    int32_t opp = key.tp ? CUBLAS_OP_T : CUBLAS_OP_N, opq = key.tq ? CUBLAS_OP_T : CUBLAS_OP_N;
    CT_CUBLAS_TRY(cublasLtMatmulDescSetAttribute, d->op, CUBLASLT_MATMUL_DESC_TRANSA, &opp, sizeof opp);
    CT_CUBLAS_TRY(cublasLtMatmulDescSetAttribute, d->op, CUBLASLT_MATMUL_DESC_TRANSB, &opq, sizeof opq);
    /* stored shapes (rows x cols, column-major): P is [m, k] or, transposed, [k, m] */
    CT_CUBLAS_TRY(cublasLtMatrixLayoutCreate, &d->a, key.ab_type, key.tp ? key.k : key.m, key.tp ? key.m : key.k,
                  key.ldp);
    CT_CUBLAS_TRY(cublasLtMatrixLayoutCreate, &d->b, key.ab_type, key.tq ? key.n : key.k, key.tq ? key.k : key.n,
                  key.ldq);
    CT_CUBLAS_TRY(cublasLtMatrixLayoutCreate, &d->c, key.c_type, key.m, key.n, key.ldc);

    CT_CUBLAS_TRY(cublasLtMatmulPreferenceCreate, &d->pref);
    uint64_t ws = kWorkspaceBytes;
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                  &ws, sizeof ws);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                  &key.al_p, sizeof key.al_p);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                  &key.al_q, sizeof key.al_q);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                  &key.al_c, sizeof key.al_c);
    CT_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute, d->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                  &key.al_c, sizeof key.al_c);

    cublasLtMatmulHeuristicResult_t heur;
    memset(&heur, 0, sizeof heur);
    int found = 0;
    CT_CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic, g_lt, d->op, d->a, d->b, d->c, d->c, d->pref, 1, &heur,
                  &found);
    if (found < 1)
        return ct_errorf(CT_ERUNTIME,
                         "cublasLtMatmulAlgoGetHeuristic: no algorithm for m=%llu n=%llu k=%llu "
                         "(column-major, op %c%c, types %d/%d)",
                         (unsigned long long)key.m, (unsigned long long)key.n, (unsigned long long)key.k,
                         key.tp ? 'T' : 'N', key.tq ? 'T' : 'N', (int)key.ab_type, (int)key.c_type);
    *algo = heur.algo;
    return CT_OK;
}

/* One matmul: the cached plan of its key, or a new one (kept when there is
 * room; otherwise its descriptors are left in *d for the caller to free). */
static int run_matmul(lt_descs *d, const lt_problem *pr) {
    lt_key key = {pr->tp, pr->tq, pr->m, pr->n, pr->k, pr->ldp, pr->ldq, pr->ldc, pr->ab_type, pr->c_type,
                  ptr_alignment(pr->p), ptr_alignment(pr->q), ptr_alignment(pr->c)};
    const lt_descs *use = nullptr;
    const cublasLtMatmulAlgo_t *algo = nullptr;
    for (int i = 0; i < g_n_plans && !use; i++)
        if (same_key(g_plans[i].key, key)) use = &g_plans[i].d, algo = &g_plans[i].algo;
    cublasLtMatmulAlgo_t fresh;
    if (!use) {
        CT_TRY(make_plan(d, key, &fresh));
        use = d, algo = &fresh;
        if (g_n_plans < kMaxPlans) { /* the plan moves into the cache; the preference is not needed again */
            lt_plan *p = &g_plans[g_n_plans++];
            p->key = key, p->d = *d, p->algo = fresh;
            p->d.pref = nullptr;
            use = &p->d, algo = &p->algo;
            d->op = nullptr, d->a = d->b = d->c = nullptr; /* d keeps only the preference */
        }
    }
    CT_CUBLAS_TRY(cublasLtMatmul, g_lt, use->op, &pr->alpha, pr->p, use->a, pr->q, use->b, &pr->beta, pr->c,
                  use->c, pr->c, use->c, algo, g_workspace, kWorkspaceBytes, ct_cuda_stream());
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
