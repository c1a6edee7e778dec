/* The small ops (embedding, rmsnorm, swiglu, add, add_rmsnorm) against naive double
 * references and central finite differences; the tape's bookkeeping (which
 * tensors get grads, no_grad, memory reuse across steps, checkpoints); the
 * arena; and the f32/bf16/f16 conversions against an independent decoder and
 * a brute-force round-to-nearest-even encoder.
 *
 * Every gradient check uses loss = sum(r ⊙ y) with a fixed random r (the probe
 * loss of ref_internlm2.h), so dL/dy = r reaches every element. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_inline.h"
#include "autograd/ops.h"
#include "ref_internlm2.h"
#include "testutil.h"

static const ct_backend *be;

/* ---------------------------------------------------------------- helpers */

/* A heap tensor (f32/bf16/f16 filled with N(0, scale²) rounded to the dtype,
 * i32 left zero); trainable ones carry a zeroed f32 grad. */
static ct_tensor *leaf(ct_dtype dt, int ndim, const int64_t *shape, bool trainable,
                       ct_test_rng *rng, double scale) {
    ct_tensor *t = ct_test_need(ct_tensor_new(be, dt, ndim, shape, trainable));
    int64_t n = ct_numel(t);
    if (dt == CT_I32) {
        memset(t->data, 0, ct_nbytes(t));
        return t;
    }
    float *tmp = ct_test_need(malloc((size_t)n * sizeof(float)));
    ct_test_fill(rng, tmp, n, scale);
    if (ct_convert(t->data, dt, tmp, CT_F32, n)) ct_test_need(NULL);
    free(tmp);
    return t;
}

static double *to_double(const float *x, int64_t n) {
    double *d = ct_test_need(malloc((size_t)n * sizeof(double)));
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static float *random_floats(ct_test_rng *rng, int64_t n, double scale) {
    float *r = ct_test_need(malloc((size_t)n * sizeof(float)));
    ct_test_fill(rng, r, n, scale);
    return r;
}

/* ct_check_close plus a line with the measured worst error (for the report). */
static void check_grad(const char *what, const float *got, const double *want, int64_t n,
                       double atol, double rtol) {
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        if (d > worst) worst = d;
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    }
    printf("  %-34s max |err| %.3g (max |want| %.3g)\n", what, worst, scale);
    ct_check_close(what, got, want, n, atol, rtol);
}

/* Value of a code of a binary float format with eb exponent and mb mantissa
 * bits, decoded from the definition (independent of the library). */
static double ref_decode(uint32_t code, int eb, int mb) {
    uint32_t sign = (code >> (eb + mb)) & 1u;
    uint32_t ex = (code >> mb) & ((1u << eb) - 1u), man = code & ((1u << mb) - 1u);
    int bias = (1 << (eb - 1)) - 1;
    double v;
    if (ex == (1u << eb) - 1u) v = man ? NAN : INFINITY;
    else if (ex == 0) v = ldexp((double)man, 1 - bias - mb);
    else v = ldexp((double)(man + (1u << mb)), (int)ex - bias - mb);
    return sign ? -v : v;
}

/* The format's code nearest to v, ties to the even code, by binary search over
 * the ordered non-negative codes; the infinity code stands for the value one
 * ulp past the largest finite (2^(emax+1)), so overflow rounds as IEEE says.
 * NaN gives UINT32_MAX (the caller checks "is a NaN"). */
static uint32_t ref_encode(double v, int eb, int mb) {
    if (isnan(v)) return UINT32_MAX;
    uint32_t inf_code = ((1u << eb) - 1u) << mb;
    uint32_t s = signbit(v) ? 1u << (eb + mb) : 0u;
    int bias = (1 << (eb - 1)) - 1;
    double a = fabs(v), top = ldexp(1.0, bias + 1);
    if (a >= top) return s | inf_code;
    uint32_t lo = 0, hi = inf_code; /* value(lo) <= a < value(hi) */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ref_decode(mid, eb, mb) <= a) lo = mid;
        else hi = mid;
    }
    double vl = ref_decode(lo, eb, mb), vh = hi == inf_code ? top : ref_decode(hi, eb, mb);
    double dl = a - vl, dh = vh - a; /* exact: both ends and a are short binary fractions */
    uint32_t c = dl < dh ? lo : dh < dl ? hi : ((lo & 1u) ? hi : lo);
    return s | c;
}

/* ------------------------------------------------------------ conversions */

/* Every code of a 16-bit format decodes to its exact value; every code
 * round-trips; every code converts to the other 16-bit format correctly. */
static void test_convert_exhaustive(ct_dtype dt, int eb, int mb, ct_dtype other, int oeb, int omb) {
    const int64_t n = 65536;
    uint16_t *codes = ct_test_need(malloc(n * sizeof(uint16_t))), *back = ct_test_need(malloc(n * sizeof(uint16_t)));
    uint16_t *oth = ct_test_need(malloc(n * sizeof(uint16_t)));
    float *f = ct_test_need(malloc(n * sizeof(float)));
    for (int64_t i = 0; i < n; i++) codes[i] = (uint16_t)i;
    CHECK_OK(ct_convert(f, CT_F32, codes, dt, n));
    CHECK_OK(ct_convert(back, dt, f, CT_F32, n));
    CHECK_OK(ct_convert(oth, other, codes, dt, n));
    int64_t bad_dec = 0, bad_rt = 0, bad_oth = 0;
    for (int64_t i = 0; i < n; i++) {
        double want = ref_decode((uint32_t)i, eb, mb);
        bool isn = isnan(want);
        if (isn ? !isnan(f[i]) : ((double)f[i] != want || !signbit(f[i]) != !signbit(want))) bad_dec++;
        if (isn ? !isnan(ref_decode(back[i], eb, mb)) : back[i] != codes[i]) bad_rt++;
        uint32_t wo = ref_encode(want, oeb, omb);
        if (wo == UINT32_MAX ? !isnan(ref_decode(oth[i], oeb, omb)) : oth[i] != wo) bad_oth++;
    }
    CHECK(bad_dec == 0, "%s -> f32: %lld of 65536 codes decode wrong", ct_dtype_name(dt), (long long)bad_dec);
    CHECK(bad_rt == 0, "%s -> f32 -> %s: %lld codes do not round-trip", ct_dtype_name(dt),
          ct_dtype_name(dt), (long long)bad_rt);
    CHECK(bad_oth == 0, "%s -> %s: %lld codes round wrong", ct_dtype_name(dt), ct_dtype_name(other),
          (long long)bad_oth);
    free(codes), free(back), free(oth), free(f);
}

/* f32 -> 16-bit: exact codes, exact midpoints (ties), one f32 ulp either side of
 * every midpoint, and random f32 bit patterns (NaN, inf, subnormals included). */
static void test_convert_rounding(ct_dtype dt, int eb, int mb, ct_test_rng *rng) {
    uint32_t inf_code = ((1u << eb) - 1u) << mb;
    int bias = (1 << (eb - 1)) - 1;
    int64_t cap = (int64_t)inf_code * 8 + 200000, n = 0;
    float *v = ct_test_need(malloc((size_t)cap * sizeof(float)));
    for (uint32_t c = 0; c < inf_code; c++) {
        double lo = ref_decode(c, eb, mb);
        double hi = c + 1 == inf_code ? ldexp(1.0, bias + 1) : ref_decode(c + 1, eb, mb);
        double mid = 0.5 * (lo + hi);
        if ((double)(float)mid != mid) continue; /* not an f32: cannot be an input */
        float m = (float)mid;
        float cand[4] = {(float)lo, m, nextafterf(m, 0.0f), nextafterf(m, INFINITY)};
        for (int k = 0; k < 4; k++) {
            v[n++] = cand[k];
            v[n++] = -cand[k];
        }
    }
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)(ct_test_uniform(rng) * 4294967296.0);
        memcpy(&v[n++], &u, 4);
    }
    uint16_t *got = ct_test_need(malloc((size_t)n * sizeof(uint16_t)));
    CHECK_OK(ct_convert(got, dt, v, CT_F32, n));
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        uint32_t want = ref_encode((double)v[i], eb, mb);
        bool ok = want == UINT32_MAX ? isnan(ref_decode(got[i], eb, mb)) : got[i] == want;
        if (!ok && bad++ == 0) first = i;
    }
    CHECK(bad == 0, "f32 -> %s: %lld of %lld values round wrong; first %.9g -> 0x%04x, want 0x%04x",
          ct_dtype_name(dt), (long long)bad, (long long)n, first >= 0 ? v[first] : 0.0,
          first >= 0 ? got[first] : 0, first >= 0 ? ref_encode(v[first], eb, mb) : 0);
    printf("  f32 -> %s: %lld values (ties, neighbours, random bits) checked\n", ct_dtype_name(dt),
           (long long)n);
    free(v), free(got);
}

