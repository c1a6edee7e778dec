/* HDF5 checkpoints: bit-identical round trips of every kind, typed getters that
 * refuse wrong names/kinds/shapes, atomic saves under failures and a crash,
 * retention and newest-checkpoint lookup, truncated/corrupt/foreign files. */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/testutil.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/fsutil.h"

static char g_dir[64];

static void path_in(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", g_dir, name);
}

/* Contents shared by writer and checks. */
#define BIG_N 300000 /* > 1 MiB: several checksummed chunks */
static float g_small[2 * 3 * 4 * 5], g_big[BIG_N], g_vec[7];
static const int64_t SMALL_SHAPE[4] = {2, 3, 4, 5}, BIG_SHAPE[2] = {600, 500}, VEC_SHAPE[1] = {7};
static const int64_t EMPTY_SHAPE[2] = {0, 5};
static const int64_t I64S[5] = {0, -1, INT64_MIN, INT64_MAX, 1234567890123};
static const uint64_t U64S[3] = {UINT64_MAX, 0x9e3779b97f4a7c15ull, 0};
static const int32_t I32S[4] = {3, 1, 2, -7};
static const char *CONFIG = "model: /m\nlr: 2.0e-4  # warm-up\nname: \"d\xc3\xa9j\xc3\xa0 vu\"\n";

static void fill_data(uint64_t seed) {
    ct_test_rng r = {seed};
    ct_test_fill(&r, g_small, 120, 1.0);
    ct_test_fill(&r, g_big, BIG_N, 0.02);
    ct_test_fill(&r, g_vec, 7, 1.0);
    /* Values that only a bit-exact path keeps. */
    uint32_t qnan_payload = 0x7fc12345u, denorm = 0x00000123u;
    memcpy(&g_vec[0], &qnan_payload, 4);
    memcpy(&g_vec[1], &denorm, 4);
    g_vec[2] = -0.0f;
    g_vec[3] = INFINITY;
}

static int write_full(const char *path, int64_t step) {
    ct_ckpt_writer *w = NULL;
    CT_TRY(ct_ckpt_writer_open(path, &w));
    ct_ckpt_put_f32(w, "lora/base_model.model.layers.0.attention.wqkv.lora_A.weight", 4,
                    SMALL_SHAPE, g_small);
    ct_ckpt_put_f32(w, "optim/exp_avg/big", 2, BIG_SHAPE, g_big);
    ct_ckpt_put_f32(w, "vec", 1, VEC_SHAPE, g_vec);
    ct_ckpt_put_f32(w, "empty", 2, EMPTY_SHAPE, NULL);
    ct_ckpt_put_i64(w, "data/cursor", 5, I64S);
    ct_ckpt_put_i64(w, "optim/step", 1, &step);
    ct_ckpt_put_u64(w, "rng/state", 3, U64S);
    ct_ckpt_put_i32(w, "data/order", 4, I32S);
    ct_ckpt_put_str(w, "config", CONFIG);
    ct_ckpt_put_str(w, "empty_str", "");
    return ct_ckpt_writer_commit(w); /* sticky errors surface here */
}

