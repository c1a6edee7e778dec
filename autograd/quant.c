/* NF4/FP4 blockwise quantization and dequantization, bit-compatible with
 * bitsandbytes' CUDA kernels (see quant_tables.h for the scalar steps and the
 * exact rules; quant.h for the layout).
 *
 * Quantize: one pass over absmax blocks (OpenMP, each block independent), then
 * for double quantization offset = mean(absmax) and the 8-bit step over
 * blocks of 256 absmax values. The mean is summed in double in block order and
 * rounded to fp32 once; torch sums fp32 in its own order, so bnb's offset can
 * differ from ours in the last bit (and then so can the nested values: the
 * state holds whatever offset it was made with, and dequantization uses it).
 *
 * Dequantize: per block, the 16 code values are scaled by the block's absmax
 * once (t[c] = code[c] * absmax, the same single rounding as bnb's
 * code[c] * absmax), then every element is a table lookup. With AVX-512 the
 * 16-entry table sits in one register and 16 elements are one permute. */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "ct_error.h"
#include "ct_inline.h"
#include "quant_tables.h"

#define MAX_BLOCKSIZE 4096
#define MIN_BLOCKSIZE 32

static const char *nm(const char *name) { return name ? name : "(unnamed weight)"; }

const char *ct_quant_type_name(ct_quant_type type) { return type == CT_QUANT_FP4 ? "fp4" : "nf4"; }

int ct_quant_type_from_name(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "nf4")) return CT_QUANT_NF4;
    if (!strcmp(name, "fp4")) return CT_QUANT_FP4;
    return -1;
}