/* A few named IEEE facts, as readable spot checks. */
static void test_convert_named(void) {
    struct {
        float x;
        ct_dtype dt;
        uint16_t want;
        const char *why;
    } k[] = {
        {1.0f + 0x1p-11f, CT_F16, 0x3c00, "f16 tie 1+2^-11 -> even 1.0"},
        {1.0f + 3 * 0x1p-11f, CT_F16, 0x3c02, "f16 tie 1+3·2^-11 -> even 1+2^-9"},
        {65504.0f, CT_F16, 0x7bff, "f16 max"},
        {65519.0f, CT_F16, 0x7bff, "f16 below the overflow tie"},
        {65520.0f, CT_F16, 0x7c00, "f16 overflow tie -> inf"},
        {0x1p-24f, CT_F16, 0x0001, "f16 smallest subnormal"},
        {0x1p-25f, CT_F16, 0x0000, "f16 half the smallest subnormal: tie -> 0"},
        {0x1.8p-25f, CT_F16, 0x0001, "f16 above that tie -> smallest subnormal"},
        {-0.0f, CT_F16, 0x8000, "f16 -0"},
        {-INFINITY, CT_F16, 0xfc00, "f16 -inf"},
        {1.0f + 0x1p-8f, CT_BF16, 0x3f80, "bf16 tie 1+2^-8 -> even 1.0"},
        {1.0f + 3 * 0x1p-8f, CT_BF16, 0x3f82, "bf16 tie 1+3·2^-8 -> even"},
        {0x1p-149f, CT_BF16, 0x0000, "bf16 f32 min subnormal -> 0"},
        {0x1p-133f, CT_BF16, 0x0001, "bf16 smallest subnormal"},
        {INFINITY, CT_BF16, 0x7f80, "bf16 inf"},
        {3.4028235e38f, CT_BF16, 0x7f80, "bf16 f32 max rounds to inf"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        uint16_t got = 0;
        CHECK_OK(ct_convert(&got, k[i].dt, &k[i].x, CT_F32, 1));
        CHECK(got == k[i].want, "%s: got 0x%04x want 0x%04x", k[i].why, got, k[i].want);
    }
    float nan = NAN;
    uint16_t h = 0, b = 0;
    CHECK_OK(ct_convert(&h, CT_F16, &nan, CT_F32, 1));
    CHECK_OK(ct_convert(&b, CT_BF16, &nan, CT_F32, 1));
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff), "NaN -> f16 0x%04x is not a NaN", h);
    CHECK((b & 0x7f80) == 0x7f80 && (b & 0x7f), "NaN -> bf16 0x%04x is not a NaN", b);
    /* A signalling NaN whose payload sits in the dropped bits must stay NaN. */
    uint32_t snan = 0x7f800001u;
    float fs;
    memcpy(&fs, &snan, 4);
    CHECK_OK(ct_convert(&b, CT_BF16, &fs, CT_F32, 1));
    CHECK((b & 0x7f80) == 0x7f80 && (b & 0x7f), "sNaN 0x7f800001 -> bf16 0x%04x is not a NaN", b);
    /* Unsupported pairs are input errors. */
    int32_t i32 = 0;
    CHECK(ct_convert(&i32, CT_I32, &nan, CT_F32, 1) == CT_EINPUT, "f32 -> i32 should be refused");
}

/* -------------------------------------------------------------- embedding */

typedef struct {
    int V, D, T;
    const int32_t *ids;
    double *table; /* [V, D] */
    const float *r; /* [T, D] */
} emb_ctx;

static double emb_loss(void *p) {
    const emb_ctx *c = p;
    double s = 0;
    for (int t = 0; t < c->T; t++)
        for (int i = 0; i < c->D; i++)
            s += c->r[(size_t)t * c->D + i] * c->table[(size_t)c->ids[t] * c->D + i];
    return s;
}

static void test_embedding(ct_tape *tp, ct_test_rng *rng) {
    printf("embedding\n");
    const int V = 13, D = 7, T = 9;
    const int32_t idv[9] = {3, 0, 12, 3, 7, 3, 1, 12, 5}; /* repeats, both ends of the vocab */
    int64_t tshape[2] = {V, D}, ishape[1] = {T};
    ct_tensor *ids = leaf(CT_I32, 1, ishape, false, rng, 0);
    memcpy(ids->data, idv, sizeof idv);

    /* Frozen tables of each dtype: rows copied exactly (as their f32 value). */
    ct_dtype dts[3] = {CT_F32, CT_BF16, CT_F16};
    for (int k = 0; k < 3; k++) {
        ct_tape_reset(tp);
        ct_tensor *table = leaf(dts[k], 2, tshape, false, rng, 1.0);
        ct_tensor *y = ct_embedding(tp, table, ids);
        CHECK_PTR(y);
        if (!y) continue;
        int64_t bad = 0;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < D; i++) {
                size_t src = (size_t)idv[t] * D + i;
                double want = dts[k] == CT_F32 ? ((float *)table->data)[src]
                            : dts[k] == CT_BF16 ? ref_decode(((uint16_t *)table->data)[src], 8, 7)
                                                : ref_decode(((uint16_t *)table->data)[src], 5, 10);
                if (((float *)y->data)[(size_t)t * D + i] != want) bad++;
            }
        CHECK(bad == 0, "embedding %s: %lld values differ from the table rows", ct_dtype_name(dts[k]),
              (long long)bad);
        CHECK(!y->requires_grad && tp->n_entries == 0, "frozen %s table: recorded %d entries",
              ct_dtype_name(dts[k]), tp->n_entries);
        ct_tensor_free(be, table);
    }

    /* Trainable f32 table: grad vs finite differences; rows no id hits stay 0. */
    ct_tape_reset(tp);
    ct_tensor *table = leaf(CT_F32, 2, tshape, true, rng, 1.0);
    float *r = random_floats(rng, (int64_t)T * D, 1.0);
    ct_tensor *y = ct_embedding(tp, table, ids);
    CHECK_PTR(y);
    ct_tensor *loss = y ? ct_test_dot_loss(tp, y, r) : NULL;
    CHECK_PTR(loss);
    if (loss) CHECK_OK(ct_backward(tp, loss, 1.0f));
    emb_ctx c = {V, D, T, idv, to_double(table->data, (int64_t)V * D), r};
    double *g = ct_test_need(malloc((size_t)V * D * sizeof(double)));
    ct_fd_grad(emb_loss, &c, c.table, (int64_t)V * D, 1e-3, g);
    check_grad("embedding dtable vs FD", table->grad->data, g, (int64_t)V * D, 1e-6, 1e-6);
    float zero_row_sum = 0;
    for (int i = 0; i < D; i++) zero_row_sum += fabsf(((float *)table->grad->data)[(size_t)2 * D + i]);
    CHECK(zero_row_sum == 0.0f, "row 2 (no token) got a grad");

    /* Out-of-range and negative ids: input errors naming the position. */
    int32_t badv[2] = {13, -1};
    for (int k = 0; k < 2; k++) {
        ct_tape_reset(tp);
        ((int32_t *)ids->data)[4] = badv[k];
        ct_error_clear();
        CHECK(ct_embedding(tp, table, ids) == NULL, "id %d accepted", badv[k]);
        CHECK(strstr(ct_last_error(), "position 4") != NULL, "message does not name the position: %s",
              ct_last_error());
        ct_tensor *out = ct_tape_new(tp, CT_F32, 2, (int64_t[]){T, D});
        CHECK(be->embedding_fwd(table, ids, out) == CT_EINPUT, "kernel: id %d is not CT_EINPUT", badv[k]);
    }
    /* A trainable table must be f32. */
    ct_tensor *tb = leaf(CT_BF16, 2, tshape, false, rng, 1.0);
    tb->requires_grad = true;
    memcpy(ids->data, idv, sizeof idv);
    CHECK(ct_embedding(tp, tb, ids) == NULL, "trainable bf16 table accepted");
    ct_tensor_free(be, tb);
    ct_tensor_free(be, table);
    ct_tensor_free(be, ids);
    free(r), free(g), free(c.table);
}

/* ---------------------------------------------------------------- rmsnorm */

typedef struct {
    int64_t R, D;
    double *x, *w; /* [R, D], [D] */
    double eps;
    const float *r;
} rms_ctx;

static void rms_ref(const rms_ctx *c, double *y) {
    for (int64_t row = 0; row < c->R; row++) {
        const double *xr = c->x + row * c->D;
        double ss = 0;
        for (int64_t i = 0; i < c->D; i++) ss += xr[i] * xr[i];
        double inv = 1.0 / sqrt(ss / (double)c->D + c->eps);
        for (int64_t i = 0; i < c->D; i++) y[row * c->D + i] = xr[i] * inv * c->w[i];
    }
}

static double rms_loss(void *p) {
    const rms_ctx *c = p;
    double *y = ct_test_need(malloc((size_t)(c->R * c->D) * sizeof(double)));
    rms_ref(c, y);
    double s = 0;
    for (int64_t i = 0; i < c->R * c->D; i++) s += c->r[i] * y[i];
    free(y);
    return s;
}

/* x of the given shape (trainable), weight of dtype wdt (trainable iff f32).
 * x_scale_rows: rows of very different magnitudes (eps matters for the small). */
