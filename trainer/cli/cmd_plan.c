/* ctuner plan CONFIG.yaml [--budget 8GiB] [--device cuda|cpu] [--set k=v ...]
 *
 * The predicted peak memory of the run the config describes, item by item
 * (trainer/plan/mem_plan.h), from config.json and the config alone: no
 * weights or data are read. Prints the table, the host memory the offload
 * options use instead, and the largest max_length that fits the budget; the
 * last line is `predicted peak: X.XX GiB of B GiB: fits` (or `: does not
 * fit`, exit code 3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/plan/mem_plan.h"

#define GIB 1073741824.0
#define MIB 1048576.0

static void print_plan(const ct_mem_plan *p, const char *device, uint64_t budget, int64_t fit_len) {
    printf("%-26s %12s  %s\n", "item", "MiB", "");
    for (int i = 0; i < CT_PLAN_N_ITEMS; i++)
        printf("%-26s %12.1f  %s\n", ct_plan_item_name((ct_plan_item)i), (double)p->bytes[i] / MIB, p->detail[i]);
    printf("%-26s %12.1f  (the allocator's peak: compare with dev_peak_mb of metrics.jsonl)\n", "allocator total",
           (double)p->allocator_total / MIB);
    printf("%-26s %12.1f  %.2f GiB on %s\n", "total", (double)p->total / MIB, (double)p->total / GIB, device);
    if (p->host_bytes) printf("host memory instead: %.1f MiB (offloaded)\n", (double)p->host_bytes / MIB);
    printf("arenas: main %.1f MiB, scratch %.1f MiB; %lld tokens per step\n", (double)p->main_arena / MIB,
           (double)p->scratch_arena / MIB, (long long)p->tokens);
    if (fit_len > 0) printf("largest max_length within %.2f GiB: %lld\n", (double)budget / GIB, (long long)fit_len);
    else printf("largest max_length within %.2f GiB: none (even 64 tokens do not fit)\n", (double)budget / GIB);
}

static int run(const char *path, const char *budget_s, const char *device, const char **sets, int n_sets) {
    uint64_t budget = 0;
    if (ct_st_parse_size(budget_s, &budget) != CT_OK || budget == 0)
        return ct_errorf(CT_EINPUT, "--budget '%s': give a size such as 8GiB, 6GiB or 7500MB", budget_s);
    ct_run_config c;
    CT_TRY(ct_config_load(path, sets, n_sets, &c));
    /* --device, else the config's; auto plans for the GPU (what a budget is about) */
    const char *dev = device ? device : ct_config_device_name(c.device);
    if (strcmp(dev, "auto") == 0) dev = "cuda";
    int rc = CT_OK;
    if (strcmp(dev, "cuda") != 0 && strcmp(dev, "cpu") != 0 && strcmp(dev, "cuda-emu") != 0)
        rc = ct_errorf(CT_EINPUT, "--device '%s': use cuda or cpu", dev);
    ct_hf_config m;
    memset(&m, 0, sizeof m);
    if (!rc) {
        rc = ct_hf_config_load(c.pretrained_model_name_or_path, &m);
        if (rc) rc = ct_error_wrap(rc, "pretrained_model_name_or_path");
    }
    if (!rc) {
        ct_plan_input in = {.model = &m, .run = &c, .gpu = strcmp(dev, "cpu") != 0,
                            .optimizer_on_host = c.optimizer_offload == CT_OFFLOAD_CPU,
                            .embedding_on_host = c.embedding_offload == CT_OFFLOAD_CPU};
        ct_mem_plan p;
        rc = ct_mem_plan_make(&in, 0, &p);
        if (!rc) {
            printf("plan: %s on %s: %lld layers, hidden %lld, vocab %lld; batch %lld x max_length %lld; LoRA r %lld; "
                   "%s; gradient checkpointing %s\n", path, dev, (long long)m.num_hidden_layers,
                   (long long)m.hidden_size, (long long)m.vocab_size, (long long)c.batch_size,
                   (long long)c.max_length, (long long)c.lora.r,
                   c.quantization.load_in_4bit ? "4-bit base weights" : "16-bit base weights",
                   c.gradient_checkpointing ? "on" : "off");
            print_plan(&p, dev, budget, ct_mem_plan_max_length(&in, budget));
            bool fits = p.total <= budget;
            printf("predicted peak: %.2f GiB of %.2f GiB: %s\n", (double)p.total / GIB, (double)budget / GIB,
                   fits ? "fits" : "does not fit");
            if (!fits) rc = CT_CMD_NOT_FIT;
        }
    }
    ct_hf_config_free(&m);
    ct_config_free(&c);
    return rc;
}

int ct_cmd_plan(int argc, char **argv) {
    const char *budget = "8GiB", *device = NULL, *set = NULL;
    const ct_argspec specs[] = {
        {"--budget", CT_ARG_STR, &budget, "SIZE", "the memory to fit in (default 8GiB; GiB = 2^30, GB = 10^9)"},
        {"--device", CT_ARG_STR, &device, "DEVICE", "cuda or cpu (default: the config's device; auto = cuda)"},
        {"--set", CT_ARG_STR, &set, "KEY.PATH=VALUE", "override a config setting (repeat for more)"},
    };
    ct_args a = {.usage = "ctuner plan CONFIG.yaml [--budget 8GiB] [--device cuda|cpu] [--set key.path=value ...]",
                 .summary = "Predict a training run's peak memory item by item from config.json and the config "
                            "(no weights read); exit code 3 when it does not fit the budget.",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0]),
                 .min_positional = 1,
                 .max_positional = 1};
    CT_TRY(ct_args_parse(&a, argc, argv));
    const char **sets = NULL;
    int n_sets = 0;
    CT_TRY(ct_args_collect(&a, argc, argv, "--set", &sets, &n_sets));
    int rc = run(a.positional[0], budget, device, sets, n_sets);
    free(sets);
    return rc;
}
