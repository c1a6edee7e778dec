/* The CUDA runtime calls of the backend, for the emulated build: device memory
 * is host memory the emulator tracks, so the checks a GPU makes happen here
 * too (a host pointer where a device one belongs is refused, as is a copy or
 * a set running past an allocation); fresh allocations are filled with 0xFF
 * (NaN) so a kernel reading what nobody wrote fails its comparison. Kernels
 * and stream 0 run synchronously; copies on a created stream wait in its
 * queue until something waits for them (cuda_emu.h), so a missing wait shows
 * as wrong bytes. */
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_kernels/cuda_includes.h"

namespace ct_emu {
namespace {

std::mutex g_lock;
std::map<uintptr_t, size_t> g_allocs; /* device allocations: start -> bytes */
std::map<uintptr_t, size_t> g_pinned; /* cudaHostAlloc blocks: start -> bytes */
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

bool inside_pinned(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

/* A created stream: its copies not yet run, numbered from `done`. */
struct copy_op {
    void *dst;
    const void *src;
    size_t bytes;
};
struct emu_stream {
    std::vector<copy_op> queue;
    uint64_t done = 0; /* copies run so far */
};
/* An event: complete once `stream` has run `upto` copies (stream null:
 * recorded on stream 0, or never recorded: complete). */
struct emu_event {
    emu_stream *stream = nullptr;
    uint64_t upto = 0;
};
std::vector<emu_stream *> g_streams; /* live created streams */

emu_stream *as_stream(cudaStream_t s) { return reinterpret_cast<emu_stream *>(s); }
emu_event *as_event(cudaEvent_t e) { return reinterpret_cast<emu_event *>(e); }

/* Runs s's queued copies until it has run `upto` in all. A destination freed
 * meanwhile is a failure (the GPU would write into freed memory). */
cudaError_t run_copies(emu_stream *s, uint64_t upto) {
    while (s->done < upto && !s->queue.empty()) {
        copy_op op = s->queue.front();
        s->queue.erase(s->queue.begin());
        s->done++;
        bool ok;
        {
            std::lock_guard<std::mutex> g(g_lock);
            ok = inside(op.dst, op.bytes) && inside_pinned(op.src, op.bytes);
        }
        if (!ok) {
            set_error(cudaErrorInvalidValue, "cudaMemcpyAsync (queued on a stream): its destination %p or source %p "
                      "was freed before the copy ran", op.dst, op.src);
            return cudaErrorInvalidValue;
        }
        memmove(op.dst, op.src, op.bytes);
    }
    return cudaSuccess;
}

cudaError_t run_all(emu_stream *s) { return run_copies(s, s->done + s->queue.size()); }

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
                            cudaStream_t stream) {
    cudaError_t e = check_copy(dst, src, bytes, kind, "cudaMemcpyAsync");
    if (e != cudaSuccess || !bytes) return e;
    if (!stream) {
        memmove(dst, src, bytes);
        return cudaSuccess;
    }
    if (kind != cudaMemcpyHostToDevice) {
        set_error(cudaErrorNotSupported, "cudaMemcpyAsync on a created stream: the emulator queues host-to-device "
                  "copies only");
        return cudaErrorNotSupported;
    }
    bool pinned;
    {
        std::lock_guard<std::mutex> g(g_lock);
        pinned = inside_pinned(src, bytes);
    }
    if (!pinned) {
        set_error(cudaErrorInvalidValue, "cudaMemcpyAsync: source %p (%zu bytes) is pageable host memory: the copy "
                  "would not be asynchronous on a GPU (allocate it with cudaHostAlloc)", src, bytes);
        return cudaErrorInvalidValue;
    }
    as_stream(stream)->queue.push_back({dst, src, bytes});
    return cudaSuccess;
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

cudaError_t cudaDeviceSynchronize(void) {
    for (emu_stream *s : g_streams) {
        cudaError_t e = run_all(s);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) { return stream ? run_all(as_stream(stream)) : cudaSuccess; }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    if (flags != cudaStreamNonBlocking) {
        set_error(cudaErrorNotSupported, "cudaStreamCreateWithFlags: the emulator has non-blocking streams only "
                  "(a blocking stream would also wait for the legacy stream)");
        return cudaErrorNotSupported;
    }
    emu_stream *s = new emu_stream;
    g_streams.push_back(s);
    *stream = reinterpret_cast<cudaStream_t>(s);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    emu_stream *s = as_stream(stream);
    cudaError_t e = run_all(s); /* as on a GPU: queued work still completes */
    for (size_t i = 0; i < g_streams.size(); i++)
        if (g_streams[i] == s) g_streams.erase(g_streams.begin() + (long)i);
    delete s;
    return e;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned) {
    *event = reinterpret_cast<cudaEvent_t>(new emu_event);
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete as_event(event);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    emu_event *ev = as_event(event);
    ev->stream = as_stream(stream);
    ev->upto = stream ? ev->stream->done + ev->stream->queue.size() : 0;
    return cudaSuccess;
}

/* Waiting for an event, by the host or by a stream (whose own work has not
 * started before the event's: kernels wait at launch, queued copies are
 * behind it), runs the event's copies. */
static cudaError_t complete(cudaEvent_t event) {
    emu_event *ev = as_event(event);
    return ev->stream ? run_copies(ev->stream, ev->upto) : cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) { return complete(event); }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) { return complete(event); }

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned) {
    size_t n = bytes ? bytes : 1;
    void *m = malloc(n);
    if (!m) {
        *p = nullptr;
        set_error(cudaErrorMemoryAllocation, "cudaHostAlloc: out of host memory for %zu bytes", bytes);
        return cudaErrorMemoryAllocation;
    }
    memset(m, 0xff, n);
    std::lock_guard<std::mutex> g(g_lock);
    g_pinned[(uintptr_t)m] = n;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> g(g_lock);
    auto it = g_pinned.find((uintptr_t)p);
    if (it == g_pinned.end()) {
        set_error(cudaErrorInvalidValue, "cudaFreeHost: %p is not the start of a cudaHostAlloc block", p);
        return cudaErrorInvalidValue;
    }
    g_pinned.erase(it);
    free(p);
    return cudaSuccess;
}

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
