/* The CUDA built-ins the kernels of cuda_kernels/ use, for the host: the
 * emulated build ("cuda-emu", docs/DESIGN.md "Emulated CUDA") compiles those
 * same .cu sources with clang++ as C++ inside `namespace ct_emu`, after this
 * header (through cuda_includes.h with CT_EMU_BUILD defined).
 *
 * What runs how (scheduler.cc):
 * - a launch runs its blocks one after another (in CT_EMU_ORDER's order too); each CUDA thread of a block is
 *   a fiber (its own 128 KiB stack with a guard page) and threads switch only
 *   at __syncthreads, __syncwarp and warp collectives, in the order
 *   CT_EMU_ORDER asks (forward, reverse or random, the default);
 * - __syncthreads is a real barrier among the block's live threads (exited
 *   threads count as arrived, as on sm_70+); threads waiting at different
 *   __syncthreads lines, or a block that cannot progress, fail the launch;
 * - shuffles and votes exchange values among the lanes of a mask, which must
 *   all reach the same call; a lane reading a lane outside the mask fails the
 *   launch with the call's file and line; warp_gather (the warp mma's twin,
 *   mma.cuh) gives every lane all 32 lanes' operands the same way;
 * - static __shared__ arrays live in one linker section and dynamic shared
 *   memory in a per-launch buffer; both are filled with 0xFF (NaN) at every
 *   block start, as fresh device allocations are (runtime.cc);
 * - atomics are plain read-modify-writes (fibers never preempt one another).
 * A failed launch is reported through cudaGetLastError (CT_LAUNCH checks it),
 * with a message naming the kernel, the block, the thread and the line. */
#ifndef CT_CUDA_EMU_H
#define CT_CUDA_EMU_H

#ifndef CT_EMU_BUILD
#error "cuda_emu.h is for the emulated build only"
#endif

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

/* Qualifiers the host headers leave undefined or define as nothing. Shared
 * arrays must not become per-thread locals: static (blocks run one at a time)
 * in the section the scheduler poisons at each block start. */
#undef __shared__
#define __shared__ static __attribute__((section("ct_emu_shared"), aligned(16)))
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif

/* Call sites are part of the checks (divergent barriers, mismatched shuffles). */
#define __syncthreads() ::ct_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::ct_emu::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_sync(...) ::ct_emu::shfl(::ct_emu::SHFL_IDX, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::ct_emu::shfl(::ct_emu::SHFL_XOR, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::ct_emu::shfl(::ct_emu::SHFL_DOWN, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::ct_emu::shfl(::ct_emu::SHFL_UP, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, pred) ::ct_emu::vote(::ct_emu::VOTE_BALLOT, __FILE__, __LINE__, mask, pred)
#define __any_sync(mask, pred) (::ct_emu::vote(::ct_emu::VOTE_ANY, __FILE__, __LINE__, mask, pred) != 0)
#define __all_sync(mask, pred) (::ct_emu::vote(::ct_emu::VOTE_ALL, __FILE__, __LINE__, mask, pred) != 0)

/* The runtime and cuBLASLt calls the backend makes are renamed to the
 * emulator's (runtime.cc, cublaslt.cc), declared in namespace ct_emu: with the
 * real names, argument-dependent lookup would also find the real prototypes
 * and the calls would be ambiguous. The real headers above keep the real
 * names. */
#define cudaMalloc ct_emu_cudaMalloc
#define cudaFree ct_emu_cudaFree
#define cudaMemcpy ct_emu_cudaMemcpy
#define cudaMemcpyAsync ct_emu_cudaMemcpyAsync
#define cudaMemset ct_emu_cudaMemset
#define cudaMemsetAsync ct_emu_cudaMemsetAsync
#define cudaDeviceSynchronize ct_emu_cudaDeviceSynchronize
#define cudaStreamSynchronize ct_emu_cudaStreamSynchronize
#define cudaStreamCreateWithFlags ct_emu_cudaStreamCreateWithFlags
#define cudaStreamDestroy ct_emu_cudaStreamDestroy
#define cudaStreamWaitEvent ct_emu_cudaStreamWaitEvent
#define cudaEventCreateWithFlags ct_emu_cudaEventCreateWithFlags
#define cudaEventDestroy ct_emu_cudaEventDestroy
#define cudaEventRecord ct_emu_cudaEventRecord
#define cudaEventSynchronize ct_emu_cudaEventSynchronize
#define cudaHostAlloc ct_emu_cudaHostAlloc
#define cudaFreeHost ct_emu_cudaFreeHost
#define cudaGetLastError ct_emu_cudaGetLastError
#define cudaPeekAtLastError ct_emu_cudaPeekAtLastError
#define cudaGetErrorString ct_emu_cudaGetErrorString
#define cudaGetDeviceCount ct_emu_cudaGetDeviceCount
#define cudaMemGetInfo ct_emu_cudaMemGetInfo
#define cublasLtCreate ct_emu_cublasLtCreate
#define cublasLtDestroy ct_emu_cublasLtDestroy
#define cublasLtGetStatusName ct_emu_cublasLtGetStatusName
#define cublasLtGetStatusString ct_emu_cublasLtGetStatusString
#define cublasLtMatmul ct_emu_cublasLtMatmul
#define cublasLtMatmulAlgoGetHeuristic ct_emu_cublasLtMatmulAlgoGetHeuristic
#define cublasLtMatmulDescCreate ct_emu_cublasLtMatmulDescCreate
#define cublasLtMatmulDescDestroy ct_emu_cublasLtMatmulDescDestroy
#define cublasLtMatmulDescSetAttribute ct_emu_cublasLtMatmulDescSetAttribute
#define cublasLtMatmulPreferenceCreate ct_emu_cublasLtMatmulPreferenceCreate
#define cublasLtMatmulPreferenceDestroy ct_emu_cublasLtMatmulPreferenceDestroy
#define cublasLtMatmulPreferenceSetAttribute ct_emu_cublasLtMatmulPreferenceSetAttribute
#define cublasLtMatrixLayoutCreate ct_emu_cublasLtMatrixLayoutCreate
#define cublasLtMatrixLayoutDestroy ct_emu_cublasLtMatrixLayoutDestroy
#define cublasLtMatrixLayoutSetAttribute ct_emu_cublasLtMatrixLayoutSetAttribute