static void rmsnorm_case(ct_tape *tp, ct_test_rng *rng, int ndim, const int64_t *shape, ct_dtype wdt,
                         const char *name) {
    printf("rmsnorm %s\n", name);
    ct_tape_reset(tp);
    int64_t D = shape[ndim - 1];
    ct_tensor *x = leaf(CT_F32, ndim, shape, true, rng, 1.0);
    int64_t R = ct_rows(x), n = R * D;
    float *xd = x->data;
    for (int64_t i = 0; i < D; i++) xd[i] *= 1e-3f;                /* row 0: eps matters */
    if (R > 1) for (int64_t i = D; i < 2 * D; i++) xd[i] *= 40.0f; /* row 1: large */
    bool wtrain = wdt == CT_F32;
    ct_tensor *w = leaf(wdt, 1, &D, wtrain, rng, 1.0);
    float *r = random_floats(rng, n, 1.0);
    const float eps = 1e-5f;

    ct_tensor *y = ct_rmsnorm(tp, x, w, eps);
    CHECK_PTR(y);
    if (!y) return;
    rms_ctx c = {R, D, to_double(xd, n), ct_test_need(malloc((size_t)D * sizeof(double))), eps, r};
    float *wf = ct_test_need(malloc((size_t)D * sizeof(float)));
    CHECK_OK(ct_convert(wf, CT_F32, w->data, wdt, D));
    for (int64_t i = 0; i < D; i++) c.w[i] = wf[i];
    double *want = ct_test_need(malloc((size_t)n * sizeof(double)));
    rms_ref(&c, want);
    check_grad("forward vs double", y->data, want, n, 1e-6, 2e-6);

    ct_tensor *loss = ct_test_dot_loss(tp, y, r);
    CHECK_PTR(loss);
    if (loss) CHECK_OK(ct_backward(tp, loss, 1.0f));
    double *g = ct_test_need(malloc((size_t)n * sizeof(double)));
    ct_fd_grad(rms_loss, &c, c.x, n, 1e-6, g);
    /* Row 0 is tiny, so its dx is large (~1/sqrt(eps)); rtol covers it. */
    check_grad("dx vs FD", x->grad->data, g, n, 1e-5, 1e-4);
    if (wtrain) {
        ct_fd_grad(rms_loss, &c, c.w, D, 1e-6, g);
        check_grad("dw vs FD", w->grad->data, g, D, 1e-5, 1e-4);
    } else {
        CHECK(w->grad == NULL, "frozen %s weight got a grad", ct_dtype_name(wdt));
    }
    ct_tensor_free(be, x), ct_tensor_free(be, w);
    free(r), free(c.x), free(c.w), free(wf), free(want), free(g);
}

/* ----------------------------------------------------------------- swiglu */

typedef struct {
    int64_t n;
    double *g, *u;
    const float *r;
} swi_ctx;

static double swi_loss(void *p) {
    const swi_ctx *c = p;
    double s = 0;
    for (int64_t i = 0; i < c->n; i++) s += c->r[i] * c->g[i] / (1.0 + exp(-c->g[i])) * c->u[i];
    return s;
}

static void test_swiglu(ct_tape *tp, ct_test_rng *rng) {
    printf("swiglu\n");
    for (int gate_trainable = 1; gate_trainable >= 0; gate_trainable--) {
        ct_tape_reset(tp);
        int64_t shape[2] = {5, 11}, n = 55;
        ct_tensor *gate = leaf(CT_F32, 2, shape, gate_trainable, rng, 3.0);
        ct_tensor *up = leaf(CT_F32, 2, shape, true, rng, 1.0);
        ((float *)gate->data)[0] = -90.0f; /* exp overflow side: silu -> -0 */
        ((float *)gate->data)[1] = 90.0f;  /* silu -> identity */
        ((float *)gate->data)[2] = 0.0f;
        float *r = random_floats(rng, n, 1.0);
        ct_tensor *y = ct_swiglu(tp, gate, up);
        CHECK_PTR(y);
        if (!y) return;
        swi_ctx c = {n, to_double(gate->data, n), to_double(up->data, n), r};
        double *want = ct_test_need(malloc((size_t)n * sizeof(double)));
        for (int64_t i = 0; i < n; i++) want[i] = c.g[i] / (1.0 + exp(-c.g[i])) * c.u[i];
        check_grad("forward vs double", y->data, want, n, 1e-6, 1e-6);
        ct_tensor *loss = ct_test_dot_loss(tp, y, r);
        CHECK_PTR(loss);
        if (loss) CHECK_OK(ct_backward(tp, loss, 1.0f));
        double *g = ct_test_need(malloc((size_t)n * sizeof(double)));
        if (gate_trainable) {
            ct_fd_grad(swi_loss, &c, c.g, n, 1e-6, g);
            check_grad("dgate vs FD", gate->grad->data, g, n, 1e-6, 1e-5);
        } else {
            CHECK(gate->grad == NULL, "frozen gate got a grad");
        }
        ct_fd_grad(swi_loss, &c, c.u, n, 1e-6, g);
        check_grad("dup vs FD", up->grad->data, g, n, 1e-6, 1e-5);
        ct_tensor_free(be, gate), ct_tensor_free(be, up);
        free(r), free(c.g), free(c.u), free(want), free(g);
    }
    /* Shapes must match. */
    ct_tape_reset(tp);
    ct_tensor *a = leaf(CT_F32, 2, (int64_t[]){3, 4}, false, rng, 1.0);
    ct_tensor *b = leaf(CT_F32, 2, (int64_t[]){4, 3}, false, rng, 1.0);
    CHECK(ct_swiglu(tp, a, b) == NULL, "swiglu of [3,4] and [4,3] accepted");
    CHECK(ct_add(tp, a, b) == NULL, "add of [3,4] and [4,3] accepted");
    ct_tensor_free(be, a), ct_tensor_free(be, b);
}

/* -------------------------------------------------------------------- add */

typedef struct {
    int64_t n;
    double *a, *b;
    const float *r;
} add_ctx;

static double add_loss(void *p) {
    const add_ctx *c = p;
    double s = 0;
    for (int64_t i = 0; i < c->n; i++) s += c->r[i] * (c->a[i] + c->b[i]);
    return s;
}

static void test_add(ct_tape *tp, ct_test_rng *rng) {
    printf("add\n");
    ct_tape_reset(tp);
    int64_t shape[3] = {2, 3, 7}, n = 42;
    ct_tensor *a = leaf(CT_F32, 3, shape, true, rng, 1.0), *b = leaf(CT_F32, 3, shape, true, rng, 1.0);
    float *r = random_floats(rng, n, 1.0);
    ct_tensor *y = ct_add(tp, a, b);
    CHECK_PTR(y);
    if (!y) return;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (((float *)y->data)[i] != ((float *)a->data)[i] + ((float *)b->data)[i]) bad++;
    CHECK(bad == 0, "add: %lld sums differ", (long long)bad);
    ct_tensor *loss = ct_test_dot_loss(tp, y, r);
    CHECK_PTR(loss);
    if (loss) CHECK_OK(ct_backward(tp, loss, 1.0f));
    add_ctx c = {n, to_double(a->data, n), to_double(b->data, n), r};
    double *g = ct_test_need(malloc((size_t)n * sizeof(double)));
    ct_fd_grad(add_loss, &c, c.a, n, 1e-3, g);
    check_grad("da vs FD", a->grad->data, g, n, 1e-6, 1e-6);
    ct_fd_grad(add_loss, &c, c.b, n, 1e-3, g);
    check_grad("db vs FD", b->grad->data, g, n, 1e-6, 1e-6);

    /* a + a: both inputs are one tensor, its grad is 2r. */
    ct_tape_reset(tp);
    memset(a->grad->data, 0, (size_t)n * sizeof(float));
    y = ct_add(tp, a, a);
    loss = y ? ct_test_dot_loss(tp, y, r) : NULL;
    CHECK_PTR(loss);
    if (loss) CHECK_OK(ct_backward(tp, loss, 1.0f));
    for (int64_t i = 0; i < n; i++) g[i] = 2.0 * r[i];
    check_grad("d(a+a)/da = 2r", a->grad->data, g, n, 0, 0);
    ct_tensor_free(be, a), ct_tensor_free(be, b);
    free(r), free(c.a), free(c.b), free(g);
}

/* ------------------------------------ exp, sigmoid, silu: the whole range */

/* |ct_expf(x) - e^x| for one x: relative to e^x for normal results, in units
 * of the smallest subnormal (2^-149) below FLT_MIN. Returns false (and counts
 * nothing) where e^x lies between FLT_MAX and the overflow threshold, where
 * either FLT_MAX or inf is acceptable. */
static bool exp_err(float x, double *rel, double *sub_ulps, bool *bad_inf) {
    float got = ct_expf(x);
    double want = exp((double)x);
    *rel = 0, *sub_ulps = 0, *bad_inf = false;
    if (isinf((float)want)) {
        *bad_inf = !(isinf(got) && got > 0);
        return true;
    }
    if (want > FLT_MAX) return false;
    if (isinf(got) || isnan(got)) {
        *bad_inf = true;
        return true;
    }
    if (want >= FLT_MIN) *rel = fabs((double)got - want) / want;
    else *sub_ulps = fabs((double)got - want) / 0x1p-149;
    return true;
}

