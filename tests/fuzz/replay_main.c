/* A main for the fuzz targets without libFuzzer: runs LLVMFuzzerTestOneInput
 * once on every file named on the command line or found (not recursively) in
 * a directory named there, in name order; prints how many ran. A crash or a
 * failed fz_assert aborts, so the ctest fails. No argument names nothing to
 * run: exit 2. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz_common.h"

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) abort();
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        if (got == 0) break;
        n += got;
    }
    fclose(f);
    fprintf(stderr, "replay %s (%zu bytes)\n", path, n);
    /* a copy of exactly n bytes, so ASan sees a read past the input */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) abort();
    if (n) memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    int ran = 0, bad = 0;
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) != 0) {
            perror(argv[a]);
            bad++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad += run_file(argv[a]);
            ran++;
            continue;
        }
        struct dirent **list = NULL;
        int n = scandir(argv[a], &list, NULL, alphasort);
        if (n < 0) {
            perror(argv[a]);
            bad++;
            continue;
        }
        for (int i = 0; i < n; i++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[a], list[i]->d_name);
            if (list[i]->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
                bad += run_file(p);
                ran++;
            }
            free(list[i]);
        }
        free(list);
    }
    printf("%d input(s) replayed, %d unreadable\n", ran, bad);
    return bad ? 1 : 0;
}
