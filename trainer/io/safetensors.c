/* safetensors reader: mmap (read-only) + a header parser that checks every value
 * before any tensor byte is addressed, so a hostile file is an error message,
 * never an out-of-bounds read. The checks are the Rust crate's (header length
 * <= 100 MB and inside the file, offsets contiguous from 0 to the end of the
 * data region, byte count == numel x dtype size with overflow checks), plus
 * duplicate keys and a '{' first byte. Model directories: model.safetensors, or
 * the shards named by model.safetensors.index.json (cross-checked with it). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "autograd/ct_error.h"
#include "datasets/file_check.h"
#include "autograd/ct_inline.h"
#include "trainer/io/fsutil.h"

static const struct {
    const char *name;
    size_t size;
    int ct; /* ct_dtype or -1 */
} k_dtypes[CT_ST_DTYPE_COUNT] = {
    [CT_ST_BOOL] = {"BOOL", 1, -1},       [CT_ST_U8] = {"U8", 1, CT_U8},
    [CT_ST_I8] = {"I8", 1, -1},           [CT_ST_F8_E5M2] = {"F8_E5M2", 1, -1},
    [CT_ST_F8_E4M3] = {"F8_E4M3", 1, -1}, [CT_ST_I16] = {"I16", 2, -1},
    [CT_ST_U16] = {"U16", 2, -1},         [CT_ST_F16] = {"F16", 2, CT_F16},
    [CT_ST_BF16] = {"BF16", 2, CT_BF16},  [CT_ST_I32] = {"I32", 4, CT_I32},
    [CT_ST_U32] = {"U32", 4, -1},         [CT_ST_F32] = {"F32", 4, CT_F32},
    [CT_ST_F64] = {"F64", 8, -1},         [CT_ST_I64] = {"I64", 8, -1},
    [CT_ST_U64] = {"U64", 8, -1},
};

const char *ct_st_dtype_name(ct_st_dtype dt) {
    return (dt >= 0 && dt < CT_ST_DTYPE_COUNT) ? k_dtypes[dt].name : "?";
}

int ct_st_dtype_from_name(const char *name) {
    for (int i = 0; i < CT_ST_DTYPE_COUNT; i++)
        if (strcmp(name, k_dtypes[i].name) == 0) return i;
    return -1;
}

size_t ct_st_dtype_size(ct_st_dtype dt) {
    return (dt >= 0 && dt < CT_ST_DTYPE_COUNT) ? k_dtypes[dt].size : 0;
}

int ct_st_dtype_to_ct(ct_st_dtype dt) {
    return (dt >= 0 && dt < CT_ST_DTYPE_COUNT) ? k_dtypes[dt].ct : -1;
}

int ct_st_dtype_from_ct(ct_dtype dt) {
    for (int i = 0; i < CT_ST_DTYPE_COUNT; i++)
        if (k_dtypes[i].ct == (int)dt) return i;
    return -1;
}

typedef struct {
    char *path;
    void *map;      /* whole file, PROT_READ */
    size_t map_len;
} st_shard;

typedef struct {
    char *key, *value;
} st_meta;

struct ct_st_file {
    st_shard *shards;
    int n_shards;
    size_t cap_shards;
    ct_st_tensor *t; /* file order */
    size_t n, cap;
    size_t *by_name; /* indices into t, sorted by name */
    st_meta *meta;
    size_t n_meta, cap_meta;
};

/* Data span of one tensor while a header is being checked. */
typedef struct {
    uint64_t begin, end;
    size_t idx; /* into f->t */
} st_span;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return CT_OK;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q) return ct_errorf(CT_ERUNTIME, "out of memory (safetensors header)");
    *p = q;
    *cap = nc;
    return CT_OK;
}

static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
    return buf;
}

/* A JSON integer >= 0 (jansson already rejects integers beyond int64). */
static bool get_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Keeps the __metadata__ of the first shard that has any (transformers writes
 * the same {"format": "pt"} into every shard); later shards' are only checked.
 * Keys within one object are unique (JSON_REJECT_DUPLICATES), so no lookups. */
