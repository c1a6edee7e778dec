/* Command-line flags for subcommands: a table of specs, parsed in one call.
 * Unknown flags, missing values and malformed numbers are CT_EINPUT errors
 * naming the flag; `--help`/`-h` prints the usage and returns CT_ARGS_HELP. */
#ifndef CT_ARGS_H
#define CT_ARGS_H

#include <stdbool.h>
#include <stdint.h>

#define CT_ARGS_HELP (-1)
#define CT_ARGS_MAX_POSITIONAL 8

typedef enum { CT_ARG_STR, CT_ARG_INT, CT_ARG_DOUBLE, CT_ARG_FLAG } ct_arg_kind;

typedef struct {
    const char *name;     /* "--out" */
    ct_arg_kind kind;
    void *dst;            /* const char ** / int64_t * / double * / bool * */
    const char *metavar;  /* "DIR" (NULL for flags) */
    const char *help;
} ct_argspec;

typedef struct {
    const char *usage;    /* "ctuner tokenize DIR (--text S | --file F) [--pieces]" */
    const char *summary;  /* one line on what the command does */
    const ct_argspec *specs;
    int n_specs;
    int min_positional, max_positional;
    const char *positional[CT_ARGS_MAX_POSITIONAL]; /* filled by the parser */
    int n_positional;
} ct_args;

/* argv[0] is the subcommand name. Strings point into argv (not copied). */
int ct_args_parse(ct_args *a, int argc, char **argv);
void ct_args_print_help(const ct_args *a);

/* Every value given to the repeatable string option `name` (e.g. "--set"),
 * in command-line order, walking argv with ct_args_parse's rules (call it
 * after a successful parse). *values is malloc'ed (free() it; the strings
 * point into argv), *n its length. */
int ct_args_collect(const ct_args *a, int argc, char **argv, const char *name, const char ***values, int *n);

#endif
