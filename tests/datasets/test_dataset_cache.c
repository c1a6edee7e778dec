/* The HDF5 dataset cache: the first open builds and saves, the second is a hit
 * (faster, same dataset); changing the data file, the template or max_length
 * is a miss; a truncated file, a flipped payload byte, a file made for other
 * inputs, a missing dataset and a mis-sized one are each rebuilt (never
 * trusted), and the result equals a fresh build; no temp file is left; an
 * unwritable cache dir still returns the dataset, with the write error. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hdf5.h>

#include "autograd/ct_clock.h"
#include "datasets/dataset_cache.h"
#include "datasets/sha256.h"
#include "testutil.h"

static char tmpdir[64], cache_dir[128], data_path[128];

static void write_data(int n_records, const char *extra) {
    FILE *f = fopen(data_path, "w");
    for (int i = 0; i < n_records; i++)
        fprintf(f,
                "{\"instruction\": \"Explain item %d of the list in one or two sentences, please.\", \"input\": "
                "\"%s\", \"output\": \"Item %d is about %s; it matters because %d is %s. 第%d项。\"}\n",
                i, i % 4 ? "" : "Keep it short.", i, i % 2 ? "cats" : "the weather", i * 7, i % 3 ? "odd" : "even", i);
    if (extra) fputs(extra, f);
    fclose(f);
}

static bool ds_equal(const ct_dataset *a, const ct_dataset *b) {
    if (a->n_samples != b->n_samples || a->rows.n_rows != b->rows.n_rows || a->max_length != b->max_length ||
        a->pad_id != b->pad_id)
        return false;
    size_t ns = (size_t)a->n_samples, nt = (size_t)a->sample_off[ns], nr = (size_t)a->rows.n_rows;
    return memcmp(a->sample_off, b->sample_off, (ns + 1) * 8) == 0 && memcmp(a->ids, b->ids, nt * 4) == 0 &&
           memcmp(a->labels, b->labels, nt * 4) == 0 && memcmp(a->rows.row_off, b->rows.row_off, (nr + 1) * 8) == 0 &&
           memcmp(a->rows.row_samples, b->rows.row_samples, ns * 8) == 0 &&
           memcmp(&a->stats, &b->stats, sizeof a->stats) == 0;
}

static int count_files(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
    closedir(d);
    return n;
}

/* Opens with the cache and checks hit/miss, the reason and equality with a fresh build. */
static void open_and_check(const char *what, const ct_ds_config *cfg, const ct_tokenizer *tok, bool want_hit,
                           const char *want_reason, double *seconds) {
    ct_dataset ds, fresh;
    ct_ds_cache_info info;
    double t0 = ct_now_s();
    CHECK_OK(ct_ds_open(cfg, tok, &ds, &info));
    if (seconds) *seconds = ct_now_s() - t0;
    CHECK(info.hit == want_hit, "%s: hit %d, want %d (reason: %s)", what, info.hit, want_hit, info.reason);
    CHECK(!want_reason || strstr(info.reason, want_reason), "%s: reason [%s], want [%s]", what, info.reason,
          want_reason);
    CHECK(info.write_error[0] == '\0', "%s: write error %s", what, info.write_error);
    ct_ds_config nocache = *cfg;
    nocache.cache_dir = NULL;
    CHECK_OK(ct_dataset_prepare(&nocache, tok, &fresh));
    CHECK(ds_equal(&ds, &fresh), "%s: cached dataset differs from a fresh build", what);
    ct_dataset_free(&ds);
    ct_dataset_free(&fresh);
}

/* The cache file of a config (from its key). */
static void path_of(const ct_ds_config *cfg, char *path, size_t cap) {
    uint8_t key[32];
    char hex[65];
    CHECK_OK(ct_ds_cache_key(cfg, key));
    ct_sha256_hex(key, hex);
    snprintf(path, cap, "%s/ds-%.32s.h5", cfg->cache_dir, hex);
}