static int add_metadata(ct_st_file *f, const char *path, const json_t *obj) {
    if (!json_is_object(obj))
        return ct_errorf(CT_EINPUT, "%s: \"__metadata__\" must be an object of strings", path);
    bool keep = f->n_meta == 0;
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        if (!json_is_string(v))
            return ct_errorf(CT_EINPUT, "%s: \"__metadata__\".\"%s\" must be a string", path, k);
        if (!keep) continue;
        CT_TRY(grow((void **)&f->meta, &f->cap_meta, f->n_meta + 1, sizeof *f->meta));
        st_meta *m = &f->meta[f->n_meta];
        m->key = strdup(k);
        m->value = strdup(json_string_value(v));
        if (!m->key || !m->value) {
            free(m->key);
            free(m->value);
            return ct_errorf(CT_ERUNTIME, "out of memory");
        }
        f->n_meta++;
    }
    return CT_OK;
}

/* Checks one header entry and appends it to f->t (data pointer set later). */
static int add_entry(ct_st_file *f, int shard, const char *name, const json_t *e, uint64_t data_len,
                     st_span *span) {
    const char *path = f->shards[shard].path;
    if (!json_is_object(e))
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': header entry must be an object with dtype, shape, data_offsets",
                         path, name);
    const json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"),
                 *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd))
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': \"dtype\" is missing or not a string", path, name);
    int dt = ct_st_dtype_from_name(json_string_value(jd));
    if (dt < 0)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': unknown dtype '%s' (supported: BOOL, U8, I8, F8_E5M2, "
                         "F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64)",
                         path, name, json_string_value(jd));
    if (!json_is_array(js))
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': \"shape\" is missing or not an array", path, name);
    size_t ndim = json_array_size(js);
    if (ndim > CT_ST_MAX_DIMS)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': rank %zu exceeds %d", path, name, ndim, CT_ST_MAX_DIMS);
    ct_st_tensor t = {.dtype = (ct_st_dtype)dt, .ndim = (int)ndim, .shard = shard};
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        if (!get_uint(json_array_get(js, i), &d))
            return ct_errorf(CT_EINPUT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path, name, i);
        t.shape[i] = (int64_t)d;
        overflow |= __builtin_mul_overflow(numel, d, &numel);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)k_dtypes[dt].size, &nbytes);
    if (overflow || numel > (uint64_t)INT64_MAX || nbytes > (uint64_t)SIZE_MAX) {
        char sb[200];
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': shape %s overflows the element count", path, name,
                         shape_str(t.shape, t.ndim, sb, sizeof sb));
    }
    t.numel = (int64_t)numel;
    t.nbytes = (size_t)nbytes;
    uint64_t b, en;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !get_uint(json_array_get(jo, 0), &b) ||
        !get_uint(json_array_get(jo, 1), &en))
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': \"data_offsets\" must be [begin, end] non-negative integers",
                         path, name);
    if (en < b)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path, name,
                         (unsigned long long)b, (unsigned long long)en);
    if (en > data_len)
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': data_offsets [%llu, %llu] run past the data region of %llu "
                         "bytes (truncated file?)", path, name, (unsigned long long)b, (unsigned long long)en,
                         (unsigned long long)data_len);
    if (en - b != nbytes) {
        char sb[200];
        return ct_errorf(CT_EINPUT, "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but %s x %s needs "
                         "%llu (size mismatch)", path, name, (unsigned long long)b, (unsigned long long)en,
                         (unsigned long long)(en - b), k_dtypes[dt].name, shape_str(t.shape, t.ndim, sb, sizeof sb),
                         (unsigned long long)nbytes);
    }
    t.name = strdup(name);
    if (!t.name) return ct_errorf(CT_ERUNTIME, "out of memory");
    CT_TRY(grow((void **)&f->t, &f->cap, f->n + 1, sizeof *f->t));
    span->begin = b;
    span->end = en;
    span->idx = f->n;
    f->t[f->n++] = t;
    return CT_OK;
}

