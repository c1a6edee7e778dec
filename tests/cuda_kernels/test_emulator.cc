/* The CUDA emulator's own tests (cuda_kernels/emu/): kernels with the bugs it
 * exists to catch must fail, their correct twins must pass, in every thread
 * order. Written in CUDA C++ as the backend's .cu files are, and compiled the
 * way the emulated build compiles those: inside namespace ct_emu.
 *
 * - a block reduction missing its first __syncthreads: wrong in forward and
 *   random order (reverse happens to hide it, as on some GPU schedules);
 * - a warp reduction with a wrong shuffle offset: wrong sum; a shuffle reading
 *   a lane outside its mask, a warp collective whose lanes exited, and
 *   __syncthreads on divergent lines: the launch fails naming the line;
 * - uninitialised shared memory reads NaN; early-exited threads count as
 *   arrived at a barrier (sm_70+);
 * - launch limits and host/device pointer mix-ups are refused;
 * - the warp mma's twin (cuda_kernels/mma.cuh, over warp_gather): fragments
 *   loaded by PTX's documented layouts give A·B + C exactly; a wrong layout
 *   (A loaded transposed) gives a wrong product; a partial warp fails;
 * - a copy queued on a stream is invisible until waited for, and its source
 *   must be page-locked. */
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_kernels/cuda_includes.h"
#include "cuda_kernels/cuda_check.h" /* CT_DYN_SHARED */

static int g_failures = 0;
#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                           \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, "\n");                                                         \
            g_failures++;                                                                  \
        }                                                                                  \
    } while (0)

namespace ct_emu {

/* out[b] = sum of x[b*256 .. b*256+255], tree in shared memory. */
static __global__ void block_sum(const float *x, float *out, bool first_sync) {
    __shared__ float sh[256];
    int t = threadIdx.x;
    sh[t] = x[blockIdx.x * 256 + t];
    if (first_sync) __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = sh[0];
}

/* out[w] = sum over warp w's 32 values; first_offset 16 is right, 32 wrong. */
static __global__ void warp_sum(const float *x, float *out, int first_offset) {
    float v = x[threadIdx.x];
    for (int o = first_offset; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}

static __global__ void shfl_outside_mask(float *out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, 20);
}

static __global__ void collective_after_exit(float *out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

static __global__ void divergent_barrier(float *out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 0.0f;
}

static __global__ void read_unwritten_shared(float *out) {
    __shared__ float sh[64];
    if (threadIdx.x < 32) sh[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = sh[threadIdx.x]; /* threads 32..63 read what nobody wrote */
}

/* Half the threads leave before the barrier; the rest must still pass it. */
static __global__ void early_exit(float *out) {
    if (threadIdx.x >= 32) return;
    __shared__ float sh[32];
    sh[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = sh[31 - threadIdx.x];
}

static __global__ void ballot(unsigned *out) {
    unsigned b = __ballot_sync(0xffffffffu, threadIdx.x % 3 == 0);
    bool any = __any_sync(0xffffffffu, threadIdx.x == 7);
    bool all = __all_sync(0xffffffffu, threadIdx.x < 32);
    if (threadIdx.x == 0) {
        out[0] = b;
        out[1] = any;
        out[2] = all;
    }
}

#include "cuda_kernels/mma.cuh" /* inside namespace ct_emu, as the .cu files see it */

/* Per warp w: D_w [16×8] (row-major) = A_w [16×16] (row-major) · B_w [16×8]
 * (column-major: bt[n*16 + k]) + C_w [16×8] (row-major) through the mma
 * wrapper, each fragment loaded by the element formulas of PTX ISA 9.7.14.5.8
 * (element i of a fragment: register i / 2, half i & 1). transpose_a loads A
 * as if it were column-major: a wrong layout. */
static __global__ void mma_16x8x16(const float *A, const float *Bt, const float *C, float *D, bool transpose_a) {
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane % 4;
    A += 256 * w, Bt += 128 * w, C += 128 * w, D += 128 * w;
    float ae[8], be[4], c[4], d[4];
    for (int i = 0; i < 8; i++) {
        int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
        int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        ae[i] = transpose_a ? A[col * 16 + row] : A[row * 16 + col];
    }
    for (int i = 0; i < 4; i++) {
        int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0), col = g;
        be[i] = Bt[col * 16 + row];
    }
    for (int i = 0; i < 4; i++) c[i] = C[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)];
    uint32_t a[4], b[2];
    for (int r = 0; r < 4; r++) a[r] = ct_mma_pack_bf16(ae[2 * r], ae[2 * r + 1]);
    for (int r = 0; r < 2; r++) b[r] = ct_mma_pack_bf16(be[2 * r], be[2 * r + 1]);
    ct_mma_bf16_16x8x16(d, a, b, c);
    for (int i = 0; i < 4; i++) D[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)] = d[i];
}

/* Half a warp calls the mma: the other lanes never arrive. */
static __global__ void mma_partial_warp(float *out) {
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0}, d[4];
    if (threadIdx.x < 16) {
        ct_mma_bf16_16x8x16(d, a, b, c);
        out[threadIdx.x] = d[0];
    }
}