/* Reads everything back and compares bit for bit. */
static void check_full(const char *path, int64_t step) {
    ct_ckpt_reader *r = NULL;
    CHECK_OK(ct_ckpt_open(path, &r));
    if (!r) return;
    CHECK(ct_ckpt_format(r) == CT_CKPT_FORMAT, "format %d", ct_ckpt_format(r));
    static float big[BIG_N];
    float small[120], vec[7];
    CHECK_OK(ct_ckpt_get_f32(r, "lora/base_model.model.layers.0.attention.wqkv.lora_A.weight", 4,
                             SMALL_SHAPE, small));
    CHECK(memcmp(small, g_small, sizeof small) == 0, "4-D f32 differs");
    CHECK_OK(ct_ckpt_get_f32(r, "optim/exp_avg/big", 2, BIG_SHAPE, big));
    CHECK(memcmp(big, g_big, sizeof big) == 0, "big f32 differs");
    CHECK_OK(ct_ckpt_get_f32(r, "vec", 1, VEC_SHAPE, vec));
    CHECK(memcmp(vec, g_vec, sizeof vec) == 0, "NaN payload / denormal / -0 / Inf not kept");
    CHECK_OK(ct_ckpt_get_f32(r, "empty", 2, EMPTY_SHAPE, NULL));
    int64_t i64[5], st = -1;
    uint64_t u64[3];
    int32_t i32[4];
    CHECK_OK(ct_ckpt_get_i64(r, "data/cursor", 5, i64));
    CHECK(memcmp(i64, I64S, sizeof i64) == 0, "i64 differs");
    CHECK_OK(ct_ckpt_get_i64(r, "optim/step", 1, &st));
    CHECK(st == step, "step %lld", (long long)st);
    CHECK_OK(ct_ckpt_get_u64(r, "rng/state", 3, u64));
    CHECK(memcmp(u64, U64S, sizeof u64) == 0, "u64 differs");
    CHECK_OK(ct_ckpt_get_i32(r, "data/order", 4, i32));
    CHECK(memcmp(i32, I32S, sizeof i32) == 0, "i32 differs");
    char *text = NULL;
    CHECK_OK(ct_ckpt_get_str(r, "config", &text));
    CHECK(text && strcmp(text, CONFIG) == 0, "config text differs: %s", text ? text : "(null)");
    free(text);
    CHECK_OK(ct_ckpt_get_str(r, "empty_str", &text));
    CHECK(text && text[0] == '\0', "empty string");
    free(text);
    ct_ckpt_close(r);
}

static void test_round_trip(void) {
    char path[256];
    path_in(path, sizeof path, "rt.h5");
    fill_data(1);
    CHECK_OK(write_full(path, 42));
    check_full(path, 42);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!ct_path_exists(tmp), "temp file left after commit");

    ct_ckpt_reader *r = NULL;
    CHECK_OK(ct_ckpt_open(path, &r));
    if (!r) return;
    ct_ckpt_kind kind;
    int ndim;
    int64_t shape[CT_CKPT_MAX_DIMS];
    CHECK_OK(ct_ckpt_info(r, "optim/exp_avg/big", &kind, &ndim, shape));
    CHECK(kind == CT_CKPT_F32 && ndim == 2 && shape[0] == 600 && shape[1] == 500, "info big");
    CHECK_OK(ct_ckpt_info(r, "rng/state", &kind, &ndim, shape));
    CHECK(kind == CT_CKPT_U64 && ndim == 1 && shape[0] == 3, "info u64");
    CHECK_OK(ct_ckpt_info(r, "config", &kind, &ndim, shape));
    CHECK(kind == CT_CKPT_STR && ndim == 0, "info str");
    CHECK(ct_ckpt_has(r, "optim/step") && !ct_ckpt_has(r, "optim/nope") &&
              !ct_ckpt_has(r, "nope/deeper/x"), "has");

    /* Typed getters refuse what does not match, naming dataset and file. */
    float small[120];
    int64_t wrong[4] = {2, 3, 5, 4};
    CHECK(ct_ckpt_get_f32(r, "lora/base_model.model.layers.0.attention.wqkv.lora_A.weight", 4,
                          wrong, small) == CT_EINPUT &&
              strstr(ct_last_error(), "[2, 3, 4, 5]") && strstr(ct_last_error(), "[2, 3, 5, 4]") &&
              strstr(ct_last_error(), path), "shape mismatch: %s", ct_last_error());
    int64_t v64[3];
    CHECK(ct_ckpt_get_i64(r, "rng/state", 3, v64) == CT_EINPUT && strstr(ct_last_error(), "u64") &&
              strstr(ct_last_error(), "rng/state"), "kind mismatch: %s", ct_last_error());
    CHECK(ct_ckpt_get_f32(r, "missing/tensor", 1, VEC_SHAPE, small) == CT_EINPUT &&
              strstr(ct_last_error(), "missing/tensor") && strstr(ct_last_error(), path),
          "missing: %s", ct_last_error());
    char *s = NULL;
    CHECK(ct_ckpt_get_str(r, "vec", &s) == CT_EINPUT && !s, "f32 read as string");
    CHECK(ct_ckpt_get_i64(r, "/abs", 1, v64) == CT_EINPUT, "bad name accepted");
    ct_ckpt_close(r);
    unlink(path);
}

