/*
 * The checkpoint file format, defined once (docs/checkpoint.md): group and
 * dataset names, root attributes and the metadata checksum over them, the
 * shapes a file must have, attribute reading and writing, and the names of a
 * checkpoint directory. The parallel writer and reader and the serial
 * insitra-ckpt tool all use this module, so they cannot disagree on a name.
 * Nothing here needs MPI: every function works on a file opened with either
 * the MPI-IO or the default HDF5 driver.
 */
#ifndef INSITRA_CKPT_FORMAT_H
#define INSITRA_CKPT_FORMAT_H

#include <hdf5.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "insitra.h"
#include "model.h"

/* Format 2 = format 1 + the metadata checksum (meta_crc32c) and a crc32c on
 * the integer tables. Format 1 files still load, with a warning.
 * Format 3 = format 2 with the stored samples global at any parallel.cp:
 * one row per sample, every token, written by the token slices' ranks
 * together (the same bytes as format 2 at parallel.cp = 1). Format 1 and 2
 * files saved at parallel.cp > 1 held rows of each rank's own slice: their
 * samples are refused (INSITRA_CKPT_FORMAT_GLOBAL_SAMPLES). */
#define INSITRA_CKPT_FORMAT 3
#define INSITRA_CKPT_FORMAT_OLDEST 1
#define INSITRA_CKPT_FORMAT_GLOBAL_SAMPLES 3

/* Groups of tensors, in file order: parameters, AdamW m, AdamW v. */
#define INSITRA_CKPT_GROUPS 3
extern const char *const insitra_ckpt_group[INSITRA_CKPT_GROUPS]; /* "model", "optim/m", "optim/v" */

/* The integer tables: one row per writer rank. */
enum { INSITRA_CKPT_SAMPLER_STATE, INSITRA_CKPT_SAMPLE_CURSOR, INSITRA_CKPT_SAMPLES_PUSHED,
       INSITRA_CKPT_SAMPLE_COUNT, INSITRA_CKPT_TABLES };
typedef struct insitra_ckpt_table {
    const char *path;   /* from the root, e.g. "ranks/sampler_state" */
    int64_t width;      /* values per rank: 4 for a sampler state, else 1 */
    bool is_unsigned;   /* uint64 (sampler state) or int64 */
} insitra_ckpt_table;
extern const insitra_ckpt_table insitra_ckpt_tables[INSITRA_CKPT_TABLES];
#define INSITRA_CKPT_SAMPLES_GROUP "samples"
#define INSITRA_CKPT_SAMPLES_X "samples/x"
#define INSITRA_CKPT_SAMPLES_Y "samples/y"
/* The rows of /samples/x and /samples/y from /samples/count (counts, one per
 * writer rank): each group of `slices` consecutive writer ranks (the stored
 * configuration's insitra_config_token_slices from format 3 on, 1 before)
 * held slices of the same samples, one row each, so a group adds its first
 * rank's count. -1 when a count is negative, the sum passes 2^62, slices
 * does not divide world, or the ranks of a group disagree: *bad_rank then
 * names the rank whose count is wrong. */
int64_t insitra_ckpt_sample_rows(const int64_t *counts, int64_t world, int64_t slices, int64_t *bad_rank);
/* The feature statistics (data.normalize, lib/normalize.h), the same on every
 * rank, written by rank 0: float64 means and sums of squared deviations of
 * the inputs (in_features) and the learned targets (out_features), and on
 * the group the samples counted and whether they are frozen. */
#define INSITRA_CKPT_NORM_GROUP "normalize"
#define INSITRA_CKPT_NORM_DATASETS 4
extern const char *const insitra_ckpt_norm_datasets[INSITRA_CKPT_NORM_DATASETS]; /* x_mean, x_m2, y_mean, y_m2 */
#define INSITRA_CKPT_NORM_SAMPLES "samples"
#define INSITRA_CKPT_NORM_FROZEN "frozen"
/* Checkpoints and export files hold the same group, written and read by
 * these (the parallel writer creates its datasets itself, in this order). */
struct insitra_normalize;
/* n's arrays in insitra_ckpt_norm_datasets order, and their lengths. */
void insitra_ckpt_norm_arrays(const struct insitra_normalize *n, double *a[INSITRA_CKPT_NORM_DATASETS],
                              int64_t len[INSITRA_CKPT_NORM_DATASETS]);
