/* NF4/FP4 quantization against an independent scalar reimplementation of
 * bitsandbytes' algorithm written here (own tables typed in from
 * the bitsandbytes sources, listed in docs/DESIGN.md ("NF4 and FP4"), own linear threshold and
 * nearest-value searches, own dynamic map), plus round-trip error, range
 * dequantization, the CPU weight-tile path and lora_linear with an NF4 base.
 *
 * The reference's offset (mean of absmax) is summed pairwise in long double;
 * the library sums sequentially in double. Both round to fp32 once: they must
 * agree to one ulp, and the nested values are then compared bit for bit using
 * the offset the state holds. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/backend.h"
#include "autograd/ops.h"
#include "autograd/quant.h"
#include "autograd/quant_tables.h"
#include "autograd/cpu/cpu_kernels.h"
#include "testutil.h"

/* ---------------- the reference ---------------- */

/* docs/DESIGN.md ("NF4 and FP4"), code 0..15. */
static const double REF_NF4[16] = {
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
/* bitsandbytes dQuantizeNF4 / dQuantizeFP4 decision thresholds (csrc/kernels.cu), sorted. */
static const float REF_NF4_THR[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
static const float REF_FP4_THR[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                     0.4166667f, 0.583333f, 0.8333333f};
/* bnb get_4bit_type("fp4") before the division by 12, codes 0..7 (8..15 negated). */
static const float REF_FP4_UNITS[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};

enum { NF4 = 0, FP4 = 1 };

static float ref_value(int type, int c) {
    if (type == NF4) return (float)REF_NF4[c];
    float v = REF_FP4_UNITS[c & 7] / 12.0f;
    return (c & 8) ? -v : v;
}

static int ref_code(int type, float x) {
    if (type == NF4) { /* number of thresholds strictly below x (NaN: none) */
        int c = 0;
        for (int k = 0; k < 15; k++) c += x > REF_NF4_THR[k];
        return c;
    }
    int sign = x < 0.0f ? 8 : 0;
    float a = fabsf(x);
    int rank = 0;
    for (int k = 0; k < 7; k++) rank += a > REF_FP4_THR[k];
    /* the code whose magnitude is the rank-th smallest */
    for (int c = 0; c < 8; c++) {
        int below = 0;
        for (int d = 0; d < 8; d++) below += REF_FP4_UNITS[d] < REF_FP4_UNITS[c];
        if (below == rank) return c | sign;
    }
    return -1;
}

/* torch.linspace in fp32 as current x86 torch computes it (ATen linspace_kernel:
 * step rounded to fp32, first half start + step*j, second half end -
 * step*(steps-1-j), each a fused multiply-add: one rounding). Computed here in
 * double, where every term is a multiple of 2^-30 in [0, 1] and so exact, and
 * rounded to fp32 once. */
static void ref_linspace(float start, float end, int steps, float *out) {
    float step = (end - start) / (float)(steps - 1);
    for (int j = 0; j < steps; j++)
        out[j] = (float)((j < steps / 2) ? (double)start + (double)step * j
                                         : (double)end - (double)step * (steps - 1 - j));
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8). */
static void ref_dynamic_map(float map[256]) {
    int k = 0;
    for (int i = 0; i < 7; i++) {
        float b[65];
        int steps = (1 << i) + 1;
        ref_linspace(0.1f, 1.0f, steps, b);
        float scale = (float)pow(10.0, i - 6);
        for (int j = 0; j < steps - 1; j++) {
            float mean = (b[j] + b[j + 1]) / 2.0f;
            map[k++] = scale * mean;
            map[k++] = -(scale * mean);
        }
    }
    map[k++] = 0.0f;
    map[k++] = 1.0f;
    qsort(map, 256, sizeof(float), cmp_float);
}

/* Nearest map entry; between map[k] < x <= map[k+1] the fp32 midpoint decides,
 * and an exact midpoint goes to the even index (where bnb's 7-step binary
 * search over odd pivots stops). NaN -> 0 (all comparisons false). */
static int ref_nearest8(const float *map, float x) {
    if (isnan(x) || x <= map[0]) return 0;
    if (x > map[255]) return 255;
    int k = 0;
    while (!(map[k] < x && x <= map[k + 1])) k++;
    float mid = (map[k] + map[k + 1]) * 0.5f;
    if (x > mid) return k + 1;
    if (x < mid) return k;
    return (k % 2 == 0) ? k : k + 1;
}

typedef struct {
    int64_t n, nb, nn;
    uint8_t *codes;       /* [(n+1)/2] */
    float *absmax;        /* [nb] */
    uint8_t *qabsmax;     /* [nb] */
    float *nested;        /* [nn] */
    float mean;           /* reference mean of absmax */
} ref_quant;

static long double pairwise_sum(const float *x, int64_t n) {
    if (n <= 8) {
        long double s = 0;
        for (int64_t i = 0; i < n; i++) s += x[i];
        return s;
    }
    return pairwise_sum(x, n / 2) + pairwise_sum(x + n / 2, n - n / 2);
}

/* The 4-bit part (x: the weights as floats). */
static void ref_quantize(ref_quant *r, const float *x, int64_t n, int type, int bs) {
    r->n = n;
    r->nb = (n + bs - 1) / bs;
    r->nn = (r->nb + 255) / 256;
    r->codes = calloc((size_t)(n + 1) / 2, 1);
    r->absmax = calloc((size_t)r->nb, sizeof(float));
    r->qabsmax = calloc((size_t)r->nb, 1);
    r->nested = calloc((size_t)r->nn, sizeof(float));
    for (int64_t b = 0; b < r->nb; b++) {
        int64_t i0 = b * bs, i1 = i0 + bs < n ? i0 + bs : n;
        float amax = 0.0f;
        for (int64_t i = i0; i < i1; i++)
            if (fabsf(x[i]) > amax) amax = fabsf(x[i]);
        r->absmax[b] = amax;
        float inv = 1.0f / amax;
        for (int64_t i = i0; i < i1 + (i1 - i0) % 2; i++) { /* pad an odd block with 0.0f */
            float v = i < i1 ? x[i] : 0.0f;
            int c = ref_code(type, v * inv);
            r->codes[i / 2] |= (uint8_t)(i % 2 == 0 ? c << 4 : c);
        }
    }
    r->mean = (float)(pairwise_sum(r->absmax, r->nb) / (long double)r->nb);
}

/* The 8-bit part, from a given offset (the library's, once checked). */
static void ref_double_quant(ref_quant *r, const float *map, float offset) {
    for (int64_t j = 0; j < r->nn; j++) {
        int64_t b0 = j * 256, b1 = b0 + 256 < r->nb ? b0 + 256 : r->nb;
        float amax = 0.0f;
        for (int64_t b = b0; b < b1; b++) {
            float d = r->absmax[b] - offset;
            if (fabsf(d) > amax) amax = fabsf(d);
        }
        r->nested[j] = amax;
        float inv = 1.0f / amax;
        for (int64_t b = b0; b < b1; b++) {
            float d = r->absmax[b] - offset;
            r->qabsmax[b] = (uint8_t)ref_nearest8(map, d * inv);
        }
    }
}

static float ref_block_absmax(const ref_quant *r, const float *map, float offset, bool nested,
                              int64_t b) {
    if (!nested) return r->absmax[b];
    float m = map[r->qabsmax[b]] * r->nested[b / 256];
    return m + offset;
}

static void ref_free(ref_quant *r) {
    free(r->codes);
    free(r->absmax);
    free(r->qabsmax);
    free(r->nested);
}

/* ---------------- helpers ---------------- */

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static bool same_bits(const float *a, const float *b, int64_t n, int64_t *where) {
    for (int64_t i = 0; i < n; i++)
        if (bits(a[i]) != bits(b[i])) {
            *where = i;
            return false;
        }
    return true;
}

static float ulp(float x) { return nextafterf(fabsf(x), INFINITY) - fabsf(x); }

static float ref_half(uint16_t h) { /* finite halfs only */
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m | 1024), e - 25);
    return (h & 0x8000) ? -v : v;
}

