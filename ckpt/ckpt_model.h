/*
 * The model alone, for inference: the export file (a small HDF5 file of the
 * parameters, configuration and normalisation statistics; docs/checkpoint.md, "Export
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
#include "normalize.h"

/* Writes an export file at path (as path.tmp, renamed when complete): params
 * (layout.total fp32, the layout's order; a layout of tp = 1, whole tensors:
 * lib/tp_params.h assembles them from a tp group), the stored configuration, step,
 * and norm's statistics as /normalize (the checkpoint's group) when norm is
 * not NULL and data.normalize is on. One process. */
insitra_status insitra_export_write(const char *path, const insitra_config *cfg,
                                    const insitra_param_layout *layout, const float *params, int64_t step,
                                    const insitra_normalize *norm);

/* What the reader returns: the configuration the file stores, every
 * parameter (fp32, layout order; malloc'd) and the feature maps: made from
 * the stored configuration (model.residual*), with the statistics of
 * /normalize when data.normalize is on; norm.coef is what the model applies. */
typedef struct insitra_model_file {
    insitra_config cfg;
    bool is_export;           /* an export file, else a checkpoint */
    int64_t step;
    float *params;            /* (layout total) */
    int64_t num_params;
    insitra_normalize norm;
} insitra_model_file;

/* Reads an export file or a checkpoint file (not a directory): format,
 * completeness and every CRC32C checked; IO_ERROR naming the path and what
 * is wrong. One process. */
insitra_status insitra_model_file_read(const char *path, insitra_model_file *out);
void insitra_model_file_free(insitra_model_file *f);

#endif /* INSITRA_CKPT_MODEL_H */
