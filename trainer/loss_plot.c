/* The loss curve as SVG: data -> plot area by a linear map, ticks by
 * Heckbert's "nice numbers" (Graphics Gems, 1990), every number printed in
 * the C locale's format. */
#include "trainer/loss_plot.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ct_error.h"
#include "trainer/io/fsutil.h"

enum { W = 760, H = 460, ML = 76, MR = 28, MT = 48, MB = 60, N_TICKS = 6 };

/* A 1, 2 or 5 times a power of ten near x (rounded, or the next one up). */
static double nice_num(double x, bool round_it) {
    double e = floor(log10(x)), f = x / pow(10.0, e), nf;
    if (round_it) nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
    else nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nf * pow(10.0, e);
}

typedef struct {
    double lo, hi, step; /* the axis spans [lo, hi] in ticks of step */
    int decimals;        /* for the tick labels */
} axis;

static axis make_axis(double lo, double hi, bool integer) {
    if (!(hi > lo)) {
        double pad = fabs(lo) > 0 ? fabs(lo) * 0.1 : 1.0;
        lo -= pad, hi += pad;
    }
    axis a;
    a.step = nice_num(nice_num(hi - lo, false) / (N_TICKS - 1), true);
    if (integer && a.step < 1) a.step = 1;
    a.lo = floor(lo / a.step) * a.step;
    a.hi = ceil(hi / a.step) * a.step;
    int d = (int)-floor(log10(a.step));
    a.decimals = d > 0 ? d : 0;
    return a;
}

static double map(const axis *a, double v, double from, double len) { return from + (v - a->lo) / (a->hi - a->lo) * len; }

static void put_escaped(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

static void ticks(FILE *f, const axis *a, bool is_x) {
    const double pw = W - ML - MR, ph = H - MT - MB;
    for (int k = 0;; k++) {
        double v = a->lo + k * a->step;
        if (v > a->hi + a->step * 1e-9) break;
        if (is_x) {
            double px = map(a, v, ML, pw);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e4e4e4\"/>\n", px, MT, px, MT + (int)ph);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#000\"/>\n", px, MT + (int)ph, px,
                    MT + (int)ph + 5);
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.*f</text>\n", px, MT + (int)ph + 19,
                    a->decimals, v);
        } else {
            double py = MT + ph - map(a, v, 0, ph);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", ML, py, ML + (int)pw, py);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#000\"/>\n", ML - 5, py, ML, py);
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n", ML - 8, py + 4, a->decimals, v);
        }
    }
}

int ct_plot_svg_write(FILE *f, const int64_t *x, const double *y, size_t n, const ct_plot_labels *lb) {
    if (n < 1) return ct_errorf(CT_EINPUT, "plot: no points");
    double ylo = INFINITY, yhi = -INFINITY, first = NAN, last = NAN;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i])) continue;
        if (isnan(first)) first = y[i];
        last = y[i];
        ylo = fmin(ylo, y[i]);
        yhi = fmax(yhi, y[i]);
    }
    if (!isfinite(ylo)) ylo = 0, yhi = 1;
    axis ax = make_axis((double)x[0], (double)x[n - 1], true), ay = make_axis(ylo, yhi, false);
    const double pw = W - ML - MR, ph = H - MT - MB;

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
               "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", W, H, W, H, W, H);
    fprintf(f, "<text x=\"%d\" y=\"26\" text-anchor=\"middle\" font-size=\"15\">", W / 2);
    put_escaped(f, lb->title);
    fputs("</text>\n", f);
    ticks(f, &ax, true);
    ticks(f, &ay, false);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#000\"/>\n", ML, MT, pw, ph);
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">", ML + pw / 2, H - 14);
    put_escaped(f, lb->x_label);
    fprintf(f, "</text>\n<text transform=\"translate(20 %.1f) rotate(-90)\" text-anchor=\"middle\">", MT + ph / 2);
    put_escaped(f, lb->y_label);
    fputs("</text>\n", f);
    if (isfinite(first))
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"end\" fill=\"#555\">first %.4g, last %.4g</text>\n",
                ML + pw, MT - 8, first, last);

    /* The curve: one polyline per run of finite values. */
    bool open = false;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i])) {
            if (open) fputs("\"/>\n", f);
            open = false;
            continue;
        }
        if (!open) fputs("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"", f);
        fprintf(f, "%s%.1f,%.1f", open ? " " : "", map(&ax, (double)x[i], ML, pw), MT + ph - map(&ay, y[i], 0, ph));
        open = true;
    }
    if (open) fputs("\"/>\n", f);
    if (n <= 60)
        for (size_t i = 0; i < n; i++)
            if (isfinite(y[i]))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"#1f77b4\"/>\n", map(&ax, (double)x[i], ML, pw),
                        MT + ph - map(&ay, y[i], 0, ph));
    fputs("</svg>\n", f);
    return ferror(f) ? ct_errorf(CT_ERUNTIME, "plot: write error") : CT_OK;
}

int ct_plot_svg_save(const char *path, const int64_t *x, const double *y, size_t n, const ct_plot_labels *labels) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return ct_errorf(CT_ERUNTIME, "%s: out of memory", path);
    int rc = ct_plot_svg_write(f, x, y, n, labels);
    if (fclose(f) != 0 && !rc) rc = ct_errorf(CT_ERUNTIME, "%s: %s", path, strerror(errno));
    if (!rc) rc = ct_file_write_atomic(path, buf, len);
    free(buf);
    return rc;
}