static float ref_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---------------- tests ---------------- */

static void test_tables(void) {
    float code[16];
    ct_quant_code_table(CT_QUANT_NF4, code);
    for (int c = 0; c < 16; c++) {
        CHECK(bits(code[c]) == bits(ref_value(NF4, c)), "nf4 code %d: %.9g", c, (double)code[c]);
        CHECK(ct_nf4_value((unsigned)c) == ref_value(NF4, c), "nf4 value %d", c);
    }
    ct_quant_code_table(CT_QUANT_FP4, code);
    for (int c = 0; c < 16; c++) {
        CHECK(bits(code[c]) == bits(ref_value(FP4, c)), "fp4 code %d: %.9g", c, (double)code[c]);
        CHECK(bits(ct_fp4_value((unsigned)c)) == bits(ref_value(FP4, c)), "fp4 value %d", c);
    }
    /* The thresholds are the midpoints of adjacent table values: NF4 to one ulp
     * (four are a float tie that bnb's printed literal rounds the other way),
     * FP4 to bnb's decimal rounding. */
    for (int k = 0; k < 15; k++) {
        float mid = ((float)REF_NF4[k] + (float)REF_NF4[k + 1]) * 0.5f;
        CHECK(fabsf(mid - REF_NF4_THR[k]) <= ulp(mid), "nf4 threshold %d: %.9g vs midpoint %.9g", k,
              (double)REF_NF4_THR[k], (double)mid);
    }
    float mags[8];
    for (int c = 0; c < 8; c++) mags[c] = REF_FP4_UNITS[c] / 12.0f;
    qsort(mags, 8, sizeof(float), cmp_float);
    for (int k = 0; k < 7; k++) {
        float mid = (mags[k] + mags[k + 1]) * 0.5f;
        CHECK(fabsf(mid - REF_FP4_THR[k]) <= 1e-5f * mid, "fp4 threshold %d", k);
    }
}

/* The tree (bnb verbatim), the branch-free count form the CPU uses and the
 * reference agree on every float tried: dense samples of all bit patterns,
 * every threshold ±8 ulp, specials. */
static void check_code_at(float x, int *bad) {
    int nf = ref_code(NF4, x), fp = ref_code(FP4, x);
    if ((int)ct_nf4_quantize_tree(x) != nf || (int)ct_nf4_quantize(x) != nf ||
        (int)ct_fp4_quantize_tree(x) != fp || (int)ct_fp4_quantize(x) != fp) {
        if (*bad < 5)
            fprintf(stderr, "x=%.9g (0x%08x): nf4 tree %u count %u ref %d; fp4 tree %u count %u ref %d\n",
                    (double)x, bits(x), ct_nf4_quantize_tree(x), ct_nf4_quantize(x), nf,
                    ct_fp4_quantize_tree(x), ct_fp4_quantize(x), fp);
        (*bad)++;
    }
}

static void test_code_search(void) {
    int bad = 0;
    for (uint64_t u = 0; u < (1ull << 32); u += 9973) {
        uint32_t v = (uint32_t)u;
        float x;
        memcpy(&x, &v, 4);
        check_code_at(x, &bad);
    }
    const float *thr[2] = {REF_NF4_THR, REF_FP4_THR};
    int nthr[2] = {15, 7};
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < nthr[s]; k++)
            for (int sign = -1; sign <= 1; sign += 2) {
                float x = thr[s][k] * (float)sign;
                for (int d = 0; d < 8; d++) x = nextafterf(x, -INFINITY);
                for (int d = 0; d < 17; d++, x = nextafterf(x, INFINITY)) check_code_at(x, &bad);
            }
    float specials[] = {0.0f, -0.0f, NAN, -NAN, INFINITY, -INFINITY, 1.0f, -1.0f, FLT_MIN, -FLT_MIN};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) check_code_at(specials[i], &bad);
    CHECK(bad == 0, "%d values where tree, count form and reference disagree", bad);
    /* exact ties go to the lower code */
    CHECK(ct_nf4_quantize(REF_NF4_THR[7]) == 7 && ct_nf4_quantize(nextafterf(REF_NF4_THR[7], 1)) == 8,
          "nf4 tie at threshold 7");
    CHECK(ct_nf4_quantize(NAN) == 0 && ct_fp4_quantize(NAN) == 0, "NaN codes (bnb: 0)");
}

