/* Inputs checked for what they are before they are read: a file ctuner reads
 * (a dataset, a tokenizer, a config, model weights) must be a regular file.
 * A directory, a FIFO, a device or a socket gets a clear CT_EINPUT naming it,
 * instead of a hang (a FIFO blocks in open, /dev/zero never ends) or a
 * read error later. The open itself never blocks (O_NONBLOCK, cleared after
 * the check).
 *
 * Ownership: the returned fd / FILE belongs to the caller (close / fclose). */
#ifndef CT_FILE_CHECK_H
#define CT_FILE_CHECK_H

#include <stdio.h>
#include <sys/types.h>

/* "a directory", "a FIFO", "a character device", ... for messages. */
const char *ct_file_kind(mode_t mode);

/* Opens `path` read-only if it is a regular file. `what` names its role in
 * the message ("the dataset file"). CT_EINPUT when missing, unreadable or not
 * a regular file; CT_ERUNTIME for other OS errors. *size gets its size (may
 * be NULL). */
int ct_open_regular(const char *path, const char *what, int *fd, size_t *size);
int ct_fopen_regular(const char *path, const char *what, FILE **fp, size_t *size);

/* Requests/queries cancellation of long input work (hashing, tokenizing):
 * ct_cancel_request is async-signal-safe (call it from a SIGINT/SIGTERM
 * handler); the loops poll ct_cancel_check, which returns CT_ERUNTIME with
 * "interrupted by SIG..." once a request is pending, else CT_OK. */
void ct_cancel_request(int signo);
int ct_cancel_signal(void); /* the pending signal number, 0 when none */
void ct_cancel_clear(void);
int ct_cancel_check(const char *doing);

#endif