/* The group's attributes (samples, frozen) onto the open group g. */
insitra_status insitra_ckpt_norm_attrs_write(hid_t g, const struct insitra_normalize *n);
/* The whole group from an open file into n (made for the file's model):
 * shapes, CRC32Cs and attributes checked, IO_ERROR naming what is wrong;
 * then n's coefficients follow from the statistics (lib/normalize.h).
 * file_slices: the token slices (insitra_config_token_slices) of the
 * file's writer. Its `samples` counts each sample once per token slice, and
 * n counts them n->slices times: a file of another cp or tp is converted. */
insitra_status insitra_ckpt_norm_read(hid_t file, struct insitra_normalize *n, int64_t file_slices);
#define INSITRA_CKPT_CRC_ATTR "crc32c" /* uint32, on every float32 dataset and table */

/* The root attributes that decide what is loaded. version and config are
 * malloc'd (insitra_ckpt_meta_free). -1 marks an absent integer. */
typedef struct insitra_ckpt_meta {
    int64_t format, step, world_size, dp, tp, zero_stage, complete;
    char *version, *config;
    int64_t meta_crc;   /* the stored meta_crc32c, -1 when absent (format 1) */
} insitra_ckpt_meta;

/* CRC32C of the canonical text encoding of the metadata (format, step,
 * world_size, dp, tp, zero_stage, version, then the config's length and
 * bytes): what meta_crc32c holds. */
uint32_t insitra_ckpt_meta_crc(const insitra_ckpt_meta *m);

/* Writes every root attribute, meta_crc32c computed here, `complete` last. */
insitra_status insitra_ckpt_meta_write(hid_t file, const insitra_ckpt_meta *m);
/* Reads whatever root attributes exist (absent ones are -1 / NULL). */
void insitra_ckpt_meta_read(hid_t file, insitra_ckpt_meta *m);
void insitra_ckpt_meta_free(insitra_ckpt_meta *m);

/* IO_ERROR naming the version unless this library reads format. */
insitra_status insitra_ckpt_format_check(int64_t format);
/* Whether m describes a complete checkpoint this library can load: a known
 * format, complete = 1, the metadata checksum right (format 2), every
 * attribute present and in range. On failure why says which, and the status
 * is IO_ERROR. *warning is set (to a static text) for a format 1 file. */
insitra_status insitra_ckpt_meta_check(const insitra_ckpt_meta *m, const char **warning);

/* The shape of a dataset: ndim (<= 4, -1 if it is not a simple dataset) and dims. */
int insitra_ckpt_shape(hid_t dset, hsize_t dims[4]);
/* What a dataset holds: float32 (tensors, samples), a 64-bit integer (the
 * tables, signed or not), float64 or a 32-bit integer (normalisation,
 * the caller's arrays), or something else. */
enum { INSITRA_CKPT_FLOAT32, INSITRA_CKPT_INT64, INSITRA_CKPT_FLOAT64, INSITRA_CKPT_INT32, INSITRA_CKPT_OTHER };
/* "float32", "a 64-bit integer", ... for messages. */
const char *insitra_ckpt_kind_name(int kind);
int insitra_ckpt_dataset_kind(hid_t dset);
/* Opens the dataset at path (from the root) into *dset if it exists, holds
 * kind and has exactly the shape (ndim, want); otherwise IO_ERROR naming
 * path and what is wrong, and *dset = -1. */
insitra_status insitra_ckpt_open_dataset(hid_t file, const char *path, int kind, int ndim, const hsize_t *want,
                                         hid_t *dset);

/* A file dataspace selecting the flattened range [first, first + count) of
 * a dataset of shape (rows, cols) (cols = 1 for 1-D), and a matching memory
 * space; count 0 selects nothing (collective calls still take part). */
insitra_status insitra_ckpt_select(hid_t dset, int64_t first, int64_t count, hid_t *file_space,
                                   hid_t *mem_space);
/* The same for the block of rows [row, row + rows) and columns [col, col +
 * cols) of a 2-D dataset (one rank's token slice of its samples), with a
 * memory space of rows x cols contiguous values; rows 0 selects nothing. */
insitra_status insitra_ckpt_select_block(hid_t dset, int64_t row, int64_t rows, int64_t col, int64_t cols,
                                         hid_t *file_space, hid_t *mem_space);

/* Tensors hold their whole (global) shape at any parallel.tp. Rank tp_rank's
 * local tensor t (of its layout's tp) sits in it as insitra_tensor_tp_window
 * says: its elements [first, first + count) are the rectangles
 * fn(ctx, local, start, block) gives, local being the local element offset
 * of a rectangle's first element, start and block its rows and columns in
 * the whole tensor. They come in the whole tensor's row-major order, which is
 * the local order too: a contiguous piece of memory matches the selection. */
