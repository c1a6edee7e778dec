/* Dataset readers and formats: JSON array vs JSON Lines splitting (record
 * lines), the four formats' records -> turns incl. XTuner's openai edge cases
 * (leading assistant skipped, system carried to the next turn, consecutive
 * users concatenated, loss:false, trailing user ignored), alpaca <nooutput>
 * dropped, truncation and dropped-sample counting, the same result for 1 and
 * 2 threads, and a table of malformed files: each is CT_EINPUT naming
 * file:line, the record and the field, or a counted warning when skipping. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "datasets/dataset.h"
#include "datasets/dataset_reader.h"
#include "datasets/encode.h"
#include "datasets/template.h"
#include "testutil.h"

#define DATA CT_SOURCE_DIR "/tests/data/datasets/"

static char tmpdir[64];

static const char *write_tmp(const char *name, const char *content, size_t n) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    fwrite(content, 1, n, f);
    fclose(f);
    return path;
}

static void remove_tmp(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    unlink(path);
}

/* ---- splitting ---- */

static void test_split(void) {
    ct_ds_file f;
    CHECK_OK(ct_ds_file_read(DATA "alpaca.json", &f));
    CHECK(!f.json_lines && f.n == 4, "alpaca.json: lines %d n %zu", f.json_lines, f.n);
    if (f.n == 4) CHECK(f.recs[0].line == 2 && f.recs[1].line == 7 && f.recs[3].line == 17, "array record lines");
    ct_ds_file_free(&f);
    CHECK_OK(ct_ds_file_read(DATA "alpaca.jsonl", &f));
    CHECK(f.json_lines && f.n == 4, "alpaca.jsonl: lines %d n %zu", f.json_lines, f.n);
    if (f.n == 4) CHECK(f.recs[1].line == 3 && f.recs[3].line == 5, "JSON Lines record lines (blank line 2)");
    ct_ds_file_free(&f);
}

/* ---- records -> turns ---- */

static ct_conv parse(const char *path, size_t i, ct_ds_format fmt, bool *dropped) {
    ct_ds_file f;
    ct_conv c = {0};
    *dropped = false;
    CHECK_OK(ct_ds_file_read(path, &f));
    if (i < f.n) {
        ct_ds_parse_opts o = {false, 92544};
        CHECK_OK(ct_ds_record_parse(&f, i, fmt, &o, &c, dropped));
    }
    ct_ds_file_free(&f);
    return c;
}

