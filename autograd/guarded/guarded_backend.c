/* The guarded test backend: the CPU kernels, but every byte of its memory is
 * PROT_NONE except while one of its entries runs. Code above the backend that
 * reads or writes a tensor's memory directly (instead of through upload /
 * download) crashes with SIGSEGV at that line, in the tests, on any machine:
 * the proof that a layer would work on a device whose memory the host cannot
 * touch. Results equal the CPU backend's bit for bit (same kernels, same
 * order).
 *
 * Memory: each allocation is its own anonymous mapping (page-rounded), kept in
 * a registry; entering a backend entry unprotects every live mapping, leaving
 * it protects them again (nesting counted). A kernel's own scratch blocks come
 * from the same allocator. Single host thread: the registry is not locked
 * (kernels parallelise inside an entry, never across one).
 *
 * Built only with CT_TEST_BACKENDS (test builds); otherwise
 * ct_guarded_backend() says so. */
#include "../backend.h"
#include "../ct_error.h"

#ifdef CT_TEST_BACKENDS
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../cpu/cpu_kernels.h"

typedef struct {
    void *p;
    size_t len; /* page-rounded */
} mapping;

static mapping *g_maps; /* [g_n] live mappings (host heap) */
static size_t g_n, g_cap;
static int g_depth; /* > 0 while an entry runs */

static void protect_all(int prot) {
    for (size_t i = 0; i < g_n; i++) mprotect(g_maps[i].p, g_maps[i].len, prot);
}

static void enter(void) {
    if (g_depth++ == 0) protect_all(PROT_READ | PROT_WRITE);
}

static void leave(void) {
    if (--g_depth == 0) protect_all(PROT_NONE);
}

static void *guarded_alloc(size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (n ? n + page - 1 : page) / page * page;
    if (g_n == g_cap) {
        size_t cap = g_cap ? 2 * g_cap : 256;
        mapping *m = realloc(g_maps, cap * sizeof *m);
        if (!m) return NULL;
        g_maps = m;
        g_cap = cap;
    }
    void *p = mmap(NULL, len, g_depth ? PROT_READ | PROT_WRITE : PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    g_maps[g_n++] = (mapping){p, len};
    return p;
}

static void guarded_free(void *p) {
    if (!p) return;
    for (size_t i = 0; i < g_n; i++)
        if (g_maps[i].p == p) {
            munmap(p, g_maps[i].len);
            g_maps[i] = g_maps[--g_n];
            return;
        }
}

/* Runs `call` (an int expression) with the memory open. */
#define GUARDED(call)       \
    do {                    \
        enter();            \
        int rc_ = (call);   \
        leave();            \
        return rc_;         \
    } while (0)

static int g_zero(void *p, size_t n) { GUARDED((memset(p, 0, n), CT_OK)); }
static int g_copy(void *d, const void *s, size_t n) { GUARDED((memmove(d, s, n), CT_OK)); }
static int g_sync(void) { return CT_OK; }

static int g_embedding_fwd(const ct_tensor *table, const ct_tensor *ids, ct_tensor *y) {
    GUARDED(ct_cpu_embedding_fwd(table, ids, y));
}
static int g_embedding_bwd(const ct_tensor *ids, const ct_tensor *dy, ct_tensor *dtable) {
    GUARDED(ct_cpu_embedding_bwd(ids, dy, dtable));
}
static int g_rmsnorm_fwd(const ct_tensor *x, const ct_tensor *w, float eps, ct_tensor *y, ct_tensor *rstd) {
    GUARDED(ct_cpu_rmsnorm_fwd(x, w, eps, y, rstd));
}
static int g_rmsnorm_bwd(const ct_tensor *x, const ct_tensor *w, const ct_tensor *rstd, const ct_tensor *dy,
                         ct_tensor *dx, ct_tensor *dw) {
    GUARDED(ct_cpu_rmsnorm_bwd(x, w, rstd, dy, dx, dw));
}
static int g_add_rmsnorm_fwd(const ct_tensor *a, const ct_tensor *b, const ct_tensor *w, float eps,
                             ct_tensor *sum, ct_tensor *y, ct_tensor *rstd) {
    GUARDED(ct_cpu_add_rmsnorm_fwd(a, b, w, eps, sum, y, rstd));
}
static int g_rope_fwd(const ct_tensor *x, const ct_tensor *pos, const ct_rope_params *p, ct_tensor *y) {
    GUARDED(ct_cpu_rope_fwd(x, pos, p, y));
}
static int g_rope_bwd(const ct_tensor *dy, const ct_tensor *pos, const ct_rope_params *p, ct_tensor *dx) {
    GUARDED(ct_cpu_rope_bwd(dy, pos, p, dx));
}
static int g_attention_fwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                           ct_tensor *out, ct_tensor *lse, ct_arena *scratch) {
    GUARDED(ct_cpu_attention_fwd(qkv, runs, p, out, lse, scratch));
}
static int g_attention_bwd(const ct_tensor *qkv, const ct_tensor *runs, const ct_attn_params *p,
                           const ct_tensor *out, const ct_tensor *lse, const ct_tensor *dout,
                           ct_tensor *dqkv, ct_arena *scratch) {
    GUARDED(ct_cpu_attention_bwd(qkv, runs, p, out, lse, dout, dqkv, scratch));
}
static int g_attention_decode(const ct_tensor *qkv, int64_t p0, const ct_attn_params *p,
                              ct_tensor *k_cache, ct_tensor *v_cache, ct_tensor *out, ct_arena *scratch) {
    GUARDED(ct_cpu_attention_decode(qkv, p0, p, k_cache, v_cache, out, scratch));
}
static int g_swiglu_fwd(const ct_tensor *gate, const ct_tensor *up, ct_tensor *y) {
    GUARDED(ct_cpu_swiglu_fwd(gate, up, y));
}
static int g_swiglu_bwd(const ct_tensor *gate, const ct_tensor *up, const ct_tensor *dy, ct_tensor *dgate,
                        ct_tensor *dup) {
    GUARDED(ct_cpu_swiglu_bwd(gate, up, dy, dgate, dup));
}
static int g_axpy(float alpha, const ct_tensor *x, ct_tensor *y) { GUARDED(ct_cpu_axpy(alpha, x, y)); }
static int g_add_fwd(const ct_tensor *a, const ct_tensor *b, ct_tensor *y) {
    GUARDED(ct_cpu_add_fwd(a, b, y));
}
static int g_lora_linear_fwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, ct_tensor *y,
                             ct_tensor *u, ct_arena *scratch) {
    GUARDED(ct_cpu_lora_linear_fwd(x, lin, seed, y, u, scratch));
}
static int g_lora_linear_bwd(const ct_tensor *x, const ct_linear *lin, uint64_t seed, const ct_tensor *u,
                             const ct_tensor *dy, ct_tensor *dx, ct_tensor *da, ct_tensor *db,
                             ct_arena *scratch) {
    GUARDED(ct_cpu_lora_linear_bwd(x, lin, seed, u, dy, dx, da, db, scratch));
}
static int g_linear_xent_fwd(const ct_tensor *x, const ct_linear *head, const ct_tensor *labels,
                             float grad_scale, double *nll_sum, int64_t *n_trained, ct_tensor *dx,
                             ct_tensor *da, ct_tensor *db, ct_arena *scratch) {
    GUARDED(ct_cpu_linear_xent_fwd(x, head, labels, grad_scale, nll_sum, n_trained, dx, da, db, scratch));
}
static int g_adamw_update(const ct_adamw_scalars *s, const ct_adamw_slot *slots, size_t n) {
    GUARDED(ct_cpu_adamw_update(s, slots, n));
}
static int g_sum_squares(const float *const *xs, const int64_t *ns, size_t n, double *sums) {
    GUARDED(ct_cpu_sum_squares(xs, ns, n, sums));
}
static int g_scale(float c, float *const *xs, const int64_t *ns, size_t n) {
    GUARDED(ct_cpu_scale(c, xs, ns, n));
}

