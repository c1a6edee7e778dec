/* In-memory HDF5 files written out with write(2) (see h5_image.h). */
#include "datasets/h5_image.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_error.h"

/* Bob Jenkins' lookup3 hashlittle (byte-wise), HDF5's metadata checksum. */
#define ROT(x, k) (((x) << (k)) | ((x) >> (32 - (k))))
static uint32_t lookup3(const uint8_t *k, size_t length, uint32_t initval) {
    uint32_t a, b, c;
    a = b = c = 0xdeadbeefu + (uint32_t)length + initval;
    while (length > 12) {
        a += k[0] + ((uint32_t)k[1] << 8) + ((uint32_t)k[2] << 16) + ((uint32_t)k[3] << 24);
        b += k[4] + ((uint32_t)k[5] << 8) + ((uint32_t)k[6] << 16) + ((uint32_t)k[7] << 24);
        c += k[8] + ((uint32_t)k[9] << 8) + ((uint32_t)k[10] << 16) + ((uint32_t)k[11] << 24);
        a -= c; a ^= ROT(c, 4);  c += b;
        b -= a; b ^= ROT(a, 6);  a += c;
        c -= b; c ^= ROT(b, 8);  b += a;
        a -= c; a ^= ROT(c, 16); c += b;
        b -= a; b ^= ROT(a, 19); a += c;
        c -= b; c ^= ROT(b, 4);  b += a;
        length -= 12;
        k += 12;
    }
    switch (length) {
    case 12: c += (uint32_t)k[11] << 24; /* fall through */
    case 11: c += (uint32_t)k[10] << 16; /* fall through */
    case 10: c += (uint32_t)k[9] << 8; /* fall through */
    case 9: c += k[8]; /* fall through */
    case 8: b += (uint32_t)k[7] << 24; /* fall through */
    case 7: b += (uint32_t)k[6] << 16; /* fall through */
    case 6: b += (uint32_t)k[5] << 8; /* fall through */
    case 5: b += k[4]; /* fall through */
    case 4: a += (uint32_t)k[3] << 24; /* fall through */
    case 3: a += (uint32_t)k[2] << 16; /* fall through */
    case 2: a += (uint32_t)k[1] << 8; /* fall through */
    case 1: a += k[0]; break;
    case 0: return c;
    }
    c ^= b; c -= ROT(b, 14);
    a ^= c; a -= ROT(c, 11);
    b ^= a; b -= ROT(a, 25);
    c ^= b; c -= ROT(b, 16);
    a ^= c; a -= ROT(c, 4);
    b ^= a; b -= ROT(a, 14);
    c ^= b; c -= ROT(b, 24);
    return c;
}
/* H5Fget_file_image clears the superblock's file-consistency flags of an
 * image taken from an open file but (HDF5 1.10) leaves the superblock's
 * checksum as computed with the flags set, so the image would not open
 * ("incorrect metadata checksum"). Versions 2 and 3 (the 1.8+ format):
 * signature(8) version(1) sizeof_offsets(1) sizeof_lengths(1) flags(1),
 * four addresses, then the checksum of all of that. */
static void fix_superblock(uint8_t *img, size_t n) {
    static const uint8_t sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (n < 12 || memcmp(img, sig, 8) != 0 || (img[8] != 2 && img[8] != 3)) return;
    size_t o = img[9], len = 12 + 4 * o;
    if ((o != 4 && o != 8) || n < len + 4) return;
    img[11] = 0;
    uint32_t c = lookup3(img, len, 0);
    for (int i = 0; i < 4; i++) img[len + (size_t)i] = (uint8_t)(c >> (8 * i));
}

int ct_h5_superblock_version(const char *path) {
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char b[9];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    ssize_t n = read(fd, b, sizeof b);
    close(fd);
    return n == (ssize_t)sizeof b && memcmp(b, sig, sizeof sig) == 0 ? b[8] : -1;
}

hid_t ct_h5_mem_create(const char *label, hid_t fapl_in) {
    hid_t fapl = fapl_in == H5P_DEFAULT ? H5Pcreate(H5P_FILE_ACCESS) : H5Pcopy(fapl_in);
    if (fapl < 0) return -1;
    hid_t f = -1;
    /* 1 MiB growth steps; backing_store 0: the image never goes to disk by itself. */
    if (H5Pset_fapl_core(fapl, (size_t)1 << 20, 0) >= 0) f = H5Fcreate(label, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    return f;
}

int ct_h5_mem_write(hid_t file, const char *tmp_path) {
    if (H5Fflush(file, H5F_SCOPE_GLOBAL) < 0) return ct_errorf(CT_ERUNTIME, "%s: cannot finish the HDF5 image", tmp_path);
    ssize_t size = H5Fget_file_image(file, NULL, 0);
    if (size <= 0) return ct_errorf(CT_ERUNTIME, "%s: cannot size the HDF5 image", tmp_path);
    char *img = malloc((size_t)size); /* [size] the file's bytes */
    if (!img) return ct_errorf(CT_ERUNTIME, "%s: out of memory for a %zd-byte HDF5 image", tmp_path, size);
    if (H5Fget_file_image(file, img, (size_t)size) != size) {
        free(img);
        return ct_errorf(CT_ERUNTIME, "%s: cannot copy the HDF5 image", tmp_path);
    }
    fix_superblock((uint8_t *)img, (size_t)size);
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int e = fd < 0 ? errno : 0;
    for (size_t at = 0; !e && at < (size_t)size;) {
        ssize_t w = write(fd, img + at, (size_t)size - at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) e = w < 0 ? errno : ENOSPC;
        else at += (size_t)w;
    }
    if (!e && fsync(fd) != 0) e = errno;
    if (fd >= 0 && close(fd) != 0 && !e) e = errno;
    free(img);
    if (e) {
        if (fd >= 0) unlink(tmp_path);
        return ct_errorf(CT_ERUNTIME, "%s: cannot write: %s", tmp_path, strerror(e));
    }
    return CT_OK;
}
