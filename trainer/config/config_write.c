/* The resolved config printed back as YAML, from the same table the reader
 * uses: every key in file order, defaults included. Strings are always
 * double-quoted with escapes, numbers use the shortest text that reads back to
 * the same double, so parsing the output gives an equal struct. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/config/config_internal.h"
#include "trainer/model/lora.h"

/* Shortest "%g" text that reads back exactly; an exponent gets a mantissa
 * with a '.' ("1.0e-05") so PyYAML, which wants one, reads it as a float too. */
static void fmt_double(double x, char *buf, size_t cap) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, x);
        if (strtod(buf, NULL) == x) break;
    }
    char *e = strchr(buf, 'e');
    if (e && !memchr(buf, '.', (size_t)(e - buf)) && strlen(buf) + 3 < cap) {
        memmove(e + 2, e, strlen(e) + 1);
        e[0] = '.', e[1] = '0';
    }
}

/* Decodes one UTF-8 character at s (valid input: libyaml checked it); *len
 * gets its byte count. Invalid bytes decode as themselves, one at a time. */
static unsigned utf8_next(const unsigned char *s, size_t *len) {
    unsigned c = s[0];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0) {
        *len = 1;
        return c;
    }
    unsigned v = n == 1 ? c : c & (0x7Fu >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *len = 1;
            return c;
        }
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    *len = (size_t)n;
    return v;
}

/* A double-quoted YAML string. Escaped: quotes, backslash, control
 * characters, C1 controls, and the characters YAML treats as line breaks or
 * does not allow raw (U+2028/9, U+FEFF, U+FFFE/F). */
static void write_str(FILE *f, const char *s) {
    fputc('"', f);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n;
        unsigned c = utf8_next(p, &n);
        if (c == '"') fputs("\\\"", f);
        else if (c == '\\') fputs("\\\\", f);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == 0x85) fputs("\\N", f);
        else if (c == 0x2028) fputs("\\L", f);
        else if (c == 0x2029) fputs("\\P", f);
        else if (c < 0x20 || (c >= 0x7F && c <= 0x9F)) fprintf(f, "\\x%02x", c);
        else if (c == 0xFEFF || c == 0xFFFE || c == 0xFFFF) fprintf(f, "\\u%04X", c);
        else fwrite(p, 1, n, f);
        p += n;
    }
    fputc('"', f);
}

static const char *enum_name(const ct_cfield *fd, const void *base) {
    if (fd->flags & CF_NOSTORE) return fd->names[0];
    int v = *(const int *)((const char *)base + fd->off);
    for (int i = 0; fd->names[i]; i++)
        if ((fd->values ? fd->values[i] : i) == v) return fd->names[i];
    return "?";
}

/* The value of a scalar-typed field (no newline). */
static void write_value(FILE *f, const ct_cfield *fd, const void *base) {
    const char *p = (const char *)base + fd->off;
    char num[64];
    switch (fd->type) {
    case CF_INT: {
        int64_t v = *(const int64_t *)p;
        if ((fd->flags & CF_NULLABLE) && (double)v == fd->null_as) fputs("null", f);
        else fprintf(f, "%lld", (long long)v);
        break;
    }
    case CF_DOUBLE: {
        double v = *(const double *)p;
        if ((fd->flags & CF_NULLABLE) && v == fd->null_as) {
            fputs("null", f);
        } else {
            fmt_double(v, num, sizeof num);
            fputs(num, f);
        }
        break;
    }
    case CF_BOOL: fputs(*(const bool *)p ? "true" : "false", f); break;
    case CF_STR: {
        const char *s = *(char *const *)p;
        if (s) write_str(f, s);
        else fputs("null", f);
        break;
    }
    case CF_ENUM: fputs(enum_name(fd, base), f); break;
    default: break;
    }
}

static void write_phase(FILE *f, const ct_sched_phase *ph, const ct_cfield *sub) {
    unsigned bit = 1u << ph->type;
    fputs("{", f);
    bool first = true;
    for (const ct_cfield *fd = sub; fd->name; fd++) {
        if ((fd->flags & CF_HIDDEN) || (fd->sched_types && !(fd->sched_types & bit))) continue;
        fprintf(f, "%s%s: ", first ? "" : ", ", fd->name);
        write_value(f, fd, ph);
        first = false;
    }
    fputs("}", f);
}

static void write_fields(FILE *f, const ct_cfield *table, const ct_run_config *c, const void *base, int indent) {
    for (const ct_cfield *fd = table; fd->name; fd++) {
        if (fd->flags & CF_HIDDEN) continue;
        if (fd->comment) fprintf(f, "\n# %s\n", fd->comment);
        fprintf(f, "%*s%s:", indent, "", fd->name);
        char num[64];
        switch (fd->type) {
        case CF_SECTION:
            fputc('\n', f);
            write_fields(f, fd->sub, c, (const char *)base + fd->off, indent + 2);
            continue;
        case CF_SYSTEM:
            fputc(' ', f);
            if (c->system_template) fprintf(f, "{template: %s}", c->system_template);
            else write_str(f, c->system ? c->system : "");
            break;
        case CF_BETAS: {
            const double *b = (const double *)((const char *)base + fd->off);
            fmt_double(b[0], num, sizeof num);
            fprintf(f, " [%s, ", num);
            fmt_double(b[1], num, sizeof num);
            fprintf(f, "%s]", num);
            break;
        }
        case CF_STRLIST:
            if (!c->n_evaluation_inputs) fputs(" []", f);
            for (size_t i = 0; i < c->n_evaluation_inputs; i++) {
                fprintf(f, "\n%*s  - ", indent, "");
                write_str(f, c->evaluation_inputs[i]);
            }
            break;
        case CF_TARGETS: {
            unsigned bits = *(const unsigned *)((const char *)base + fd->off);
            fputs(" [", f);
            bool first = true;
            for (int i = 0; ct_config_target_names[i]; i++)
                if (bits & ct_lora_target_from_name(ct_config_target_names[i])) {
                    fprintf(f, "%s%s", first ? "" : ", ", ct_config_target_names[i]);
                    first = false;
                }
            fputs("]", f);
            break;
        }
        case CF_SCHEDULE:
            if (c->n_phases < 0) {
                fputs(" null  # LinearLR from 1e-5 over warmup_ratio of training, then CosineAnnealingLR to 0", f);
            } else if (c->n_phases == 0) {
                fputs(" []  # constant learning rate", f);
            }
            for (int i = 0; i < c->n_phases; i++) {
                fprintf(f, "\n%*s  - ", indent, "");
                write_phase(f, &c->phases[i], fd->sub);
            }
            break;
        default:
            fputc(' ', f);
            write_value(f, fd, base);
            break;
        }
        fputc('\n', f);
    }
}

int ct_config_write_yaml(const ct_run_config *c, FILE *f) {
    fputs("# ctuner run configuration, resolved: every setting with defaults filled in (docs/CONFIG.md).\n"
          "# Intervals (save_steps, evaluation_freq, logging_interval, max_iters) count iterations\n"
          "# (micro-batches), as XTuner does.\n",
          f);
    write_fields(f, ct_config_fields, c, c, 0);
    if (fflush(f) != 0 || ferror(f)) return ct_errorf(CT_ERUNTIME, "writing the config failed: %s", strerror(errno));
    return CT_OK;
}
