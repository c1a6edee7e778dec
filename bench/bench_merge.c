/* Merge benchmark: time and peak memory of `ctuner merge` for an
 * InternLM2-7B-shaped random bf16 model (fixtures/model-configs/
 * internlm2-chat-7b.config.json, optionally with fewer layers) and a random
 * r=64 adapter on all five block linears (XTuner's 7B QLoRA setting).
 *
 *   bench_merge prepare WORKDIR [LAYERS]   base (make-model --dtype bf16) + adapter
 *   bench_merge run WORKDIR [--quantize]   one merge in this process: time, ru_maxrss
 *   bench_merge all WORKDIR [LAYERS]       prepare, then run (bf16, then --quantize nf4)
 *                                          each in a fresh process, so every
 *                                          ru_maxrss is that step's own peak
 *
 * A full 7B base is 15.5 GB on disk and its merged copy as much again: check
 * `df -h` first, or pass fewer LAYERS and scale per layer. Delete WORKDIR after. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "trainer/model/adapter.h"
#include "trainer/model/make_model.h"
#include "trainer/io/fsutil.h"
#include "trainer/io/hf_config.h"
#include "trainer/model/merge.h"
#include "trainer/model/model.h"


static double peak_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

static const char *in(const char *dir, const char *name) {
    static char buf[4][CT_PATH_MAX];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* The 7B config with `layers` layers, a bf16 base from make-model, an r=64 adapter. */
static int prepare(const char *work, int layers) {
    CT_TRY(ct_mkdirs(work));
    /* the fixture beside the project: <root>/bench/bench_merge.c -> <root>/../shared/fixtures */
    const char *src = getenv("CT_7B_CONFIG");
    char def[CT_PATH_MAX];
    const char *slash = strrchr(__FILE__, '/');
    snprintf(def, sizeof def, "%.*s/../../shared/fixtures/model-configs/internlm2-chat-7b.config.json",
             slash ? (int)(slash - __FILE__) : 1, slash ? __FILE__ : ".");
    json_t *j = ct_json_load(src ? src : def, 0);
    if (!j) return ct_error_wrap(CT_EINPUT, "the 7B config (set CT_7B_CONFIG)");
    json_object_set_new(j, "num_hidden_layers", json_integer(layers));
    int rc = ct_json_write_atomic(in(work, "config.json"), j, 0);
    json_decref(j);
    CT_TRY(rc);
    double t0 = ct_now_s();
    ct_make_model_options mo = {.config = in(work, "config.json"), .out = in(work, "base"), .dtype = "bf16",
                                .max_shard = "2GB"};
    if (!ct_path_exists(in(work, "base"))) CT_TRY(ct_make_model(&mo, NULL));
    double t1 = ct_now_s();
    ct_model *m = NULL;
    CT_TRY(ct_model_load(in(work, "base"), NULL, &m));
    ct_lora_config c = {.r = 64, .alpha = 16, .dropout = 0.1f, .targets = CT_LORA_ALL_BLOCK, .seed = 1};
    ct_lora *l = NULL;
    rc = ct_model_add_lora(m, &c, false, &l);
    if (rc == CT_OK) { /* B non-zero (a trained adapter), small like one */
        float *v = ct_lora_values(l);
        int64_t n = ct_lora_numel(l);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) v[i] = 0.02f * (ct_uniform(7, (uint64_t)i) - 0.5f);
        rc = ct_adapter_save(in(work, "adapter"), l, in(work, "base"));
    }
    if (rc == CT_OK)
        printf("prepare: %d layers; base %.1f s, adapter (%lld LoRA params) %.1f s; peak RSS %.0f MiB\n", layers,
               t1 - t0, (long long)ct_lora_numel(l), ct_now_s() - t1, peak_mib());
    ct_model_free(m);
    return rc;
}

static int run(const char *work, bool quant) {
    const char *out = in(work, quant ? "merged-nf4" : "merged");
    CT_TRY(ct_remove_tree(out));
    ct_merge_options o = {.base_dir = in(work, "base"), .adapter_dir = in(work, "adapter"), .out_dir = out,
                          .dtype = -1, .quantize = quant, .quant_type = CT_QUANT_NF4};
    ct_merge_report r;
    ct_hf_config cfg;
    CT_TRY(ct_hf_config_load(in(work, "base"), &cfg));
    int64_t layers = cfg.num_hidden_layers;
    ct_hf_config_free(&cfg);
    CT_TRY(ct_merge(&o, &r));
    printf("merge%s: %lld layers, %d weights merged (r=%d)%s, %d shards, %.2f GB written in %.1f s "
           "(%.2f s/layer, %.2f GB/s); peak RSS %.0f MiB\n",
           quant ? " --quantize nf4" : "", (long long)layers, r.n_merged, r.r, quant ? ", 4-bit" : "", r.n_shards,
           (double)r.bytes / 1e9, r.seconds, r.seconds / (double)layers, (double)r.bytes / 1e9 / r.seconds, peak_mib());
    return CT_OK;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_merge prepare|run|all WORKDIR [LAYERS | --quantize]\n");
        return 2;
    }
    const char *mode = argv[1], *work = argv[2];
    int layers = argc > 3 && strcmp(argv[3], "--quantize") ? atoi(argv[3]) : 32;
    int rc = CT_OK;
    if (!strcmp(mode, "prepare")) rc = prepare(work, layers);
    else if (!strcmp(mode, "run")) rc = run(work, argc > 3 && !strcmp(argv[3], "--quantize"));
    else if (!strcmp(mode, "all")) {
        char self[CT_PATH_MAX], cmd[8 * CT_PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) return 1;
        self[n] = '\0';
        snprintf(cmd, sizeof cmd, "'%s' prepare '%s' %d && '%s' run '%s' && '%s' run '%s' --quantize", self, work,
                 layers, self, work, self, work);
        return system(cmd) == 0 ? 0 : 1;
    } else {
        fprintf(stderr, "bench_merge: unknown mode '%s'\n", mode);
        return 2;
    }
    if (rc) fprintf(stderr, "bench_merge: %s\n", ct_last_error());
    return rc ? (rc == CT_EINPUT ? 2 : 1) : 0;
}
