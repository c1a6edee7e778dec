/* bitsandbytes 4-bit weights into a streamed safetensors file (see bnb_write.h). */
#include "bnb_write.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "trainer/io/fsutil.h"

#define CHUNK ((int64_t)1 << 22) /* bytes of codes copied per append */

/* The parts of one weight, in declaration order (bnb's state_dict order). */
typedef enum { P_CODES, P_ABSMAX, P_QMAP, P_NABSMAX, P_NQMAP, P_QSTATE, N_PARTS } part_kind;
static const char *const k_suffix[N_PARTS] = {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                              ".quant_state.bitsandbytes__"}; /* + "nf4" / "fp4" */

typedef struct {
    char *name;        /* X.weight (owned) */
    int64_t shape[2];  /* [rows, cols] */
    void *src;         /* for the load callback */
    int parts_left;    /* parts still to write */
    bool ready;        /* quantized: the fields below are set */
    int64_t nblocks, nn; /* absmax blocks, nested blocks (0 without double quant) */
    float offset;      /* mean absmax (bnb nested_offset) */
    void *small;       /* owned block: nested_absmax [nn] f32 + qabsmax [nblocks] u8, or absmax [nblocks] f32 */
    int64_t spill_off; /* where its codes [(n+1)/2] are in the scratch file */
} weight_out;

typedef struct {
    char *name;        /* output tensor name (owned) */
    size_t weight;     /* index into weights */
    part_kind kind;
} part_out;

struct ct_bnb_writer {
    ct_quant_params p;
    ct_dtype dtype;
    ct_bnb_load_fn load;
    void *load_ctx;
    weight_out *weights;
    size_t n_weights, cap_weights;
    part_out *parts;   /* sorted by name once the save starts */
    size_t n_parts, cap_parts;
    bool sorted;
    int spill_fd;
    int64_t spill_end; /* bytes in use (reset when no codes are pending) */
    int pending_codes; /* quantized weights whose codes are not written yet */
    int n_quantized;
    float code[16];    /* the 4-bit code values (bnb quant_map) */
    float map8[256];   /* the 8-bit map of double quantization (bnb nested_quant_map) */
    unsigned char *stage; /* [CHUNK] */
};

/* bitsandbytes' quant_state JSON (QuantState.as_dict(packed=True), json.dumps
 * spacing and key order). nested_offset is printed "%.8e": nine significant
 * digits give the fp32 offset back exactly, and the text has the same length
 * for every offset >= 0, so the tensor's size is known before quantizing. */
static int state_json(const ct_bnb_writer *bw, char *buf, size_t cap, const int64_t *shape, float offset) {
    const char *dn = bw->dtype == CT_BF16 ? "bfloat16" : bw->dtype == CT_F16 ? "float16" : "float32";
    int n = snprintf(buf, cap, "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [%lld, %lld]",
                     ct_quant_type_name(bw->p.type), bw->p.blocksize, dn, (long long)shape[0], (long long)shape[1]);
    size_t used = buf && (size_t)n < cap ? (size_t)n : cap;
    if (bw->p.double_quant)
        n += snprintf(buf ? buf + used : NULL, buf ? cap - used : 0,
                      ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %.8e}",
                      CT_QUANT_NESTED_BLOCKSIZE, (double)offset);
    else n += snprintf(buf ? buf + used : NULL, buf ? cap - used : 0, "}");
    return n;
}

