/* The prepared dataset in HDF5 (layout version CT_DS_CACHE_VERSION):
 *   /key          u8  [32]              the config's key (dataset_cache_key.c)
 *   /meta         i64 [N_META]          version, max_length, pad_id, samples, rows, tokens
 *   /stats        i64 [N_STATS]         ct_ds_stats counters
 *   /warning      u8  [k]               stats.first_warning (may be empty)
 *   /sample_off   i64 [samples + 1]
 *   /ids, /labels i32 [tokens]          labels aligned (encode.h)
 *   /row_off      i64 [rows + 1]
 *   /row_samples  i64 [samples]
 *   /digest       u8  [32]              SHA-256 of all of the above but /key, as
 *                                       read back into memory (little-endian)
 * Loading checks every size, range and the digest, so a damaged file is
 * rebuilt rather than trusted. HDF5's own error printing is switched off
 * around every call (library code never prints). */
#include "datasets/dataset_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "autograd/ct_error.h"
#include "datasets/h5_image.h"
#include "datasets/sha256.h"

enum { META_VERSION, META_MAX_LENGTH, META_PAD_ID, META_SAMPLES, META_ROWS, META_TOKENS, N_META };
enum { ST_RECORDS, ST_SKIPPED, ST_EMPTY, ST_UNTRAINED, ST_TRUNCATED, ST_SAMPLES, ST_TOKENS, ST_TARGETS, N_STATS };

static void stats_to_array(const ct_ds_stats *s, int64_t a[N_STATS]) {
    a[ST_RECORDS] = s->n_records, a[ST_SKIPPED] = s->n_skipped, a[ST_EMPTY] = s->n_dropped_empty;
    a[ST_UNTRAINED] = s->n_dropped_untrained, a[ST_TRUNCATED] = s->n_truncated, a[ST_SAMPLES] = s->n_samples;
    a[ST_TOKENS] = s->n_tokens, a[ST_TARGETS] = s->n_targets;
}

static void stats_from_array(const int64_t a[N_STATS], ct_ds_stats *s) {
    s->n_records = a[ST_RECORDS], s->n_skipped = a[ST_SKIPPED], s->n_dropped_empty = a[ST_EMPTY];
    s->n_dropped_untrained = a[ST_UNTRAINED], s->n_truncated = a[ST_TRUNCATED], s->n_samples = a[ST_SAMPLES];
    s->n_tokens = a[ST_TOKENS], s->n_targets = a[ST_TARGETS];
}

static void payload_digest(const int64_t *meta, const int64_t *stats, const char *warning, size_t wlen,
                           const ct_dataset *ds, uint8_t d[32]) {
    size_t ns = (size_t)ds->n_samples, nt = (size_t)ds->sample_off[ns], nr = (size_t)ds->rows.n_rows;
    ct_sha256 h;
    ct_sha256_init(&h);
    ct_sha256_update(&h, meta, N_META * sizeof *meta);
    ct_sha256_update(&h, stats, N_STATS * sizeof *stats);
    ct_sha256_update(&h, warning, wlen);
    ct_sha256_update(&h, ds->sample_off, (ns + 1) * sizeof *ds->sample_off);
    ct_sha256_update(&h, ds->ids, nt * sizeof *ds->ids);
    ct_sha256_update(&h, ds->labels, nt * sizeof *ds->labels);
    ct_sha256_update(&h, ds->rows.row_off, (nr + 1) * sizeof *ds->rows.row_off);
    ct_sha256_update(&h, ds->rows.row_samples, ns * sizeof *ds->rows.row_samples);
    ct_sha256_final(&h, d);
}

/* ---- writing ---- */

