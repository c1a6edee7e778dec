/* Tokenizer throughput: ctuner's SentencePiece BPE vs SentencePiece's own C++
 * (spm_encode) on the same text, in the same run.
 *
 * usage: bench_tokenizer TOKENIZER_DIR [TEXT_FILE] [--mb N] [--reps R] [--threads T]
 *
 * Without TEXT_FILE a deterministic mixed text of N MB (default 4) is written
 * to a temporary file: English prose, Chinese, code with indentation, numbers,
 * emoji, Russian/Japanese/Arabic, lines of ~20-200 bytes.
 *
 * Method: spm_encode works line by line, so ctuner encodes the same lines one
 * by one (ct_tok_encode_plain: no BOS, no special split, exactly what
 * spm_encode computes). spm_encode runs as a subprocess
 * (--output_format=id --input F --output /dev/null); its start-up and model
 * load are measured on an empty input and subtracted. Wall-clock times, best
 * of R repetitions. The ids of both are compared line by line first. Also
 * reported: the whole file as one text, and T threads sharing one tokenizer. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "datasets/tokenizer.h"

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static const char *pick(uint64_t *s, const char *const *v, size_t n) { return v[rng_next(s) % n]; }

/* A mixed text of about `bytes` bytes, one "sentence" per line. */
static void write_text(FILE *f, size_t bytes) {
    static const char *const en[] = {"the", "model", "is", "trained", "on", "a", "large", "corpus", "of", "text",
                                     "and", "code", "with", "tokenizer", "which", "splits", "words", "into",
                                     "pieces", "before", "learning", "fine-tuning", "adapters", "memory", "GPU",
                                     "quickly", "however,", "results", "were", "good."};
    static const char *const zh[] = {"我们", "模型", "训练", "数据", "的", "是", "在", "语言", "大", "微调", "显存",
                                     "分词", "器", "，", "。", "中文", "处理", "能力", "提高", "了", "上海",
                                     "人工智能", "实验室", "开源"};
    static const char *const code[] = {"    for i in range(n):", "        total += x[i] * w[i]", "\treturn total;",
                                       "def forward(self, x):", "if (err != 0) { goto fail; }",
                                       "    # compute the loss", "x = torch.zeros(4096, 4096, dtype=torch.bfloat16)",
                                       "}", "#include <stdio.h>", "const int N = 1 << 20;"};
    static const char *const other[] = {"Привет, как дела?", "これは日本語の文です。", "مرحبا بالعالم",
                                        "😀 🚀 👨‍👩‍👧", "2024-05-17 12:34:56", "3.14159265358979",
                                        "Ｅｘａｍｐｌｅ——测试……", "version 1.2.3-rc4", "price: $19.99 (-15%)"};
    uint64_t s = 42;
    size_t n = 0;
    while (n < bytes) {
        unsigned kind = (unsigned)(rng_next(&s) % 10);
        int words = 5 + (int)(rng_next(&s) % 30);
        size_t line = 0;
        for (int w = 0; w < words; w++) {
            const char *p;
            if (kind < 5) p = pick(&s, en, sizeof en / sizeof *en);
            else if (kind < 8) p = pick(&s, zh, sizeof zh / sizeof *zh);
            else if (kind < 9) p = pick(&s, code, sizeof code / sizeof *code);
            else p = pick(&s, other, sizeof other / sizeof *other);
            if (w && kind < 5) line += (size_t)fprintf(f, " ");
            if (kind == 8 && w) line += (size_t)fprintf(f, "  ");
            line += (size_t)fprintf(f, "%s", p);
            if (kind == 8 && w > 3) break;
        }
        fputc('\n', f);
        n += line + 1;
    }
}

typedef struct {
    const ct_tokenizer *t;
    const char *data;
    const size_t *starts; /* (n_lines + 1) line offsets */
    size_t first, last;   /* lines [first, last) */
    size_t n_ids;
    int rc;
} job;