int ct_bnb_writer_new(const ct_quant_params *p, ct_dtype dtype, const char *scratch_dir, ct_bnb_load_fn load,
                      void *load_ctx, ct_bnb_writer **out) {
    *out = NULL;
    int bs = p->blocksize ? p->blocksize : CT_QUANT_DEFAULT_BLOCKSIZE;
    if (p->type != CT_QUANT_NF4 && p->type != CT_QUANT_FP4)
        return ct_errorf(CT_EINPUT, "unknown 4-bit type %d (nf4 or fp4)", (int)p->type);
    if (bs < 32 || bs > 4096 || (bs & (bs - 1)))
        return ct_errorf(CT_EINPUT, "4-bit blocksize %d is not a power of two in 32..4096 (bitsandbytes uses 64)", bs);
    if (dtype != CT_F32 && dtype != CT_BF16 && dtype != CT_F16)
        return ct_errorf(CT_EINPUT, "4-bit weights of dtype %s: only bf16, fp16, fp32", ct_dtype_name(dtype));
    if (p->map8) return ct_errorf(CT_EINPUT, "a bitsandbytes checkpoint uses the standard 8-bit map");
    ct_bnb_writer *bw = calloc(1, sizeof *bw);
    if (!bw) return ct_errorf(CT_ERUNTIME, "out of memory");
    bw->p = *p, bw->p.blocksize = bs, bw->dtype = dtype, bw->load = load, bw->load_ctx = load_ctx;
    ct_quant_code_table(bw->p.type, bw->code);
    ct_quant_dynamic_map(bw->map8);
    char path[CT_PATH_MAX];
    int rc = ct_path_join(path, sizeof path, scratch_dir, ".codes.scratch");
    /* created and unlinked at once, so it vanishes with the process whatever happens */
    bw->spill_fd = rc ? -1 : open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (rc == CT_OK && bw->spill_fd < 0) rc = ct_errorf(CT_ERUNTIME, "%s: cannot create a scratch file", path);
    if (rc == CT_OK) unlink(path);
    if (rc == CT_OK && !(bw->stage = malloc((size_t)CHUNK))) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    if (rc) {
        ct_bnb_writer_free(bw);
        return rc;
    }
    *out = bw;
    return CT_OK;
}

void ct_bnb_writer_free(ct_bnb_writer *bw) {
    if (!bw) return;
    for (size_t i = 0; i < bw->n_weights; i++) free(bw->weights[i].name), free(bw->weights[i].small);
    for (size_t i = 0; i < bw->n_parts; i++) free(bw->parts[i].name);
    if (bw->spill_fd >= 0) close(bw->spill_fd);
    free(bw->weights), free(bw->parts), free(bw->stage), free(bw);
}

int ct_bnb_writer_count(const ct_bnb_writer *bw) { return bw ? bw->n_quantized : 0; }

/* ------------------------------------------------------------ declaring */

static int grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return CT_OK;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need) n *= 2;
    void *p = realloc(*arr, n * elem);
    if (!p) return ct_errorf(CT_ERUNTIME, "out of memory");
    *arr = p, *cap = n;
    return CT_OK;
}

int ct_bnb_writer_add(ct_bnb_writer *bw, ct_st_writer *w, const char *name, const int64_t shape[2], void *src) {
    CT_TRY(grow((void **)&bw->weights, &bw->cap_weights, bw->n_weights + 1, sizeof *bw->weights));
    CT_TRY(grow((void **)&bw->parts, &bw->cap_parts, bw->n_parts + N_PARTS, sizeof *bw->parts));
    size_t wi = bw->n_weights;
    weight_out *x = &bw->weights[wi];
    memset(x, 0, sizeof *x);
    if (!(x->name = strdup(name))) return ct_errorf(CT_ERUNTIME, "out of memory");
    bw->n_weights++;
    x->shape[0] = shape[0], x->shape[1] = shape[1], x->src = src;
    bool dq = bw->p.double_quant;
    int64_t n = shape[0] * shape[1], nblocks = (n + bw->p.blocksize - 1) / bw->p.blocksize;
    int64_t nn = dq ? (nblocks + CT_QUANT_NESTED_BLOCKSIZE - 1) / CT_QUANT_NESTED_BLOCKSIZE : 0;
    const struct {
        ct_st_dtype dt;
        int ndim;
        int64_t shape[2];
    } spec[N_PARTS] = {
        {CT_ST_U8, 2, {(n + 1) / 2, 1}},                                  /* X.weight: packed codes */
        {dq ? CT_ST_U8 : CT_ST_F32, 1, {nblocks, 0}},                     /* .absmax (8-bit codes of absmax - offset) */
        {CT_ST_F32, 1, {16, 0}},                                          /* .quant_map: the 16 code values */
        {CT_ST_F32, 1, {nn, 0}},                                          /* .nested_absmax */
        {CT_ST_F32, 1, {256, 0}},                                         /* .nested_quant_map: the 8-bit map */
        {CT_ST_U8, 1, {state_json(bw, NULL, 0, shape, 0.0f), 0}},        /* .quant_state.bitsandbytes__nf4 */
    };
    for (int k = 0; k < N_PARTS; k++) {
        if (!dq && (k == P_NABSMAX || k == P_NQMAP)) continue;
        part_out *po = &bw->parts[bw->n_parts];
        size_t len = strlen(name) + strlen(k_suffix[k]) + 4;
        if (!(po->name = malloc(len))) return ct_errorf(CT_ERUNTIME, "out of memory");
        snprintf(po->name, len, "%s%s%s", name, k_suffix[k], k == P_QSTATE ? ct_quant_type_name(bw->p.type) : "");
        po->weight = wi, po->kind = (part_kind)k;
        bw->n_parts++;
        x->parts_left++;
        CT_TRY(ct_st_writer_add(w, po->name, spec[k].dt, spec[k].ndim, spec[k].shape, NULL));
    }
    bw->sorted = false;
    return CT_OK;
}

