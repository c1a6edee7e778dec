/* The emulator's scheduler: blocks one after another, each CUDA thread of a
 * block a fiber, switched only at barriers and warp collectives (the rules:
 * cuda_emu.h). Fibers are started once with makecontext/swapcontext and then
 * switched with _setjmp/_longjmp (no system call per switch: ../../../shared
 * docs measured 5x faster than swapcontext); a finished thread's fiber waits
 * on its stack for the next thread it is given, so a block of 256 threads
 * costs 256 context switches, not 256 stack set-ups.
 *
 * A failed launch abandons the block's fibers where they stand (their stacks
 * are reused from scratch at the next launch) and records the error. */
#undef _FORTIFY_SOURCE /* the fortified longjmp refuses to jump between stacks */

#include <csetjmp>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "cuda_kernels/cuda_includes.h"

/* The static __shared__ arrays of every kernel (cuda_emu.h puts them there). */
extern "C" {
extern char __start_ct_emu_shared[] __attribute__((weak));
extern char __stop_ct_emu_shared[] __attribute__((weak));
}

namespace ct_emu {
namespace {

const size_t kStack = 128 << 10; /* bytes per fiber stack, plus a guard page */
const int kMaxThreads = 1024;
const size_t kMaxSmem = 48 << 10; /* a kernel's default limit (no opt-in attribute here) */
const size_t kMaxGather = 64;     /* bytes a lane deposits in warp_gather */

enum state { RUNNABLE, AT_BARRIER, AT_WARP, DONE };

struct fiber {
    jmp_buf env;         /* where the fiber continues */
    ucontext_t uc;       /* its first start */
    char *stack = nullptr;
    bool started = false; /* running its loop (else: start it with uc) */
    state st = DONE;
    uint3 tid;
    int linear = 0;
    const char *file = nullptr; /* the barrier or collective it waits at */
    int line = 0;
};

struct warp {
    unsigned mask = 0;   /* of the collective being gathered */
    int arrived = 0;
    unsigned gen = 0;    /* completed collectives: the buffer parity */
    const char *what = nullptr, *file = nullptr;
    int line = 0;
    uint64_t val[2][32];
    unsigned char blob[2][32][kMaxGather]; /* warp_gather's deposits */
    /* A fresh warp (at each block start); the buffers need no clearing: a
     * collective reads only what all its lanes deposited. */
    void reset() {
        mask = 0;
        arrived = 0;
        gen = 0;
        what = file = nullptr;
        line = 0;
    }
};

struct scheduler {
    jmp_buf home;             /* the scheduler's side of every switch */
    std::vector<fiber> fibers; /* the pool, grown to the largest block */
    std::vector<warp> warps;
    std::vector<int> order;    /* threads, this round */
    std::vector<int> blocks;   /* the launch's blocks (linear ids) in run order */
    int n = 0;                 /* threads of the running block */
    int current = -1;
    int done = 0;
    bool failed = false;
    std::string why;
    int fault_thread = -1;     /* the thread that faulted, -1: the block as a whole */
    body_fn body = nullptr;
    void *ctx = nullptr;
    std::vector<unsigned char> smem;
    const char *kernel = "";
    uint64_t launches = 0;
};

thread_local scheduler S;
const char *g_order = nullptr; /* ct_emu_set_order; NULL: the environment */

uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char *fmt, ...) {
    if (S.failed) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    S.failed = true;
    S.why = buf;
    S.fault_thread = S.current;
}

/* Back to the scheduler; returns when the scheduler switches here again. */
void yield_to_scheduler() {
    fiber &f = S.fibers[S.current];
    if (!_setjmp(f.env)) _longjmp(S.home, 1);
}

/* The loop every fiber runs: one CUDA thread, then wait for the next. */
void fiber_main() {
    for (;;) {
        S.body(S.ctx);
        fiber &f = S.fibers[S.current];
        f.st = DONE;
        S.done++;
        yield_to_scheduler();
    }
}

bool grow_pool(int n) {
    while ((int)S.fibers.size() < n) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *m = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (m == MAP_FAILED) return false;
        mprotect(m, page, PROT_NONE); /* the guard page: a stack overflow faults loudly */
        S.fibers.emplace_back();
        S.fibers.back().stack = (char *)m + page;
    }
    return true;
}