/* The map bit for bit as bitsandbytes makes it: tests/data/bnb_dynamic_map.txt,
 * written by tests/autograd/gen_dynamic_map.py (its header says from what). */
static void test_dynamic_map_pinned(void) {
    const char *path = CT_SOURCE_DIR "/tests/data/bnb_dynamic_map.txt";
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f) return;
    uint32_t want[256];
    int n = 0, bad_line = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        unsigned int u;
        char tail;
        if (n >= 256 || sscanf(line, "0x%8x %c", &u, &tail) != 1) {
            bad_line = 1;
            break;
        }
        want[n++] = (uint32_t)u;
    }
    fclose(f);
    CHECK(!bad_line && n == 256, "%s: want 256 lines of 0xXXXXXXXX, got %d%s", path, n,
          bad_line ? " and a bad line" : "");
    if (bad_line || n != 256) return;
    float lib[256], ref[256];
    ct_quant_dynamic_map(lib);
    ref_dynamic_map(ref);
    int differ = 0, ref_differ = 0, first = -1;
    uint32_t first_got = 0;
    for (int i = 0; i < 256; i++) {
        uint32_t a, r;
        memcpy(&a, &lib[i], 4);
        memcpy(&r, &ref[i], 4);
        if (a != want[i] && first < 0) first = i, first_got = a;
        differ += a != want[i];
        ref_differ += r != want[i];
    }
    CHECK(differ == 0, "ct_quant_dynamic_map differs from bitsandbytes' map in %d of 256 entries "
          "(first [%d]: 0x%08x, bitsandbytes 0x%08x)", differ, first, (unsigned)first_got,
          first < 0 ? 0u : (unsigned)want[first]);
    CHECK(ref_differ == 0, "the test's reference map differs from bitsandbytes' in %d entries", ref_differ);
    /* the stored map of a double-quantized state is that map */
    float w[512];
    for (int i = 0; i < 512; i++) w[i] = sinf((float)i);
    ct_quant_params p = {.type = CT_QUANT_NF4, .blocksize = 64, .double_quant = true};
    ct_quant_state st;
    int64_t shape[1] = {512};
    if (ct_quant_quantize(&st, w, CT_F32, 1, shape, &p, "pinned") == CT_OK) {
        CHECK(memcmp(st.map8, lib, sizeof lib) == 0, "state map8 is not ct_quant_dynamic_map");
        ct_quant_free(&st);
    } else {
        CHECK(0, "quantize failed");
    }
}

static void test_dynamic_map(void) {
    float lib[256], ref[256];
    ct_quant_dynamic_map(lib);
    ref_dynamic_map(ref);
    int64_t w = 0;
    CHECK(same_bits(lib, ref, 256, &w), "dynamic map [%lld]: %.9g vs %.9g", (long long)w,
          (double)lib[w], (double)ref[w]);
    CHECK(lib[127] == 0.0f && lib[255] == 1.0f, "map8[127] = %g, map8[255] = %g", (double)lib[127],
          (double)lib[255]);
    /* every entry within 2 fp32 ulp (linspace, mean and scale each round once)
     * of its exact value ±10^(i-6)·(0.1 + 0.9·(2j+1)/(2·2^i)) */
    double exact[256];
    int k = 0;
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < (1 << i); j++) {
            double v = pow(10.0, i - 6) * (0.1 + 0.9 * (2 * j + 1) / (2.0 * (1 << i)));
            exact[k++] = v;
            exact[k++] = -v;
        }
    exact[k++] = 0.0;
    exact[k++] = 1.0;
    int far = 0;
    for (int i = 0; i < 256; i++) {
        double best = INFINITY;
        for (int j = 0; j < 256; j++) best = fmin(best, fabs(exact[j] - (double)lib[i]));
        if (best > 2.0 * (double)ulp(lib[i])) far++;
    }
    CHECK(far == 0, "%d map entries more than 2 ulp from their exact value", far);
    for (int i = 0; i < 255; i++) CHECK(lib[i] < lib[i + 1], "map not increasing at %d", i);
    /* the 8-bit search against the reference: random values, every midpoint ±2 ulp, edges */
    ct_test_rng rng = {7};
    int bad = 0;
    for (int t = 0; t < 200000; t++) {
        float x = (float)(ct_test_uniform(&rng) * 2.2 - 1.1);
        if (t % 3 == 0) x *= (float)pow(10.0, -6.0 * ct_test_uniform(&rng));
        bad += (int)ct_dyn8_quantize(lib, x) != ref_nearest8(lib, x);
    }
    for (int i = 0; i < 255; i++) {
        float x = (lib[i] + lib[i + 1]) * 0.5f;
        x = nextafterf(nextafterf(x, -INFINITY), -INFINITY);
        for (int d = 0; d < 5; d++, x = nextafterf(x, INFINITY))
            bad += (int)ct_dyn8_quantize(lib, x) != ref_nearest8(lib, x);
        bad += (int)ct_dyn8_quantize(lib, lib[i]) != i;
    }
    float edges[] = {-2.0f, -1.0f, lib[0], 1.0f, 2.0f, NAN, 0.0f, -0.0f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        bad += (int)ct_dyn8_quantize(lib, edges[i]) != ref_nearest8(lib, edges[i]);
    CHECK(bad == 0, "%d values where the 8-bit search differs from the nearest-value reference", bad);
}

/* Source weights in a dtype, and the same values as floats (decoded here). */
typedef struct {
    ct_dtype dt;
    void *src;
    float *x; /* [n] */
} weights;