void ct_quant_code_table(ct_quant_type type, float code[16]) {
    const float nf4[16] = CT_NF4_VALUES, fp4[16] = CT_FP4_VALUES;
    memcpy(code, type == CT_QUANT_FP4 ? fp4 : nf4, sizeof nf4);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void ct_quant_dynamic_map(float map[256]) {
    /* bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7,
     * total_bits=8): for i in 0..6: b = torch.linspace(0.1, 1, 2^i + 1) (fp32);
     * means = (b[:-1] + b[1:]) / 2; data += ±10^(i-6) * means; then 0 and 1.0,
     * sorted. torch's CPU linspace (ATen linspace_kernel, scalar loop): step =
     * (end - start) / (steps - 1) rounded to fp32; element j is start + step*j
     * for j < steps/2 and end - step*(steps-1-j) above, each compiled into one
     * fused multiply-add in the AVX2/AVX-512 kernels that x86 torch runs, so
     * each element rounds once: fmaf, not a separate product and sum (that
     * differs from bitsandbytes' map in 42 entries by 1-2 ulp). The scale is the
     * python float 10^(i-6) cast to fp32; mean and product are fp32.
     * Pinned bit for bit by tests/data/bnb_dynamic_map.txt. */
    double data[256];
    int k = 0;
    for (int i = 0; i < 7; i++) {
        int steps = (1 << i) + 1;
        const float start = 0.1f, end = 1.0f;
        float step = (end - start) / (float)(steps - 1);
        float b[65]; /* [steps] boundaries */
        for (int j = 0; j < steps; j++)
            b[j] = j < steps / 2 ? fmaf(step, (float)j, start)
                                 : fmaf(-step, (float)(steps - 1 - j), end);
        float scale = (float)pow(10.0, (double)(i - 6)); /* python float, cast to the fp32 tensor's type */
        for (int j = 0; j + 1 < steps; j++) {
            float mean = (b[j] + b[j + 1]) / 2.0f;
            float v = scale * mean;
            data[k++] = v;
            data[k++] = -v;
        }
    }
    data[k++] = 0.0;
    data[k++] = 1.0;
    qsort(data, 256, sizeof data[0], cmp_double);
    for (int i = 0; i < 256; i++) map[i] = (float)data[i];
}

/* ---- checks ---- */

static bool blocksize_ok(int bs) {
    return bs >= MIN_BLOCKSIZE && bs <= MAX_BLOCKSIZE && (bs & (bs - 1)) == 0;
}

int ct_quant_check(const ct_quant_state *st, const char *name) {
    if (!st) return ct_errorf(CT_EINPUT, "%s: no quantization state attached", nm(name));
    if (st->type != CT_QUANT_NF4 && st->type != CT_QUANT_FP4)
        return ct_errorf(CT_EINPUT, "%s: unknown 4-bit quant type %d (expected nf4 or fp4)",
                         nm(name), (int)st->type);
    if (!blocksize_ok(st->blocksize))
        return ct_errorf(CT_EINPUT, "%s: blocksize %d is not a power of two in [%d, %d]", nm(name),
                         st->blocksize, MIN_BLOCKSIZE, MAX_BLOCKSIZE);
    if (st->ndim < 1 || st->ndim > CT_MAX_DIMS)
        return ct_errorf(CT_EINPUT, "%s: quantized weight has %d dims (1..%d)", nm(name), st->ndim,
                         CT_MAX_DIMS);
    int64_t n = 1;
    for (int d = 0; d < st->ndim; d++) {
        if (st->shape[d] < 1 || n > INT64_MAX / st->shape[d])
            return ct_errorf(CT_EINPUT, "%s: bad quantized shape (dim %d = %lld)", nm(name), d,
                             (long long)st->shape[d]);
        n *= st->shape[d];
    }
    if (n != st->n || st->nblocks != (n + st->blocksize - 1) / st->blocksize)
        return ct_errorf(CT_EINPUT, "%s: quant state holds %lld elements in %lld blocks, its shape says "
                         "%lld elements: the state does not belong to this weight",
                         nm(name), (long long)st->n, (long long)st->nblocks, (long long)n);
    if (!st->codes)
        return ct_errorf(CT_EINPUT, "%s: quant state has no 4-bit codes", nm(name));
    if (!st->nested && !st->absmax)
        return ct_errorf(CT_EINPUT, "%s: quant state has no absmax", nm(name));
    if (st->nested && (!st->qabsmax || !st->nested_absmax || st->nested_blocksize < 1 ||
                       !isfinite(st->offset)))
        return ct_errorf(CT_EINPUT, "%s: double-quantized state lacks absmax codes, nested absmax, "
                         "a nested blocksize or a finite offset", nm(name));
    return CT_OK;
}

/* ---- quantize ---- */

/* src[i0 .. i0+m) as f32 into buf[m]. */
static void load_f32(const void *src, ct_dtype dt, int64_t i0, int64_t m, float *buf) {
    if (dt == CT_F32) {
        memcpy(buf, (const float *)src + i0, (size_t)m * sizeof(float));
    } else if (dt == CT_BF16) {
        const uint16_t *s = (const uint16_t *)src + i0;
        for (int64_t k = 0; k < m; k++) buf[k] = ct_bf16_to_f32(s[k]);
    } else {
        const uint16_t *s = (const uint16_t *)src + i0;
        for (int64_t k = 0; k < m; k++) buf[k] = ct_f16_to_f32(s[k]);
    }
}

/* One block of m elements starting at i0 (even): absmax, then the packed codes.
 * Returns the in-block index of the first non-finite value, or -1. */
static int64_t quantize_block(const float *x, int64_t m, ct_quant_type type, float *absmax,
                              uint8_t *codes) {
    /* max |x| on the bit patterns: for sign-cleared floats the integer order is
     * the float order, with inf and NaN above every finite value (and an
     * integer max reduction vectorizes, a float one does not without -ffast-math) */
    uint32_t amax_bits = 0;
    for (int64_t k = 0; k < m; k++) {
        uint32_t u;
        memcpy(&u, &x[k], 4);
        u &= 0x7fffffffu;
        amax_bits = u > amax_bits ? u : amax_bits;
    }
    int64_t bad = -1;
    for (int64_t k = 0; amax_bits >= 0x7f800000u && k < m && bad < 0; k++)
        if (!(fabsf(x[k]) <= FLT_MAX)) bad = k;
    float amax;
    memcpy(&amax, &amax_bits, 4);
    *absmax = amax;
    float inv = 1.0f / amax; /* bnb: reciprocal first, then x * inv */
    uint8_t q[MAX_BLOCKSIZE + 1]; /* [m rounded up to even] codes, one per element */
    if (type == CT_QUANT_NF4)
        for (int64_t k = 0; k < m; k++) q[k] = (uint8_t)ct_nf4_quantize(x[k] * inv);
    else
        for (int64_t k = 0; k < m; k++) q[k] = (uint8_t)ct_fp4_quantize(x[k] * inv);
    if (m & 1) /* bnb loads the missing partner as 0.0f and quantizes it too */
        q[m] = (uint8_t)(type == CT_QUANT_NF4 ? ct_nf4_quantize(0.0f * inv)
                                               : ct_fp4_quantize(0.0f * inv));
    for (int64_t k = 0; k < (m + 1) / 2; k++) codes[k] = (uint8_t)(q[2 * k] << 4 | q[2 * k + 1]);
    return bad;
}

/* Double quantization of absmax[nblocks] into st (map8 already set). */
static void quantize_absmax(ct_quant_state *st, const float *absmax) {
    int64_t nb = st->nblocks, bs2 = st->nested_blocksize;
    double sum = 0.0;
    for (int64_t b = 0; b < nb; b++) sum += (double)absmax[b];
    st->offset = (float)(sum / (double)nb);
    int64_t nn = (nb + bs2 - 1) / bs2;
#pragma omp parallel for schedule(static) if (nb > 4096)
    for (int64_t j = 0; j < nn; j++) {
        int64_t b0 = j * bs2, m = nb - b0 < bs2 ? nb - b0 : bs2;
        float d[CT_QUANT_NESTED_BLOCKSIZE]; /* [m] absmax - offset, as bnb's absmax -= offset */
        float amax = 0.0f;
        for (int64_t k = 0; k < m; k++) {
            d[k] = absmax[b0 + k] - st->offset;
            float a = fabsf(d[k]);
            amax = a > amax ? a : amax;
        }
        st->nested_absmax[j] = amax;
        float inv = 1.0f / amax; /* an all-equal group gives NaN -> code 0 -> dequant = offset */
        for (int64_t k = 0; k < m; k++)
            st->qabsmax[b0 + k] = (uint8_t)ct_dyn8_quantize(st->map8, d[k] * inv);
    }
}

int ct_quant_quantize(ct_quant_state *st, const void *src, ct_dtype src_dt, int ndim,
                      const int64_t *shape, const ct_quant_params *p, const char *name) {
    memset(st, 0, sizeof *st);
    int bs = p->blocksize ? p->blocksize : CT_QUANT_DEFAULT_BLOCKSIZE;
    if (p->type != CT_QUANT_NF4 && p->type != CT_QUANT_FP4)
        return ct_errorf(CT_EINPUT, "%s: unknown 4-bit quant type %d (use nf4 or fp4)", nm(name),
                         (int)p->type);
    if (!blocksize_ok(bs))
        return ct_errorf(CT_EINPUT, "%s: blocksize %d must be a power of two in [%d, %d] (bnb uses 64)",
                         nm(name), bs, MIN_BLOCKSIZE, MAX_BLOCKSIZE);
    if (src_dt != CT_F32 && src_dt != CT_BF16 && src_dt != CT_F16)
        return ct_errorf(CT_EINPUT, "%s: cannot quantize a %s tensor (f32, bf16 or f16 only)", nm(name),
                         ct_dtype_name(src_dt));
    if (ndim < 1 || ndim > CT_MAX_DIMS)
        return ct_errorf(CT_EINPUT, "%s: %d dims (1..%d)", nm(name), ndim, CT_MAX_DIMS);
    st->type = p->type;
    st->blocksize = bs;
    st->src_dtype = src_dt;
    st->ndim = ndim;
    st->n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 1 || st->n > INT64_MAX / 8 / shape[d])
            return ct_errorf(CT_EINPUT, "%s: cannot quantize shape dim %d = %lld (empty or too large)",
                             nm(name), d, (long long)shape[d]);
        st->shape[d] = shape[d];
        st->n *= shape[d];
    }
    st->nblocks = (st->n + bs - 1) / bs;
    ct_quant_code_table(p->type, st->code);
    st->nested = p->double_quant;
    st->nested_blocksize = CT_QUANT_NESTED_BLOCKSIZE;
    if (st->nested) {
        if (p->map8) memcpy(st->map8, p->map8, sizeof st->map8);
        else ct_quant_dynamic_map(st->map8);
    }

    /* One allocation: f32 arrays first (alignment), then the byte arrays. */
    int64_t nn = (st->nblocks + st->nested_blocksize - 1) / st->nested_blocksize;
    size_t f32_count = (size_t)(st->nested ? nn : st->nblocks);
    size_t code_bytes = (size_t)((st->n + 1) / 2);
    size_t q_bytes = st->nested ? (size_t)st->nblocks : 0;
    char *mem = malloc(f32_count * sizeof(float) + code_bytes + q_bytes);
    float *absmax = st->nested ? malloc((size_t)st->nblocks * sizeof(float)) : (float *)mem;
    if (!mem || !absmax) {
        int64_t n = st->n;
        free(mem);
        if (st->nested) free(absmax);
        memset(st, 0, sizeof *st);
        return ct_errorf(CT_ERUNTIME, "%s: out of memory quantizing %lld elements", nm(name),
                         (long long)n);
    }
    st->owned = mem;
    st->codes = (uint8_t *)(mem + f32_count * sizeof(float));
    if (st->nested) {
        st->nested_absmax = (float *)mem;
        st->qabsmax = st->codes + code_bytes;
    } else {
        st->absmax = absmax;
    }

    int64_t n = st->n, first_bad = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n > 65536)
    for (int64_t b = 0; b < st->nblocks; b++) {
        int64_t i0 = b * bs, m = n - i0 < bs ? n - i0 : bs;
        float x[MAX_BLOCKSIZE]; /* [m] the block as f32 */
        load_f32(src, src_dt, i0, m, x);
        int64_t bad = quantize_block(x, m, st->type, &absmax[b], st->codes + i0 / 2);
        if (bad >= 0 && i0 + bad < first_bad) first_bad = i0 + bad;
    }
    if (first_bad < n) {
        if (st->nested) free(absmax);
        ct_quant_free(st);
        return ct_errorf(CT_EINPUT, "%s: element %lld is not finite: the weights are corrupt "
                         "(re-download or re-export the checkpoint)", nm(name), (long long)first_bad);
    }
    if (st->nested) {
        quantize_absmax(st, absmax);
        free(absmax);
    }
    return CT_OK;
}

