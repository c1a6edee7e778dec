/* Bump allocator for per-step memory (activations, saved tensors, scratch).
 *
 * Memory comes in blocks from an allocator function pair (host malloc or the
 * backend's device allocator). reset() rewinds to the start and keeps every block,
 * so after the first step no allocation reaches the system: the hot loop never
 * mallocs. Marks allow rewinding part of the arena (checkpoint recomputation). */
#ifndef CT_ARENA_H
#define CT_ARENA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CT_ARENA_ALIGN 256 /* enough for AVX-512 and for CUDA vector loads */
#define CT_ARENA_MAX_BLOCKS 64

typedef struct {
    void *(*alloc)(size_t bytes); /* returns NULL on failure */
    void (*free)(void *p);
} ct_allocator;

typedef struct {
    void *ptr;
    size_t size;
} ct_arena_block;

typedef struct {
    ct_allocator mem;
    size_t block_size;  /* default size of a new block */
    ct_arena_block blocks[CT_ARENA_MAX_BLOCKS];
    int n_blocks;
    int cur;            /* block being filled */
    size_t off;         /* bytes used in blocks[cur] */
    size_t used;        /* bytes handed out since reset (incl. skipped tails) */
    size_t peak;        /* high-water mark of `used` since init */
} ct_arena;

typedef struct {
    int cur;
    size_t off, used;
} ct_arena_mark;

void ct_arena_init(ct_arena *a, ct_allocator mem, size_t block_size);
/* Frees every block. */
void ct_arena_free(ct_arena *a);
/* `bytes` aligned to CT_ARENA_ALIGN; NULL with an error message on failure.
 * The memory is uninitialised and lives until the next reset or rewind. */
void *ct_arena_alloc(ct_arena *a, size_t bytes);
void ct_arena_reset(ct_arena *a);
/* Allocates the first block now, of `bytes` (an arena that already has a
 * block is left alone): a run that knows its step's needs (the memory plan)
 * holds one block of the right size from the start. CT_OK, or CT_ERUNTIME
 * with the message set. */
int ct_arena_reserve(ct_arena *a, size_t bytes);
ct_arena_mark ct_arena_get_mark(const ct_arena *a);
void ct_arena_rewind(ct_arena *a, ct_arena_mark m);
/* Sum of block sizes: what the arena holds from the system. */
size_t ct_arena_reserved(const ct_arena *a);

/* Host malloc/free as an allocator (CT_ARENA_ALIGN-aligned). The functions
 * themselves, for static backend tables. */
ct_allocator ct_host_allocator(void);
void *ct_host_alloc(size_t bytes);
void ct_host_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
