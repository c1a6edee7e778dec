/* model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map":
 * {tensor: file}}, as transformers' save_pretrained writes it. Parsed on its own
 * (the shards need not exist) and used by ct_st_open for sharded models. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/safetensors.h"

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const ct_st_index_entry *)a)->name, ((const ct_st_index_entry *)b)->name);
}

/* A shard must be a plain file name in the model directory: an index must not
 * be able to point at "../../somewhere". */
static bool plain_file_name(const char *s) {
    return s[0] && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

int ct_st_index_load(const char *path, ct_st_index *idx) {
    memset(idx, 0, sizeof *idx);
    json_t *j = ct_json_load(path, JSON_REJECT_DUPLICATES);
    if (!j) return CT_EINPUT;
    int rc = CT_OK;
    const json_t *wm = json_object_get(j, "weight_map"), *meta = json_object_get(j, "metadata");
    if (!json_is_object(j)) rc = ct_errorf(CT_EINPUT, "%s: not a JSON object", path);
    else if (!json_is_object(wm)) rc = ct_errorf(CT_EINPUT, "%s: \"weight_map\" is missing or not an object", path);
    else if (json_object_size(wm) == 0) rc = ct_errorf(CT_EINPUT, "%s: \"weight_map\" is empty", path);
    else if (meta && !json_is_object(meta) && !json_is_null(meta))
        rc = ct_errorf(CT_EINPUT, "%s: \"metadata\" must be an object", path);
    const json_t *ts = json_is_object(meta) ? json_object_get(meta, "total_size") : NULL;
    if (rc == CT_OK && ts) {
        /* transformers writes an integer; some tools write 1.5e10-style reals. */
        double v = json_is_integer(ts) ? (double)json_integer_value(ts) : json_is_real(ts) ? json_real_value(ts) : -1;
        if (!(v >= 0 && v < 1.8e19 && v == floor(v)))
            rc = ct_errorf(CT_EINPUT, "%s: \"metadata\".\"total_size\" must be a non-negative integer", path);
        else {
            idx->total_size = json_is_integer(ts) ? (uint64_t)json_integer_value(ts) : (uint64_t)v;
            idx->has_total_size = true;
        }
    }
    size_t n = rc == CT_OK ? json_object_size(wm) : 0;
    char **files = NULL;
    if (rc == CT_OK) {
        idx->entries = calloc(n, sizeof *idx->entries);
        files = calloc(n, sizeof *files);
        if (!idx->entries || !files) rc = ct_errorf(CT_ERUNTIME, "out of memory");
    }
    const char *k;
    const json_t *v;
    if (rc == CT_OK) {
        json_object_foreach((json_t *)wm, k, v) {
            if (!json_is_string(v) || !plain_file_name(json_string_value(v))) {
                rc = ct_errorf(CT_EINPUT, "%s: weight_map[\"%s\"] must be a file name in the model directory", path,
                               k);
                break;
            }
            ct_st_index_entry *e = &idx->entries[idx->n_entries++];
            e->name = strdup(k);
            files[idx->n_entries - 1] = (char *)json_string_value(v); /* borrowed from j */
            if (!e->name) {
                rc = ct_errorf(CT_ERUNTIME, "out of memory");
                break;
            }
            e->shard = (int)(idx->n_entries - 1); /* remembers the file until shards are numbered */
        }
    }
    if (rc == CT_OK) {
        /* Distinct file names, sorted: model-00001-of-00008 ... come out in order. */
        char **uniq = malloc(n * sizeof *uniq);
        if (!uniq) rc = ct_errorf(CT_ERUNTIME, "out of memory");
        else {
            memcpy(uniq, files, n * sizeof *uniq);
            qsort(uniq, n, sizeof *uniq, cmp_str);
            size_t u = 0;
            for (size_t i = 0; i < n; i++)
                if (u == 0 || strcmp(uniq[u - 1], uniq[i]) != 0) uniq[u++] = uniq[i];
            idx->shards = calloc(u, sizeof *idx->shards);
            if (!idx->shards) rc = ct_errorf(CT_ERUNTIME, "out of memory");
            for (size_t i = 0; rc == CT_OK && i < u; i++) {
                idx->shards[i] = strdup(uniq[i]);
                if (!idx->shards[i]) rc = ct_errorf(CT_ERUNTIME, "out of memory");
                else idx->n_shards++;
            }
            for (size_t i = 0; rc == CT_OK && i < n; i++) {
                const char *file = files[idx->entries[i].shard];
                char **hit = bsearch(&file, idx->shards, (size_t)idx->n_shards, sizeof *idx->shards, cmp_str);
                idx->entries[i].shard = (int)(hit - idx->shards);
            }
            free(uniq);
        }
    }
    if (rc == CT_OK) qsort(idx->entries, idx->n_entries, sizeof *idx->entries, cmp_entry);
    free(files);
    json_decref(j);
    return rc;
}

void ct_st_index_free(ct_st_index *idx) {
    for (size_t i = 0; i < idx->n_entries; i++) free(idx->entries[i].name);
    for (int i = 0; i < idx->n_shards; i++) free(idx->shards[i]);
    free(idx->entries);
    free(idx->shards);
    memset(idx, 0, sizeof *idx);
}