/* ------------------------------------------------------------ producing */

/* pwrite/pread of all n bytes at off. */
static int spill_io(ct_bnb_writer *bw, bool write, void *buf, size_t n, int64_t off) {
    for (size_t k = 0; k < n;) {
        ssize_t m = write ? pwrite(bw->spill_fd, (char *)buf + k, n - k, (off_t)(off + (int64_t)k))
                          : pread(bw->spill_fd, (char *)buf + k, n - k, (off_t)(off + (int64_t)k));
        if (m <= 0) return ct_errorf(CT_ERUNTIME, "scratch file of the 4-bit codes: %s failed (disk full?)",
                                     write ? "write" : "read");
        k += (size_t)m;
    }
    return CT_OK;
}

/* Quantizes a weight (rounded to the output dtype): codes to the scratch
 * file, absmax arrays and offset into x. */
static int quantize_weight(ct_bnb_writer *bw, weight_out *x) {
    float *W = NULL;
    CT_TRY(bw->load(bw->load_ctx, x->src, &W));
    int64_t n = x->shape[0] * x->shape[1];
    /* The values the unquantized output would hold: quantizing them equals
     * quantize-on-load of that output (bf16/f16 -> f32 is exact). */
    if (bw->dtype != CT_F32) {
        bool bf = bw->dtype == CT_BF16;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            W[i] = bf ? ct_bf16_to_f32(ct_f32_to_bf16(W[i])) : ct_f16_to_f32(ct_f32_to_f16(W[i]));
    }
    ct_quant_state q;
    CT_TRY(ct_quant_quantize(&q, W, CT_F32, 2, x->shape, &bw->p, x->name));
    x->nblocks = q.nblocks;
    x->nn = q.nested ? (q.nblocks + q.nested_blocksize - 1) / q.nested_blocksize : 0;
    x->offset = q.nested ? q.offset : 0.0f;
    x->spill_off = bw->spill_end;
    size_t small = q.nested ? (size_t)x->nn * sizeof(float) + (size_t)x->nblocks : (size_t)x->nblocks * sizeof(float);
    int rc = spill_io(bw, true, q.codes, (size_t)(q.n + 1) / 2, x->spill_off);
    x->small = rc ? NULL : malloc(small);
    if (rc == CT_OK && !x->small) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    if (rc == CT_OK) {
        if (q.nested) {
            memcpy(x->small, q.nested_absmax, (size_t)x->nn * sizeof(float));
            memcpy((float *)x->small + x->nn, q.qabsmax, (size_t)x->nblocks);
        } else memcpy(x->small, q.absmax, small);
        bw->spill_end += (q.n + 1) / 2;
        bw->pending_codes++;
        x->ready = true;
        bw->n_quantized++;
    }
    ct_quant_free(&q);
    return rc;
}

