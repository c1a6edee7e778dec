/* Error reporting for library code.
 *
 * Library functions never exit: they return a ct_status and leave a message in a
 * thread-local buffer naming the file, line/record and what to do. Only main()
 * prints it and picks the exit code (CT_EINPUT -> 2, CT_ERUNTIME -> 1). */
#ifndef CT_ERROR_H
#define CT_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CT_OK = 0,
    CT_ERUNTIME = 1, /* something failed while running: out of memory, I/O, device */
    CT_EINPUT = 2,   /* bad input: config, data, model files, flags */
    CT_ENONFINITE = 3, /* a gradient holds NaN or ±Inf: distinct so the trainer can stop
                        * with its own message; main() maps it to exit code 1 (a runtime
                        * failure) if it travels up unhandled */
} ct_status;

/* Sets the thread's error message (printf-style) and returns `code`, so callers
 * can write `return ct_errorf(CT_EINPUT, "%s: ...", path);`. */
int ct_errorf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to the current message (adds context on the way up). */
int ct_error_wrap(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The current message; never NULL (empty when none). Owned by the library. */
const char *ct_last_error(void);

/* The code of the last ct_errorf/ct_error_wrap (CT_ERUNTIME when none): how
 * callers of NULL-returning functions (the ops) recover CT_EINPUT vs CT_ERUNTIME. */
int ct_last_status(void);

void ct_error_clear(void);

/* Propagate a non-zero status from an expression. */
#define CT_TRY(expr)                  \
    do {                              \
        int ct_try_rc_ = (expr);      \
        if (ct_try_rc_) return ct_try_rc_; \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