static bool streq(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

static void check_turn(const char *what, const ct_conv *c, size_t k, const char *sys, const char *in,
                       const char *out, bool loss) {
    CHECK(k < c->n_turns, "%s: only %zu turns", what, c->n_turns);
    if (k >= c->n_turns) return;
    const ct_turn *t = &c->turns[k];
    CHECK(streq(t->system, sys) && streq(t->input, in) && streq(t->output, out) && t->output_loss == loss,
          "%s turn %zu: system [%s] input [%s] output [%s] loss %d", what, k, t->system ? t->system : "(null)",
          t->input, t->output, t->output_loss);
}

static void test_formats(void) {
    bool dropped;
    static const struct {
        const char *file, *what;
        ct_ds_format want;
    } detect[] = {{DATA "openai.jsonl", "detect openai", CT_DS_OPENAI},
                  {DATA "conversation.json", "detect conversation", CT_DS_CONVERSATION},
                  {DATA "pretokenized.jsonl", "detect pretokenized", CT_DS_PRETOKENIZED},
                  {DATA "alpaca.jsonl", "detect alpaca", CT_DS_ALPACA}};
    for (size_t i = 0; i < sizeof detect / sizeof detect[0]; i++) {
        ct_ds_file f;
        ct_ds_format fmt;
        CHECK_OK(ct_ds_file_read(detect[i].file, &f));
        CHECK(ct_ds_detect_format(&f, 0, &fmt) == 0 && fmt == detect[i].want, "%s", detect[i].what);
        ct_ds_file_free(&f);
    }

    /* alpaca: XTuner joins instruction and input with "\n" even when input is "". */
    ct_conv c = parse(DATA "alpaca.jsonl", 0, CT_DS_ALPACA, &dropped);
    CHECK(c.n_turns == 1 && !dropped, "alpaca 1 turn");
    check_turn("alpaca empty input", &c, 0, NULL, "Give three tips for staying healthy.\n",
               "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep.", true);
    ct_conv_free(&c);
    c = parse(DATA "alpaca.jsonl", 1, CT_DS_ALPACA, &dropped);
    check_turn("alpaca input", &c, 0, NULL, "Translate to French.\nGood morning", "Bonjour", true);
    ct_conv_free(&c);
    c = parse(DATA "alpaca.jsonl", 2, CT_DS_ALPACA, &dropped);
    CHECK(dropped && c.n_turns == 0, "alpaca <nooutput> dropped");
    ct_conv_free(&c);
    c = parse(DATA "alpaca.json", 3, CT_DS_ALPACA, &dropped);
    check_turn("alpaca Chinese", &c, 0, NULL, "把这句话翻译成英文。\n今天天气很好。", "The weather is nice today.", true);
    ct_conv_free(&c);
    {
        ct_ds_file f;
        CHECK_OK(ct_ds_file_read(DATA "alpaca.jsonl", &f));
        ct_ds_parse_opts o = {true, 0};
        CHECK_OK(ct_ds_record_parse(&f, 0, CT_DS_ALPACA, &o, &c, &dropped));
        check_turn("alpaca drop empty input", &c, 0, NULL, "Give three tips for staying healthy.",
                   "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep.", true);
        ct_conv_free(&c);
        ct_ds_file_free(&f);
    }

    /* openai */
    c = parse(DATA "openai.jsonl", 0, CT_DS_OPENAI, &dropped);
    CHECK(c.n_turns == 1, "openai 0: %zu turns", c.n_turns);
    check_turn("openai system", &c, 0, "You are a bot.", "Hello", "Hi there", true);
    ct_conv_free(&c);
    c = parse(DATA "openai.jsonl", 1, CT_DS_OPENAI, &dropped);
    CHECK(c.n_turns == 1, "openai 1 (leading assistants skipped): %zu turns", c.n_turns);
    check_turn("openai leading assistant", &c, 0, NULL, "Hello", "Hi there", true);
    ct_conv_free(&c);
    c = parse(DATA "openai.jsonl", 2, CT_DS_OPENAI, &dropped);
    CHECK(c.n_turns == 2, "openai 2 (trailing user ignored): %zu turns", c.n_turns);
    check_turn("openai users concatenated, loss false", &c, 0, NULL, "How are you?", "Fine, thanks.", false);
    check_turn("openai system carried, loss \"True\"", &c, 1, "Be brief.", "Hello", "Hi there", true);
    ct_conv_free(&c);
    c = parse(DATA "openai.jsonl", 3, CT_DS_OPENAI, &dropped);
    CHECK(dropped && c.n_turns == 0, "openai without answer dropped");
    ct_conv_free(&c);

    /* conversation */
    c = parse(DATA "conversation.json", 0, CT_DS_CONVERSATION, &dropped);
    CHECK(c.n_turns == 2, "conversation 0: %zu turns", c.n_turns);
    check_turn("conversation t0", &c, 0, "You are a bot.", "Hello", "Hi there", true);
    check_turn("conversation t1", &c, 1, NULL, "How are you?", "Fine, thanks.", true);
    ct_conv_free(&c);
    c = parse(DATA "conversation.json", 1, CT_DS_CONVERSATION, &dropped);
    check_turn("conversation nulls", &c, 0, NULL, "", "Once upon a time", true);
    ct_conv_free(&c);
    c = parse(DATA "conversation.json", 2, CT_DS_CONVERSATION, &dropped);
    CHECK(dropped, "empty conversation dropped");
    ct_conv_free(&c);

    /* pretokenized: labels given, or a copy of input_ids */
    c = parse(DATA "pretokenized.jsonl", 0, CT_DS_PRETOKENIZED, &dropped);
    int32_t l0[] = {-100, -100, 13195, 1194, 2};
    CHECK(c.pretokenized && c.ids.n == 5 && c.labels.n == 5 && memcmp(c.labels.v, l0, sizeof l0) == 0,
          "pretokenized labels");
    ct_conv_free(&c);
    c = parse(DATA "pretokenized.jsonl", 1, CT_DS_PRETOKENIZED, &dropped);
    CHECK(c.labels.n == 5 && memcmp(c.labels.v, c.ids.v, 5 * sizeof(int32_t)) == 0, "labels default to ids");
    ct_conv_free(&c);
}

/* ---- the whole preparation ---- */

static ct_ds_config config_for(const char *path, const char *tok_path) {
    ct_ds_config cfg = ct_ds_config_default();
    cfg.data_path = path;
    cfg.pack = false;
    cfg.shuffle_before_pack = false;
    cfg.tokenizer_path = tok_path;
    return cfg;
}

/* Sample s of ds equals the encoding of the given turns. */
static void check_sample(const char *what, const ct_dataset *ds, int64_t s, const ct_tokenizer *tok,
                         const ct_turn *turns, size_t n_turns, int64_t max_length) {
    ct_encode_opts o = {tok, ct_template_find("internlm2_chat"), NULL, max_length};
    ct_conv c = {.turns = (ct_turn *)turns, .n_turns = n_turns};
    ct_ids ids = {0}, labels = {0};
    ct_encode_info info;
    CHECK_OK(ct_encode_conv(&o, &c, &ids, &labels, &info));
    const int32_t *gi, *gl;
    int64_t n = ct_dataset_sample(ds, s, &gi, &gl);
    CHECK(n == (int64_t)ids.n && n > 0 && memcmp(gi, ids.v, ids.n * 4) == 0 && memcmp(gl, labels.v, ids.n * 4) == 0,
          "%s: sample %lld (%lld tokens, want %zu)", what, (long long)s, (long long)n, ids.n);
    ct_ids_free(&ids);
    ct_ids_free(&labels);
}

static void test_prepare(const ct_tokenizer *tok, const char *tok_path) {
    ct_dataset ds;
    ct_ds_config cfg = config_for(DATA "openai.jsonl", tok_path);
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &ds));
    CHECK(ds.stats.n_records == 4 && ds.n_samples == 3 && ds.stats.n_dropped_empty == 1 && ds.rows.n_rows == 3,
          "openai stats: records %lld samples %lld dropped %lld rows %lld", (long long)ds.stats.n_records,
          (long long)ds.n_samples, (long long)ds.stats.n_dropped_empty, (long long)ds.rows.n_rows);
    ct_turn t0 = {(char *)"You are a bot.", (char *)"Hello", (char *)"Hi there", true};
    ct_turn t2[] = {{NULL, (char *)"How are you?", (char *)"Fine, thanks.", false},
                    {(char *)"Be brief.", (char *)"Hello", (char *)"Hi there", true}};
    check_sample("openai", &ds, 0, tok, &t0, 1, 2048);
    check_sample("openai", &ds, 2, tok, t2, 2, 2048);
    ct_dataset_free(&ds);

    /* alpaca JSON array == the same records as JSON Lines; <nooutput> counted */
    ct_dataset a, b;
    cfg = config_for(DATA "alpaca.json", tok_path);
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &a));
    cfg.data_path = DATA "alpaca.jsonl";
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &b));
    CHECK(a.n_samples == 3 && b.n_samples == 3 && a.stats.n_dropped_empty == 1, "alpaca samples %lld/%lld",
          (long long)a.n_samples, (long long)b.n_samples);
    CHECK(a.sample_off[3] == b.sample_off[3] && memcmp(a.ids, b.ids, (size_t)a.sample_off[3] * 4) == 0 &&
              memcmp(a.labels, b.labels, (size_t)a.sample_off[3] * 4) == 0,
          "JSON array and JSON Lines give the same tokens");
    ct_turn al = {NULL, (char *)"Translate to French.\nGood morning", (char *)"Bonjour", true};
    check_sample("alpaca", &a, 1, tok, &al, 1, 2048);
    ct_dataset_free(&b);

    /* Truncation and dropping: at a smaller max_length each sample must be
     * the prefix of its full encoding, kept when that prefix still trains
     * something (then counted as truncated when cut), else dropped. */
    const int64_t maxes[] = {18, 24, 40};
    for (int m = 0; m < 3; m++) {
        int64_t ml = maxes[m], want_kept = 0, want_trunc = 0, want_dropped = 0;
        cfg.max_length = ml;
        CHECK_OK(ct_dataset_prepare(&cfg, tok, &b));
        for (int64_t s = 0; s < a.n_samples; s++) {
            const int32_t *ids, *labels;
            int64_t n = ct_dataset_sample(&a, s, &ids, &labels), cut = n < ml ? n : ml;
            int trained = 0;
            for (int64_t t = 0; t < cut; t++) trained += labels[t] >= 0;
            if (!trained) {
                want_dropped++;
                continue;
            }
            want_trunc += n > ml;
            const int32_t *bi, *bl;
            int64_t bn = ct_dataset_sample(&b, want_kept++, &bi, &bl);
            CHECK(bn == cut && memcmp(bi, ids, (size_t)cut * 4) == 0 && memcmp(bl, labels, (size_t)cut * 4) == 0,
                  "max_length %lld: sample %lld is not the cut of the full one", (long long)ml, (long long)s);
        }
        CHECK(b.n_samples == want_kept && b.stats.n_truncated == want_trunc &&
                  b.stats.n_dropped_untrained == want_dropped && b.stats.n_dropped_empty == 1,
              "max_length %lld: kept %lld/%lld truncated %lld/%lld dropped %lld/%lld", (long long)ml,
              (long long)b.n_samples, (long long)want_kept, (long long)b.stats.n_truncated, (long long)want_trunc,
              (long long)b.stats.n_dropped_untrained, (long long)want_dropped);
        if (m == 0) CHECK(want_dropped > 0, "max_length 18 drops a sample");
        if (m == 1) CHECK(want_trunc > 0, "max_length 24 cuts a sample");
        ct_dataset_free(&b);
    }
    ct_dataset_free(&a);

    /* pretokenized: the all-masked record is dropped; shifted targets counted */
    cfg = config_for(DATA "pretokenized.jsonl", tok_path);
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &a));
    CHECK(a.n_samples == 2 && a.stats.n_dropped_untrained == 1 && a.stats.n_targets == 3 + 4,
          "pretokenized: samples %lld dropped %lld targets %lld", (long long)a.n_samples,
          (long long)a.stats.n_dropped_untrained, (long long)a.stats.n_targets);
    ct_dataset_free(&a);

    /* conversation */
    cfg = config_for(DATA "conversation.json", tok_path);
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &a));
    ct_turn ct[] = {{(char *)"You are a bot.", (char *)"Hello", (char *)"Hi there", true},
                    {NULL, (char *)"How are you?", (char *)"Fine, thanks.", true}};
    check_sample("conversation", &a, 0, tok, ct, 2, 2048);
    CHECK(a.n_samples == 2 && a.stats.n_dropped_empty == 1, "conversation counts");
    ct_dataset_free(&a);
}