static void *encode_lines(void *arg) {
    job *j = arg;
    ct_ids ids = {0};
    for (size_t i = j->first; i < j->last && !j->rc; i++) {
        ids.n = 0;
        size_t len = j->starts[i + 1] - j->starts[i] - 1; /* without the '\n' */
        j->rc = ct_tok_encode_plain(j->t, j->data + j->starts[i], len, &ids);
        j->n_ids += ids.n;
    }
    ct_ids_free(&ids);
    return NULL;
}

static double run_threads(const ct_tokenizer *t, const char *data, const size_t *starts, size_t n_lines, int nt,
                          size_t *n_ids) {
    pthread_t th[64];
    job jobs[64];
    double t0 = ct_now_s();
    for (int k = 0; k < nt; k++) {
        jobs[k] = (job){t, data, starts, n_lines * (size_t)k / (size_t)nt, n_lines * (size_t)(k + 1) / (size_t)nt, 0, 0};
        if (nt == 1) encode_lines(&jobs[k]);
        else pthread_create(&th[k], NULL, encode_lines, &jobs[k]);
    }
    *n_ids = 0;
    for (int k = 0; k < nt; k++) {
        if (nt > 1) pthread_join(th[k], NULL);
        *n_ids += jobs[k].n_ids;
        if (jobs[k].rc) fprintf(stderr, "encode failed: %s\n", ct_last_error());
    }
    return ct_now_s() - t0;
}

static double time_cmd(const char *cmd) {
    double t0 = ct_now_s();
    int rc = system(cmd);
    double dt = ct_now_s() - t0;
    if (rc != 0) {
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
        return -1;
    }
    return dt;
}