static __global__ void dyn_shared_reverse(const int *x, int *y, int n) {
    CT_DYN_SHARED(int, buf);
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    if ((int)threadIdx.x < n) y[threadIdx.x] = buf[n - 1 - threadIdx.x];
}

/* The launch's error code and message, cleared. */
static cudaError_t last(const char **msg) {
    cudaError_t e = cudaGetLastError();
    *msg = e == cudaSuccess ? "" : cudaGetErrorString(e);
    return e;
}

template <class T> static T *dev(size_t n) {
    void *p = nullptr;
    if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) abort();
    return (T *)p;
}

static const char *const k_orders[] = {"forward", "reverse", "random:1", "random:2", "random:3",
                                       "random:4", "random:5"};

static void test_block_sum() {
    const int B = 4;
    float hx[B * 256], want[B], got[B];
    for (int i = 0; i < B * 256; i++) hx[i] = (float)(i % 17) - 8.0f;
    for (int b = 0; b < B; b++) {
        double s = 0;
        for (int t = 0; t < 256; t++) s += hx[b * 256 + t];
        want[b] = (float)s;
    }
    float *x = dev<float>(B * 256), *out = dev<float>(B);
    cudaMemcpy(x, hx, sizeof hx, cudaMemcpyHostToDevice);
    for (const char *order : k_orders) {
        ct_emu_set_order(order);
        for (int with_sync = 1; with_sync >= 0; with_sync--) {
            const char *msg;
            launch(dim3(B), dim3(256), 0, "block_sum", __FILE__, __LINE__,
                   [&] { block_sum(x, out, with_sync); });
            CHECK(last(&msg) == cudaSuccess, "block_sum launch (%s): %s", order, msg);
            cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
            bool right = !memcmp(got, want, sizeof got);
            if (with_sync)
                CHECK(right, "block_sum with every __syncthreads is wrong in order %s", order);
            else if (strcmp(order, "reverse")) /* reverse order happens to hide the bug */
                CHECK(!right, "a missing __syncthreads went unnoticed in order %s", order);
        }
    }
    ct_emu_set_order(nullptr);
    cudaFree(x);
    cudaFree(out);
}

static void test_warp_sum() {
    float hx[64], got[2];
    for (int i = 0; i < 64; i++) hx[i] = (float)i;
    float *x = dev<float>(64), *out = dev<float>(2);
    cudaMemcpy(x, hx, sizeof hx, cudaMemcpyHostToDevice);
    for (const char *order : k_orders) {
        ct_emu_set_order(order);
        const char *msg;
        launch(dim3(1), dim3(64), 0, "warp_sum", __FILE__, __LINE__, [&] { warp_sum(x, out, 16); });
        CHECK(last(&msg) == cudaSuccess, "warp_sum: %s", msg);
        cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
        CHECK(got[0] == 496.0f && got[1] == 1520.0f, "warp_sum (%s): %g %g", order, got[0], got[1]);
        launch(dim3(1), dim3(64), 0, "warp_sum", __FILE__, __LINE__, [&] { warp_sum(x, out, 32); });
        CHECK(last(&msg) == cudaSuccess, "warp_sum: %s", msg);
        cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
        CHECK(got[0] != 496.0f, "a wrong shuffle offset gave the right sum (%s)", order);
    }
    ct_emu_set_order(nullptr);
    cudaFree(x);
    cudaFree(out);
}