/* ---- dequantize ---- */

static inline float block_absmax(const ct_quant_state *st, int64_t b) {
    if (!st->nested) return st->absmax[b];
    return ct_dyn8_absmax(st->map8[st->qabsmax[b]], st->nested_absmax[b / st->nested_blocksize],
                          st->offset);
}

int ct_quant_absmax(const ct_quant_state *st, int64_t b0, int64_t count, float *dst) {
    if (b0 < 0 || count < 0 || b0 > st->nblocks - count)
        return ct_errorf(CT_EINPUT, "absmax blocks [%lld, %lld) outside the %lld blocks of the weight",
                         (long long)b0, (long long)(b0 + count), (long long)st->nblocks);
    for (int64_t b = 0; b < count; b++) dst[b] = block_absmax(st, b0 + b);
    return CT_OK;
}

/* Elements [s, e) of one block, t[16] = the block's scaled code values; out[e - s]. */
static void dequant_span(const uint8_t *codes, const float *t, int64_t s, int64_t e, float *out) {
    int64_t i = s;
    if (i < e && (i & 1)) { /* odd start: the low nibble of a byte */
        *out++ = t[codes[i >> 1] & 15];
        i++;
    }
#ifdef __AVX512F__
    __m512 tab = _mm512_loadu_ps(t);
    const __m128i lo_mask = _mm_set1_epi8(0x0f);
    for (; i + 16 <= e; i += 16, out += 16) {
        /* 8 bytes -> 16 nibbles in element order (high nibble first) -> 16 lookups */
        __m128i b = _mm_loadl_epi64((const __m128i *)(codes + (i >> 1)));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo_mask);
        __m128i lo = _mm_and_si128(b, lo_mask);
        __m512i idx = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
        _mm512_storeu_ps(out, _mm512_permutexvar_ps(idx, tab));
    }