/* pattern: 0 = N(0, scale²); k > 0: also every (k+1)-th run of 64 zeroed;
 * ZEROS: all zero; SAME_ABSMAX: every run of 64 has absmax 0.5 (so with double
 * quantization all absmax equal their mean and the nested absmax is 0). */
enum { ZEROS = -1, SAME_ABSMAX = -2 };

static weights make_weights(ct_test_rng *rng, int64_t n, ct_dtype dt, double scale, int pattern) {
    weights w = {dt, NULL, malloc((size_t)n * sizeof(float))};
    for (int64_t i = 0; i < n; i++) {
        w.x[i] = (float)(scale * ct_test_normal(rng));
        if (pattern == ZEROS || (pattern > 0 && (i / 64) % (pattern + 1) == 1)) w.x[i] = 0.0f;
        if (pattern == SAME_ABSMAX && i % 64 == 0) w.x[i] = (i / 64) % 2 ? 0.5f : -0.5f;
    }
    if (dt == CT_F32) {
        w.src = w.x;
        return w;
    }
    uint16_t *h = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) {
        if (dt == CT_BF16) {
            h[i] = (uint16_t)(bits(w.x[i]) >> 16); /* truncate: any bf16 will do */
            w.x[i] = ref_bf16(h[i]);
        } else {
            h[i] = ct_f32_to_f16(w.x[i]); /* input generation only */
            w.x[i] = ref_half(h[i]);
        }
    }
    w.src = h;
    return w;
}

static void free_weights(weights *w) {
    if (w->src != w->x) free(w->src);
    free(w->x);
}

/* Quantize with the library and the reference; compare everything. */
static void check_against_reference(int64_t n, int bs, int type, bool dq, ct_dtype dt, int pattern,
                                     uint64_t seed) {
    char what[160];
    snprintf(what, sizeof what, "n=%lld bs=%d %s dq=%d %s pattern=%d", (long long)n, bs,
             type == NF4 ? "nf4" : "fp4", dq, ct_dtype_name(dt), pattern);
    ct_test_rng rng = {seed};
    weights w = make_weights(&rng, n, dt, 0.02, pattern);
    ct_quant_state st;
    ct_quant_params p = {type == NF4 ? CT_QUANT_NF4 : CT_QUANT_FP4, bs, dq, NULL};
    int64_t shape[1] = {n};
    int rc = ct_quant_quantize(&st, w.src, dt, 1, shape, &p, "w");
    CHECK(rc == 0, "%s: %s", what, ct_last_error());
    if (rc) {
        free_weights(&w);
        return;
    }
    ref_quant r;
    ref_quantize(&r, w.x, n, type, bs);
    CHECK(st.nblocks == r.nb, "%s: %lld blocks, want %lld", what, (long long)st.nblocks, (long long)r.nb);
    CHECK(memcmp(st.codes, r.codes, (size_t)(n + 1) / 2) == 0, "%s: packed codes differ", what);
    float *absmax = malloc((size_t)r.nb * sizeof(float));
    float map[256];
    ref_dynamic_map(map);
    int64_t where = 0;
    if (!dq) {
        CHECK(same_bits(st.absmax, r.absmax, r.nb, &where), "%s: absmax[%lld] %.9g vs %.9g", what,
              (long long)where, (double)st.absmax[where], (double)r.absmax[where]);
    } else {
        CHECK(fabsf(st.offset - r.mean) <= ulp(r.mean), "%s: offset %.9g vs mean %.9g", what,
              (double)st.offset, (double)r.mean);
        ref_double_quant(&r, map, st.offset);
        CHECK(same_bits(st.nested_absmax, r.nested, r.nn, &where), "%s: nested_absmax[%lld]", what,
              (long long)where);
        CHECK(memcmp(st.qabsmax, r.qabsmax, (size_t)r.nb) == 0, "%s: 8-bit absmax codes differ", what);
        CHECK(same_bits(st.map8, map, 256, &where), "%s: state map8[%lld]", what, (long long)where);
    }
    CHECK_OK(ct_quant_absmax(&st, 0, r.nb, absmax));
    if (pattern == SAME_ABSMAX) /* nested absmax 0: 1/0, NaN, code 0, and still exactly the offset */
        for (int64_t b = 0; b < r.nb; b++)
            if (absmax[b] != 0.5f) {
                CHECK(0, "%s: absmax[%lld] = %.9g, want 0.5", what, (long long)b, (double)absmax[b]);
                break;
            }
    for (int64_t b = 0; b < r.nb; b++) {
        float want = ref_block_absmax(&r, map, st.offset, dq, b);
        if (bits(absmax[b]) != bits(want)) {
            CHECK(0, "%s: dequantized absmax[%lld] %.9g vs %.9g", what, (long long)b,
                  (double)absmax[b], (double)want);
            break;
        }
    }
    /* dequantized values: identical to the reference, NaN-free, within the grid */
    float *deq = malloc((size_t)n * sizeof(float));
    float *want = malloc((size_t)n * sizeof(float));
    CHECK_OK(ct_quant_dequantize(&st, 0, n, deq));
    float half_gap = 0.0f; /* largest half-distance between neighbouring code values */
    float vals[16];
    for (int c = 0; c < 16; c++) vals[c] = ref_value(type, c);
    qsort(vals, 16, sizeof(float), cmp_float);
    for (int c = 0; c < 15; c++) half_gap = fmaxf(half_gap, (vals[c + 1] - vals[c]) * 0.5f);
    int64_t nan = 0, off_grid = 0;
    for (int64_t i = 0; i < n; i++) {
        int c = (r.codes[i / 2] >> (i % 2 ? 0 : 4)) & 15;
        float am = ref_block_absmax(&r, map, st.offset, dq, i / bs);
        want[i] = ref_value(type, c) * am;
        nan += isnan(deq[i]);
        float true_am = r.absmax[i / bs];
        double bound = (double)half_gap * true_am + fabs((double)true_am - am) + 1e-6 * true_am;
        off_grid += fabs((double)deq[i] - w.x[i]) > bound;
        /* an all-zero block comes back as zeros; with double quantization, as
         * in bnb, only as well as its absmax is reconstructed (covered by bound) */
        if (true_am == 0.0f && !dq && deq[i] != 0.0f) off_grid++;
    }
    CHECK(same_bits(deq, want, n, &where), "%s: dequant[%lld] %.9g vs %.9g", what, (long long)where,
          (double)deq[where], (double)want[where]);
    CHECK(nan == 0, "%s: %lld NaN after dequantization", what, (long long)nan);
    CHECK(off_grid == 0, "%s: %lld values further from the original than the code grid allows", what,
          (long long)off_grid);
    free(deq);
    free(want);
    free(absmax);
    ref_free(&r);
    ct_quant_free(&st);
    free_weights(&w);
}