static void test_expf(ct_test_rng *rng) {
    printf("ct_expf (shared CPU/GPU exp)\n");
    double worst_rel = 0, worst_sub = 0;
    float at_rel = 0, at_sub = 0;
    int64_t n = 0, bad_inf = 0;
    /* Every 257th float of [-88, 88] (by bit pattern, both signs), 4M uniform
     * values of [-88, 88], and every float of the overflow border [88.7, 88.75],
     * the normal/subnormal border [-87.4, -87.3] and the underflow border
     * [-104, -103.9] (also past it, where e^x rounds to 0). */
    uint32_t lim;
    float f88 = 88.0f;
    memcpy(&lim, &f88, 4);
    /* the grid, the uniform values, the four borders (< 50000 floats each) */
    size_t cap = 2 * ((size_t)lim / 257 + 1) + 4000000 + 4 * 50000;
    float *xs = ct_test_need(malloc(cap * sizeof(float)));
    for (uint32_t u = 0; u <= lim; u += 257) {
        float v;
        memcpy(&v, &u, 4);
        xs[n++] = v;
        xs[n++] = -v;
    }
    for (int i = 0; i < 4000000; i++) xs[n++] = (float)(176.0 * ct_test_uniform(rng) - 88.0);
    const float borders[4][2] = {{88.7f, 88.75f}, {-87.4f, -87.3f}, {-104.0f, -103.9f}, {-110.0f, -109.99f}};
    for (int b = 0; b < 4; b++)
        for (float v = borders[b][0]; v <= borders[b][1] && (size_t)n < cap; v = nextafterf(v, INFINITY))
            xs[n++] = v;
    for (int64_t i = 0; i < n; i++) {
        double rel, sub;
        bool binf;
        if (!exp_err(xs[i], &rel, &sub, &binf)) continue;
        bad_inf += binf;
        if (rel > worst_rel) worst_rel = rel, at_rel = xs[i];
        if (sub > worst_sub) worst_sub = sub, at_sub = xs[i];
    }
    printf("  %lld values: max rel err %.3g (at %.9g), subnormal results max %.3g x 2^-149 (at %.9g)\n",
           (long long)n, worst_rel, at_rel, worst_sub, at_sub);
    CHECK(worst_rel < 1e-6, "ct_expf relative error %.3g at %.9g (want < 1e-6)", worst_rel, at_rel);
    CHECK(worst_sub <= 1.0, "ct_expf subnormal result off by %.3g x 2^-149 at %.9g", worst_sub, at_sub);
    CHECK(bad_inf == 0, "ct_expf: %lld values overflow differently from exp", (long long)bad_inf);
    free(xs);

    /* Special values, as expf gives them. */
    CHECK(ct_expf(-INFINITY) == 0.0f && !signbit(ct_expf(-INFINITY)), "exp(-inf) = %g", ct_expf(-INFINITY));
    CHECK(isinf(ct_expf(INFINITY)) && ct_expf(INFINITY) > 0, "exp(inf) = %g", ct_expf(INFINITY));
    CHECK(isnan(ct_expf(NAN)) && isnan(ct_expf(-NAN)), "exp(NaN) is not NaN");
    CHECK(ct_expf(0.0f) == 1.0f && ct_expf(-0.0f) == 1.0f, "exp(±0) = %.9g", ct_expf(0.0f));
    CHECK(isinf(ct_expf(FLT_MAX)) && ct_expf(-FLT_MAX) == 0.0f, "exp(±FLT_MAX) = %g, %g", ct_expf(FLT_MAX),
          ct_expf(-FLT_MAX));
    CHECK(ct_expf(88.72283f) < INFINITY && isinf(ct_expf(88.72284f)), "overflow threshold moved");
    CHECK(ct_expf(-103.9f) > 0.0f && ct_expf(-104.0f) == 0.0f, "underflow threshold moved");
    float tiny = 1e-30f;
    CHECK(ct_expf(tiny) == 1.0f && ct_expf(-tiny) == 1.0f, "exp(±1e-30) != 1");

    /* sigmoid and the silu pieces at the ends of the range. */
    CHECK(ct_sigmoidf(-INFINITY) == 0.0f && ct_sigmoidf(INFINITY) == 1.0f && isnan(ct_sigmoidf(NAN)),
          "sigmoid(-inf, inf, NaN) = %g %g %g", ct_sigmoidf(-INFINITY), ct_sigmoidf(INFINITY), ct_sigmoidf(NAN));
    CHECK(ct_sigmoidf(-1000.0f) == 0.0f && ct_sigmoidf(1000.0f) == 1.0f, "sigmoid(±1000)");
}

/* Equal bit for bit, or both NaN (a NaN's sign and payload depend on operand order). */
static bool same_floats(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(isnan(a[i]) && isnan(b[i])) && memcmp(&a[i], &b[i], sizeof(float)) != 0) return false;
    return true;
}

/* The swiglu kernels on values at and past the ends of the float range: no
 * NaN from a finite or infinite gate (silu(-inf) = ±0, silu(+inf) = inf, the
 * derivative 0 and 1), NaN in -> NaN out; finite gates match double. */
static void test_swiglu_extremes(ct_test_rng *rng) {
    printf("swiglu: extreme gates\n");
    const float gv[] = {-INFINITY, INFINITY, NAN, -FLT_MAX, FLT_MAX / 4, -1000.0f, 1000.0f, -120.5f,
                        -104.0f,   -88.8f,   88.8f, -87.5f,   20.0f,       -20.0f,   17.0f,   -0.0f,
                        0.0f,      1e-30f,   -1e-30f, 3.0f, -3.0f,        0.5f,     -0.5f,   1e-3f};
    const int64_t n = (int64_t)(sizeof gv / sizeof gv[0]);
    ct_tensor *g = leaf(CT_F32, 1, &n, false, rng, 1.0), *u = leaf(CT_F32, 1, &n, false, rng, 1.0);
    ct_tensor *d = leaf(CT_F32, 1, &n, false, rng, 1.0), *y = leaf(CT_F32, 1, &n, false, rng, 1.0);
    ct_tensor *dg = leaf(CT_F32, 1, &n, false, rng, 1.0), *du = leaf(CT_F32, 1, &n, false, rng, 1.0);
    ct_tensor *dg1 = leaf(CT_F32, 1, &n, false, rng, 1.0), *du1 = leaf(CT_F32, 1, &n, false, rng, 1.0);
    float *gs = g->data, *us = u->data, *ds = d->data;
    memcpy(gs, gv, sizeof gv);
    for (int64_t i = 0; i < n; i++) {
        us[i] = i % 2 ? -1.5f : 0.75f;
        ds[i] = i % 3 ? 1.25f : -0.5f;
    }
    memset(dg->data, 0, ct_nbytes(dg)), memset(du->data, 0, ct_nbytes(du));
    memset(dg1->data, 0, ct_nbytes(dg1)), memset(du1->data, 0, ct_nbytes(du1));
    CHECK_OK(be->swiglu_fwd(g, u, y));
    CHECK_OK(be->swiglu_bwd(g, u, d, dg, du));
    CHECK_OK(be->swiglu_bwd(g, u, d, dg1, NULL)); /* the one-grad loops */
    CHECK_OK(be->swiglu_bwd(g, u, d, NULL, du1));
    const float *ys = y->data, *dgs = dg->data, *dus = du->data;
    for (int64_t i = 0; i < n; i++) {
        double gi = gs[i], ui = us[i], di = ds[i];
        if (isnan(gi)) {
            CHECK(isnan(ys[i]) && isnan(dgs[i]) && isnan(dus[i]), "NaN gate: y %g dg %g du %g", ys[i],
                  dgs[i], dus[i]);
        } else if (isinf(gi)) {
            /* silu(-inf) = 0 (either sign), silu'(-inf) = 0; silu(inf) = inf, silu'(inf) = 1 */
            double silu = gi > 0 ? INFINITY : 0.0, dsilu = gi > 0 ? 1.0 : 0.0;
            CHECK(ys[i] == silu * ui, "swiglu(%g, %g) = %g, want %g", gi, ui, ys[i], silu * ui);
            CHECK(dus[i] == silu * di, "d up at gate %g: %g, want %g", gi, dus[i], silu * di);
            CHECK(dgs[i] == (float)(di * ui * dsilu), "d gate at gate %g: %g, want %g", gi, dgs[i],
                  di * ui * dsilu);
        } else {
            double s = 1.0 / (1.0 + exp(-gi)), silu = gi * s, dsilu = s * (1.0 + gi * (1.0 - s));
            double wy = silu * ui, wdu = di * silu, wdg = di * ui * dsilu;
            CHECK(fabs(ys[i] - wy) <= 1e-37 + 2e-6 * fabs(wy), "swiglu(%.9g, %g) = %.9g, want %.9g", gi, ui,
                  ys[i], wy);
            CHECK(fabs(dus[i] - wdu) <= 1e-37 + 2e-6 * fabs(wdu), "d up at gate %.9g: %.9g, want %.9g", gi,
                  dus[i], wdu);
            CHECK(fabs(dgs[i] - wdg) <= 1e-37 + 2e-6 * fabs(wdg), "d gate at gate %.9g: %.9g, want %.9g",
                  gi, dgs[i], wdg);
        }
    }
    CHECK(same_floats(dg1->data, dg->data, n), "dgate alone differs from dgate with dup");
    CHECK(same_floats(du1->data, du->data, n), "dup alone differs from dup with dgate");
    ct_tensor *all[8] = {g, u, d, y, dg, du, dg1, du1};
    for (int i = 0; i < 8; i++) ct_tensor_free(be, all[i]);
}

/* --------------------------- the parallel paths: large shapes, 1 vs 3 threads */

/* Runs fn with nt OpenMP threads, restoring the setting after. */
static int saved_threads;
static void use_threads(int nt) {
    if (!saved_threads) saved_threads = omp_get_max_threads();
    omp_set_num_threads(nt > 0 ? nt : saved_threads);
}

/* swiglu on 120000 elements (parallel, vectorized loops) against double. */
static void test_swiglu_large(ct_test_rng *rng) {
    printf("swiglu [300, 400]: parallel path vs double\n");
    int64_t shape[2] = {300, 400}, n = 120000;
    ct_tensor *g = leaf(CT_F32, 2, shape, false, rng, 4.0), *u = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *d = leaf(CT_F32, 2, shape, false, rng, 1.0), *y = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *dg = leaf(CT_F32, 2, shape, false, rng, 1.0), *du = leaf(CT_F32, 2, shape, false, rng, 1.0);
    const float *gs = g->data, *us = u->data, *ds = d->data;
    double *wy = ct_test_need(malloc((size_t)n * sizeof(double))), *wdg = ct_test_need(malloc((size_t)n * sizeof(double)));
    double *wdu = ct_test_need(malloc((size_t)n * sizeof(double)));
    /* dg, du start random: the kernel accumulates */
    const float *dg0 = dg->data, *du0 = du->data;
    for (int64_t i = 0; i < n; i++) {
        double gi = gs[i], s = 1.0 / (1.0 + exp(-gi)), silu = gi * s;
        wy[i] = silu * us[i];
        wdu[i] = du0[i] + ds[i] * silu;
        wdg[i] = dg0[i] + ds[i] * us[i] * s * (1.0 + gi * (1.0 - s));
    }
    use_threads(3);
    CHECK_OK(be->swiglu_fwd(g, u, y));
    CHECK_OK(be->swiglu_bwd(g, u, d, dg, du));
    use_threads(0);
    check_grad("forward vs double", y->data, wy, n, 1e-6, 2e-6);
    /* dgate = dy·u·s·(1 + g(1 - s)) cancels near g = -1.28: the error is
     * relative to the terms' size (~10 here), not to the result. */
    check_grad("dgate vs double", dg->data, wdg, n, 1e-5, 2e-6);
    check_grad("dup vs double", du->data, wdu, n, 1e-6, 2e-6);
    ct_tensor *all[6] = {g, u, d, y, dg, du};
    for (int i = 0; i < 6; i++) ct_tensor_free(be, all[i]);
    free(wy), free(wdg), free(wdu);
}

