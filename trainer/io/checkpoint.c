/* The HDF5 checkpoint container: an atomic writer of named typed arrays and a
 * validating reader (layout and guarantees in checkpoint.h).
 *
 * HDF5's own error printing is switched off; failures become ct_status
 * messages carrying the innermost HDF5 error text (e.g. "truncated file: eof
 * = ..." or the Fletcher32 checksum failure), so the user sees what broke. */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "datasets/h5_image.h"
#include "trainer/io/fsutil.h"

#define VERSION_ATTR "ctuner_checkpoint"
#define CHUNK_BYTES ((size_t)1 << 20) /* target chunk size: checksum granularity */
#define NAME_MAX_LEN 1024

const char *ct_ckpt_kind_name(ct_ckpt_kind k) {
    switch (k) {
    case CT_CKPT_F32: return "f32";
    case CT_CKPT_I64: return "i64";
    case CT_CKPT_U64: return "u64";
    case CT_CKPT_I32: return "i32";
    case CT_CKPT_STR: return "string";
    }
    return "?";
}

/* ---- HDF5 plumbing ---- */

static void h5_quiet(void) {
    H5open();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static herr_t innermost_cb(unsigned n, const H5E_error2_t *e, void *data) {
    if (n == 0 && e->desc) snprintf((char *)data, 256, "%s", e->desc);
    return 0;
}

/* The most specific message on HDF5's error stack (then cleared), for context. */
static const char *h5_detail(char buf[256]) {
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_cb, buf);
    H5Eclear2(H5E_DEFAULT);
    if (!buf[0]) snprintf(buf, 256, "unknown HDF5 error");
    return buf;
}

/* File access: 1.8+ object format (checksummed metadata), close everything
 * with the file, no file locks (they fail on some network file systems). */
static hid_t make_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return fapl;
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1);
#endif
    return fapl;
}

/* Names are relative paths of non-empty components: "a", "optim/exp_avg/x". */
static int check_name(const char *name, const char *file) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > NAME_MAX_LEN || name[0] == '/' || name[n - 1] == '/' || strstr(name, "//"))
        return ct_errorf(CT_EINPUT, "checkpoint %s: bad dataset name '%s' (want components "
                         "separated by single '/', no leading or trailing '/')", file,
                         name ? name : "(null)");
    return CT_OK;
}

/* Whether `name` links to something; each prefix is checked first because
 * H5Lexists fails (rather than answering no) when a middle group is missing. */
static bool link_exists(hid_t file, const char *name) {
    char buf[NAME_MAX_LEN + 1];
    snprintf(buf, sizeof buf, "%s", name);
    for (char *p = buf;; p++) {
        if (*p == '/' || *p == '\0') {
            char keep = *p;
            *p = '\0';
            htri_t e = H5Lexists(file, buf, H5P_DEFAULT);
            *p = keep;
            if (e <= 0) {
                H5Eclear2(H5E_DEFAULT);
                return false;
            }
            if (keep == '\0') return true;
        }
    }
}

static hid_t file_type_of(ct_ckpt_kind k) {
    switch (k) {
    case CT_CKPT_F32: return H5T_IEEE_F32LE;
    case CT_CKPT_I64: return H5T_STD_I64LE;
    case CT_CKPT_U64: return H5T_STD_U64LE;
    case CT_CKPT_I32: return H5T_STD_I32LE;
    default: return -1;
    }
}

static hid_t mem_type_of(ct_ckpt_kind k) {
    switch (k) {
    case CT_CKPT_F32: return H5T_NATIVE_FLOAT;
    case CT_CKPT_I64: return H5T_NATIVE_INT64;
    case CT_CKPT_U64: return H5T_NATIVE_UINT64;
    case CT_CKPT_I32: return H5T_NATIVE_INT32;
    default: return -1;
    }
}

/* ---- writer ---- */

struct ct_ckpt_writer {
    hid_t file, lcpl;
    char path[CT_PATH_MAX], tmp[CT_PATH_MAX + 8];
    int err;       /* first failure (sticky) */
    char msg[1024]; /* its message, re-raised on later calls */
};

static int writer_fail(ct_ckpt_writer *w, int code) {
    w->err = code;
    snprintf(w->msg, sizeof w->msg, "%s", ct_last_error());
    return code;
}

