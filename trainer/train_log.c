/* Progress of a training run: the progress line (every logging_interval
 * iterations a plain line; on a terminal also a \r-updated live line in
 * between), work_dir/metrics.jsonl (one JSON object per logged iteration) and
 * the loss curve work_dir/loss_curve.svg drawn from the logged losses.
 *
 * A logged "loss" is the NLL mean over the trained tokens of the iterations
 * since the previous log line (so it does not depend on how the tokens fell
 * into micro-batches); "lr" is the schedule's rate at the logged iteration,
 * "grad_norm" the global norm (before clipping) of the last optimizer step;
 * "tokens" counts the real (non-padding) tokens trained on so far by the whole
 * run, "tokens_per_s" those of the interval over its wall time, "elapsed_s"
 * the seconds since this process started training, "rss_mb" the peak resident
 * memory, "dev_mb" / "dev_peak_mb" what the backend's allocator holds now and
 * at most so far (the device's memory on a GPU; on the CPU the backend's share
 * of the process: placed weights, LoRA, optimizer state, arenas). A resumed run first cuts metrics.jsonl back to the checkpoint's
 * iteration (entries written after it are recomputed). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <jansson.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "trainer/loss_plot.h"
#include "trainer/train_internal.h"

#define MIB 1048576.0

ct_mem_usage ct_train_device_mem(const ct_trainer *t) {
    const ct_backend *be = t->model ? ct_model_backend(t->model) : NULL;
    ct_mem_usage u = {0, 0, 0};
    return be && be->mem_usage ? be->mem_usage(0) : u;
}

double ct_train_peak_rss_mb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

static int hist_push(ct_train_log *L, int64_t iter, double loss) {
    if (L->n_hist == L->cap_hist) { /* only when the interval changed across a resume */
        size_t cap = L->cap_hist ? 2 * L->cap_hist : 64;
        int64_t *xi = realloc(L->hist_iter, cap * sizeof *xi);
        if (xi) L->hist_iter = xi;
        double *yl = realloc(L->hist_loss, cap * sizeof *yl);
        if (yl) L->hist_loss = yl;
        if (!xi || !yl) return ct_errorf(CT_ERUNTIME, "out of memory for the loss history");
        L->cap_hist = cap;
    }
    L->hist_iter[L->n_hist] = iter;
    L->hist_loss[L->n_hist++] = loss;
    return CT_OK;
}

/* Keeps the entries of metrics.jsonl up to iteration `upto` (a resumed run). */
static int cut_metrics(ct_trainer *t, const char *path, int64_t upto) {
    char *text = NULL;
    size_t n = 0;
    if (!ct_path_exists(path)) return CT_OK;
    CT_TRY(ct_file_read_all(path, &text, &n));
    ct_atomic_file af;
    int rc = ct_afile_open(&af, path);
    for (char *line = text, *next; rc == CT_OK && line < text + n; line = next) {
        char *nl = strchr(line, '\n');
        next = nl ? nl + 1 : text + n;
        if (nl) *nl = '\0';
        json_t *j = json_loads(line, 0, NULL);
        json_t *it = j ? json_object_get(j, "iter") : NULL, *loss = j ? json_object_get(j, "loss") : NULL;
        if (it && json_is_integer(it) && json_integer_value(it) <= upto) {
            if (loss && json_is_number(loss)) rc = hist_push(&t->log, json_integer_value(it), json_number_value(loss));
            if (!rc) rc = ct_afile_write(&af, line, strlen(line));
            if (!rc) rc = ct_afile_write(&af, "\n", 1);
        }
        json_decref(j);
    }
    free(text);
    if (rc == CT_OK) return ct_afile_commit(&af);
    ct_afile_abort(&af);
    return rc;
}

