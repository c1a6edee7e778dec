/* The run configuration: one YAML file in XTuner's vocabulary (docs/CONFIG.md),
 * parsed with libyaml into a typed struct, with `--set key.path=value`
 * overrides applied before validation, defaults filled, and printable back as
 * YAML that parses to the same struct.
 *
 * Units (as XTuner/mmengine): an *iteration* is one micro-batch (batch_size
 * rows through forward and backward); an optimizer step closes every
 * accumulative_counts iterations (and at the last iteration). max_iters,
 * save_steps, evaluation_freq, logging_interval and the iteration-based
 * begin/end of param_scheduler all count iterations.
 *
 * Errors: every problem is CT_EINPUT with "origin:line:column: key.path:
 * problem (expected ...)", origin being the file or the `--set` argument.
 *
 * Ownership: a ct_run_config owns all its strings and arrays; release them
 * with ct_config_free. Arguments are borrowed for the duration of a call. */
#ifndef CT_CONFIG_H
#define CT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/quant.h"
#include "autograd/tensor.h"
#include "datasets/dataset.h"
#include "datasets/dataset_reader.h"
#include "trainer/optim/scheduler.h"

#define CT_CONFIG_MAX_PHASES 8

typedef enum { CT_DEVICE_AUTO = 0, CT_DEVICE_CPU, CT_DEVICE_CUDA, CT_DEVICE_CUDA_EMU } ct_device_kind;
/* "auto", "cpu", "cuda", "cuda-emu": the config's spelling (ct_backend_by_name's). */
const char *ct_config_device_name(ct_device_kind d);
typedef enum { CT_OPTIM_ADAMW = 0 } ct_optim_type;
/* Where a part of the training state lives when the model is on a device
 * backend: in the device's memory (none) or in host memory (cpu).
 * optimizer_offload: AdamW's moments (trainer/optim/adamw.h, "Offload");
 * embedding_offload: the frozen embedding table (trainer/model/model.h). */
typedef enum { CT_OFFLOAD_NONE = 0, CT_OFFLOAD_CPU } ct_offload_kind;
/* The phase kinds are the scheduler's (trainer/optim/scheduler.h: LinearLR,
 * CosineAnnealingLR, ConstantLR), so the config and the one LR function agree. */
typedef ct_sched_kind ct_sched_type;

/* One entry of param_scheduler, as written (mmengine's LinearLR,
 * CosineAnnealingLR, ConstantLR). begin/end/T_max are epochs when by_epoch,
 * else iterations; ct_config_scheduler converts them. */
typedef struct {
    ct_sched_type type;
    double start_factor, end_factor; /* LinearLR: 1/3 and 1.0 by default (mmengine) */
    double factor;                   /* ConstantLR: required, in [0, 1] */
    double eta_min;                  /* CosineAnnealingLR: floor of the LR, default 0 */
    double T_max;                    /* CosineAnnealingLR: period; 0 = end - begin */
    bool by_epoch;                   /* default true (mmengine) */
    double begin;                    /* default 0 */
    double end;                      /* < 0: until the end of training (YAML null, the default) */
} ct_sched_phase;

typedef struct {
    bool load_in_4bit;        /* false: plain LoRA over unquantized base weights */
    ct_quant_type quant_type; /* bnb_4bit_quant_type: nf4 | fp4 */
    bool double_quant;        /* bnb_4bit_use_double_quant */
    ct_dtype compute_dtype;   /* bnb_4bit_compute_dtype: CT_BF16, CT_F16 or CT_F32 */
    int64_t blocksize;        /* power of two in [32, 4096]; bnb uses 64 */
    bool quantize_output;     /* NF4 output head as well (ctuner extension) */
} ct_run_quant;

typedef struct {
    int64_t r;
    double lora_alpha;
    double lora_dropout;      /* [0, 1) */
    unsigned target_modules;  /* CT_LORA_* bits (trainer/model/lora.h) */
    bool use_rslora;
    char *init_from;          /* PEFT adapter dir to start from, or NULL */
} ct_run_lora;

typedef struct {
    /* model */
    char *pretrained_model_name_or_path; /* local HF model directory (relative: to the CWD) */
    bool use_varlen_attn;                /* accepted; packed samples never attend across boundaries */
    /* data */
    char *data_path;
    ct_ds_format data_format;            /* CT_DS_AUTO: from the first record */
    char *prompt_template;               /* a name of datasets/template.h */
    int64_t max_length;
    bool max_length_beyond_model;        /* allow max_length > the model's max_position_embeddings */
    bool pack_to_max_length;
    bool shuffle_before_pack;
    bool skip_bad_records;
    /* scheduler & optimizer */
    int64_t batch_size;                  /* rows per iteration (per device) */
    int64_t accumulative_counts;
    int64_t dataloader_num_workers;      /* threads tokenizing the data; 0 = all cores */
    int64_t max_epochs;
    int64_t max_iters;                   /* 0 (YAML null): train max_epochs epochs */
    ct_optim_type optim_type;
    double lr, betas[2], eps, weight_decay;
    double max_norm;                     /* gradient clipping; 0 = none */
    double warmup_ratio;                 /* used only when param_scheduler is null */
    int n_phases;                        /* -1: param_scheduler null (derived from warmup_ratio) */
    ct_sched_phase phases[CT_CONFIG_MAX_PHASES];
    /* save */
    int64_t save_steps;                  /* 0: only at the end */
    int64_t save_total_limit;            /* <= 0 (XTuner -1): keep all */
    /* evaluation */
    int64_t evaluation_freq;             /* 0: only before and after training */
    int64_t evaluation_max_new_tokens;
    char *system;                        /* resolved SYSTEM text, "" when none */
    char *system_template;               /* the SYSTEM_TEMPLATE name it came from, or NULL */
    char **evaluation_inputs;
    size_t n_evaluation_inputs;
    /* model parts */
    ct_run_quant quantization;
    ct_run_lora lora;
    bool gradient_checkpointing;
    ct_dtype compute_dtype;              /* the frozen-weight GEMMs: CT_F32 (exact) or CT_BF16 */
    /* runtime */
    int64_t seed;
    bool deterministic;
    char *work_dir;                      /* default ./work_dirs/<config file name> */
    ct_device_kind device;
    ct_offload_kind optimizer_offload;   /* default none */
    ct_offload_kind embedding_offload;   /* default cpu (kept on the device anyway when tied to the head) */
    int64_t logging_interval;
} ct_run_config;