static int writer_sticky(ct_ckpt_writer *w) {
    return ct_errorf(w->err, "%s", w->msg);
}

/* Closes the HDF5 handles and removes the temp file. */
static void writer_discard(ct_ckpt_writer *w) {
    if (w->lcpl >= 0) H5Pclose(w->lcpl);
    if (w->file >= 0) H5Fclose(w->file);
    w->lcpl = w->file = -1;
    if (w->tmp[0]) unlink(w->tmp);
    H5Eclear2(H5E_DEFAULT);
}

int ct_ckpt_writer_open(const char *path, ct_ckpt_writer **out) {
    *out = NULL;
    h5_quiet();
    ct_ckpt_writer *w = calloc(1, sizeof *w);
    if (!w) return ct_errorf(CT_ERUNTIME, "%s: out of memory", path);
    w->file = w->lcpl = -1;
    int n1 = snprintf(w->path, sizeof w->path, "%s", path);
    int n2 = snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    if (n1 < 0 || (size_t)n1 >= sizeof w->path || n2 < 0 || (size_t)n2 >= sizeof w->tmp) {
        free(w);
        return ct_errorf(CT_EINPUT, "checkpoint path '%s' is too long", path);
    }
    /* Create (or truncate a stale) temp file ourselves first: the OS error
     * says precisely why it cannot be written (no directory, a directory in
     * the way, permissions), which HDF5's message does not. */
    struct stat st;
    if (lstat(w->tmp, &st) == 0 && !S_ISREG(st.st_mode)) {
        char keep[CT_PATH_MAX + 8];
        snprintf(keep, sizeof keep, "%s", w->tmp);
        free(w);
        return ct_errorf(CT_EINPUT, "%s: cannot save a checkpoint: %s is in the way and is not a "
                         "file; remove it", path, keep);
    }
    int fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int e = errno;
        free(w);
        return ct_errorf(e == ENOENT || e == ENOTDIR || e == EACCES || e == EROFS ? CT_EINPUT
                                                                                : CT_ERUNTIME,
                         "%s: cannot create the checkpoint's temp file: %s", path, strerror(e));
    }
    close(fd);

    char d[256] = "";
    hid_t fapl = make_fapl();
    /* Built in memory, written out at commit (h5_image.h: a full disk must
     * never reach HDF5's own file handling). */
    w->file = fapl < 0 ? -1 : ct_h5_mem_create(w->tmp, fapl);
    if (w->file < 0) h5_detail(d);
    if (fapl >= 0) H5Pclose(fapl);
    w->lcpl = w->file < 0 ? -1 : H5Pcreate(H5P_LINK_CREATE);
    if (w->file >= 0 && (w->lcpl < 0 || H5Pset_create_intermediate_group(w->lcpl, 1) < 0))
        h5_detail(d);
    if (d[0]) {
        int rc = ct_errorf(CT_ERUNTIME, "%s: cannot create an HDF5 file: %s", w->tmp, d);
        writer_discard(w);
        free(w);
        return rc;
    }
    /* The version stamp: what makes the file a ctuner checkpoint. */
    int version = CT_CKPT_FORMAT;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t at = sp < 0 ? -1 : H5Acreate2(w->file, VERSION_ATTR, H5T_STD_I32LE, sp, H5P_DEFAULT,
                                        H5P_DEFAULT);
    herr_t wr = at < 0 ? -1 : H5Awrite(at, H5T_NATIVE_INT, &version);
    if (wr < 0) h5_detail(d);
    if (at >= 0) H5Aclose(at);
    if (sp >= 0) H5Sclose(sp);
    if (wr < 0) {
        int rc = ct_errorf(CT_ERUNTIME, "%s: cannot write to the HDF5 file: %s", w->tmp, d);
        writer_discard(w);
        free(w);
        return rc;
    }
    *out = w;
    return CT_OK;
}

/* Chunk shape for the checksum filter: whole trailing dims, as many leading
 * rows as fit in CHUNK_BYTES; when a row is bigger, split the next dim, etc. */
