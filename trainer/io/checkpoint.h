/* Training checkpoints: one HDF5 file holding everything needed to continue a
 * run bit-identically (docs/DESIGN.md, "Training checkpoints") — LoRA weights, AdamW moments and
 * step, scheduler position, RNG states, data order and cursor, config text.
 *
 * The container is generic: named datasets of four kinds, written and read by
 * name. A name may contain '/' ("optim/exp_avg/<peft key>"): the groups in
 * between are created. Layout on disk:
 *   - root attribute "ctuner_checkpoint" (i32) = CT_CKPT_FORMAT, the format
 *     version; a file without it is "not a ctuner checkpoint";
 *   - f32 arrays (1..4 dims), i64/u64/i32 1-D arrays: chunked with the Fletcher32
 *     checksum filter, so a corrupted byte is reported instead of read;
 *   - strings: a 1-element dataset of one fixed-length UTF-8 string (h5py
 *     reads f[name][0] as bytes), also checksummed;
 *   - HDF5 1.8+ object format, whose metadata carries checksums too.
 *
 * Saving is atomic: the writer creates "<path>.tmp" beside the final name;
 * commit flushes, closes, fsyncs the file, renames it over <path> and fsyncs
 * the directory. A failure (or a crash) before the rename leaves any previous
 * <path> untouched; on an error the .tmp is removed. A stale .tmp left by a
 * crash is overwritten by the next save.
 *
 * HDF5 here is the serial library: use checkpoints from one thread at a time.
 * Ownership: writer and reader objects belong to the caller until
 * ct_ckpt_writer_commit/abort and ct_ckpt_close free them; strings returned by
 * ct_ckpt_get_str are malloc'ed for the caller. */
#ifndef CT_CHECKPOINT_H
#define CT_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/backend.h"

#define CT_CKPT_FORMAT 1   /* the version this build writes and the newest it reads */
#define CT_CKPT_MAX_DIMS 4

typedef enum { CT_CKPT_F32 = 0, CT_CKPT_I64, CT_CKPT_U64, CT_CKPT_I32, CT_CKPT_STR } ct_ckpt_kind;

const char *ct_ckpt_kind_name(ct_ckpt_kind k); /* "f32", "i64", ... */

/* ---- writing ---- */

typedef struct ct_ckpt_writer ct_ckpt_writer;

/* Starts "<path>.tmp" (replacing a stale one) and stamps the format version.
 * The parent directory must exist. CT_EINPUT/CT_ERUNTIME naming the path. */
int ct_ckpt_writer_open(const char *path, ct_ckpt_writer **out);

/* Each put adds one dataset; a name already written is CT_EINPUT. Errors are
 * sticky: after the first failure every put and the commit return it, so a
 * caller may check only the commit. shape: ndim entries >= 0. */
int ct_ckpt_put_f32(ct_ckpt_writer *w, const char *name, int ndim, const int64_t *shape,
                    const float *data);
int ct_ckpt_put_i64(ct_ckpt_writer *w, const char *name, int64_t n, const int64_t *data);
int ct_ckpt_put_u64(ct_ckpt_writer *w, const char *name, int64_t n, const uint64_t *data);
int ct_ckpt_put_i32(ct_ckpt_writer *w, const char *name, int64_t n, const int32_t *data);
/* A NUL-terminated string (the config text). */
int ct_ckpt_put_str(ct_ckpt_writer *w, const char *name, const char *text);
/* An f32 tensor in backend be's memory (its shape): downloaded through a host
 * copy when be is not the CPU. */
int ct_ckpt_put_tensor(ct_ckpt_writer *w, const char *name, const ct_backend *be, const ct_tensor *t);

/* Finishes the file and renames it into place (see above), then frees w.
 * On failure (including an earlier sticky one) the .tmp is removed, the
 * previous checkpoint is untouched and the error is returned. */
int ct_ckpt_writer_commit(ct_ckpt_writer *w);
/* Discards the .tmp and frees w; NULL ok. */
void ct_ckpt_writer_abort(ct_ckpt_writer *w);

/* ---- reading ---- */

typedef struct ct_ckpt_reader ct_ckpt_reader;

/* Opens and checks a checkpoint: CT_EINPUT "<path>: not a ctuner checkpoint"
 * for a non-HDF5 file or one without the version stamp, "... truncated or
 * corrupt" when HDF5 cannot open it, "... newer format" for a version above
 * CT_CKPT_FORMAT, and the OS error when missing/unreadable. */
int ct_ckpt_open(const char *path, ct_ckpt_reader **out);

