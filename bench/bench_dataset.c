/* Dataset preparation speed: writes a deterministic synthetic alpaca-style
 * JSON array (50k records shaped like Stanford Alpaca's: short instructions,
 * an input on ~40% of them, answers of 10-150 words; a fifth in Chinese), then
 * times ct_dataset_prepare (read + parse + template + tokenize + pack) with 1
 * thread and with all threads, and checks that both give the same data.
 *
 *   bench_dataset [TOKENIZER_DIR] [N_RECORDS]
 *   (default ../shared/fixtures/internlm2-chat-7b, 50000) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "datasets/dataset.h"
#include "datasets/tokenizer.h"

static double cpu_s(void) { /* all threads of the process */
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x1234567;
static uint32_t rnd(uint32_t n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((rng_state >> 33) % n);
}

static const char *const en[] = {
    "the", "model", "data", "learn", "quickly", "because", "every", "answer", "should", "be", "clear", "and",
    "helpful", "write", "a", "short", "story", "about", "science", "history", "of", "computers", "language",
    "people", "often", "use", "simple", "words", "to", "explain", "complex", "ideas", "in", "daily", "life",
    "water", "energy", "climate", "students", "teachers", "practice", "reading", "numbers", "equation", "42",
    "2023", "friendly", "reliable", "network", "function", "returns", "value", "list", "items", "summary",
};
static const char *const zh[] = {
    "我们", "今天", "学习", "数据", "模型", "回答", "问题", "清楚", "简单", "语言", "历史", "科学", "电脑",
    "每天", "练习", "阅读", "数字", "方程", "朋友", "网络", "函数", "返回", "列表", "总结", "天气", "很好",
};

/* Appends n random words (Chinese when zh_text) as a JSON string body. */
static size_t words(char *dst, int n, int zh_text) {
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        const char *w = zh_text ? zh[rnd(sizeof zh / sizeof *zh)] : en[rnd(sizeof en / sizeof *en)];
        if (!zh_text && i) dst[k++] = ' ';
        size_t l = strlen(w);
        memcpy(dst + k, w, l);
        k += l;
        if (rnd(12) == 0) {
            const char *p = zh_text ? "，" : (rnd(3) ? "." : ",\\n");
            memcpy(dst + k, p, strlen(p));
            k += strlen(p);
        }
    }
    return k;
}

static int write_data(const char *path, int n) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    char *buf = malloc(1 << 16);
    fputs("[\n", f);
    for (int i = 0; i < n; i++) {
        int z = rnd(5) == 0;
        size_t k = 0;
        k += (size_t)sprintf(buf + k, "    {\n        \"instruction\": \"");
        k += words(buf + k, 5 + (int)rnd(15), z);
        k += (size_t)sprintf(buf + k, "\",\n        \"input\": \"");
        if (rnd(10) < 4) k += words(buf + k, 3 + (int)rnd(30), z);
        k += (size_t)sprintf(buf + k, "\",\n        \"output\": \"");
        k += words(buf + k, 10 + (int)rnd(140), z);
        k += (size_t)sprintf(buf + k, "\"\n    }%s\n", i + 1 < n ? "," : "");
        fwrite(buf, 1, k, f);
    }
    fputs("]\n", f);
    free(buf);
    return fclose(f);
}

static int run(const ct_ds_config *cfg, const ct_tokenizer *tok, int threads, double mb, ct_dataset *ds) {
    ct_ds_config c = *cfg;
    c.threads = threads;
    double t0 = ct_now_s(), c0 = cpu_s();
    if (ct_dataset_prepare(&c, tok, ds)) {
        fprintf(stderr, "error: %s\n", ct_last_error());
        return 1;
    }
    double dt = ct_now_s() - t0, dc = cpu_s() - c0;
    printf("%2d thread%s: %.2f s wall (%.2f s CPU), %.0f samples/s, %.2f MB/s, %.2f M tokens/s\n", threads,
           threads > 1 ? "s" : " ", dt, dc, (double)ds->stats.n_records / dt, mb / dt,
           (double)ds->stats.n_tokens / dt * 1e-6);
    return 0;
}

int main(int argc, char **argv) {
    const char *tok_path = argc > 1 ? argv[1] : "../shared/fixtures/internlm2-chat-7b";
    int n = argc > 2 ? atoi(argv[2]) : 50000;
    ct_tokenizer *tok;
    if (ct_tok_load(tok_path, &tok)) {
        fprintf(stderr, "error: %s\nusage: bench_dataset [TOKENIZER_DIR] [N_RECORDS]\n", ct_last_error());
        return 2;
    }
    char dir[] = "/tmp/ct-bench-ds-XXXXXX", path[64];
    if (!mkdtemp(dir)) return 1;
    snprintf(path, sizeof path, "%s/alpaca.json", dir);
    if (write_data(path, n)) return 1;
    struct stat st;
    stat(path, &st);
    double mb = (double)st.st_size / 1e6;
    ct_ds_config cfg = ct_ds_config_default();
    cfg.data_path = path;
    cfg.max_length = 2048;
    printf("synthetic alpaca: %d records, %.1f MB; internlm2_chat, max_length 2048, packed\n", n, mb);
    ct_dataset a, b;
    int rc = run(&cfg, tok, 1, mb, &a);
    int all = omp_get_max_threads();
    if (!rc) rc = run(&cfg, tok, all, mb, &b);
    if (!rc) {
        size_t nt = (size_t)a.sample_off[a.n_samples];
        int same = a.n_samples == b.n_samples && a.sample_off[a.n_samples] == b.sample_off[b.n_samples] &&
                   !memcmp(a.ids, b.ids, nt * 4) && !memcmp(a.labels, b.labels, nt * 4) &&
                   a.rows.n_rows == b.rows.n_rows;
        printf("samples %lld, tokens %lld (%.1f per sample), rows %lld, token efficiency %.4f, target efficiency "
               "%.4f; 1 and %d threads identical: %s\n",
               (long long)a.n_samples, (long long)a.stats.n_tokens, (double)a.stats.n_tokens / (double)a.n_samples,
               (long long)a.rows.n_rows, ct_dataset_token_efficiency(&a), ct_dataset_target_efficiency(&a), all,
               same ? "yes" : "NO");
        rc = !same;
        ct_dataset_free(&a);
        ct_dataset_free(&b);
    }
    unlink(path);
    rmdir(dir);
    ct_tok_free(tok);
    return rc;
}