static void chunk_dims(int ndim, const hsize_t *dims, size_t elem, hsize_t *chunk) {
    hsize_t budget = CHUNK_BYTES / elem;
    if (budget == 0) budget = 1;
    for (int i = 0; i < ndim; i++) chunk[i] = dims[i];
    for (int i = 0; i < ndim; i++) {
        hsize_t inner = 1;
        for (int j = i + 1; j < ndim; j++) inner *= chunk[j];
        if (inner * chunk[i] <= budget) break;
        if (inner <= budget) {
            chunk[i] = budget / inner;
            break;
        }
        chunk[i] = 1; /* rows are too big: split the next dim as well */
    }
}

/* Creates dataset `name` of file type ftype over dims and writes `data` in
 * memory type mtype. numel 0 gives an empty, unchunked dataset. HDF5 clears
 * its error stack on every API call, so the detail is taken right at the
 * first failing call, before the cleanup calls. */
static int write_dataset(ct_ckpt_writer *w, const char *name, hid_t ftype, hid_t mtype, int ndim,
                         const hsize_t *dims, const void *data) {
    if (w->err) return writer_sticky(w);
    int rc = check_name(name, w->path);
    if (rc) return writer_fail(w, rc);
    if (link_exists(w->file, name))
        return writer_fail(w, ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s' written twice",
                                        w->path, name));
    char d[256] = "";
    hsize_t numel = 1, chunk[CT_CKPT_MAX_DIMS];
    for (int i = 0; i < ndim; i++) numel *= dims[i];
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = space < 0 ? -1 : H5Pcreate(H5P_DATASET_CREATE);
    herr_t ok = dcpl < 0 ? -1 : 0;
    if (ok >= 0 && numel > 0) {
        chunk_dims(ndim, dims, H5Tget_size(ftype), chunk);
        ok = H5Pset_chunk(dcpl, ndim, chunk);
        if (ok >= 0) ok = H5Pset_fletcher32(dcpl);
    }
    hid_t ds = ok < 0 ? -1 : H5Dcreate2(w->file, name, ftype, space, w->lcpl, dcpl, H5P_DEFAULT);
    if (ds < 0) ok = -1;
    if (ok >= 0 && numel > 0) ok = H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (ds >= 0 && ok >= 0) {
        ok = H5Dclose(ds);
        ds = -1;
    }
    if (ok < 0) h5_detail(d);
    if (ds >= 0) H5Dclose(ds);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (ok < 0)
        return writer_fail(w, ct_errorf(CT_ERUNTIME, "checkpoint %s: cannot write dataset '%s': "
                                        "%s (disk full?)", w->tmp, name, d));
    return CT_OK;
}

static int put_array(ct_ckpt_writer *w, const char *name, ct_ckpt_kind kind, int ndim,
                     const int64_t *shape, const void *data) {
    if (w->err) return writer_sticky(w);
    int max_dims = kind == CT_CKPT_F32 ? CT_CKPT_MAX_DIMS : 1;
    if (ndim < 1 || ndim > max_dims)
        return writer_fail(w, ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s': %d dims "
                                        "(%s arrays take 1..%d)", w->path, name ? name : "?",
                                        ndim, ct_ckpt_kind_name(kind), max_dims));
    hsize_t dims[CT_CKPT_MAX_DIMS];
    bool empty = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return writer_fail(w, ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s': negative "
                                            "dim %lld", w->path, name ? name : "?",
                                            (long long)shape[i]));
        dims[i] = (hsize_t)shape[i];
        empty |= shape[i] == 0;
    }
    if (!data && !empty)
        return writer_fail(w, ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s' has no data",
                                        w->path, name ? name : "?"));
    return write_dataset(w, name, file_type_of(kind), mem_type_of(kind), ndim, dims, data);
}

int ct_ckpt_put_f32(ct_ckpt_writer *w, const char *name, int ndim, const int64_t *shape,
                    const float *data) {
    return put_array(w, name, CT_CKPT_F32, ndim, shape, data);
}
int ct_ckpt_put_i64(ct_ckpt_writer *w, const char *name, int64_t n, const int64_t *data) {
    return put_array(w, name, CT_CKPT_I64, 1, &n, data);
}
int ct_ckpt_put_u64(ct_ckpt_writer *w, const char *name, int64_t n, const uint64_t *data) {
    return put_array(w, name, CT_CKPT_U64, 1, &n, data);
}
int ct_ckpt_put_i32(ct_ckpt_writer *w, const char *name, int64_t n, const int32_t *data) {
    return put_array(w, name, CT_CKPT_I32, 1, &n, data);
}