static int cmp_span(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* Tensors must tile [0, data_len) exactly: sorted by offset, each begins where the
 * previous one ended. Reorders this shard's tensors into offset order and sets
 * their data pointers. */
static int check_layout(ct_st_file *f, int shard, size_t first, st_span *spans, size_t n, const uint8_t *data,
                        uint64_t data_len) {
    const char *path = f->shards[shard].path;
    qsort(spans, n, sizeof *spans, cmp_span);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const st_span *s = &spans[i];
        if (s->begin < at) {
            const st_span *p = &spans[i - 1];
            return ct_errorf(CT_EINPUT, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", path,
                             f->t[p->idx].name, (unsigned long long)p->begin, (unsigned long long)p->end,
                             f->t[s->idx].name, (unsigned long long)s->begin, (unsigned long long)s->end);
        }
        if (s->begin > at)
            return ct_errorf(CT_EINPUT, "%s: tensor '%s': gap of %llu bytes before its data_offsets [%llu, %llu] "
                             "(the data region must be covered without holes)", path, f->t[s->idx].name,
                             (unsigned long long)(s->begin - at), (unsigned long long)s->begin,
                             (unsigned long long)s->end);
        at = s->end;
    }
    if (at != data_len)
        return ct_errorf(CT_EINPUT, "%s: the tensors cover %llu bytes but the data region has %llu (trailing bytes "
                         "or a wrong header)", path, (unsigned long long)at, (unsigned long long)data_len);
    /* Offset order is file order: permute this shard's slice of f->t. */
    ct_st_tensor *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; i < n; i++) {
        tmp[i] = f->t[spans[i].idx];
        tmp[i].data = data + spans[i].begin;
    }
    if (n) memcpy(f->t + first, tmp, n * sizeof *tmp);
    free(tmp);
    return CT_OK;
}

