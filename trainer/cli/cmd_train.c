/* ctuner train CONFIG.yaml [--work-dir D] [--resume auto|PATH] [--set key.path=value ...]
 *                          [--eval-data FILE]
 *
 * Loads the config (overrides applied in order, --work-dir last), prints the
 * resolved config and saves it as WORK_DIR/config.yaml, then trains
 * (trainer/train.h; docs/TRAINING.md).
 *
 * Signals: the first SIGINT or SIGTERM lets the iteration in progress finish,
 * saves a checkpoint and then ends the process by that same signal (the
 * handler is reset first), so the shell sees the conventional status 130
 * (SIGINT) or 143 (SIGTERM) and a script can tell an interrupted run from a
 * finished one (0) or a failed one (1, 2); `--resume auto` continues it. A
 * second signal kills the process at once; checkpoints are written atomically,
 * so that never damages the previous one.
 *
 * Under mpirun or srun (trainer/dist/dist.h) every rank runs this: rank 0
 * prints and writes config.yaml; a rank that fails prints its error naming
 * itself and ends the whole job (MPI_Abort) with the exit status it would
 * have had alone (1 or 2). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "datasets/file_check.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/dist/dist.h"
#include "trainer/io/fsutil.h"
#include "trainer/train.h"

static void on_signal(int signo) {
    ct_train_request_stop(signo);
    ct_cancel_request(signo); /* data preparation stops at once: nothing to save yet */
    static const char msg[] = "\nctuner train: stopping after this iteration to save a checkpoint "
                              "(press Ctrl-C again to abort at once)\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w;
}

static void install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND; /* the second signal takes the default action */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int config_yaml(const ct_run_config *c, char **text) {
    size_t len = 0;
    FILE *f = open_memstream(text, &len);
    if (!f) return ct_errorf(CT_ERUNTIME, "out of memory");
    int rc = ct_config_write_yaml(c, f);
    if (fclose(f) != 0 && !rc) rc = ct_errorf(CT_ERUNTIME, "writing the resolved config failed");
    return rc;
}

static int save_config(const ct_run_config *c, const char *text) {
    char path[CT_PATH_MAX];
    CT_TRY(ct_mkdirs(c->work_dir));
    CT_TRY(ct_path_join(path, sizeof path, c->work_dir, "config.yaml"));
    return ct_file_write_atomic(path, text, strlen(text));
}

static int run(ct_dist *dist, const char *cfg_path, const char *work_dir, const char *resume, const char *eval_data,
               const char **sets, int n_sets) {
    if (resume && !resume[0]) return ct_errorf(CT_EINPUT, "--resume needs 'auto' or a checkpoint path");
    ct_run_config cfg;
    CT_TRY(ct_config_load(cfg_path, sets, n_sets, &cfg));
    char bind[320];
    ct_dist_bind(dist, cfg.device != CT_DEVICE_CPU, bind, sizeof bind); /* before any backend starts */
    if (dist->world > 1) {
        /* each rank says where it runs (stderr: rank 0's stdout stays the log) */
        fprintf(stderr, "ctuner train: rank %d of %d on %s (local rank %d of %d): %s\n", dist->rank, dist->world,
                dist->host, dist->local_rank, dist->local_world, bind);
    }
    char *text = NULL;
    int rc = CT_OK;
    if (work_dir) {
        char *wd = strdup(work_dir);
        if (!wd) rc = ct_errorf(CT_ERUNTIME, "out of memory");
        else free(cfg.work_dir), cfg.work_dir = wd;
    }
    if (!rc) rc = config_yaml(&cfg, &text);
    if (!rc && dist->rank == 0) rc = save_config(&cfg, text);
    if (!rc && dist->rank == 0) {
        printf("ctuner train %s: the resolved config (saved as %s/config.yaml):\n%s\n", cfg_path, cfg.work_dir, text);
        fflush(stdout);
    }
    ct_train_result res;
    memset(&res, 0, sizeof res);
    if (!rc) {
        ct_train_options opt = {.cfg = &cfg, .config_text = text, .resume = resume, .eval_data = eval_data,
                                .out = stdout, .live = isatty(STDOUT_FILENO) == 1 && dist->world == 1,
                                .dist = dist->world > 1 ? dist : NULL};
        install_handlers();
        rc = ct_train(&opt, &res);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
    }
    ct_config_free(&cfg);
    free(text);
    if (rc != CT_OK && ct_cancel_signal() > 0) {
        /* Interrupted before training began (data preparation): no checkpoint to
         * save; end with the signal's status like an interrupted run. */
        fprintf(stderr, "ctuner train: %s; nothing was trained or saved\n", ct_last_error());
        fflush(stdout);
        fflush(stderr);
        ct_dist_finalize(dist);
        raise(ct_cancel_signal());
    }
    if (rc == CT_OK && res.stopped && res.stop_signal > 0 && dist->rank == 0) {
        fprintf(stderr, "ctuner train: interrupted (%s); resume with: ctuner train %s%s%s --resume auto\n",
                res.stop_signal == SIGINT ? "SIGINT" : res.stop_signal == SIGTERM ? "SIGTERM" : "signal", cfg_path,
                work_dir ? " --work-dir " : "", work_dir ? work_dir : "");
    }
    if (rc == CT_OK && res.stopped && res.stop_signal > 0) {
        fflush(stdout);
        fflush(stderr);
        ct_dist_finalize(dist);
        raise(res.stop_signal); /* ends the process with the signal's status (130, 143) */
    }
    return rc;
}

