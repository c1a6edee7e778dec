/* bitsandbytes 4-bit weights in a safetensors checkpoint (docs/DESIGN.md, "bitsandbytes 4-bit checkpoints"),
 * as transformers saves a model loaded with load_in_4bit: for a weight X.weight
 *   X.weight                                u8 [(n+1)/2, 1]   packed codes
 *   X.weight.absmax                         u8 [nblocks] (double quant) or f32
 *   X.weight.quant_map                      f32 [16]
 *   X.weight.nested_absmax                  f32 [ceil(nblocks/256)] (double quant)
 *   X.weight.nested_quant_map               f32 [256]               (double quant)
 *   X.weight.quant_state.bitsandbytes__nf4  u8 JSON: quant_type, blocksize,
 *       dtype, shape, and with double quant nested_blocksize, nested_dtype,
 *       nested_offset.
 * The state borrows the mapped arrays (codes, absmax codes, f32 absmax when
 * aligned); the 16- and 256-entry maps are copied into the state itself. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "autograd/ct_error.h"
#include "trainer/model/model_internal.h"

size_t ct_st_index_of(const ct_st_file *f, const ct_st_tensor *t) {
    /* ct_st_at returns elements of one array in file order. */
    return (size_t)(t - ct_st_at(f, 0));
}

static const ct_st_tensor *part(const ct_st_file *f, const char *wname, const char *suffix) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", wname, suffix);
    return ct_st_find(f, name);
}

bool ct_bnb_present(const ct_st_file *f, const char *wname) {
    return part(f, wname, ".quant_state.bitsandbytes__nf4") || part(f, wname, ".quant_state.bitsandbytes__fp4");
}

static const char *path_of(const ct_st_file *f, const ct_st_tensor *t) {
    const char *p = ct_st_shard_path(f, t ? t->shard : 0);
    return p ? p : "?";
}

/* A part that must exist with this dtype and element count. */
static int need_part(const ct_st_file *f, const char *wname, const char *suffix, ct_st_dtype dt, int64_t numel,
                     bool *used, const ct_st_tensor **out) {
    const ct_st_tensor *t = part(f, wname, suffix);
    if (!t)
        return ct_errorf(CT_EINPUT, "%s: 4-bit weight '%s' lacks its tensor '%s%s' (incomplete bitsandbytes "
                         "checkpoint)", path_of(f, NULL), wname, wname, suffix);
    used[ct_st_index_of(f, t)] = true;
    if (t->dtype != dt || t->numel != numel)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s' is %s with %lld elements, expected %s with %lld",
                         path_of(f, t), t->name, ct_st_dtype_name(t->dtype), (long long)t->numel,
                         ct_st_dtype_name(dt), (long long)numel);
    *out = t;
    return CT_OK;
}

static int dtype_from_torch(const char *s, ct_dtype *dt) {
    if (!strncmp(s, "torch.", 6)) s += 6;
    if (!strcmp(s, "bfloat16")) *dt = CT_BF16;
    else if (!strcmp(s, "float16")) *dt = CT_F16;
    else if (!strcmp(s, "float32")) *dt = CT_F32;
    else return -1;
    return CT_OK;
}

/* The quant_state JSON: type, blocksize, dtype, shape, nested fields. */
static int parse_state(const ct_st_file *f, const ct_st_tensor *t, const char *wname, ct_quant_type want_type,
                       int64_t rows, int64_t cols, ct_bnb_weight *bw) {
    json_error_t err;
    json_t *j = json_loadb(t->data, t->nbytes, 0, &err);
    if (!json_is_object(j)) {
        json_decref(j);
        return ct_errorf(CT_EINPUT, "%s: tensor '%s' does not hold a JSON object (%s)", path_of(f, t), t->name,
                         err.text);
    }
    const char *qt = json_string_value(json_object_get(j, "quant_type"));
    const json_t *bs = json_object_get(j, "blocksize"), *shape = json_object_get(j, "shape");
    const char *dts = json_string_value(json_object_get(j, "dtype"));
    int rc = CT_OK;
    if (!qt || ct_quant_type_from_name(qt) != (int)want_type)
        rc = ct_errorf(CT_EINPUT, "%s: '%s': quant_type '%s' does not match the key's %s", path_of(f, t), t->name,
                       qt ? qt : "(missing)", ct_quant_type_name(want_type));
    else if (!json_is_integer(bs) || json_integer_value(bs) < 1 || json_integer_value(bs) > 1 << 20)
        rc = ct_errorf(CT_EINPUT, "%s: '%s': blocksize missing or not a positive integer", path_of(f, t), t->name);
    else if (!dts || dtype_from_torch(dts, &bw->src_dtype))
        rc = ct_errorf(CT_EINPUT, "%s: '%s': dtype '%s' is not bfloat16, float16 or float32", path_of(f, t),
                       t->name, dts ? dts : "(missing)");
    else if (!json_is_array(shape) || json_array_size(shape) != 2 ||
             json_integer_value(json_array_get(shape, 0)) != rows ||
             json_integer_value(json_array_get(shape, 1)) != cols)
        rc = ct_errorf(CT_EINPUT, "%s: '%s': shape is not [%lld, %lld] as config.json implies for %s",
                       path_of(f, t), t->name, (long long)rows, (long long)cols, wname);
    if (rc == CT_OK) {
        bw->type = want_type;
        bw->blocksize = (int)json_integer_value(bs);
        const json_t *nbs = json_object_get(j, "nested_blocksize"), *off = json_object_get(j, "nested_offset");
        bw->nested = nbs != NULL;
        if (bw->nested) {
            const char *ndt = json_string_value(json_object_get(j, "nested_dtype"));
            if (!json_is_integer(nbs) || json_integer_value(nbs) < 1 || json_integer_value(nbs) > 1 << 20 ||
                !json_is_number(off))
                rc = ct_errorf(CT_EINPUT, "%s: '%s': nested_blocksize / nested_offset missing or invalid",
                               path_of(f, t), t->name);
            else if (ndt && strcmp(ndt, "float32") && strcmp(ndt, "torch.float32"))
                rc = ct_errorf(CT_EINPUT, "%s: '%s': nested_dtype '%s' is not float32", path_of(f, t), t->name, ndt);
            else {
                bw->nested_blocksize = (int)json_integer_value(nbs);
                bw->offset = (float)json_number_value(off);
            }
        }
    }
    json_decref(j);
    return rc;
}