static void test_atomic(void) {
    char path[256], tmp[300], copy[256];
    path_in(path, sizeof path, "iter_100.h5");
    path_in(copy, sizeof copy, "iter_100.copy");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    fill_data(2);
    CHECK_OK(write_full(path, 100));
    CHECK_OK(ct_file_copy(path, copy));

    /* A writer that fails midway (a dataset written twice): the error is
     * sticky, commit refuses, the previous checkpoint stays, no .tmp remains. */
    fill_data(3);
    ct_ckpt_writer *w = NULL;
    CHECK_OK(ct_ckpt_writer_open(path, &w));
    CHECK(ct_path_exists(tmp), "writer has no temp file");
    CHECK_OK(ct_ckpt_put_f32(w, "optim/exp_avg/big", 2, BIG_SHAPE, g_big));
    CHECK(ct_ckpt_put_f32(w, "optim/exp_avg/big", 2, BIG_SHAPE, g_big) == CT_EINPUT &&
              strstr(ct_last_error(), "twice"), "%s", ct_last_error());
    int64_t one = 1;
    CHECK(ct_ckpt_put_i64(w, "later", 1, &one) == CT_EINPUT, "error not sticky");
    CHECK(ct_ckpt_writer_commit(w) == CT_EINPUT, "commit after a failure succeeded");
    CHECK(!ct_path_exists(tmp), "temp file left after a failed save");
    CHECK(ct_test_same_file(path, copy), "failed save changed the previous checkpoint");
    fill_data(2);
    check_full(path, 100);

    /* Aborting discards the temp file too. */
    CHECK_OK(ct_ckpt_writer_open(path, &w));
    ct_ckpt_writer_abort(w);
    CHECK(!ct_path_exists(tmp) && ct_test_same_file(path, copy), "abort");

    /* The temp name is blocked (a directory): nothing is written or removed. */
    CHECK(mkdir(tmp, 0755) == 0, "mkdir %s", tmp);
    w = NULL;
    CHECK(ct_ckpt_writer_open(path, &w) == CT_EINPUT && !w && strstr(ct_last_error(), tmp),
          "%s", ct_last_error());
    CHECK(ct_path_is_dir(tmp) && ct_test_same_file(path, copy), "blocked save touched files");
    rmdir(tmp);

    /* A crash mid-save (the process dies before commit): the previous
     * checkpoint is intact and readable; the stale .tmp is replaced by the
     * next save, which then leaves none. */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        fill_data(4);
        ct_ckpt_writer *cw = NULL;
        if (ct_ckpt_writer_open(path, &cw) == CT_OK) {
            ct_ckpt_put_f32(cw, "optim/exp_avg/big", 2, BIG_SHAPE, g_big);
            ct_ckpt_put_i64(cw, "optim/step", 1, &one);
        }
        _exit(0); /* no commit, no abort, no HDF5 shutdown */
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait");
    CHECK(ct_path_exists(tmp), "the crashed save left no temp file (did it run?)");
    CHECK(ct_test_same_file(path, copy), "a crash changed the previous checkpoint");
    check_full(path, 100);
    bool found = false;
    char latest[256];
    CHECK_OK(ct_ckpt_find_latest(g_dir, latest, sizeof latest, NULL, &found));
    CHECK(found && strcmp(latest, path) == 0, "latest %s", latest);
    fill_data(5);
    CHECK_OK(write_full(path, 101));
    CHECK(!ct_path_exists(tmp), "stale temp file survived a save");
    check_full(path, 101);
    unlink(path);
    unlink(copy);
}

static void touch_ckpt(int64_t iter) {
    char path[256];
    CHECK_OK(ct_ckpt_iter_path(path, sizeof path, g_dir, iter));
    ct_ckpt_writer *w = NULL;
    CHECK_OK(ct_ckpt_writer_open(path, &w));
    CHECK_OK(ct_ckpt_put_i64(w, "optim/step", 1, &iter));
    CHECK_OK(ct_ckpt_writer_commit(w));
}

