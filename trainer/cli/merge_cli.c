/* What the merge and quantize commands share around ct_merge: Ctrl-C handling,
 * the --dtype flag and the dtype label of their summary line. */
#include <signal.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/cli/merge_cli.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { g_stop = sig; }

static int check_stop(void *ctx, const char *tensor, uint64_t done, uint64_t total) {
    (void)ctx, (void)done, (void)total;
    if (g_stop)
        return ct_errorf(CT_ERUNTIME, "interrupted (signal %d) before %s; nothing was written", (int)g_stop, tensor);
    return CT_OK;
}

int ct_merge_until_signal(ct_merge_options *o, ct_merge_report *report) {
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    g_stop = 0;
    o->progress = check_stop;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int rc = ct_merge(o, report);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}

int ct_merge_parse_dtype(const char *name, ct_merge_options *o) {
    o->dtype = ct_dtype_from_name(name);
    if (o->dtype != CT_F32 && o->dtype != CT_BF16 && o->dtype != CT_F16)
        return ct_errorf(CT_EINPUT, "--dtype '%s' is not one of bf16, fp16, fp32", name);
    return CT_OK;
}

const char *ct_merge_dtype_label(ct_dtype dt) { return dt == CT_BF16 ? "bf16" : dt == CT_F16 ? "fp16" : "fp32"; }