static void expect_failure(const char *what, const char *needle, dim3 grid, dim3 block,
                           size_t smem, void (*k)(float *)) {
    float *out = dev<float>(1024);
    const char *msg;
    launch(grid, block, smem, what, __FILE__, __LINE__, [&] { k(out); });
    cudaError_t e = last(&msg);
    CHECK(e != cudaSuccess, "%s: the launch did not fail", what);
    CHECK(strstr(msg, needle) && strstr(msg, "test_emulator.cc:"), "%s: message \"%s\" lacks \"%s\"",
          what, msg, needle);
    printf("  %s -> %s\n", what, msg);
    cudaFree(out);
}

static void test_faults() {
    expect_failure("shfl_outside_mask", "not in mask", dim3(1), dim3(32), 0, shfl_outside_mask);
    expect_failure("collective_after_exit", "never arrive", dim3(1), dim3(32), 0, collective_after_exit);
    expect_failure("divergent_barrier", "divergent __syncthreads", dim3(1), dim3(64), 0,
                   divergent_barrier);
    expect_failure("too many threads", "invalid launch", dim3(1), dim3(2048), 0, early_exit);
    expect_failure("too much shared memory", "dynamic shared memory", dim3(1), dim3(32), 64 << 10,
                   early_exit);
}

static void test_shared_and_votes() {
    float *out = dev<float>(64);
    float got[64];
    const char *msg;
    launch(dim3(1), dim3(64), 0, "read_unwritten_shared", __FILE__, __LINE__,
           [&] { read_unwritten_shared(out); });
    CHECK(last(&msg) == cudaSuccess, "read_unwritten_shared: %s", msg);
    cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
    CHECK(got[0] == 1.0f && got[31] == 1.0f && std::isnan(got[32]) && std::isnan(got[63]),
          "unwritten shared memory is not NaN: %g %g", got[32], got[63]);

    launch(dim3(2), dim3(64), 0, "early_exit", __FILE__, __LINE__, [&] { early_exit(out); });
    CHECK(last(&msg) == cudaSuccess, "early_exit: %s", msg);
    cudaMemcpy(got, out, 32 * sizeof(float), cudaMemcpyDeviceToHost);
    CHECK(got[0] == 31.0f && got[31] == 0.0f, "early_exit: %g %g", got[0], got[31]);

    unsigned *u = dev<unsigned>(3), hu[3];
    launch(dim3(1), dim3(64), 0, "ballot", __FILE__, __LINE__, [&] { ballot(u); });
    CHECK(last(&msg) == cudaSuccess, "ballot: %s", msg);
    cudaMemcpy(hu, u, sizeof hu, cudaMemcpyDeviceToHost);
    unsigned want = 0;
    for (int l = 0; l < 32; l += 3) want |= 1u << l;
    CHECK(hu[0] == want && hu[1] == 1 && hu[2] == 1, "votes: %08x %u %u", hu[0], hu[1], hu[2]);

    int hx[96], hy[96], *x = dev<int>(96), *y = dev<int>(96);
    for (int i = 0; i < 96; i++) hx[i] = i * 3;
    cudaMemcpy(x, hx, sizeof hx, cudaMemcpyHostToDevice);
    launch(dim3(1), dim3(96), 96 * sizeof(int), "dyn_shared_reverse", __FILE__, __LINE__,
           [&] { dyn_shared_reverse(x, y, 96); });
    CHECK(last(&msg) == cudaSuccess, "dyn_shared_reverse: %s", msg);
    cudaMemcpy(hy, y, sizeof hy, cudaMemcpyDeviceToHost);
    CHECK(hy[0] == 95 * 3 && hy[95] == 0, "dynamic shared memory: %d %d", hy[0], hy[95]);
    cudaFree(out);
    cudaFree(u);
    cudaFree(x);
    cudaFree(y);
}

