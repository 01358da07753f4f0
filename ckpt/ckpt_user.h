/*
 * The caller's arrays in a checkpoint (insitra_checkpoint_add_array), under
 * /user/<name>: the element types, the selections of a rank's piece, the
 * checks a save makes before writing (every rank the same list; the pieces
 * tile each array) and the CRC32C of an array whose pieces are spread over
 * the ranks, and the collective read.
 *
 * An array's CRC32C is over its global row-major bytes: each rank checksums
 * the contiguous runs of its piece (rows of the last dimension), rank 0
 * orders every run by its place in the array, checks that they tile it, and
 * combines them. Any decomposition of the same array gives the same CRC, so a
 * checkpoint verifies on whatever decomposition loads it.
 */
#ifndef INSITRA_CKPT_USER_H
#define INSITRA_CKPT_USER_H

#include <hdf5.h>
#include <stdbool.h>
#include <stdint.h>

#include "ckpt_state.h"

#define INSITRA_CKPT_USER_GROUP "user"

/* Bytes of one element, the file's and memory's HDF5 types, and the dataset
 * kind (ckpt_format.h) of an insitra_type. */
size_t insitra_ckpt_type_size(int type);
hid_t insitra_ckpt_type_file(int type);
hid_t insitra_ckpt_type_mem(int type);
int insitra_ckpt_type_kind(int type);

/* Elements of the whole array (1 for a scalar). */
int64_t insitra_ckpt_array_numel(const insitra_ckpt_array *a);

/* Collective over st->world: the lists agree, the pieces tile every array,
 * and crc[k] (n_arrays) is array k's CRC32C. The same status on every rank. */
insitra_status insitra_ckpt_arrays_check(const insitra_ckpt_state *st, uint32_t *crc);

/* This rank's piece of a in dset: a file and a memory selection, or *empty
 * (nothing to read or write here: no piece, or a scalar on a rank other than
 * rank 0 when writing). */
insitra_status insitra_ckpt_array_select(const insitra_ckpt_array *a, hid_t dset, bool writing, int rank,
                                         hid_t *file_space, hid_t *mem_space, bool *empty);

/* Collective: every array of the view from /user of f into the caller's
 * memory, each checked for type, shape and CRC32C. */
insitra_status insitra_ckpt_arrays_read(const insitra_ckpt_state *st, hid_t f);

#endif /* INSITRA_CKPT_USER_H */
