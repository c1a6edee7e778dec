/* Conversation turns -> token ids and labels, exactly as XTuner's encode step
 * (../shared/docs/TEMPLATES.md "From turns to ids and labels"): BOS at the start and after a
 * turn that ended with EOS (when the tokenizer adds a BOS: it has one and
 * add_bos_token is true); each turn's input text (SYSTEM + INSTRUCTION) masked;
 * output + SUFFIX trained (masked when the turn's output is untrained); EOS
 * after the output when the template's suffix is not the EOS (trained like the
 * output); SEP after every turn, masked; everything cut at max_length.
 *
 * Labels here are ALIGNED (Hugging Face style): labels[t] is ids[t] when token
 * t is trained, else -100. The loss wants them shifted (label t = the token
 * that follows token t); ct_labels_shift (packing.h) does that once, per
 * packed row, where sample boundaries are known.
 *
 * Ownership: the caller owns the ct_ids vectors; nothing is retained. */
#ifndef CT_ENCODE_H
#define CT_ENCODE_H

#include <stdbool.h>
#include <stdint.h>

#include "datasets/dataset_reader.h"
#include "datasets/template.h"
#include "datasets/tokenizer.h"

#define CT_IGNORE_INDEX (-100)

typedef struct {
    const ct_tokenizer *tok;
    const ct_template *tmpl; /* may be NULL for pretokenized conversations only */
    const char *system;      /* default system text for a first turn without one; NULL: none */
    int64_t max_length;      /* > 0 */
} ct_encode_opts;

typedef struct {
    bool truncated;    /* the sample was longer than max_length and was cut */
    int64_t n_trained; /* labels >= 0 left after the cut (0: XTuner drops the sample) */
} ct_encode_info;

/* Encodes c into *ids and *labels (both emptied first; labels->n == ids->n
 * afterwards). Pretokenized conversations are copied and cut. */
int ct_encode_conv(const ct_encode_opts *o, const ct_conv *c, ct_ids *ids, ct_ids *labels, ct_encode_info *info);

#endif
