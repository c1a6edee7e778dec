/* safetensors: the reader (safetensors.c) and the writer (safetensors_write.c).
 *
 * File format: 8-byte little-endian header length N, N bytes of JSON
 * {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [b, e]}},
 * then the data region; tensor bytes are row-major little-endian, and the tensors
 * cover the data region exactly, without gaps or overlaps.
 *
 * Reader: ct_st_open maps one file, or a Hugging Face model directory
 * (model.safetensors, else model.safetensors.index.json and all its shards),
 * read-only. Every header value is checked before any tensor byte is touched;
 * a malformed file is CT_EINPUT naming the file and the tensor. ct_st_file owns
 * the mappings and all names; tensor pointers stay valid until ct_st_close.
 *
 * Writer: declare tensors (data given now, or NULL = streamed later through a
 * fill callback), then save to one file or to transformers-style shards. The
 * writer never copies tensor data; data pointers must stay valid until saved. */
#ifndef CT_SAFETENSORS_H
#define CT_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/tensor.h"

#define CT_ST_MAX_DIMS 8
#define CT_ST_MAX_HEADER 100000000ull /* the Rust implementation's limit */

/* In the Rust crate's order (increasing alignment); the writer sorts tensors by
 * this order descending, then by name, exactly as safetensors.serialize does. */
typedef enum {
    CT_ST_BOOL = 0,
    CT_ST_U8,
    CT_ST_I8,
    CT_ST_F8_E5M2,
    CT_ST_F8_E4M3,
    CT_ST_I16,
    CT_ST_U16,
    CT_ST_F16,
    CT_ST_BF16,
    CT_ST_I32,
    CT_ST_U32,
    CT_ST_F32,
    CT_ST_F64,
    CT_ST_I64,
    CT_ST_U64,
    CT_ST_DTYPE_COUNT
} ct_st_dtype;

const char *ct_st_dtype_name(ct_st_dtype dt); /* "F32", "BF16", ... */
int ct_st_dtype_from_name(const char *name);  /* -1 when unknown */
size_t ct_st_dtype_size(ct_st_dtype dt);      /* bytes per element */
/* The matching ct_dtype (F32/BF16/F16/I32/U8), or -1. */
int ct_st_dtype_to_ct(ct_st_dtype dt);
/* The safetensors dtype for a ct_dtype, or -1 (nf4 is stored as U8 by callers). */
int ct_st_dtype_from_ct(ct_dtype dt);

