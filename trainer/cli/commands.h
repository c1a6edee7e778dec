/* Subcommands of the ctuner binary. Each takes (argc, argv) with argv[0] the
 * command name and returns a ct_status (0 ok, CT_ERUNTIME, CT_EINPUT) with the
 * message set, or CT_ARGS_HELP after printing its help. main() maps that to
 * the exit code. */
#ifndef CT_COMMANDS_H
#define CT_COMMANDS_H

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} ct_command;

/* A command's verdict that is not an error: `plan` when the run does not
 * fit the budget (exit code 3, nothing printed to stderr). */
#define CT_CMD_NOT_FIT (-3)

/* The table, terminated by a {NULL} entry. */
extern const ct_command ct_commands[];

int ct_cmd_chat(int argc, char **argv);
int ct_cmd_copy_cfg(int argc, char **argv);
int ct_cmd_eval(int argc, char **argv);
int ct_cmd_info(int argc, char **argv);
int ct_cmd_list_cfg(int argc, char **argv);
int ct_cmd_log_dataset(int argc, char **argv);
int ct_cmd_make_model(int argc, char **argv);
int ct_cmd_merge(int argc, char **argv);
int ct_cmd_plan(int argc, char **argv);
int ct_cmd_quantize(int argc, char **argv);
int ct_cmd_tokenize(int argc, char **argv);
int ct_cmd_train(int argc, char **argv);

#endif