static void test_mma() {
    enum { W = 2 }; /* warps, each its own product */
    float hA[W * 256], hBt[W * 128], hC[W * 128], want[W * 128], got[W * 128];
    /* bf16-exact values whose products and sums are exact in fp32 */
    for (int w = 0; w < W; w++) {
        for (int r = 0; r < 16; r++)
            for (int k = 0; k < 16; k++) hA[w * 256 + r * 16 + k] = (float)((r * 7 + k * 3 + w) % 11 - 5) / 4;
        for (int n = 0; n < 8; n++)
            for (int k = 0; k < 16; k++) hBt[w * 128 + n * 16 + k] = (float)((k * 5 + n * 3 + 2 * w) % 9 - 4) / 8;
        for (int r = 0; r < 16; r++)
            for (int n = 0; n < 8; n++) {
                hC[w * 128 + r * 8 + n] = (float)(r - n - w) * 0.5f;
                double s = hC[w * 128 + r * 8 + n];
                for (int k = 0; k < 16; k++) s += (double)hA[w * 256 + r * 16 + k] * hBt[w * 128 + n * 16 + k];
                want[w * 128 + r * 8 + n] = (float)s;
            }
    }
    float *A = dev<float>(W * 256), *Bt = dev<float>(W * 128), *C = dev<float>(W * 128), *D = dev<float>(W * 128);
    cudaMemcpy(A, hA, sizeof hA, cudaMemcpyHostToDevice);
    cudaMemcpy(Bt, hBt, sizeof hBt, cudaMemcpyHostToDevice);
    cudaMemcpy(C, hC, sizeof hC, cudaMemcpyHostToDevice);
    for (const char *order : k_orders) {
        ct_emu_set_order(order);
        for (int transpose = 0; transpose < 2; transpose++) {
            const char *msg;
            launch(dim3(1), dim3(32 * W), 0, "mma_16x8x16", __FILE__, __LINE__,
                   [&] { mma_16x8x16(A, Bt, C, D, transpose); });
            CHECK(last(&msg) == cudaSuccess, "mma_16x8x16 (%s): %s", order, msg);
            cudaMemcpy(got, D, sizeof got, cudaMemcpyDeviceToHost);
            int bad = 0;
            for (int e = 0; e < W * 128; e++) bad += got[e] != want[e];
            if (!transpose)
                CHECK(bad == 0, "mma (%s): %d of %d elements differ from A·B + C", order, bad, W * 128);
            else
                CHECK(bad > 0, "mma (%s): A loaded transposed still gave A·B + C", order);
        }
    }
    ct_emu_set_order(nullptr);
    expect_failure("mma_partial_warp", "never arrive", dim3(1), dim3(32), 0, mma_partial_warp);
    cudaFree(A);
    cudaFree(Bt);
    cudaFree(C);
    cudaFree(D);
}

/* out[b] = out[b - 1] + 1: block b reads what block b - 1 writes in the same
 * launch, which no GPU orders. Right only when blocks happen to run in order. */
static __global__ void chain_across_blocks(float *out) {
    if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x ? out[blockIdx.x - 1] + 1.0f : 0.0f;
}

static void test_block_order() {
    enum { B = 16 };
    float *out = dev<float>(B), got[B];
    for (const char *order : k_orders) {
        ct_emu_set_order(order);
        const char *msg;
        cudaMemset(out, 0xff, sizeof got); /* NaN: no earlier launch's values */
        launch(dim3(B), dim3(32), 0, "chain_across_blocks", __FILE__, __LINE__, [&] { chain_across_blocks(out); });
        CHECK(last(&msg) == cudaSuccess, "chain_across_blocks: %s", msg);
        cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
        bool right = true;
        for (int b = 0; b < B; b++) right = right && got[b] == (float)b;
        if (!strcmp(order, "forward"))
            CHECK(right, "blocks in forward order: out[15] = %g", got[B - 1]);
        else
            CHECK(!right, "a kernel depending on block order went unnoticed in order %s", order);
    }
    ct_emu_set_order(nullptr);
    cudaFree(out);
}

