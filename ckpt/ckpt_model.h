/*
 * The model alone, for inference: the export file (a small HDF5 file of the
 * parameters, configuration and normalisation; docs/checkpoint.md, "Export
 * files"), written by one process, and the reader that takes the same out of
 * an export or a checkpoint. Serial HDF5 (the default driver) on one rank:
 * the surrogate broadcasts what rank 0 read.
 */
#ifndef INSITRA_CKPT_MODEL_H
#define INSITRA_CKPT_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "model.h"

#define INSITRA_NORM_GROUP "normalization"

/* Per-feature statistics the surrogate applies around the model, from the
 * /normalization group (absent: identity):
 *   x_n = (x - x_mean) / x_std;  out = model(x_n);
 *   y = out * y_std + y_mean + (residual[j] >= 0 ? x[residual[j]] : 0)
 * x in physical units, residual[j] the input feature output j adds. */
typedef struct insitra_norm_stats {
    bool present;
    int64_t in_features, out_features;
    double *x_mean, *x_std;   /* (F_in) */
    double *y_mean, *y_std;   /* (F_out) */
    int64_t *residual;        /* (F_out), -1 = none */
    void *mem;                /* the one allocation behind the arrays */
} insitra_norm_stats;

/* Allocates identity statistics (means 0, stds 1, no residual) for the sizes. */
insitra_status insitra_norm_stats_create(insitra_norm_stats *n, int64_t in_features, int64_t out_features);
void insitra_norm_stats_free(insitra_norm_stats *n);

/* Writes an export file at path (as path.tmp, renamed when complete): params
 * (layout.total fp32, the layout's order), the stored configuration, step,
 * and norm when norm->present. One process. */
insitra_status insitra_export_write(const char *path, const insitra_config *cfg,
                                    const insitra_param_layout *layout, const float *params, int64_t step,
                                    const insitra_norm_stats *norm);

/* What the reader returns: the configuration the file stores, every
 * parameter (fp32, layout order; malloc'd) and the normalisation. */
typedef struct insitra_model_file {
    insitra_config cfg;
    bool is_export;           /* an export file, else a checkpoint */
    int64_t step;
    float *params;            /* (layout total) */
    int64_t num_params;
    insitra_norm_stats norm;
} insitra_model_file;

/* Reads an export file or a checkpoint file (not a directory): format,
 * completeness and every CRC32C checked; IO_ERROR naming the path and what
 * is wrong. One process. */
insitra_status insitra_model_file_read(const char *path, insitra_model_file *out);
void insitra_model_file_free(insitra_model_file *f);

#endif /* INSITRA_CKPT_MODEL_H */
