/*
 * HDF5 checkpoints (docs/checkpoint.md): one file per checkpoint, each rank
 * writing and reading only the pieces of each tensor its layout owns.
 */
#ifndef INSITRA_CKPT_H
#define INSITRA_CKPT_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "trainer.h"

#define INSITRA_CKPT_FORMAT 1

/* Collective: write dir/step-N.h5 with the commit protocol. */
insitra_status insitra_ckpt_save(insitra_trainer *t, const char *dir, char *path_out,
                                 size_t path_size);
/* Collective: load a file, or the newest valid checkpoint of a directory. */
insitra_status insitra_ckpt_load(insitra_trainer *t, const char *path, char *path_out,
                                 size_t path_size);

/* ---- shared by the writer and the reader (ckpt_io.c) ---- */

/* A contiguous run of a tensor's flattened elements held in memory. */
typedef struct insitra_ckpt_piece {
    float *data;
    int64_t first, count; /* flattened element range of the tensor */
} insitra_ckpt_piece;

/* This rank's slot of tensor i (of the writer's or reader's own layout),
 * inside a full buffer (base = the flat buffer) or a shard buffer. */
insitra_ckpt_piece insitra_ckpt_slot(const insitra_trainer *t, int64_t i, float *full,
                                     float *shard);

/* A file dataspace selecting the flattened range [first, first + count) of
 * a tensor of shape (rows, cols) (cols = 1 for 1-D), and a matching memory
 * space; count 0 selects nothing (collective calls still take part). */
insitra_status insitra_ckpt_select(hid_t dset, int64_t first, int64_t count, hid_t *file_space,
                                   hid_t *mem_space);

/* The CRC32C of a dataset from every rank's piece CRC (pieces in rank order):
 * one all-gather for n datasets at once. crc[k], bytes[k] in; crc[k] out. */
insitra_status insitra_ckpt_combine_crcs(const insitra_comm *c, uint32_t *crc,
                                         const uint64_t *bytes, int64_t n);

/* Silences HDF5's own error printing for the life of the guard. */
typedef struct { H5E_auto2_t func; void *data; } insitra_ckpt_quiet;
void insitra_ckpt_quiet_begin(insitra_ckpt_quiet *q);
void insitra_ckpt_quiet_end(const insitra_ckpt_quiet *q);

/* "step-00000042.h5" -> 42 with suffix ".h5" (or ".h5.tmp"); -1 for other names. */
int64_t insitra_ckpt_step_of(const char *name, const char *suffix);

/* Attributes. */
insitra_status insitra_ckpt_write_attr_i64(hid_t obj, const char *name, int64_t v);
insitra_status insitra_ckpt_write_attr_u32(hid_t obj, const char *name, uint32_t v);
insitra_status insitra_ckpt_read_attr_u32(hid_t obj, const char *name, uint32_t *v);
insitra_status insitra_ckpt_write_attr_str(hid_t obj, const char *name, const char *text);
insitra_status insitra_ckpt_read_attr_i64(hid_t obj, const char *name, int64_t *v);
/* Reads a string attribute into a malloc'd buffer (*text, caller frees). */
insitra_status insitra_ckpt_read_attr_str(hid_t obj, const char *name, char **text);

#endif /* INSITRA_CKPT_H */