static void make_adapter(int64_t iter) {
    char dir[256], file[300];
    snprintf(dir, sizeof dir, "%s/iter_%lld_adapter", g_dir, (long long)iter);
    CHECK_OK(ct_mkdirs(dir));
    snprintf(file, sizeof file, "%s/adapter_config.json", dir);
    CHECK_OK(ct_file_write_atomic(file, "{}\n", 3));
}

static bool exists_in(const char *name) {
    char p[256];
    path_in(p, sizeof p, name);
    return ct_path_exists(p);
}

static void test_retention(void) {
    bool found = true;
    char latest[256];
    int64_t it = -1;
    CHECK_OK(ct_ckpt_find_latest(g_dir, latest, sizeof latest, &it, &found));
    CHECK(!found && latest[0] == '\0', "empty work dir has a checkpoint: %s", latest);
    CHECK_OK(ct_ckpt_find_latest("/nonexistent/ct_work", latest, sizeof latest, &it, &found));
    CHECK(!found, "missing work dir has a checkpoint");

    touch_ckpt(20);
    touch_ckpt(5);
    touch_ckpt(100);
    touch_ckpt(10);
    make_adapter(5);
    make_adapter(20);
    /* Noise the listing must ignore. */
    char p[256];
    path_in(p, sizeof p, "iter_7.h5.tmp");
    CHECK_OK(ct_file_write_atomic(p, "x", 1));
    path_in(p, sizeof p, "iter_x.h5");
    CHECK_OK(ct_file_write_atomic(p, "x", 1));
    path_in(p, sizeof p, "iter_-3.h5");
    CHECK_OK(ct_file_write_atomic(p, "x", 1));
    path_in(p, sizeof p, "iter_0100.h5");
    CHECK_OK(ct_file_write_atomic(p, "x", 1));
    path_in(p, sizeof p, "iter_999.h5");
    CHECK_OK(ct_mkdirs(p)); /* a directory is not a checkpoint */

    int64_t *iters = NULL;
    size_t n = 0;
    CHECK_OK(ct_ckpt_list(g_dir, &iters, &n));
    CHECK(n == 4 && iters[0] == 5 && iters[1] == 10 && iters[2] == 20 && iters[3] == 100,
          "list: %zu entries", n);
    free(iters);
    CHECK_OK(ct_ckpt_find_latest(g_dir, latest, sizeof latest, &it, &found));
    path_in(p, sizeof p, "iter_100.h5");
    CHECK(found && it == 100 && strcmp(latest, p) == 0, "latest %s", latest);

    int removed = -1;
    CHECK_OK(ct_ckpt_retain(g_dir, 0, &removed));
    CHECK(removed == 0 && exists_in("iter_5.h5"), "limit 0 must keep all");
    CHECK_OK(ct_ckpt_retain(g_dir, -1, &removed));
    CHECK(removed == 0 && exists_in("iter_5.h5"), "limit -1 must keep all");
    CHECK_OK(ct_ckpt_retain(g_dir, 2, &removed));
    CHECK(removed == 2, "removed %d", removed);
    CHECK(!exists_in("iter_5.h5") && !exists_in("iter_5_adapter") && !exists_in("iter_10.h5"),
          "old checkpoints remain");
    CHECK(exists_in("iter_20.h5") && exists_in("iter_20_adapter/adapter_config.json") &&
              exists_in("iter_100.h5"), "newest two not kept");
    CHECK(exists_in("iter_7.h5.tmp") && exists_in("iter_x.h5") && exists_in("iter_999.h5") &&
              exists_in("iter_0100.h5"),
          "retention touched other files");
    CHECK_OK(ct_ckpt_retain(g_dir, 5, &removed));
    CHECK(removed == 0, "under the limit removed %d", removed);

    const char *rm[] = {"iter_20.h5", "iter_100.h5", "iter_7.h5.tmp", "iter_x.h5", "iter_-3.h5",
                        "iter_0100.h5"};
    for (size_t i = 0; i < sizeof rm / sizeof rm[0]; i++) {
        path_in(p, sizeof p, rm[i]);
        unlink(p);
    }
    path_in(p, sizeof p, "iter_20_adapter");
    ct_remove_tree(p);
    path_in(p, sizeof p, "iter_999.h5");
    ct_remove_tree(p);
}