/* Thread count never changes the result; strict mode names the first bad record. */
static void test_threads(const ct_tokenizer *tok, const char *tok_path) {
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < 400; i++)
        n += (size_t)snprintf(buf + n, cap - n,
                              "{\"instruction\": \"Question %d: what is %d + %d?\", \"input\": \"%s\", "
                              "\"output\": \"It is %d. 答案是%d。\"}\n",
                              i, i, 2 * i, i % 3 ? "" : "Show the steps.", 3 * i, 3 * i);
    const char *path = write_tmp("many.jsonl", buf, n);
    ct_ds_config cfg = config_for(path, tok_path);
    cfg.pack = true;
    cfg.shuffle_before_pack = true;
    cfg.seed = 7;
    cfg.max_length = 256;
    ct_dataset a, b;
    cfg.threads = 1;
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &a));
    cfg.threads = 2;
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &b));
    CHECK(a.n_samples == 400 && b.n_samples == 400 && a.sample_off[400] == b.sample_off[400] &&
              memcmp(a.ids, b.ids, (size_t)a.sample_off[400] * 4) == 0 &&
              memcmp(a.labels, b.labels, (size_t)a.sample_off[400] * 4) == 0 && a.rows.n_rows == b.rows.n_rows &&
              memcmp(a.rows.row_samples, b.rows.row_samples, 400 * 8) == 0,
          "1 and 2 threads give the same dataset");
    ct_dataset_free(&a);
    ct_dataset_free(&b);

    /* Two bad lines: the first in file order is reported. */
    char *l = buf;
    for (int line = 1; line < 120; line++) l = strchr(l, '\n') + 1;
    memcpy(strstr(l, "\"output\""), "\"outpux\"", 8); /* line 120 loses its output */
    for (int line = 120; line < 300; line++) l = strchr(l, '\n') + 1;
    l[1] = '#'; /* line 300 is no JSON */
    path = write_tmp("many.jsonl", buf, n);
    CHECK(ct_dataset_prepare(&cfg, tok, &a) == CT_EINPUT, "bad lines");
    CHECK(strstr(ct_last_error(), "many.jsonl:120: record 120: field 'output'"), "first bad: %s", ct_last_error());
    cfg.skip_bad_records = true;
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &a));
    CHECK(a.n_samples == 398 && a.stats.n_skipped == 2 && strstr(a.stats.first_warning, "many.jsonl:120:"),
          "skipping: %lld samples, %lld skipped, first [%s]", (long long)a.n_samples, (long long)a.stats.n_skipped,
          a.stats.first_warning);
    ct_dataset_free(&a);
    remove_tmp("many.jsonl");
    free(buf);
}

