/* The subcommand table: one row per command, implemented in cmd_<name>.c. */
#include "commands.h"

#include <stddef.h>

const ct_command ct_commands[] = {
    {"info", "show the build, the backends and the devices found", ct_cmd_info},
    {NULL, NULL, NULL},
};