static void test_reference_parity(void) {
    const int64_t sizes[] = {1000, 64 * 3 + 5, 7, 1, 4096 + 64, 64 * 600 + 3, 33 * 65};
    const int bss[] = {32, 64, 128, 256, 4096};
    const ct_dtype dts[] = {CT_F32, CT_BF16, CT_F16};
    uint64_t seed = 100;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (size_t b = 0; b < sizeof bss / sizeof bss[0]; b++)
            for (int type = 0; type < 2; type++)
                for (int dq = 0; dq < 2; dq++)
                    check_against_reference(sizes[s], bss[b], type, dq, dts[(s + b + dq) % 3],
                                            (int)(s % 3), seed++);
    /* all-zero weights, and blocks that all have the same absmax (nested absmax 0) */
    for (int type = 0; type < 2; type++)
        for (int dq = 0; dq < 2; dq++) {
            check_against_reference(64 * 300, 64, type, dq, CT_F32, ZEROS, seed++);
            check_against_reference(64 * 300 + 1, 64, type, dq, CT_BF16, SAME_ABSMAX, seed++);
        }
}

/* A block holding 1.0 (so x * (1/absmax) = x exactly) and every threshold ±1
 * ulp: the whole pipeline, ties included. */
static void test_threshold_block(void) {
    for (int type = 0; type < 2; type++) {
        const float *thr = type == NF4 ? REF_NF4_THR : REF_FP4_THR;
        int nt = type == NF4 ? 15 : 7;
        float x[128];
        int64_t n = 0;
        x[n++] = 1.0f;
        for (int k = 0; k < nt; k++)
            for (int sign = -1; sign <= 1; sign += 2) {
                float t = thr[k] * (float)sign;
                x[n++] = nextafterf(t, -INFINITY);
                x[n++] = t;
                x[n++] = nextafterf(t, INFINITY);
            }
        ct_quant_state st;
        ct_quant_params p = {type == NF4 ? CT_QUANT_NF4 : CT_QUANT_FP4, 128, false, NULL};
        CHECK_OK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "thresholds"));
        ref_quant r;
        ref_quantize(&r, x, n, type, 128);
        CHECK(st.absmax[0] == 1.0f, "absmax %g", (double)st.absmax[0]);
        CHECK(memcmp(st.codes, r.codes, (size_t)(n + 1) / 2) == 0, "%s threshold codes differ",
              type == NF4 ? "nf4" : "fp4");
        ref_free(&r);
        ct_quant_free(&st);
    }
}

/* Values for which x * (1/absmax) and x / absmax fall on different sides of a
 * threshold: the reciprocal-first rule decides their codes. One per block of
 * 64 (element 0 = the block's absmax), for 24 random absmax values per type. */
static void test_reciprocal_first(void) {
    ct_test_rng rng = {77};
    for (int type = 0; type < 2; type++) {
        const float *thr = type == NF4 ? REF_NF4_THR : REF_FP4_THR;
        int nt = type == NF4 ? 15 : 7, found = 0;
        int64_t n = 24 * 64;
        float *x = calloc((size_t)n, sizeof(float));
        for (int tries = 0; found < 24 && tries < 200000; tries++) {
            float a = (float)(0.01 + ct_test_uniform(&rng));
            float t = thr[tries % nt] * ((tries / nt) % 2 ? -1.0f : 1.0f), inv = 1.0f / a;
            float v = t * a;
            for (int d = 0; d < 4; d++) v = nextafterf(v, -INFINITY);
            for (int d = 0; d < 9; d++, v = nextafterf(v, INFINITY))
                if (ref_code(type, v * inv) != ref_code(type, v / a) && fabsf(v) < a) {
                    x[found * 64] = a;
                    x[found * 64 + 1] = v;
                    found++;
                    break;
                }
        }
        CHECK(found == 24, "found only %d values where x*(1/a) and x/a quantize differently", found);
        ct_quant_state st;
        ct_quant_params p = {type == NF4 ? CT_QUANT_NF4 : CT_QUANT_FP4, 64, false, NULL};
        CHECK_OK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "reciprocal"));
        ref_quant r;
        ref_quantize(&r, x, n, type, 64);
        CHECK(memcmp(st.codes, r.codes, (size_t)n / 2) == 0, "%s: codes of x*(1/absmax) differ",
              type == NF4 ? "nf4" : "fp4");
        ref_free(&r);
        ct_quant_free(&st);
        free(x);
    }
}

/* The same for the 8-bit step: block absmax values A chosen so that
 * (A - offset) * (1/nested) and (A - offset) / nested round to different map
 * entries. Block b of 64 is [A_b, 0, ...]; block 0 holds 1.0 (the largest
 * deviation: it fixes the nested absmax) and block 1 compensates every move,
 * so the (exact) sum of absmax and with it the offset never change. All A are
 * in [0.25, 1): multiples of 2^-26, so every difference below is exact. */