/* rmsnorm kernels on a large [R, D] (parallel; D > 8192 takes the column-chunk
 * path) against double: y, dx and dw (w f32: dw summed over per-thread
 * partials). The same call twice with 3 threads is bit-identical; 1 thread
 * agrees to rounding. */
static void rmsnorm_large(ct_test_rng *rng, int64_t R, int64_t D, ct_dtype wdt) {
    printf("rmsnorm [%lld, %lld] %s weight: parallel path vs double, determinism\n", (long long)R,
           (long long)D, ct_dtype_name(wdt));
    int64_t shape[2] = {R, D}, n = R * D;
    const float eps = 1e-5f;
    ct_tensor *x = leaf(CT_F32, 2, shape, false, rng, 1.0), *dy = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *w = leaf(wdt, 1, &D, false, rng, 1.0), *y = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *rstd = leaf(CT_F32, 1, &R, false, rng, 1.0);
    ct_tensor *dx = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *dw = wdt == CT_F32 ? leaf(CT_F32, 1, &D, false, rng, 1.0) : NULL;
    float *xs = x->data, *gs = dy->data;
    for (int64_t i = 0; i < D; i++) xs[i] *= 1e-3f; /* row 0: eps matters */
    float *wf = ct_test_need(malloc((size_t)D * sizeof(float)));
    CHECK_OK(ct_convert(wf, CT_F32, w->data, wdt, D));
    /* Double reference; dx and dw accumulate onto their random start values. */
    double *wy = ct_test_need(malloc((size_t)n * sizeof(double))), *wdx = ct_test_need(malloc((size_t)n * sizeof(double)));
    double *wdw = ct_test_need(calloc((size_t)D, sizeof(double)));
    for (int64_t r = 0; r < R; r++) {
        const float *xr = xs + r * D, *gr = gs + r * D;
        double ss = 0, dot = 0;
        for (int64_t i = 0; i < D; i++) ss += (double)xr[i] * xr[i], dot += (double)gr[i] * wf[i] * xr[i];
        double inv = 1.0 / sqrt(ss / (double)D + eps), c = inv * inv * inv * dot / (double)D;
        for (int64_t i = 0; i < D; i++) {
            wy[r * D + i] = xr[i] * inv * wf[i];
            wdx[r * D + i] = ((float *)dx->data)[r * D + i] + inv * gr[i] * wf[i] - c * xr[i];
            wdw[i] += (double)gr[i] * xr[i] * inv;
        }
    }
    if (dw)
        for (int64_t i = 0; i < D; i++) wdw[i] += ((float *)dw->data)[i];
    float *dx0 = ct_test_need(malloc(ct_nbytes(dx))), *dw0 = dw ? ct_test_need(malloc(ct_nbytes(dw))) : NULL;
    memcpy(dx0, dx->data, ct_nbytes(dx));
    if (dw) memcpy(dw0, dw->data, ct_nbytes(dw));

    /* 3 threads, twice from the same start: bit-identical; then 1 thread. */
    float *keep[3] = {NULL, NULL, NULL}; /* y, dx, dw of the first run */
    for (int run = 0; run < 3; run++) {
        use_threads(run < 2 ? 3 : 1);
        memcpy(dx->data, dx0, ct_nbytes(dx));
        if (dw) memcpy(dw->data, dw0, ct_nbytes(dw));
        CHECK_OK(be->rmsnorm_fwd(x, w, eps, y, rstd));
        CHECK_OK(be->rmsnorm_bwd(x, w, rstd, dy, dx, dw));
        use_threads(0);
        if (run == 0) {
            check_grad("forward vs double", y->data, wy, n, 1e-6, 2e-6);
            check_grad("dx vs double", dx->data, wdx, n, 1e-5, 1e-5);
            if (dw) check_grad("dw vs double", dw->data, wdw, D, 1e-5, 1e-5);
            keep[0] = ct_test_need(malloc(ct_nbytes(y))), keep[1] = ct_test_need(malloc(ct_nbytes(dx)));
            memcpy(keep[0], y->data, ct_nbytes(y));
            memcpy(keep[1], dx->data, ct_nbytes(dx));
            if (dw) keep[2] = ct_test_need(malloc(ct_nbytes(dw))), memcpy(keep[2], dw->data, ct_nbytes(dw));
        } else if (run == 1) {
            CHECK(memcmp(keep[0], y->data, ct_nbytes(y)) == 0 && memcmp(keep[1], dx->data, ct_nbytes(dx)) == 0 &&
                      (!dw || memcmp(keep[2], dw->data, ct_nbytes(dw)) == 0),
                  "rmsnorm: two runs with 3 threads differ");
        } else {
            /* Row results do not depend on the thread count at all; dw only by rounding. */
            CHECK(memcmp(keep[0], y->data, ct_nbytes(y)) == 0 && memcmp(keep[1], dx->data, ct_nbytes(dx)) == 0,
                  "rmsnorm: y or dx depend on the thread count");
            if (dw) check_grad("dw, 1 thread, vs double", dw->data, wdw, D, 1e-5, 1e-5);
        }
    }
    /* dx only and dw only (the unfused paths) give the same as both together. */
    if (dw) {
        memcpy(dx->data, dx0, ct_nbytes(dx));
        memcpy(dw->data, dw0, ct_nbytes(dw));
        use_threads(3);
        CHECK_OK(be->rmsnorm_bwd(x, w, rstd, dy, dx, NULL));
        CHECK_OK(be->rmsnorm_bwd(x, w, rstd, dy, NULL, dw));
        use_threads(0);
        CHECK(memcmp(keep[1], dx->data, ct_nbytes(dx)) == 0, "rmsnorm: dx alone differs");
        CHECK(memcmp(keep[2], dw->data, ct_nbytes(dw)) == 0, "rmsnorm: dw alone differs");
    }
    ct_tensor *all[7] = {x, dy, w, y, rstd, dx, dw};
    for (int i = 0; i < 7; i++)
        if (all[i]) ct_tensor_free(be, all[i]);
    for (int i = 0; i < 3; i++) free(keep[i]);
    free(wf), free(wy), free(wdx), free(wdw), free(dx0), free(dw0);
}

/* Weights/tables of a dtype the kernels cannot read: input errors, not garbage. */
static void test_dtype_errors(ct_tape *tp, ct_test_rng *rng) {
    printf("rmsnorm / embedding: unreadable dtypes refused\n");
    ct_tape_reset(tp);
    int64_t shape[2] = {4, 8}, D = 8;
    ct_tensor *x = leaf(CT_F32, 2, shape, false, rng, 1.0), *w = leaf(CT_I32, 1, &D, false, rng, 0);
    ct_tensor *y = leaf(CT_F32, 2, shape, false, rng, 1.0), *ids = leaf(CT_I32, 1, shape, false, rng, 0);
    ct_error_clear();
    CHECK(ct_rmsnorm(tp, x, w, 1e-5f) == NULL && strstr(ct_last_error(), "i32"), "i32 rmsnorm weight: %s",
          ct_last_error());
    CHECK(be->rmsnorm_fwd(x, w, 1e-5f, y, NULL) == CT_EINPUT, "kernel: i32 rmsnorm weight accepted");
    ct_tensor *tab = leaf(CT_I32, 2, shape, false, rng, 0);
    CHECK(be->embedding_fwd(tab, ids, y) == CT_EINPUT, "kernel: i32 embedding table accepted");
    ct_tensor *all[5] = {x, w, y, ids, tab};
    for (int i = 0; i < 5; i++) ct_tensor_free(be, all[i]);
}

/* add on 1M elements (parallel, fused kernel): exact sums. */
static void test_add_large(ct_tape *tp, ct_test_rng *rng) {
    printf("add [1000, 1001]: fused parallel kernel\n");
    ct_tape_reset(tp);
    int64_t shape[2] = {1000, 1001}, n = 1001000;
    ct_tensor *a = leaf(CT_F32, 2, shape, false, rng, 1.0), *b = leaf(CT_F32, 2, shape, false, rng, 1.0);
    use_threads(3);
    ct_tensor *y = ct_add(tp, a, b);
    use_threads(0);
    CHECK_PTR(y);
    int64_t bad = 0;
    for (int64_t i = 0; y && i < n; i++)
        if (((float *)y->data)[i] != ((float *)a->data)[i] + ((float *)b->data)[i]) bad++;
    CHECK(bad == 0, "add: %lld sums differ", (long long)bad);
    ct_tensor_free(be, a), ct_tensor_free(be, b);
}

/* ---------------------------------------------------------------- the tape */

static bool all_zero(const ct_tensor *g) {
    const float *d = g->data;
    for (int64_t i = 0; i < ct_numel(g); i++)
        if (d[i] != 0.0f) return false;
    return true;
}

