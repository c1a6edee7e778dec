/* safetensors writer: one file, or a transformers-style sharded model directory.
 *
 * The byte layout follows the Rust crate's serialize(): tensors sorted by dtype
 * (descending alignment) then name, compact JSON header with "__metadata__"
 * first, padded with spaces so the data region starts 8-byte aligned. Headers
 * and offsets are known from the declarations alone, so tensor bytes can be
 * streamed in (fill callback) and a model never has to be in memory at once.
 * Sharding reproduces huggingface_hub's split_state_dict_into_shards. */
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/safetensors.h"

struct ct_st_writer {
    ct_st_tensor *t; /* declaration order; names owned */
    size_t n, cap;
    char **meta;     /* key, value, key, value, ... (owned) */
    size_t n_meta;   /* pairs */
    /* while saving: where appended bytes go and how many the current tensor still needs */
    ct_atomic_file *af;
    const ct_st_tensor *cur;
    size_t cur_left;
};

int ct_st_writer_new(ct_st_writer **out) {
    *out = calloc(1, sizeof **out);
    return *out ? CT_OK : ct_errorf(CT_ERUNTIME, "out of memory");
}

void ct_st_writer_free(ct_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free((char *)w->t[i].name);
    for (size_t i = 0; i < 2 * w->n_meta; i++) free(w->meta[i]);
    free(w->t);
    free(w->meta);
    free(w);
}

int ct_st_writer_metadata(ct_st_writer *w, const char *key, const char *value) {
    for (size_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta[2 * i], key) == 0) return ct_errorf(CT_EINPUT, "metadata key '%s' given twice", key);
    char **m = realloc(w->meta, (w->n_meta + 1) * 2 * sizeof *m);
    if (!m) return ct_errorf(CT_ERUNTIME, "out of memory");
    w->meta = m;
    m[2 * w->n_meta] = strdup(key);
    m[2 * w->n_meta + 1] = strdup(value);
    w->n_meta++; /* counted before the check so free() releases a partial pair */
    if (!m[2 * w->n_meta - 2] || !m[2 * w->n_meta - 1]) return ct_errorf(CT_ERUNTIME, "out of memory");
    return CT_OK;
}

int ct_st_writer_add(ct_st_writer *w, const char *name, ct_st_dtype dtype, int ndim, const int64_t *shape,
                     const void *data) {
    if (!name || strcmp(name, "__metadata__") == 0)
        return ct_errorf(CT_EINPUT, "'%s' cannot name a tensor", name ? name : "(null)");
    if (dtype < 0 || dtype >= CT_ST_DTYPE_COUNT) return ct_errorf(CT_EINPUT, "tensor '%s': bad dtype %d", name, dtype);
    if (ndim < 0 || ndim > CT_ST_MAX_DIMS)
        return ct_errorf(CT_EINPUT, "tensor '%s': rank %d not in 0..%d", name, ndim, CT_ST_MAX_DIMS);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0) return ct_errorf(CT_EINPUT, "tensor '%s' added twice", name);
    ct_st_tensor t = {.dtype = dtype, .ndim = ndim, .data = data};
    uint64_t numel = 1, nbytes;
    bool overflow = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ct_errorf(CT_EINPUT, "tensor '%s': shape[%d] = %lld is negative", name, i,
                                           (long long)shape[i]);
        t.shape[i] = shape[i];
        overflow |= __builtin_mul_overflow(numel, (uint64_t)shape[i], &numel);
    }
    overflow |= __builtin_mul_overflow(numel, (uint64_t)ct_st_dtype_size(dtype), &nbytes);
    if (overflow || numel > (uint64_t)INT64_MAX) return ct_errorf(CT_EINPUT, "tensor '%s': shape overflows", name);
    t.numel = (int64_t)numel;
    t.nbytes = (size_t)nbytes;
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 64;
        ct_st_tensor *p = realloc(w->t, nc * sizeof *p);
        if (!p) return ct_errorf(CT_ERUNTIME, "out of memory");
        w->t = p;
        w->cap = nc;
    }
    t.name = strdup(name);
    if (!t.name) return ct_errorf(CT_ERUNTIME, "out of memory");
    w->t[w->n++] = t;
    return CT_OK;
}

size_t ct_st_writer_count(const ct_st_writer *w) { return w->n; }