/* ---- malformed input ---- */

typedef struct {
    const char *name, *content, *format; /* format NULL: auto */
    const char *want1, *want2;           /* substrings of the message */
} bad_case;

/* Columns are 1-based bytes, checked by hand: the '}' that has no value
 * (bad_json), the 0xe9 byte (utf8), the end of the token after which ':' was
 * expected (bad_in_array). */
static const bad_case bad_cases[] = {
    {"empty.jsonl", "", NULL, "empty.jsonl: the dataset file is empty", NULL},
    {"blank.json", "  \n\n ", NULL, "blank.json: the dataset file is empty", NULL},
    {"garbage.txt", "\nhello", NULL, "garbage.txt:2:1: expected a JSON array", NULL},
    {"bad_json.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"output\": }\n", NULL,
     "bad_json.jsonl:2:32: record 2: invalid JSON", NULL},
    {"missing.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"a\"}\n", NULL,
     "missing.jsonl:3: record 2: field 'output': missing", NULL},
    {"wrong_type.jsonl", "{\"instruction\": 5, \"output\": \"b\"}\n", "alpaca",
     "wrong_type.jsonl:1: record 1: field 'instruction': expected a string, got an integer", NULL},
    {"role.jsonl",
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"tool\", \"content\": \"b\"}]}\n", NULL,
     "role.jsonl:1: record 1: field 'messages[1].role': unknown role 'tool'", NULL},
    {"content.jsonl", "{\"messages\": [{\"role\": \"user\"}]}\n", NULL,
     "content.jsonl:1: record 1: field 'messages[0].content': missing", NULL},
    {"messages_type.jsonl", "{\"messages\": \"hi\"}\n", NULL,
     "messages_type.jsonl:1: record 1: field 'messages': expected an array, got a string", NULL},
    {"loss.jsonl",
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\", "
     "\"loss\": 1}]}\n",
     NULL, "loss.jsonl:1: record 1: field 'messages[1].loss': expected true or false", NULL},
    {"utf8.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"caf\xe9\", \"output\": \"b\"}\n",
     NULL, "utf8.jsonl:2:21: record 2: invalid UTF-8 (byte 0xe9", NULL},
    {"array_field.json", "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n\n  {\"instruction\": \"a\",\n   "
     "\"output\": [1]}\n]\n", NULL, "array_field.json:4: record 2: field 'output': expected a string, got an array",
     NULL},
    {"unterminated.json", "[\n{\"instruction\": \"a\", \"output\": \"b\"},\n{\"instruction\": \"a\"", NULL,
     "unterminated.json:3: the JSON array is not closed", "record 2"},
    {"trailing_comma.json", "[{\"instruction\": \"a\", \"output\": \"b\"},\n]", NULL,
     "trailing_comma.json:2:1: empty record 2", NULL},
    {"after.json", "[{\"instruction\": \"a\", \"output\": \"b\"}]\n{}", NULL,
     "after.json:2:1: text after the closing ']'", NULL},
    {"no_records.json", "[ ]", NULL, "no_records.json: the JSON array has no records", NULL},
    {"not_object.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n[1, 2]\n", "alpaca",
     "not_object.jsonl:2: record 2: expected a JSON object, got an array", NULL},
    {"not_object.json", "[1, 2]", "alpaca", "not_object.json:1: record 1: expected a JSON object, got an integer",
     NULL},
    {"unknown.jsonl", "{\"text\": \"a\"}\n", NULL, "unknown.jsonl:1: record 1: cannot tell the dataset format", NULL},
    {"turn_input.json", "[{\"conversation\": [{\"output\": \"b\"}]}]", NULL,
     "turn_input.json:1: record 1: field 'conversation[0].input': missing", NULL},
    {"labels_len.jsonl", "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n", NULL,
     "labels_len.jsonl:1: record 1: field 'labels': has 2 entries but input_ids has 3", NULL},
    {"id_range.jsonl", "{\"input_ids\": [1, 100000]}\n", NULL,
     "id_range.jsonl:1: record 1: field 'input_ids[1]': 100000 is not a token id", NULL},
    {"id_type.jsonl", "{\"input_ids\": [1, 2.5]}\n", NULL,
     "id_type.jsonl:1: record 1: field 'input_ids[1]': expected an integer, got a number", NULL},
    {"all_nooutput.jsonl", "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"<nooutput>\"}\n", NULL,
     "all_nooutput.jsonl: no sample left to train: 1 records, 0 skipped as bad, 1 without output", NULL},
    {"nul.jsonl", "{\"instruction\": \"a\\u0000b\", \"output\": \"b\"}\n", NULL, "nul.jsonl:1:",
     "record 1: invalid JSON"},
    {"bad_in_array.json", "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"a\",\n   \"output\" \"b\"}\n]",
     NULL, "bad_in_array.json:4:15: record 2: invalid JSON", NULL},
};

