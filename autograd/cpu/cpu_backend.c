/* The CPU backend table: host memory plus the kernels of cpu/. */
#include <string.h>

#include "../ct_error.h"
#include "../host_mem.h"
#include "cpu_kernels.h"
#include "gemm_bf16.h" /* ct_cpu_bf16_dot_supported */

static int cpu_zero(void *p, size_t n) {
    memset(p, 0, n);
    return CT_OK;
}

static int cpu_copy(void *dst, const void *src, size_t n) {
    if (dst != src) memmove(dst, src, n);
    return CT_OK;
}

static int cpu_sync(void) { return CT_OK; }

/* The backend's memory (weights placed on it, LoRA, optimizer state, arena
 * blocks) is counted; other host allocations (tape headers, the loader) are
 * not: they are the process's, reported as RSS. */
static ct_mem_tracker g_cpu_mem = CT_MEM_TRACKER_INIT;
static void *cpu_alloc(size_t n) { return ct_mem_track_alloc(&g_cpu_mem, ct_host_alloc, ct_host_free, n); }
static void cpu_free(void *p) { ct_mem_track_free(&g_cpu_mem, ct_host_free, p); }
static ct_mem_usage cpu_mem_usage(int reset_peak) { return ct_mem_track_usage(&g_cpu_mem, reset_peak); }

static const char *cpu_compute_note(ct_dtype compute) {
    if (compute != CT_BF16) return NULL;
    return ct_cpu_bf16_dot_supported() ? "AVX512-BF16"
                                       : "without AVX512-BF16 on this CPU: bf16 numbers at fp32 speed";
}

static const ct_backend k_cpu = {
    .name = "cpu",
    .device = CT_CPU,
    .act_dtype = CT_F32,
    .compute_dtypes = CT_CPU_COMPUTE_DTYPES,
    .weight_dtypes = CT_CPU_WEIGHT_DTYPES,
    .compute_note = cpu_compute_note,
    .mem = {cpu_alloc, cpu_free},
    .zero = cpu_zero,
    .copy = cpu_copy,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .mem_usage = cpu_mem_usage,
    .mem_available = ct_host_mem_available,
    .embedding_fwd = ct_cpu_embedding_fwd,
    .embedding_bwd = ct_cpu_embedding_bwd,
    .rmsnorm_fwd = ct_cpu_rmsnorm_fwd,
    .rmsnorm_bwd = ct_cpu_rmsnorm_bwd,
    .add_rmsnorm_fwd = ct_cpu_add_rmsnorm_fwd,
    .rope_fwd = ct_cpu_rope_fwd,
    .rope_bwd = ct_cpu_rope_bwd,
    .attention_fwd = ct_cpu_attention_fwd,
    .attention_bwd = ct_cpu_attention_bwd,
    .attention_decode = ct_cpu_attention_decode,
    .swiglu_fwd = ct_cpu_swiglu_fwd,
    .swiglu_bwd = ct_cpu_swiglu_bwd,
    .axpy = ct_cpu_axpy,
    .add_fwd = ct_cpu_add_fwd,
    .lora_linear_fwd = ct_cpu_lora_linear_fwd,
    .lora_linear_bwd = ct_cpu_lora_linear_bwd,
    .linear_xent_fwd = ct_cpu_linear_xent_fwd,
    .adamw_update = ct_cpu_adamw_update,
    .sum_squares = ct_cpu_sum_squares,
    .scale = ct_cpu_scale,
};

const ct_backend *ct_cpu_backend(void) { return &k_cpu; }
