/* Regular-file checks before reading, and the cancellation flag polled by
 * long input work (file_check.h). */
#include "datasets/file_check.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ct_error.h"

const char *ct_file_kind(mode_t m) {
    if (S_ISREG(m)) return "a regular file";
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO (named pipe)";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

int ct_open_regular(const char *path, const char *what, int *fd_out, size_t *size) {
    *fd_out = -1;
    /* O_NONBLOCK: opening a FIFO without a writer would block forever. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return ct_errorf(e == ENOENT || e == EACCES || e == ENOTDIR || e == ELOOP || e == ENAMETOOLONG || e == ENXIO
                                 ? CT_EINPUT : CT_ERUNTIME,
                         "%s: cannot open %s: %s", path, what, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ct_errorf(CT_ERUNTIME, "%s: cannot stat %s: %s", path, what, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ct_errorf(CT_EINPUT, "%s: %s must be a regular file, this is %s", path, what, ct_file_kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (size) *size = (size_t)st.st_size;
    *fd_out = fd;
    return CT_OK;
}

int ct_fopen_regular(const char *path, const char *what, FILE **fp, size_t *size) {
    *fp = NULL;
    int fd;
    CT_TRY(ct_open_regular(path, what, &fd, size));
    *fp = fdopen(fd, "rb");
    if (!*fp) {
        int e = errno;
        close(fd);
        return ct_errorf(CT_ERUNTIME, "%s: %s", path, strerror(e));
    }
    return CT_OK;
}

static volatile sig_atomic_t g_cancel = 0;

void ct_cancel_request(int signo) { g_cancel = signo > 0 ? signo : SIGINT; }
int ct_cancel_signal(void) { return g_cancel; }
void ct_cancel_clear(void) { g_cancel = 0; }

int ct_cancel_check(const char *doing) {
    int s = g_cancel;
    if (!s) return CT_OK;
    return ct_errorf(CT_ERUNTIME, "interrupted by %s while %s", s == SIGINT ? "SIGINT" : s == SIGTERM ? "SIGTERM" : "a signal",
                     doing);
}