uint64_t ct_st_writer_total_bytes(const ct_st_writer *w) {
    uint64_t s = 0;
    for (size_t i = 0; i < w->n; i++) s += w->t[i].nbytes;
    return s;
}

int ct_st_writer_append(ct_st_writer *w, const void *bytes, size_t n) {
    if (!w->af || !w->cur) return ct_errorf(CT_ERUNTIME, "ct_st_writer_append called outside a fill callback");
    if (n > w->cur_left)
        return ct_errorf(CT_ERUNTIME, "tensor '%s': %zu bytes appended but only %zu remain of %zu", w->cur->name, n,
                         w->cur_left, w->cur->nbytes);
    w->cur_left -= n;
    return ct_afile_write(w->af, bytes, n);
}

/* The Rust crate's order: dtype descending (larger alignment first), then name. */
static int cmp_file_order(const void *a, const void *b, void *ctx) {
    const ct_st_tensor *t = ctx;
    const ct_st_tensor *x = &t[*(const size_t *)a], *y = &t[*(const size_t *)b];
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Compact header JSON for tensors sel[0..n) (already in file order), padded
 * with spaces to a multiple of 8 bytes. Returns malloc'ed text, length in *len. */
static char *build_header(const ct_st_writer *w, const size_t *sel, size_t n, size_t *len) {
    json_t *h = json_object();
    bool ok = h != NULL;
    if (ok && w->n_meta) {
        json_t *m = json_object();
        ok = m && json_object_set_new(h, "__metadata__", m) == 0;
        for (size_t i = 0; ok && i < w->n_meta; i++)
            ok = json_object_set_new(m, w->meta[2 * i], json_string(w->meta[2 * i + 1])) == 0;
    }
    uint64_t off = 0;
    for (size_t i = 0; ok && i < n; i++) {
        const ct_st_tensor *t = &w->t[sel[i]];
        /* json_object_set_new takes the value's reference even when it fails. */
        json_t *e = json_object();
        ok = json_object_set_new(h, t->name, e) == 0;
        ok = ok && json_object_set_new(e, "dtype", json_string(ct_st_dtype_name(t->dtype))) == 0;
        json_t *shape = ok ? json_array() : NULL;
        ok = ok && json_object_set_new(e, "shape", shape) == 0;
        for (int d = 0; ok && d < t->ndim; d++) ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
        ok = ok && json_object_set_new(e, "data_offsets",
                                       json_pack("[II]", (json_int_t)off, (json_int_t)(off + t->nbytes))) == 0;
        off += t->nbytes;
    }
    char *text = ok ? json_dumps(h, JSON_COMPACT) : NULL;
    json_decref(h);
    if (!text) return NULL;
    size_t n0 = strlen(text), padded = (n0 + 7) / 8 * 8;
    char *p = realloc(text, padded + 1);
    if (!p) {
        free(text);
        return NULL;
    }
    memset(p + n0, ' ', padded - n0);
    p[padded] = '\0';
    *len = padded;
    return p;
}

/* Writes tensors sel[0..n) (declaration indices; reordered here) to `path`. */
static int write_file(ct_st_writer *w, const char *path, size_t *sel, size_t n, int shard, ct_st_fill_fn fill,
                      void *ctx) {
    qsort_r(sel, n, sizeof *sel, cmp_file_order, w->t);
    size_t hlen = 0;
    char *header = build_header(w, sel, n, &hlen);
    if (!header) return ct_errorf(CT_ERUNTIME, "%s: cannot build the header (out of memory?)", path);
    ct_atomic_file af;
    int rc = ct_afile_open(&af, path);
    if (rc) {
        free(header);
        return rc;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i)); /* little-endian u64 */
    rc = ct_afile_write(&af, len8, 8);
    if (rc == CT_OK) rc = ct_afile_write(&af, header, hlen);
    free(header);
    for (size_t i = 0; rc == CT_OK && i < n; i++) {
        ct_st_tensor *t = &w->t[sel[i]];
        t->shard = shard;
        if (t->data || t->nbytes == 0) { /* an empty tensor needs no bytes from anyone */
            rc = ct_afile_write(&af, t->data, t->nbytes);
            continue;
        }
        if (!fill) {
            rc = ct_errorf(CT_ERUNTIME, "tensor '%s' has no data and no fill callback", t->name);
            break;
        }
        w->af = &af;
        w->cur = t;
        w->cur_left = t->nbytes;
        rc = fill(ctx, w, t);
        if (rc == CT_OK && w->cur_left)
            rc = ct_errorf(CT_ERUNTIME, "tensor '%s': fill gave %zu of %zu bytes", t->name, t->nbytes - w->cur_left,
                           t->nbytes);
        w->af = NULL;
        w->cur = NULL;
    }
    if (rc) {
        ct_afile_abort(&af);
        return ct_error_wrap(rc, "writing %s", path);
    }
    return ct_afile_commit(&af);
}

