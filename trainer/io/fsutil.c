/* File-system helpers: atomic files and directories, copies, JSON files.
 * Every writer in ctuner goes through ct_afile_* so that a crash or an error
 * never leaves a half-written file under its final name. */
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "datasets/file_check.h"

/* Missing or unreadable inputs are the user's to fix; anything else is an I/O failure. */
static int os_error_code(int e) {
    return (e == ENOENT || e == ENOTDIR || e == EACCES || e == EISDIR || e == ELOOP ||
            e == ENAMETOOLONG) ? CT_EINPUT : CT_ERUNTIME;
}

int ct_path_join(char *buf, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    int n = dl ? snprintf(buf, cap, "%.*s/%s", (int)dl, dir, name) : snprintf(buf, cap, "%s", name);
    if (n < 0 || (size_t)n >= cap)
        return ct_errorf(CT_EINPUT, "path '%s/%s' is longer than %zu bytes", dir, name, cap - 1);
    return CT_OK;
}

bool ct_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool ct_path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int ct_dir_is_empty(const char *dir, bool *empty) {
    DIR *d = opendir(dir);
    if (!d) return ct_errorf(os_error_code(errno), "%s: cannot open directory: %s", dir, strerror(errno));
    *empty = true;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            *empty = false;
            break;
        }
    }
    closedir(d);
    return CT_OK;
}

int ct_mkdirs(const char *path) {
    char buf[CT_PATH_MAX];
    size_t n = strlen(path);
    if (n == 0) return CT_OK;
    if (n >= sizeof buf) return ct_errorf(CT_EINPUT, "path '%s' is too long", path);
    memcpy(buf, path, n + 1);
    /* Create each prefix ending before a '/', then the whole path. */
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char keep = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ct_errorf(os_error_code(errno), "%s: cannot create directory: %s", buf, strerror(errno));
        buf[i] = keep;
    }
    if (!ct_path_is_dir(path)) return ct_errorf(CT_EINPUT, "%s exists and is not a directory", path);
    return CT_OK;
}

static _Thread_local int g_rm_errno;

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    if (remove(p) != 0 && errno != ENOENT && !g_rm_errno) g_rm_errno = errno;
    return 0; /* keep going: remove as much as possible */
}

int ct_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return CT_OK;
    g_rm_errno = 0;
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0 && !g_rm_errno) g_rm_errno = errno;
    if (g_rm_errno) return ct_errorf(CT_ERUNTIME, "%s: cannot remove: %s", path, strerror(g_rm_errno));
    return CT_OK;
}

/* Splits a path into its directory ("." when none) and last component, ignoring
 * trailing slashes. */
static int split_path(const char *path, char *dir, size_t dcap, char *base, size_t bcap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t slash = n;
    while (slash > 0 && path[slash - 1] != '/') slash--;
    size_t blen = n - slash;
    if (blen == 0 || blen >= bcap) return ct_errorf(CT_EINPUT, "'%s' has no usable file name", path);
    memcpy(base, path + slash, blen);
    base[blen] = '\0';
    size_t dlen = slash > 1 ? slash - 1 : slash; /* drop the separator unless it is the root */
    if (dlen == 0) {
        snprintf(dir, dcap, ".");
    } else {
        if (dlen >= dcap) return ct_errorf(CT_EINPUT, "path '%s' is too long", path);
        memcpy(dir, path, dlen);
        dir[dlen] = '\0';
    }
    return CT_OK;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd); /* best effort: some file systems refuse directory fsync */
        close(fd);
    }
}