#endif
    for (; i + 1 < e; i += 2, out += 2) {
        uint8_t c = codes[i >> 1];
        out[0] = t[c >> 4];
        out[1] = t[c & 15];
    }
    if (i < e) *out = t[codes[i >> 1] >> 4];
}

/* dequant_span with bf16 table and output. */
static void dequant_span_bf16(const uint8_t *codes, const uint16_t *t, int64_t s, int64_t e, uint16_t *out) {
    int64_t i = s;
    if (i < e && (i & 1)) {
        *out++ = t[codes[i >> 1] & 15];
        i++;
    }
#ifdef __AVX512BW__
    __m512i tab = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)t)); /* lanes 0..15 */
    const __m128i lo_mask = _mm_set1_epi8(0x0f);
    for (; i + 32 <= e; i += 32, out += 32) {
        /* 16 bytes -> 32 nibbles in element order -> 32 lookups */
        __m128i b = _mm_loadu_si128((const __m128i *)(codes + (i >> 1)));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo_mask);
        __m128i lo = _mm_and_si128(b, lo_mask);
        __m256i nib = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
        _mm512_storeu_si512(out, _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(nib), tab));
    }
#endif
    for (; i + 1 < e; i += 2, out += 2) {
        uint8_t c = codes[i >> 1];
        out[0] = t[c >> 4];
        out[1] = t[c & 15];
    }
    if (i < e) *out = t[codes[i >> 1] >> 4];
}

