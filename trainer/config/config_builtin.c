/* The built-in configs (the .yaml files of configs/): where they are found at run time, and
 * their names. The binary may run from a build directory, an install prefix or
 * beside the sources, so several places are tried in a fixed order. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "trainer/config/config.h"
#include "trainer/io/fsutil.h"

static bool try_dir(const char *dir, char *buf, size_t cap) {
    if (!ct_path_is_dir(dir) || strlen(dir) >= cap) return false;
    strcpy(buf, dir);
    return true;
}

int ct_config_builtin_dir(char *buf, size_t cap) {
    const char *env = getenv("CTUNER_CONFIG_DIR");
    if (env && *env) {
        if (try_dir(env, buf, cap)) return CT_OK;
        return ct_errorf(CT_EINPUT, "CTUNER_CONFIG_DIR=%s is not a directory (point it at a directory of .yaml "
                         "configs, or unset it)", env);
    }
    char exe[CT_PATH_MAX], cand[CT_PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(cand, sizeof cand, "%s/../configs", exe);
        if (try_dir(cand, buf, cap)) return CT_OK;
        snprintf(cand, sizeof cand, "%s/../share/ctuner/configs", exe);
        if (try_dir(cand, buf, cap)) return CT_OK;
    }
#ifdef CT_SOURCE_DIR
    if (try_dir(CT_SOURCE_DIR "/configs", buf, cap)) return CT_OK;
#endif
    return ct_errorf(CT_EINPUT, "no built-in configs found beside the executable (../configs, "
                     "../share/ctuner/configs) or in the source tree; set CTUNER_CONFIG_DIR to the configs/ "
                     "directory of ctuner");
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void ct_config_names_free(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

int ct_config_builtin_names(const char *dir, char ***names, size_t *n) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return ct_errorf(CT_EINPUT, "%s: cannot list the configs directory", dir);
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = CT_OK;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len <= 5 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            char **nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                rc = ct_errorf(CT_ERUNTIME, "out of memory listing %s", dir);
                break;
            }
            v = nv;
        }
        if (!(v[cnt] = strndup(e->d_name, len - 5))) {
            rc = ct_errorf(CT_ERUNTIME, "out of memory listing %s", dir);
            break;
        }
        cnt++;
    }
    closedir(d);
    if (rc) {
        ct_config_names_free(v, cnt);
        return rc;
    }
    if (cnt) qsort(v, cnt, sizeof *v, cmp_str);
    *names = v;
    *n = cnt;
    return CT_OK;
}

size_t ct_config_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 255) la = 255;
    if (lb > 255) lb = 255;
    size_t row[256];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}
