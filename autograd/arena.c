#include "arena.h"

#include <stdlib.h>
#include <string.h>

#include "ct_error.h"

void *ct_host_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, CT_ARENA_ALIGN, n ? n : CT_ARENA_ALIGN) != 0) return NULL;
    return p;
}

void ct_host_free(void *p) { free(p); }

ct_allocator ct_host_allocator(void) { return (ct_allocator){ct_host_alloc, ct_host_free}; }

void ct_arena_init(ct_arena *a, ct_allocator mem, size_t block_size) {
    memset(a, 0, sizeof *a);
    a->mem = mem;
    a->block_size = block_size ? block_size : ((size_t)64 << 20);
}

void ct_arena_free(ct_arena *a) {
    for (int i = 0; i < a->n_blocks; i++) a->mem.free(a->blocks[i].ptr);
    a->n_blocks = 0;
    a->cur = 0;
    a->off = a->used = 0;
}

static size_t align_up(size_t n) { return (n + CT_ARENA_ALIGN - 1) & ~(size_t)(CT_ARENA_ALIGN - 1); }

void *ct_arena_alloc(ct_arena *a, size_t bytes) {
    size_t need = align_up(bytes ? bytes : 1);
    /* Advance through existing blocks (kept from earlier steps) until one fits. */
    while (a->cur < a->n_blocks) {
        ct_arena_block *b = &a->blocks[a->cur];
        if (b->size - a->off >= need) {
            void *p = (char *)b->ptr + a->off;
            a->off += need;
            a->used += need;
            if (a->used > a->peak) a->peak = a->used;
            return p;
        }
        a->used += b->size - a->off; /* the skipped tail counts as used until reset */
        a->cur++;
        a->off = 0;
    }
    if (a->n_blocks == CT_ARENA_MAX_BLOCKS) {
        ct_errorf(CT_ERUNTIME, "arena: more than %d blocks; raise the block size", CT_ARENA_MAX_BLOCKS);
        return NULL;
    }
    size_t size = need > a->block_size ? need : a->block_size;
    void *ptr = a->mem.alloc(size);
    if (!ptr) {
        ct_errorf(CT_ERUNTIME, "arena: out of memory allocating a %.1f MiB block",
                  (double)size / (1 << 20));
        return NULL;
    }
    a->blocks[a->n_blocks++] = (ct_arena_block){ptr, size};
    a->cur = a->n_blocks - 1;
    a->off = need;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return ptr;
}

int ct_arena_reserve(ct_arena *a, size_t bytes) {
    if (a->n_blocks > 0 || bytes == 0) return CT_OK;
    size_t size = align_up(bytes);
    void *ptr = a->mem.alloc(size);
    if (!ptr) return ct_errorf(CT_ERUNTIME, "arena: out of memory reserving %.1f MiB", (double)size / (1 << 20));
    a->blocks[a->n_blocks++] = (ct_arena_block){ptr, size};
    return CT_OK;
}

void ct_arena_reset(ct_arena *a) {
    a->cur = 0;
    a->off = 0;
    a->used = 0;
}

ct_arena_mark ct_arena_get_mark(const ct_arena *a) { return (ct_arena_mark){a->cur, a->off, a->used}; }

void ct_arena_rewind(ct_arena *a, ct_arena_mark m) {
    a->cur = m.cur;
    a->off = m.off;
    a->used = m.used;
}

size_t ct_arena_reserved(const ct_arena *a) {
    size_t s = 0;
    for (int i = 0; i < a->n_blocks; i++) s += a->blocks[i].size;
    return s;
}