static int write_1d(hid_t file, const char *name, hid_t filetype, hid_t memtype, const void *data, hsize_t n) {
    hid_t space = H5Screate_simple(1, &n, NULL);
    if (space < 0) return -1;
    hid_t d = H5Dcreate2(file, name, filetype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = d < 0 ? -1 : (n ? H5Dwrite(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : 0);
    if (d >= 0 && H5Dclose(d) < 0) e = -1;
    H5Sclose(space);
    return e < 0 ? -1 : 0;
}

/* Built in memory and written to `tmp` with write(2) (h5_image.h: a full
 * disk never reaches HDF5's file handling); -1 with ct_last_error() set when
 * the write failed, -1 with no error for an HDF5 failure. */
static int save_hdf5(const char *tmp, const uint8_t key[32], const ct_dataset *ds) {
    /* The 1.8+ object format, as checkpoints: its metadata is checksummed, so
     * HDF5 refuses a damaged header before it believes the sizes in it (with
     * the default format a flipped byte in a local heap made it allocate
     * 4 GB: fuzz_ds_cache). */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return -1;
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    hid_t f = ct_h5_mem_create(tmp, fapl);
    H5Pclose(fapl);
    if (f < 0) return -1;
    int64_t meta[N_META] = {CT_DS_CACHE_VERSION, ds->max_length, ds->pad_id, ds->n_samples, ds->rows.n_rows,
                            ds->sample_off[ds->n_samples]};
    int64_t stats[N_STATS];
    stats_to_array(&ds->stats, stats);
    size_t wlen = strnlen(ds->stats.first_warning, sizeof ds->stats.first_warning);
    uint8_t digest[32];
    payload_digest(meta, stats, ds->stats.first_warning, wlen, ds, digest);
    hsize_t ns = (hsize_t)ds->n_samples, nt = (hsize_t)meta[META_TOKENS], nr = (hsize_t)ds->rows.n_rows;
    int bad = 0;
    bad |= write_1d(f, "key", H5T_STD_U8LE, H5T_NATIVE_UINT8, key, 32);
    bad |= write_1d(f, "meta", H5T_STD_I64LE, H5T_NATIVE_INT64, meta, N_META);
    bad |= write_1d(f, "stats", H5T_STD_I64LE, H5T_NATIVE_INT64, stats, N_STATS);
    bad |= write_1d(f, "warning", H5T_STD_U8LE, H5T_NATIVE_UINT8, ds->stats.first_warning, wlen);
    bad |= write_1d(f, "sample_off", H5T_STD_I64LE, H5T_NATIVE_INT64, ds->sample_off, ns + 1);
    bad |= write_1d(f, "ids", H5T_STD_I32LE, H5T_NATIVE_INT32, ds->ids, nt);
    bad |= write_1d(f, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, ds->labels, nt);
    bad |= write_1d(f, "row_off", H5T_STD_I64LE, H5T_NATIVE_INT64, ds->rows.row_off, nr + 1);
    bad |= write_1d(f, "row_samples", H5T_STD_I64LE, H5T_NATIVE_INT64, ds->rows.row_samples, ns);
    bad |= write_1d(f, "digest", H5T_STD_U8LE, H5T_NATIVE_UINT8, digest, 32);
    if (!bad && ct_h5_mem_write(f, tmp) != CT_OK) bad = -2;
    if (H5Fclose(f) < 0 && !bad) bad = -1;
    return bad;
}

static int fsync_path(const char *path, int flags) {
    int fd = open(path, flags);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int ct_ds_cache_save(const char *path, const uint8_t key[32], const ct_dataset *ds) {
    const char *slash = strrchr(path, '/');
    char dir[4096], tmp[4096];
    int dl = slash ? (int)(slash - path) : 1;
    int n1 = snprintf(dir, sizeof dir, "%.*s", dl, slash ? path : ".");
    int n2 = snprintf(tmp, sizeof tmp, "%s/.%s.tmp-XXXXXX", dir, slash ? slash + 1 : path);
    if (n1 < 0 || n2 < 0 || (size_t)n2 >= sizeof tmp) return ct_errorf(CT_EINPUT, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return ct_errorf(CT_ERUNTIME, "%s: cannot create a temp file for the dataset cache: %s", dir, strerror(errno));
    /* Held until the file is renamed or removed: the lock tells
     * ct_ds_cache_reclaim in another process that this temp file is alive. */
    (void)flock(fd, LOCK_EX);
    int bad;
    H5E_BEGIN_TRY { bad = save_hdf5(tmp, key, ds); }
    H5E_END_TRY;
    if (bad) {
        char why[512];
        snprintf(why, sizeof why, "%s", bad == -2 ? ct_last_error() : "HDF5 could not build the file");
        unlink(tmp);
        close(fd);
        return ct_errorf(CT_ERUNTIME, "%s: cannot write the dataset cache: %s", path, why);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        close(fd);
        return ct_errorf(CT_ERUNTIME, "%s: cannot rename the dataset cache into place: %s", path, strerror(e));
    }
    close(fd);
    fsync_path(dir, O_RDONLY | O_DIRECTORY); /* the rename itself; best effort */
    return CT_OK;
}

/* ---- reading ---- */

/* Reads a 1-D integer dataset of `elem`-byte values; want == 0 accepts any
 * size >= 0, else the size must be want - 1 (so that 0 can mean "any"). */
/* file_bytes: the cache file's size. ct_ds_cache_save writes every value
 * (contiguous, uncompressed), so no dataset holds more bytes; a larger
 * dataspace is a damaged or hostile file that would make us allocate it. */
static int read_1d(hid_t f, double file_bytes, const char *name, hid_t memtype, size_t elem, hsize_t want, void **out, hsize_t *n,
                   char *why, size_t cap) {
    *out = NULL;
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) {
        snprintf(why, cap, "dataset '%s' is missing", name);
        return -1;
    }
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) {
        snprintf(why, cap, "dataset '%s' cannot be opened", name);
        return -1;
    }
    hid_t space = H5Dget_space(d), type = H5Dget_type(d);
    hsize_t dims[1] = {0};
    int ok = space >= 0 && type >= 0 && H5Sget_simple_extent_ndims(space) == 1 &&
             H5Sget_simple_extent_dims(space, dims, NULL) == 1 && H5Tget_class(type) == H5T_INTEGER &&
             H5Tget_size(type) == elem;
    if (!ok) snprintf(why, cap, "dataset '%s' has the wrong type or shape", name);
    else if ((double)dims[0] * (double)elem > file_bytes) {
        snprintf(why, cap, "dataset '%s' claims %llu entries, more than the file holds", name,
                 (unsigned long long)dims[0]);
        ok = 0;
    } else if (want && dims[0] != want - 1) {
        snprintf(why, cap, "dataset '%s' has %llu entries, expected %llu", name, (unsigned long long)dims[0],
                 (unsigned long long)(want - 1));
        ok = 0;
    }
    if (ok) {
        *out = malloc((size_t)(dims[0] ? dims[0] : 1) * elem);
        if (!*out || (dims[0] && H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)) {
            snprintf(why, cap, "dataset '%s' cannot be read", name);
            free(*out);
            *out = NULL;
            ok = 0;
        }
    }
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Dclose(d);
    *n = dims[0];
    return ok ? 0 : -1;
}

/* Structure checks that the digest alone would not explain to a reader. */
static int check_layout(const ct_dataset *ds, int32_t vocab, char *why, size_t cap) {
    int64_t ns = ds->n_samples, nr = ds->rows.n_rows, T = ds->max_length;
    if (ds->sample_off[0] != 0) return snprintf(why, cap, "sample offsets do not start at 0"), -1;
    for (int64_t s = 0; s < ns; s++) {
        int64_t L = ds->sample_off[s + 1] - ds->sample_off[s];
        if (L < 1 || L > T) return snprintf(why, cap, "sample %lld has length %lld", (long long)s, (long long)L), -1;
    }
    int64_t nt = ds->sample_off[ns];
    for (int64_t t = 0; t < nt; t++)
        if (ds->ids[t] < 0 || ds->ids[t] >= vocab || (ds->labels[t] != -100 && (ds->labels[t] < 0 || ds->labels[t] >= vocab)))
            return snprintf(why, cap, "token %lld is out of the vocabulary", (long long)t), -1;
    if (ds->rows.row_off[0] != 0 || ds->rows.row_off[nr] != ns)
        return snprintf(why, cap, "row offsets do not cover the samples"), -1;
    for (int64_t r = 0; r < nr; r++) /* increasing, so every row's range lies within row_samples */
        if (ds->rows.row_off[r + 1] <= ds->rows.row_off[r])
            return snprintf(why, cap, "row %lld is empty or out of order", (long long)r), -1;
    char *seen = calloc((size_t)(ns ? ns : 1), 1); /* (ns) each sample placed once */
    if (!seen) return snprintf(why, cap, "out of memory"), -1;
    int rc = 0;
    for (int64_t r = 0; r < nr && !rc; r++) {
        int64_t fill = 0;
        for (int64_t k = ds->rows.row_off[r]; k < ds->rows.row_off[r + 1] && !rc; k++) {
            int64_t s = ds->rows.row_samples[k];
            if (s < 0 || s >= ns || seen[s]++) rc = -1;
            else fill += ds->sample_off[s + 1] - ds->sample_off[s];
        }
        if (fill > T) rc = -1;
        if (rc) snprintf(why, cap, "row %lld is malformed", (long long)r);
    }
    free(seen);
    return rc;
}

static int load_hdf5(const char *path, const uint8_t key[32], int64_t max_length, int32_t vocab, ct_dataset *ds,
                     char *why, size_t cap) {
    struct stat st;
    double fb = stat(path, &st) == 0 ? (double)st.st_size : 0;
    int sb = ct_h5_superblock_version(path); /* -1: no signature; H5Fopen says so below */
    if (sb >= 0 && sb < 2) { /* unchecked metadata: HDF5 would believe any size in it */
        snprintf(why, cap, "not in the checksummed HDF5 1.8+ format (damaged, or from an older ctuner)");
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        snprintf(why, cap, "not a readable HDF5 file (truncated or damaged)");
        return -1;
    }
    void *p_key = NULL, *p_meta = NULL, *p_stats = NULL, *p_warn = NULL, *p_digest = NULL;
    hsize_t n, nw = 0;
    int rc = read_1d(f, fb, "key", H5T_NATIVE_UINT8, 1, 33, &p_key, &n, why, cap);
    if (!rc && memcmp(p_key, key, 32) != 0) rc = -1, snprintf(why, cap, "made for other inputs (key differs)");
    if (!rc) rc = read_1d(f, fb, "meta", H5T_NATIVE_INT64, 8, N_META + 1, &p_meta, &n, why, cap);
    const int64_t *meta = p_meta;
    if (!rc && (meta[META_VERSION] != CT_DS_CACHE_VERSION || meta[META_MAX_LENGTH] != max_length ||
                meta[META_SAMPLES] < 1 || meta[META_ROWS] < 1 || meta[META_TOKENS] < 1))
        rc = -1, snprintf(why, cap, "header says version %lld, max_length %lld, %lld samples",
                          (long long)meta[META_VERSION], (long long)meta[META_MAX_LENGTH], (long long)meta[META_SAMPLES]);
    if (!rc) {
        ds->max_length = max_length;
        ds->pad_id = (int32_t)meta[META_PAD_ID];
        ds->n_samples = meta[META_SAMPLES];
        ds->rows.n_rows = meta[META_ROWS];
        hsize_t ns = (hsize_t)meta[META_SAMPLES], nt = (hsize_t)meta[META_TOKENS], nr = (hsize_t)meta[META_ROWS];
        void *p;
        rc = read_1d(f, fb, "stats", H5T_NATIVE_INT64, 8, N_STATS + 1, &p_stats, &n, why, cap);
        if (!rc) rc = read_1d(f, fb, "warning", H5T_NATIVE_UINT8, 1, 0, &p_warn, &nw, why, cap);
        if (!rc && nw >= sizeof ds->stats.first_warning) rc = -1, snprintf(why, cap, "warning text too long");
        if (!rc) rc = read_1d(f, fb, "sample_off", H5T_NATIVE_INT64, 8, ns + 2, &p, &n, why, cap), ds->sample_off = p;
        if (!rc) rc = read_1d(f, fb, "ids", H5T_NATIVE_INT32, 4, nt + 1, &p, &n, why, cap), ds->ids = p;
        if (!rc) rc = read_1d(f, fb, "labels", H5T_NATIVE_INT32, 4, nt + 1, &p, &n, why, cap), ds->labels = p;
        if (!rc) rc = read_1d(f, fb, "row_off", H5T_NATIVE_INT64, 8, nr + 2, &p, &n, why, cap), ds->rows.row_off = p;
        if (!rc) rc = read_1d(f, fb, "row_samples", H5T_NATIVE_INT64, 8, ns + 1, &p, &n, why, cap), ds->rows.row_samples = p;
        if (!rc) rc = read_1d(f, fb, "digest", H5T_NATIVE_UINT8, 1, 33, &p_digest, &n, why, cap);
        if (!rc && ds->sample_off[ns] != (int64_t)nt) rc = -1, snprintf(why, cap, "sample offsets do not end at the token count");
    }
    if (!rc) {
        uint8_t d[32];
        payload_digest(meta, p_stats, p_warn, (size_t)nw, ds, d);
        if (memcmp(d, p_digest, 32) != 0) rc = -1, snprintf(why, cap, "content digest mismatch (damaged data)");
    }
    if (!rc) rc = check_layout(ds, vocab, why, cap);
    if (!rc) {
        stats_from_array(p_stats, &ds->stats);
        memcpy(ds->stats.first_warning, p_warn, (size_t)nw);
        ds->stats.first_warning[nw] = '\0';
    }
    free(p_key), free(p_meta), free(p_stats), free(p_warn), free(p_digest);
    H5Fclose(f);
    return rc;
}

int ct_ds_cache_load(const char *path, const uint8_t key[32], int64_t max_length, int32_t vocab_size,
                     ct_dataset *out) {
    memset(out, 0, sizeof *out);
    if (access(path, R_OK) != 0) return ct_errorf(CT_EINPUT, "%s: no cache file", path);
    char why[256] = "unknown problem";
    int bad;
    H5E_BEGIN_TRY { bad = load_hdf5(path, key, max_length, vocab_size, out, why, sizeof why); }
    H5E_END_TRY;
    if (bad) {
        ct_dataset_free(out);
        return ct_errorf(CT_EINPUT, "%s: dataset cache not usable: %s", path, why);
    }
    return CT_OK;
}

int ct_ds_cache_reclaim(const char *dir, int *removed) {
    if (removed) *removed = 0;
    DIR *d = opendir(dir);
    if (!d) return CT_OK; /* no cache dir yet */
    struct dirent *e;
    while ((e = readdir(d))) {
        /* ".ds-<hex>.h5.tmp-XXXXXX": only the names ct_ds_cache_save creates */
        const char *n = e->d_name, *t = strstr(n, ".h5.tmp-");
        if (strncmp(n, ".ds-", 4) != 0 || !t || strlen(t) != 8 + 6) continue;
        char path[4096];
        int pn = snprintf(path, sizeof path, "%s/%s", dir, n);
        if (pn < 0 || (size_t)pn >= sizeof path) continue;
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) continue;
        struct stat st;
        /* A writer that is alive holds the lock; a killed one left it free. */
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0 && unlink(path) == 0 &&
            removed)
            (*removed)++;
        close(fd);
    }
    closedir(d);
    return CT_OK;
}

