/* SHA-256 (FIPS 180-4), for content keys: the dataset cache names and checks
 * its files by the digest of everything that shapes the tokenized data.
 *
 * Ownership: the context is a plain value the caller owns; no allocation. */
#ifndef CT_SHA256_H
#define CT_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t n_bytes;     /* bytes hashed so far */
    uint8_t block[64];    /* pending partial block, `fill` bytes */
    size_t fill;
} ct_sha256;

void ct_sha256_init(ct_sha256 *s);
void ct_sha256_update(ct_sha256 *s, const void *data, size_t n);
void ct_sha256_final(ct_sha256 *s, uint8_t digest[32]);

/* One-shot digest of a buffer. */
void ct_sha256_buf(const void *data, size_t n, uint8_t digest[32]);

/* Lower-case hex of a digest into hex[65] (NUL-terminated). */
void ct_sha256_hex(const uint8_t digest[32], char hex[65]);

#endif