static void test_reciprocal_first_nested(void) {
    int64_t nb = 256, n = nb * 64;
    float *x = calloc((size_t)n, sizeof(float)), map[256];
    ref_dynamic_map(map);
    ct_test_rng rng = {78};
    x[0] = 1.0f;
    x[64] = 0.375f;
    for (int64_t b = 2; b < nb; b++) x[b * 64] = (float)(0.3 + 0.4 * ct_test_uniform(&rng));
    ct_quant_state st;
    ct_quant_params p = {CT_QUANT_NF4, 64, true, NULL};
    CHECK_OK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "nested"));
    float off = st.offset, nabs = st.nested_absmax[0];
    ct_quant_free(&st);
    for (int64_t b = 2; b < nb; b++) {
        float x0 = (x[b * 64] - off) / nabs;
        int k = 0;
        while (k < 254 && map[k + 1] <= x0) k++;
        const int dks[5] = {0, 1, -1, 2, -2};
        for (int j = 0; j < 5; j++) {
            int kk = k + dks[j];
            if (kk < 0 || kk > 254) continue;
            float m = (map[kk] + map[kk + 1]) * 0.5f, a = off + m * nabs, pick = 0.0f;
            for (int d = 0; d < 64; d++) a = nextafterf(a, -INFINITY);
            for (int d = 0; d < 129 && pick == 0.0f; d++, a = nextafterf(a, INFINITY)) {
                float dv = a - off;
                if (a >= 0.25f && a < 0.95f &&
                    ref_nearest8(map, dv * (1.0f / nabs)) != ref_nearest8(map, dv / nabs))
                    pick = a;
            }
            float comp = x[64] - (pick - x[b * 64]);
            if (pick != 0.0f && comp >= 0.25f && comp < 0.5f) {
                x[64] = comp;
                x[b * 64] = pick;
                break;
            }
        }
    }
    CHECK_OK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "nested"));
    CHECK(st.offset == off && st.nested_absmax[0] == nabs, "offset or nested absmax moved");
    int discriminating = 0;
    for (int64_t b = 0; b < nb; b++) {
        float dv = x[b * 64] - st.offset;
        discriminating += ref_nearest8(map, dv * (1.0f / st.nested_absmax[0])) !=
                          ref_nearest8(map, dv / st.nested_absmax[0]);
    }
    CHECK(discriminating >= 10, "only %d absmax values tell x*(1/a) from x/a", discriminating);
    ref_quant r;
    ref_quantize(&r, x, n, NF4, 64);
    ref_double_quant(&r, map, st.offset);
    CHECK(memcmp(st.qabsmax, r.qabsmax, (size_t)nb) == 0,
          "8-bit absmax codes of (A-offset)*(1/nested) differ");
    ref_free(&r);
    ct_quant_free(&st);
    free(x);
}

static void test_round_trip_stats(void) {
    int64_t n = (int64_t)1 << 20;
    ct_test_rng rng = {42};
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    ct_test_fill(&rng, x, n, 1.0);
    double mae[2][2];
    for (int type = 0; type < 2; type++)
        for (int dq = 0; dq < 2; dq++) {
            ct_quant_state st;
            ct_quant_params p = {type == NF4 ? CT_QUANT_NF4 : CT_QUANT_FP4, 64, dq, NULL};
            CHECK_OK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "normal"));
            CHECK_OK(ct_quant_dequantize(&st, 0, n, y));
            double s = 0, s2 = 0, e = 0;
            for (int64_t i = 0; i < n; i++) {
                s += x[i];
                s2 += (double)x[i] * x[i];
                e += fabs((double)x[i] - y[i]);
            }
            double sd = sqrt(s2 / n - (s / n) * (s / n));
            mae[type][dq] = e / n / sd;
            printf("round trip N(0,1), %lld values, blocksize 64, %s%s: mean |error| = %.4f std\n",
                   (long long)n, type == NF4 ? "nf4" : "fp4", dq ? " + double quant" : "", mae[type][dq]);
            ct_quant_free(&st);
        }
    /* NF4 is the better grid for normal weights; double quantization costs little */
    CHECK(mae[0][0] > 0.03 && mae[0][0] < 0.09, "nf4 mean error %.4f std", mae[0][0]);
    CHECK(mae[0][0] < mae[1][0], "nf4 %.4f should beat fp4 %.4f", mae[0][0], mae[1][0]);
    CHECK(mae[0][1] < mae[0][0] * 1.02, "double quant error %.4f vs %.4f", mae[0][1], mae[0][0]);
    free(x);
    free(y);
}

/* Any element range and any row range through the CPU tile path equal the
 * same slice of a full dequantization; thread count does not matter. */
