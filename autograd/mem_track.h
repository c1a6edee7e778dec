/* Byte accounting for one allocator: every backend's memory functions go
 * through a tracker, so a run knows what it holds on the device (current and
 * peak, from the allocator itself, not from the driver) and that the step
 * allocates nothing once warm (n_allocs stays flat).
 *
 * A tracker is a table of the live allocations (pointer -> size) behind a
 * mutex: allocations are few (weights, LoRA, optimizer state, arena blocks)
 * and never in the hot loop, so a linear table is plenty. */
#ifndef CT_MEM_TRACK_H
#define CT_MEM_TRACK_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint64_t current;  /* bytes held now */
    uint64_t peak;     /* high-water mark of current since start or the last peak reset */
    uint64_t n_allocs; /* allocations made so far (flat once a run is warm) */
} ct_mem_usage;

typedef struct {
    pthread_mutex_t lock;
    void **ptrs;  /* [cap] live allocations (NULL = free slot) */
    size_t *sizes; /* [cap] their sizes */
    size_t cap;
    ct_mem_usage u;
} ct_mem_tracker;

#define CT_MEM_TRACKER_INIT {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, 0, {0, 0, 0}}

/* alloc(bytes) through the tracker; NULL when alloc fails or the table
 * cannot grow (then the block goes back through free_fn: nothing is held). */
void *ct_mem_track_alloc(ct_mem_tracker *t, void *(*alloc)(size_t), void (*free_fn)(void *), size_t bytes);
/* Forgets p (NULL: nothing) and frees it with free_fn. */
void ct_mem_track_free(ct_mem_tracker *t, void (*free_fn)(void *), void *p);
/* The counters now; with reset_peak, peak restarts from current afterwards. */
ct_mem_usage ct_mem_track_usage(ct_mem_tracker *t, int reset_peak);

#ifdef __cplusplus
}
#endif
#endif