/* mkdir -p with mode 0755. */
static int make_dirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return ct_errorf(CT_EINPUT, "cache dir '%s': bad path", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ct_errorf(CT_ERUNTIME, "%s: cannot create the cache directory: %s", buf, strerror(errno));
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return ct_errorf(CT_EINPUT, "%s: the cache dir exists but is not a directory", path);
    return CT_OK;
}

int ct_ds_open(const ct_ds_config *cfg, const ct_tokenizer *tok, ct_dataset *out, ct_ds_cache_info *info) {
    memset(info, 0, sizeof *info);
    memset(out, 0, sizeof *out);
    if (!cfg->cache_dir) {
        snprintf(info->reason, sizeof info->reason, "no cache dir");
        return ct_dataset_prepare(cfg, tok, out);
    }
    CT_TRY(ct_ds_cache_key(cfg, info->key));
    char hex[65];
    ct_sha256_hex(info->key, hex);
    int n = snprintf(info->path, sizeof info->path, "%s/ds-%.32s.h5", cfg->cache_dir, hex);
    if (n < 0 || (size_t)n >= sizeof info->path) return ct_errorf(CT_EINPUT, "%s: cache dir path too long", cfg->cache_dir);
    ct_ds_cache_reclaim(cfg->cache_dir, &info->reclaimed); /* interrupted builds' temp files */
    if (ct_ds_cache_load(info->path, info->key, cfg->max_length, ct_tok_vocab_size(tok), out) == CT_OK) {
        info->hit = true;
        return CT_OK;
    }
    snprintf(info->reason, sizeof info->reason, "%s", ct_last_error());
    CT_TRY(ct_dataset_prepare(cfg, tok, out));
    int rc = make_dirs(cfg->cache_dir);
    if (!rc) rc = ct_ds_cache_save(info->path, info->key, out);
    if (rc) {
        snprintf(info->write_error, sizeof info->write_error, "%s", ct_last_error());
        ct_error_clear();
    }
    return CT_OK;
}
