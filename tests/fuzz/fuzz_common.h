/* Helpers shared by the fuzz targets (tests/fuzz/fuzz_*.c).
 *
 * Each target defines LLVMFuzzerTestOneInput and is linked either with
 * libFuzzer (clang, -DCT_FUZZ=ON: tests/fuzz/run.sh) or with replay_main.c
 * (any compiler: the ctest fuzz_replay_<target> runs it over
 * tests/fuzz/regressions/<target>/). Most parsers read files, so the input is
 * written to a scratch file first: fz_write. */
#ifndef CT_FUZZ_COMMON_H
#define CT_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "datasets/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A private scratch directory of this process (made once, removed at exit). */
const char *fz_dir(void);
/* Writes data to fz_dir()/name and returns the path (a static buffer per call
 * site is not needed: the path lives until the next fz_write of that name). */
const char *fz_write(const char *name, const uint8_t *data, size_t size);
/* The shared fixtures: $CT_FIXTURES, else the build's CT_FIXTURES. */
const char *fz_fixtures(void);
/* Aborts with a message (a finding) when cond is false. */
void fz_assert(int cond, const char *what);
/* A fixture's tokenizer, loaded once and kept for the process: which 0 is
 * stories260k's, 1 InternLM2-chat-7b's (added tokens, 92k pieces). Aborts
 * when it does not load (a broken set-up, not a finding). */
const ct_tokenizer *fz_fixture_tokenizer(int which);
/* Every id of ids lies in t's vocabulary and the ids decode again. */
void fz_check_encoded(const ct_tokenizer *t, const ct_ids *ids);

#endif