void insitra_ckpt_tensor_rects(const insitra_tensor_desc *t, int64_t tp_rank, int64_t first, int64_t count,
                               void (*fn)(void *ctx, int64_t local, const int64_t start[2], const int64_t block[2]),
                               void *ctx);
/* Those rectangles as a file space of the tensor's dataset (global shape),
 * with a memory space of count elements; count 0 selects nothing. */
insitra_status insitra_ckpt_select_tensor(hid_t dset, const insitra_tensor_desc *t, int64_t tp_rank, int64_t first,
                                          int64_t count, hid_t *file_space, hid_t *mem_space);
/* The share of those elements (at data, count floats) in the CRC32C of the
 * whole tensor's bytes: the XOR of the shares of pieces that tile the tensor,
 * whatever the ranks and splits that held them, is the dataset's crc32c (a
 * CRC is linear: each run's CRC, moved past the bytes after it, adds in).
 * 0 for count 0. */
uint32_t insitra_ckpt_tensor_crc(const insitra_tensor_desc *t, int64_t tp_rank, int64_t first, int64_t count,
                                 const float *data);

/* Scalar attributes. Integer reads convert any integer width; string reads
 * accept fixed and variable length and return a malloc'd copy. */
insitra_status insitra_ckpt_attr_write_i64(hid_t obj, const char *name, int64_t v);
insitra_status insitra_ckpt_attr_write_u32(hid_t obj, const char *name, uint32_t v);
insitra_status insitra_ckpt_attr_write_str(hid_t obj, const char *name, const char *text);
/* 1 read, 0 absent, -1 present but not one integer. */
int insitra_ckpt_attr_read_i64(hid_t obj, const char *name, int64_t *v);
char *insitra_ckpt_attr_read_str(hid_t obj, const char *name);
/* The dataset's crc32c attribute: IO_ERROR naming path when absent or not a uint32. */
insitra_status insitra_ckpt_attr_read_crc(hid_t dset, const char *path, uint32_t *crc);

/* The configuration a file stores (malloc'd YAML, NULL when out of memory):
 * what defines the model and the run, without the environment's paths
 * (checkpoint.dir, log.jsonl, checkpoint.deadline_env). */
char *insitra_ckpt_stored_config(const insitra_config *cfg);

/* ---- export files (docs/checkpoint.md, "Export files") ---- */

/* Export format 1: /model/<tensor> float32 with global shapes and crc32c,
 * root attributes insitra_export_format, step and the model dimensions
 * (int64), insitra_version and config (strings), and /normalize as in a
 * checkpoint when the model normalises (data.normalize on). */
#define INSITRA_EXPORT_FORMAT 1
#define INSITRA_EXPORT_FORMAT_ATTR "insitra_export_format"
/* The export format of an open file: its version (>= 1), 0 for an export of
 * insitra-ckpt before format versions (attribute insitra_export = 1, no
 * dimensions), -1 when the file is not an export. */
int64_t insitra_export_format_of(hid_t file);
/* The root attributes of an export: the format, step, the dimensions of
 * cfg's model, the library version and the configuration text yaml. */
insitra_status insitra_export_attrs_write(hid_t file, const insitra_config *cfg, const char *yaml, int64_t step);

/* ---- a checkpoint directory ---- */

#define INSITRA_CKPT_LATEST "latest"
#define INSITRA_CKPT_LATEST_TMP "latest.tmp"
/* "step-00000042.h5" -> 42 with suffix ".h5" (or ".h5.tmp"); -1 for other names. */
int64_t insitra_ckpt_step_of(const char *name, const char *suffix);
/* The file name of step's checkpoint: "step-%08d.h5" (size >= 32). */
void insitra_ckpt_file_name(char *out, size_t size, int64_t step);
/* The name `latest` holds into out (size >= 64), "" when absent or not a
 * checkpoint name. */
void insitra_ckpt_read_latest(const char *dir, char *out, size_t size);
/* The steps of every step-N<suffix> in dir (suffix ".h5" or ".h5.tmp"),
 * newest first, into a malloc'd array (*steps, caller frees); returns how
 * many, or -1 (errno set) if dir cannot be read. */
int64_t insitra_ckpt_list_steps(const char *dir, const char *suffix, int64_t **steps);

#endif /* INSITRA_CKPT_FORMAT_H */
