#include "mem_track.h"

#include <stdlib.h>

/* A free slot for p, growing the table when full; -1 when it cannot grow. */
static long free_slot(ct_mem_tracker *t) {
    for (size_t i = 0; i < t->cap; i++)
        if (!t->ptrs[i]) return (long)i;
    size_t cap = t->cap ? 2 * t->cap : 64;
    void **p = realloc(t->ptrs, cap * sizeof *p);
    if (!p) return -1;
    t->ptrs = p;
    size_t *s = realloc(t->sizes, cap * sizeof *s);
    if (!s) return -1;
    t->sizes = s;
    for (size_t i = t->cap; i < cap; i++) t->ptrs[i] = NULL, t->sizes[i] = 0;
    long slot = (long)t->cap;
    t->cap = cap;
    return slot;
}

void *ct_mem_track_alloc(ct_mem_tracker *t, void *(*alloc)(size_t), void (*free_fn)(void *), size_t bytes) {
    void *p = alloc(bytes);
    if (!p) return NULL;
    pthread_mutex_lock(&t->lock);
    long i = free_slot(t);
    if (i >= 0) {
        t->ptrs[i] = p;
        t->sizes[i] = bytes;
        t->u.current += bytes;
        t->u.n_allocs++;
        if (t->u.current > t->u.peak) t->u.peak = t->u.current;
    }
    pthread_mutex_unlock(&t->lock);
    if (i < 0) {
        free_fn(p);
        return NULL;
    }
    return p;
}

void ct_mem_track_free(ct_mem_tracker *t, void (*free_fn)(void *), void *p) {
    if (!p) return;
    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < t->cap; i++)
        if (t->ptrs[i] == p) {
            t->u.current -= t->sizes[i];
            t->ptrs[i] = NULL;
            t->sizes[i] = 0;
            break;
        }
    pthread_mutex_unlock(&t->lock);
    free_fn(p);
}

ct_mem_usage ct_mem_track_usage(ct_mem_tracker *t, int reset_peak) {
    pthread_mutex_lock(&t->lock);
    ct_mem_usage u = t->u;
    if (reset_peak) t->u.peak = t->u.current;
    pthread_mutex_unlock(&t->lock);
    return u;
}