/* Defaults (docs/CONFIG.md) with no strings set; pair with ct_config_free. */
void ct_config_init(ct_run_config *c);
void ct_config_free(ct_run_config *c);

/* Reads `path`, applies `sets` ("a.b.c=value", value parsed as YAML; may be
 * NULL when n_sets is 0) in order, fills defaults and validates. On error
 * *out is left freed (all zero). */
int ct_config_load(const char *path, const char *const *sets, int n_sets, ct_run_config *out);

/* The same from text; `origin` names it in messages and gives the default
 * work_dir (its base name without .yaml/.yml). */
int ct_config_parse(const char *text, size_t len, const char *origin, const char *const *sets, int n_sets,
                    ct_run_config *out);

/* Writes the resolved configuration as YAML (every key, defaults included):
 * parsing the output gives a config equal to `c`. CT_ERUNTIME on a write error. */
int ct_config_write_yaml(const ct_run_config *c, FILE *f);

/* Field-by-field equality (strings by content, doubles exactly). */
bool ct_config_equal(const ct_run_config *a, const ct_run_config *b);

/* Calls fn with every key path the schema knows, in file order:
 * "lr", "lora.r", "param_scheduler.N.type", ... (N stands for an index). */
void ct_config_each_key(void (*fn)(const char *path, void *ctx), void *ctx);

/* ---- derived quantities (config_schedule.c) ---- */

/* Iterations per epoch: ceil(n_rows / batch_size) (the dataloader keeps the
 * last short batch, as XTuner's). */
int64_t ct_config_iters_per_epoch(const ct_run_config *c, int64_t n_rows);
/* max_iters when set, else max_epochs * iterations per epoch. */
int64_t ct_config_total_iters(const ct_run_config *c, int64_t n_rows);
/* ceil(total_iters / accumulative_counts): the last window may be short (mmengine). */
int64_t ct_config_total_steps(const ct_run_config *c, int64_t n_rows);
/* The iteration whose end closes optimizer step `step` (0-based):
 * min((step+1) * accumulative_counts, total_iters) - 1. That step uses the LR
 * of this iteration, as XTuner's per-iteration scheduler does. */
int64_t ct_config_step_last_iter(const ct_run_config *c, int64_t step, int64_t total_iters);

/* The dataset preparation the config asks for (data_path, format, template,
 * SYSTEM, max_length, packing, seed, workers, tokenizer path), the rest left
 * at ct_ds_config_default(); cache_dir stays NULL. Strings point into c. */
ct_ds_config ct_config_ds_config(const ct_run_config *c);

/* The run's learning-rate schedule, resolved to iterations for the scheduler
 * (trainer/optim/scheduler.h; ct_sched_lr_at(out, it) is then the LR of iteration
 * it, the one function every caller uses). param_scheduler, or when it is null
 * XTuner's default (LinearLR from 1e-5 over warmup_ratio of training, then
 * CosineAnnealingLR to 0 until the end), is converted like mmengine's
 * convert_to_iter_based: begin = int(begin * iters_per_epoch), end likewise,
 * T_max * iters_per_epoch. A null end becomes total_iters; phases that convert
 * to no iterations are skipped. CT_EINPUT when phases overlap after the
 * conversion or an epoch-based phase meets a dataset with no iterations. */
int ct_config_scheduler(const ct_run_config *c, int64_t iters_per_epoch, int64_t total_iters, ct_scheduler *out);

/* ---- built-in configs (config_builtin.c) ---- */

/* The directory of the built-in configs: $CTUNER_CONFIG_DIR when set, else
 * <executable dir>/../configs, <executable dir>/../share/ctuner/configs, then
 * the source tree's configs/. CT_EINPUT when none exists. */
int ct_config_builtin_dir(char *buf, size_t cap);
/* The sorted names (file names without .yaml) in `dir`. *names is a malloc'ed
 * array of malloc'ed strings (ct_config_names_free). */
int ct_config_builtin_names(const char *dir, char ***names, size_t *n);
void ct_config_names_free(char **names, size_t n);

/* Levenshtein distance (bytes), for "did you mean" hints. */
size_t ct_config_edit_distance(const char *a, const char *b);

#endif
