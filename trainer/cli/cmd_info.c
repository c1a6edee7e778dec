/* ctuner info: what this build has and which backends can run here. */
#include <stdio.h>

#include <omp.h>

#include "autograd/backend.h"
#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/dist/dist.h"

int ct_cmd_info(int argc, char **argv) {
    ct_args a = {.usage = "ctuner info",
                 .summary = "Show the build, the backends and the devices found."};
    CT_TRY(ct_args_parse(&a, argc, argv));
    printf("ctuner 0.1.0\n");
    printf("OpenMP threads: %d\n", omp_get_max_threads());
    printf("data-parallel training (mpirun/srun ctuner train): MPI %s, NCCL %s\n",
           ct_dist_have_mpi() ? "yes" : "no (built without MPI)", ct_dist_have_nccl() ? "yes" : "no");
    const char *names[8], *why[8];
    const ct_backend *bes[8];
    int n = ct_backend_list(names, bes, why, 8);
    for (int i = 0; i < n; i++) {
        if (!bes[i]) {
            printf("%s backend: not available (%s)\n", names[i], why[i]);
            continue;
        }
        printf("%s backend: available\n", names[i]);
        ct_backend_describe(bes[i], stdout);
        const char *note = bes[i]->compute_note ? bes[i]->compute_note(CT_BF16) : NULL;
        if (note) printf("  bf16 GEMMs (compute_dtype: bfloat16): %s\n", note);
    }
    return CT_OK;
}