/* Appends a weight's codes from the scratch file, in chunks. */
static int emit_codes(ct_bnb_writer *bw, ct_st_writer *w, const weight_out *x) {
    int64_t n = (x->shape[0] * x->shape[1] + 1) / 2;
    for (int64_t k = 0; k < n; k += CHUNK) {
        size_t m = (size_t)(n - k < CHUNK ? n - k : CHUNK);
        CT_TRY(spill_io(bw, false, bw->stage, m, x->spill_off + k));
        CT_TRY(ct_st_writer_append(w, bw->stage, m));
    }
    if (--bw->pending_codes == 0) bw->spill_end = 0; /* nothing pending: reuse the file from the start */
    return CT_OK;
}

static int write_part(ct_bnb_writer *bw, ct_st_writer *w, weight_out *x, part_kind kind) {
    if (!x->ready) CT_TRY(quantize_weight(bw, x));
    bool dq = bw->p.double_quant;
    char json[512];
    int len = 0;
    switch (kind) {
    case P_CODES: CT_TRY(emit_codes(bw, w, x)); break;
    case P_ABSMAX:
        if (dq) CT_TRY(ct_st_writer_append(w, (float *)x->small + x->nn, (size_t)x->nblocks));
        else CT_TRY(ct_st_writer_append(w, x->small, (size_t)x->nblocks * sizeof(float)));
        break;
    case P_QMAP: CT_TRY(ct_st_writer_append(w, bw->code, sizeof bw->code)); break;
    case P_NABSMAX: CT_TRY(ct_st_writer_append(w, x->small, (size_t)x->nn * sizeof(float))); break;
    case P_NQMAP: CT_TRY(ct_st_writer_append(w, bw->map8, sizeof bw->map8)); break;
    case P_QSTATE:
        len = state_json(bw, json, sizeof json, x->shape, x->offset);
        if (len != state_json(bw, NULL, 0, x->shape, 0.0f) || (size_t)len >= sizeof json)
            return ct_errorf(CT_ERUNTIME, "%s: quant_state text changed length (offset %g)", x->name,
                             (double)x->offset);
        CT_TRY(ct_st_writer_append(w, json, (size_t)len));
        break;
    default: return ct_errorf(CT_ERUNTIME, "bad part kind %d", (int)kind);
    }
    if (--x->parts_left == 0) { /* all parts written: drop the small arrays */
        free(x->small);
        x->small = NULL;
        x->ready = false;
    }
    return CT_OK;
}

static int cmp_part(const void *a, const void *b) {
    return strcmp(((const part_out *)a)->name, ((const part_out *)b)->name);
}

int ct_bnb_writer_fill(ct_bnb_writer *bw, ct_st_writer *w, const ct_st_tensor *t, bool *handled) {
    *handled = false;
    if (!bw || !bw->n_parts) return CT_OK;
    if (!bw->sorted) qsort(bw->parts, bw->n_parts, sizeof *bw->parts, cmp_part), bw->sorted = true;
    part_out key = {.name = (char *)t->name};
    part_out *hit = bsearch(&key, bw->parts, bw->n_parts, sizeof *bw->parts, cmp_part);
    if (!hit) return CT_OK;
    *handled = true;
    return write_part(bw, w, &bw->weights[hit->weight], hit->kind);
}

/* ------------------------------------------------------------ config.json */

json_t *ct_bnb_quantization_config(const ct_quant_params *p, bool quant_output) {
    json_t *skip = quant_output ? json_array() : json_pack("[s]", "output");
    return json_pack("{sbsbsssssssbsbsbsosfsbsbss}", "_load_in_4bit", 1, "_load_in_8bit", 0,
                     "bnb_4bit_compute_dtype", "bfloat16", "bnb_4bit_quant_storage", "uint8",
                     "bnb_4bit_quant_type", ct_quant_type_name(p->type), "bnb_4bit_use_double_quant",
                     (int)p->double_quant, "llm_int8_enable_fp32_cpu_offload", 0, "llm_int8_has_fp16_weight", 0,
                     "llm_int8_skip_modules", skip, "llm_int8_threshold", 6.0, "load_in_4bit", 1, "load_in_8bit", 0,
                     "quant_method", "bitsandbytes");
}
