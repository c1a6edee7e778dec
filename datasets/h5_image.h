/* HDF5 files built in memory and written out by us.
 *
 * HDF5's sec2 driver cannot survive a full disk: a failed write leaves the
 * file open inside the library after H5Fclose fails, and the library's
 * exit-time cleanup then flushes it again and crashes (SIGSEGV, exit 139).
 * So every HDF5 file ctuner writes is built with the core driver (no backing
 * store: nothing touches the disk), and its finished image is written with
 * write(2) into a temp file the caller renames into place. A full disk is
 * then an ordinary write error, and HDF5 never holds a file it cannot close.
 *
 * Ownership: ct_h5_mem_create returns a file id the caller closes (H5Fclose). */
#ifndef CT_H5_IMAGE_H
#define CT_H5_IMAGE_H

#include <hdf5.h>

/* An in-memory HDF5 file named `label` (for messages only); `fapl` (may be
 * H5P_DEFAULT) supplies further access properties. Negative on failure. */
hid_t ct_h5_mem_create(const char *label, hid_t fapl);

/* Flushes `file` (an in-memory file from ct_h5_mem_create) and writes its
 * whole image to `tmp_path` (created or truncated, 0644), then fsyncs it.
 * The file stays open. CT_OK, or CT_ERUNTIME naming tmp_path and the OS error
 * (ENOSPC: "No space left on device"); on error tmp_path is removed. */
int ct_h5_mem_write(hid_t file, const char *tmp_path);

/* The superblock version of the HDF5 file at `path` (its signature at byte
 * 0, as ours are written), or -1 when it is not one. Versions 2 and 3 (the
 * 1.8+ format both writers use) checksum the superblock and the object
 * headers; readers refuse older ones before HDF5 believes their unchecked
 * sizes. */
int ct_h5_superblock_version(const char *path);

#endif