#include "cublaslt.h" /* the host cuBLASLt's declarations, under those names */

namespace ct_emu {

/* The built-in variables, rewritten by the scheduler before each switch. */
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

/* --- the scheduler's interface (scheduler.cc) --- */
typedef void (*body_fn)(void *ctx);
/* Runs body(ctx) once per thread of every block; failures are recorded for
 * cudaGetLastError. */
void launch_body(dim3 grid, dim3 block, size_t smem, const char *kernel, const char *file, int line,
                 body_fn body, void *ctx);
template <class F>
void launch(dim3 grid, dim3 block, size_t smem, const char *kernel, const char *file, int line, F f) {
    launch_body(grid, block, smem, kernel, file, line, [](void *c) { (*static_cast<F *>(c))(); }, &f);
}
void *dyn_smem(void); /* the launch's dynamic shared memory */
void syncthreads(const char *file, int line);
void syncwarp(const char *file, int line, unsigned mask = 0xffffffffu);

enum shfl_kind { SHFL_IDX, SHFL_XOR, SHFL_DOWN, SHFL_UP };
enum vote_kind { VOTE_BALLOT, VOTE_ANY, VOTE_ALL };
/* One warp collective: every lane of mask deposits `mine` and gets the value
 * of lane `src` (its own when src < 0). */
uint64_t exchange(const char *what, const char *file, int line, unsigned mask, uint64_t mine,
                  int src);
/* A warp collective over all 32 lanes (full mask, one call site): each lane
 * deposits `bytes` (1..64) from mine and receives every lane's, lane l's at
 * all + l * bytes. The emulated twins of warp-wide instructions (mma.cuh) are
 * built on it. */
void warp_gather(const char *file, int line, const void *mine, size_t bytes, void *all);
/* The lane a shuffle reads (-1: its own value), from CUDA's rules for width. */
int shfl_source(shfl_kind kind, int lane, int arg, int width);
unsigned vote(vote_kind kind, const char *file, int line, unsigned mask, int pred);

template <class T>
T shfl(shfl_kind kind, const char *file, int line, unsigned mask, T v, int arg, int width = 32) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    int lane = (int)(threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y) % 32;
    static const char *const names[] = {"__shfl_sync", "__shfl_xor_sync", "__shfl_down_sync",
                                        "__shfl_up_sync"};
    bits = exchange(names[kind], file, line, mask, bits, shfl_source(kind, lane, arg, width));
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}

/* --- math and bit intrinsics missing on the host --- */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
static inline float __expf(float x) { return expf(x); }
static inline float __logf(float x) { return logf(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
template <class T> static inline T __ldg(const T *p) { return *p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline void __threadfence(void) {}
static inline void __threadfence_block(void) {}

/* --- atomics: no fiber runs between the read and the write --- */
template <class T> static inline T atomicAdd(T *p, T v) { T old = *p; *p = old + v; return old; }
template <class T> static inline T atomicSub(T *p, T v) { T old = *p; *p = old - v; return old; }
template <class T> static inline T atomicMax(T *p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <class T> static inline T atomicMin(T *p, T v) { T old = *p; if (v < old) *p = v; return old; }
template <class T> static inline T atomicExch(T *p, T v) { T old = *p; *p = v; return old; }
template <class T> static inline T atomicCAS(T *p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
template <class T> static inline T atomicOr(T *p, T v) { T old = *p; *p = old | v; return old; }

/* --- the runtime API the backend calls (runtime.cc): host memory with the
 * checks a GPU would make (device pointers known, host/device mix-ups
 * refused), kernels run synchronously. The prototypes of cuda_runtime_api.h
 * under the names the macros above give them; the real libcudart is
 * untouched. The cuBLASLt calls are declared the same way in cublaslt.h. --- */
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
/* Streams other than 0 (cudaStreamNonBlocking only: the legacy stream does
 * not wait for them, nor they for it) hold their copies back until someone
 * waits for them (cudaEventSynchronize, cudaStreamWaitEvent, a stream or
 * device synchronize): code that reads a copy's destination, or rewrites
 * its source, before waiting sees the wrong bytes, as it may on a GPU.
 * Their async copies must come from cudaHostAlloc memory (pageable memory
 * would make the copy synchronous on a GPU). Kernels and stream 0 run at
 * once, so an event recorded on stream 0 is complete when recorded. */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
/* Records a failure for cudaGetLastError with its message (printf-style). */
void set_error(cudaError_t err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True when [p, p + bytes) lies inside one device allocation. */
bool is_device(const void *p, size_t bytes);

} // namespace ct_emu

/* Tests of the emulator itself: the thread order of the next launches
 * ("forward", "reverse", "random" or "random:SEED"; NULL: CT_EMU_ORDER or
 * random). */
extern "C" void ct_emu_set_order(const char *order);

#endif