int ct_ckpt_put_str(ct_ckpt_writer *w, const char *name, const char *text) {
    if (w->err) return writer_sticky(w);
    if (!text)
        return writer_fail(w, ct_errorf(CT_EINPUT, "checkpoint %s: string '%s' is NULL", w->path,
                                        name ? name : "?"));
    /* One fixed-length string of len+1 bytes (room for the terminator, and
     * never the size 0 HDF5 refuses), in a 1-element array so it can be chunked
     * and checksummed like everything else. */
    hid_t st = H5Tcopy(H5T_C_S1);
    if (st < 0 || H5Tset_size(st, strlen(text) + 1) < 0 ||
        H5Tset_strpad(st, H5T_STR_NULLTERM) < 0 || H5Tset_cset(st, H5T_CSET_UTF8) < 0) {
        char d[256];
        h5_detail(d);
        if (st >= 0) H5Tclose(st);
        return writer_fail(w, ct_errorf(CT_ERUNTIME, "checkpoint %s: string type for '%s': %s",
                                        w->path, name ? name : "?", d));
    }
    hsize_t one = 1;
    int rc = write_dataset(w, name, st, st, 1, &one, text);
    H5Tclose(st);
    return rc;
}

static void fsync_parent(const char *path) {
    char dir[CT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd); /* best effort: some file systems refuse directory fsync */
        close(fd);
    }
}

int ct_ckpt_writer_commit(ct_ckpt_writer *w) {
    if (!w) return ct_errorf(CT_ERUNTIME, "checkpoint commit without a writer");
    int rc = CT_OK;
    if (w->err) rc = writer_sticky(w);
    /* The image goes to the temp file with write(2) + fsync, so the data is
     * on disk before the rename makes it the checkpoint. */
    if (!rc) rc = ct_h5_mem_write(w->file, w->tmp);
    if (!rc) {
        char d[256] = "";
        if (H5Pclose(w->lcpl) < 0) h5_detail(d);
        w->lcpl = -1;
        if (H5Fclose(w->file) < 0 && !d[0]) h5_detail(d);
        w->file = -1;
        if (d[0]) rc = ct_errorf(CT_ERUNTIME, "checkpoint %s: cannot finish the file: %s", w->tmp, d);
    }
    if (!rc && rename(w->tmp, w->path) != 0)
        rc = ct_errorf(CT_ERUNTIME, "checkpoint %s: cannot rename %s into place: %s", w->path,
                       w->tmp, strerror(errno));
    if (rc) {
        writer_discard(w);
    } else {
        fsync_parent(w->path);
    }
    free(w);
    return rc;
}

void ct_ckpt_writer_abort(ct_ckpt_writer *w) {
    if (!w) return;
    writer_discard(w);
    free(w);
}

/* ---- reader ---- */

struct ct_ckpt_reader {
    hid_t file;
    int format;
    double file_bytes; /* the file's size: every chunk of ours lies inside it */
    char path[CT_PATH_MAX];
};

const char *ct_ckpt_path(const ct_ckpt_reader *r) { return r->path; }
int ct_ckpt_format(const ct_ckpt_reader *r) { return r->format; }

