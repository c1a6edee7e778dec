/* Generation benchmark on the CPU: tokens/s of the prefill (the prompt in one
 * forward, blockwise attention) and of decoding (one token per forward against
 * the KV cache, greedy sampling included), for a model directory.
 *
 * Prompt ids are deterministic pseudo-random ids of the vocabulary (the
 * tokenizer is not needed). Prefill: best of REPEATS runs on an emptied cache.
 * Decode: DECODE greedy tokens after the prompt (no stop id), timed as a whole,
 * so attention over a growing cache is included.
 *
 * usage: bench_generate MODEL_DIR [PROMPT (128)] [DECODE (128)] [none|nf4|fp4] [REPEATS (3)]
 * e.g. a ~100M model: ctuner make-model --config cfg.json --out /tmp/m100 with
 * hidden 768, 12 layers, 12 heads, 4 kv heads, intermediate 2048, vocab 32000. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"

static int fail(void) {
    fprintf(stderr, "bench_generate: %s\n", ct_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_generate MODEL_DIR [PROMPT] [DECODE] [none|nf4|fp4] [REPEATS]\n");
        return 2;
    }
    int64_t P = argc > 2 ? atoll(argv[2]) : 128, N = argc > 3 ? atoll(argv[3]) : 128;
    const char *quant = argc > 4 ? argv[4] : "none";
    int reps = argc > 5 ? atoi(argv[5]) : 3;
    if (P < 1 || N < 1 || reps < 1) {
        fprintf(stderr, "bench_generate: PROMPT, DECODE and REPEATS must be >= 1\n");
        return 2;
    }
    ct_model_options mo = {.double_quant = true};
    if (ct_model_quant_from_name(quant, &mo.quant)) return fail();
    double t0 = omp_get_wtime();
    ct_model *m = NULL;
    if (ct_model_load(argv[1], &mo, &m)) return fail();
    double load_s = omp_get_wtime() - t0;
    const ct_hf_config *cfg = ct_model_config(m);
    ct_generator *g = NULL;
    if (ct_gen_new(ct_model_decoder(m), ct_model_backend(m), P + N, &g)) return fail();
    const int32_t V = ct_gen_vocab(g);
    int32_t *ids = malloc((size_t)P * sizeof *ids); /* (P) prompt */
    for (int64_t i = 0; i < P; i++) ids[i] = (int32_t)(ct_uniform(1234, (uint64_t)i) * (float)V) % V;

    /* prefill: best of reps (the first run also grows the arenas) */
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        if (ct_gen_truncate(g, 0)) return fail();
        double a = omp_get_wtime();
        if (ct_gen_feed(g, ids, P, NULL)) return fail();
        double s = omp_get_wtime() - a;
        best = s < best ? s : best;
    }

    /* decode: N greedy tokens after the prompt */
    ct_sampler smp;
    ct_sampling_params sp = {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    if (ct_sampler_init(&smp, &sp, V)) return fail();
    ct_gen_limits lim = {.max_new_tokens = N};
    ct_gen_result res;
    if (ct_gen_truncate(g, 0) || ct_gen_generate(g, &smp, NULL, ids, P, &lim, NULL, NULL, NULL, &res)) return fail();

    ct_model_memory mem;
    ct_model_get_memory(m, &mem);
    printf("model %s: %.1fM params, hidden %lld, %lld layers, heads %lld/%lld, vocab %lld, weights %s%s; "
           "%d threads; load %.2f s\n",
           argv[1], (double)mem.n_params / 1e6, (long long)cfg->hidden_size, (long long)cfg->num_hidden_layers,
           (long long)cfg->num_attention_heads, (long long)cfg->num_key_value_heads, (long long)cfg->vocab_size,
           cfg->torch_dtype[0] ? cfg->torch_dtype : "?", mo.quant ? (mo.quant == CT_MODEL_QUANT_NF4 ? " -> nf4" : " -> fp4") : "",
           omp_get_max_threads(), load_s);
    printf("  prefill %lld tokens: %.4f s = %.1f tokens/s (best of %d)\n", (long long)P, best, (double)P / best, reps);
    printf("  decode  %lld tokens after them: %.4f s = %.1f tokens/s (%.2f ms/token, greedy)\n",
           (long long)res.n_generated, res.decode_s, (double)res.n_generated / res.decode_s,
           1e3 * res.decode_s / (double)res.n_generated);
    ct_sampler_free(&smp);
    free(ids);
    ct_gen_free(g);
    ct_model_free(m);
    return 0;
}
