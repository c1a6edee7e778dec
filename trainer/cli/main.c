/* ctuner: the subcommand dispatcher. The only place that prints library errors
 * and chooses exit codes: 0 success, 1 runtime failure, 2 usage or input error, 3 `plan`: does
 * not fit. */
#include <stdio.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ctuner COMMAND [ARGS]\n\n"
            "LoRA/QLoRA fine-tuning of InternLM2-family models.\n\ncommands:\n");
    for (const ct_command *c = ct_commands; c->name; c++) fprintf(f, "  %-12s %s\n", c->name, c->summary);
    fprintf(f, "\n'ctuner COMMAND --help' describes a command.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("ctuner 0.1.0\n");
        return 0;
    }
    for (const ct_command *c = ct_commands; c->name; c++) {
        if (strcmp(c->name, cmd) != 0) continue;
        int rc = c->run(argc - 1, argv + 1);
        if (rc == CT_ARGS_HELP) return 0;
        if (rc == CT_CMD_NOT_FIT) return 3;
        if (rc) {
            fprintf(stderr, "ctuner %s: error: %s\n", cmd, ct_last_error());
            return rc == CT_EINPUT ? 2 : 1;
        }
        return 0;
    }
    fprintf(stderr, "ctuner: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