int ct_st_writer_save(ct_st_writer *w, const char *path, ct_st_fill_fn fill, void *ctx) {
    size_t *sel = malloc((w->n ? w->n : 1) * sizeof *sel);
    if (!sel) return ct_errorf(CT_ERUNTIME, "out of memory");
    for (size_t i = 0; i < w->n; i++) sel[i] = i;
    int rc = write_file(w, path, sel, w->n, 0, fill, ctx);
    free(sel);
    return rc;
}

/* huggingface_hub's split: walk tensors in declaration order; one larger than the
 * limit goes to a shard of its own, appended to the list at once; otherwise it
 * joins the open shard, which is closed (appended) first if it would overflow.
 * shard_of[i] gets the final shard number; returns the number of shards. */
static int plan_shards(const ct_st_writer *w, uint64_t max, int *shard_of) {
    int *group_pos = malloc((w->n + 1) * sizeof *group_pos); /* group id -> position in the list */
    if (!group_pos) return -1;
    int n_groups = 0, n_listed = 0, open = -1;
    uint64_t open_size = 0;
    for (size_t i = 0; i < w->n; i++) {
        uint64_t sz = w->t[i].nbytes;
        if (sz > max) {
            group_pos[n_groups] = n_listed++;
            shard_of[i] = n_groups++;
            continue;
        }
        if (open >= 0 && open_size + sz > max) {
            group_pos[open] = n_listed++;
            open = -1;
        }
        if (open < 0) {
            open = n_groups++;
            open_size = 0;
        }
        shard_of[i] = open;
        open_size += sz;
    }
    if (open >= 0) group_pos[open] = n_listed++;
    for (size_t i = 0; i < w->n; i++) shard_of[i] = group_pos[shard_of[i]];
    free(group_pos);
    return n_listed ? n_listed : 1; /* no tensors: one empty file */
}

static void shard_name(char *buf, size_t cap, const char *prefix, int i, int n) {
    if (n == 1) snprintf(buf, cap, "%s.safetensors", prefix);
    else snprintf(buf, cap, "%s-%05d-of-%05d.safetensors", prefix, i + 1, n);
}

/* "<prefix>-NNNNN-of-MMMMM.safetensors" -> MMMMM, else -1. */
static int shard_total_in_name(const char *s, const char *prefix) {
    size_t pl = strlen(prefix);
    if (strncmp(s, prefix, pl) != 0 || strlen(s) != pl + 27) return -1;
    const char *p = s + pl;
    const char *pat = "-#####-of-#####.safetensors"; /* # = a digit */
    int total = 0;
    for (size_t i = 0; pat[i]; i++) {
        if (pat[i] == '#') {
            if (!isdigit((unsigned char)p[i])) return -1;
            if (i > 10) total = total * 10 + (p[i] - '0');
        } else if (p[i] != pat[i]) {
            return -1;
        }
    }
    return total;
}

/* Removes what an earlier save under `prefix` left that this one did not write:
 * other "<prefix>-NNNNN-of-MMMMM.safetensors", and the single file or the index,
 * whichever this save did not produce (readers prefer the single file). */
static int remove_stale(const char *dir, const char *prefix, int n_shards) {
    DIR *d = opendir(dir);
    if (!d) return CT_OK;
    char single[300], index[300];
    snprintf(single, sizeof single, "%s.safetensors", prefix);
    snprintf(index, sizeof index, "%s.safetensors.index.json", prefix);
    int rc = CT_OK;
    struct dirent *e;
    while (rc == CT_OK && (e = readdir(d))) {
        const char *s = e->d_name;
        int total = shard_total_in_name(s, prefix);
        bool stale = strcmp(s, single) == 0   ? n_shards > 1
                     : strcmp(s, index) == 0  ? n_shards == 1
                     : total >= 0             ? (total != n_shards || n_shards == 1)
                                              : false;
        if (!stale) continue;
        char p[CT_PATH_MAX];
        rc = ct_path_join(p, sizeof p, dir, s);
        if (rc == CT_OK && unlink(p) != 0) rc = ct_errorf(CT_ERUNTIME, "%s: cannot remove a stale file", p);
    }
    closedir(d);
    return rc;
}