static void test_bad_input(const ct_tokenizer *tok, const char *tok_path) {
    for (size_t k = 0; k < sizeof bad_cases / sizeof bad_cases[0]; k++) {
        const bad_case *bc = &bad_cases[k];
        const char *path = write_tmp(bc->name, bc->content, strlen(bc->content));
        ct_ds_config cfg = config_for(path, tok_path);
        if (bc->format) CHECK_OK(ct_ds_format_parse(bc->format, &cfg.format));
        ct_dataset ds;
        int rc = ct_dataset_prepare(&cfg, tok, &ds);
        CHECK(rc == CT_EINPUT, "%s: rc %d", bc->name, rc);
        if (rc == CT_OK) ct_dataset_free(&ds);
        CHECK(strstr(ct_last_error(), bc->want1) && (!bc->want2 || strstr(ct_last_error(), bc->want2)),
              "%s: message [%s], want [%s]", bc->name, ct_last_error(), bc->want1);
        remove_tmp(bc->name);
    }
    ct_ds_config cfg = config_for("/nonexistent/data.jsonl", tok_path);
    ct_dataset ds;
    CHECK(ct_dataset_prepare(&cfg, tok, &ds) == CT_EINPUT &&
              strstr(ct_last_error(), "/nonexistent/data.jsonl: cannot open the dataset file"),
          "missing file: %s", ct_last_error());
    cfg.data_path = DATA "alpaca.jsonl";
    cfg.template_name = "chatml";
    CHECK(ct_dataset_prepare(&cfg, tok, &ds) == CT_EINPUT && strstr(ct_last_error(), "unknown prompt template"),
          "bad template: %s", ct_last_error());
    ct_ds_format fmt;
    CHECK(ct_ds_format_parse("sharegpt", &fmt) == CT_EINPUT && strstr(ct_last_error(), "alpaca, openai"),
          "bad format name");

    /* Skipping: each bad record becomes a counted warning; the good ones stay. */
    const char *mixed = "{\"instruction\": \"a\", \"output\": \"b\"}\n"
                        "{\"instruction\": \"a\", \"output\": }\n"
                        "{\"instruction\": 5, \"output\": \"b\"}\n"
                        "{\"instruction\": \"caf\xe9\", \"output\": \"b\"}\n"
                        "{\"instruction\": \"c\", \"output\": \"d\"}\n";
    cfg = config_for(write_tmp("mixed.jsonl", mixed, strlen(mixed)), tok_path);
    cfg.skip_bad_records = true;
    CHECK_OK(ct_dataset_prepare(&cfg, tok, &ds));
    CHECK(ds.n_samples == 2 && ds.stats.n_skipped == 3 && strstr(ds.stats.first_warning, "mixed.jsonl:2:32: record 2"),
          "skip: samples %lld skipped %lld first [%s]", (long long)ds.n_samples, (long long)ds.stats.n_skipped,
          ds.stats.first_warning);
    ct_dataset_free(&ds);
    cfg.skip_bad_records = false;
    CHECK(ct_dataset_prepare(&cfg, tok, &ds) == CT_EINPUT && strstr(ct_last_error(), "mixed.jsonl:2:32: record 2"),
          "strict: %s", ct_last_error());
    remove_tmp("mixed.jsonl");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ct-dsfmt-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    test_split();
    test_formats();
    char tok_path[4096];
    if (ct_fixture("internlm2-chat-7b", tok_path, sizeof tok_path)) {
        ct_tokenizer *tok;
        CHECK_OK(ct_tok_load(tok_path, &tok));
        if (tok) {
            test_prepare(tok, tok_path);
            test_threads(tok, tok_path);
            test_bad_input(tok, tok_path);
            ct_tok_free(tok);
        }
    }
    rmdir(tmpdir);
    return ct_test_finish();
}
