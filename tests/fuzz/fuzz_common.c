/* See fuzz_common.h. */
#include "tests/fuzz/fuzz_common.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[256];

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) != 0) rm_tree(p);
    }
    closedir(d);
    rmdir(dir);
}

static void cleanup(void) {
    if (g_dir[0]) rm_tree(g_dir);
}

const char *fz_dir(void) {
    if (!g_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/ct_fuzz.XXXXXX", base && base[0] ? base : "/tmp");
        if (!mkdtemp(g_dir)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(cleanup);
    }
    return g_dir;
}

const char *fz_write(const char *name, const uint8_t *data, size_t size) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", fz_dir(), name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(path);
        abort();
    }
    for (size_t off = 0; off < size;) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0) {
            perror(path);
            abort();
        }
        off += (size_t)n;
    }
    close(fd);
    return path;
}

const char *fz_fixtures(void) {
    const char *e = getenv("CT_FIXTURES");
    return e && e[0] ? e : CT_FIXTURES;
}

void fz_assert(int cond, const char *what) {
    if (cond) return;
    fprintf(stderr, "fuzz: assertion failed: %s\n", what);
    abort();
}

const ct_tokenizer *fz_fixture_tokenizer(int which) {
    static ct_tokenizer *tok[2];
    which = which ? 1 : 0;
    if (!tok[which]) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", fz_fixtures(), which ? "internlm2-chat-7b" : "stories260k-internlm2");
        if (ct_tok_load(p, &tok[which]) != 0) {
            fprintf(stderr, "fuzz: cannot load the tokenizer %s\n", p);
            abort();
        }
    }
    return tok[which];
}

void fz_check_encoded(const ct_tokenizer *t, const ct_ids *ids) {
    int32_t V = ct_tok_vocab_size(t);
    for (size_t i = 0; i < ids->n; i++) fz_assert(ids->v[i] >= 0 && ids->v[i] < V, "ids inside the vocabulary");
    char *text = NULL;
    size_t len = 0;
    fz_assert(ct_tok_decode(t, ids->v, ids->n, true, &text, &len) == 0, "encoded ids decode");
    free(text);
}