/* Grads flow only to tensors on a path to a trainable leaf. */
static void test_tape_reachability(ct_tape *tp, ct_test_rng *rng) {
    printf("tape: grads only where a trainable leaf is reachable\n");
    ct_tape_reset(tp);
    const int64_t T = 5, D = 6, V = 9;
    ct_tensor *table = leaf(CT_F32, 2, (int64_t[]){V, D}, false, rng, 1.0);
    ct_tensor *ids = leaf(CT_I32, 1, &T, false, rng, 0);
    for (int t = 0; t < T; t++) ((int32_t *)ids->data)[t] = (t * 4) % (int)V;
    ct_tensor *w_frozen = leaf(CT_F32, 1, &D, false, rng, 1.0);
    ct_tensor *w_train = leaf(CT_F32, 1, &D, true, rng, 1.0);
    ct_tensor *xt = leaf(CT_F32, 2, (int64_t[]){T, D}, true, rng, 1.0);
    float *r = random_floats(rng, T * D, 1.0);

    ct_tensor *e = ct_test_need(ct_embedding(tp, table, ids));       /* frozen table: no grad path */
    ct_tensor *n1 = ct_test_need(ct_rmsnorm(tp, e, w_frozen, 1e-6f)); /* still none */
    CHECK(!e->requires_grad && !n1->requires_grad && tp->n_entries == 0,
          "frozen-only chain recorded %d entries", tp->n_entries);
    ct_tensor *n2 = ct_test_need(ct_rmsnorm(tp, n1, w_train, 1e-6f)); /* trainable weight */
    ct_tensor *n3 = ct_test_need(ct_rmsnorm(tp, xt, w_frozen, 1e-6f)); /* trainable input, frozen weight */
    ct_tensor *s = ct_test_need(ct_add(tp, n2, n3));
    ct_tensor *loss = ct_test_need(ct_test_dot_loss(tp, s, r));
    CHECK(tp->n_entries == 4, "expected 4 recorded ops (2 rmsnorm, add, loss), got %d", tp->n_entries);
    CHECK_OK(ct_backward(tp, loss, 1.0f));
    CHECK(w_train->grad && !all_zero(w_train->grad), "trainable weight got no grad");
    CHECK(xt->grad && !all_zero(xt->grad), "trainable input got no grad");
    CHECK(w_frozen->grad == NULL, "frozen weight got a grad");
    CHECK(table->grad == NULL, "frozen table got a grad");
    CHECK(e->grad == NULL && n1->grad == NULL, "activations upstream of frozen ops only got grads");
    CHECK(n2->grad && n3->grad && s->grad, "activations on the path got no grad");

    /* A loss nothing trainable reaches: backward is a no-op, not an error. */
    ct_tape_reset(tp);
    ct_tensor *e2 = ct_test_need(ct_embedding(tp, table, ids));
    ct_tensor *l2 = ct_test_need(ct_test_dot_loss(tp, e2, r));
    CHECK_OK(ct_backward(tp, l2, 1.0f));
    CHECK(e2->grad == NULL && table->grad == NULL, "grads appeared without a trainable leaf");
    CHECK(ct_backward(tp, e2, 1.0f) != 0, "backward from a [T, D] tensor accepted");

    ct_tensor_free(be, table), ct_tensor_free(be, ids), ct_tensor_free(be, w_frozen);
    ct_tensor_free(be, w_train), ct_tensor_free(be, xt);
    free(r);
}

/* A small block exercising every op; used by the no_grad, memory and checkpoint
 * tests: y = h + swiglu(rmsnorm(h, w1), rmsnorm(h, w2)), h [T, D]. */
typedef struct {
    ct_tensor *w1, *w2;
    bool nest; /* try a nested checkpoint inside (must fail) */
} block_ctx;

static int block_fn(ct_tape *tp, void *ctx, ct_tensor *h, ct_tensor **out) {
    block_ctx *c = ctx;
    if (c->nest) {
        ct_tensor *dummy;
        block_ctx inner = {c->w1, c->w2, false};
        return ct_checkpoint(tp, block_fn, &inner, h, &dummy);
    }
    ct_tensor *a = ct_rmsnorm(tp, h, c->w1, 1e-5f);
    ct_tensor *b = a ? ct_rmsnorm(tp, h, c->w2, 1e-5f) : NULL;
    ct_tensor *s = b ? ct_swiglu(tp, a, b) : NULL;
    *out = s ? ct_add(tp, h, s) : NULL;
    return *out ? CT_OK : CT_ERUNTIME;
}

/* One step: h = embedding (frozen) + x (trainable), two blocks (the second
 * checkpointed when ckpt), probe loss, backward. Returns the loss value. */
typedef struct {
    ct_tensor *table, *ids, *x, *w1, *w2, *w3, *w4;
    float *r;
} step_state;

static float run_step(ct_tape *tp, step_state *s, bool ckpt, bool x_trainable) {
    ct_tape_reset(tp);
    bool keep = s->x->requires_grad;
    s->x->requires_grad = x_trainable;
    ct_tensor *e = ct_test_need(ct_embedding(tp, s->table, s->ids));
    ct_tensor *h = ct_test_need(ct_add(tp, e, s->x));
    block_ctx c1 = {s->w1, s->w2, false}, c2 = {s->w3, s->w4, false};
    ct_tensor *h1 = NULL, *h2 = NULL;
    CHECK_OK(ckpt ? ct_checkpoint(tp, block_fn, &c1, h, &h1) : block_fn(tp, &c1, h, &h1));
    ct_test_need(h1);
    CHECK_OK(ckpt ? ct_checkpoint(tp, block_fn, &c2, h1, &h2) : block_fn(tp, &c2, h1, &h2));
    ct_tensor *loss = ct_test_need(ct_test_dot_loss(tp, ct_test_need(h2), s->r));
    CHECK_OK(ct_backward(tp, loss, 1.0f));
    s->x->requires_grad = keep;
    return *(float *)loss->data;
}

static void zero_grads(step_state *s) {
    ct_tensor *p[5] = {s->x, s->w1, s->w2, s->w3, s->w4};
    for (int i = 0; i < 5; i++) memset(p[i]->grad->data, 0, ct_nbytes(p[i]->grad));
}

static bool same_grads(step_state *s, float *const *saved) {
    ct_tensor *p[5] = {s->x, s->w1, s->w2, s->w3, s->w4};
    for (int i = 0; i < 5; i++)
        if (memcmp(p[i]->grad->data, saved[i], ct_nbytes(p[i]->grad)) != 0) return false;
    return true;
}

static void save_grads(step_state *s, float **saved) {
    ct_tensor *p[5] = {s->x, s->w1, s->w2, s->w3, s->w4};
    for (int i = 0; i < 5; i++) {
        saved[i] = ct_test_need(malloc(ct_nbytes(p[i]->grad)));
        memcpy(saved[i], p[i]->grad->data, ct_nbytes(p[i]->grad));
    }
}

