/* How much host memory this process could still get: the kernel's
 * MemAvailable, lowered to the cgroup's room (memory.max - memory.current,
 * cgroup v2) when the process runs under a memory limit. Used to refuse a run
 * whose memory plan does not fit before anything is allocated. */
#ifndef CT_HOST_MEM_H
#define CT_HOST_MEM_H

#include <stdint.h>

/* CT_OK with *bytes; CT_ERUNTIME when /proc/meminfo cannot be read (then the
 * caller cannot check and should not refuse). */
int ct_host_mem_available(uint64_t *bytes);

#endif