static void test_ranges_and_rows(void) {
    const int64_t shapes[][2] = {{37, 100}, {48, 128}, {5, 7}, {300, 192}};
    ct_test_rng rng = {9};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int dq = 0; dq < 2; dq++) {
            int64_t rows = shapes[s][0], cols = shapes[s][1], n = rows * cols;
            float *x = malloc((size_t)n * sizeof(float)), *full = malloc((size_t)n * sizeof(float));
            float *part = malloc((size_t)n * sizeof(float));
            ct_test_fill(&rng, x, n, 0.05);
            ct_quant_state st;
            ct_quant_params p = {dq ? CT_QUANT_FP4 : CT_QUANT_NF4, 64, dq, NULL};
            CHECK_OK(ct_quant_quantize(&st, x, CT_F32, 2, shapes[s], &p, "w2d"));
            CHECK_OK(ct_quant_dequantize(&st, 0, n, full));
            int64_t where = 0;
            for (int t = 0; t < 50; t++) {
                int64_t e0 = (int64_t)(ct_test_uniform(&rng) * (double)n);
                int64_t cnt = (int64_t)(ct_test_uniform(&rng) * (double)(n - e0 + 1));
                CHECK_OK(ct_quant_dequantize(&st, e0, cnt, part));
                CHECK(same_bits(part, full + e0, cnt, &where), "range [%lld, +%lld) differs at %lld",
                      (long long)e0, (long long)cnt, (long long)where);
            }
            ct_tensor w;
            CHECK_OK(ct_quant_tensor(&w, &st, "w2d"));
            CHECK(w.dtype == CT_NF4 && w.data == st.codes && w.quant == &st && ct_numel(&w) == n,
                  "tensor header");
            for (int t = 0; t < 30; t++) {
                int64_t r0 = (int64_t)(ct_test_uniform(&rng) * (double)rows);
                int64_t nr = 1 + (int64_t)(ct_test_uniform(&rng) * (double)(rows - r0));
                if (nr > rows - r0) nr = rows - r0;
                CHECK_OK(ct_cpu_weight_rows_f32(&w, r0, nr, part));
                CHECK(same_bits(part, full + r0 * cols, nr * cols, &where), "rows [%lld, +%lld) differ",
                      (long long)r0, (long long)nr);
                /* bf16 rows: the f32 values rounded to nearest even, bit for bit
                 * (odd starts, any length: the vector and scalar tails) */
                uint16_t *pb = (uint16_t *)part;
                CHECK_OK(ct_cpu_weight_rows_bf16(&w, r0, nr, pb));
                int64_t bad = -1;
                for (int64_t e = 0; e < nr * cols && bad < 0; e++)
                    if (pb[e] != ct_f32_to_bf16(full[r0 * cols + e])) bad = e;
                CHECK(bad < 0, "bf16 rows [%lld, +%lld) differ at %lld", (long long)r0, (long long)nr,
                      (long long)bad);
            }
            for (int t = 0; t < 30; t++) {
                int64_t e0 = (int64_t)(ct_test_uniform(&rng) * (double)n);
                int64_t cnt = (int64_t)(ct_test_uniform(&rng) * (double)(n - e0 + 1));
                uint16_t *pb = (uint16_t *)part;
                CHECK_OK(ct_quant_dequantize_bf16(&st, e0, cnt, pb));
                int64_t bad = -1;
                for (int64_t e = 0; e < cnt && bad < 0; e++)
                    if (pb[e] != ct_f32_to_bf16(full[e0 + e])) bad = e;
                CHECK(bad < 0, "bf16 range [%lld, +%lld) differs at %lld", (long long)e0, (long long)cnt,
                      (long long)bad);
            }
            free(x);
            free(full);
            free(part);
            ct_quant_free(&st);
        }
    /* thread count: quantize and dequantize a large weight with 1 and 2 threads */
    int64_t shape[2] = {512, 1024}, n = shape[0] * shape[1];
    float *x = malloc((size_t)n * sizeof(float)), *a = malloc((size_t)n * sizeof(float));
    float *b = malloc((size_t)n * sizeof(float));
    ct_test_fill(&rng, x, n, 1.0);
    ct_quant_state s1, s2;
    ct_quant_params p = {CT_QUANT_NF4, 64, true, NULL};
    int keep = omp_get_max_threads();
    omp_set_num_threads(1);
    CHECK_OK(ct_quant_quantize(&s1, x, CT_F32, 2, shape, &p, "t1"));
    CHECK_OK(ct_quant_dequantize(&s1, 0, n, a));
    omp_set_num_threads(2);
    CHECK_OK(ct_quant_quantize(&s2, x, CT_F32, 2, shape, &p, "t2"));
    CHECK_OK(ct_quant_dequantize(&s1, 0, n, b));
    omp_set_num_threads(keep);
    int64_t where = 0;
    CHECK(memcmp(s1.codes, s2.codes, (size_t)n / 2) == 0 &&
              memcmp(s1.qabsmax, s2.qabsmax, (size_t)s1.nblocks) == 0 && s1.offset == s2.offset,
          "quantization depends on the thread count");
    CHECK(same_bits(a, b, n, &where), "dequantization depends on the thread count");
    ct_quant_free(&s1);
    ct_quant_free(&s2);
    free(x);
    free(a);
    free(b);
}

static void test_errors(void) {
    float x[256] = {0};
    int64_t n = 256;
    ct_quant_state st;
    ct_quant_params p = {CT_QUANT_NF4, 48, false, NULL};
    CHECK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "layer.w") == CT_EINPUT &&
              strstr(ct_last_error(), "layer.w") && strstr(ct_last_error(), "48"),
          "blocksize 48: %s", ct_last_error());
    p.blocksize = 8192;
    CHECK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "w") == CT_EINPUT, "blocksize 8192");
    p.blocksize = 64;
    CHECK(ct_quant_quantize(&st, x, CT_I32, 1, &n, &p, "w") == CT_EINPUT, "i32 source");
    int64_t zero = 0;
    CHECK(ct_quant_quantize(&st, x, CT_F32, 1, &zero, &p, "w") == CT_EINPUT, "empty tensor");
    x[77] = NAN;
    CHECK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "bad.w") == CT_EINPUT &&
              strstr(ct_last_error(), "bad.w") && strstr(ct_last_error(), "77"),
          "NaN weight: %s", ct_last_error());
    x[77] = INFINITY;
    CHECK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "w") == CT_EINPUT, "inf weight");
    x[77] = 0.5f;
    CHECK_OK(ct_quant_quantize(&st, x, CT_F32, 1, &n, &p, "w"));
    float out[256];
    CHECK(ct_quant_dequantize(&st, 200, 57, out) == CT_EINPUT, "range past the end");
    CHECK(ct_quant_dequantize(&st, -1, 2, out) == CT_EINPUT, "negative start");
    /* a tensor whose shape does not match its state */
    ct_tensor w;
    CHECK_OK(ct_quant_tensor(&w, &st, "w"));
    w.shape[0] = 300;
    CHECK(ct_cpu_weight_rows_f32(&w, 0, 1, out) == CT_EINPUT, "state/tensor size mismatch");
    w.quant = NULL;
    CHECK(ct_cpu_weight_rows_f32(&w, 0, 1, out) == CT_EINPUT && strstr(ct_last_error(), "w"),
          "missing quant state: %s", ct_last_error());
    ct_quant_state broken = st;
    broken.nblocks = 3;
    CHECK(ct_quant_check(&broken, "w") == CT_EINPUT, "inconsistent block count");
    ct_quant_free(&st);
    CHECK(st.codes == NULL && st.owned == NULL, "free clears the state");
    ct_quant_free(NULL);
    CHECK(ct_quant_type_from_name("fp4") == CT_QUANT_FP4 && ct_quant_type_from_name("int4") == -1,
          "type names");
}