static void test_tape_steps(ct_test_rng *rng) {
    printf("tape: no_grad, memory reuse, checkpoints, grad accumulation\n");
    /* Small blocks, so a step spans several and some tensors exceed one. */
    ct_tape tp;
    CHECK_OK(ct_tape_init(&tp, be, (size_t)64 << 10));
    const int64_t T = 40, D = 500, V = 17;
    step_state s;
    s.table = leaf(CT_F32, 2, (int64_t[]){V, D}, false, rng, 1.0);
    s.ids = leaf(CT_I32, 1, &T, false, rng, 0);
    for (int t = 0; t < T; t++) ((int32_t *)s.ids->data)[t] = (t * 7) % (int)V;
    s.x = leaf(CT_F32, 2, (int64_t[]){T, D}, true, rng, 0.5);
    s.w1 = leaf(CT_F32, 1, &D, true, rng, 1.0), s.w2 = leaf(CT_F32, 1, &D, true, rng, 1.0);
    s.w3 = leaf(CT_F32, 1, &D, true, rng, 1.0), s.w4 = leaf(CT_F32, 1, &D, true, rng, 1.0);
    s.r = random_floats(rng, T * D, 1.0);

    /* Plain step, then checkpointed: same loss and grads, bit for bit. */
    float l_plain = run_step(&tp, &s, false, true);
    float *plain[5];
    save_grads(&s, plain);
    zero_grads(&s);
    float l_ckpt = run_step(&tp, &s, true, true);
    CHECK(l_plain == l_ckpt, "checkpointed loss %.9g != plain %.9g", l_ckpt, l_plain);
    CHECK(same_grads(&s, plain), "checkpointed grads differ from plain");
    /* Without zeroing, a second step accumulates: exactly twice (x + x = 2x). */
    run_step(&tp, &s, true, true);
    int64_t bad = 0;
    for (int64_t i = 0; i < D; i++)
        if (((float *)s.w1->grad->data)[i] != 2.0f * plain[1][i]) bad++;
    CHECK(bad == 0, "grads did not accumulate across steps (%lld differ)", (long long)bad);

    /* Memory: after a warm-up step, further identical steps reserve nothing new. */
    size_t r_meta = ct_arena_reserved(&tp.meta), r_main = ct_arena_reserved(&tp.main);
    size_t r_scr = ct_arena_reserved(&tp.scratch);
    int cap = tp.cap_entries;
    CHECK(tp.main.n_blocks > 2 && r_scr > 0, "the step should span several blocks (%d)", tp.main.n_blocks);
    for (int k = 0; k < 4; k++) {
        zero_grads(&s);
        float l = run_step(&tp, &s, k % 2 == 0, true);
        CHECK(l == l_plain, "step %d: loss %.9g != %.9g", k, l, l_plain);
        CHECK(same_grads(&s, plain), "step %d: grads differ", k);
    }
    CHECK(ct_arena_reserved(&tp.meta) == r_meta && ct_arena_reserved(&tp.main) == r_main &&
              ct_arena_reserved(&tp.scratch) == r_scr && tp.cap_entries == cap,
          "arenas grew after warm-up: meta %zu->%zu main %zu->%zu scratch %zu->%zu",
          r_meta, ct_arena_reserved(&tp.meta), r_main, ct_arena_reserved(&tp.main), r_scr,
          ct_arena_reserved(&tp.scratch));
    printf("  reserved after warm-up: meta %zu, main %zu, scratch %zu bytes; stable over 4 steps\n",
           r_meta, r_main, r_scr);

    /* Checkpointed segment whose input needs no grad: params still get grads. */
    zero_grads(&s);
    run_step(&tp, &s, false, false);
    float *plain_nox[5];
    save_grads(&s, plain_nox);
    zero_grads(&s);
    run_step(&tp, &s, true, false);
    CHECK(same_grads(&s, plain_nox), "checkpoint with a frozen input: grads differ");
    CHECK(!all_zero(s.w1->grad) && all_zero(s.x->grad), "frozen-input checkpoint: wrong grads");

    /* no_grad: nothing recorded, same values, no grads. */
    zero_grads(&s);
    ct_tape_reset(&tp);
    bool prev = ct_tape_set_recording(&tp, false);
    CHECK(prev, "recording should be on by default");
    ct_tensor *e = ct_test_need(ct_embedding(&tp, s.table, s.ids));
    ct_tensor *h = ct_test_need(ct_add(&tp, e, s.x));
    block_ctx c1 = {s.w1, s.w2, false}, c2 = {s.w3, s.w4, false};
    ct_tensor *h1 = NULL, *h2 = NULL;
    CHECK_OK(ct_checkpoint(&tp, block_fn, &c1, h, &h1));
    CHECK_OK(block_fn(&tp, &c2, h1, &h2));
    ct_tensor *loss = ct_test_need(ct_test_dot_loss(&tp, h2, s.r));
    CHECK(tp.n_entries == 0, "no_grad recorded %d entries", tp.n_entries);
    CHECK(!h2->requires_grad && !loss->requires_grad, "no_grad outputs require grad");
    CHECK(*(float *)loss->data == l_plain, "no_grad loss %.9g != %.9g", *(float *)loss->data, l_plain);
    CHECK_OK(ct_backward(&tp, loss, 1.0f));
    CHECK(all_zero(s.w1->grad) && all_zero(s.x->grad), "no_grad backward produced grads");
    ct_tape_set_recording(&tp, true);

    /* Segments do not nest. */
    ct_tape_reset(&tp);
    block_ctx nest = {s.w1, s.w2, true};
    ct_tensor *o = NULL;
    CHECK(ct_checkpoint(&tp, block_fn, &nest, s.x, &o) != 0, "nested checkpoint accepted");
    CHECK(!tp.in_checkpoint && tp.data == &tp.main, "failed checkpoint left the tape in a segment");

    for (int i = 0; i < 5; i++) free(plain[i]), free(plain_nox[i]);
    ct_tensor *all[7] = {s.table, s.ids, s.x, s.w1, s.w2, s.w3, s.w4};
    for (int i = 0; i < 7; i++) ct_tensor_free(be, all[i]);
    free(s.r);
    ct_tape_free(&tp);
}

/* -------------------------------------------------- add fused with rmsnorm */

/* loss = r·y + r2·sum with sum = a + b, y = rmsnorm(sum)·w: both outputs reach
 * the loss, as in the decoder (sum is the residual stream). n.x is the sum,
 * recomputed from a and b on every call. */
typedef struct {
    rms_ctx n;
    double *a, *b;
    const float *r2;
} addrms_ctx;

static double addrms_loss(void *p) {
    addrms_ctx *c = p;
    int64_t n = c->n.R * c->n.D;
    for (int64_t i = 0; i < n; i++) c->n.x[i] = c->a[i] + c->b[i];
    double l = rms_loss(&c->n);
    for (int64_t i = 0; i < n; i++) l += c->r2[i] * c->n.x[i];
    return l;
}

/* The two-output loss on the tape: r·y + r2·sum. */
static ct_tensor *addrms_tape_loss(ct_tape *tp, ct_tensor *y, ct_tensor *sum, const float *r, const float *r2) {
    ct_tensor *l1 = ct_test_dot_loss(tp, y, r), *l2 = l1 ? ct_test_dot_loss(tp, sum, r2) : NULL;
    return l2 ? ct_add(tp, l1, l2) : NULL;
}

/* What one way of computing the pair gives: outputs, loss, the three grads,
 * and the tape's entries (op names in order). */
typedef struct {
    float *y, *sum, *da, *db, *dw;
    float loss;
    const char *ops[8];
    int n_ops;
} addrms_run;

/* Runs the pair on tape tp (whose backend decides the fused or the unfused
 * path of ct_add_rmsnorm; `separate`: ct_add then ct_rmsnorm instead) from
 * zeroed grads, and keeps what came out. */
static addrms_run addrms_once(ct_tape *tp, bool separate, ct_tensor *a, ct_tensor *b, ct_tensor *w, float eps,
                              const float *r, const float *r2) {
    addrms_run o = {0};
    ct_tensor *p[3] = {a, b, w};
    for (int i = 0; i < 3; i++) memset(p[i]->grad->data, 0, ct_nbytes(p[i]->grad));
    ct_tape_reset(tp);
    ct_tensor *sum = NULL, *y;
    if (separate) {
        sum = ct_add(tp, a, b);
        y = sum ? ct_rmsnorm(tp, sum, w, eps) : NULL;
    } else {
        y = ct_add_rmsnorm(tp, a, b, w, eps, &sum);
    }
    ct_tensor *loss = y ? addrms_tape_loss(tp, y, sum, r, r2) : NULL;
    CHECK_PTR(loss);
    if (!loss) return o;
    o.n_ops = tp->n_entries < 8 ? tp->n_entries : 8;
    for (int i = 0; i < o.n_ops; i++) o.ops[i] = tp->entries[i].op->name;
    CHECK_OK(ct_backward(tp, loss, 1.0f));
    o.loss = *(float *)loss->data;
    const ct_tensor *src[5] = {y, sum, a->grad, b->grad, w->grad};
    float **dst[5] = {&o.y, &o.sum, &o.da, &o.db, &o.dw};
    for (int i = 0; i < 5; i++) {
        *dst[i] = ct_test_need(malloc(ct_nbytes(src[i])));
        memcpy(*dst[i], src[i]->data, ct_nbytes(src[i]));
    }
    return o;
}

static bool addrms_same(const addrms_run *x, const addrms_run *y, int64_t n, int64_t D) {
    if (!x->y || !y->y || x->n_ops != y->n_ops || memcmp(&x->loss, &y->loss, sizeof x->loss)) return false;
    for (int i = 0; i < x->n_ops; i++)
        if (strcmp(x->ops[i], y->ops[i])) return false;
    return same_floats(x->y, y->y, n) && same_floats(x->sum, y->sum, n) && same_floats(x->da, y->da, n) &&
           same_floats(x->db, y->db, n) && same_floats(x->dw, y->dw, D);
}

static void addrms_free(addrms_run *o) { free(o->y), free(o->sum), free(o->da), free(o->db), free(o->dw); }

/* ct_add_rmsnorm: forward against double, every grad against finite
 * differences, and the same bits (outputs, loss, grads, tape entries) as
 * ct_add then ct_rmsnorm, through the CPU's fused kernel and through the
 * unfused path a backend without add_rmsnorm_fwd takes. */
