/* ctuner info: what this build has and which backends can run here. */
#include <stdio.h>

#include <omp.h>

#include "autograd/backend.h"
#include "autograd/cpu/gemm_bf16.h"
#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"

int ct_cmd_info(int argc, char **argv) {
    ct_args a = {.usage = "ctuner info",
                 .summary = "Show the build, the backends and the devices found."};
    CT_TRY(ct_args_parse(&a, argc, argv));
    printf("ctuner 0.1.0\n");
    printf("cpu backend: %s, %d OpenMP threads\n", ct_cpu_backend()->name, omp_get_max_threads());
    printf("bf16 GEMMs (compute_dtype: bfloat16): %s\n",
           ct_cpu_bf16_dot_supported() ? "AVX512-BF16 (about 2x fp32)" : "fp32 fallback (no AVX512-BF16 here)");
    const ct_backend *cuda = ct_cuda_backend();
    if (cuda) printf("cuda backend: available\n");
    else printf("cuda backend: not available (%s)\n", ct_last_error());
    return CT_OK;
}
