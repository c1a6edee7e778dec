/* The subcommand table: one row per command, implemented in cmd_<name>.c. */
#include "commands.h"

#include <stddef.h>

const ct_command ct_commands[] = {
    {"chat", "chat with a model (and adapter): interactive, or one answer with --prompt", ct_cmd_chat},
    {"copy-cfg", "copy a built-in config into a directory to edit it", ct_cmd_copy_cfg},
    {"eval", "loss and perplexity of a model (and adapter) on a dataset", ct_cmd_eval},
    {"info", "show the build, the backends and the devices found", ct_cmd_info},
    {"list-cfg", "list the built-in configs (XTuner's InternLM2 QLoRA configs and more)", ct_cmd_list_cfg},
    {"log-dataset", "show the training data after templating, masking and packing (no model needed)",
     ct_cmd_log_dataset},
    {"make-model", "write a randomly initialised InternLM2 model of any shape", ct_cmd_make_model},
    {"merge", "merge a LoRA adapter into its base model and write a Hugging Face model directory", ct_cmd_merge},
    {"plan", "predict a training run's peak memory item by item, and whether it fits a budget", ct_cmd_plan},
    {"quantize", "write a full-precision model as a bitsandbytes NF4/FP4 checkpoint transformers can load",
     ct_cmd_quantize},
    {"tokenize", "print the token ids (or pieces) of a text, as the HF tokenizer gives them", ct_cmd_tokenize},
    {"train", "train a LoRA/QLoRA adapter as a YAML config says (resumable, checkpointed)", ct_cmd_train},
    {NULL, NULL, NULL},
};