static void test_add_rmsnorm(ct_tape *tp, ct_test_rng *rng) {
    printf("add_rmsnorm [4, 37]: fused residual add + rmsnorm\n");
    const int64_t R = 4, D = 37, n = R * D, shape[2] = {R, D};
    const float eps = 1e-5f;
    ct_tensor *a = leaf(CT_F32, 2, shape, true, rng, 1.0), *b = leaf(CT_F32, 2, shape, true, rng, 1.0);
    ct_tensor *w = leaf(CT_F32, 1, &D, true, rng, 1.0);
    float *ad = a->data, *bd = b->data;
    for (int64_t i = 0; i < D; i++) ad[i] *= 1e-3f, bd[i] *= 1e-3f;      /* row 0: eps matters */
    for (int64_t i = D; i < 2 * D; i++) ad[i] *= 40.0f, bd[i] *= 40.0f; /* row 1: large */
    float *r = random_floats(rng, n, 1.0), *r2 = random_floats(rng, n, 1.0);

    ct_tape_reset(tp);
    ct_tensor *sum = NULL, *y = ct_add_rmsnorm(tp, a, b, w, eps, &sum);
    CHECK(y && sum, "add_rmsnorm failed: %s", ct_last_error());
    if (!y || !sum) return;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (((float *)sum->data)[i] != ad[i] + bd[i]) bad++;
    CHECK(bad == 0, "add_rmsnorm: %lld sums differ from a + b", (long long)bad);
    addrms_ctx c = {{R, D, to_double(sum->data, n), to_double(w->data, D), eps, r},
                    to_double(ad, n), to_double(bd, n), r2};
    double *want = ct_test_need(malloc((size_t)n * sizeof(double)));
    rms_ref(&c.n, want);
    check_grad("forward vs double", y->data, want, n, 1e-6, 2e-6);
    ct_tensor *loss = addrms_tape_loss(tp, y, sum, r, r2);
    CHECK_PTR(loss);
    if (loss) CHECK_OK(ct_backward(tp, loss, 1.0f));
    double *g = ct_test_need(malloc((size_t)n * sizeof(double)));
    ct_fd_grad(addrms_loss, &c, c.a, n, 1e-6, g);
    check_grad("da vs FD", a->grad->data, g, n, 1e-5, 1e-4);
    ct_fd_grad(addrms_loss, &c, c.b, n, 1e-6, g);
    check_grad("db vs FD", b->grad->data, g, n, 1e-5, 1e-4);
    ct_fd_grad(addrms_loss, &c, c.n.w, D, 1e-6, g);
    check_grad("dw vs FD", w->grad->data, g, D, 1e-5, 1e-4);

    /* The same bits three ways: fused (the CPU's kernel), ct_add then
     * ct_rmsnorm, and ct_add_rmsnorm on a backend without the fused entry. */
    ct_backend unfused = *ct_cpu_backend();
    unfused.add_rmsnorm_fwd = NULL;
    ct_tape tu;
    CHECK_OK(ct_tape_init(&tu, &unfused, (size_t)1 << 20));
    addrms_run fused = addrms_once(tp, false, a, b, w, eps, r, r2);
    addrms_run sep = addrms_once(tp, true, a, b, w, eps, r, r2);
    addrms_run fallback = addrms_once(&tu, false, a, b, w, eps, r, r2);
    CHECK(fused.n_ops == 5 && !strcmp(fused.ops[0], "add") && !strcmp(fused.ops[1], "rmsnorm"),
          "fused tape: %d entries, first %s", fused.n_ops, fused.n_ops ? fused.ops[0] : "-");
    CHECK(addrms_same(&fused, &sep, n, D), "fused add_rmsnorm differs from add then rmsnorm");
    CHECK(addrms_same(&fallback, &sep, n, D), "add_rmsnorm without the fused entry differs from add then rmsnorm");
    addrms_free(&fused), addrms_free(&sep), addrms_free(&fallback);
    ct_tape_free(&tu);

    /* Bad input: a shape mismatch and an unreadable weight; *sum stays NULL. */
    ct_tape_reset(tp);
    ct_tensor *odd = leaf(CT_F32, 2, (int64_t[]){D, R}, false, rng, 1.0), *wi = leaf(CT_I32, 1, &D, false, rng, 0);
    sum = a;
    CHECK(ct_add_rmsnorm(tp, a, odd, w, eps, &sum) == NULL && sum == NULL, "add_rmsnorm of [4,37] and [37,4] accepted");
    ct_error_clear();
    CHECK(ct_add_rmsnorm(tp, a, b, wi, eps, &sum) == NULL && strstr(ct_last_error(), "i32"),
          "add_rmsnorm with an i32 weight: %s", ct_last_error());
    ct_tensor *all[5] = {a, b, w, odd, wi};
    for (int i = 0; i < 5; i++) ct_tensor_free(be, all[i]);
    free(r), free(r2), free(c.n.x), free(c.n.w), free(c.a), free(c.b), free(want), free(g);
}

/* add_rmsnorm_fwd against add_fwd then rmsnorm_fwd on large rows: the same
 * bits with 3 threads (the parallel path) and with 1, with rstd and
 * without, sum apart and sum = a; D > 8192 takes the column chunks. */
static void add_rmsnorm_large(ct_test_rng *rng, int64_t R, int64_t D, ct_dtype wdt) {
    printf("add_rmsnorm_fwd [%lld, %lld] %s weight: bits of add_fwd then rmsnorm_fwd\n", (long long)R, (long long)D,
           ct_dtype_name(wdt));
    int64_t shape[2] = {R, D};
    const float eps = 1e-5f;
    ct_tensor *a = leaf(CT_F32, 2, shape, false, rng, 1.0), *b = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *w = leaf(wdt, 1, &D, false, rng, 1.0);
    ct_tensor *s0 = leaf(CT_F32, 2, shape, false, rng, 1.0), *y0 = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *r0 = leaf(CT_F32, 1, &R, false, rng, 1.0);
    ct_tensor *s = leaf(CT_F32, 2, shape, false, rng, 1.0), *y = leaf(CT_F32, 2, shape, false, rng, 1.0);
    ct_tensor *rs = leaf(CT_F32, 1, &R, false, rng, 1.0), *a2 = leaf(CT_F32, 2, shape, false, rng, 1.0);
    CHECK_OK(be->add_fwd(a, b, s0));
    CHECK_OK(be->rmsnorm_fwd(s0, w, eps, y0, r0));
    for (int run = 0; run < 4; run++) {
        use_threads(run % 2 ? 1 : 3);
        bool inplace = run >= 2;
        memcpy(a2->data, a->data, ct_nbytes(a));
        memset(y->data, 0xff, ct_nbytes(y));
        ct_tensor *sum = inplace ? a2 : s;
        CHECK_OK(be->add_rmsnorm_fwd(a2, b, w, eps, sum, y, run == 1 ? NULL : rs));
        use_threads(0);
        CHECK(memcmp(sum->data, s0->data, ct_nbytes(s0)) == 0 && memcmp(y->data, y0->data, ct_nbytes(y0)) == 0 &&
                  (run == 1 || memcmp(rs->data, r0->data, ct_nbytes(r0)) == 0),
              "add_rmsnorm_fwd (%d threads%s%s) differs from add_fwd then rmsnorm_fwd", run % 2 ? 1 : 3,
              inplace ? ", sum = a" : "", run == 1 ? ", no rstd" : "");
    }
    ct_tensor *all[10] = {a, b, w, s0, y0, r0, s, y, rs, a2};
    for (int i = 0; i < 10; i++) ct_tensor_free(be, all[i]);
}

/* --------------------------------------------------------------- the arena */

static void test_arena(void) {
    printf("arena\n");
    ct_arena a;
    ct_arena_init(&a, ct_host_allocator(), 4096);
    void *p1 = ct_arena_alloc(&a, 1), *p2 = ct_arena_alloc(&a, 300);
    CHECK(p1 && p2 && (uintptr_t)p1 % CT_ARENA_ALIGN == 0 && (uintptr_t)p2 % CT_ARENA_ALIGN == 0,
          "misaligned");
    CHECK((char *)p2 - (char *)p1 == CT_ARENA_ALIGN, "1 byte should take one alignment unit");
    ct_arena_mark m = ct_arena_get_mark(&a);
    void *p3 = ct_arena_alloc(&a, 10000); /* larger than a block: its own block */
    CHECK(p3 && (uintptr_t)p3 % CT_ARENA_ALIGN == 0, "big alloc failed");
    memset(p3, 1, 10000);
    void *p4 = ct_arena_alloc(&a, 100);
    ct_arena_rewind(&a, m);
    void *p5 = ct_arena_alloc(&a, 10000);
    CHECK(p5 == p3, "rewind did not reuse the big block");
    CHECK(p4 != NULL, "alloc after a big block failed");
    size_t reserved = ct_arena_reserved(&a), peak = a.peak;
    CHECK(peak >= 10000 + 2 * CT_ARENA_ALIGN, "peak %zu too small", peak);
    for (int k = 0; k < 3; k++) {
        ct_arena_reset(&a);
        CHECK(a.used == 0, "reset left %zu used", a.used);
        CHECK(ct_arena_alloc(&a, 1) == p1 && ct_arena_alloc(&a, 300) == p2, "reset did not reuse");
        CHECK(ct_arena_alloc(&a, 10000) == p3 && ct_arena_alloc(&a, 100) == p4, "same sequence, other memory");
    }
    CHECK(ct_arena_reserved(&a) == reserved && a.peak == peak, "arena grew on identical steps");
    ct_arena_free(&a);
}

int main(void) {
    be = ct_cpu_backend();
    ct_test_rng rng = {20240611};
    ct_tape tp;
    CHECK_OK(ct_tape_init(&tp, be, (size_t)1 << 20));

    printf("conversions\n");
    test_convert_exhaustive(CT_F16, 5, 10, CT_BF16, 8, 7);
    test_convert_exhaustive(CT_BF16, 8, 7, CT_F16, 5, 10);
    test_convert_rounding(CT_F16, 5, 10, &rng);
    test_convert_rounding(CT_BF16, 8, 7, &rng);
    test_convert_named();

    test_embedding(&tp, &rng);
    rmsnorm_case(&tp, &rng, 3, (int64_t[]){3, 5, 13}, CT_F32, "[3,5,13] f32 weight");
    rmsnorm_case(&tp, &rng, 2, (int64_t[]){6, 37}, CT_BF16, "[6,37] bf16 weight (frozen)");
    rmsnorm_case(&tp, &rng, 1, (int64_t[]){9}, CT_F16, "[9] f16 weight (frozen)");
    test_swiglu(&tp, &rng);
    test_add(&tp, &rng);
    test_expf(&rng);
    test_swiglu_extremes(&rng);
    test_swiglu_large(&rng);
    rmsnorm_large(&rng, 97, 1003, CT_F32);
    rmsnorm_large(&rng, 9, 8200, CT_F32);  /* two column chunks */
    rmsnorm_large(&rng, 9, 8200, CT_BF16); /* converted per chunk */
    test_add_large(&tp, &rng);
    test_dtype_errors(&tp, &rng);
    test_tape_reachability(&tp, &rng);
    test_tape_steps(&rng);
    test_add_rmsnorm(&tp, &rng);
    add_rmsnorm_large(&rng, 97, 1003, CT_F32);
    add_rmsnorm_large(&rng, 9, 8200, CT_BF16); /* two column chunks */
    test_arena();

    ct_tape_free(&tp);
    return ct_test_finish();
}
