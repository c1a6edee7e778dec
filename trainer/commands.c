/* The subcommand table: one row per command, implemented in cmd_<name>.c. */
#include "commands.h"

#include <stddef.h>

const ct_command ct_commands[] = {
    {"info", "show the build, the backends and the devices found", ct_cmd_info},
    {"make-model", "write a randomly initialised InternLM2 model of any shape", ct_cmd_make_model},
    {"tokenize", "print the token ids (or pieces) of a text, as the HF tokenizer gives them", ct_cmd_tokenize},
    {NULL, NULL, NULL},
};
