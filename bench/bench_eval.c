/* Eval throughput on the CPU: load a model directory (stored dtype, or NF4 on
 * load), then the no-grad NLL forward (ct_model_nll, what `ctuner eval` runs)
 * over N random sequences of T tokens, one by one and packed into one forward;
 * prints load time, where the weights are, resident memory, and tokens/s
 * (best of REPEATS).
 *
 * usage: bench_eval MODEL_DIR [T (256)] [N (4)] [none|nf4|fp4 (none)] [REPEATS (3)]
 * A ~100M-parameter model for it:
 *   ctuner make-model --config C.json --out /tmp/m100 --dtype bf16, with C.json
 *   {"model_type": "internlm2", "hidden_size": 768, "num_hidden_layers": 12,
 *    "num_attention_heads": 12, "num_key_value_heads": 4,
 *    "intermediate_size": 2048, "vocab_size": 32000, "bias": false} */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "trainer/model/model.h"

/* VmRSS / VmHWM of this process in MiB (-1 when unreadable). */
static double proc_mib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1;
    size_t k = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, k)) v = atof(line + k + 1) / 1024.0;
    if (f) fclose(f);
    return v;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_eval MODEL_DIR [T] [N] [none|nf4|fp4] [REPEATS]\n");
        return 2;
    }
    int64_t T = argc > 2 ? atoll(argv[2]) : 256, N = argc > 3 ? atoll(argv[3]) : 4;
    int reps = argc > 5 ? atoi(argv[5]) : 3;
    ct_model_options o = {0};
    if (argc > 4 && ct_model_quant_from_name(argv[4], &o.quant)) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 2;
    }
    o.double_quant = true;
    if (T < 2 || N < 1 || reps < 1) return 2;
    double rss0 = proc_mib("VmRSS:"), t0 = omp_get_wtime();
    ct_model *m = NULL;
    if (ct_model_load(argv[1], &o, &m)) {
        fprintf(stderr, "load: %s\n", ct_last_error());
        return 1;
    }
    double t_load = omp_get_wtime() - t0;
    ct_model_memory mem;
    ct_model_get_memory(m, &mem);
    int64_t V = ct_model_config(m)->vocab_size;
    printf("model %s: %lld params, quant %s, %d threads\n", argv[1], (long long)mem.n_params,
           argc > 4 ? argv[4] : "none", omp_get_max_threads());
    printf("load %.2f s; weights: %.1f MiB mapped, %.1f MiB 4-bit (%d tensors), %.1f MiB copied; RSS +%.1f MiB "
           "after load (peak %.1f MiB)\n", t_load, (double)mem.mapped_bytes / 1048576.0, (double)mem.quant_bytes / 1048576.0,
           mem.n_quantized, (double)mem.copied_bytes / 1048576.0, proc_mib("VmRSS:") - rss0, proc_mib("VmHWM:"));

    int64_t n = T * N;
    int32_t *ids = malloc((size_t)n * sizeof *ids), *lab = malloc((size_t)n * sizeof *lab);
    int32_t *seg = malloc((size_t)n * sizeof *seg);     /* [n] each */
    double *nll = malloc((size_t)N * sizeof *nll);      /* [N] */
    int64_t *cnt = malloc((size_t)N * sizeof *cnt);     /* [N] */
    if (!ids || !lab || !seg || !nll || !cnt) return 1;
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)(ct_uniform(1234, (uint64_t)i) * (float)V) % (int32_t)V;
        seg[i] = (int32_t)(i / T);
    }
    for (int64_t i = 0; i < n; i++) lab[i] = (i % T) + 1 < T ? ids[i + 1] : -100;
    ct_tape tape;
    ct_tape_init(&tape, ct_model_backend(m), 0);
    for (int packed = 0; packed < 2; packed++) {
        double best = 1e30, loss = 0;
        for (int r = 0; r < reps + 1; r++) { /* the first run warms up (page faults, arena blocks) */
            double s = omp_get_wtime();
            int rc = packed ? ct_model_nll(m, &tape, ids, lab, seg, n, (int)N, nll, cnt) : 0;
            for (int64_t k = 0; !packed && !rc && k < N; k++)
                rc = ct_model_nll(m, &tape, ids + k * T, lab + k * T, NULL, T, 1, nll + k, cnt + k);
            if (rc) {
                fprintf(stderr, "eval: %s\n", ct_last_error());
                return 1;
            }
            double e = omp_get_wtime() - s;
            if (r > 0 && e < best) best = e;
        }
        double sum = 0;
        int64_t c = 0;
        for (int64_t k = 0; k < N; k++) sum += nll[k], c += cnt[k];
        loss = sum / (double)c;
        printf("%-12s %lld x %lld tokens: %.3f s, %.0f tokens/s (loss %.4f); arena %.1f MiB\n",
               packed ? "packed" : "one by one", (long long)N, (long long)T, best, (double)n / best, loss,
               (double)ct_arena_reserved(&tape.main) / 1048576.0);
    }
    printf("peak RSS %.1f MiB\n", proc_mib("VmHWM:"));
    ct_tape_free(&tape);
    free(ids), free(lab), free(seg), free(nll), free(cnt);
    ct_model_free(m);
    return 0;
}