static const ct_backend k_guarded = {
    .name = "guarded",
    .device = CT_GUARDED,
    .act_dtype = CT_F32,
    .compute_dtypes = CT_CPU_COMPUTE_DTYPES,
    .weight_dtypes = CT_CPU_WEIGHT_DTYPES,
    .mem = {guarded_alloc, guarded_free},
    .zero = g_zero,
    .copy = g_copy,
    .upload = g_copy,
    .download = g_copy,
    .sync = g_sync,
    .embedding_fwd = g_embedding_fwd,
    .embedding_bwd = g_embedding_bwd,
    .rmsnorm_fwd = g_rmsnorm_fwd,
    .rmsnorm_bwd = g_rmsnorm_bwd,
    .add_rmsnorm_fwd = g_add_rmsnorm_fwd,
    .rope_fwd = g_rope_fwd,
    .rope_bwd = g_rope_bwd,
    .attention_fwd = g_attention_fwd,
    .attention_bwd = g_attention_bwd,
    .attention_decode = g_attention_decode,
    .swiglu_fwd = g_swiglu_fwd,
    .swiglu_bwd = g_swiglu_bwd,
    .axpy = g_axpy,
    .add_fwd = g_add_fwd,
    .lora_linear_fwd = g_lora_linear_fwd,
    .lora_linear_bwd = g_lora_linear_bwd,
    .linear_xent_fwd = g_linear_xent_fwd,
    .adamw_update = g_adamw_update,
    .sum_squares = g_sum_squares,
    .scale = g_scale,
};

const ct_backend *ct_guarded_backend(void) { return &k_guarded; }

#else

const ct_backend *ct_guarded_backend(void) {
    ct_errorf(CT_ERUNTIME, "the guarded test backend is built only with -DCT_TEST_BACKENDS=ON");
    return NULL;
}

#endif