/* Line-by-line parity with spm_encode's output file. Returns mismatching lines. */
static size_t compare_spm(const ct_tokenizer *t, const char *data, const size_t *starts, size_t n_lines,
                          const char *spm_out) {
    FILE *f = fopen(spm_out, "r");
    if (!f) return n_lines;
    size_t bad = 0, cap = 1 << 20;
    char *line = malloc(cap);
    ct_ids ids = {0};
    for (size_t i = 0; i < n_lines; i++) {
        if (!fgets(line, (int)cap, f)) {
            bad += n_lines - i;
            break;
        }
        ids.n = 0;
        ct_tok_encode_plain(t, data + starts[i], starts[i + 1] - starts[i] - 1, &ids);
        char *p = line;
        size_t k = 0;
        bool ok = true;
        for (char *e; ok; p = e, k++) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            ok = k < ids.n && ids.v[k] == v;
        }
        bad += !ok || k != ids.n;
    }
    ct_ids_free(&ids);
    free(line);
    fclose(f);
    return bad;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *file = NULL;
    double mb = 4;
    int reps = 3, nt = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) nt = atoi(argv[++i]);
        else if (!dir) dir = argv[i];
        else file = argv[i];
    }
    if (!dir || nt < 1 || nt > 64 || reps < 1) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR [TEXT_FILE] [--mb N] [--reps R] [--threads T]\n", argv[0]);
        return 2;
    }
    char tmpl[] = "/tmp/ct_bench_tok_XXXXXX", path[64], out[64], empty[64];
    if (!mkdtemp(tmpl)) return 1;
    snprintf(path, sizeof path, "%s/text.txt", tmpl);
    snprintf(out, sizeof out, "%s/spm_ids.txt", tmpl);
    snprintf(empty, sizeof empty, "%s/empty.txt", tmpl);
    FILE *f = fopen(empty, "w");
    if (!f) return 1;
    fclose(f);
    if (!file) {
        f = fopen(path, "w");
        if (!f) return 1;
        write_text(f, (size_t)(mb * 1e6));
        fclose(f);
        file = path;
    }
    f = fopen(file, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", file);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc(n + 1);
    n = fread(data, 1, n, f);
    fclose(f);
    if (n == 0 || data[n - 1] != '\n') data[n++] = '\n';
    size_t n_lines = 0, *starts = malloc((n + 1) * sizeof *starts);
    starts[0] = 0;
    for (size_t i = 0; i < n; i++)
        if (data[i] == '\n') starts[++n_lines] = i + 1;

    ct_tokenizer *t = NULL;
    double t0 = ct_now_s();
    if (ct_tok_load(dir, &t)) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 2;
    }
    double load_s = ct_now_s() - t0;
    char model[1024], cmd[4096];
    snprintf(model, sizeof model, "%s/tokenizer.model", dir);
    printf("text: %s, %.2f MB, %zu lines; ctuner tokenizer load %.3f s\n", file, (double)n / 1e6, n_lines, load_s);

    bool have_spm = system("command -v spm_encode >/dev/null 2>&1") == 0;
    double spm_best = 1e30, spm_start = 1e30;
    if (have_spm) {
        snprintf(cmd, sizeof cmd, "spm_encode --model='%s' --output_format=id --input='%s' --output='%s'", model, file,
                 out);
        time_cmd(cmd); /* warm the page cache, and the ids to compare */
        size_t bad = compare_spm(t, data, starts, n_lines, out);
        printf("parity with spm_encode: %zu of %zu lines differ\n", bad, n_lines);
        for (int r = 0; r < reps; r++) {
            snprintf(cmd, sizeof cmd, "spm_encode --model='%s' --output_format=id --input='%s' --output=/dev/null",
                     model, empty);
            double e = time_cmd(cmd);
            if (e >= 0 && e < spm_start) spm_start = e;
            snprintf(cmd, sizeof cmd, "spm_encode --model='%s' --output_format=id --input='%s' --output=/dev/null",
                     model, file);
            double d = time_cmd(cmd);
            if (d >= 0 && d < spm_best) spm_best = d;
        }
    } else {
        printf("spm_encode not found (apt install sentencepiece): no comparison\n");
    }
    double best1 = 1e30, bestT = 1e30, best_whole = 1e30;
    size_t ids1 = 0, idsT = 0;
    ct_ids whole = {0};
    for (int r = 0; r < reps; r++) {
        double d = run_threads(t, data, starts, n_lines, 1, &ids1);
        if (d < best1) best1 = d;
        d = run_threads(t, data, starts, n_lines, nt, &idsT);
        if (d < bestT) bestT = d;
        whole.n = 0;
        t0 = ct_now_s();
        ct_tok_encode_plain(t, data, n, &whole);
        d = ct_now_s() - t0;
        if (d < best_whole) best_whole = d;
    }
    double mbytes = (double)n / 1e6;
    printf("\n%-44s %9s %9s\n", "encoder (best of reps)", "seconds", "MB/s");
    printf("%-44s %9.3f %9.2f   (%zu ids)\n", "ctuner, line by line, 1 thread", best1, mbytes / best1, ids1);
    char label[64];
    snprintf(label, sizeof label, "ctuner, line by line, %d threads", nt);
    printf("%-44s %9.3f %9.2f\n", label, bestT, mbytes / bestT);
    printf("%-44s %9.3f %9.2f   (%zu ids)\n", "ctuner, whole file as one text", best_whole, mbytes / best_whole,
           whole.n);
    if (have_spm && spm_best < 1e30) {
        double net = spm_best - spm_start;
        printf("%-44s %9.3f %9.2f   (%.3f s total - %.3f s start-up)\n", "spm_encode (SentencePiece C++), 1 thread",
               net, mbytes / net, spm_best, spm_start);
        printf("\nctuner / spm_encode speed, 1 thread: %.2fx\n", net / best1);
    }
    ct_ids_free(&whole);
    ct_tok_free(t);
    free(starts);
    free(data);
    unlink(out);
    unlink(empty);
    unlink(path);
    rmdir(tmpl);
    return 0;
}