static void truncate_file(const char *path, double frac) {
    struct stat st;
    stat(path, &st);
    CHECK(truncate(path, (off_t)((double)st.st_size * frac)) == 0, "truncate %s", path);
}

/* Flips one byte of the ids payload (found by its first 64 bytes). */
static void flip_payload(const char *path, const ct_dataset *ds) {
    FILE *f = fopen(path, "r+b");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    char *buf = malloc((size_t)n);
    fseek(f, 0, SEEK_SET);
    CHECK(fread(buf, 1, (size_t)n, f) == (size_t)n, "read cache file");
    char *at = memmem(buf, (size_t)n, ds->ids, 64);
    CHECK(at != NULL, "ids payload found in the file");
    if (at) {
        long off = (long)(at - buf) + 4 * 100;
        fseek(f, off, SEEK_SET);
        fputc(buf[off] ^ 0x01, f);
    }
    fclose(f);
    free(buf);
}

/* Removes one dataset, or replaces it by a shorter one. */
static void damage_dataset(const char *path, const char *name, bool shorten) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK(f >= 0, "open %s", path);
    CHECK(H5Ldelete(f, name, H5P_DEFAULT) >= 0, "delete %s", name);
    if (shorten) {
        hsize_t n = 10;
        int32_t v[10] = {0};
        hid_t sp = H5Screate_simple(1, &n, NULL);
        hid_t d = H5Dcreate2(f, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        H5Dclose(d);
        H5Sclose(sp);
    }
    H5Fclose(f);
}

static void test_cache(const ct_tokenizer *tok, const char *tok_path) {
    write_data(2000, NULL);
    ct_ds_config cfg = ct_ds_config_default();
    cfg.data_path = data_path;
    cfg.tokenizer_path = tok_path;
    cfg.cache_dir = cache_dir; /* created on first use */
    cfg.max_length = 512;
    cfg.seed = 3;
    double t_miss, t_hit;
    open_and_check("first open", &cfg, tok, false, "no cache file", &t_miss);
    char path[4096];
    path_of(&cfg, path, sizeof path);
    CHECK(access(path, R_OK) == 0, "cache file %s written", path);
    open_and_check("second open", &cfg, tok, true, NULL, &t_hit);
    printf("cache: miss (prepare + save) %.3f s, hit %.3f s\n", t_miss, t_hit);
    CHECK(t_hit < t_miss, "a hit (%.3f s) is faster than a build (%.3f s)", t_hit, t_miss);

    /* Each input that shapes the data is part of the key. */
    ct_ds_config other = cfg;
    other.template_name = "default";
    open_and_check("other template", &other, tok, false, "no cache file", NULL);
    other = cfg;
    other.max_length = 256;
    open_and_check("other max_length", &other, tok, false, "no cache file", NULL);
    other = cfg;
    other.system = "Be brief.";
    open_and_check("other system", &other, tok, false, "no cache file", NULL);
    other = cfg;
    other.pack = false;
    open_and_check("unpacked", &other, tok, false, "no cache file", NULL);
    other = cfg;
    other.threads = 1; /* not part of the key: the data does not depend on it */
    open_and_check("one thread", &other, tok, true, NULL, NULL);
    CHECK(count_files(cache_dir, "ds-") == 5, "5 cache files, got %d", count_files(cache_dir, "ds-"));

    /* A file made for other inputs, placed under this config's name. */
    ct_ds_config sys_cfg = cfg;
    sys_cfg.system = "Be brief.";
    char sys_path[4096];
    path_of(&sys_cfg, sys_path, sizeof sys_path);
    rename(sys_path, path);
    open_and_check("wrong key", &cfg, tok, false, "key differs", NULL);
    open_and_check("after wrong key", &cfg, tok, true, NULL, NULL);

    /* Damage: each is rebuilt, then the rewritten file is a hit again. */
    truncate_file(path, 0.5);
    open_and_check("truncated", &cfg, tok, false, "not a readable HDF5 file", NULL);
    open_and_check("after truncated", &cfg, tok, true, NULL, NULL);
    truncate_file(path, 0.0);
    open_and_check("empty file", &cfg, tok, false, "not a readable HDF5 file", NULL);
    {
        ct_dataset ds;
        ct_ds_config nocache = cfg;
        nocache.cache_dir = NULL;
        CHECK_OK(ct_dataset_prepare(&nocache, tok, &ds));
        flip_payload(path, &ds);
        ct_dataset_free(&ds);
    }
    open_and_check("flipped byte", &cfg, tok, false, "digest mismatch", NULL);
    damage_dataset(path, "row_samples", false);
    open_and_check("missing dataset", &cfg, tok, false, "dataset 'row_samples' is missing", NULL);
    damage_dataset(path, "labels", true);
    open_and_check("short dataset", &cfg, tok, false, "dataset 'labels' has 10 entries", NULL);
    open_and_check("after damage", &cfg, tok, true, NULL, NULL);

    /* The data file changes: a miss (the old entry stays, unused). */
    write_data(2000, "{\"instruction\": \"One more.\", \"input\": \"\", \"output\": \"Done.\"}\n");
    open_and_check("changed data", &cfg, tok, false, "no cache file", NULL);
    CHECK(count_files(cache_dir, ".ds-") == 0, "no temp files left");

    /* A cache dir that cannot be made: the dataset still comes, with the error. */
    char blocked[256];
    snprintf(blocked, sizeof blocked, "%s/data.jsonl/cache", tmpdir);
    ct_ds_config bad = cfg;
    bad.cache_dir = blocked;
    ct_dataset ds;
    ct_ds_cache_info info;
    CHECK_OK(ct_ds_open(&bad, tok, &ds, &info));
    CHECK(!info.hit && info.write_error[0] && ds.n_samples == 2001, "unwritable cache: [%s] %lld samples",
          info.write_error, (long long)ds.n_samples);
    ct_dataset_free(&ds);
    /* No tokenizer path: the key cannot be made. */
    bad = cfg;
    bad.tokenizer_path = NULL;
    CHECK(ct_ds_open(&bad, tok, &ds, &info) == CT_EINPUT && strstr(ct_last_error(), "tokenizer"), "no tokenizer path");
}

