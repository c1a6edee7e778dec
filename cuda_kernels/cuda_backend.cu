/* The CUDA backend table: device memory, detection, and the kernels of this
 * folder. Detection never crashes: any error from the runtime (no driver, no
 * device) means "no GPU" and the caller stays on the CPU backend.
 *
 * The emulated build (CT_EMU_BUILD, emu/) compiles this same file into
 * namespace ct_emu: the table is then "cuda-emu" (device CT_CUDA_EMU), its
 * runtime calls go to the emulator's host memory and scheduler, and
 * ct_cuda_emu_backend() returns it. */
#include "cuda_common.cuh"

#ifdef CT_EMU_BUILD
#define CT_BACKEND_NAME "cuda-emu"
#define CT_BACKEND_DEVICE CT_CUDA_EMU
#define CT_BACKEND_GETTER ct_cuda_emu_backend
#else
#define CT_BACKEND_NAME "cuda"
#define CT_BACKEND_DEVICE CT_CUDA
#define CT_BACKEND_GETTER ct_cuda_backend
#endif

/* Every device allocation goes through this tracker (autograd/mem_track.h):
 * the run's current and peak device memory are the allocator's own counts.
 * Plain cudaMalloc, never managed memory; allocations happen at setup and
 * when an arena grows (the first step), never in a warm step. */
static ct_mem_tracker g_device_mem = CT_MEM_TRACKER_INIT;

static void *raw_alloc(size_t n) {
    void *p = nullptr;
    if (cudaMalloc(&p, n ? n : 256) != cudaSuccess) return nullptr;
    return p;
}

static void raw_free(void *p) { cudaFree(p); }
static void *cuda_alloc(size_t n) { return ct_mem_track_alloc(&g_device_mem, raw_alloc, raw_free, n); }
static void cuda_free(void *p) { ct_mem_track_free(&g_device_mem, raw_free, p); }
void *ct_cuda_mem_alloc(size_t bytes) { return cuda_alloc(bytes); }
void ct_cuda_mem_free(void *p) { cuda_free(p); }
static ct_mem_usage cuda_mem_usage(int reset_peak) { return ct_mem_track_usage(&g_device_mem, reset_peak); }
static int cuda_mem_available(uint64_t *bytes) {
    size_t free_b = 0, total_b = 0;
    CT_CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    *bytes = free_b;
    return CT_OK;
}

static int cuda_zero(void *p, size_t n) {
    CT_CUDA_TRY(cudaMemsetAsync(p, 0, n, 0));
    return CT_OK;
}

static int cuda_copy(void *dst, const void *src, size_t n) {
    if (dst != src) CT_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, 0));
    return CT_OK;
}

static int cuda_upload(void *dst, const void *src, size_t n) {
    CT_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
    return CT_OK;
}

static int cuda_download(void *dst, const void *src, size_t n) {
    CT_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
    return CT_OK;
}

static int cuda_sync(void) {
    CT_CUDA_TRY(cudaDeviceSynchronize());
    return CT_OK;
}

#define BIT(dt) (1u << (dt))

#ifdef CT_EMU_BUILD
/* `ctuner info`: what this backend is for. */
static const char *emu_note(ct_dtype) { return "emulated on the CPU: for checking the kernels, not for speed"; }
#define CT_COMPUTE_NOTE emu_note
#else
#define CT_COMPUTE_NOTE nullptr
#endif

/* Designated initializers in the struct's declaration order (C++). The entries
 * not yet written are NULL: ct_backend_require reports them by name. */
static const ct_backend k_cuda = {
    .name = CT_BACKEND_NAME,
    .device = CT_BACKEND_DEVICE,
    .act_dtype = CT_BF16, /* the kernels take f32 too (the parity harness checks both) */
    .compute_dtypes = BIT(CT_F32) | BIT(CT_BF16),
    .weight_dtypes = BIT(CT_F32) | BIT(CT_BF16) | BIT(CT_F16) | BIT(CT_NF4),
    .supports_op = nullptr,
    .compute_note = CT_COMPUTE_NOTE,
    .mem = {cuda_alloc, cuda_free},
    .zero = cuda_zero,
    .copy = cuda_copy,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .mem_usage = cuda_mem_usage,
    .mem_available = cuda_mem_available,
    .stage_host = ct_cuda_stage_host,
    .stage_upload = ct_cuda_stage_upload,
    .stage_wait = ct_cuda_stage_wait,
    .stage_fence = ct_cuda_stage_fence,
    .stage_release = ct_cuda_stage_release,
    .embedding_fwd = ct_cuda_embedding_fwd,
    .embedding_bwd = ct_cuda_embedding_bwd,
    .rmsnorm_fwd = ct_cuda_rmsnorm_fwd,
    .rmsnorm_bwd = ct_cuda_rmsnorm_bwd,
    .add_rmsnorm_fwd = ct_cuda_add_rmsnorm_fwd,
    .rope_fwd = ct_cuda_rope_fwd,
    .rope_bwd = ct_cuda_rope_bwd,
    .attention_fwd = ct_cuda_attention_fwd,
    .attention_bwd = ct_cuda_attention_bwd,
    .attention_decode = ct_cuda_attention_decode,
    .swiglu_fwd = ct_cuda_swiglu_fwd,
    .swiglu_bwd = ct_cuda_swiglu_bwd,
    .axpy = ct_cuda_axpy,
    .add_fwd = ct_cuda_add_fwd,
    .lora_linear_fwd = ct_cuda_lora_linear_fwd,
    .lora_linear_bwd = ct_cuda_lora_linear_bwd,
    .linear_xent_fwd = ct_cuda_linear_xent_fwd,
    .adamw_update = ct_cuda_adamw_update,
    .sum_squares = ct_cuda_sum_squares,
    .scale = ct_cuda_scale,
};

extern "C" const ct_backend *CT_BACKEND_GETTER(void) {
    static int probed = 0, usable = 0;
    static char why[256];
    if (!probed) {
        probed = 1;
        int n = 0;
        cudaError_t err = cudaGetDeviceCount(&n);
        if (err != cudaSuccess) snprintf(why, sizeof why, "no usable GPU: %s", cudaGetErrorString(err));
        else if (n == 0) snprintf(why, sizeof why, "no GPU found");
        else usable = 1;
    }
    if (!usable) {
        ct_errorf(CT_ERUNTIME, "%s", why);
        return nullptr;
    }
    return &k_cuda;
}