/* Opens `path` and reads every dataset in it whole (checksums included):
 * CT_OK when all of it reads back, else CT_EINPUT naming the file and the
 * first unreadable dataset (a truncated or bit-flipped save). */
int ct_ckpt_verify(const char *path);
void ct_ckpt_close(ct_ckpt_reader *r); /* NULL ok */
const char *ct_ckpt_path(const ct_ckpt_reader *r);
int ct_ckpt_format(const ct_ckpt_reader *r);

bool ct_ckpt_has(ct_ckpt_reader *r, const char *name);
/* Kind and shape of a dataset (strings: ndim 0).
 * CT_EINPUT naming dataset and file when missing or of no known kind. */
int ct_ckpt_info(ct_ckpt_reader *r, const char *name, ct_ckpt_kind *kind, int *ndim,
                 int64_t shape[CT_CKPT_MAX_DIMS]);

/* Typed getters: the dataset must exist with exactly this kind and shape,
 * else CT_EINPUT "checkpoint <path>: dataset '<name>' ..." saying what was
 * found and what was expected. A checksum or read failure is CT_EINPUT
 * "... truncated or corrupt". `out` has room for the whole array. */
int ct_ckpt_get_f32(ct_ckpt_reader *r, const char *name, int ndim, const int64_t *shape,
                    float *out);
int ct_ckpt_get_i64(ct_ckpt_reader *r, const char *name, int64_t n, int64_t *out);
int ct_ckpt_get_u64(ct_ckpt_reader *r, const char *name, int64_t n, uint64_t *out);
int ct_ckpt_get_i32(ct_ckpt_reader *r, const char *name, int64_t n, int32_t *out);
/* *out: malloc'ed, NUL-terminated, owned by the caller. */
int ct_ckpt_get_str(ct_ckpt_reader *r, const char *name, char **out);
/* Into an f32 tensor in backend be's memory (the dataset must have its shape),
 * through a host copy when be is not the CPU; t is unchanged on error. */
int ct_ckpt_get_tensor(ct_ckpt_reader *r, const char *name, const ct_backend *be, ct_tensor *t);

/* ---- a work directory's checkpoints (checkpoint_dir.c) ----
 *
 * Checkpoints are "<work_dir>/iter_<N>.h5" (N = the iteration count, decimal),
 * each optionally with a PEFT adapter directory "<work_dir>/iter_<N>_adapter/".
 * "Newest" means the largest N (not the file time), like mmengine's
 * last_checkpoint after an uninterrupted run. Temp files ("*.tmp") and other
 * names are ignored. */

/* "<work_dir>/iter_<N>.h5" into buf. */
int ct_ckpt_iter_path(char *buf, size_t cap, const char *work_dir, int64_t iter);

/* The iterations of the checkpoints present, ascending; *iters malloc'ed
 * (NULL when *n is 0), owned by the caller. A missing work_dir has none. */
int ct_ckpt_list(const char *work_dir, int64_t **iters, size_t *n);

/* `--resume auto`: the newest checkpoint's path into buf and its iteration
 * into *iter (may be NULL); *found false (buf "") when there is none. The file
 * is not opened here: a damaged newest checkpoint fails at ct_ckpt_open with
 * its name rather than silently resuming from an older one. */
int ct_ckpt_find_latest(const char *work_dir, char *buf, size_t cap, int64_t *iter, bool *found);

/* `--resume auto` with damage skipped: the newest checkpoint that passes
 * ct_ckpt_verify, newest first. Each damaged one passed over is reported
 * through note(ctx, path, why) (may be NULL). *found false when there is no
 * intact one (the damaged ones are still reported). */
int ct_ckpt_find_intact(const char *work_dir, char *buf, size_t cap, int64_t *iter, bool *found,
                        void (*note)(void *ctx, const char *path, const char *why), void *ctx);

/* save_total_limit: keeps the newest `limit` checkpoints and deletes older
 * iter_N.h5 files with their iter_N_adapter/ directories. limit <= 0 keeps all
 * (XTuner's -1 "unlimited"; mmengine's max_keep_ckpts <= 0). *removed (may be
 * NULL) gets the number of checkpoints deleted. */
int ct_ckpt_retain(const char *work_dir, int limit, int *removed);

/* Reclaims the temp files of interrupted saves in work_dir: iter_<N>.h5.tmp
 * (the checkpoint writer's) and the ".<name>.tmp-XXXXXX" files and
 * directories of ct_afile/ct_tmpdir_beside (adapters, config.yaml). Only
 * names ctuner creates. *removed (may be NULL) counts them. */
int ct_ckpt_reclaim(const char *work_dir, int *removed);

#endif