int ct_ckpt_open(const char *path, ct_ckpt_reader **out) {
    *out = NULL;
    h5_quiet();
    struct stat st;
    if (stat(path, &st) != 0)
        return ct_errorf(CT_EINPUT, "%s: cannot open checkpoint: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return ct_errorf(CT_EINPUT, "%s: not a ctuner checkpoint (not a file)", path);
    if (access(path, R_OK) != 0)
        return ct_errorf(CT_EINPUT, "%s: cannot read checkpoint: %s", path, strerror(errno));
    char d[256];
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return ct_errorf(CT_EINPUT, "%s: not a ctuner checkpoint (not an HDF5 file, or truncated "
                         "to %lld bytes)", path, (long long)st.st_size);
    }
    int sb = ct_h5_superblock_version(path);
    if (sb >= 0 && sb < 2) /* ours are 1.8+ files; older superblocks leave HDF5's metadata unchecked */
        return ct_errorf(CT_EINPUT, "%s: not a ctuner checkpoint (HDF5 superblock version %d, ctuner writes 2 or "
                         "later)", path, sb);
    ct_ckpt_reader *r = calloc(1, sizeof *r);
    if (!r) return ct_errorf(CT_ERUNTIME, "%s: out of memory", path);
    snprintf(r->path, sizeof r->path, "%s", path);
    r->file_bytes = (double)st.st_size;
    hid_t fapl = make_fapl();
    r->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (r->file < 0) h5_detail(d);
    if (fapl >= 0) H5Pclose(fapl);
    if (r->file < 0) {
        free(r);
        return ct_errorf(CT_EINPUT, "%s: checkpoint is truncated or corrupt (HDF5: %s); resume "
                         "from an older one", path, d);
    }
    htri_t has = H5Aexists(r->file, VERSION_ATTR);
    int version = 0;
    hid_t at = has > 0 ? H5Aopen(r->file, VERSION_ATTR, H5P_DEFAULT) : -1;
    hid_t at_type = at >= 0 ? H5Aget_type(at) : -1;
    bool ok = at_type >= 0 && H5Tget_class(at_type) == H5T_INTEGER &&
              H5Aread(at, H5T_NATIVE_INT, &version) >= 0;
    if (at_type >= 0) H5Tclose(at_type);
    if (at >= 0) H5Aclose(at);
    H5Eclear2(H5E_DEFAULT);
    if (!ok) {
        ct_ckpt_close(r);
        return ct_errorf(CT_EINPUT, "%s: not a ctuner checkpoint (HDF5 file without the '%s' "
                         "version stamp)", path, VERSION_ATTR);
    }
    if (version < 1 || version > CT_CKPT_FORMAT) {
        ct_ckpt_close(r);
        return ct_errorf(CT_EINPUT, "%s: checkpoint format %d, this build reads 1..%d: %s", path,
                         version, CT_CKPT_FORMAT,
                         version > CT_CKPT_FORMAT ? "use a newer ctuner" : "the file is corrupt");
    }
    r->format = version;
    *out = r;
    return CT_OK;
}

void ct_ckpt_close(ct_ckpt_reader *r) {
    if (!r) return;
    if (r->file >= 0) H5Fclose(r->file);
    H5Eclear2(H5E_DEFAULT);
    free(r);
}

bool ct_ckpt_has(ct_ckpt_reader *r, const char *name) {
    return name && check_name(name, r->path) == CT_OK && link_exists(r->file, name);
}

/* Kind of a dataset's file type; -1 when none of ours. */
static int kind_of_type(hid_t t) {
    H5T_class_t c = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    if (c == H5T_FLOAT && size == 4) return CT_CKPT_F32;
    if (c == H5T_INTEGER) {
        bool sgn = H5Tget_sign(t) == H5T_SGN_2;
        if (size == 8) return sgn ? CT_CKPT_I64 : CT_CKPT_U64;
        if (size == 4 && sgn) return CT_CKPT_I32;
    }
    if (c == H5T_STRING && H5Tis_variable_str(t) == 0) return CT_CKPT_STR;
    return -1;
}

/* Opens dataset `name` and reports its kind and shape. On success the caller
 * closes *ds. Strings report ndim 0 (their dataspace must hold one element). */
/* HDF5 allocates a whole chunk to read one, with the chunk's dims and its
 * stored size taken from the file; the chunk index (a v1 B-tree in the 1.8
 * format) has no checksum, so a damaged one can ask for gigabytes
 * (fuzz_checkpoint found 3.2 GB mallocs). Ours never exceed the dataset's
 * dims (chunk_dims), each stored chunk is its raw bytes plus the Fletcher32
 * sum, and it lies inside the file: anything else is damage. nd/dims: the
 * dataspace's; elem: the type's size. */
