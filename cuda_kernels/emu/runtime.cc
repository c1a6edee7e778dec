/* The CUDA runtime calls of the backend, for the emulated build: device memory
 * is host memory the emulator tracks, so the checks a GPU makes happen here
 * too (a host pointer where a device one belongs is refused, as is a copy or
 * a set running past an allocation); fresh allocations are filled with 0xFF
 * (NaN) so a kernel reading what nobody wrote fails its comparison. Kernels
 * run synchronously, so the stream calls have nothing to wait for. */
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "cuda_kernels/cuda_includes.h"

namespace ct_emu {
namespace {

std::mutex g_lock;
std::map<uintptr_t, size_t> g_allocs; /* device allocations: start -> bytes */
size_t g_in_use = 0;
const size_t kTotal = (size_t)64 << 30; /* what cudaMemGetInfo reports as total */

thread_local cudaError_t g_last = cudaSuccess;
thread_local std::string g_message; /* the last failure's text ... */
thread_local cudaError_t g_message_code = cudaSuccess; /* ... and its code */

bool inside(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

/* Any byte of [p, p + n) in a device allocation. */
bool overlaps(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a + (n ? n - 1 : 0));
    if (it == g_allocs.begin()) return false;
    --it;
    return it->first + it->second > a;
}

cudaError_t check_copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind, const char *call) {
    std::lock_guard<std::mutex> g(g_lock);
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault) return cudaSuccess;
    if (kind == cudaMemcpyHostToHost) dst_dev = src_dev = false;
    if (dst_dev ? !inside(dst, n) : overlaps(dst, n)) {
        set_error(cudaErrorInvalidValue, "%s: destination %p (%zu bytes) is %s", call, dst, n,
                  dst_dev ? "not inside one device allocation" : "device memory, not host memory");
        return cudaErrorInvalidValue;
    }
    if (src_dev ? !inside(src, n) : overlaps(src, n)) {
        set_error(cudaErrorInvalidValue, "%s: source %p (%zu bytes) is %s", call, src, n,
                  src_dev ? "not inside one device allocation" : "device memory, not host memory");
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

} // namespace

void set_error(cudaError_t err, const char *fmt, ...) {
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_last = err;
    g_message = buf;
    g_message_code = err;
}

bool is_device(const void *p, size_t bytes) {
    std::lock_guard<std::mutex> g(g_lock);
    return inside(p, bytes);
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    size_t n = bytes ? bytes : 1;
    void *m = aligned_alloc(256, (n + 255) / 256 * 256); /* cudaMalloc's alignment */
    if (!m) {
        *p = nullptr;
        set_error(cudaErrorMemoryAllocation, "cudaMalloc: out of host memory for %zu bytes", bytes);
        return cudaErrorMemoryAllocation;
    }
    memset(m, 0xff, n);
    std::lock_guard<std::mutex> g(g_lock);
    g_allocs[(uintptr_t)m] = n;
    g_in_use += n;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> g(g_lock);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) {
        set_error(cudaErrorInvalidValue, "cudaFree: %p is not the start of a device allocation", p);
        return cudaErrorInvalidValue;
    }
    g_in_use -= it->second;
    g_allocs.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    cudaError_t e = check_copy(dst, src, bytes, kind, "cudaMemcpy");
    if (e == cudaSuccess && bytes) memmove(dst, src, bytes);
    return e;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
    cudaError_t e = check_copy(dst, src, bytes, kind, "cudaMemcpyAsync");
    if (e == cudaSuccess && bytes) memmove(dst, src, bytes);
    return e;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (!is_device(p, bytes)) {
        set_error(cudaErrorInvalidValue, "cudaMemset: %p (%zu bytes) is not inside one device allocation",
                  p, bytes);
        return cudaErrorInvalidValue;
    }
    memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t) {
    return cudaMemset(p, value, bytes);
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return g_last; }

/* The message of the last failure when err is its code (CT_CUDA_TRY prints it
 * right after the failing call), else the code's name. */
const char *cudaGetErrorString(cudaError_t err) {
    if (err != cudaSuccess && err == g_message_code) return g_message.c_str();
    switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "emulated CUDA error";
    }
}

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    std::lock_guard<std::mutex> g(g_lock);
    *total_bytes = kTotal;
    *free_bytes = g_in_use < kTotal ? kTotal - g_in_use : 0;
    return cudaSuccess;
}

} // namespace ct_emu