int ct_cmd_train(int argc, char **argv) {
    const char *work_dir = NULL, *resume = NULL, *eval_data = NULL, *set = NULL;
    const ct_argspec specs[] = {
        {"--work-dir", CT_ARG_STR, &work_dir, "DIR", "where checkpoints, adapters and logs go (overrides work_dir)"},
        {"--resume", CT_ARG_STR, &resume, "auto|PATH",
         "continue from the newest checkpoint of the work dir (auto) or from PATH (an iter_N.h5)"},
        {"--set", CT_ARG_STR, &set, "KEY.PATH=VALUE",
         "override a config setting, VALUE read as YAML (repeat for more; later ones win)"},
        {"--eval-data", CT_ARG_STR, &eval_data, "FILE",
         "after training, report the final model's loss on FILE (as ctuner eval computes it)"},
    };
    ct_args a = {.usage = "ctuner train CONFIG.yaml [--work-dir D] [--resume auto|PATH] [--set key.path=value ...] "
                          "[--eval-data FILE]",
                 .summary = "Train a LoRA/QLoRA adapter as the config says (docs/CONFIG.md); checkpoints, the "
                            "adapter, metrics.jsonl and loss_curve.svg go to the work dir. SIGINT/SIGTERM save a "
                            "checkpoint first (exit status 130/143); --resume auto continues. Under `mpirun -np N` "
                            "(or srun) the run is data-parallel over N processes; CTUNER_DIST_TIMEOUT, "
                            "CTUNER_DIST_BUCKET_MB, CTUNER_DIST_OVERLAP, CTUNER_DIST_NCCL tune it (docs/TRAINING.md).",
                 .specs = specs,
                 .n_specs = (int)(sizeof specs / sizeof specs[0]),
                 .min_positional = 1,
                 .max_positional = 1};
    CT_TRY(ct_args_parse(&a, argc, argv));
    const char **sets = NULL;
    int n_sets = 0;
    CT_TRY(ct_args_collect(&a, argc, argv, "--set", &sets, &n_sets));
    ct_dist *dist = NULL;
    int rc = ct_dist_init(&dist);
    if (!rc) rc = run(dist, a.positional[0], work_dir, resume, eval_data, sets, n_sets);
    free(sets);
    if (rc && dist && dist->world > 1) { /* one failing rank ends the job: never a hang */
        fprintf(stderr, "ctuner train: rank %d of %d (%s): error: %s\n", dist->rank, dist->world, dist->host,
                ct_last_error());
        dist->ops->abort(dist, rc == CT_EINPUT ? 2 : 1);
    }
    ct_dist_finalize(dist);
    return rc;
}
