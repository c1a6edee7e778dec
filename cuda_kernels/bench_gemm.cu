/* Benchmark helpers for bench/bench_ops.c (the library never calls them):
 * - the time of a plain cuBLASLt GEMM through ct_cuda_gemm (gemm.h), the
 *   ceiling that lora_linear, linear_xent and attention are measured against:
 *   C [M, N] f32 = A [M, K] · B [N, K]ᵀ (y = x·Wᵀ's layout), bf16 or f32
 *   inputs holding random values in [-1, 1), fp32 accumulation;
 * - a one-line description of the device.
 * C entry points declared in autograd/backend.h (fallbacks in
 * autograd/no_cuda.c). The emulated build (CT_EMU_BUILD) compiles this file
 * too and names them ct_cuda_emu_*, as cuda_backend.cu does with its getter;
 * it has no CUDA events, so it times with the host clock. No kernels here. */
#include "cuda_common.cuh"
#include "gemm.h"

#ifdef CT_EMU_BUILD
#define CT_BENCH_GEMM_FN ct_cuda_emu_bench_gemm
#define CT_BENCH_DEVICE_FN ct_cuda_emu_device_name
#else
#define CT_BENCH_GEMM_FN ct_cuda_bench_gemm
#define CT_BENCH_DEVICE_FN ct_cuda_device_name
#endif

/* dev [n] (f32, or bf16 bits when bf16) = random values in [-1, 1), uploaded
 * in pieces through one static host buffer (no allocation; single-threaded). */
static int upload_random(void *dev, int64_t n, bool bf16, uint64_t seed) {
    const int64_t PIECE = (int64_t)1 << 18;
    static float host[(size_t)1 << 18];
    const size_t esz = bf16 ? 2 : 4;
    for (int64_t i0 = 0; i0 < n; i0 += PIECE) {
        int64_t len = n - i0 < PIECE ? n - i0 : PIECE;
        for (int64_t i = 0; i < len; i++) {
            float v = 2.0f * ct_uniform(seed, (uint64_t)(i0 + i)) - 1.0f;
            if (bf16) ((uint16_t *)host)[i] = ct_f32_to_bf16(v);
            else host[i] = v;
        }
        CT_CUDA_TRY(cudaMemcpy((char *)dev + (size_t)i0 * esz, host, (size_t)len * esz,
                               cudaMemcpyHostToDevice));
    }
    return CT_OK;
}

struct gemm_args {
    int64_t M, N, K;
    cudaDataType_t ab;
    const void *A, *B;
    void *C;
};

static int gemm_once(const gemm_args &g) {
    return ct_cuda_gemm(false, true, g.M, g.N, g.K, 1.0f, g.A, g.K, g.B, g.K, g.ab, 0.0f, g.C, g.N,
                        CUDA_R_32F);
}

#ifdef CT_EMU_BUILD
static double host_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/* iters GEMMs after the caller's warm-up, timed by the host clock. */
static int time_gemms(const gemm_args &g, int iters, double *ms) {
    CT_CUDA_TRY(cudaDeviceSynchronize());
    double t0 = host_ms();
    for (int i = 0; i < iters; i++) {
        int rc = gemm_once(g);
        if (rc) return rc;
    }
    CT_CUDA_TRY(cudaDeviceSynchronize());
    *ms = (host_ms() - t0) / iters;
    return CT_OK;
}
#else
/* Two events, destroyed whatever happens. */
struct event_pair {
    cudaEvent_t e[2] = {nullptr, nullptr};
    ~event_pair() {
        for (cudaEvent_t ev : e)
            if (ev) cudaEventDestroy(ev);
    }
};

/* iters GEMMs after the caller's warm-up, timed by CUDA events on the stream. */
static int time_gemms(const gemm_args &g, int iters, double *ms) {
    event_pair ev;
    for (cudaEvent_t &e : ev.e) CT_CUDA_TRY(cudaEventCreate(&e));
    CT_CUDA_TRY(cudaEventRecord(ev.e[0], ct_cuda_stream()));
    for (int i = 0; i < iters; i++) {
        int rc = gemm_once(g);
        if (rc) return rc;
    }
    CT_CUDA_TRY(cudaEventRecord(ev.e[1], ct_cuda_stream()));
    CT_CUDA_TRY(cudaEventSynchronize(ev.e[1]));
    float elapsed = 0.0f;
    CT_CUDA_TRY(cudaEventElapsedTime(&elapsed, ev.e[0], ev.e[1]));
    *ms = (double)elapsed / iters;
    return CT_OK;
}
#endif

/* Device buffers freed whatever happens. */
struct gemm_buffers {
    void *p[3] = {nullptr, nullptr, nullptr};
    ~gemm_buffers() {
        for (void *q : p)
            if (q) cudaFree(q);
    }
};

extern "C" int CT_BENCH_GEMM_FN(int64_t M, int64_t N, int64_t K, int bf16, int iters,
                                double *ms_per_call) {
    if (M <= 0 || N <= 0 || K <= 0 || iters <= 0 || !ms_per_call)
        return ct_errorf(CT_EINPUT, "bench gemm: bad shape %lld x %lld x %lld or iters %d",
                         (long long)M, (long long)N, (long long)K, iters);
    const size_t esz = bf16 ? 2 : 4;
    gemm_buffers buf;
    const size_t bytes[3] = {(size_t)(M * K) * esz, (size_t)(N * K) * esz, (size_t)(M * N) * 4};
    for (int i = 0; i < 3; i++) CT_CUDA_TRY(cudaMalloc(&buf.p[i], bytes[i]));
    int rc = upload_random(buf.p[0], M * K, bf16 != 0, 0xbe0c1u);
    if (!rc) rc = upload_random(buf.p[1], N * K, bf16 != 0, 0xbe0c2u);
    if (rc) return rc;
    gemm_args g = {M, N, K, bf16 ? CUDA_R_16BF : CUDA_R_32F, buf.p[0], buf.p[1], buf.p[2]};
    rc = gemm_once(g); /* warm-up: handle, workspace, heuristics */
    if (!rc) rc = time_gemms(g, iters, ms_per_call);
    if (!rc) CT_CUDA_TRY(cudaDeviceSynchronize());
    return rc;
}

extern "C" const char *CT_BENCH_DEVICE_FN(void) {
    static char desc[1024];
#ifdef CT_EMU_BUILD
    snprintf(desc, sizeof desc, "emulated CUDA device (the kernels' sources run on the host CPU)");
#else
    int dev = 0;
    cudaDeviceProp p;
    cudaError_t err = cudaGetDevice(&dev);
    if (err == cudaSuccess) err = cudaGetDeviceProperties(&p, dev);
    if (err != cudaSuccess) {
        ct_errorf(CT_ERUNTIME, "cudaGetDeviceProperties failed: %s", cudaGetErrorString(err));
        return nullptr;
    }
    snprintf(desc, sizeof desc, "%.255s (sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MiB)", p.name, p.major, p.minor,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30), (double)p.l2CacheSize / (1 << 20));
#endif
    return desc;
}