int ct_train_log_open(ct_trainer *t) {
    ct_train_log *L = &t->log;
    L->cap_hist = (size_t)(t->total_iters / t->cfg->logging_interval + 2);
    L->hist_iter = malloc(L->cap_hist * sizeof *L->hist_iter);
    L->hist_loss = malloc(L->cap_hist * sizeof *L->hist_loss);
    if (!L->hist_iter || !L->hist_loss) return ct_errorf(CT_ERUNTIME, "out of memory for the loss history");
    L->t0 = L->t_mark = ct_now_s();
    L->iter0 = t->iter;
    if (t->rank != 0) return CT_OK; /* rank 0 writes the logs */
    char path[CT_PATH_MAX];
    CT_TRY(ct_path_join(path, sizeof path, t->work_dir, "metrics.jsonl"));
    if (t->iter > 0) CT_TRY(cut_metrics(t, path, t->log_cut > 0 ? t->log_cut : t->iter));
    else { /* a fresh run starts a fresh evaluation log too */
        char ev[CT_PATH_MAX];
        CT_TRY(ct_path_join(ev, sizeof ev, t->work_dir, "eval_log.jsonl"));
        CT_TRY(ct_remove_tree(ev));
    }
    L->metrics = fopen(path, t->iter > 0 ? "a" : "w");
    if (!L->metrics) return ct_errorf(CT_ERUNTIME, "%s: cannot open for writing: %s", path, strerror(errno));
    return CT_OK;
}

void ct_train_log_close(ct_trainer *t) {
    ct_train_log *L = &t->log;
    if (L->line_open && t->out) fputc('\n', t->out);
    if (L->metrics) fclose(L->metrics);
    free(L->hist_iter);
    free(L->hist_loss);
    memset(L, 0, sizeof *L);
}

void ct_train_log_note(ct_trainer *t, const char *fmt, ...) {
    if (!t->out) return;
    if (t->log.line_open) fputc('\n', t->out);
    t->log.line_open = false;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(t->out, fmt, ap);
    va_end(ap);
    fflush(t->out);
}