typedef struct {
    const char *name;  /* owned by the file (or the writer) */
    ct_st_dtype dtype;
    int ndim;          /* 0 (scalar) .. CT_ST_MAX_DIMS */
    int64_t shape[CT_ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;     /* numel * dtype size */
    const void *data;  /* reader: into the read-only mapping; writer: caller's bytes or NULL */
    int shard;         /* index of the file holding it (0 for a single file) */
} ct_st_tensor;

/* ---------------- reader ---------------- */

typedef struct ct_st_file ct_st_file;

/* `path` is a .safetensors file or a model directory. On error *out is NULL. */
int ct_st_open(const char *path, ct_st_file **out);
void ct_st_close(ct_st_file *f); /* NULL is fine */

size_t ct_st_count(const ct_st_file *f);
/* The i-th tensor in file order (shard by shard, by data offset). */
const ct_st_tensor *ct_st_at(const ct_st_file *f, size_t i);
/* Lookup by name (binary search); NULL when absent, no error set. */
const ct_st_tensor *ct_st_find(const ct_st_file *f, const char *name);
/* Like ct_st_find but CT_EINPUT "<path>: no tensor '<name>'" when absent. */
int ct_st_get(const ct_st_file *f, const char *name, const ct_st_tensor **out);
/* Path of shard i (the file itself for a single file). */
const char *ct_st_shard_path(const ct_st_file *f, int shard);
int ct_st_shard_count(const ct_st_file *f);

/* __metadata__ of the first shard that has one, in file order. */
size_t ct_st_metadata_count(const ct_st_file *f);
void ct_st_metadata_at(const ct_st_file *f, size_t i, const char **key, const char **value);
const char *ct_st_metadata(const ct_st_file *f, const char *key); /* NULL when absent */

/* A ct_tensor header over the mapped bytes (read-only data: do not write through
 * it). CT_EINPUT when the dtype has no ct_dtype or the rank exceeds CT_MAX_DIMS;
 * a scalar becomes shape [1]. */
int ct_st_as_tensor(const ct_st_tensor *t, ct_tensor *out);
/* Converts an F32/BF16/F16 tensor to f32 into dst (t->numel floats). */
int ct_st_read_f32(const ct_st_tensor *t, float *dst);
/* Tells the kernel a streamed tensor's pages are no longer needed, so loading a
 * model tensor by tensor does not keep the whole file resident. */
void ct_st_release(const ct_st_file *f, const ct_st_tensor *t);

/* model.safetensors.index.json on its own (shards need not exist). */
typedef struct {
    char *name;  /* tensor name */
    int shard;   /* index into shards[] */
} ct_st_index_entry;

typedef struct {
    uint64_t total_size;        /* metadata.total_size; 0 when absent */
    bool has_total_size;
    ct_st_index_entry *entries; /* sorted by name */
    size_t n_entries;
    char **shards;              /* distinct file names, sorted */
    int n_shards;
} ct_st_index;

/* Parses and checks an index (shard names are plain file names); the caller
 * frees it with ct_st_index_free (also after an error). */
int ct_st_index_load(const char *path, ct_st_index *idx);
void ct_st_index_free(ct_st_index *idx);

/* ---------------- writer ---------------- */

typedef struct ct_st_writer ct_st_writer;

int ct_st_writer_new(ct_st_writer **out);
void ct_st_writer_free(ct_st_writer *w); /* NULL is fine */

/* Adds a __metadata__ entry (copied). transformers wants {"format": "pt"}. */
int ct_st_writer_metadata(ct_st_writer *w, const char *key, const char *value);
/* Declares a tensor; name and shape are copied, `data` (t->nbytes bytes) is not:
 * it must stay valid until the save. data == NULL: bytes come from the fill
 * callback at save time. Duplicate names are CT_EINPUT. */
int ct_st_writer_add(ct_st_writer *w, const char *name, ct_st_dtype dtype, int ndim,
                     const int64_t *shape, const void *data);
size_t ct_st_writer_count(const ct_st_writer *w);
/* Sum of all declared tensors' bytes (transformers' metadata.total_size). */
uint64_t ct_st_writer_total_bytes(const ct_st_writer *w);

/* Called once per non-empty tensor declared without data, in file order; it must hand
 * over exactly t->nbytes bytes through ct_st_writer_append (in any number of
 * pieces), so a tensor never needs to exist in memory at once. */
typedef int (*ct_st_fill_fn)(void *ctx, ct_st_writer *w, const ct_st_tensor *t);
int ct_st_writer_append(ct_st_writer *w, const void *bytes, size_t n);

/* One file, written atomically (temp name in the same directory, fsync, rename). */
int ct_st_writer_save(ct_st_writer *w, const char *path, ct_st_fill_fn fill, void *ctx);

/* A model directory as transformers' save_pretrained writes it: tensors are
 * assigned to shards of at most max_shard_bytes in declaration order (a larger
 * tensor gets a shard of its own); one shard -> "<prefix>.safetensors", else
 * "<prefix>-00001-of-0000N.safetensors" + "<prefix>.safetensors.index.json".
 * `dir` must exist. Files of an earlier save under the same prefix are removed. */
int ct_st_writer_save_sharded(ct_st_writer *w, const char *dir, const char *prefix,
                              uint64_t max_shard_bytes, ct_st_fill_fn fill, void *ctx);

/* "2GB" (10^9), "500MB", "4GiB" (2^30), "123" (bytes); CT_EINPUT when malformed. */
int ct_st_parse_size(const char *s, uint64_t *bytes);

#endif
