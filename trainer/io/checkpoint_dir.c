/* A work directory's checkpoints: naming (iter_<N>.h5 beside an optional
 * iter_<N>_adapter/ directory), listing, the newest one for `--resume auto`,
 * and save_total_limit retention. See checkpoint.h. */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"

int ct_ckpt_iter_path(char *buf, size_t cap, const char *work_dir, int64_t iter) {
    char name[64];
    snprintf(name, sizeof name, "iter_%" PRId64 ".h5", iter);
    return ct_path_join(buf, cap, work_dir, name);
}

static int adapter_dir_path(char *buf, size_t cap, const char *work_dir, int64_t iter) {
    char name[64];
    snprintf(name, sizeof name, "iter_%" PRId64 "_adapter", iter);
    return ct_path_join(buf, cap, work_dir, name);
}

/* "iter_<N>.h5" exactly as ct_ckpt_iter_path writes it (decimal digits, no
 * sign, no leading zero, no overflow) -> N; else -1. */
static int64_t parse_iter_name(const char *name) {
    if (strncmp(name, "iter_", 5) != 0) return -1;
    const char *p = name + 5;
    int64_t n = 0;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > (INT64_MAX - 9) / 10) return -1;
        n = n * 10 + (*p - '0');
    }
    return strcmp(p, ".h5") == 0 ? n : -1;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int ct_ckpt_list(const char *work_dir, int64_t **iters, size_t *n) {
    *iters = NULL;
    *n = 0;
    DIR *d = opendir(work_dir);
    if (!d) {
        if (errno == ENOENT) return CT_OK; /* a fresh run: nothing saved yet */
        return ct_errorf(CT_EINPUT, "%s: cannot list the work directory: %s", work_dir,
                         strerror(errno));
    }
    int64_t *v = NULL;
    size_t len = 0, cap = 0;
    struct dirent *e;
    int rc = CT_OK;
    while ((e = readdir(d))) {
        int64_t it = parse_iter_name(e->d_name);
        if (it < 0) continue;
        char path[CT_PATH_MAX];
        if (ct_path_join(path, sizeof path, work_dir, e->d_name) != CT_OK) continue;
        if (ct_path_is_dir(path)) continue; /* only files are checkpoints */
        if (len == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                rc = ct_errorf(CT_ERUNTIME, "%s: out of memory listing checkpoints", work_dir);
                break;
            }
            v = nv;
        }
        v[len++] = it;
    }
    closedir(d);
    if (rc) {
        free(v);
        return rc;
    }
    if (len) qsort(v, len, sizeof *v, cmp_i64);
    *iters = v;
    *n = len;
    return CT_OK;
}

int ct_ckpt_find_latest(const char *work_dir, char *buf, size_t cap, int64_t *iter, bool *found) {
    *found = false;
    if (cap) buf[0] = '\0';
    int64_t *v;
    size_t n;
    CT_TRY(ct_ckpt_list(work_dir, &v, &n));
    int rc = CT_OK;
    if (n) {
        rc = ct_ckpt_iter_path(buf, cap, work_dir, v[n - 1]);
        if (!rc) {
            *found = true;
            if (iter) *iter = v[n - 1];
        }
    }
    free(v);
    return rc;
}

int ct_ckpt_reclaim(const char *work_dir, int *removed) {
    int n = 0;
    CT_TRY(ct_reclaim_temps(work_dir, NULL, &n));
    DIR *d = opendir(work_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t len = strlen(e->d_name);
            char name[256];
            if (len < 5 || len >= sizeof name || strcmp(e->d_name + len - 4, ".tmp") != 0) continue;
            memcpy(name, e->d_name, len - 4);
            name[len - 4] = '\0';
            char path[CT_PATH_MAX];
            if (parse_iter_name(name) < 0 || ct_path_join(path, sizeof path, work_dir, e->d_name) != CT_OK ||
                ct_path_is_dir(path))
                continue;
            if (unlink(path) == 0) n++;
        }
        closedir(d);
    }
    if (removed) *removed = n;
    return CT_OK;
}

int ct_ckpt_find_intact(const char *work_dir, char *buf, size_t cap, int64_t *iter, bool *found,
                        void (*note)(void *ctx, const char *path, const char *why), void *ctx) {
    *found = false;
    if (cap) buf[0] = '\0';
    int64_t *v;
    size_t n;
    CT_TRY(ct_ckpt_list(work_dir, &v, &n));
    int rc = CT_OK;
    for (size_t i = n; i-- > 0 && !rc && !*found;) {
        char path[CT_PATH_MAX];
        rc = ct_ckpt_iter_path(path, sizeof path, work_dir, v[i]);
        if (rc) break;
        if (ct_ckpt_verify(path) != CT_OK) {
            if (note) note(ctx, path, ct_last_error());
            ct_error_clear();
            continue;
        }
        if (strlen(path) >= cap) {
            rc = ct_errorf(CT_EINPUT, "%s: path too long", path);
            break;
        }
        snprintf(buf, cap, "%s", path);
        if (iter) *iter = v[i];
        *found = true;
    }
    free(v);
    return rc;
}

int ct_ckpt_retain(const char *work_dir, int limit, int *removed) {
    if (removed) *removed = 0;
    if (limit <= 0) return CT_OK; /* keep all */
    int64_t *v;
    size_t n;
    CT_TRY(ct_ckpt_list(work_dir, &v, &n));
    int rc = CT_OK;
    for (size_t i = 0; rc == CT_OK && n > (size_t)limit && i < n - (size_t)limit; i++) {
        char h5[CT_PATH_MAX], adir[CT_PATH_MAX];
        rc = ct_ckpt_iter_path(h5, sizeof h5, work_dir, v[i]);
        if (!rc) rc = adapter_dir_path(adir, sizeof adir, work_dir, v[i]);
        /* The adapter first: an interruption then leaves a checkpoint without
         * its adapter (removed next time), never an orphaned adapter. */
        if (!rc && ct_path_is_dir(adir)) rc = ct_remove_tree(adir);
        if (!rc && unlink(h5) != 0 && errno != ENOENT)
            rc = ct_errorf(CT_ERUNTIME, "%s: cannot delete an old checkpoint (save_total_limit "
                           "%d): %s", h5, limit, strerror(errno));
        if (!rc && removed) (*removed)++;
    }
    free(v);
    return rc;
}