static bool chunks_sane(hid_t dset, int nd, const hsize_t *dims, size_t elem, double file_bytes) {
    hid_t pl = H5Dget_create_plist(dset);
    if (pl < 0) return false;
    bool ok = true;
    if (H5Pget_layout(pl) == H5D_CHUNKED) {
        hsize_t c[32];
        int cn = H5Pget_chunk(pl, 32, c);
        ok = cn == nd && nd >= 1 && nd <= CT_CKPT_MAX_DIMS;
        double chunk_bytes = (double)elem;
        for (int i = 0; ok && i < nd; i++) {
            ok = c[i] >= 1 && c[i] <= (dims[i] > 1 ? dims[i] : 1);
            chunk_bytes *= (double)c[i];
        }
#if H5_VERSION_GE(1, 10, 5)
        hid_t sp = ok ? H5Dget_space(dset) : -1;
        hsize_t n = 0;
        if (sp < 0 || H5Dget_num_chunks(dset, sp, &n) < 0) ok = false;
        for (hsize_t i = 0; ok && i < n; i++) {
            hsize_t off[32];
            unsigned mask = 0;
            haddr_t addr = 0;
            hsize_t size = 0;
            ok = H5Dget_chunk_info(dset, sp, i, off, &mask, &addr, &size) >= 0 && addr != HADDR_UNDEF &&
                 (double)size <= chunk_bytes + 64 && (double)addr + (double)size <= file_bytes;
        }
        if (sp >= 0) H5Sclose(sp);
#else
        (void)chunk_bytes;
        (void)file_bytes;
#endif
    }
    H5Pclose(pl);
    return ok;
}

/* The longest string dataset read back (the config text is a few KiB). */
#define MAX_STR_BYTES ((size_t)64 << 20)

static int open_dataset(ct_ckpt_reader *r, const char *name, hid_t *ds, ct_ckpt_kind *kind,
                        int *ndim, hsize_t dims[CT_CKPT_MAX_DIMS]) {
    *ds = -1;
    CT_TRY(check_name(name, r->path));
    if (!link_exists(r->file, name))
        return ct_errorf(CT_EINPUT, "checkpoint %s has no dataset '%s' (saved by a different "
                         "setup or an older format?)", r->path, name);
    char d[256];
    hid_t dset = H5Dopen2(r->file, name, H5P_DEFAULT);
    if (dset < 0)
        return ct_errorf(CT_EINPUT, "checkpoint %s: '%s' is not a readable dataset: truncated or "
                         "corrupt? (HDF5: %s)", r->path, name, h5_detail(d));
    hid_t t = H5Dget_type(dset), sp = H5Dget_space(dset);
    int k = t >= 0 ? kind_of_type(t) : -1;
    int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    bool shape_ok = nd >= 0 && nd <= CT_CKPT_MAX_DIMS &&
                    H5Sget_simple_extent_dims(sp, dims, NULL) >= 0;
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Eclear2(H5E_DEFAULT);
    /* Ours: arrays of 1..4 dims; strings with one element (scalar or [1]). */
    bool ours = k >= 0 && shape_ok &&
                (k == CT_CKPT_STR ? nd == 0 || (nd == 1 && dims[0] == 1) : nd >= 1);
    size_t elem = 0;
    if (ours) {
        hid_t t2 = H5Dget_type(dset);
        elem = t2 >= 0 ? H5Tget_size(t2) : 0;
        if (t2 >= 0) H5Tclose(t2);
    }
    if (ours && nd >= 1 && !chunks_sane(dset, nd, dims, elem, r->file_bytes)) {
        H5Dclose(dset);
        H5Eclear2(H5E_DEFAULT);
        return ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s' is truncated or corrupt (its chunks are larger "
                         "than the dataset)", r->path, name);
    }
    if (!ours) {
        H5Dclose(dset);
        return ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s' has a type or shape ctuner does "
                         "not write", r->path, name);
    }
    *ds = dset;
    *kind = (ct_ckpt_kind)k;
    *ndim = k == CT_CKPT_STR ? 0 : nd;
    return CT_OK;
}