static void test_memory_checks() {
    float host[4] = {0, 0, 0, 0};
    float *d = dev<float>(4);
    CHECK(cudaMemcpy(host, d, sizeof host, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "a host->device copy into host memory was allowed");
    cudaGetLastError();
    CHECK(cudaMemcpy(d, host, 8 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "a copy past the end of an allocation was allowed");
    cudaGetLastError();
    CHECK(cudaMemcpy(host, d, sizeof host, cudaMemcpyDeviceToHost) == cudaSuccess, "a valid copy failed");
    CHECK(std::isnan(host[0]), "fresh device memory is not poisoned: %g", host[0]);
    CHECK(cudaFree(host) == cudaErrorInvalidValue, "cudaFree of host memory was allowed");
    cudaGetLastError();
    cudaFree(d);
}

/* A copy on a created stream is not there until waited for; its source must
 * be page-locked; waiting through an event (host or stream) runs it. */
static void test_streams() {
    cudaStream_t st;
    cudaEvent_t done;
    CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) == cudaSuccess, "stream creation failed");
    CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess, "event creation failed");
    float *d = dev<float>(4), *pinned = nullptr, pageable[4] = {1, 2, 3, 4}, back[4];
    CHECK(cudaHostAlloc((void **)&pinned, 4 * sizeof(float), cudaHostAllocDefault) == cudaSuccess, "cudaHostAlloc");
    CHECK(cudaMemcpyAsync(d, pageable, sizeof pageable, cudaMemcpyHostToDevice, st) == cudaErrorInvalidValue,
          "an async copy from pageable memory was allowed");
    cudaGetLastError();
    for (int i = 0; i < 4; i++) pinned[i] = (float)(i + 10);
    CHECK(cudaMemcpyAsync(d, pinned, 4 * sizeof(float), cudaMemcpyHostToDevice, st) == cudaSuccess, "async copy");
    CHECK(cudaEventRecord(done, st) == cudaSuccess, "event record");
    cudaMemcpy(back, d, sizeof back, cudaMemcpyDeviceToHost);
    CHECK(std::isnan(back[0]), "a queued copy was visible before anyone waited for it: %g", back[0]);
    pinned[0] = 99.0f; /* rewriting the source before the wait: the copy takes the new value, as a GPU may */
    CHECK(cudaStreamWaitEvent(0, done, 0) == cudaSuccess, "stream wait");
    cudaMemcpy(back, d, sizeof back, cudaMemcpyDeviceToHost);
    CHECK(back[0] == 99.0f && back[3] == 13.0f, "the copy after the wait: %g %g", back[0], back[3]);
    CHECK(cudaStreamDestroy(st) == cudaSuccess, "stream destroy");
    cudaStream_t blocking;
    CHECK(cudaStreamCreateWithFlags(&blocking, cudaStreamDefault) == cudaErrorNotSupported,
          "a blocking stream was created (the emulator models non-blocking ones only)");
    cudaGetLastError();
    cudaEventDestroy(done);
    cudaFreeHost(pinned);
    cudaFree(d);
}

} // namespace ct_emu

int main() {
    ct_emu::test_streams();
    ct_emu::test_block_sum();
    ct_emu::test_warp_sum();
    ct_emu::test_faults();
    ct_emu::test_shared_and_votes();
    ct_emu::test_memory_checks();
    ct_emu::test_block_order();
    ct_emu::test_mma();
    if (g_failures) {
        fprintf(stderr, "%d failure(s)\n", g_failures);
        return 1;
    }
    printf("emulator: all checks passed\n");
    return 0;
}
