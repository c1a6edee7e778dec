/* See host_mem.h. */
#include "host_mem.h"

#include <stdio.h>
#include <string.h>

#include "ct_error.h"

/* One unsigned number from a one-line file ("max" or unreadable: 0). */
static uint64_t read_u64_file(const char *path) {
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    unsigned long long v = 0;
    if (fscanf(f, "%llu", &v) != 1) v = 0;
    fclose(f);
    return (uint64_t)v;
}

int ct_host_mem_available(uint64_t *bytes) {
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f) return ct_errorf(CT_ERUNTIME, "/proc/meminfo: cannot read the available memory");
    char line[256];
    uint64_t avail = 0;
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kib;
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
            avail = (uint64_t)kib * 1024;
            found = 1;
            break;
        }
    }
    fclose(f);
    if (!found) return ct_errorf(CT_ERUNTIME, "/proc/meminfo: no MemAvailable line");
    /* cgroup v2 of this process: "0::/path" in /proc/self/cgroup */
    FILE *cg = fopen("/proc/self/cgroup", "re");
    if (cg) {
        while (fgets(line, sizeof line, cg)) {
            if (strncmp(line, "0::", 3) != 0) continue;
            line[strcspn(line, "\n")] = '\0';
            char p[512];
            snprintf(p, sizeof p, "/sys/fs/cgroup%s/memory.max", line + 3);
            uint64_t max = read_u64_file(p);
            snprintf(p, sizeof p, "/sys/fs/cgroup%s/memory.current", line + 3);
            uint64_t cur = read_u64_file(p);
            if (max > 0) {
                uint64_t room = max > cur ? max - cur : 0;
                if (room < avail) avail = room;
            }
            break;
        }
        fclose(cg);
    }
    *bytes = avail;
    return CT_OK;
}
