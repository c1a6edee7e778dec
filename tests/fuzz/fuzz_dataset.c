/* Fuzz target: a dataset file through every reader, format and prompt
 * template, encoded with the stories260k tokenizer and packed
 * (ct_dataset_prepare). Input: 4 option bytes, then the file's bytes:
 *   [0] format (auto, alpaca, openai, conversation, pretokenized)
 *   [1] template (index into ct_template_names())
 *   [2] max_length = 2 + [2]
 *   [3] bit 0: .jsonl (else .json), bit 1: pack, bit 2: skip bad records,
 *       bit 3: a default system text, bit 4: shuffle before packing */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/dataset.h"
#include "datasets/dataset_reader.h"
#include "datasets/template.h"
#include "datasets/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static ct_tokenizer *g_tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    if (!g_tok) {
        char p[1024];
        snprintf(p, sizeof p, "%s/stories260k-internlm2", fz_fixtures());
        if (ct_tok_load(p, &g_tok) != 0) {
            fprintf(stderr, "fuzz_dataset: cannot load the tokenizer %s\n", p);
            abort();
        }
    }
    const char *const *names = ct_template_names();
    int n_t = 0;
    while (names[n_t]) n_t++;
    ct_ds_config cfg = ct_ds_config_default();
    cfg.format = (ct_ds_format)(data[0] % 5);
    cfg.template_name = names[data[1] % n_t];
    cfg.max_length = 2 + data[2];
    cfg.pack = data[3] & 2;
    cfg.skip_bad_records = data[3] & 4;
    cfg.system = data[3] & 8 ? "You are a helpful assistant." : NULL;
    cfg.shuffle_before_pack = data[3] & 16;
    cfg.threads = 1;
    cfg.data_path = fz_write(data[3] & 1 ? "data.jsonl" : "data.json", data + 4, size - 4);
    ct_dataset ds;
    memset(&ds, 0, sizeof ds);
    if (ct_dataset_prepare(&cfg, g_tok, &ds) == 0) {
        int32_t V = ct_tok_vocab_size(g_tok);
        int64_t T = ds.max_length;
        fz_assert(T == cfg.max_length, "rows of max_length");
        for (int64_t i = 0; i < ds.sample_off[ds.n_samples]; i++)
            fz_assert(ds.ids[i] >= 0 && ds.ids[i] < V, "ids inside the vocabulary");
        int32_t *ids = malloc(3 * (size_t)T * sizeof *ids), *labels = ids + T, *seg = ids + 2 * T;
        int32_t *pos = malloc((size_t)T * sizeof *pos);
        if (!ids || !pos) abort();
        for (int64_t r = 0; r < ds.rows.n_rows && r < 64; r++) {
            int64_t n = ct_dataset_fill_row(&ds, r, ids, labels, pos, seg);
            fz_assert(n >= 0 && n <= T, "a row holds at most max_length tokens");
        }
        free(ids);
        free(pos);
    }
    ct_dataset_free(&ds);
    return 0;
}
