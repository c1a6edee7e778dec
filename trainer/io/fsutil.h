/* File-system helpers shared by every writer: atomic files (temp name in the
 * same directory, fsync, rename), directories built under a temp name and
 * renamed into place, copies, path joins, and JSON files read/written with
 * line/column errors. Nothing here leaves a half-written file under the final
 * name: on failure the temp file or directory is removed.
 *
 * Ownership: buffers returned through `char **` are malloc'ed and owned by the
 * caller (free()); json_t results carry one reference owned by the caller. */
#ifndef CT_FSUTIL_H
#define CT_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#define CT_PATH_MAX 4096

/* "a/b" into buf (no doubled '/'); CT_EINPUT when it does not fit. */
int ct_path_join(char *buf, size_t cap, const char *dir, const char *name);

bool ct_path_exists(const char *path);
bool ct_path_is_dir(const char *path);
/* *empty = true when `dir` has no entries but . and ..; errors if unreadable. */
int ct_dir_is_empty(const char *dir, bool *empty);
/* mkdir -p (mode 0755); fine when it already exists as a directory. */
int ct_mkdirs(const char *path);
/* Removes a file or a whole directory tree (rm -rf); missing is not an error. */
int ct_remove_tree(const char *path);

/* A file being written under a temp name beside its final path. */
typedef struct {
    FILE *fp;
    char path[CT_PATH_MAX]; /* final name */
    char tmp[CT_PATH_MAX];  /* "<dir>/.<name>.tmp-XXXXXX" */
} ct_atomic_file;

/* Creates the temp file (0644). On error nothing exists on disk. */
int ct_afile_open(ct_atomic_file *af, const char *path);
int ct_afile_write(ct_atomic_file *af, const void *data, size_t n);
/* Flush, fsync, rename to the final name, fsync the directory. The temp file
 * is gone afterwards whether or not this succeeds. */
int ct_afile_commit(ct_atomic_file *af);
/* Closes and unlinks the temp file; safe to call on a committed/closed one. */
void ct_afile_abort(ct_atomic_file *af);

/* Whole-file helpers. */
int ct_file_write_atomic(const char *path, const void *data, size_t n);
/* Reads a whole file; *data gets a trailing NUL (not counted in *n). */
int ct_file_read_all(const char *path, char **data, size_t *n);
/* Copies src to dst atomically (dst must not be a directory). */
int ct_file_copy(const char *src, const char *dst);

/* Temp directory "<parent>/.<base>.tmp-XXXXXX" beside `final_dir` (parents of
 * final_dir are created), for building a directory and renaming it in place. */
int ct_tmpdir_beside(const char *final_dir, char *buf, size_t cap);
/* Renames tmp_dir to final_dir. final_dir may be missing or an empty directory;
 * anything else is CT_EINPUT and tmp_dir is left for the caller to remove. */
int ct_dir_commit(const char *tmp_dir, const char *final_dir);

/* Reclaims our own leftovers of interrupted writes in `dir`: the entries
 * named ".<name>.tmp-XXXXXX" that ct_afile_open and ct_tmpdir_beside create
 * (files or whole directories). With `base` non-NULL only ".<base>.tmp-XXXXXX"
 * (the temp names of one output, e.g. a merge's --out). Nothing else is
 * touched. A missing dir has none. *removed (may be NULL) counts them. */
int ct_reclaim_temps(const char *dir, const char *base, int *removed);
/* ct_reclaim_temps for the temp names of `final_path` (a file or a
 * directory) in its parent directory. */
int ct_reclaim_temps_of(const char *final_path, int *removed);

/* Parses a JSON file (flags as for json_load_file, e.g. JSON_REJECT_DUPLICATES).
 * NULL with CT_EINPUT "path:line:column: text" on bad JSON, or with the OS
 * error when the file cannot be read. */
json_t *ct_json_load(const char *path, size_t flags);
/* Writes `j` with 2-space indentation and a final newline, atomically.
 * `flags` adds to JSON_INDENT(2) (e.g. JSON_SORT_KEYS). */
int ct_json_write_atomic(const char *path, const json_t *j, size_t flags);

#endif