/* SHA-256 against FIPS 180-2's published vectors. */
static void test_sha256(void) {
    uint8_t d[32];
    char hex[65];
    ct_sha256_buf("abc", 3, d);
    ct_sha256_hex(d, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0, "abc: %s", hex);
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    ct_sha256_buf(m, strlen(m), d);
    ct_sha256_hex(d, hex);
    CHECK(strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0, "448 bits: %s", hex);
    ct_sha256 s; /* a million 'a', fed in odd pieces */
    ct_sha256_init(&s);
    char a[997];
    memset(a, 'a', sizeof a);
    size_t left = 1000000;
    while (left) {
        size_t k = left < sizeof a ? left : sizeof a;
        ct_sha256_update(&s, a, k);
        left -= k;
    }
    ct_sha256_final(&s, d);
    ct_sha256_hex(d, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0, "1M a: %s", hex);
    ct_sha256_buf("", 0, d);
    ct_sha256_hex(d, hex);
    CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0, "empty: %s", hex);
}

int main(void) {
    test_sha256();
    char tok_path[4096];
    if (!ct_fixture("internlm2-chat-7b", tok_path, sizeof tok_path)) return CT_TEST_SKIP;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ct-dscache-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(cache_dir, sizeof cache_dir, "%s/cache/sub", tmpdir);
    snprintf(data_path, sizeof data_path, "%s/data.jsonl", tmpdir);
    ct_tokenizer *tok;
    CHECK_OK(ct_tok_load(tok_path, &tok));
    if (tok) {
        test_cache(tok, tok_path);
        ct_tok_free(tok);
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    CHECK(system(cmd) == 0, "cleanup");
    return ct_test_finish();
}