static int check_range(const ct_quant_state *st, int64_t e0, int64_t count) {
    if (e0 < 0 || count < 0 || e0 > st->n - count)
        return ct_errorf(CT_EINPUT, "dequantize: elements [%lld, %lld) outside the %lld of the weight",
                         (long long)e0, (long long)(e0 + count), (long long)st->n);
    return CT_OK;
}

int ct_quant_dequantize_bf16(const ct_quant_state *st, int64_t e0, int64_t count, uint16_t *dst) {
    CT_TRY(check_range(st, e0, count));
    if (count == 0) return CT_OK;
    int64_t bs = st->blocksize, e1 = e0 + count;
    int64_t b0 = e0 / bs, b1 = (e1 - 1) / bs;
#pragma omp parallel for schedule(static) if (count >= 65536)
    for (int64_t b = b0; b <= b1; b++) {
        float scale = block_absmax(st, b);
        uint16_t t[16]; /* code values scaled by this block's absmax, rounded to bf16 */
        for (int c = 0; c < 16; c++) t[c] = ct_f32_to_bf16(st->code[c] * scale);
        int64_t s = b * bs > e0 ? b * bs : e0;
        int64_t e = (b + 1) * bs < e1 ? (b + 1) * bs : e1;
        dequant_span_bf16(st->codes, t, s, e, dst + (s - e0));
    }
    return CT_OK;
}

int ct_quant_dequantize(const ct_quant_state *st, int64_t e0, int64_t count, float *dst) {
    CT_TRY(check_range(st, e0, count));
    if (count == 0) return CT_OK;
    int64_t bs = st->blocksize, e1 = e0 + count;
    int64_t b0 = e0 / bs, b1 = (e1 - 1) / bs; /* blocks touched, inclusive */
#pragma omp parallel for schedule(static) if (count >= 65536)
    for (int64_t b = b0; b <= b1; b++) {
        float scale = block_absmax(st, b);
        float t[16]; /* code values scaled by this block's absmax */
        for (int c = 0; c < 16; c++) t[c] = st->code[c] * scale;
        int64_t s = b * bs > e0 ? b * bs : e0;
        int64_t e = (b + 1) * bs < e1 ? (b + 1) * bs : e1;
        dequant_span(st->codes, t, s, e, dst + (s - e0));
    }
    return CT_OK;
}

/* ---- tensors and lifetime ---- */

int ct_quant_tensor(ct_tensor *t, const ct_quant_state *st, const char *name) {
    CT_TRY(ct_quant_check(st, name));
    CT_TRY(ct_tensor_init(t, CT_NF4, CT_CPU, st->ndim, st->shape, st->codes));
    t->quant = st;
    t->name = name;
    return CT_OK;
}

void ct_quant_free(ct_quant_state *st) {
    if (!st) return;
    free(st->owned);
    memset(st, 0, sizeof *st);
}