/* Parses the header of an already mapped shard. */
static int parse_header(ct_st_file *f, int shard) {
    st_shard *s = &f->shards[shard];
    const uint8_t *base = s->map;
    if (s->map_len < 8)
        return ct_errorf(CT_EINPUT, "%s: file is %zu bytes, too short for a safetensors header", s->path, s->map_len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | base[i]; /* little-endian u64 */
    if (hlen > CT_ST_MAX_HEADER)
        return ct_errorf(CT_EINPUT, "%s: header length %llu exceeds the %llu-byte limit (not a safetensors file?)",
                         s->path, (unsigned long long)hlen, CT_ST_MAX_HEADER);
    if (hlen > s->map_len - 8)
        return ct_errorf(CT_EINPUT, "%s: header length %llu runs past the end of the %zu-byte file (truncated?)",
                         s->path, (unsigned long long)hlen, s->map_len);
    if (hlen < 2 || base[8] != '{')
        return ct_errorf(CT_EINPUT, "%s: header is not a JSON object (does not start with '{')", s->path);
    json_error_t err;
    json_t *h = json_loadb((const char *)base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &err);
    if (!h)
        return ct_errorf(CT_EINPUT, "%s: header JSON line %d column %d: %s", s->path, err.line, err.column, err.text);
    int rc = CT_OK;
    if (!json_is_object(h)) rc = ct_errorf(CT_EINPUT, "%s: header is not a JSON object", s->path);
    uint64_t data_len = (uint64_t)s->map_len - 8 - hlen;
    size_t first = f->n, n_here = 0;
    st_span *spans = NULL;
    if (rc == CT_OK) {
        spans = malloc((json_object_size(h) + 1) * sizeof *spans);
        if (!spans) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    }
    const char *k;
    json_t *v;
    if (rc == CT_OK) {
        json_object_foreach(h, k, v) {
            if (strcmp(k, "__metadata__") == 0) rc = add_metadata(f, s->path, v);
            else rc = add_entry(f, shard, k, v, data_len, &spans[n_here++]);
            if (rc) break;
        }
    }
    if (rc == CT_OK) rc = check_layout(f, shard, first, spans, n_here, base + 8 + hlen, data_len);
    free(spans);
    json_decref(h);
    return rc;
}

static int map_shard(ct_st_file *f, const char *path) {
    CT_TRY(grow((void **)&f->shards, &f->cap_shards, (size_t)f->n_shards + 1, sizeof *f->shards));
    st_shard *s = &f->shards[f->n_shards];
    memset(s, 0, sizeof *s);
    s->path = strdup(path);
    if (!s->path) return ct_errorf(CT_ERUNTIME, "out of memory");
    f->n_shards++;
    int fd;
    CT_TRY(ct_open_regular(path, "the safetensors file", &fd, &s->map_len));
    if (s->map_len >= 8) {
        s->map = mmap(NULL, s->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (s->map == MAP_FAILED) {
            s->map = NULL;
            int e = errno;
            close(fd);
            return ct_errorf(CT_ERUNTIME, "%s: mmap of %zu bytes failed: %s", path, s->map_len, strerror(e));
        }
    }
    close(fd);
    return parse_header(f, f->n_shards - 1);
}

static int cmp_by_name(const void *a, const void *b, void *ctx) {
    const ct_st_tensor *t = ctx;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static int build_name_index(ct_st_file *f) {
    f->by_name = malloc((f->n ? f->n : 1) * sizeof *f->by_name);
    if (!f->by_name) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; i < f->n; i++) f->by_name[i] = i;
    qsort_r(f->by_name, f->n, sizeof *f->by_name, cmp_by_name, f->t);
    for (size_t i = 1; i < f->n; i++) {
        const ct_st_tensor *a = &f->t[f->by_name[i - 1]], *b = &f->t[f->by_name[i]];
        if (strcmp(a->name, b->name) == 0)
            return ct_errorf(CT_EINPUT, "tensor '%s' is stored twice: in %s and in %s", a->name,
                             f->shards[a->shard].path, f->shards[b->shard].path);
    }
    return CT_OK;
}

/* Opens the shards of an index and checks that they agree with its weight_map. */
static int open_index(ct_st_file *f, const char *dir, const char *index_path) {
    ct_st_index idx;
    int rc = ct_st_index_load(index_path, &idx);
    for (int i = 0; rc == CT_OK && i < idx.n_shards; i++) {
        char p[CT_PATH_MAX];
        rc = ct_path_join(p, sizeof p, dir, idx.shards[i]);
        if (rc == CT_OK) rc = map_shard(f, p);
    }
    if (rc == CT_OK) rc = build_name_index(f);
    for (size_t i = 0; rc == CT_OK && i < idx.n_entries; i++) {
        const ct_st_index_entry *e = &idx.entries[i];
        const ct_st_tensor *t = ct_st_find(f, e->name);
        if (!t)
            rc = ct_errorf(CT_EINPUT, "%s: weight_map puts tensor '%s' in %s, which has no such tensor", index_path,
                           e->name, idx.shards[e->shard]);
        else if (t->shard != e->shard)
            rc = ct_errorf(CT_EINPUT, "%s: weight_map puts tensor '%s' in %s but it is in %s", index_path, e->name,
                           idx.shards[e->shard], f->shards[t->shard].path);
    }
    /* Every listed name was found and names are unique, so a count mismatch means
     * some shard holds a tensor the index does not list. */
    for (size_t i = 0; rc == CT_OK && f->n != idx.n_entries && i < f->n; i++) {
        ct_st_index_entry key = {.name = (char *)f->t[i].name};
        bool listed = false;
        for (size_t lo = 0, hi = idx.n_entries; lo < hi && !listed;) {
            size_t mid = lo + (hi - lo) / 2;
            int c = strcmp(key.name, idx.entries[mid].name);
            if (c == 0) listed = true;
            else if (c < 0) hi = mid;
            else lo = mid + 1;
        }
        if (!listed)
            rc = ct_errorf(CT_EINPUT, "%s: tensor '%s' is not listed in %s", f->shards[f->t[i].shard].path,
                           f->t[i].name, index_path);
    }
    ct_st_index_free(&idx);
    return rc;
}

int ct_st_open(const char *path, ct_st_file **out) {
    *out = NULL;
    ct_st_file *f = calloc(1, sizeof *f);
    if (!f) return ct_errorf(CT_ERUNTIME, "out of memory");
    int rc;
    if (ct_path_is_dir(path)) {
        char single[CT_PATH_MAX], index[CT_PATH_MAX];
        rc = ct_path_join(single, sizeof single, path, "model.safetensors");
        if (rc == CT_OK) rc = ct_path_join(index, sizeof index, path, "model.safetensors.index.json");
        if (rc == CT_OK) {
            /* transformers looks for the single file first, then the index. */
            if (ct_path_exists(single)) {
                rc = map_shard(f, single);
                if (rc == CT_OK) rc = build_name_index(f);
            } else if (ct_path_exists(index)) {
                rc = open_index(f, path, index);
            } else {
                rc = ct_errorf(CT_EINPUT, "%s: no model.safetensors or model.safetensors.index.json (is this a "
                               "Hugging Face model directory?)", path);
            }
        }
    } else {
        rc = map_shard(f, path);
        if (rc == CT_OK) rc = build_name_index(f);
    }
    if (rc) {
        ct_st_close(f);
        return rc;
    }
    *out = f;
    return CT_OK;
}

void ct_st_close(ct_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_shards; i++) {
        if (f->shards[i].map) munmap(f->shards[i].map, f->shards[i].map_len);
        free(f->shards[i].path);
    }
    for (size_t i = 0; i < f->n; i++) free((char *)f->t[i].name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->shards);
    free(f->t);
    free(f->by_name);
    free(f->meta);
    free(f);
}

size_t ct_st_count(const ct_st_file *f) { return f->n; }

const ct_st_tensor *ct_st_at(const ct_st_file *f, size_t i) { return i < f->n ? &f->t[i] : NULL; }

const ct_st_tensor *ct_st_find(const ct_st_file *f, const char *name) {
    if (!f->by_name) return NULL;
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ct_st_tensor *t = &f->t[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

int ct_st_get(const ct_st_file *f, const char *name, const ct_st_tensor **out) {
    *out = ct_st_find(f, name);
    if (!*out)
        return ct_errorf(CT_EINPUT, "%s: no tensor '%s' (is this the right model?)",
                         f->n_shards ? f->shards[0].path : "?", name);
    return CT_OK;
}

const char *ct_st_shard_path(const ct_st_file *f, int shard) {
    return (shard >= 0 && shard < f->n_shards) ? f->shards[shard].path : NULL;
}

int ct_st_shard_count(const ct_st_file *f) { return f->n_shards; }

size_t ct_st_metadata_count(const ct_st_file *f) { return f->n_meta; }

void ct_st_metadata_at(const ct_st_file *f, size_t i, const char **key, const char **value) {
    *key = i < f->n_meta ? f->meta[i].key : NULL;
    *value = i < f->n_meta ? f->meta[i].value : NULL;
}

const char *ct_st_metadata(const ct_st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

int ct_st_as_tensor(const ct_st_tensor *t, ct_tensor *out) {
    int dt = ct_st_dtype_to_ct(t->dtype);
    if (dt < 0)
        return ct_errorf(CT_EINPUT, "tensor '%s': dtype %s is not supported here (use F32, BF16, F16, I32 or U8)",
                         t->name, ct_st_dtype_name(t->dtype));
    if (t->ndim > CT_MAX_DIMS)
        return ct_errorf(CT_EINPUT, "tensor '%s': rank %d exceeds %d", t->name, t->ndim, CT_MAX_DIMS);
    int64_t one = 1;
    CT_TRY(ct_tensor_init(out, (ct_dtype)dt, CT_CPU, t->ndim ? t->ndim : 1, t->ndim ? t->shape : &one,
                          (void *)t->data));
    out->name = t->name;
    return CT_OK;
}

int ct_st_read_f32(const ct_st_tensor *t, float *dst) {
    const uint8_t *src = t->data;
    /* memcpy per element: a hostile file may misalign the data, and unaligned
     * loads through a typed pointer are undefined behaviour. */
    switch (t->dtype) {
    case CT_ST_F32:
        if (t->nbytes) memcpy(dst, src, t->nbytes);
        return CT_OK;
    case CT_ST_BF16:
    case CT_ST_F16: {
        bool bf = t->dtype == CT_ST_BF16;
#pragma omp parallel for schedule(static) if (t->numel > 65536)
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * (size_t)i, 2);
            dst[i] = bf ? ct_bf16_to_f32(h) : ct_f16_to_f32(h);
        }
        return CT_OK;
    }
    default:
        return ct_errorf(CT_EINPUT, "tensor '%s': dtype %s is not a float type (expected F32, BF16 or F16)",
                         t->name, ct_st_dtype_name(t->dtype));
    }
}

void ct_st_release(const ct_st_file *f, const ct_st_tensor *t) {
    if (t->shard < 0 || t->shard >= f->n_shards || t->nbytes == 0) return;
    const st_shard *s = &f->shards[t->shard];
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)t->data, hi = lo + t->nbytes;
    /* Only whole pages inside this tensor: neighbours may still be in use. */
    lo = (lo + page - 1) / page * page;
    hi = hi / page * page;
    uintptr_t base = (uintptr_t)s->map;
    if (hi > lo && lo >= base && hi <= base + s->map_len) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
