/* Staged uploads (autograd/backend.h, "Staged uploads"): the trainer writes
 * the next micro-batch's inputs into a page-locked slot while the device
 * computes the current one, and the copy runs on a stream of its own, beside
 * the kernels of the compute stream (ct_cuda_stream()).
 *
 * Two slots, each with
 * - a page-locked host buffer (cudaHostAlloc: the copy engine reads it
 *   directly, so cudaMemcpyAsync returns at once);
 * - `copied`: recorded on the copy stream after the slot's copy; the host
 *   waits for it before rewriting the buffer, the compute stream before
 *   reading the destination;
 * - `released`: recorded on the compute stream by stage_fence after the last
 *   work reading the slot's device buffer; the copy stream waits for it
 *   before overwriting that buffer.
 * All state is process-wide and used by one host thread (the trainer's). In
 * the emulated build the copies wait in the stream's queue until waited for
 * (emu/runtime.cc), so a missing wait or fence reads the wrong batch. */
#include "cuda_common.cuh"

namespace {

struct stage_slot {
    void *host = nullptr; /* [cap] page-locked */
    size_t cap = 0;
    bool pending = false; /* an upload was queued and not waited for by the host */
    cudaEvent_t copied = nullptr, released = nullptr;
};

cudaStream_t g_copy_stream = nullptr;
stage_slot g_slots[2];

int ensure_stream(void) {
    if (g_copy_stream) return CT_OK;
    CT_CUDA_TRY(cudaStreamCreateWithFlags(&g_copy_stream, cudaStreamNonBlocking));
    for (stage_slot &s : g_slots) {
        CT_CUDA_TRY(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
        CT_CUDA_TRY(cudaEventCreateWithFlags(&s.released, cudaEventDisableTiming));
        CT_CUDA_TRY(cudaEventRecord(s.released, ct_cuda_stream())); /* nothing reads a fresh slot */
    }
    return CT_OK;
}

int check_slot(int slot, const char *what) {
    if (slot == 0 || slot == 1) return CT_OK;
    return ct_errorf(CT_EINPUT, "%s: slot %d (0 or 1 expected)", what, slot);
}

/* The host waits until the slot's queued copy has read its buffer. */
int wait_copied(stage_slot &s) {
    if (s.pending) CT_CUDA_TRY(cudaEventSynchronize(s.copied));
    s.pending = false;
    return CT_OK;
}

} // namespace

void *ct_cuda_stage_host(int slot, size_t bytes) {
    if (check_slot(slot, "stage_host") || ensure_stream()) return nullptr;
    stage_slot &s = g_slots[slot];
    if (wait_copied(s)) return nullptr;
    if (s.cap < bytes) {
        if (s.host && cudaFreeHost(s.host) != cudaSuccess) {
            ct_errorf(CT_ERUNTIME, "stage_host: cudaFreeHost failed: %s", cudaGetErrorString(cudaGetLastError()));
            return nullptr;
        }
        s.host = nullptr, s.cap = 0;
        if (cudaHostAlloc(&s.host, bytes, cudaHostAllocDefault) != cudaSuccess) {
            s.host = nullptr;
            ct_errorf(CT_ERUNTIME, "stage_host: %zu bytes of page-locked host memory: %s", bytes,
                      cudaGetErrorString(cudaGetLastError()));
            return nullptr;
        }
        s.cap = bytes;
    }
    return s.host;
}

int ct_cuda_stage_upload(int slot, void *dst, size_t bytes) {
    CT_TRY(check_slot(slot, "stage_upload"));
    stage_slot &s = g_slots[slot];
    if (!s.host || bytes > s.cap)
        return ct_errorf(CT_EINPUT, "stage_upload: slot %d holds %zu bytes, %zu asked (call stage_host first)", slot,
                         s.cap, bytes);
    CT_CUDA_TRY(cudaStreamWaitEvent(g_copy_stream, s.released, 0));
    CT_CUDA_TRY(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, g_copy_stream));
    CT_CUDA_TRY(cudaEventRecord(s.copied, g_copy_stream));
    s.pending = true;
    return CT_OK;
}

int ct_cuda_stage_wait(int slot) {
    CT_TRY(check_slot(slot, "stage_wait"));
    CT_TRY(ensure_stream());
    CT_CUDA_TRY(cudaStreamWaitEvent(ct_cuda_stream(), g_slots[slot].copied, 0));
    return CT_OK;
}

int ct_cuda_stage_fence(int slot) {
    CT_TRY(check_slot(slot, "stage_fence"));
    CT_TRY(ensure_stream());
    CT_CUDA_TRY(cudaEventRecord(g_slots[slot].released, ct_cuda_stream()));
    return CT_OK;
}

void ct_cuda_stage_release(void) {
    if (!g_copy_stream) return;
    cudaStreamSynchronize(g_copy_stream);
    for (stage_slot &s : g_slots) {
        if (s.host) cudaFreeHost(s.host);
        cudaEventDestroy(s.copied);
        cudaEventDestroy(s.released);
        s = stage_slot();
    }
    cudaStreamDestroy(g_copy_stream);
    g_copy_stream = nullptr;
}