static int write_index(const ct_st_writer *w, const char *dir, const char *prefix, const int *shard_of, int n_shards) {
    json_t *map = json_object();
    bool ok = map != NULL;
    for (size_t i = 0; ok && i < w->n; i++) {
        char file[300];
        shard_name(file, sizeof file, prefix, shard_of[i], n_shards);
        ok = json_object_set_new(map, w->t[i].name, json_string(file)) == 0;
    }
    /* "o" hands map's reference to the new object. */
    json_t *j = ok ? json_pack("{s{sI}so}", "metadata", "total_size", (json_int_t)ct_st_writer_total_bytes(w),
                               "weight_map", map)
                   : NULL;
    if (!j) json_decref(map);
    char path[CT_PATH_MAX], name[300];
    snprintf(name, sizeof name, "%s.safetensors.index.json", prefix);
    int rc = ct_path_join(path, sizeof path, dir, name);
    if (rc == CT_OK && !j) rc = ct_errorf(CT_ERUNTIME, "%s: out of memory building the index", path);
    /* transformers: json.dumps(index, indent=2, sort_keys=True) + "\n" */
    if (rc == CT_OK) rc = ct_json_write_atomic(path, j, JSON_SORT_KEYS);
    json_decref(j);
    return rc;
}

int ct_st_writer_save_sharded(ct_st_writer *w, const char *dir, const char *prefix, uint64_t max_shard_bytes,
                              ct_st_fill_fn fill, void *ctx) {
    if (!ct_path_is_dir(dir)) return ct_errorf(CT_EINPUT, "%s: not a directory", dir);
    if (max_shard_bytes == 0) return ct_errorf(CT_EINPUT, "the maximum shard size must be positive");
    if (!prefix[0] || strchr(prefix, '/') || strlen(prefix) > 200)
        return ct_errorf(CT_EINPUT, "'%s' is not a usable file name prefix", prefix);
    int *shard_of = malloc((w->n + 1) * sizeof *shard_of);
    size_t *sel = malloc((w->n + 1) * sizeof *sel);
    int rc = (shard_of && sel) ? CT_OK : ct_errorf(CT_ERUNTIME, "out of memory");
    int n_shards = rc == CT_OK ? plan_shards(w, max_shard_bytes, shard_of) : 0;
    if (rc == CT_OK && n_shards < 0) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    for (int s = 0; rc == CT_OK && s < n_shards; s++) {
        size_t k = 0;
        for (size_t i = 0; i < w->n; i++)
            if (shard_of[i] == s) sel[k++] = i;
        char name[300], path[CT_PATH_MAX];
        shard_name(name, sizeof name, prefix, s, n_shards);
        rc = ct_path_join(path, sizeof path, dir, name);
        if (rc == CT_OK) rc = write_file(w, path, sel, k, s, fill, ctx);
    }
    /* The index goes last, so it never names a shard that is not complete. */
    if (rc == CT_OK && n_shards > 1) rc = write_index(w, dir, prefix, shard_of, n_shards);
    if (rc == CT_OK) rc = remove_stale(dir, prefix, n_shards);
    free(shard_of);
    free(sel);
    return rc;
}

int ct_st_parse_size(const char *s, uint64_t *bytes) {
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1},     {"B", 1},          {"KB", 1e3},         {"MB", 1e6},          {"GB", 1e9},
                 {"TB", 1e12}, {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || !(v > 0)) goto bad;
    while (*end == ' ') end++;
    char unit[8];
    size_t ul = 0;
    for (; ul + 1 < sizeof unit && end[ul]; ul++) unit[ul] = (char)toupper((unsigned char)end[ul]);
    unit[ul] = '\0';
    if (end[ul]) goto bad; /* longer than any unit */
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(unit, units[i].unit) != 0) continue;
        double b = floor(v * units[i].mult);
        if (!(b >= 1 && b < 1.8e19)) goto bad;
        *bytes = (uint64_t)b;
        return CT_OK;
    }
bad:
    return ct_errorf(CT_EINPUT, "'%s' is not a size (examples: 2GB, 500MB, 4GiB, 1000000)", s);
}
