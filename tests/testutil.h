/* Test helpers: checks that count failures, seeded random inputs, central
 * finite differences in double precision, closeness with a report of the worst
 * element, and fixture paths. A test's main ends with `return ct_test_finish();`. */
#ifndef CT_TESTUTIL_H
#define CT_TESTUTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/ct_error.h"

#define CT_TEST_SKIP 77 /* ctest SKIP_RETURN_CODE */

extern int ct_test_checks, ct_test_failures;

#define CHECK(cond, ...)                                                           \
    do {                                                                           \
        ct_test_checks++;                                                          \
        if (!(cond)) {                                                             \
            ct_test_failures++;                                                    \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
        }                                                                          \
    } while (0)

/* Checks that a ct_status-returning expression succeeded; prints the message. */
#define CHECK_OK(expr) CHECK((expr) == 0, "%s", ct_last_error())
/* Checks that a pointer-returning op succeeded. */
#define CHECK_PTR(p) CHECK((p) != NULL, "%s", ct_last_error())

/* Test setup that must not fail: p, or (p NULL) the last error on stderr and
 * exit(1). */
void *ct_test_need(void *p);

/* Prints "<N> passed, <M> failed" and returns the exit code. */
int ct_test_finish(void);

/* Deterministic random numbers for inputs. */
typedef struct {
    uint64_t s;
} ct_test_rng;
double ct_test_uniform(ct_test_rng *r);                /* [0, 1) */
double ct_test_normal(ct_test_rng *r);                 /* N(0, 1) */
void ct_test_fill(ct_test_rng *r, float *x, int64_t n, double scale); /* N(0, scale²) */

/* Central differences of f at x (double[n], restored afterwards):
 * g[i] = (f(x+h e_i) - f(x-h e_i)) / 2h. */
typedef double (*ct_fd_fn)(void *ctx);
void ct_fd_grad(ct_fd_fn f, void *ctx, double *x, int64_t n, double h, double *g);

/* |got - want| <= atol + rtol * |want| everywhere; on failure prints the worst
 * element and counts one failed check. Returns true when close. */
bool ct_check_close(const char *what, const float *got, const double *want, int64_t n,
                    double atol, double rtol);
bool ct_check_close_f(const char *what, const float *got, const float *want, int64_t n,
                      double atol, double rtol);

/* A progress callback (merge, quantize) that fails the fail_at-th call with
 * CT_ERUNTIME "injected failure before <tensor>" and checks done <= total:
 * for the tests of writes interrupted midway. ctx is a ct_test_fail_ctx. */
typedef struct {
    int calls, fail_at;
} ct_test_fail_ctx;
int ct_test_fail_after(void *ctx, const char *tensor, uint64_t done, uint64_t total);

/* keep[n] (malloc'ed) = the LoRA dropout mask of the kernels: element i kept
 * unless ct_uniform(seed, i) < p. */
bool *ct_test_keep_mask(uint64_t seed, int64_t n, float p);

/* True when files a and b both read and hold the same bytes. */
bool ct_test_same_file(const char *a, const char *b);

/* True when directory dir holds no entry named *.tmp-* (an atomic writer's
 * leftover); each one found is named on stderr. */
bool ct_test_no_temp_left(const char *dir);

/* Path of a shared fixture ("stories260k-internlm2/config.json") into buf, or
 * NULL (with a message) when ../shared/fixtures is absent: the test then skips. */
const char *ct_fixture(const char *rel, char *buf, size_t cap);

/* Whether whole-model runs on cuda-emu are wanted: false when
 * CT_TEST_EMU_MODEL=0 (tests/run.sh's sanitizer pass, where they take ~10
 * minutes each; the kernels themselves are all in parity_cuda-emu there, and
 * the normal passes run the whole-model tests). Says so on stdout. */
bool ct_test_emu_model_runs(const char *test);

#endif
