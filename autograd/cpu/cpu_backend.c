/* The CPU backend table: host memory plus the kernels of cpu/. */
#include <string.h>

#include "../ct_error.h"
#include "cpu_kernels.h"

static int cpu_zero(void *p, size_t n) {
    memset(p, 0, n);
    return CT_OK;
}

static int cpu_copy(void *dst, const void *src, size_t n) {
    if (dst != src) memmove(dst, src, n);
    return CT_OK;
}

static int cpu_sync(void) { return CT_OK; }

static const ct_backend *make_cpu(void) {
    static ct_backend be;
    if (be.name) return &be;
    be.device = CT_CPU;
    be.mem = ct_host_allocator();
    be.zero = cpu_zero;
    be.copy = cpu_copy;
    be.upload = cpu_copy;
    be.download = cpu_copy;
    be.sync = cpu_sync;
    be.embedding_fwd = ct_cpu_embedding_fwd;
    be.embedding_bwd = ct_cpu_embedding_bwd;
    be.rmsnorm_fwd = ct_cpu_rmsnorm_fwd;
    be.rmsnorm_bwd = ct_cpu_rmsnorm_bwd;
    be.swiglu_fwd = ct_cpu_swiglu_fwd;
    be.swiglu_bwd = ct_cpu_swiglu_bwd;
    be.axpy = ct_cpu_axpy;
    be.add_fwd = ct_cpu_add_fwd;
    be.lora_linear_fwd = ct_cpu_lora_linear_fwd;
    be.lora_linear_bwd = ct_cpu_lora_linear_bwd;
    be.linear_xent_fwd = ct_cpu_linear_xent_fwd;
    be.rope_fwd = ct_cpu_rope_fwd;
    be.rope_bwd = ct_cpu_rope_bwd;
    be.attention_fwd = ct_cpu_attention_fwd;
    be.attention_bwd = ct_cpu_attention_bwd;
    be.attention_decode = ct_cpu_attention_decode;
    be.name = "cpu";
    return &be;
}

const ct_backend *ct_cpu_backend(void) {
    static const ct_backend *be;
    if (!be) be = make_cpu();
    return be;
}
