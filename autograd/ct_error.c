#include "ct_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define CT_ERROR_CAP 2048

static _Thread_local char g_msg[CT_ERROR_CAP];
static _Thread_local int g_code;

int ct_errorf(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    g_code = code;
    return code;
}

int ct_error_wrap(int code, const char *fmt, ...) {
    char prefix[CT_ERROR_CAP];
    char old[CT_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_msg, sizeof old);
    size_t n = strlen(prefix);
    if (n > CT_ERROR_CAP - 3) n = CT_ERROR_CAP - 3;
    memcpy(g_msg, prefix, n);
    memcpy(g_msg + n, ": ", 2);
    size_t room = CT_ERROR_CAP - n - 3;
    size_t m = strnlen(old, room);
    memcpy(g_msg + n + 2, old, m);
    g_msg[n + 2 + m] = '\0';
    g_code = code;
    return code;
}

const char *ct_last_error(void) { return g_msg; }

int ct_last_status(void) { return g_code ? g_code : CT_ERUNTIME; }

void ct_error_clear(void) {
    g_msg[0] = '\0';
    g_code = 0;
}
