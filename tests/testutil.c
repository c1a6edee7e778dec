#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_inline.h"
#include "trainer/io/fsutil.h"

int ct_test_checks, ct_test_failures;

int ct_test_finish(void) {
    printf("%d passed, %d failed\n", ct_test_checks - ct_test_failures, ct_test_failures);
    return ct_test_failures ? 1 : 0;
}

void *ct_test_need(void *p) {
    if (!p) {
        fprintf(stderr, "test setup failed: %s\n", ct_last_error());
        exit(1);
    }
    return p;
}

double ct_test_uniform(ct_test_rng *r) {
    r->s = ct_mix64(r->s);
    return (double)(r->s >> 11) * (1.0 / 9007199254740992.0);
}

double ct_test_normal(ct_test_rng *r) {
    double u1 = ct_test_uniform(r), u2 = ct_test_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void ct_test_fill(ct_test_rng *r, float *x, int64_t n, double scale) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(scale * ct_test_normal(r));
}

void ct_fd_grad(ct_fd_fn f, void *ctx, double *x, int64_t n, double h, double *g) {
    for (int64_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + h;
        double fp = f(ctx);
        x[i] = keep - h;
        double fm = f(ctx);
        x[i] = keep;
        g[i] = (fp - fm) / (2.0 * h);
    }
}

static bool close_report(const char *what, const float *got, const void *want, bool want_f32,
                         int64_t n, double atol, double rtol) {
    int64_t worst = -1, bad = 0;
    double worst_excess = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double w = want_f32 ? ((const float *)want)[i] : ((const double *)want)[i];
        double d = fabs((double)got[i] - w);
        double lim = atol + rtol * fabs(w);
        if (!(d <= lim)) { /* also catches NaN */
            bad++;
            double excess = isnan(d) ? INFINITY : d / lim;
            if (worst < 0 || excess > worst_excess) {
                worst = i;
                worst_excess = excess;
            }
        }
    }
    ct_test_checks++;
    if (bad) {
        ct_test_failures++;
        double w = want_f32 ? ((const float *)want)[worst] : ((const double *)want)[worst];
        fprintf(stderr, "%s: %lld of %lld elements differ; worst [%lld]: got %.9g want %.9g (atol %g rtol %g)\n",
                what, (long long)bad, (long long)n, (long long)worst, (double)got[worst], w, atol, rtol);
        return false;
    }
    return true;
}

bool ct_check_close(const char *what, const float *got, const double *want, int64_t n,
                    double atol, double rtol) {
    return close_report(what, got, want, false, n, atol, rtol);
}

bool ct_check_close_f(const char *what, const float *got, const float *want, int64_t n,
                      double atol, double rtol) {
    return close_report(what, got, want, true, n, atol, rtol);
}

bool ct_test_emu_model_runs(const char *test) {
    const char *v = getenv("CT_TEST_EMU_MODEL");
    if (!v || strcmp(v, "0") != 0) return true;
    printf("%s: the cuda-emu whole-model runs are skipped (CT_TEST_EMU_MODEL=0: the sanitizer pass)\n", test);
    return false;
}

const char *ct_fixture(const char *rel, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/%s", CT_FIXTURES, rel);
    if (access(buf, R_OK) != 0) {
        fprintf(stderr, "fixture %s not found: skipping (needs ../shared/fixtures)\n", buf);
        return NULL;
    }
    return buf;
}

bool ct_test_same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    bool ok = ct_file_read_all(a, &x, &nx) == CT_OK && ct_file_read_all(b, &y, &ny) == CT_OK && nx == ny &&
              memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return ok;
}

bool ct_test_no_temp_left(const char *dir) {
    DIR *d = opendir(dir);
    bool ok = true;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp-")) ok = false, fprintf(stderr, "left behind: %s\n", e->d_name);
    if (d) closedir(d);
    return ok;
}

int ct_test_fail_after(void *ctx, const char *tensor, uint64_t done, uint64_t total) {
    ct_test_fail_ctx *f = ctx;
    CHECK(done <= total, "progress %llu of %llu", (unsigned long long)done, (unsigned long long)total);
    if (++f->calls == f->fail_at) return ct_errorf(CT_ERUNTIME, "injected failure before %s", tensor);
    return CT_OK;
}

bool *ct_test_keep_mask(uint64_t seed, int64_t n, float p) {
    bool *keep = ct_test_need(malloc((size_t)(n > 0 ? n : 1) * sizeof *keep));
    for (int64_t i = 0; i < n; i++) keep[i] = !(ct_uniform(seed, (uint64_t)i) < p);
    return keep;
}