int ct_ckpt_info(ct_ckpt_reader *r, const char *name, ct_ckpt_kind *kind, int *ndim,
                 int64_t shape[CT_CKPT_MAX_DIMS]) {
    hid_t ds;
    hsize_t dims[CT_CKPT_MAX_DIMS];
    CT_TRY(open_dataset(r, name, &ds, kind, ndim, dims));
    H5Dclose(ds);
    for (int i = 0; i < *ndim; i++) shape[i] = (int64_t)dims[i];
    return CT_OK;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

static int get_array(ct_ckpt_reader *r, const char *name, ct_ckpt_kind want, int ndim,
                     const int64_t *shape, void *out) {
    hid_t ds;
    ct_ckpt_kind kind;
    int nd;
    hsize_t dims[CT_CKPT_MAX_DIMS];
    CT_TRY(open_dataset(r, name, &ds, &kind, &nd, dims));
    int64_t got[CT_CKPT_MAX_DIMS];
    bool same = kind == want && nd == ndim;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        got[i] = (int64_t)dims[i];
        numel *= dims[i];
        if (same && got[i] != shape[i]) same = false;
    }
    if (!same) {
        H5Dclose(ds);
        char g[128], e[128];
        shape_str(g, sizeof g, nd, got);
        shape_str(e, sizeof e, ndim, shape);
        return ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s' is %s %s, expected %s %s (saved "
                         "by a different setup?)", r->path, name, ct_ckpt_kind_name(kind), g,
                         ct_ckpt_kind_name(want), e);
    }
    herr_t ok = numel ? H5Dread(ds, mem_type_of(want), H5S_ALL, H5S_ALL, H5P_DEFAULT, out) : 0;
    char d[256];
    if (ok < 0) h5_detail(d);
    H5Dclose(ds);
    if (ok < 0)
        return ct_errorf(CT_EINPUT, "checkpoint %s: cannot read dataset '%s': truncated or "
                         "corrupt (HDF5: %s)", r->path, name, d);
    return CT_OK;
}

int ct_ckpt_get_f32(ct_ckpt_reader *r, const char *name, int ndim, const int64_t *shape,
                    float *out) {
    return get_array(r, name, CT_CKPT_F32, ndim, shape, out);
}
int ct_ckpt_get_i64(ct_ckpt_reader *r, const char *name, int64_t n, int64_t *out) {
    return get_array(r, name, CT_CKPT_I64, 1, &n, out);
}
int ct_ckpt_get_u64(ct_ckpt_reader *r, const char *name, int64_t n, uint64_t *out) {
    return get_array(r, name, CT_CKPT_U64, 1, &n, out);
}
int ct_ckpt_get_i32(ct_ckpt_reader *r, const char *name, int64_t n, int32_t *out) {
    return get_array(r, name, CT_CKPT_I32, 1, &n, out);
}

int ct_ckpt_get_str(ct_ckpt_reader *r, const char *name, char **out) {
    *out = NULL;
    hid_t ds;
    ct_ckpt_kind kind;
    int nd;
    hsize_t dims[CT_CKPT_MAX_DIMS];
    CT_TRY(open_dataset(r, name, &ds, &kind, &nd, dims));
    if (kind != CT_CKPT_STR) {
        H5Dclose(ds);
        return ct_errorf(CT_EINPUT, "checkpoint %s: dataset '%s' is %s, expected a string", r->path,
                         name, ct_ckpt_kind_name(kind));
    }
    char d[256];
    hid_t t = H5Dget_type(ds); /* read with the file's own (fixed-size) string type */
    size_t size = t >= 0 ? H5Tget_size(t) : 0;
    if (size > MAX_STR_BYTES) size = 0; /* damage: a string type of gigabytes */
    char *buf = size ? malloc(size + 1) : NULL;
    herr_t ok = buf ? H5Dread(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) : -1;
    if (ok < 0) h5_detail(d);
    if (t >= 0) H5Tclose(t);
    H5Dclose(ds);
    if (ok < 0) {
        free(buf);
        if (size && !buf) return ct_errorf(CT_ERUNTIME, "checkpoint %s: out of memory", r->path);
        return ct_errorf(CT_EINPUT, "checkpoint %s: cannot read string '%s': truncated or corrupt "
                         "(HDF5: %s)", r->path, name, d);
    }
    buf[size] = '\0';
    *out = buf;
    return CT_OK;
}

/* ---- verification ---- */

typedef struct {
    int bad;
    double file_bytes; /* the file's size: no dataset of ours holds more (no compression) */
    char name[256], detail[256];
} verify_state;

/* H5Lvisit callback: reads every dataset whole (the Fletcher32 checksums
 * are checked on read). Stops at the first failure. */