/* lora_linear with an NF4 base equals lora_linear with the dequantized f32
 * base: forward through the op, backward (dx, dA, dB) through the kernel. */
static void test_lora_linear_nf4(void) {
    const ct_backend *be = ct_cpu_backend();
    int64_t T = 9, in = 192, out = 70, r = 4;
    ct_test_rng rng = {5};
    float *w32 = malloc((size_t)(out * in) * sizeof(float));
    ct_test_fill(&rng, w32, out * in, 0.05);
    ct_quant_state st;
    ct_quant_params p = {CT_QUANT_NF4, 64, true, NULL};
    int64_t wshape[2] = {out, in};
    CHECK_OK(ct_quant_quantize(&st, w32, CT_F32, 2, wshape, &p, "wq"));
    ct_tensor wq, wf;
    CHECK_OK(ct_quant_tensor(&wq, &st, "wq"));
    CHECK_OK(ct_quant_dequantize(&st, 0, out * in, w32)); /* the f32 base = dequantized */
    CHECK_OK(ct_tensor_init(&wf, CT_F32, CT_CPU, 2, wshape, w32));
    ct_tensor *x = ct_tensor_new(be, CT_F32, 2, (int64_t[]){T, in}, false);
    ct_tensor *a = ct_tensor_new(be, CT_F32, 2, (int64_t[]){r, in}, false);
    ct_tensor *b = ct_tensor_new(be, CT_F32, 2, (int64_t[]){out, r}, false);
    ct_test_fill(&rng, x->data, T * in, 1.0);
    ct_test_fill(&rng, a->data, r * in, 0.1);
    ct_test_fill(&rng, b->data, out * r, 0.1);
    ct_linear lq = {&wq, a, b, 2.0f, 0.0f, 1, CT_F32}, lf = {&wf, a, b, 2.0f, 0.0f, 1, CT_F32};
    ct_tape tp;
    CHECK_OK(ct_tape_init(&tp, be, 1 << 20));
    ct_tape_set_recording(&tp, false);
    ct_tensor *yq = ct_lora_linear(&tp, x, &lq);
    ct_tensor *yf = ct_lora_linear(&tp, x, &lf);
    CHECK_PTR(yq);
    CHECK_PTR(yf);
    if (yq && yf) {
        float amax = 0;
        for (int64_t i = 0; i < T * out; i++) amax = fmaxf(amax, fabsf(((float *)yf->data)[i]));
        ct_check_close_f("lora_linear nf4 forward", yq->data, yf->data, T * out, 1e-6 * amax, 1e-6);
    }
    /* backward kernels with a random dY */
    float *dy = malloc((size_t)(T * out) * sizeof(float)), *u = malloc((size_t)(T * r) * sizeof(float));
    ct_test_fill(&rng, dy, T * out, 1.0);
    ct_tensor tdy, tu, *dx[2], *da[2], *db[2];
    CHECK_OK(ct_tensor_init(&tdy, CT_F32, CT_CPU, 2, (int64_t[]){T, out}, dy));
    CHECK_OK(ct_tensor_init(&tu, CT_F32, CT_CPU, 2, (int64_t[]){T, r}, u));
    for (int k = 0; k < 2; k++) {
        dx[k] = ct_tensor_new(be, CT_F32, 2, (int64_t[]){T, in}, false);
        da[k] = ct_tensor_new(be, CT_F32, 2, (int64_t[]){r, in}, false);
        db[k] = ct_tensor_new(be, CT_F32, 2, (int64_t[]){out, r}, false);
        memset(dx[k]->data, 0, (size_t)(T * in) * sizeof(float));
        memset(da[k]->data, 0, (size_t)(r * in) * sizeof(float));
        memset(db[k]->data, 0, (size_t)(out * r) * sizeof(float));
        const ct_linear *l = k == 0 ? &lq : &lf;
        ct_tensor *y = ct_tape_new(&tp, CT_F32, 2, (int64_t[]){T, out});
        CHECK_OK(be->lora_linear_fwd(x, l, 0, y, &tu, &tp.scratch));
        CHECK_OK(be->lora_linear_bwd(x, l, 0, &tu, &tdy, dx[k], da[k], db[k], &tp.scratch));
    }
    float amax = 0;
    for (int64_t i = 0; i < T * in; i++) amax = fmaxf(amax, fabsf(((float *)dx[1]->data)[i]));
    ct_check_close_f("lora_linear nf4 dx", dx[0]->data, dx[1]->data, T * in, 1e-6 * amax, 1e-6);
    ct_check_close_f("lora_linear nf4 dA", da[0]->data, da[1]->data, r * in, 1e-6, 1e-6);
    ct_check_close_f("lora_linear nf4 dB", db[0]->data, db[1]->data, out * r, 1e-6, 1e-6);
    for (int k = 0; k < 2; k++) {
        ct_tensor_free(be, dx[k]);
        ct_tensor_free(be, da[k]);
        ct_tensor_free(be, db[k]);
    }
    ct_tape_free(&tp);
    ct_tensor_free(be, x);
    ct_tensor_free(be, a);
    ct_tensor_free(be, b);
    free(dy);
    free(u);
    free(w32);
    ct_quant_free(&st);
}

int main(void) {
    test_tables();
    test_code_search();
    test_dynamic_map();
    test_dynamic_map_pinned();
    test_reference_parity();
    test_threshold_block();
    test_reciprocal_first();
    test_reciprocal_first_nested();
    test_round_trip_stats();
    test_ranges_and_rows();
    test_errors();
    test_lora_linear_nf4();
    return ct_test_finish();
}