static void expect_bad(const char *path, const char *what, const char *needle) {
    ct_ckpt_reader *r = NULL;
    int rc = ct_ckpt_open(path, &r);
    CHECK(rc == CT_EINPUT && !r && strstr(ct_last_error(), path) &&
              strstr(ct_last_error(), needle), "%s: rc %d: %s", what, rc, ct_last_error());
    ct_ckpt_close(r);
}

/* An HDF5 file with (or without) a version stamp, written directly; v18: in
 * the 1.8+ format (superblock 2) as ctuner writes, else HDF5's default (0). */
static void write_foreign(const char *path, int stamp, bool v18) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (v18) H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (stamp) {
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(f, "ctuner_checkpoint", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT, &stamp);
        H5Aclose(a);
        H5Sclose(sp);
    }
    H5Fclose(f);
}

static void test_corrupt(void) {
    char path[256], bad[256];
    path_in(path, sizeof path, "good.h5");
    path_in(bad, sizeof bad, "bad.h5");
    fill_data(6);
    CHECK_OK(write_full(path, 7));

    char *data = NULL;
    size_t n = 0;
    CHECK_OK(ct_file_read_all(path, &data, &n));
    if (!data) return;

    /* Truncated to half, to a few bytes, empty. */
    CHECK_OK(ct_file_write_atomic(bad, data, n / 2));
    expect_bad(bad, "half", "truncated or corrupt");
    CHECK_OK(ct_file_write_atomic(bad, data, 6));
    expect_bad(bad, "6 bytes", "not a ctuner checkpoint");
    CHECK_OK(ct_file_write_atomic(bad, "", 0));
    expect_bad(bad, "empty", "not a ctuner checkpoint");
    CHECK_OK(ct_file_write_atomic(bad, "model: x\n", 9));
    expect_bad(bad, "text", "not a ctuner checkpoint");
    expect_bad(g_dir, "a directory", "not a ctuner checkpoint");
    path_in(bad, sizeof bad, "missing.h5");
    expect_bad(bad, "missing", "cannot open");
    path_in(bad, sizeof bad, "bad.h5");

    /* Other HDF5 files: no stamp, a newer format. */
    write_foreign(bad, 0, true);
    expect_bad(bad, "foreign HDF5", "not a ctuner checkpoint");
    write_foreign(bad, CT_CKPT_FORMAT + 1, true);
    expect_bad(bad, "newer format", "newer ctuner");
    /* The pre-1.8 format leaves HDF5's metadata unchecked: refused before HDF5 reads it. */
    write_foreign(bad, CT_CKPT_FORMAT, false);
    expect_bad(bad, "pre-1.8 HDF5", "superblock version 0");

    /* A flipped byte inside the big tensor's data: the checksum catches it. */
    const size_t probe = 64; /* bytes of g_big from element 100000 on */
    const char *needle = (const char *)&g_big[100000];
    char *hit = memmem(data, n, needle, probe);
    CHECK(hit != NULL, "tensor bytes not found in the file");
    if (hit) {
        hit[17] ^= 0x10;
        CHECK_OK(ct_file_write_atomic(bad, data, n));
        ct_ckpt_reader *r = NULL;
        CHECK_OK(ct_ckpt_open(bad, &r)); /* metadata is intact */
        static float big[BIG_N];
        int rc = r ? ct_ckpt_get_f32(r, "optim/exp_avg/big", 2, BIG_SHAPE, big) : -1;
        CHECK(rc == CT_EINPUT && strstr(ct_last_error(), "corrupt") &&
                  strstr(ct_last_error(), "optim/exp_avg/big"), "flipped byte: rc %d: %s", rc,
              ct_last_error());
        /* Other datasets are still readable. */
        int64_t st = 0;
        if (r) CHECK_OK(ct_ckpt_get_i64(r, "optim/step", 1, &st));
        ct_ckpt_close(r);
    }
    free(data);
    unlink(bad);
    unlink(path);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ct_ckpt_XXXXXX");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    test_round_trip();
    test_atomic();
    test_retention();
    test_corrupt();
    ct_remove_tree(g_dir);
    return ct_test_finish();
}