static void fmt_duration(char *buf, size_t cap, double s) {
    long v = s > 0 && s < 1e9 ? (long)(s + 0.5) : 0;
    if (v >= 3600) snprintf(buf, cap, "%ld:%02ld:%02ld", v / 3600, v / 60 % 60, v % 60);
    else snprintf(buf, cap, "%ld:%02ld", v / 60, v % 60);
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static int write_metrics(ct_trainer *t, double loss, double lr, double tok_s, double elapsed, double rss,
                         ct_mem_usage dev) {
    if (!t->log.metrics) return CT_OK; /* not rank 0 */
    json_t *j = json_object();
    if (!j) return ct_errorf(CT_ERUNTIME, "out of memory");
    json_object_set_new(j, "iter", json_integer((json_int_t)t->iter));
    json_object_set_new(j, "step", json_integer((json_int_t)t->step));
    json_object_set_new(j, "epoch", json_real((double)ct_train_vpos(t, t->iter) / (double)t->iters_per_epoch));
    json_object_set_new(j, "loss", num_or_null(loss));
    json_object_set_new(j, "lr", num_or_null(lr));
    json_object_set_new(j, "grad_norm", num_or_null(t->step > 0 ? t->last_grad_norm : NAN));
    json_object_set_new(j, "tokens", json_integer((json_int_t)t->log.tokens_seen));
    json_object_set_new(j, "tokens_per_s", json_real(tok_s));
    json_object_set_new(j, "elapsed_s", json_real(elapsed));
    json_object_set_new(j, "rss_mb", json_real(rss));
    json_object_set_new(j, "dev_mb", json_real((double)dev.current / MIB));
    json_object_set_new(j, "dev_peak_mb", json_real((double)dev.peak / MIB));
    int bad = json_dumpf(j, t->log.metrics, JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(j);
    if (bad || fputc('\n', t->log.metrics) == EOF || fflush(t->log.metrics) != 0)
        return ct_errorf(CT_ERUNTIME, "%s/metrics.jsonl: write error: %s", t->work_dir, strerror(errno));
    return CT_OK;
}

int ct_train_log_iter(ct_trainer *t, double nll, int64_t targets, int64_t tokens, double secs) {
    ct_train_log *L = &t->log;
    L->nll += nll;
    L->targets += targets;
    L->tokens += tokens;
    L->tokens_all += tokens;
    L->tokens_seen += tokens;
    L->secs_all += secs;
    bool due = t->iter % t->cfg->logging_interval == 0 || t->iter == t->total_iters;
    bool live = t->out && t->opt->live;
    if (!due && !live) return CT_OK;

    double now = ct_now_s(), dt = now - L->t_mark, elapsed = now - L->t0;
    double loss = L->targets > 0 ? L->nll / (double)L->targets : NAN;
    double lr = ct_sched_lr_at(&t->sched, ct_train_vpos(t, t->iter) - 1);
    double tok_s = dt > 0 ? (double)L->tokens / dt : 0.0, rss = ct_train_peak_rss_mb();
    int64_t done = t->iter - L->iter0;
    double eta = done > 0 ? elapsed / (double)done * (double)(t->total_iters - t->iter) : 0.0;
    ct_mem_usage dev = ct_train_device_mem(t);
    if (t->out) {
        char eta_s[32], grad[32];
        fmt_duration(eta_s, sizeof eta_s, eta);
        if (t->step > 0) snprintf(grad, sizeof grad, "%.4g", t->last_grad_norm);
        else snprintf(grad, sizeof grad, "-");
        fprintf(t->out, "%siter %lld/%lld | epoch %.2f | loss %.4f | lr %.3e | grad norm %s | %.0f tok/s | eta %s | "
                "mem %.0f MiB peak RSS, %s %.0f MiB (peak %.0f MiB)%s", live ? "\r" : "", (long long)t->iter,
                (long long)t->total_iters, (double)ct_train_vpos(t, t->iter) / (double)t->iters_per_epoch, loss, lr, grad, tok_s, eta_s,
                rss, ct_model_backend(t->model)->name, (double)dev.current / MIB, (double)dev.peak / MIB,
                live ? "\x1b[K" : "");
        L->line_open = live && !due;
        if (!L->line_open) fputc('\n', t->out);
        fflush(t->out);
    }
    if (!due) return CT_OK;
    CT_TRY(write_metrics(t, loss, lr, tok_s, elapsed, rss, dev));
    CT_TRY(hist_push(L, t->iter, loss));
    L->nll = 0;
    L->targets = L->tokens = 0;
    L->t_mark = now;
    return CT_OK;
}

int ct_train_log_eval_loss(ct_trainer *t, double loss, int64_t tokens) {
    if (!t->log.metrics) return CT_OK;
    json_t *j = json_object();
    if (!j) return ct_errorf(CT_ERUNTIME, "out of memory");
    json_object_set_new(j, "iter", json_integer((json_int_t)t->iter));
    json_object_set_new(j, "eval_loss", num_or_null(loss));
    json_object_set_new(j, "eval_tokens", json_integer((json_int_t)tokens));
    int bad = json_dumpf(j, t->log.metrics, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(j);
    if (bad || fputc('\n', t->log.metrics) == EOF || fflush(t->log.metrics) != 0)
        return ct_errorf(CT_ERUNTIME, "%s/metrics.jsonl: write error: %s", t->work_dir, strerror(errno));
    return CT_OK;
}

int ct_train_log_plot(ct_trainer *t) {
    char path[CT_PATH_MAX], title[CT_PATH_MAX + 32];
    CT_TRY(ct_path_join(path, sizeof path, t->work_dir, "loss_curve.svg"));
    snprintf(title, sizeof title, "training loss: %s", t->cfg->data_path);
    ct_plot_labels lb = {.title = title, .x_label = "iteration", .y_label = "loss (mean NLL per trained token)"};
    return ct_plot_svg_save(path, t->log.hist_iter, t->log.hist_loss, t->log.n_hist, &lb);
}