static herr_t verify_one(hid_t group, const char *name, const H5L_info_t *info, void *data) {
    (void)info;
    verify_state *vs = data;
    hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
    if (obj < 0) {
        vs->bad = 1;
        snprintf(vs->name, sizeof vs->name, "%s", name);
        h5_detail(vs->detail);
        return 1;
    }
    herr_t ok = 0;
    if (H5Iget_type(obj) == H5I_DATASET) {
        hid_t t = H5Dget_type(obj), sp = H5Dget_space(obj);
        hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
        size_t sz = t >= 0 ? H5Tget_size(t) : 0;
        ok = t < 0 || sp < 0 || np < 0 || sz == 0 ? -1 : 0;
        int nd = ok ? -1 : H5Sget_simple_extent_ndims(sp);
        hsize_t dims[CT_CKPT_MAX_DIMS];
        if (!ok && (nd < 0 || nd > CT_CKPT_MAX_DIMS || H5Sget_simple_extent_dims(sp, dims, NULL) < 0)) ok = -1;
        if (!ok && nd >= 1 && !chunks_sane(obj, nd, dims, sz, vs->file_bytes)) ok = -1;
        /* [np * sz] the dataset's raw values; sizes come from the file, so a
         * damaged header asking for more than 1 GiB counts as damage. */
        size_t bytes = ok < 0 ? 0 : (size_t)np * sz;
        if (!ok && (double)np * (double)sz > (double)((size_t)1 << 30)) ok = -1;
        if (!ok && vs->file_bytes > 0 && (double)np * (double)sz > vs->file_bytes) ok = -1; /* sparse: damage */
        void *buf = !ok && bytes ? malloc(bytes) : NULL;
        if (!ok && bytes && !buf) ok = -1;
        if (!ok && bytes) ok = H5Dread(obj, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        free(buf);
        if (t >= 0) H5Tclose(t);
        if (sp >= 0) H5Sclose(sp);
    }
    if (ok < 0) {
        vs->bad = 1;
        snprintf(vs->name, sizeof vs->name, "%s", name);
        h5_detail(vs->detail);
    }
    H5Oclose(obj);
    return ok < 0 ? 1 : 0;
}

int ct_ckpt_verify(const char *path) {
    ct_ckpt_reader *r = NULL;
    CT_TRY(ct_ckpt_open(path, &r));
    verify_state vs = {0};
    struct stat st;
    if (stat(path, &st) == 0) vs.file_bytes = (double)st.st_size;
    herr_t e = H5Lvisit(r->file, H5_INDEX_NAME, H5_ITER_INC, verify_one, &vs);
    if (e < 0 && !vs.bad) {
        vs.bad = 1;
        snprintf(vs.name, sizeof vs.name, "(the group structure)");
        h5_detail(vs.detail);
    }
    ct_ckpt_close(r);
    if (vs.bad)
        return ct_errorf(CT_EINPUT, "%s: checkpoint is damaged: '%s' cannot be read (HDF5: %s)", path, vs.name,
                         vs.detail);
    return CT_OK;
}

int ct_ckpt_put_tensor(ct_ckpt_writer *w, const char *name, const ct_backend *be, const ct_tensor *t) {
    if (t->dtype != CT_F32) return ct_errorf(CT_EINPUT, "checkpoint: '%s' is not an f32 tensor", name);
    if (be->device == CT_CPU) return ct_ckpt_put_f32(w, name, t->ndim, t->shape, t->data);
    float *host = malloc(ct_nbytes(t) ? ct_nbytes(t) : 1); /* [numel] */
    if (!host) return ct_errorf(CT_ERUNTIME, "checkpoint: out of memory for '%s'", name);
    int rc = be->download(host, t->data, ct_nbytes(t));
    if (!rc) rc = ct_ckpt_put_f32(w, name, t->ndim, t->shape, host);
    free(host);
    return rc;
}

int ct_ckpt_get_tensor(ct_ckpt_reader *r, const char *name, const ct_backend *be, ct_tensor *t) {
    if (t->dtype != CT_F32) return ct_errorf(CT_EINPUT, "checkpoint: '%s' is not an f32 tensor", name);
    if (be->device == CT_CPU) return ct_ckpt_get_f32(r, name, t->ndim, t->shape, t->data);
    float *host = malloc(ct_nbytes(t) ? ct_nbytes(t) : 1); /* [numel] */
    if (!host) return ct_errorf(CT_ERUNTIME, "checkpoint: out of memory for '%s'", name);
    int rc = ct_ckpt_get_f32(r, name, t->ndim, t->shape, host);
    if (!rc) rc = be->upload(t->data, host, ct_nbytes(t));
    free(host);
    return rc;
}