void switch_to(int i) {
    fiber &f = S.fibers[i];
    S.current = i;
    threadIdx = f.tid;
    if (_setjmp(S.home)) { /* the fiber yielded or finished */
        S.current = -1;
        return;
    }
    if (!f.started) {
        f.started = true;
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = f.stack;
        f.uc.uc_stack.ss_size = kStack;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, fiber_main, 0);
        ucontext_t dummy;
        swapcontext(&dummy, &f.uc); /* never returns: the fiber longjmps home */
    }
    _longjmp(f.env, 1);
}

/* order[0..n) = 0..n-1 in the order CT_EMU_ORDER asks: forward, reversed,
 * or shuffled by (seed, the user's seed). */
void permute(std::vector<int> &order, int n, uint64_t seed) {
    const char *o = g_order ? g_order : getenv("CT_EMU_ORDER");
    if (!o || !*o) o = "random";
    for (int i = 0; i < n; i++) order[i] = i;
    if (!strcmp(o, "forward")) return;
    if (!strcmp(o, "reverse")) {
        for (int i = 0; i < n; i++) order[i] = n - 1 - i;
        return;
    }
    uint64_t user = 1;
    if (!strncmp(o, "random:", 7)) user = strtoull(o + 7, nullptr, 10);
    uint64_t x = mix(seed ^ mix(user));
    for (int i = n - 1; i > 0; i--) {
        x = mix(x);
        int j = (int)(x % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* The order threads are offered the processor in this round. */
void make_order(uint64_t seed, int round) { permute(S.order, S.n, seed ^ mix((uint64_t)round + 0x51)); }

/* All live threads wait at the barrier: release them (same line required). */
bool release_barrier() {
    int waiting = 0;
    const fiber *first = nullptr;
    for (int i = 0; i < S.n; i++) {
        fiber &f = S.fibers[i];
        if (f.st == RUNNABLE || f.st == AT_WARP) return false;
        if (f.st != AT_BARRIER) continue;
        if (!first) first = &f;
        else if (f.line != first->line || strcmp(f.file, first->file)) {
            fail("divergent __syncthreads: thread %d waits at %s:%d, thread %d at %s:%d", first->linear,
                 first->file, first->line, f.linear, f.file, f.line);
            return false;
        }
        waiting++;
    }
    if (!waiting) return false;
    for (int i = 0; i < S.n; i++)
        if (S.fibers[i].st == AT_BARRIER) S.fibers[i].st = RUNNABLE;
    return true;
}

void report_stuck() {
    for (int i = 0; i < S.n; i++) {
        const fiber &f = S.fibers[i];
        if (f.st == AT_WARP) {
            const warp &w = S.warps[i / 32];
            fail("%s at %s:%d (thread %d) waits for lanes of mask 0x%08x that never arrive "
                 "(exited, or at a barrier)", w.what, f.file, f.line, f.linear, w.mask);
            return;
        }
    }
    fail("block cannot progress");
}

void run_block(uint64_t seed) {
    S.done = 0;
    for (int i = 0; i < S.n; i++) S.fibers[i].st = RUNNABLE;
    for (auto &w : S.warps) w.reset();
    for (int round = 0; S.done < S.n && !S.failed; round++) {
        make_order(seed, round);
        bool progressed = false;
        for (int k = 0; k < S.n && !S.failed; k++) {
            int i = S.order[k];
            if (S.fibers[i].st != RUNNABLE) continue;
            switch_to(i);
            progressed = true;
        }
        if (S.failed || S.done == S.n) break;
        if (release_barrier()) continue;
        if (!progressed && !S.failed) report_stuck();
    }
}

} // namespace

void launch_body(dim3 grid, dim3 block, size_t smem, const char *kernel, const char *file, int line,
                 body_fn body, void *ctx) {
    if (S.current >= 0) {
        set_error(cudaErrorNotSupported, "%s:%d: kernel %s launched from a kernel", file, line, kernel);
        return;
    }
    long long nt = (long long)block.x * block.y * block.z;
    if (nt <= 0 || nt > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        set_error(cudaErrorInvalidConfiguration,
                  "%s:%d: kernel %s: invalid launch grid (%u,%u,%u) x block (%u,%u,%u)", file, line,
                  kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return;
    }
    if (smem > kMaxSmem) {
        set_error(cudaErrorInvalidValue, "%s:%d: kernel %s asks %zu bytes of dynamic shared memory (limit %zu)",
                  file, line, kernel, smem, kMaxSmem);
        return;
    }
    S.n = (int)nt;
    if (!grow_pool(S.n)) {
        set_error(cudaErrorMemoryAllocation, "emulator: no memory for %d fiber stacks", S.n);
        return;
    }
    S.order.resize(S.n);
    S.warps.assign((S.n + 31) / 32, warp());
    S.smem.assign(smem ? smem : 16, 0xff);
    S.body = body;
    S.ctx = ctx;
    S.kernel = kernel;
    S.failed = false;
    S.why.clear();
    S.fault_thread = -1;
    gridDim = grid;
    blockDim = block;
    uint64_t launch_id = ++S.launches;
    int i = 0;
    for (unsigned z = 0; z < block.z; z++)
        for (unsigned y = 0; y < block.y; y++)
            for (unsigned x = 0; x < block.x; x++, i++) {
                S.fibers[i].tid = uint3{x, y, z};
                S.fibers[i].linear = i;
            }
    /* Blocks in CT_EMU_ORDER's order too: a kernel whose block reads what
     * another block of the same launch writes depends on an order no GPU
     * promises (concurrent blocks' lost updates are not caught: blocks never
     * interleave here). */
    const long long nb = (long long)grid.x * grid.y * grid.z;
    if (nb > 0x7fffffff) {
        set_error(cudaErrorInvalidConfiguration, "%s:%d: kernel %s: %lld blocks (the emulator runs at most 2^31 - 1)",
                  file, line, kernel, nb);
        return;
    }
    S.blocks.resize((size_t)nb);
    permute(S.blocks, (int)nb, mix(launch_id ^ 0xb10c));
    for (long long k = 0; k < nb && !S.failed; k++) {
        const unsigned b = (unsigned)S.blocks[(size_t)k];
        const unsigned bx = b % grid.x, by = (b / grid.x) % grid.y, bz = b / grid.x / grid.y;
        blockIdx = uint3{bx, by, bz};
        if (+__start_ct_emu_shared && +__stop_ct_emu_shared > +__start_ct_emu_shared)
            memset(__start_ct_emu_shared, 0xff,
                   (size_t)(__stop_ct_emu_shared - __start_ct_emu_shared));
        memset(S.smem.data(), 0xff, S.smem.size());
        run_block(mix(launch_id) ^ mix(((uint64_t)bz << 42) ^ ((uint64_t)by << 21) ^ bx));
        if (S.failed && S.fault_thread >= 0) {
            const fiber &f = S.fibers[S.fault_thread];
            set_error(cudaErrorLaunchFailure, "%s:%d: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s",
                      file, line, kernel, bx, by, bz, f.tid.x, f.tid.y, f.tid.z, S.why.c_str());
        } else if (S.failed) {
            set_error(cudaErrorLaunchFailure, "%s:%d: kernel %s, block (%u,%u,%u): %s", file,
                      line, kernel, bx, by, bz, S.why.c_str());
        }
    }
    if (S.failed) /* abandoned fibers restart from scratch next time */
        for (auto &f : S.fibers) f.started = false;
    S.current = -1;
}

void *dyn_smem(void) { return S.smem.data(); }

void syncthreads(const char *file, int line) {
    fiber &f = S.fibers[S.current];
    f.st = AT_BARRIER;
    f.file = file;
    f.line = line;
    yield_to_scheduler();
}

namespace {

/* One lane's arrival at a warp collective (exchange, warp_gather): the checks,
 * then deposit(buffer parity) stores the lane's data; the last lane to arrive
 * releases the others. Returns the parity of the buffer the collective used
 * (its values stay until the collective after next), or -1 when the launch
 * failed. */
template <class F>
int arrive(const char *what, const char *file, int line, unsigned mask, int src, F deposit) {
    fiber &f = S.fibers[S.current];
    int lane = f.linear % 32;
    warp &w = S.warps[f.linear / 32];
    int lanes_here = S.n - (f.linear / 32) * 32; /* threads in this warp */
    if (!((mask >> lane) & 1u))
        fail("%s at %s:%d: lane %d calls with mask 0x%08x that leaves it out", what, file, line, lane, mask);
    else if (lanes_here < 32 && (mask >> lanes_here))
        fail("%s at %s:%d: mask 0x%08x names lanes beyond the %d threads of this warp", what, file,
             line, mask, lanes_here);
    else if (src >= 0 && !((mask >> src) & 1u))
        fail("%s at %s:%d: lane %d reads lane %d, which is not in mask 0x%08x", what, file, line,
             lane, src, mask);
    else if (w.arrived && (w.line != line || strcmp(w.file, file) || w.mask != mask))
        fail("%s at %s:%d (mask 0x%08x, lane %d) meets %s at %s:%d (mask 0x%08x) in the same warp",
             what, file, line, mask, lane, w.what, w.file, w.line, w.mask);
    if (S.failed) {
        yield_to_scheduler(); /* the launch is over; never resumed */
        return -1;
    }
    if (!w.arrived) {
        w.mask = mask;
        w.what = what;
        w.file = file;
        w.line = line;
    }
    unsigned gen = w.gen;
    deposit((int)(gen & 1), lane);
    if (++w.arrived == __builtin_popcount(mask)) {
        w.arrived = 0;
        w.gen++;
        int base = (f.linear / 32) * 32;
        for (int l = 0; l < 32 && base + l < S.n; l++)
            if (((mask >> l) & 1u) && S.fibers[base + l].st == AT_WARP) S.fibers[base + l].st = RUNNABLE;
    } else {
        f.st = AT_WARP;
        f.file = file;
        f.line = line;
        /* A random order lets the others run before this lane continues. */
        yield_to_scheduler();
    }
    return (int)(gen & 1);
}

} // namespace

uint64_t exchange(const char *what, const char *file, int line, unsigned mask, uint64_t mine,
                  int src) {
    int lane = S.fibers[S.current].linear % 32;
    warp &w = S.warps[S.fibers[S.current].linear / 32];
    int par = arrive(what, file, line, mask, src, [&](int b, int l) { w.val[b][l] = mine; });
    return par < 0 ? 0 : w.val[par][src >= 0 ? src : lane];
}

void warp_gather(const char *file, int line, const void *mine, size_t bytes, void *all) {
    warp &w = S.warps[S.fibers[S.current].linear / 32];
    if (bytes == 0 || bytes > kMaxGather) {
        fail("warp_gather at %s:%d: %zu bytes per lane (1 to %zu)", file, line, bytes, kMaxGather);
        yield_to_scheduler(); /* the launch is over; never resumed */
        return;
    }
    int par = arrive("warp_gather", file, line, 0xffffffffu, -1,
                     [&](int b, int l) { memcpy(w.blob[b][l], mine, bytes); });
    if (par < 0) return;
    for (int l = 0; l < 32; l++) memcpy((char *)all + (size_t)l * bytes, w.blob[par][l], bytes);
}

void syncwarp(const char *file, int line, unsigned mask) {
    exchange("__syncwarp", file, line, mask, 0, -1);
}

int shfl_source(shfl_kind kind, int lane, int arg, int width) {
    if (width <= 0 || width > 32 || (width & (width - 1))) {
        fail("shuffle width %d is not a power of two up to 32", width);
        return -1;
    }
    int base = lane & ~(width - 1), off = lane & (width - 1);
    switch (kind) {
    case SHFL_IDX: return base + (arg & (width - 1));
    case SHFL_XOR: {
        int s = lane ^ arg;
        return (s & ~(width - 1)) > base ? -1 : s; /* a later group: own value */
    }
    case SHFL_DOWN: return off + arg < width ? lane + arg : -1;
    case SHFL_UP: return off - arg >= 0 ? lane - arg : -1;
    }
    return -1;
}

unsigned vote(vote_kind kind, const char *file, int line, unsigned mask, int pred) {
    static const char *const names[] = {"__ballot_sync", "__any_sync", "__all_sync"};
    fiber &f = S.fibers[S.current];
    int base = (f.linear / 32) * 32;
    /* Gather the predicates: every lane deposits, then reads the others'. */
    exchange(names[kind], file, line, mask, pred ? 1u : 0u, -1);
    if (S.failed) return 0;
    warp &w = S.warps[f.linear / 32];
    /* The collective just completed wrote buffer (gen - 1) & 1. */
    const uint64_t *vals = w.val[(w.gen - 1) & 1];
    unsigned ballot = 0;
    for (int l = 0; l < 32 && base + l < S.n; l++)
        if (((mask >> l) & 1u) && vals[l]) ballot |= 1u << l;
    switch (kind) {
    case VOTE_BALLOT: return ballot;
    case VOTE_ANY: return ballot != 0;
    case VOTE_ALL: return ballot == mask;
    }
    return 0;
}

} // namespace ct_emu

extern "C" void ct_emu_set_order(const char *order) { ct_emu::g_order = order; }
