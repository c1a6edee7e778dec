/* Seconds on the monotonic clock (timings, time-outs): differences only. */
#ifndef CT_CLOCK_H
#define CT_CLOCK_H

#include <time.h>

static inline double ct_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