int ct_afile_open(ct_atomic_file *af, const char *path) {
    memset(af, 0, sizeof *af);
    char dir[CT_PATH_MAX], base[256];
    CT_TRY(split_path(path, dir, sizeof dir, base, sizeof base));
    if (strlen(path) >= sizeof af->path) return ct_errorf(CT_EINPUT, "path '%s' is too long", path);
    snprintf(af->path, sizeof af->path, "%s", path);
    char name[300];
    snprintf(name, sizeof name, ".%s.tmp-XXXXXX", base);
    CT_TRY(ct_path_join(af->tmp, sizeof af->tmp, dir, name));
    int fd = mkstemp(af->tmp);
    if (fd < 0) {
        int e = errno;
        af->tmp[0] = '\0';
        return ct_errorf(os_error_code(e), "%s: cannot create a file in %s: %s", path, dir, strerror(e));
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600; outputs are ordinary files */
    af->fp = fdopen(fd, "wb");
    if (!af->fp) {
        int e = errno;
        close(fd);
        unlink(af->tmp);
        af->tmp[0] = '\0';
        return ct_errorf(CT_ERUNTIME, "%s: %s", path, strerror(e));
    }
    setvbuf(af->fp, NULL, _IOFBF, 1 << 20);
    return CT_OK;
}

int ct_afile_write(ct_atomic_file *af, const void *data, size_t n) {
    if (!af->fp) return ct_errorf(CT_ERUNTIME, "%s: write after close", af->path);
    if (n && fwrite(data, 1, n, af->fp) != n)
        return ct_errorf(CT_ERUNTIME, "%s: write failed: %s (disk full?)", af->path, strerror(errno));
    return CT_OK;
}

void ct_afile_abort(ct_atomic_file *af) {
    if (af->fp) {
        fclose(af->fp);
        af->fp = NULL;
    }
    if (af->tmp[0]) {
        unlink(af->tmp);
        af->tmp[0] = '\0';
    }
}

int ct_afile_commit(ct_atomic_file *af) {
    if (!af->fp) return ct_errorf(CT_ERUNTIME, "%s: commit after close", af->path);
    int e = 0;
    if (fflush(af->fp) != 0 || fsync(fileno(af->fp)) != 0) e = errno;
    if (fclose(af->fp) != 0 && !e) e = errno;
    af->fp = NULL;
    if (e) {
        ct_afile_abort(af);
        return ct_errorf(CT_ERUNTIME, "%s: cannot write: %s (disk full?)", af->path, strerror(e));
    }
    if (rename(af->tmp, af->path) != 0) {
        e = errno;
        ct_afile_abort(af);
        return ct_errorf(os_error_code(e), "%s: cannot rename the finished file into place: %s",
                         af->path, strerror(e));
    }
    af->tmp[0] = '\0';
    char dir[CT_PATH_MAX], base[256];
    if (split_path(af->path, dir, sizeof dir, base, sizeof base) == CT_OK) fsync_dir(dir);
    return CT_OK;
}

int ct_file_write_atomic(const char *path, const void *data, size_t n) {
    ct_atomic_file af;
    CT_TRY(ct_afile_open(&af, path));
    int rc = ct_afile_write(&af, data, n);
    if (rc) {
        ct_afile_abort(&af);
        return rc;
    }
    return ct_afile_commit(&af);
}

int ct_file_read_all(const char *path, char **data, size_t *n) {
    *data = NULL;
    *n = 0;
    FILE *f;
    size_t size;
    CT_TRY(ct_fopen_regular(path, "the file", &f, &size));
    char *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        return ct_errorf(CT_ERUNTIME, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = fread(buf, 1, size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != size) {
        free(buf);
        return ct_errorf(CT_ERUNTIME, "%s: read failed (%zu of %zu bytes)", path, got, size);
    }
    buf[size] = '\0';
    *data = buf;
    *n = size;
    return CT_OK;
}

int ct_file_copy(const char *src, const char *dst) {
    FILE *in;
    CT_TRY(ct_fopen_regular(src, "the file to copy", &in, NULL));
    ct_atomic_file af;
    int rc = ct_afile_open(&af, dst);
    if (rc) {
        fclose(in);
        return rc;
    }
    char buf[1 << 16];
    size_t got;
    while (rc == CT_OK && (got = fread(buf, 1, sizeof buf, in)) > 0) rc = ct_afile_write(&af, buf, got);
    if (rc == CT_OK && ferror(in)) rc = ct_errorf(CT_ERUNTIME, "%s: read failed", src);
    fclose(in);
    if (rc) {
        ct_afile_abort(&af);
        return rc;
    }
    return ct_afile_commit(&af);
}

int ct_tmpdir_beside(const char *final_dir, char *buf, size_t cap) {
    char parent[CT_PATH_MAX], base[256];
    CT_TRY(split_path(final_dir, parent, sizeof parent, base, sizeof base));
    CT_TRY(ct_mkdirs(parent));
    char name[300];
    snprintf(name, sizeof name, ".%s.tmp-XXXXXX", base);
    CT_TRY(ct_path_join(buf, cap, parent, name));
    if (!mkdtemp(buf))
        return ct_errorf(os_error_code(errno), "%s: cannot create a temporary directory in %s: %s",
                         final_dir, parent, strerror(errno));
    (void)chmod(buf, 0755); /* mkdtemp makes 0700; the result is an ordinary directory */
    return CT_OK;
}

int ct_dir_commit(const char *tmp_dir, const char *final_dir) {
    struct stat st;
    if (lstat(final_dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return ct_errorf(CT_EINPUT, "%s exists and is not a directory: choose another output path",
                             final_dir);
        bool empty = false;
        CT_TRY(ct_dir_is_empty(final_dir, &empty));
        if (!empty)
            return ct_errorf(CT_EINPUT, "%s exists and is not empty: choose another output path or remove it",
                             final_dir);
    }
    /* rename(2) replaces an empty directory atomically. */
    if (rename(tmp_dir, final_dir) != 0)
        return ct_errorf(os_error_code(errno), "%s: cannot move the finished directory into place: %s",
                         final_dir, strerror(errno));
    char parent[CT_PATH_MAX], base[256];
    if (split_path(final_dir, parent, sizeof parent, base, sizeof base) == CT_OK) fsync_dir(parent);
    return CT_OK;
}

/* ".<name>.tmp-" + 6 mkstemp characters, <name> non-empty (and == base when given). */
static bool is_our_temp(const char *name, const char *base) {
    size_t n = strlen(name);
    if (n < 1 + 1 + 5 + 6 || name[0] != '.') return false;
    const char *tail = name + n - 6;
    for (int i = 0; i < 6; i++) {
        char c = tail[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return false;
    }
    if (memcmp(tail - 5, ".tmp-", 5) != 0) return false;
    size_t blen = (size_t)(tail - 5 - (name + 1));
    if (blen == 0) return false;
    return !base || (strlen(base) == blen && memcmp(name + 1, base, blen) == 0);
}

int ct_reclaim_temps(const char *dir, const char *base, int *removed) {
    if (removed) *removed = 0;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT || errno == ENOTDIR ? CT_OK
                                                       : ct_errorf(os_error_code(errno), "%s: cannot list: %s", dir,
                                                                   strerror(errno));
    int rc = CT_OK;
    struct dirent *e;
    while (rc == CT_OK && (e = readdir(d))) {
        if (!is_our_temp(e->d_name, base)) continue;
        char path[CT_PATH_MAX];
        if (ct_path_join(path, sizeof path, dir, e->d_name) != CT_OK) continue;
        rc = ct_remove_tree(path);
        if (rc == CT_OK && removed) (*removed)++;
    }
    closedir(d);
    return rc;
}

int ct_reclaim_temps_of(const char *final_path, int *removed) {
    char dir[CT_PATH_MAX], base[256];
    CT_TRY(split_path(final_path, dir, sizeof dir, base, sizeof base));
    return ct_reclaim_temps(dir, base, removed);
}

json_t *ct_json_load(const char *path, size_t flags) {
    char *text = NULL;
    size_t n = 0;
    if (ct_file_read_all(path, &text, &n)) return NULL;
    json_error_t err;
    json_t *j = json_loadb(text, n, flags, &err);
    free(text);
    if (!j) {
        ct_errorf(CT_EINPUT, "%s:%d:%d: invalid JSON: %s", path, err.line, err.column, err.text);
        return NULL;
    }
    return j;
}

int ct_json_write_atomic(const char *path, const json_t *j, size_t flags) {
    char *text = json_dumps(j, JSON_INDENT(2) | flags);
    if (!text) return ct_errorf(CT_ERUNTIME, "%s: cannot serialise JSON (out of memory?)", path);
    size_t n = strlen(text);
    /* json_dumps gives no final newline; files written by Python's json.dump with a
     * trailing "\n" are what users expect to diff against. */
    char *withnl = realloc(text, n + 2);
    if (!withnl) {
        free(text);
        return ct_errorf(CT_ERUNTIME, "%s: out of memory", path);
    }
    withnl[n] = '\n';
    withnl[n + 1] = '\0';
    int rc = ct_file_write_atomic(path, withnl, n + 1);
    free(withnl);
    return rc;
}