int ct_bnb_probe(const ct_st_file *f, const char *wname, int64_t rows, int64_t cols, bool *used,
                 ct_bnb_weight *bw) {
    memset(bw, 0, sizeof *bw);
    ct_quant_type type = CT_QUANT_NF4;
    const ct_st_tensor *st = part(f, wname, ".quant_state.bitsandbytes__nf4");
    if (!st) {
        st = part(f, wname, ".quant_state.bitsandbytes__fp4");
        type = CT_QUANT_FP4;
    }
    if (!st) return ct_errorf(CT_EINPUT, "%s: '%s' has no quant_state tensor", path_of(f, NULL), wname);
    used[ct_st_index_of(f, st)] = true;
    if (st->dtype != CT_ST_U8)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s' must be U8 (JSON bytes), is %s", path_of(f, st), st->name,
                         ct_st_dtype_name(st->dtype));
    bw->state = st;
    CT_TRY(parse_state(f, st, wname, type, rows, cols, bw));
    int64_t n = rows * cols, nblocks = (n + bw->blocksize - 1) / bw->blocksize;
    CT_TRY(need_part(f, wname, "", CT_ST_U8, (n + 1) / 2, used, &bw->codes));
    CT_TRY(need_part(f, wname, ".absmax", bw->nested ? CT_ST_U8 : CT_ST_F32, nblocks, used, &bw->absmax));
    CT_TRY(need_part(f, wname, ".quant_map", CT_ST_F32, 16, used, &bw->quant_map));
    if (bw->nested) {
        int64_t nn = (nblocks + bw->nested_blocksize - 1) / bw->nested_blocksize;
        CT_TRY(need_part(f, wname, ".nested_absmax", CT_ST_F32, nn, used, &bw->nested_absmax));
        CT_TRY(need_part(f, wname, ".nested_quant_map", CT_ST_F32, 256, used, &bw->nested_quant_map));
    }
    return CT_OK;
}

/* The f32 array a state points at: absmax (plain) or nested_absmax. */
static const ct_st_tensor *f32_array(const ct_bnb_weight *bw) { return bw->nested ? bw->nested_absmax : bw->absmax; }

size_t ct_bnb_copy_bytes(const ct_bnb_weight *bw) {
    const ct_st_tensor *t = f32_array(bw);
    return ((uintptr_t)t->data % sizeof(float)) ? t->nbytes : 0;
}

int ct_bnb_state(const ct_bnb_weight *bw, int64_t rows, int64_t cols, const char *wname, ct_quant_state *st,
                 unsigned char **cursor) {
    memset(st, 0, sizeof *st);
    st->type = bw->type;
    st->blocksize = bw->blocksize;
    st->src_dtype = bw->src_dtype;
    st->ndim = 2;
    st->shape[0] = rows, st->shape[1] = cols;
    st->n = rows * cols;
    st->nblocks = (st->n + bw->blocksize - 1) / bw->blocksize;
    st->codes = (uint8_t *)bw->codes->data; /* read-only mapping: never written through */
    memcpy(st->code, bw->quant_map->data, sizeof st->code);
    const ct_st_tensor *arr = f32_array(bw);
    float *f32 = (float *)arr->data;
    if ((uintptr_t)arr->data % sizeof(float)) { /* misaligned: copy into the model's block */
        memcpy(*cursor, arr->data, arr->nbytes);
        f32 = (float *)*cursor;
        *cursor += (arr->nbytes + 15) / 16 * 16;
    }
    st->nested = bw->nested;
    if (bw->nested) {
        st->qabsmax = (uint8_t *)bw->absmax->data;
        st->nested_absmax = f32;
        st->offset = bw->offset;
        st->nested_blocksize = bw->nested_blocksize;
        memcpy(st->map8, bw->nested_quant_map->data, sizeof st->map8);
    } else {
        st->absmax = f32;
    }
    st->owned = NULL;
    return ct_quant_check(st, wname);
}
