/*
 * Shared by the parallel writer and reader (ckpt_io.c): the piece of a
 * tensor this rank owns, hyperslab selections, CRC combination across ranks,
 * error agreement for I/O, and quiet HDF5 error printing.
 */
#ifndef INSITRA_CKPT_IO_H
#define INSITRA_CKPT_IO_H

#include <hdf5.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckpt_format.h"
#include "ckpt_state.h"

/* A contiguous run of a tensor's flattened elements held in memory. */
typedef struct insitra_ckpt_piece {
    float *data;
    int64_t first, count; /* flattened element range of the tensor */
} insitra_ckpt_piece;

/* This rank's slot of tensor i, inside a full buffer (base = the flat
 * buffer) when full != NULL, else inside the shard buffer. */
insitra_ckpt_piece insitra_ckpt_slot(const insitra_ckpt_state *st, int64_t i, float *full,
                                     float *shard);

/* Whether this rank's slot of tensor i goes into the file (and its CRC):
 * a tensor replicated over the tp group is written by tp rank 0 alone. */
bool insitra_ckpt_slot_written(const insitra_ckpt_state *st, int64_t i);

/* The full and shard buffers of tensor group g (0 parameters, 1 m, 2 v). */
void insitra_ckpt_group_buffers(const insitra_ckpt_state *st, int g, float **full, float **shard);

/* The CRC32C of a dataset from every rank's piece CRC (pieces in rank order):
 * one all-gather for n datasets at once. crc[k], bytes[k] in; crc[k] out.
 * Entries of 0 bytes are XORed in: the shares of a tensor
 * (insitra_ckpt_tensor_crc) or of the samples (insitra_ckpt_crc_rows), which
 * already stand at their places in the dataset, pass bytes 0. */
insitra_status insitra_ckpt_combine_crcs(const insitra_comm *c, uint32_t *crc,
                                         const uint64_t *bytes, int64_t n);

/* A rank's share of the CRC32C of a dataset whose pieces are spread over
 * the ranks in any order (the token slices of the stored samples): as the
 * pieces of all ranks tile the dataset, its CRC is the XOR over the pieces
 * of each piece's CRC shifted past the bytes that follow it (CRC(a || b) =
 * CRC(a) x^(8 |b|) + CRC(b) mod P). Adds n rows of `piece` bytes each, one
 * every `stride` bytes of the dataset, to acc (0 to start); the share is
 * then insitra_crc32c_combine(acc, 0, bytes after the last row's piece),
 * and insitra_ckpt_combine_crcs with bytes 0 XORs the shares. */
uint32_t insitra_ckpt_crc_rows(uint32_t acc, const void *rows, int64_t n, size_t piece, uint64_t stride);

/* insitra_comm_agree, but every rank returns the failing rank's status
 * (IO_ERROR rather than REMOTE_ERROR) with its message: a full disk is an
 * I/O error wherever it is seen. */
insitra_status insitra_ckpt_agree(const insitra_comm *c, insitra_status local);

/* IO_ERROR "checkpoint: <what>: <HDF5's innermost reason>", e.g. the
 * operating system's words for a failed write. */
insitra_status insitra_ckpt_h5_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Silences HDF5's own error printing for the life of the guard. */
typedef struct { H5E_auto2_t func; void *data; } insitra_ckpt_quiet;
void insitra_ckpt_quiet_begin(insitra_ckpt_quiet *q);
void insitra_ckpt_quiet_end(const insitra_ckpt_quiet *q);

#endif /* INSITRA_CKPT_IO_H */
