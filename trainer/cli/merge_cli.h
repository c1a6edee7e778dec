/* What the merge and quantize commands share around ct_merge (merge_cli.c). */
#ifndef CT_MERGE_CLI_H
#define CT_MERGE_CLI_H

#include "trainer/model/merge.h"

/* ct_merge with SIGINT/SIGTERM turned into a clean stop before the next tensor
 * (no output left, CT_ERUNTIME): sets o->progress to the stop check and
 * restores the previous handlers afterwards. */
int ct_merge_until_signal(ct_merge_options *o, ct_merge_report *report);
/* Sets o->dtype from a --dtype value (bf16, fp16, fp32 and their aliases);
 * CT_EINPUT naming the value otherwise. */
int ct_merge_parse_dtype(const char *name, ct_merge_options *o);
/* "bf16", "fp16" or "fp32", as the commands print the output dtype. */
const char *ct_merge_dtype_label(ct_dtype dt);

#endif
