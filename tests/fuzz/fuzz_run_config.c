/* Fuzz target: the YAML run config with --set overrides, and the documented
 * round trip (config.h): the printed YAML of an accepted config parses back
 * to an equal config, and printing that prints the same text.
 * Input: YAML text, then up to 4 --set strings, each after a NUL byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz_common.h"
#include "trainer/config/config.h"

static char *print_yaml(const ct_run_config *c, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) abort();
    fz_assert(ct_config_write_yaml(c, f) == 0, "ct_config_write_yaml succeeds");
    fclose(f);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    size_t yaml_len = strlen(text);
    const char *sets[4];
    int n_sets = 0;
    for (size_t off = yaml_len + 1; off < size && n_sets < 4; off += strlen(text + off) + 1) sets[n_sets++] = text + off;

    ct_run_config a, b;
    if (ct_config_parse(text, yaml_len, "fuzz.yaml", sets, n_sets, &a) == 0) {
        size_t n1 = 0, n2 = 0;
        char *y1 = print_yaml(&a, &n1);
        if (ct_config_parse(y1, n1, "fuzz.yaml", NULL, 0, &b) != 0) {
            fprintf(stderr, "printed config does not parse back:\n%s\n", y1);
            fz_assert(0, "print -> parse");
        }
        fz_assert(ct_config_equal(&a, &b), "print -> parse gives an equal config");
        char *y2 = print_yaml(&b, &n2);
        fz_assert(n1 == n2 && memcmp(y1, y2, n1) == 0, "printing the reparsed config prints the same text");
        free(y1);
        free(y2);
        ct_config_free(&a);
        ct_config_free(&b);
    }
    free(text);
    return 0;
}
