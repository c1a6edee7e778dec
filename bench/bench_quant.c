/* NF4 benchmark: CPU dequantization throughput of a 4096×14336 weight (w2 of
 * InternLM2-7B), whole and in 4 MiB row tiles as lora_linear uses it, on one
 * thread and on all; then quantize time for a 7B-shaped tensor set (32 layers
 * of wqkv 6144×4096, wo 4096×4096, w1/w3 14336×4096, w2 4096×14336), made one
 * bf16 tensor at a time so memory stays under ~200 MB.
 *
 * usage: bench_quant [LAYERS (default 32)] [REPEATS (default 5)] */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "autograd/quant.h"

static double now(void) { return omp_get_wtime(); }

/* N(0, 0.02²) in bf16, element i a pure function of (seed, i). */
static void fill_bf16(uint16_t *w, int64_t n, uint64_t seed) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float u1 = ct_uniform(seed, 2 * (uint64_t)i) + 1e-7f, u2 = ct_uniform(seed, 2 * (uint64_t)i + 1);
        w[i] = ct_f32_to_bf16(0.02f * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2));
    }
}

/* Best-of-`reps` seconds for dequantizing the weight whole (tile_rows = 0) or
 * in tiles of tile_rows rows into one reused buffer. */
static double time_dequant(const ct_quant_state *st, float *out, int64_t tile_rows, int reps) {
    int64_t rows = st->shape[0], cols = st->shape[1];
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (tile_rows == 0) {
            if (ct_quant_dequantize(st, 0, st->n, out)) return -1;
        } else {
            for (int64_t r0 = 0; r0 < rows; r0 += tile_rows) {
                int64_t nr = rows - r0 < tile_rows ? rows - r0 : tile_rows;
                if (ct_quant_dequantize(st, r0 * cols, nr * cols, out)) return -1;
            }
        }
        double t = now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

static int bench_dequant(int reps) {
    int64_t shape[2] = {4096, 14336}, n = shape[0] * shape[1];
    uint16_t *w = malloc((size_t)n * 2);
    float *out = malloc((size_t)n * sizeof(float));
    if (!w || !out) return ct_errorf(CT_ERUNTIME, "out of memory");
    fill_bf16(w, n, 1);
    ct_quant_params p = {CT_QUANT_NF4, 64, true, NULL};
    ct_quant_state st;
    CT_TRY(ct_quant_quantize(&st, w, CT_BF16, 2, shape, &p, "w2"));
    free(w);
    double in_bytes = (double)n / 2 + (double)st.nblocks + (double)(st.nblocks / 256) * 4;
    double out_bytes = (double)n * 4;
    int64_t tile = ((int64_t)4 << 20) / (shape[1] * 4); /* lora_linear's 4 MiB f32 tile */
    int maxt = omp_get_max_threads();
    printf("dequantize nf4 (double quant, blocksize 64) %lldx%lld: %.1f MB in, %.1f MB f32 out\n",
           (long long)shape[0], (long long)shape[1], in_bytes / 1e6, out_bytes / 1e6);
    for (int threads = 1; threads <= maxt; threads = threads == maxt ? maxt + 1 : maxt) {
        omp_set_num_threads(threads);
        for (int tiled = 0; tiled < 2; tiled++) {
            double t = time_dequant(&st, out, tiled ? tile : 0, reps);
            if (t < 0) return CT_ERUNTIME;
            char how[64];
            snprintf(how, sizeof how, tiled ? "%lld-row tiles (4 MiB)" : "whole", (long long)tile);
            printf("  %d thread%s, %-22s %7.1f ms  %6.2f GB/s out  %6.2f GB/s in  %6.2f Gelem/s\n",
                   threads, threads > 1 ? "s" : " ", how, t * 1e3, out_bytes / t / 1e9,
                   in_bytes / t / 1e9, (double)n / t / 1e9);
        }
    }
    omp_set_num_threads(maxt);
    ct_quant_free(&st);
    free(out);
    return CT_OK;
}

static int bench_quantize(int layers) {
    static const struct {
        const char *name;
        int64_t rows, cols;
    } k[5] = {{"wqkv", 6144, 4096}, {"wo", 4096, 4096}, {"w1", 14336, 4096},
              {"w3", 14336, 4096}, {"w2", 4096, 14336}};
    uint16_t *w = malloc((size_t)14336 * 4096 * 2); /* the largest tensor, bf16 */
    if (!w) return ct_errorf(CT_ERUNTIME, "out of memory");
    double tq[2] = {0, 0}, elems = 0;
    for (int l = 0; l < layers; l++)
        for (int j = 0; j < 5; j++) {
            int64_t shape[2] = {k[j].rows, k[j].cols}, n = shape[0] * shape[1];
            fill_bf16(w, n, (uint64_t)(l * 5 + j + 100));
            for (int dq = 0; dq < 2; dq++) {
                ct_quant_params p = {CT_QUANT_NF4, 64, dq, NULL};
                ct_quant_state st;
                double t0 = now();
                CT_TRY(ct_quant_quantize(&st, w, CT_BF16, 2, shape, &p, k[j].name));
                tq[dq] += now() - t0;
                ct_quant_free(&st);
            }
            elems += (double)n;
        }
    printf("quantize %d layers (%.2f G elements, bf16 -> nf4), %d threads:\n", layers, elems / 1e9,
           omp_get_max_threads());
    for (int dq = 0; dq < 2; dq++)
        printf("  %-18s %7.2f s  (%.2f s/layer, %.2f Gelem/s)\n", dq ? "double quant" : "plain absmax",
               tq[dq], tq[dq] / layers, elems / tq[dq] / 1e9);
    free(w);
    return CT_OK;
}

int main(int argc, char **argv) {
    int layers = argc > 1 ? atoi(argv[1]) : 32, reps = argc > 2 ? atoi(argv[2]) : 5;
    if (layers < 0 || reps < 1) {
        fprintf(stderr, "usage: bench_quant [LAYERS] [REPEATS]\n");
        return 2;
    }
    int rc = bench_dequant(reps);
    if (!rc && layers > 0) rc = bench_quantize(layers);
    if (rc) fprintf(stderr, "bench_quant: %s\n", ct_last_error());
    return rc;
}
