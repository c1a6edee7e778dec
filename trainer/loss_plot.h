/* A line chart as a standalone SVG file, written by hand (no library): the
 * training loss over iterations (work_dir/loss_curve.svg). Axes with "nice"
 * ticks (1, 2, 5 x 10^k), grid lines, tick labels, axis labels, a title, and
 * the curve as one polyline (a gap where a value is not finite). Opens in any
 * browser; rsvg-convert/ImageMagick turn it into a PNG.
 *
 * Ownership: arguments are borrowed; the file is written atomically. */
#ifndef CT_LOSS_PLOT_H
#define CT_LOSS_PLOT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    const char *title;   /* e.g. "training loss: configs/tiny_demo.yaml" (XML-escaped here) */
    const char *x_label; /* "iteration" */
    const char *y_label; /* "loss" */
} ct_plot_labels;

/* The chart of y[i] over x[i] (n >= 1 points, x ascending) into f. */
int ct_plot_svg_write(FILE *f, const int64_t *x, const double *y, size_t n, const ct_plot_labels *labels);

/* The same into `path`, atomically (temp file + rename). */
int ct_plot_svg_save(const char *path, const int64_t *x, const double *y, size_t n, const ct_plot_labels *labels);

#endif
